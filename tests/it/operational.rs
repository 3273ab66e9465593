//! Operational events on `<prefix>.operational`, consumed by the test through a queue of its own
//! bound to the exchange: once per change across three workers, `gone`, dead letters, and a
//! worker killed (`kill -9`) right after deciding.

use crate::helpers::{spawn_app_with, Behaviour, TestApp, AMQP_URL, REDIS_URL};
use hookrelay::event::EventType;
use hookrelay::subscription::store::WebhookPatch;
use hookrelay::subscription::Format;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A test's queue bound to the operational exchange with `#`, read with basic.get.
struct Tap {
    channel: lapin::Channel,
    queue: String,
    seen: Vec<Value>,
}

impl Tap {
    /// Binds before anything is published: the broker drops what no queue is bound for.
    async fn bind(app: &TestApp) -> Tap {
        let channel = app.amqp_channel().await;
        let queue = format!("{}.test-operational", app.prefix);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                app.topology().operational_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        Tap {
            channel,
            queue,
            seen: Vec::new(),
        }
    }

    /// Takes what arrived; checks each message is persistent, confirmed-shaped and routed by
    /// its type.
    async fn take(&mut self) {
        while let Some(msg) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            let body: Value = serde_json::from_slice(&msg.delivery.data).unwrap();
            assert_eq!(
                body["type"].as_str(),
                Some(msg.delivery.routing_key.as_str())
            );
            assert_eq!(msg.delivery.properties.delivery_mode(), &Some(2));
            for field in ["id", "type", "account_id", "created_at", "data"] {
                assert!(!body[field].is_null(), "{field} missing in {body}");
            }
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            self.seen.push(body);
        }
    }

    /// Waits until an event of `kind` arrived; panics after `within`.
    async fn wait_for(&mut self, kind: &str, within: Duration) {
        self.wait_until(kind, |e| e["type"] == kind, within).await
    }

    /// Waits until an event `matches` (described by `what`); panics after `within`.
    async fn wait_until(&mut self, what: &str, matches: impl Fn(&Value) -> bool, within: Duration) {
        let kind = what;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.take().await;
            if self.seen.iter().any(&matches) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} within {within:?}; got {:?}",
                self.sequence()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn of(&self, kind: &str) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["type"] == kind).collect()
    }

    /// `type` (with threshold or reason) of each event, in consumed order.
    fn sequence(&self) -> Vec<String> {
        self.seen.iter().map(label).collect()
    }
}

fn label(e: &Value) -> String {
    let data = &e["data"];
    match (&data["threshold_percent"], &data["reason"]) {
        (Value::Number(t), _) => format!("{} {t}%", e["type"].as_str().unwrap()),
        (_, Value::String(r)) => format!("{} ({r})", e["type"].as_str().unwrap()),
        _ => e["type"].as_str().unwrap().to_owned(),
    }
}

