//! Partitioned work queues (`amqp.partitions`, DESIGN §4, docs/partitions.md) on the real broker:
//! events spread over every partition and are delivered once, a retry comes back through a
//! partition, and a change of the partition count that would strand messages is refused.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::collections::HashMap;
use std::time::Duration;

const FOUR: &[(&str, &str)] = &[("HOOKRELAY__AMQP__PARTITIONS", "4")];

#[tokio::test]
async fn four_partitions_each_take_a_share_and_every_event_is_delivered_once() {
    let mut app = spawn_app_with("1s", FOUR).await;
    let accounts: Vec<String> = (0..200).map(|a| format!("acct-{a}")).collect();
    for account in &accounts {
        app.add_webhook(account, "/spread", &["*"], Format::Standard)
            .await;
    }
    // Stopped, the worker leaves what is published in the partitions to be counted exactly.
    app.stop_worker().await;
    let mut ids = Vec::new();
    for i in 0..1000 {
        let account = &accounts[i % accounts.len()];
        ids.push(
            app.publish(EventType::PaymentCardSuccess, account, "{}")
                .await,
        );
    }

    let topology = app.topology();
    let mut shares = Vec::new();
    for queue in topology.events_queues() {
        shares.push(app.queue_depth(&queue).await);
    }
    eprintln!("partition spread (events.0..3): {shares:?}");
    assert_eq!(
        shares.iter().sum::<u32>(),
        1000,
        "every event in a partition"
    );
    let mean = 1000 / 4;
    for (p, n) in shares.iter().enumerate() {
        assert!(*n > 0, "partition {p} is empty: {shares:?}");
        assert!(
            *n <= 2 * mean,
            "partition {p} holds over twice the mean: {shares:?}"
        );
    }

    app.start_worker().await;
    app.receiver
        .wait_for("/spread", 1000, Duration::from_secs(90))
        .await;
    // Time for a duplicate to show, had there been one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for hit in app.receiver.hits_on("/spread") {
        let id = hit.headers["webhook-id"].to_str().unwrap().to_owned();
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 1000, "every event delivered");
    assert!(seen.values().all(|n| *n == 1), "none delivered twice");
    assert!(ids.iter().all(|id| seen.contains_key(id)));
    for queue in topology.events_queues() {
        assert_eq!(app.queue_depth(&queue).await, 0, "{queue} drained");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_retry_comes_back_through_a_deliveries_partition_and_is_delivered() {
    let app = spawn_app_with("500ms", FOUR).await;
    app.receiver.behave(
        "/flaky",
        Behaviour::FailTimes {
            times: 1,
            status: 503,
        },
    );
    app.add_webhook("r", "/flaky", &["*"], Format::Standard)
        .await;

    let id = app.publish(EventType::SubscribeExpired, "r", "{}").await;

    let hits = app
        .receiver
        .wait_for("/flaky", 2, Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.receiver.hits_on("/flaky").len(), 2);
    assert!(hits.iter().all(|h| h.headers["webhook-id"] == id.as_str()));
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn shrinking_the_partitions_while_a_vanishing_one_holds_messages_is_refused_with_exit_78() {
    let mut app = spawn_app_with("1s", FOUR).await;
    app.stop_worker().await;
    // No webhook: the events only have to sit in the partitions.
    for _ in 0..40 {
        app.publish(EventType::SubscribeExpired, "nobody", "{}")
            .await;
    }
    let topology = app.topology();
    let stranded = app.queue_depth(&topology.events_queue_of(2)).await
        + app.queue_depth(&topology.events_queue_of(3)).await;
    assert!(stranded > 0, "40 events left partitions 2 and 3 empty");

    let out = hookrelay(
        &app.prefix,
        &["topology", "declare"],
        &[
            ("HOOKRELAY__AMQP__PARTITIONS", "2"),
            ("HOOKRELAY__DELIVERY__RETRY_SCHEDULE", "1s"),
        ],
    );

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("amqp.partitions = 2"), "{stderr}");
    assert!(
        stderr.contains(".events.2") || stderr.contains(".events.3"),
        "{stderr}"
    );
    // Refused means untouched: the four partitions are all still there with their messages.
    let left = app.queue_depth(&topology.events_queue_of(2)).await
        + app.queue_depth(&topology.events_queue_of(3)).await;
    assert_eq!(left, stranded);
    app.start_worker().await;
    app.cleanup().await;
}

#[tokio::test]
async fn growing_from_one_queue_to_four_partitions_replaces_the_drained_queues() {
    let mut app = spawn_app_with("1s", &[]).await;
    app.add_webhook("g", "/grow", &["*"], Format::Standard)
        .await;
    app.publish(EventType::SubscribeExpired, "g", "{}").await;
    app.receiver
        .wait_for("/grow", 1, Duration::from_secs(15))
        .await;
    app.stop_worker().await;

    app.settings = settings(&app.prefix, "1s", FOUR);
    app.start_worker().await;
    let id = app.publish(EventType::SubscribeExpired, "g", "{}").await;

    let hits = app
        .receiver
        .wait_for("/grow", 2, Duration::from_secs(15))
        .await;
    assert_eq!(hits[1].headers["webhook-id"], id.as_str());
    let unnumbered = format!("{}.events", app.prefix);
    let channel = app.amqp_channel().await;
    let gone = channel
        .queue_declare(
            unnumbered.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert!(gone.is_err(), "{unnumbered} was deleted");
    app.cleanup().await;
}
