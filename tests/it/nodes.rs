//! `amqp.urls`: a worker and the publisher library given a list of nodes use the first one that
//! answers (the multi-node failover itself is proven by scripts/brokers.sh on a real cluster).

use crate::helpers::*;
use hookrelay::broker::publisher::{EventPublisher, NewEvent};
use hookrelay::broker::Connector;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

/// An AMQP URL on a loopback port nobody listens on (bound, then released).
fn dead_node() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test]
async fn a_worker_and_a_publisher_skip_a_node_that_is_down() {
    let urls = format!("{},{AMQP_URL}", dead_node());
    let app = spawn_app_with("200ms", &[("HOOKRELAY__AMQP__URLS", &urls)]).await;
    app.add_webhook("68", "/nodes", &["*"], Format::Standard)
        .await;
    let connector = Connector::new(&app.settings.amqp);
    assert_eq!(connector.nodes().len(), 2);
    let publisher = EventPublisher::connect(&connector, &app.prefix, Duration::from_secs(5))
        .await
        .expect("connects to the second node");

    let event = publisher
        .publish(NewEvent {
            id: None,
            event_type: EventType::CustomerRegistered,
            account_id: "68".parse().unwrap(),
            created_at: None,
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        })
        .await
        .expect("confirmed");

    let hits = app
        .receiver
        .wait_for("/nodes", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        hits[0].headers["webhook-id"].to_str().unwrap(),
        event.id.as_str()
    );
    publisher.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn no_usable_node_is_an_error_naming_each_node() {
    let (a, b) = (dead_node(), dead_node());
    let settings = settings(
        &test_prefix(),
        "1s",
        &[("HOOKRELAY__AMQP__URLS", &format!("{a},{b}"))],
    );
    let err = Connector::new(&settings.amqp)
        .connect("test")
        .await
        .unwrap_err()
        .to_string();
    let label = |url: &str| url.replace("guest:guest@", "").replace("/%2f", "");
    assert!(
        err.contains(&label(&a)) && err.contains(&label(&b)),
        "{err}"
    );
}
