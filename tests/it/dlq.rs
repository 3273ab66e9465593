//! `hookrelay dlq` against the real broker: listing shows every field and never loses or
//! reorders a letter; filters; replay (confirmed, deduplicated, refused for deleted or disabled
//! webhooks unless forced); dry runs; purge; letters the broker dead-lettered by itself.

use crate::helpers::*;
use base64::Engine;
use chrono::Utc;
use hookrelay::broker::publisher::{Headers, NewEvent, Outgoing, Publisher};
use hookrelay::dlq::replay::ReplayOptions;
use hookrelay::dlq::{DeadLetter, Dlq, DlqError, DlqQueue, Filter, Selection};
use hookrelay::event::{AccountId, Event, EventType};
use hookrelay::messages::dead::{dead_letter_id, Dying};
use hookrelay::messages::{DeadDelivery, DeadReason, DeliveryJob, History};
use hookrelay::subscription::{Format, WebhookId};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(15);

/// Writes dead letters straight into a test's queues, the way the worker does.
struct Writer {
    conn: lapin::Connection,
    publisher: Publisher,
}

impl Writer {
    async fn new() -> Writer {
        let conn = hookrelay::broker::connect(AMQP_URL, "hookrelay dlq test")
            .await
            .unwrap();
        let publisher = Publisher::new(&conn, Duration::from_secs(5)).await.unwrap();
        Writer { conn, publisher }
    }

