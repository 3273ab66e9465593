//! The dead-letter part of the harness: writes dead letters straight into a test's queues the
//! way the worker does, reads them back through `Dlq`, and builds queues the broker dead-letters
//! from by itself (past a delivery limit).

use crate::helpers::*;
use chrono::Utc;
use hookrelay::broker::publisher::{NewEvent, Outgoing, Publisher};
use hookrelay::dlq::{DeadLetter, Dlq, Selection};
use hookrelay::event::{AccountId, Event, EventType};
use hookrelay::messages::dead::{dead_letter_id, Dying};
use hookrelay::messages::{DeadDelivery, DeadReason, History};
use hookrelay::subscription::WebhookId;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(15);

/// Writes dead letters straight into a test's queues, the way the worker does.
pub struct Writer {
    pub conn: lapin::Connection,
    pub publisher: Publisher,
}

impl Writer {
    pub async fn new() -> Writer {
        let conn = hookrelay::broker::connect(AMQP_URL, "hookrelay dlq test")
            .await
            .unwrap();
        let publisher = Publisher::new(&conn, Duration::from_secs(5)).await.unwrap();
        Writer { conn, publisher }
    }

    /// Publishes `dead` to the deliveries DLQ and returns its id.
    pub async fn put(&self, app: &TestApp, dead: &DeadDelivery) -> String {
        let id = dead_letter_id();
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &app.topology().dlq_deliveries(),
                body: &serde_json::to_vec(dead).unwrap(),
                message_id: Some(&id),
                content_type: "application/json",
                headers: dead.headers(),
                expiration_ms: None,
            })
            .await
            .unwrap();
        id
    }
}

/// An event of type `t` for `account`, as a publisher would have built it.
pub fn event(account: &str, t: EventType) -> Event {
    NewEvent {
        id: None,
        event_type: t,
        account_id: AccountId::parse(account).unwrap(),
        created_at: None,
        data: serde_json::value::RawValue::from_string(r#"{"amount":"10.00"}"#.into()).unwrap(),
    }
    .into_event()
}

/// A dead delivery of `event` to `webhook` after three attempts, dead-lettered for `reason`.
pub fn dead(event: &Event, webhook: &WebhookId, reason: DeadReason) -> DeadDelivery {
    DeadDelivery::new(
        reason,
        Dying {
            event,
            envelope: None,
            webhook_id: webhook.as_str(),
            url: "https://example.com/hook",
            attempts: 3,
            history: &History::new(Utc::now()),
        },
    )
}

/// The test's DLQ, as `hookrelay dlq` connects to it.
pub async fn dlq(app: &TestApp) -> Dlq {
    Dlq::connect(&app.settings).await.expect("dlq connects")
}

/// The ids of `letters`, in their order.
pub fn ids(letters: &[DeadLetter]) -> Vec<String> {
    letters.iter().map(|l| l.id.clone()).collect()
}

/// Waits until `queue` holds exactly `n` messages.
pub async fn wait_for_depth(app: &TestApp, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.queue_depth(queue).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never held {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Selects every letter (`--all`).
pub fn all() -> Selection {
    Selection {
        all: true,
        ..Default::default()
    }
}

/// A quorum queue with a delivery limit of 1 that dead-letters to `dead_letter_to`, and a topic
/// exchange bound to it, so a message keeps the routing key it was published with in `x-death`.
pub async fn limited_queue(channel: &lapin::Channel, name: &str, dead_letter_to: &str) {
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), text("quorum"));
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(1),
    );
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        text(dead_letter_to),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Topic,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Takes and requeues the message of `queue` until the broker dead-letters it.
pub async fn return_until_dead_lettered(channel: &lapin::Channel, queue: &str) {
    for _ in 0..10 {
        let Some(msg) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        else {
            return;
        };
        msg.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{queue} never dead-lettered its message");
}
