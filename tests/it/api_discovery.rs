//! What a client finds without knowing the API: the event types, the OpenAPI document, the page
//! (no token, strict content policy), and unknown routes answered in the error shape.

use crate::helpers::api::*;
use hookrelay::event::EventType;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

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
        ("/v1/schemas/envelope.json", &["get"]),
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
        12,
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
