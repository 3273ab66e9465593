//! What a merchant sees of deliveries through the API: sending an example now, the attempt log,
//! and resending one event with the same `webhook-id`.

use crate::helpers::api::*;
use crate::helpers::*;
use hookrelay::event::EventType;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

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
