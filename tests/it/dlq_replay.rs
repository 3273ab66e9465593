//! `hookrelay dlq replay` (DESIGN §4): a dead delivery goes back for a fresh round with the same
//! `webhook-id` and leaves the DLQ only once the republish is confirmed; deleted or disabled
//! webhooks are refused unless forced; dry runs change nothing; a letter dead-lettered twice is
//! sent once; letters the broker dead-lettered by itself list as `delivery_limit` and replay.

use crate::helpers::dead_letters::*;
use crate::helpers::*;
use base64::Engine;
use hookrelay::broker::publisher::{Headers, Outgoing};
use hookrelay::dlq::replay::ReplayOptions;
use hookrelay::dlq::{DlqQueue, Filter, Selection};
use hookrelay::event::{AccountId, EventType};
use hookrelay::messages::{DeadReason, DeliveryJob};
use hookrelay::subscription::Format;
use lapin::options::QueueDeleteOptions;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(15);

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
