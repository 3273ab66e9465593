//! No single input crashes, wedges or bloats a worker (issue "hostile input"): each test feeds
//! one hostile event, stored record or configuration to a worker on the real RabbitMQ and Redis
//! and checks the outcome DESIGN names, that nothing else was delivered, and that the worker is
//! still alive and healthy with its memory under a small bound afterwards.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::store::Store;
use hookrelay::subscription::Format;
use redis::AsyncCommands;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);
const OK: &str = "payment.card.success";

/// Peak RSS of this test's process (nextest runs each test in its own): the in-process worker
/// plus the test itself.
const RSS_BOUND_BYTES: u64 = 150 << 20;

fn envelope(id: &str, account: &str, data: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"{OK}","account_id":"{account}","created_at":"2026-11-27T02:04:21Z","data":{data}}}"#
    )
}

/// `{"a":[[[…1…]]]}` nested `levels` deep.
fn nested(levels: usize) -> String {
    format!(
        r#"{{"a":{}1{}}}"#,
        "[".repeat(levels - 1),
        "]".repeat(levels - 1)
    )
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

/// The worker answers /healthz and /readyz, and the process stayed under the memory bound.
pub async fn assert_worker_alive(app: &TestApp) {
    let base = format!("http://{}", app.ops_addr);
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "the worker lives");
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker is not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss = peak_rss();
    assert!(
        rss < RSS_BOUND_BYTES,
        "peak RSS {} MB is over the bound",
        rss >> 20
    );
}

/// Publishes each body with `routing_key` and expects one poison letter per body with `reason`
/// in the events DLQ, no delivery, then a good event still delivered.
async fn assert_poison(app: &TestApp, bodies: &[Vec<u8>], reason: &str) {
    for body in bodies {
        app.publish_raw(OK, body).await;
    }
    let dead = app
        .wait_for_queue(&app.topology().dlq_events(), bodies.len(), WITHIN)
        .await;
    let mut kept: Vec<&Vec<u8>> = dead.iter().map(|d| &d.data).collect();
    let mut sent: Vec<&Vec<u8>> = bodies.iter().collect();
    kept.sort();
    sent.sort();
    assert_eq!(kept, sent, "each raw body is kept as it came, once");
    for letter in &dead {
        assert_eq!(
            header_text(letter, "hookrelay-reason").as_deref(),
            Some(reason)
        );
    }
    let before = app.receiver.hits_on("/h").len();
    app.publish(EventType::PaymentCardSuccess, "h", "{}").await;
    app.receiver.wait_for("/h", before + 1, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.receiver.hits_on("/h").len(),
        before + 1,
        "nothing else delivered"
    );
    assert_worker_alive(app).await;
}

#[tokio::test]
async fn data_nested_120000_levels_deep_is_too_deep_and_harms_no_worker() {
    let app = spawn_app().await;
    app.add_webhook("h", "/h", &["*"], Format::Inplayer).await;
    let deep = envelope("evt_deep", "h", &nested(120_000));
    let middling = envelope("evt_mid", "h", &nested(20_000));
    assert!(deep.len() < 262_144, "under the size limit: depth decides");
    assert_poison(&app, &[deep.into(), middling.into()], "too_deep").await;
    app.cleanup().await;
}

