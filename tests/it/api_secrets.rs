//! A webhook's secret through the API and on the wire: rotation signs with the new and the old
//! secret during the grace, then the new one alone; secrets are encrypted at rest in Redis.

use crate::helpers::api::*;
use crate::helpers::*;
use base64::Engine;
use hookrelay::event::EventType;
use hookrelay::subscription::store::Store;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

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
        &mut redis_client()
            .get_multiplexed_async_connection()
            .await
            .unwrap(),
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