    /// Publishes `dead` to the deliveries DLQ and returns its id.
    async fn put(&self, app: &TestApp, dead: &DeadDelivery) -> String {
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

fn event(account: &str, t: EventType) -> Event {
    NewEvent {
        id: None,
        event_type: t,
        account_id: AccountId::parse(account).unwrap(),
        created_at: None,
        data: serde_json::value::RawValue::from_string(r#"{"amount":"10.00"}"#.into()).unwrap(),
    }
    .into_event()
}

fn dead(event: &Event, webhook: &WebhookId, reason: DeadReason) -> DeadDelivery {
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

async fn dlq(app: &TestApp) -> Dlq {
    Dlq::connect(&app.settings).await.expect("dlq connects")
}

fn ids(letters: &[DeadLetter]) -> Vec<String> {
    letters.iter().map(|l| l.id.clone()).collect()
}

async fn wait_for_depth(app: &TestApp, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.queue_depth(queue).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never held {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all() -> Selection {
    Selection {
        all: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn listing_shows_every_field_of_an_exhausted_delivery_and_of_a_poison_event() {
    let app = spawn_app_with("200ms", &[]).await;
    app.receiver.behave("/down", Behaviour::Status(500));
    let webhook = app
        .add_webhook(
            "acct-1",
            "/down",
            &["payment.card.failed"],
            Format::Standard,
        )
        .await;
    let event_id = app
        .publish(
            EventType::PaymentCardFailed,
            "acct-1",
            r#"{"amount":"1.00"}"#,
        )
        .await;
    app.publish_raw("payment.card.success", b"not json").await;
    wait_for_depth(&app, &app.topology().dlq_deliveries(), 1).await;
    wait_for_depth(&app, &app.topology().dlq_events(), 1).await;
    let dlq = dlq(&app).await;

    let deliveries = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    let events = dlq
        .list(DlqQueue::Events, &Filter::default(), None)
        .await
        .unwrap();

    assert_eq!(deliveries.len(), 1);
    let d = serde_json::to_value(&deliveries[0]).unwrap();
    for key in [
        "id",
        "queue",
        "event_id",
        "event_type",
        "account_id",
        "webhook_id",
        "url",
        "attempts",
        "reason",
        "last_status",
        "last_error",
        "first_attempt_at",
        "last_attempt_at",
        "raw_body_base64",
    ] {
        assert!(d.get(key).is_some(), "{key} missing from {d}");
    }
    assert!(d["id"].as_str().unwrap().starts_with("dl_"));
    assert_eq!(d["queue"], "deliveries");
    assert_eq!(d["event_id"], event_id.as_str());
    assert_eq!(d["event_type"], "payment.card.failed");
    assert_eq!(d["account_id"], "acct-1");
    assert_eq!(d["webhook_id"], webhook.id.as_str());
    assert_eq!(d["url"], app.receiver.url("/down").as_str());
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["reason"], "exhausted");
    assert_eq!(d["last_status"], 500);
    assert!(d["first_attempt_at"].is_string());
    assert!(d["last_attempt_at"].is_string());
    assert!(d["raw_body_base64"].is_null());

    assert_eq!(events.len(), 1);
    let e = serde_json::to_value(&events[0]).unwrap();
    assert!(e["id"].as_str().unwrap().starts_with("dl_"));
    assert_eq!(e["queue"], "events");
    assert_eq!(e["reason"], "invalid_json");
    assert_eq!(e["raw_body_base64"], "bm90IGpzb24=");
    assert_eq!(e["routing_key"], "payment.card.success");
    assert!(e["error"].is_string());
    for unknown in [
        "event_id",
        "webhook_id",
        "attempts",
        "first_attempt_at",
        "last_attempt_at",
    ] {
        assert!(e[unknown].is_null(), "{unknown} of a poison event: {e}");
    }

    let shown = dlq.show(&deliveries[0].id, None).await.unwrap();
    let event: serde_json::Value = serde_json::from_str(shown.event.unwrap().get()).unwrap();
    assert_eq!(event["id"], event_id.as_str());
    assert_eq!(event["data"]["amount"], "1.00");
    assert_eq!(
        dlq.show(&events[0].id, None).await.unwrap().reason,
        "invalid_json"
    );
    assert!(matches!(
        dlq.show("dl_nosuchletter", None).await,
        Err(DlqError::NotFound(_))
    ));
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn listing_several_times_neither_loses_nor_reorders_dead_letters() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let webhook = WebhookId::generate();
    let mut written = Vec::new();
    // More than 32: RabbitMQ 3.x returns a multiple nack's messages in the hash order of an
    // Erlang map, which is sorted only up to 32 keys, so fewer would not catch that reordering.
    for i in 0..50 {
        let account = if i % 3 == 0 { "a-three" } else { "a-other" };
        let e = event(account, EventType::CustomerRegistered);
        written.push(
            writer
                .put(&app, &dead(&e, &webhook, DeadReason::Exhausted))
                .await,
        );
    }
    let dlq = dlq(&app).await;

    for _ in 0..3 {
        let listed = dlq
            .list(DlqQueue::Deliveries, &Filter::default(), None)
            .await
            .unwrap();
        assert_eq!(ids(&listed), written);
    }
    // Partial reads (a limit, a filter) hand back what they read in place too.
    let first = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), Some(4))
        .await
        .unwrap();
    assert_eq!(ids(&first), written[..4]);
    let some = Filter {
        account: Some("a-three".into()),
        ..Default::default()
    };
    let threes = dlq
        .list(DlqQueue::Deliveries, &some, Some(5))
        .await
        .unwrap();
    assert_eq!(
        ids(&threes),
        written
            .iter()
            .step_by(3)
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
    );

    let drained: Vec<String> = app
        .drain_queue(&app.topology().dlq_deliveries())
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(drained, written);
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn filters_select_by_account_type_webhook_reason_and_age() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let (one, two) = (WebhookId::generate(), WebhookId::generate());
    let mut old = dead(
        &event("a1", EventType::PaymentCardSuccess),
        &one,
        DeadReason::Exhausted,
    );
    old.last_attempt_at = Some((Utc::now() - chrono::Duration::hours(2)).to_rfc3339());
    let mut recent = dead(
        &event("a2", EventType::CustomerRegistered),
        &two,
        DeadReason::Gone,
    );
    recent.last_attempt_at = Some(Utc::now().to_rfc3339());
    let never_tried = dead(
        &event("a1", EventType::CustomerRegistered),
        &two,
        DeadReason::WebhookDeleted,
    );
    let a = writer.put(&app, &old).await;
    let b = writer.put(&app, &recent).await;
    let c = writer.put(&app, &never_tried).await;
    let dlq = dlq(&app).await;
    let list = |filter: Filter, limit: Option<usize>| {
        let dlq = &dlq;
        async move {
            ids(&dlq
                .list(DlqQueue::Deliveries, &filter, limit)
                .await
                .unwrap())
        }
    };
    let f = Filter::default;

    let by_account = list(
        Filter {
            account: Some("a1".into()),
            ..f()
        },
        None,
    )
    .await;
    let by_type = list(
        Filter {
            event_type: Some("customer.registered".into()),
            ..f()
        },
        None,
    )
    .await;
    let by_webhook = list(
        Filter {
            webhook: Some(two.to_string()),
            ..f()
        },
        None,
    )
    .await;
    let by_reason = list(
        Filter {
            reason: Some("gone".into()),
            ..f()
        },
        None,
    )
    .await;
    let older = list(
        Filter {
            older_than: Some(Duration::from_secs(3600)),
            ..f()
        },
        None,
    )
    .await;
    let both = list(
        Filter {
            account: Some("a1".into()),
            event_type: Some("customer.registered".into()),
            ..f()
        },
        None,
    )
    .await;
    let limited = list(f(), Some(2)).await;

    assert_eq!(by_account, [a.clone(), c.clone()]);
    assert_eq!(by_type, [b.clone(), c.clone()]);
    assert_eq!(by_webhook, [b.clone(), c.clone()]);
    assert_eq!(by_reason, [b.as_str()]);
    assert_eq!(older, [a.as_str()]);
    assert_eq!(both, [c.as_str()]);
    assert_eq!(limited, [a.clone(), b.clone()]);
    assert_eq!(list(f(), None).await, [a, b, c]);
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn replaying_an_exhausted_delivery_sends_it_again_with_the_same_webhook_id_and_empties_the_dlq(
) {
    let app = spawn_app_with("200ms", &[]).await;
    app.receiver.behave(
        "/flaky",
        Behaviour::FailTimes {
            times: 2,
            status: 500,
        },
    );
    app.add_webhook("r", "/flaky", &["*"], Format::Standard)
        .await;
    let event_id = app.publish(EventType::SubscribeExpired, "r", "{}").await;
    wait_for_depth(&app, &app.topology().dlq_deliveries(), 1).await;
    let dlq = dlq(&app).await;
    let letter = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap()
        .remove(0);

    let report = dlq
        .replay(
            &Selection {
                ids: vec![letter.id.clone()],
                ..Default::default()
            },
            ReplayOptions::default(),
            &app.store,
        )
        .await
        .unwrap();

    assert_eq!(report.count("replayed"), 1);
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    let hits = app.receiver.wait_for("/flaky", 3, WITHIN).await;
    assert!(hits
        .iter()
        .all(|h| h.headers["webhook-id"] == event_id.as_str()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        app.receiver.hits_on("/flaky").len(),
        3,
        "delivered once more"
    );
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn replay_refuses_deliveries_to_deleted_or_disabled_webhooks_unless_forced() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let account: AccountId = "rf".parse().unwrap();
    let disabled = app
        .add_webhook("rf", "/off", &["*"], Format::Standard)
        .await;
    let deleted = app
        .add_webhook("rf", "/del", &["*"], Format::Standard)
        .await;
    app.store
        .disable(&account, &disabled.id, "test")
        .await
        .unwrap();
    app.store.delete(&account, &deleted.id).await.unwrap();
    let e = event("rf", EventType::CustomerUpdated);
    let first = writer
        .put(&app, &dead(&e, &disabled.id, DeadReason::Exhausted))
        .await;
    let second = writer
        .put(&app, &dead(&e, &deleted.id, DeadReason::Exhausted))
        .await;
    let dlq = dlq(&app).await;

    let refused = dlq
        .replay(&all(), ReplayOptions::default(), &app.store)
        .await
        .unwrap();

    let reasons: Vec<_> = refused
        .items
        .iter()
        .map(|i| (i.outcome.name(), i.letter.id.clone()))
        .collect();
    assert_eq!(
        reasons,
        [("refused", first.clone()), ("refused", second.clone())]
    );
    assert_eq!(refused.to_json()["items"][0]["reason"], "webhook_disabled");
    assert_eq!(refused.to_json()["items"][1]["reason"], "webhook_deleted");
    let still = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    assert_eq!(ids(&still), [first, second]);

    let forced = dlq
        .replay(
            &all(),
            ReplayOptions {
                force: true,
                ..Default::default()
            },
            &app.store,
        )
        .await
        .unwrap();

    assert_eq!(forced.count("replayed"), 2);
    // The worker took them, and dead-lettered them again for the same reasons.
    wait_for_depth(&app, &app.topology().dlq_deliveries(), 2).await;
    let mut again: Vec<String> = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.reason)
        .collect();
    again.sort();
    assert_eq!(again, ["webhook_deleted", "webhook_disabled"]);
    assert!(app.receiver.hits().is_empty());
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_dry_run_says_what_would_happen_and_changes_nothing() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let webhook = app
        .add_webhook("dr", "/dry", &["*"], Format::Standard)
        .await;
    let mut written = Vec::new();
    for _ in 0..3 {
        let e = event("dr", EventType::AssetAccessGranted);
        written.push(
            writer
                .put(&app, &dead(&e, &webhook.id, DeadReason::Exhausted))
                .await,
        );
    }
    let dlq = dlq(&app).await;
    let dry = ReplayOptions {
        dry_run: true,
        ..Default::default()
    };

    let replay = dlq.replay(&all(), dry, &app.store).await.unwrap();
    let purge = dlq.purge(&all(), true).await.unwrap();

    assert!(replay.dry_run);
    assert_eq!(replay.count("replayed"), 3);
    assert_eq!(ids(&purge.purged), written);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.receiver.hits().is_empty());
    let listed = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    assert_eq!(ids(&listed), written);
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_delivery_dead_lettered_twice_is_replayed_once() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let webhook = app
        .add_webhook("dup", "/dup", &["*"], Format::Standard)
        .await;
    let e = event("dup", EventType::PaymentRefundSuccess);
    let letter = dead(&e, &webhook.id, DeadReason::Exhausted);
    let first = writer.put(&app, &letter).await;
    writer.put(&app, &letter).await;
    let dlq = dlq(&app).await;
    assert_eq!(
        dlq.list(DlqQueue::Deliveries, &Filter::default(), None)
            .await
            .unwrap()
            .len(),
        2,
        "listing shows both"
    );

    let report = dlq
        .replay(&all(), ReplayOptions::default(), &app.store)
        .await
        .unwrap();

    assert_eq!(report.count("replayed"), 1);
    assert_eq!(report.count("duplicate"), 1);
    assert_eq!(report.to_json()["items"][1]["duplicate_of"], first.as_str());
    let hits = app.receiver.wait_for("/dup", 1, WITHIN).await;
    assert_eq!(hits[0].headers["webhook-id"], e.id.as_str());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.receiver.hits_on("/dup").len(), 1);
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn purge_removes_exactly_the_selected_dead_letters() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let webhook = WebhookId::generate();
    let mut written = Vec::new();
    for i in 0..6 {
        let account = if i % 2 == 0 { "even" } else { "odd" };
        let e = event(account, EventType::SubscribeSuccess);
        written.push(
            writer
                .put(&app, &dead(&e, &webhook, DeadReason::Gone))
                .await,
        );
    }
    let dlq = dlq(&app).await;
    let remaining = || async {
        ids(&dlq
            .list(DlqQueue::Deliveries, &Filter::default(), None)
            .await
            .unwrap())
    };

    let by_id = dlq
        .purge(
            &Selection {
                ids: vec![written[1].clone(), written[4].clone()],
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(ids(&by_id.purged), [written[1].clone(), written[4].clone()]);
    assert_eq!(remaining().await, [0, 2, 3, 5].map(|i| written[i].clone()));

    let by_filter = dlq
        .purge(
            &Selection {
                filter: Filter {
                    account: Some("even".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&by_filter.purged),
        [written[0].clone(), written[2].clone()]
    );
    assert_eq!(remaining().await, [written[3].clone(), written[5].clone()]);

    let unknown = Selection {
        ids: vec![written[3].clone(), "dl_nosuchletter".into()],
        ..Default::default()
    };
    assert!(
        matches!(dlq.purge(&unknown, false).await, Err(DlqError::NotFound(missing)) if missing == ["dl_nosuchletter"])
    );
    assert!(matches!(
        dlq.purge(&Selection::default(), false).await,
        Err(DlqError::NothingSelected)
    ));
    assert_eq!(remaining().await, [written[3].clone(), written[5].clone()]);
    dlq.close().await;
    app.cleanup().await;
}

/// A quorum queue with a delivery limit of 1 that dead-letters to `dead_letter_to`, and a topic
/// exchange bound to it, so a message keeps the routing key it was published with in `x-death`.
async fn limited_queue(channel: &lapin::Channel, name: &str, dead_letter_to: &str) {
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
async fn return_until_dead_lettered(channel: &lapin::Channel, queue: &str) {
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

#[tokio::test]
async fn messages_the_broker_dead_lettered_past_their_delivery_limit_list_as_delivery_limit_and_replay(
) {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let webhook = app.add_webhook("bk", "/bk", &["*"], Format::Standard).await;
    let channel = writer.conn.create_channel().await.unwrap();
    let (jobs, envelopes) = (
        format!("{}.limit-jobs", app.prefix),
        format!("{}.limit-events", app.prefix),
    );
    limited_queue(&channel, &jobs, &app.topology().dlq_deliveries()).await;
    limited_queue(&channel, &envelopes, &app.topology().dlq_events()).await;
    let job_event = event("bk", EventType::PaymentCardSuccess);
    let job = DeliveryJob::fresh(&job_event, &webhook.id, "https://example.com/old");
    writer
        .publisher
        .publish(Outgoing {
            exchange: &jobs,
            routing_key: &jobs,
            body: &job.to_bytes(),
            message_id: None,
            content_type: "application/json",
            headers: Headers::default().int(hookrelay::messages::header::ATTEMPTS, 4),
            expiration_ms: None,
        })
        .await
        .unwrap();
    let raw_event = event("bk", EventType::CustomerRegistered);
    let envelope = raw_event.to_envelope_json();
    writer
        .publisher
        .publish(Outgoing {
            exchange: &envelopes,
            routing_key: "customer.registered",
            body: envelope.as_bytes(),
            message_id: Some(raw_event.id.as_str()),
            content_type: "application/json",
            headers: Headers::default(),
            expiration_ms: None,
        })
        .await
        .unwrap();

    return_until_dead_lettered(&channel, &jobs).await;
    return_until_dead_lettered(&channel, &envelopes).await;
    wait_for_depth(&app, &app.topology().dlq_deliveries(), 1).await;
    wait_for_depth(&app, &app.topology().dlq_events(), 1).await;
    let dlq = dlq(&app).await;
    let list = |queue| {
        let dlq = &dlq;
        async move { dlq.list(queue, &Filter::default(), None).await.unwrap() }
    };

    let d = list(DlqQueue::Deliveries).await.remove(0);
    let e = list(DlqQueue::Events).await.remove(0);

    assert_eq!(d.reason, "delivery_limit");
    assert!(d.id.starts_with("dx_"), "{}", d.id);
    assert_eq!(list(DlqQueue::Deliveries).await[0].id, d.id, "a stable id");
    assert_eq!(d.event_id.as_deref(), Some(job_event.id.as_str()));
    assert_eq!(d.event_type.as_deref(), Some("payment.card.success"));
    assert_eq!(d.account_id.as_deref(), Some("bk"));
    assert_eq!(d.webhook_id.as_deref(), Some(webhook.id.as_str()));
    assert_eq!(d.url.as_deref(), Some("https://example.com/old"));
    assert_eq!(d.attempts, Some(4));
    assert!(d.dead_lettered_at.is_some());
    assert_eq!(e.reason, "delivery_limit");
    assert!(e.id.starts_with("dx_"), "{}", e.id);
    assert_eq!(e.event_id.as_deref(), Some(raw_event.id.as_str()));
    assert_eq!(e.routing_key.as_deref(), Some("customer.registered"));
    assert_eq!(
        e.raw_body_base64.as_deref(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(&envelope)
                .as_str()
        )
    );
    let by_reason = Filter {
        reason: Some("delivery_limit".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&dlq
            .list(DlqQueue::Deliveries, &by_reason, None)
            .await
            .unwrap()),
        [d.id.as_str()]
    );

    let report = dlq
        .replay(
            &Selection {
                ids: vec![d.id.clone(), e.id.clone()],
                ..Default::default()
            },
            ReplayOptions::default(),
            &app.store,
        )
        .await
        .unwrap();

    assert_eq!(report.count("replayed"), 2, "{:?}", report.to_json());
    let hits = app.receiver.wait_for("/bk", 2, WITHIN).await;
    let mut got: Vec<String> = hits
        .iter()
        .map(|h| h.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = vec![job_event.id.to_string(), raw_event.id.to_string()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    assert_eq!(app.queue_depth(&app.topology().dlq_events()).await, 0);
    for q in [&jobs, &envelopes] {
        channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        channel
            .exchange_delete(q.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    dlq.close().await;
    app.cleanup().await;
}

async fn hookrelay(app: &TestApp, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(args)
        .env("HOOKRELAY__AMQP__URL", AMQP_URL)
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__AMQP__PREFIX", &app.prefix)
        .env("HOOKRELAY__REDIS__PREFIX", &app.prefix)
        .output()
        .await
        .expect("hookrelay runs")
}

#[tokio::test]
async fn dlq_list_json_prints_one_array_and_purge_without_yes_changes_nothing() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let e = event("cli", EventType::CustomerPasswordUpdated);
    let id = writer
        .put(
            &app,
            &dead(&e, &WebhookId::generate(), DeadReason::TargetRefused),
        )
        .await;

    let listed = hookrelay(&app, &["dlq", "list", "--json"]).await;
    let refused = hookrelay(&app, &["dlq", "purge", "--all"]).await;
    let shown = hookrelay(&app, &["dlq", "show", &id, "--json"]).await;

    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let array: serde_json::Value =
        serde_json::from_slice(&listed.stdout).expect("one JSON document");
    let array = array.as_array().expect("an array");
    assert_eq!(array.len(), 1);
    let letter = &array[0];
    assert_eq!(letter["id"], id.as_str());
    assert_eq!(letter["queue"], "deliveries");
    assert_eq!(letter["event_id"], e.id.as_str());
    assert_eq!(letter["reason"], "target_refused");
    assert_eq!(letter["attempts"], 3);
    for key in [
        "webhook_id",
        "url",
        "event_type",
        "account_id",
        "first_attempt_at",
    ] {
        assert!(letter[key].is_string(), "{key}: {letter}");
    }
    for key in [
        "last_status",
        "last_error",
        "last_attempt_at",
        "raw_body_base64",
    ] {
        assert!(
            letter.get(key).is_some_and(|v| v.is_null()),
            "{key}: {letter}"
        );
    }

    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 1);

    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["event"]["id"], e.id.as_str());
    app.cleanup().await;
}
