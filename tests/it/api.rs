//! `hookrelay api` over real HTTP against the real Redis (and, for deliveries, the in-process
//! worker and the scriptable receiver): every route, the auth rules, every validation error.

#[path = "browser.rs"]
mod browser;

use crate::api_harness::*;
use crate::helpers::*;
use base64::Engine;
use hookrelay::delivery::signing::{standard_signature, Secret};
use hookrelay::event::EventType;
use hookrelay::subscription::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

fn redis() -> redis::Client {
    redis::Client::open(REDIS_URL).unwrap()
}

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
        &mut redis().get_multiplexed_async_connection().await.unwrap(),
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

#[tokio::test]
async fn event_types_lists_the_27_labels_for_any_valid_token() {
    let api = api_alone(&[]).await;
    let token = api.token_for("a1").await;

    for t in [ADMIN, token.as_str()] {
        let (status, body) = api.get("/v1/event-types", t).await;
        assert_eq!(status, StatusCode::OK);
        let types = body["event_types"].as_array().unwrap();
        assert_eq!(types.len(), 27);
        assert!(types.contains(&json!({
            "label": "payment.card.success",
            "description": "Payment sale with card succeeded"
        })));
    }
    api.cleanup().await;
}

#[tokio::test]
async fn webhooks_are_created_read_listed_updated_and_deleted() {
    let api = api_alone(&[]).await;
    let token = api.token_for("a1").await;

    let (status, created) = api
        .post(
            "/v1/accounts/a1/webhooks",
            &token,
            json!({"url": "https://example.com/hook", "events": ["payment.card.success"],
                   "format": "inplayer", "description": "Shop"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_"));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["account_id"], "a1");
    assert_eq!(created["url"], "https://example.com/hook");
    assert_eq!(created["events"], json!(["payment.card.success"]));
    assert_eq!(created["format"], "inplayer");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["description"], "Shop");
    assert_eq!(created["disabled_reason"], Value::Null);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let path = format!("/v1/accounts/a1/webhooks/{id}");
    let (status, read) = api.get(&path, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(read.get("secret").is_none(), "read never shows the secret");
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(read, without_secret);
    let (status, list) = api.get("/v1/accounts/a1/webhooks", &token).await;
    assert_eq!(
        (status, list),
        (StatusCode::OK, json!({"webhooks": [without_secret]}))
    );

    let (status, updated) = api
        .call(
            Method::PATCH,
            &path,
            Some(&token),
            Some(
                json!({"url": "https://example.com/v2", "events": ["*"], "format": "standard",
                        "description": "Shop v2", "enabled": false}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["url"], "https://example.com/v2");
    assert_eq!(updated["events"], json!(["*"]));
    assert_eq!(updated["format"], "standard");
    assert_eq!(updated["description"], "Shop v2");
    assert_eq!(updated["enabled"], false);
    assert!(updated.get("secret").is_none());

    // hookrelay disabled it (e.g. 410 Gone); enabling through the API clears the reason.
    api.store
        .disable(&"a1".parse().unwrap(), &id.parse().unwrap(), "gone")
        .await
        .unwrap();
    let (_, read) = api.get(&path, &token).await;
    assert_eq!(read["disabled_reason"], "gone");
    let (status, enabled) = api
        .call(
            Method::PATCH,
            &path,
            Some(&token),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["disabled_reason"], Value::Null);

    let (status, body) = api.call(Method::DELETE, &path, Some(&token), None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    for method in [Method::GET, Method::DELETE, Method::PATCH] {
        let body = (method == Method::PATCH).then(|| json!({"enabled": true}));
        let (status, body) = api.call(method, &path, Some(&token), body).await;
        assert_eq!(
            error_code(status, &body, StatusCode::NOT_FOUND),
            "not_found"
        );
    }
    api.cleanup().await;
}

#[tokio::test]
async fn every_invalid_webhook_is_refused_with_a_clear_error() {
    // The production rules: https only, public targets only.
    let api = api_alone(&[
        ("HOOKRELAY__DELIVERY__ALLOW_HTTP", "false"),
        ("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "false"),
    ])
    .await;
    let token = api.token_for("a1").await;
    let public = "https://93.184.216.34/hook";
    let cases = [
        (json!({"events": ["*"]}), 422, "invalid_body", "url"),
        (json!({"url": public}), 422, "invalid_body", "events"),
        (
            json!({"url": public, "events": "*"}),
            422,
            "invalid_body",
            "sequence",
        ),
        (
            json!({"url": public, "events": ["*"], "secret": "x"}),
            422,
            "invalid_body",
            "secret",
        ),
        (
            json!({"url": public, "events": []}),
            422,
            "invalid_events",
            "empty",
        ),
        (
            json!({"url": public, "events": ["*", "payment.card.success"]}),
            422,
            "invalid_events",
            "alone",
        ),
        (
            json!({"url": public, "events": ["payment.cash"]}),
            422,
            "invalid_events",
            "payment.cash",
        ),
        (
            json!({"url": public, "events": ["*"], "format": "xml"}),
            422,
            "invalid_format",
            "xml",
        ),
        (
            json!({"url": public, "events": ["*"], "description": "x".repeat(501)}),
            422,
            "invalid_description",
            "500",
        ),
        (
            json!({"url": "http://93.184.216.34/hook", "events": ["*"]}),
            422,
            "invalid_url",
            "https",
        ),
        (
            json!({"url": "not a url", "events": ["*"]}),
            422,
            "invalid_url",
            "URL",
        ),
        (
            json!({"url": "https://user:pw@93.184.216.34/", "events": ["*"]}),
            422,
            "invalid_url",
            "password",
        ),
        (
            json!({"url": "https://127.0.0.1/hook", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
        (
            json!({"url": "https://10.0.0.8/hook", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
        (
            json!({"url": "https://169.254.169.254/latest", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
        (
            json!({"url": "https://100.64.0.1/", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
        (
            json!({"url": "https://[::1]/hook", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
        (
            json!({"url": "https://[fd00::1]/hook", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
        (
            json!({"url": "https://localhost/hook", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
        (
            json!({"url": "https://no-such-host.invalid/hook", "events": ["*"]}),
            422,
            "target_not_public",
            "public",
        ),
    ];
    for (body, status, code, needle) in cases {
        let (got, answer) = api
            .post("/v1/accounts/a1/webhooks", &token, body.clone())
            .await;
        let got_code = error_code(got, &answer, StatusCode::from_u16(status).unwrap());
        assert_eq!(got_code, code, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }

    // Not JSON, not declared JSON, too large.
    let url = format!("{}/v1/accounts/a1/webhooks", api.base);
    let http = reqwest::Client::new();
    let send = |body: Vec<u8>, content_type: &'static str| {
        http.post(&url)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (response, status, code) in [
        (
            send(b"{\"url\":".to_vec(), "application/json").await,
            400,
            "invalid_json",
        ),
        (
            send(b"url=x".to_vec(), "application/x-www-form-urlencoded").await,
            415,
            "unsupported_media_type",
        ),
        (
            send(vec![b' '; 17 * 1024], "application/json").await,
            413,
            "body_too_large",
        ),
    ] {
        let response = response.unwrap();
        let got = response.status();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(
            error_code(got, &body, StatusCode::from_u16(status).unwrap()),
            code
        );
    }

    // The same rules hold on update; nothing was created by the refusals above.
    let created = api.create("a1", &token, public, &["*"]).await;
    let path = format!(
        "/v1/accounts/a1/webhooks/{}",
        created["id"].as_str().unwrap()
    );
    for (patch, code) in [
        (json!({"url": "https://192.168.1.1/"}), "target_not_public"),
        (json!({"url": "http://93.184.216.34/"}), "invalid_url"),
        (json!({"events": []}), "invalid_events"),
        (json!({"enabled": "yes"}), "invalid_body"),
        (json!({"id": "wh_other"}), "invalid_body"),
    ] {
        let (status, body) = api
            .call(Method::PATCH, &path, Some(&token), Some(patch.clone()))
            .await;
        assert_eq!(
            error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
            code,
            "{patch}"
        );
    }
    let (_, list) = api.get("/v1/accounts/a1/webhooks", &token).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(list["webhooks"][0]["url"], public);
    api.cleanup().await;
}

#[tokio::test]
async fn the_eleventh_webhook_and_a_duplicate_url_are_conflicts() {
    let api = api_alone(&[]).await;
    let token = api.token_for("a1").await;
    for i in 0..10 {
        api.create("a1", &token, &format!("https://example.com/{i}"), &["*"])
            .await;
    }

    let (status, body) = api
        .post(
            "/v1/accounts/a1/webhooks",
            &token,
            json!({"url": "https://example.com/eleventh", "events": ["*"]}),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "webhook_limit_reached"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("10"));

    let (_, list) = api.get("/v1/accounts/a1/webhooks", &token).await;
    let first = list["webhooks"][0]["id"].as_str().unwrap().to_owned();
    api.call(
        Method::DELETE,
        &format!("/v1/accounts/a1/webhooks/{first}"),
        Some(&token),
        None,
    )
    .await;
    let (status, body) = api
        .post(
            "/v1/accounts/a1/webhooks",
            &token,
            json!({"url": "https://example.com/5", "events": ["*"]}),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "duplicate_url"
    );
    let second = list["webhooks"][1]["id"].as_str().unwrap();
    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/v1/accounts/a1/webhooks/{second}"),
            Some(&token),
            Some(json!({"url": "https://example.com/5"})),
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "duplicate_url"
    );
    api.cleanup().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let api = api_alone(&[]).await;

    let (status, body) = api.get("/v1/nothing-here", ADMIN).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (status, body) = api
        .call(Method::PUT, "/v1/accounts/a1/webhooks", Some(ADMIN), None)
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
    let (status, body) = api.get("/v1/accounts/a1/webhooks/not-an-id", ADMIN).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    api.cleanup().await;
}

#[tokio::test]
async fn the_openapi_document_is_generated_from_every_route() {
    let api = api_alone(&[]).await;

    let response = reqwest::get(format!("{}/v1/openapi.json", api.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();

    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/event-types", &["get"][..]),
        ("/v1/whoami", &["get"]),
        ("/v1/accounts/{account_id}/tokens", &["get", "post"]),
        ("/v1/accounts/{account_id}/tokens/{token_id}", &["delete"]),
        ("/v1/accounts/{account_id}/webhooks", &["get", "post"]),
        (
            "/v1/accounts/{account_id}/webhooks/{webhook_id}",
            &["get", "patch", "delete"],
        ),
        (
            "/v1/accounts/{account_id}/webhooks/{webhook_id}/rotate-secret",
            &["post"],
        ),
        (
            "/v1/accounts/{account_id}/webhooks/{webhook_id}/test",
            &["post"],
        ),
        (
            "/v1/accounts/{account_id}/webhooks/{webhook_id}/attempts",
            &["get"],
        ),
        (
            "/v1/accounts/{account_id}/webhooks/{webhook_id}/events/{event_id}/resend",
            &["post"],
        ),
        ("/v1/accounts/{account_id}/status", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths[path].get(*method).is_some(),
                "{method} {path} is documented"
            );
        }
    }
    assert_eq!(
        paths.len(),
        11,
        "no route is missing or extra: {:?}",
        paths.keys()
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let create = &paths["/v1/accounts/{account_id}/webhooks"]["post"];
    for status in ["201", "401", "404", "409", "413", "422"] {
        assert!(
            create["responses"].get(status).is_some(),
            "create documents {status}"
        );
    }
    assert!(doc["components"]["schemas"]["WebhookView"]["properties"]
        .get("disabled_reason")
        .is_some());
    api.cleanup().await;
}

#[tokio::test]
async fn the_page_loads_without_a_token_under_a_strict_policy() {
    let api = api_alone(&[]).await;

    let response = reqwest::get(format!("{}/", api.base)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(response.headers().get("set-cookie").is_none());
    let html = response.text().await.unwrap();
    assert!(html.contains("Add Webhook"));
    assert!(html.contains("All events"));
    for t in EventType::ALL {
        assert!(html.contains(&format!("value=\"{}\"", t.label())), "{t}");
        assert!(html.contains(t.description()), "{t}");
    }
    let js = reqwest::get(format!("{}/assets/page.js", api.base))
        .await
        .unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert!(js.text().await.unwrap().contains("sessionStorage"));
    api.cleanup().await;
}

/// Finds the request whose body carries `event_id` among the receiver's hits on `path`.
fn hits_of(app: &TestApp, path: &str, event_id: &str) -> Vec<Hit> {
    app.receiver
        .hits_on(path)
        .into_iter()
        .filter(|h| h.headers["webhook-id"] == event_id)
        .collect()
}

fn signatures(hit: &Hit) -> Vec<String> {
    hit.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

fn signed_with(hit: &Hit, secret: &str) -> String {
    let secret = Secret::parse(secret).unwrap();
    let id = hit.headers["webhook-id"].to_str().unwrap();
    let timestamp: i64 = hit.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    standard_signature(&secret, id, timestamp, &hit.body)
}

#[tokio::test]
async fn rotating_a_secret_signs_with_the_new_and_the_old_secret_during_the_grace() {
    let app = spawn_app().await;
    let api = start_api(api_settings(&app.prefix, &[])).await;
    let token = api.token_for("r1").await;
    let created = api
        .create(
            "r1",
            &token,
            &app.receiver.url("/rot"),
            &["payment.card.success"],
        )
        .await;
    let old = created["secret"].as_str().unwrap();

    let path = format!(
        "/v1/accounts/r1/webhooks/{}/rotate-secret",
        created["id"].as_str().unwrap()
    );
    let (status, rotated) = api.post(&path, &token, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_"));
    assert_ne!(new, old);
    let event_id = app
        .publish(EventType::PaymentCardSuccess, "r1", r#"{"amount":"1.00"}"#)
        .await;

    app.receiver
        .wait_for("/rot", 1, Duration::from_secs(10))
        .await;
    let hit = hits_of(&app, "/rot", &event_id).remove(0);
    assert_eq!(
        signatures(&hit),
        vec![signed_with(&hit, new), signed_with(&hit, old)],
        "the new secret's signature, then the old one's"
    );
    api.stop().await;
    app.cleanup().await;
}

#[tokio::test]
async fn rotation_ends_after_the_grace() {
    let app = spawn_app().await;
    let api = start_api(api_settings(
        &app.prefix,
        &[("HOOKRELAY__DELIVERY__ROTATION_GRACE", "1s")],
    ))
    .await;
    let token = api.token_for("r2").await;
    let created = api
        .create("r2", &token, &app.receiver.url("/grace"), &["*"])
        .await;
    let path = format!(
        "/v1/accounts/r2/webhooks/{}/rotate-secret",
        created["id"].as_str().unwrap()
    );
    let (_, rotated) = api.post(&path, &token, Value::Null).await;

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let event_id = app
        .publish(EventType::CustomerRegistered, "r2", r#"{"id":1}"#)
        .await;

    app.receiver
        .wait_for("/grace", 1, Duration::from_secs(10))
        .await;
    let hit = hits_of(&app, "/grace", &event_id).remove(0);
    let new = rotated["secret"].as_str().unwrap();
    assert_eq!(signatures(&hit), vec![signed_with(&hit, new)]);
    api.stop().await;
    app.cleanup().await;
}

#[tokio::test]
async fn send_example_posts_a_signed_example_and_reports_what_the_endpoint_answered() {
    let app = spawn_app().await;
    let api = start_api(api_settings(&app.prefix, &[])).await;
    let token = api.token_for("t1").await;
    let created = api
        .create(
            "t1",
            &token,
            &app.receiver.url("/example"),
            &["subscribe.success", "customer.updated"],
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let test = format!("/v1/accounts/t1/webhooks/{id}/test");

    let (status, result) = api.post(&test, &token, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["status"], 200);
    assert!(result["duration_ms"].is_u64());
    assert!(result["response_excerpt"].is_string());
    assert!(result.get("error").is_none());
    assert_eq!(
        result["event_type"], "subscribe.success",
        "the first type it receives"
    );
    let event_id = result["event_id"].as_str().unwrap();
    let hit = hits_of(&app, "/example", event_id).remove(0);
    assert_eq!(
        signatures(&hit),
        vec![signed_with(&hit, created["secret"].as_str().unwrap())]
    );
    let body: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["type"], "subscribe.success");
    assert_eq!(body["account_id"], "t1");
    assert_eq!(body["data"]["example"], true);

    app.receiver.behave("/example", Behaviour::Status(503));
    let (status, result) = api
        .post(&test, &token, json!({"event_type": "customer.updated"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (result["status"].clone(), result["event_type"].clone()),
        (json!(503), json!("customer.updated"))
    );

    for (body, code) in [
        (
            json!({"event_type": "payment.card.success"}),
            "event_type_not_subscribed",
        ),
        (json!({"event_type": "payment.cash"}), "invalid_event_type"),
        (json!({"type": "customer.updated"}), "invalid_body"),
    ] {
        let (status, answer) = api.post(&test, &token, body).await;
        assert_eq!(
            error_code(status, &answer, StatusCode::UNPROCESSABLE_ENTITY),
            code
        );
    }

    // No response at all: the attempt's error instead of a status.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/gone", closed.local_addr().unwrap());
    drop(closed);
    let dead = api.create("t1", &token, &dead_url, &["*"]).await;
    let (status, result) = api
        .post(
            &format!(
                "/v1/accounts/t1/webhooks/{}/test",
                dead["id"].as_str().unwrap()
            ),
            &token,
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(result.get("status").is_none(), "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("connection"),
        "{result}"
    );

    // Both examples to the receiver show up in the attempt log at once.
    let (status, attempts) = api
        .get(&format!("/v1/accounts/t1/webhooks/{id}/attempts"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    let statuses: Vec<&Value> = attempts["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, vec![&json!(503), &json!(200)], "newest first");
    api.stop().await;
    app.cleanup().await;
}

/// Polls the attempts of a webhook until one of `event_id` is there (the worker's log is
/// written in batches, off the delivery path).
async fn wait_for_attempt(api: &Api, path: &str, token: &str, event_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api.get(path, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Newest first: the last match is the event's first attempt.
        if let Some(a) = body["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|a| a["event_id"] == event_id)
        {
            return a.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt of {event_id}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn attempts_show_recent_deliveries_and_resend_repeats_one_with_the_same_id() {
    let app = spawn_app().await;
    let api = start_api(api_settings(&app.prefix, &[])).await;
    let token = api.token_for("s1").await;
    let created = api
        .create(
            "s1",
            &token,
            &app.receiver.url("/resend"),
            &["payment.card.failed"],
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let attempts = format!("/v1/accounts/s1/webhooks/{id}/attempts");
    app.receiver.behave("/resend", Behaviour::Status(500));
    let event_id = app
        .publish(EventType::PaymentCardFailed, "s1", r#"{"amount":"2.50"}"#)
        .await;

    let attempt = wait_for_attempt(&api, &attempts, &token, &event_id).await;
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["event_type"], "payment.card.failed");
    assert_eq!(attempt["status"], 500);
    assert_eq!(attempt["error"], Value::Null);
    assert!(attempt["duration_ms"].is_u64());
    assert!(attempt["response_excerpt"].is_string());
    assert!(chrono::DateTime::parse_from_rfc3339(attempt["at"].as_str().unwrap()).is_ok());
    assert_eq!(attempt["resendable"], true);
    // The schedule (two quick retries) runs out; the merchant fixes the endpoint and resends.
    app.receiver
        .wait_for("/resend", 3, Duration::from_secs(20))
        .await;
    app.receiver.behave("/resend", Behaviour::Status(200));
    let resend = format!("/v1/accounts/s1/webhooks/{id}/events/{event_id}/resend");

    let (status, body) = api.post(&resend, &token, Value::Null).await;

    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body,
        json!({"event_id": event_id, "webhook_id": id, "status": "queued"})
    );
    let hits = app
        .receiver
        .wait_for("/resend", 4, Duration::from_secs(20))
        .await;
    assert_eq!(
        hits[3].headers["webhook-id"],
        event_id.as_str(),
        "same webhook-id"
    );
    let (_, limited) = api.get(&format!("{attempts}?limit=2"), &token).await;
    assert_eq!(limited["attempts"].as_array().unwrap().len(), 2);
    let (status, body) = api.get(&format!("{attempts}?limit=0"), &token).await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_query"
    );

    // An event that is not in the recent attempts.
    let unknown = format!("/v1/accounts/s1/webhooks/{id}/events/evt_nope/resend");
    let (status, body) = api.post(&unknown, &token, Value::Null).await;
    assert_eq!(
        error_code(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    // A disabled webhook would only dead-letter it.
    let webhook = format!("/v1/accounts/s1/webhooks/{id}");
    api.call(
        Method::PATCH,
        &webhook,
        Some(&token),
        Some(json!({"enabled": false})),
    )
    .await;
    let (status, body) = api.post(&resend, &token, Value::Null).await;
    assert_eq!(
        error_code(status, &body, StatusCode::CONFLICT),
        "webhook_disabled"
    );
    api.call(
        Method::PATCH,
        &webhook,
        Some(&token),
        Some(json!({"enabled": true})),
    )
    .await;

    // An event over 16 KiB is not kept for resending: a clear refusal, not a silent nothing.
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(20 * 1024));
    let big_id = app.publish(EventType::PaymentCardFailed, "s1", &big).await;
    let attempt = wait_for_attempt(&api, &attempts, &token, &big_id).await;
    assert_eq!(attempt["resendable"], false);
    let (status, body) = api
        .post(
            &format!("/v1/accounts/s1/webhooks/{id}/events/{big_id}/resend"),
            &token,
            Value::Null,
        )
        .await;
    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "event_not_kept"
    );
    api.stop().await;
    app.cleanup().await;
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_the_worker_still_signs_with_them() {
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let app = spawn_app_with("200ms,200ms", &[("HOOKRELAY__REDIS__SECRET_KEY", &key)]).await;
    let api = start_api(api_settings(
        &app.prefix,
        &[("HOOKRELAY__REDIS__SECRET_KEY", &key)],
    ))
    .await;
    let token = api.token_for("enc").await;
    let created = api
        .create("enc", &token, &app.receiver.url("/sealed"), &["*"])
        .await;
    let secret = created["secret"].as_str().unwrap();

    let stored: String = redis::AsyncCommands::hget(
        &mut redis().get_multiplexed_async_connection().await.unwrap(),
        format!("{}:{{enc}}:webhooks", app.prefix),
        created["id"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert!(
        !stored.contains(&secret[6..]),
        "the secret is not in Redis: {stored}"
    );
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert!(stored["secret"].as_str().unwrap().starts_with("sealed:v1:"));
    // Without the key, the stored webhook cannot be used.
    let keyless = Store::connect(REDIS_URL, &app.prefix, Duration::from_secs(2))
        .await
        .unwrap();
    // (it is reported unreadable, not used, and the account's lookup still answers).
    let snapshot = keyless.snapshot(&"enc".parse().unwrap()).await.unwrap();
    assert!(snapshot.webhooks.is_empty());
    let err = snapshot.unreadable[0].error.to_string();
    assert!(err.contains("redis.secret_key"), "{err}");

    let event_id = app
        .publish(EventType::AssetAccessGranted, "enc", r#"{"item":1}"#)
        .await;

    app.receiver
        .wait_for("/sealed", 1, Duration::from_secs(10))
        .await;
    let hit = hits_of(&app, "/sealed", &event_id).remove(0);
    assert_eq!(signatures(&hit), vec![signed_with(&hit, secret)]);
    api.stop().await;
    app.cleanup().await;
}