#[tokio::test]
async fn malformed_envelopes_go_to_the_events_dlq_with_their_reason() {
    let app = spawn_app().await;
    app.add_webhook("h", "/h", &["*"], Format::Standard).await;
    assert_poison(
        &app,
        &[
            envelope("evt_1\\r\\nX-Injected: 1", "h", "{}").into(),
            envelope("evt_2", "h\\r\\nx", "{}").into(),
            envelope("evt_3", "h", "[1]").into(),
        ],
        "invalid_field",
    )
    .await;
    assert_poison(
        &app,
        &[envelope("evt_4", "h", "null").into()],
        "missing_field",
    )
    .await;
    let mut raw = envelope("evt_5", "h", r#"{"s":"AB"}"#).into_bytes();
    let at = raw.iter().position(|b| *b == b'A').unwrap();
    raw[at] = 0xFF;
    raw[at + 1] = 0xFE;
    assert_poison(&app, &[raw, vec![0xFF; 64]], "invalid_json").await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_envelope_one_byte_over_256_kib_is_too_large() {
    let app = spawn_app().await;
    app.add_webhook("h", "/h", &["*"], Format::Standard).await;
    let skeleton = envelope("evt_big", "h", r#"{"pad":""}"#);
    let pad = "x".repeat(262_144 + 1 - skeleton.len());
    let body = envelope("evt_big", "h", &format!(r#"{{"pad":"{pad}"}}"#));
    assert_eq!(body.len(), 262_145);
    assert_poison(&app, &[body.into()], "too_large").await;
    app.cleanup().await;
}

#[tokio::test]
async fn odd_but_valid_json_is_delivered_byte_for_byte_on_the_retry_too() {
    let app = spawn_app().await;
    app.add_webhook("h", "/h", &["*"], Format::Standard).await;
    app.receiver.behave(
        "/h",
        Behaviour::FailTimes {
            times: 1,
            status: 500,
        },
    );
    let data = r#"{"big":1e400,"lone":"\ud800","amount":10.00,"k":1,"k":2}"#;
    app.publish_raw(OK, envelope("evt_odd", "h", data).as_bytes())
        .await;

    let hits = app.receiver.wait_for("/h", 2, WITHIN).await;
    let needle = format!(r#""data":{data}}}"#);
    for hit in &hits {
        let body = String::from_utf8(hit.body.to_vec()).unwrap();
        assert!(body.ends_with(&needle), "data passed through: {body}");
        assert_eq!(hit.headers["webhook-id"], "evt_odd");
    }
    assert_eq!(hits[0].body, hits[1].body, "attempt 2 sends the same bytes");
    assert_worker_alive(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn duplicate_keys_and_lone_surrogates_render_deterministically_in_the_inplayer_form() {
    let app = spawn_app().await;
    app.add_webhook("h", "/h", &["*"], Format::Inplayer).await;
    app.publish_raw(
        OK,
        envelope("evt_dup", "h", r#"{"k":"a","k":"b","s":"\ud800"}"#).as_bytes(),
    )
    .await;
    let hit = app.receiver.wait_for("/h", 1, WITHIN).await.remove(0);
    assert_eq!(
        String::from_utf8(hit.body.to_vec()).unwrap(),
        "id=evt_dup&created=1795745061&type=payment.card.success&resource%5Bk%5D=a&resource%5Bk%5D=b&resource%5Bs%5D=%EF%BF%BD"
    );
    assert_worker_alive(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_form_body_over_one_mebibyte_is_dead_lettered_as_body_too_large() {
    let app = spawn_app().await;
    let form = app
        .add_webhook("h", "/form", &["*"], Format::Inplayer)
        .await;
    app.add_webhook("h", "/json", &["*"], Format::Standard)
        .await;
    // A 50 KB key repeated for each of 30 leaves: 1.5 MB of form from a 50 KB event.
    let data = format!(
        r#"{{"{}":[{}]}}"#,
        "k".repeat(50_000),
        vec!["1"; 30].join(",")
    );
    app.publish_raw(OK, envelope("evt_wide", "h", &data).as_bytes())
        .await;

    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(
        header_text(&dead, "hookrelay-reason").as_deref(),
        Some("body_too_large")
    );
    assert_eq!(
        header_text(&dead, "hookrelay-webhook-id").as_deref(),
        Some(form.id.as_str())
    );
    // The JSON webhook of the same account gets it: only the form is too large.
    app.receiver.wait_for("/json", 1, WITHIN).await;
    assert!(app.receiver.hits_on("/form").is_empty(), "no request made");
    assert_worker_alive(&app).await;
    app.cleanup().await;
}

async fn store_raw_record(app: &TestApp, account: &str, id: &str, json: &str) {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:{{{account}}}:webhooks", app.prefix);
    let _: () = conn.hset(&key, id, json).await.unwrap();
    let _: () = conn
        .incr(format!("{}:{{{account}}}:version", app.prefix), 1)
        .await
        .unwrap();
    let _: () = conn
        .publish(format!("{}:changes", app.prefix), format!("{account} 999"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_corrupt_stored_record_is_skipped_and_its_deliveries_are_dead_lettered() {
    let app = spawn_app().await;
    app.add_webhook("h", "/good", &["*"], Format::Standard)
        .await;
    // As an older version stored it: `{` x 2000 passed the length check before normalisation
    // and was stored as `%7B` x 2000, over the limit for every later read.
    let bad_url = format!("https://example.com/{}", "%7B".repeat(2000));
    let good = app
        .add_webhook("h", "/other", &["*"], Format::Standard)
        .await;
    let key = format!("{}:{{h}}:webhooks", app.prefix);
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: String = conn.hget(&key, good.id.as_str()).await.unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&stored).unwrap();
    record["url"] = bad_url.into();
    store_raw_record(&app, "h", good.id.as_str(), &record.to_string()).await;
    store_raw_record(&app, "h", "wh_garbage", "not json at all").await;

    let snapshot = app.store.snapshot(&"h".parse().unwrap()).await.unwrap();
    assert_eq!(snapshot.webhooks.len(), 1, "the readable one is still read");
    assert_eq!(snapshot.unreadable.len(), 2);

    app.publish(EventType::PaymentCardSuccess, "h", "{}").await;
    app.receiver.wait_for("/good", 1, WITHIN).await;
    let dead = app
        .wait_for_queue(&app.topology().dlq_deliveries(), 2, WITHIN)
        .await;
    let mut ids: Vec<_> = dead
        .iter()
        .map(|d| {
            assert_eq!(
                header_text(d, "hookrelay-reason").as_deref(),
                Some("webhook_unreadable")
            );
            header_text(d, "hookrelay-webhook-id").unwrap()
        })
        .collect();
    ids.sort();
    let mut expected = vec![good.id.to_string(), "wh_garbage".to_owned()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_worker_alive(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_worker_whose_secret_key_cannot_open_the_stored_secrets_refuses_to_start() {
    let key_a = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, base64
    let key_b = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let app = spawn_app_with("200ms", &[("HOOKRELAY__REDIS__SECRET_KEY", key_a)]).await;
    let sealed = Store::from_settings(&app.settings.redis).await.unwrap();
    sealed.verify_secret_key().await.unwrap();
    sealed
        .create(
            &"h".parse().unwrap(),
            hookrelay::subscription::store::NewWebhook {
                url: hookrelay::subscription::WebhookUrl::parse("https://example.com/x", false)
                    .unwrap(),
                events: hookrelay::subscription::EventFilter::parse(&["*"]).unwrap(),
                format: Format::Standard,
                description: String::new(),
                rate_limit: None,
            },
        )
        .await
        .unwrap();

    for (key, says) in [(key_b, "does not open"), ("", "is not set")] {
        let wrong = settings(
            &app.prefix,
            "200ms",
            &[("HOOKRELAY__REDIS__SECRET_KEY", key)],
        );
        let err = hookrelay::worker::start(wrong, tokio_util::sync::CancellationToken::new())
            .await
            .err()
            .expect("the worker refuses to start");
        let message = format!("{err:#}");
        assert!(
            message.contains("redis.secret_key") && message.contains(says),
            "{message}"
        );
    }
    assert_worker_alive(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn large_events_in_hand_at_once_are_bounded_by_max_in_flight_bytes() {
    // 1 MiB in hand and events of about 200 KB: five at a time, whatever the prefetch.
    let app = spawn_app_with(
        "30s",
        &[
            ("HOOKRELAY__WORKER__MAX_IN_FLIGHT_BYTES", "1048576"),
            ("HOOKRELAY__AMQP__PREFETCH", "64"),
        ],
    )
    .await;
    app.receiver
        .behave("/big", Behaviour::Delay(Duration::from_millis(300)));
    app.add_webhook("big", "/big", &["*"], Format::Standard)
        .await;
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200_000));
    for _ in 0..20 {
        app.publish(EventType::PaymentCardSuccess, "big", &data)
            .await;
    }

    let hits = app.receiver.wait_for("/big", 20, WITHIN).await;
    let mut arrivals: Vec<_> = hits.iter().map(|h| h.at).collect();
    arrivals.sort();
    // Each request is held 300 ms: six arrivals within 200 ms mean six were in hand at once.
    let most_at_once = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < Duration::from_millis(200))
                .count()
        })
        .max()
        .unwrap();
    assert!(most_at_once <= 5, "{most_at_once} at once: {arrivals:?}");
    // Twenty in waves of at most five, each held 300 ms: at least three waves after the first.
    let spread = arrivals[19].duration_since(arrivals[0]);
    assert!(spread >= Duration::from_millis(900), "all in {spread:?}");
    assert_worker_alive(&app).await;
    app.cleanup().await;
}
