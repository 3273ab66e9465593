//! Who may call the admin API (DESIGN §5): the admin token from the settings, account tokens the
//! admin issues (kept only hashed), each acting on its own account only; 401 without a valid one.

use crate::helpers::api::*;
use crate::helpers::*;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[test]
fn the_api_refuses_to_start_without_an_admin_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["api"])
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__API__LISTEN", "127.0.0.1:0")
        .env_remove("HOOKRELAY__API__ADMIN_TOKEN")
        .output()
        .expect("hookrelay runs");

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api.admin_token"), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
}

#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    let api = api_alone(&[]).await;
    let forged = format!(
        "hr_{}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a1"),
        "x".repeat(40)
    );
    let routes = [
        (Method::GET, "/v1/event-types"),
        (Method::GET, "/v1/whoami"),
        (Method::POST, "/v1/accounts/a1/tokens"),
        (Method::GET, "/v1/accounts/a1/tokens"),
        (Method::DELETE, "/v1/accounts/a1/tokens/tok_x"),
        (Method::GET, "/v1/accounts/a1/webhooks"),
        (Method::POST, "/v1/accounts/a1/webhooks"),
        (Method::GET, "/v1/accounts/a1/webhooks/wh_x"),
        (Method::PATCH, "/v1/accounts/a1/webhooks/wh_x"),
        (Method::DELETE, "/v1/accounts/a1/webhooks/wh_x"),
        (Method::POST, "/v1/accounts/a1/webhooks/wh_x/rotate-secret"),
        (Method::POST, "/v1/accounts/a1/webhooks/wh_x/test"),
        (Method::GET, "/v1/accounts/a1/webhooks/wh_x/attempts"),
        (
            Method::POST,
            "/v1/accounts/a1/webhooks/wh_x/events/evt_1/resend",
        ),
    ];

    for (method, path) in routes {
        for token in [None, Some("wrong"), Some(forged.as_str()), Some("")] {
            let (status, body) = api.call(method.clone(), path, token, None).await;
            let code = error_code(status, &body, StatusCode::UNAUTHORIZED);
            assert_eq!(code, "unauthorized", "{method} {path}");
        }
    }
    let response = reqwest::get(format!("{}/v1/whoami", api.base))
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    for open in [
        "/",
        "/v1/openapi.json",
        "/assets/page.js",
        "/assets/page.css",
    ] {
        let response = reqwest::get(format!("{}{open}", api.base)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{open} needs no token");
    }
    api.cleanup().await;
}

#[tokio::test]
async fn account_tokens_act_on_their_own_account_only() {
    let api = api_alone(&[]).await;
    let a1 = api.token_for("a1").await;
    let a2 = api.token_for("a2").await;
    let theirs = api
        .create("a2", &a2, "https://example.com/a2", &["*"])
        .await;
    let theirs_id = theirs["id"].as_str().unwrap();

    let (status, me) = api.get("/v1/whoami", &a1).await;
    assert_eq!(
        (status, &me),
        (StatusCode::OK, &json!({"admin": false, "account_id": "a1"}))
    );
    let (status, _) = api.get("/v1/accounts/a1/webhooks", &a1).await;
    assert_eq!(status, StatusCode::OK);
    for (method, path) in [
        (Method::GET, "/v1/accounts/a2/webhooks".to_owned()),
        (Method::POST, "/v1/accounts/a2/webhooks".to_owned()),
        (Method::GET, format!("/v1/accounts/a2/webhooks/{theirs_id}")),
        (Method::GET, format!("/v1/accounts/a1/webhooks/{theirs_id}")),
        (
            Method::PATCH,
            format!("/v1/accounts/a2/webhooks/{theirs_id}"),
        ),
        (
            Method::DELETE,
            format!("/v1/accounts/a2/webhooks/{theirs_id}"),
        ),
        (
            Method::DELETE,
            format!("/v1/accounts/a1/webhooks/{theirs_id}"),
        ),
        (
            Method::POST,
            format!("/v1/accounts/a2/webhooks/{theirs_id}/rotate-secret"),
        ),
        (
            Method::POST,
            format!("/v1/accounts/a2/webhooks/{theirs_id}/test"),
        ),
        (
            Method::GET,
            format!("/v1/accounts/a2/webhooks/{theirs_id}/attempts"),
        ),
        (
            Method::POST,
            format!("/v1/accounts/a2/webhooks/{theirs_id}/events/evt_1/resend"),
        ),
        // Account tokens cannot issue, list or revoke tokens, not even for their own account.
        (Method::POST, "/v1/accounts/a1/tokens".to_owned()),
        (Method::GET, "/v1/accounts/a1/tokens".to_owned()),
        (Method::POST, "/v1/accounts/a2/tokens".to_owned()),
        (Method::DELETE, "/v1/accounts/a1/tokens/tok_x".to_owned()),
    ] {
        // A valid body where the route takes one, so that only the account can be refused.
        let takes_body = method == Method::PATCH || path.ends_with("/webhooks");
        let body = takes_body.then(|| json!({"url": "https://example.com/mine", "events": ["*"]}));
        let (status, body) = api.call(method.clone(), &path, Some(&a1), body).await;
        let code = error_code(status, &body, StatusCode::NOT_FOUND);
        assert_eq!(code, "not_found", "{method} {path}");
    }
    let (status, _) = api
        .get(&format!("/v1/accounts/a2/webhooks/{theirs_id}"), &a2)
        .await;
    assert_eq!(status, StatusCode::OK, "still there, untouched");
    let (status, _) = api
        .get(&format!("/v1/accounts/a2/webhooks/{theirs_id}"), ADMIN)
        .await;
    assert_eq!(status, StatusCode::OK, "the admin acts on any account");
    api.cleanup().await;
}

#[tokio::test]
async fn the_admin_issues_lists_and_revokes_account_tokens_kept_only_hashed() {
    let api = api_alone(&[]).await;

    let (status, issued) = api
        .call(
            Method::POST,
            "/v1/accounts/shop-7/tokens",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["account_id"], "shop-7");
    let token = issued["token"].as_str().unwrap().to_owned();
    let (status, listed) = api.get("/v1/accounts/shop-7/tokens", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["tokens"][0]["id"], issued["id"]);
    assert!(
        !listed.to_string().contains(&token),
        "a list never shows tokens"
    );

    let key = format!("{}:{{shop-7}}:tokens", api.store.prefix());
    let stored: Vec<(String, String)> = redis::AsyncCommands::hgetall(
        &mut redis_client()
            .get_multiplexed_async_connection()
            .await
            .unwrap(),
        &key,
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1, "kept under the account's hash-tagged key");
    assert!(!format!("{stored:?}").contains(&token[3..]), "kept hashed");

    let (status, _) = api.get("/v1/accounts/shop-7/webhooks", &token).await;
    assert_eq!(status, StatusCode::OK);
    let revoke = format!(
        "/v1/accounts/shop-7/tokens/{}",
        issued["id"].as_str().unwrap()
    );
    let (status, body) = api.call(Method::DELETE, &revoke, Some(ADMIN), None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, _) = api.get("/v1/accounts/shop-7/webhooks", &token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked token stops at once"
    );
    let (status, body) = api.call(Method::DELETE, &revoke, Some(ADMIN), None).await;
    error_code(status, &body, StatusCode::NOT_FOUND);
    let (status, listed) = api.get("/v1/accounts/shop-7/tokens", ADMIN).await;
    assert_eq!((status, listed), (StatusCode::OK, json!({"tokens": []})));
    api.cleanup().await;
}
