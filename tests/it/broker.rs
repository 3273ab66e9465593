//! The topology is declared idempotently, and a publish is a success only when confirmed.

use crate::helpers::*;
use hookrelay::broker::publisher::{EventPublisher, NewEvent, PublishError, Publisher};
use hookrelay::broker::topology::Topology;
use hookrelay::event::EventType;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::ExchangeKind;
use std::time::Duration;

fn event() -> NewEvent {
    NewEvent {
        id: None,
        event_type: EventType::PaymentCardSuccess,
        account_id: "68".parse().unwrap(),
        created_at: None,
        data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
    }
}

async fn delete_all(conn: &lapin::Connection, topology: &Topology) {
    let channel = conn.create_channel().await.unwrap();
    for q in topology.all_queues() {
        let _ = channel
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            topology.events_exchange().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
}

#[tokio::test]
async fn an_unroutable_publish_is_an_error_not_a_success() {
    let prefix = test_prefix();
    let conn = hookrelay::broker::connect(AMQP_URL, "test").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    // The exchange exists but no queue is bound: the broker returns the mandatory message.
    channel
        .exchange_declare(
            format!("{prefix}.events").into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let publisher = EventPublisher::new(
        Publisher::new(&conn, Duration::from_secs(5)).await.unwrap(),
        &prefix,
    );

    let result = publisher.publish(event()).await;

    assert!(
        matches!(result, Err(PublishError::Returned(_))),
        "{result:?}"
    );
    channel
        .exchange_delete(
            format!("{prefix}.events").into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_is_an_error() {
    let conn = hookrelay::broker::connect(AMQP_URL, "test").await.unwrap();
    let publisher = EventPublisher::new(
        Publisher::new(&conn, Duration::from_secs(5)).await.unwrap(),
        &test_prefix(),
    );
    assert!(publisher.publish(event()).await.is_err());
}

#[tokio::test]
async fn declaring_twice_is_harmless_and_a_changed_schedule_declares_new_delay_queues() {
    let prefix = test_prefix();
    let conn = hookrelay::broker::connect(AMQP_URL, "test").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let first = Topology::new(
        &prefix,
        &[Duration::from_secs(1), Duration::from_secs(2)],
        20,
    );
    let changed = Topology::new(&prefix, &[Duration::from_secs(3)], 20);

    first.declare(&channel).await.unwrap();
    first.declare(&channel).await.unwrap();
    changed.declare(&channel).await.unwrap();

    for q in first.all_queues().iter().chain(&changed.all_queues()) {
        let passive = channel
            .queue_declare(
                q.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        assert!(passive.is_ok(), "{q} exists");
    }
    delete_all(&conn, &first).await;
    delete_all(&conn, &changed).await;
}

#[tokio::test]
async fn a_queue_is_never_redeclared_with_other_arguments() {
    let prefix = test_prefix();
    let conn = hookrelay::broker::connect(AMQP_URL, "test").await.unwrap();
    let topology = Topology::new(&prefix, &[Duration::from_secs(1)], 20);
    topology
        .declare(&conn.create_channel().await.unwrap())
        .await
        .unwrap();

    let other_limit = Topology::new(&prefix, &[Duration::from_secs(1)], 5);
    let result = other_limit
        .declare(&conn.create_channel().await.unwrap())
        .await;

    assert!(result.is_err(), "RabbitMQ refuses other arguments (406)");
    delete_all(&conn, &topology).await;
}

#[tokio::test]
async fn the_worker_serves_health_readiness_and_metrics() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.ops_addr);
    let client = reqwest::Client::new();

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    assert_eq!(metrics.status(), 200);
    app.cleanup().await;
}
