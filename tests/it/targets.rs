//! The SSRF rule at delivery time (DESIGN §3), on the real broker: targets the worker must not
//! send to are dead-lettered as `target_refused` without a request, and the dead letter names
//! neither host nor address.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(15);

/// Publishes one event to `account` and returns its dead letter, checking it was refused as a
/// target and that no request reached the receiver.
async fn refused(app: &TestApp, account: &str) -> lapin::message::Delivery {
    app.publish(EventType::CustomerRegistered, account, "{}")
        .await;
    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(
        header_text(&dead, "hookrelay-reason").unwrap(),
        "target_refused"
    );
    assert!(app.receiver.hits().is_empty(), "no request was made");
    dead
}

#[tokio::test]
async fn a_stored_http_webhook_is_refused_once_allow_http_is_off() {
    // Loopback allowed, plain http not: only the scheme can refuse it.
    let app = spawn_app_with("200ms", &[("HOOKRELAY__DELIVERY__ALLOW_HTTP", "false")]).await;
    // Stored while allow_http was on (the helper stores it directly).
    app.add_webhook("h", "/plain", &["*"], Format::Standard)
        .await;

    let dead = refused(&app, "h").await;
    assert_eq!(header_int(&dead, "hookrelay-attempts"), Some(1));
    let error = header_text(&dead, "hookrelay-last-error").unwrap();
    assert!(error.contains("http"), "{error}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_refused_private_target_is_dead_lettered_without_its_address() {
    let app = spawn_app_with(
        "200ms",
        &[("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "false")],
    )
    .await;
    app.add_webhook("p", "/inside", &["*"], Format::Standard)
        .await;

    let dead = refused(&app, "p").await;
    let error = header_text(&dead, "hookrelay-last-error").unwrap();
    assert!(error.contains("not a public address"), "{error}");
    let port = app.receiver.addr.port().to_string();
    assert!(
        !error.contains("127.0.0.1") && !error.contains(&port),
        "{error}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_host_name_resolving_only_to_loopback_is_refused_by_the_resolver() {
    let app = spawn_app_with(
        "200ms",
        &[("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "false")],
    )
    .await;
    // Not an IP literal: the check is the guard's resolver, on the addresses it would connect to.
    let url = app.receiver.url("/named").replace("127.0.0.1", "localhost");
    app.store
        .create(
            &"dns".parse().unwrap(),
            hookrelay::subscription::store::NewWebhook {
                url: hookrelay::subscription::WebhookUrl::parse(&url, true).unwrap(),
                events: hookrelay::subscription::EventFilter::All,
                format: Format::Standard,
                description: String::new(),
                rate_limit: None,
            },
        )
        .await
        .unwrap();

    refused(&app, "dns").await;
    app.cleanup().await;
}