/// The bodies of the events pending in a webhook's health record.
async fn pending_bodies(
    app: &TestApp,
    webhook: &hookrelay::subscription::WebhookId,
) -> Vec<String> {
    let account = app.store.account_of(webhook).await.unwrap();
    let fields: std::collections::HashMap<String, String> = app
        .store
        .query_command(redis::cmd("HGETALL").arg(app.store.health_key(&account, webhook)))
        .await
        .unwrap();
    fields
        .into_iter()
        .filter(|(k, _)| k.starts_with("p:"))
        .map(|(_, v)| v)
        .collect()
}

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_announce_each_change_of_a_failing_endpoint_exactly_once() {
    // Arrange: three workers, an endpoint answering 500, disable_after 6 s (thresholds at 1.5,
    // 3 and 4.5 s), deliveries retried every 500 ms for longer than that.
    let schedule = vec!["500ms"; 40].join(",");
    let app = spawn_app_with(&schedule, &[("HOOKRELAY__DELIVERY__DISABLE_AFTER", "6s")]).await;
    let more = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(
            hookrelay::worker::start(app.settings.clone(), more.clone())
                .await
                .expect("worker starts"),
        );
    }
    let mut tap = Tap::bind(&app).await;
    let account = "acct-ops";
    app.receiver.behave("/down", Behaviour::Status(500));
    let webhook = app
        .add_webhook(account, "/down", &["*"], Format::Standard)
        .await;

    // Act: enough events that every worker attempts the endpoint concurrently.
    for _ in 0..30 {
        app.publish(EventType::CustomerUpdated, account, "{}").await;
    }
    tap.wait_for("webhook.disabled", WITHIN).await;
    // The deliveries still waiting are dead-lettered as webhook_disabled, each announced.
    let dead = app
        .wait_for_queue(&app.topology().dlq_deliveries(), 30, WITHIN)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tap.take().await;

    // Assert: each threshold once, one disable, in that order; one dead_lettered per letter.
    let changes: Vec<String> = tap
        .sequence()
        .into_iter()
        .filter(|l| !l.starts_with("delivery."))
        .collect();
    assert_eq!(
        changes,
        [
            "webhook.failing 25%",
            "webhook.failing 50%",
            "webhook.failing 75%",
            "webhook.disabled (failing)"
        ],
        "{:?}",
        tap.sequence()
    );
    let failing = tap.of("webhook.failing");
    assert_eq!(failing[0]["data"]["webhook_id"], webhook.id.as_str());
    assert_eq!(failing[0]["data"]["last_error"], "HTTP 500");
    assert_eq!(failing[0]["account_id"], account);
    assert!(failing[2]["data"]["consecutive_failures"].as_u64().unwrap() >= 3);
    let announced = tap.of("delivery.dead_lettered");
    assert_eq!(announced.len(), dead.len(), "one event per dead letter");
    let ids: std::collections::HashSet<_> = dead
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    for a in &announced {
        assert!(ids.contains(a["data"]["dead_letter_id"].as_str().unwrap()));
        assert_eq!(a["data"]["reason"], "webhook_disabled");
    }
    let stored = app.store.find(&webhook.id).await.unwrap();
    assert!(!stored.enabled, "disabled in the store too");

    // Act: the merchant fixes the endpoint and re-enables the webhook.
    app.receiver.behave("/down", Behaviour::Status(200));
    app.store
        .update(
            &account.parse().unwrap(),
            &webhook.id,
            WebhookPatch {
                enabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // every worker's cache hears of it
    for _ in 0..10 {
        app.publish(EventType::CustomerUpdated, account, "{}").await;
    }
    tap.wait_for("webhook.recovered", WITHIN).await;
    app.receiver.wait_for("/down", 1, WITHIN).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tap.take().await;

    // Assert: one recovery, and nothing else new.
    let recovered = tap.of("webhook.recovered");
    assert_eq!(recovered.len(), 1, "{:?}", tap.sequence());
    assert_eq!(recovered[0]["data"]["webhook_id"], webhook.id.as_str());
    let all_ids: std::collections::HashSet<_> =
        tap.seen.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(all_ids.len(), tap.seen.len(), "every event has its own id");
    assert!(
        pending_bodies(&app, &webhook.id).await.is_empty(),
        "every decided event was confirmed"
    );
    println!("consumed: {:#?}", tap.sequence());
    println!(
        "first failing: {}",
        serde_json::to_string_pretty(tap.of("webhook.failing")[0]).unwrap()
    );

    more.cancel();
    for w in workers {
        w.wait().await.expect("worker stopped cleanly");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_410_disables_the_webhook_and_announces_it_with_reason_gone() {
    let app = spawn_app_with("500ms", &[]).await;
    let mut tap = Tap::bind(&app).await;
    app.receiver.behave("/gone", Behaviour::Status(410));
    let webhook = app
        .add_webhook("acct-gone", "/gone", &["*"], Format::Standard)
        .await;

    app.publish(EventType::CustomerUpdated, "acct-gone", "{}")
        .await;
    tap.wait_for("delivery.dead_lettered", WITHIN).await;
    tap.wait_for("webhook.disabled", WITHIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tap.take().await;

    let disabled = tap.of("webhook.disabled");
    assert_eq!(disabled.len(), 1, "{:?}", tap.sequence());
    assert_eq!(disabled[0]["data"]["reason"], "gone");
    assert_eq!(disabled[0]["data"]["webhook_id"], webhook.id.as_str());
    let dead = tap.of("delivery.dead_lettered");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["data"]["reason"], "gone");
    assert_eq!(dead[0]["data"]["attempts"], 1);
    assert!(tap.of("webhook.failing").is_empty());
    // Where people look: `webhooks status` says why, and what the endpoint last answered.
    let out = crate::helpers::hookrelay(
        &app.prefix,
        &["webhooks", "status", "--account", "acct-gone", "--json"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown = &status["webhooks"][0];
    assert_eq!(shown["disabled_reason"], "gone");
    assert_eq!(shown["last_error"], "HTTP 410");
    assert_eq!(shown["consecutive_failures"], 1);
    app.cleanup().await;
}

#[tokio::test]
async fn dead_letter_events_can_be_turned_off() {
    let app = spawn_app_with(
        "200ms",
        &[("HOOKRELAY__OPERATIONAL__DEAD_LETTER_EVENTS", "false")],
    )
    .await;
    let mut tap = Tap::bind(&app).await;
    app.receiver.behave("/err", Behaviour::Status(500));
    app.add_webhook("acct-quiet", "/err", &["*"], Format::Standard)
        .await;

    app.publish(EventType::CustomerUpdated, "acct-quiet", "{}")
        .await;
    app.first_dead_delivery(WITHIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tap.take().await;

    assert!(
        tap.of("delivery.dead_lettered").is_empty(),
        "{:?}",
        tap.sequence()
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_decided_by_a_worker_killed_before_publishing_it_still_arrives_with_its_id() {
    // Arrange: no worker but a child process that stops right after its first decision.
    let schedule = vec!["300ms"; 60].join(",");
    let disable_after = "8s";
    let mut app = spawn_app_with(
        &schedule,
        &[
            ("HOOKRELAY__DELIVERY__DISABLE_AFTER", disable_after),
            ("HOOKRELAY__AMQP__PUBLISH_TIMEOUT", "1s"),
        ],
    )
    .await;
    app.stop_worker().await;
    let mut tap = Tap::bind(&app).await;
    app.receiver.behave("/flaky", Behaviour::Status(500));
    let webhook = app
        .add_webhook("acct-crash", "/flaky", &["*"], Format::Standard)
        .await;
    let marker = std::env::temp_dir().join(format!("{}-decided", app.prefix));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("worker")
        .env("HOOKRELAY__AMQP__URL", AMQP_URL)
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__AMQP__PREFIX", &app.prefix)
        .env("HOOKRELAY__REDIS__PREFIX", &app.prefix)
        .env("HOOKRELAY__DELIVERY__ALLOW_HTTP", "true")
        .env("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("HOOKRELAY__DELIVERY__RETRY_SCHEDULE", &schedule)
        .env("HOOKRELAY__DELIVERY__DISABLE_AFTER", disable_after)
        .env("HOOKRELAY__AMQP__PUBLISH_TIMEOUT", "1s")
        .env("HOOKRELAY__OPS__LISTEN", "127.0.0.1:0")
        .env(
            "HOOKRELAY_TEST_FAILPOINT",
            format!("operational-decided:{}", marker.display()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the worker binary starts");

    // Act: the child fails the endpoint until 25 % of disable_after, decides webhook.failing,
    // and is killed (SIGKILL) right there; a fresh worker takes over its message.
    app.publish(EventType::CustomerUpdated, "acct-crash", "{}")
        .await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !marker.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child never decided"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    tap.take().await;
    assert!(
        tap.of("webhook.failing").is_empty(),
        "published before the kill"
    );
    let left = pending_bodies(&app, &webhook.id).await;
    assert_eq!(left.len(), 1, "the decision is pending in Redis: {left:?}");
    let decided: Value = serde_json::from_str(&left[0]).unwrap();
    app.start_worker().await;
    let quarter =
        |e: &Value| e["type"] == "webhook.failing" && e["data"]["threshold_percent"] == 25;
    tap.wait_until("webhook.failing 25%", quarter, WITHIN).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tap.take().await;

    // Assert: the 25 % event arrived (once or twice), always with the id decided before the kill.
    let quarter: Vec<_> = tap.seen.iter().filter(|e| quarter(e)).collect();
    assert!((1..=2).contains(&quarter.len()), "{:?}", tap.sequence());
    assert!(
        quarter.iter().all(|e| **e == decided),
        "{quarter:?} vs {decided}"
    );
    assert_eq!(quarter[0]["data"]["webhook_id"], webhook.id.as_str());
    println!(
        "after the kill: {:?} (id {})",
        tap.sequence(),
        quarter[0]["id"]
    );
    let _ = std::fs::remove_file(&marker);
    app.cleanup().await;
}

/// The health script alone, against Redis: many callers failing at once past a threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_concurrent_failures_past_a_threshold_decide_it_exactly_once() {
    use hookrelay::subscription::health::{self, Outcome, Subject};
    let prefix = crate::helpers::test_prefix();
    let store =
        hookrelay::subscription::store::Store::connect(REDIS_URL, &prefix, Duration::from_secs(2))
            .await
            .unwrap();
    let account: hookrelay::event::AccountId = "acct-race".parse().unwrap();
    let webhook: hookrelay::subscription::WebhookId = "wh_race".parse().unwrap();
    let subject = Subject {
        account: &account,
        webhook: &webhook,
        url: "https://example.com/hook",
    };
    let (after, lease) = (Duration::from_millis(800), Duration::from_secs(30));
    let fail = Outcome::Failed("HTTP 500".into());
    let first = health::observe(&store, &subject, &fail, after, lease)
        .await
        .unwrap();
    assert!(
        first.events.is_empty(),
        "the first failure announces nothing"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // past 25 %, before 50 %

    let calls = (0..60).map(|_| health::observe(&store, &subject, &fail, after, lease));
    let decided: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let events: Vec<Value> = decided
        .iter()
        .flat_map(|d| d.events.iter().map(|b| serde_json::from_str(b).unwrap()))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "webhook.failing");
    assert_eq!(events[0]["data"]["threshold_percent"], 25);
    let period = health::period(&store, &account, &webhook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(period.consecutive_failures, 61);
    assert_eq!(period.last_error.as_deref(), Some("HTTP 500"));
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn an_unconfirmed_event_is_handed_out_again_with_its_id_once_its_lease_ran_out() {
    use hookrelay::subscription::health::{self, Outcome, Subject};
    let prefix = crate::helpers::test_prefix();
    let store =
        hookrelay::subscription::store::Store::connect(REDIS_URL, &prefix, Duration::from_secs(2))
            .await
            .unwrap();
    let account: hookrelay::event::AccountId = "acct-lease".parse().unwrap();
    let webhook: hookrelay::subscription::WebhookId = "wh_lease".parse().unwrap();
    let subject = Subject {
        account: &account,
        webhook: &webhook,
        url: "https://example.com/hook",
    };
    let lease = Duration::from_millis(500);
    let after = Duration::from_secs(60);
    let gone = health::observe(&store, &subject, &Outcome::Gone, after, lease)
        .await
        .unwrap();
    assert_eq!(gone.events.len(), 1);
    assert_eq!(gone.disabled.as_deref(), Some("gone"));

    // Within the lease nobody else gets it; after it, the next caller does, byte for byte.
    let during = health::observe(&store, &subject, &Outcome::Nothing, after, lease)
        .await
        .unwrap();
    assert!(during.events.is_empty());
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let again = health::observe(&store, &subject, &Outcome::Nothing, after, lease)
        .await
        .unwrap();
    assert_eq!(again.events, gone.events);

    // Confirmed, it is gone for good; a frozen (disabled) period announces nothing more.
    let id = serde_json::from_str::<Value>(&gone.events[0]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    health::confirmed(&store, &account, &webhook, &id)
        .await
        .unwrap();
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let fail = Outcome::Failed("HTTP 500".into());
    let later = health::observe(&store, &subject, &fail, after, lease)
        .await
        .unwrap();
    assert!(later.events.is_empty());
    store.purge_prefix().await.unwrap();
}

#[test]
fn events_operational_lists_the_four_operational_types() {
    let out = crate::helpers::hookrelay("hrt-unused", &["events", "--operational", "--json"], &[]);
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&str> = listed["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "webhook.failing",
            "webhook.disabled",
            "webhook.recovered",
            "delivery.dead_lettered"
        ]
    );
}
