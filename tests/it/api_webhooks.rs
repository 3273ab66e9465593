//! A merchant's webhooks through the API (DESIGN §5): create, read, list, update, delete; every
//! invalid field refused with a clear error; the 10-webhook limit and duplicate URLs as conflicts.

use crate::helpers::api::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

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
