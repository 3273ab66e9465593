//! One slow or failing endpoint (webhook), origin or account does not hold back deliveries to
//! the others.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", app.ops_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_hanging_webhook_at_its_cap_does_not_hold_back_the_other_nine() {
    let app = spawn_app_with(
        "30s",
        &[
            ("HOOKRELAY__DELIVERY__TIMEOUT", "30s"),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "2"),
            ("HOOKRELAY__AMQP__PREFETCH", "8"),
        ],
    )
    .await;
    app.receiver.behave("/hang", Behaviour::Hang);
    app.add_webhook("iso", "/hang", &["*"], Format::Standard)
        .await;
    for i in 0..9 {
        app.add_webhook("iso", &format!("/ok/{i}"), &["*"], Format::Standard)
            .await;
    }

    for _ in 0..40 {
        app.publish(EventType::PaymentCardSuccess, "iso", "{}")
            .await;
    }

    // With a prefetch of 8 and 40 events, the nine only get everything if the hanging one's
    // requests stop holding events: past its cap of 2 they wait in the delay queue instead.
    for i in 0..9 {
        app.receiver.wait_for(&format!("/ok/{i}"), 40, WITHIN).await;
    }
    assert_eq!(
        app.receiver.hits_on("/hang").len(),
        2,
        "only the cap is in flight"
    );
    // The other 38 deliveries to the hanging webhook wait in the first delay queue.
    let delay_queue = app.topology().retry_queue(Duration::from_secs(30));
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.queue_depth(&delay_queue).await < 38 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deferred deliveries missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.queue_depth(&delay_queue).await, 38);
    assert_eq!(app.receiver.hits_on("/hang").len(), 2);
    app.cleanup().await;
}

#[tokio::test]
async fn the_circuit_opens_for_a_failing_webhook_and_a_successful_probe_closes_it() {
    let app = spawn_app_with("1s,1s,1s,1s,1s,1s,1s,1s,1s,1s", &[]).await;
    app.receiver.behave("/flaky", Behaviour::Status(500));
    app.add_webhook("cb", "/flaky", &["*"], Format::Standard)
        .await;

    for _ in 0..5 {
        app.publish(EventType::CustomerUpdated, "cb", "{}").await;
    }
    app.receiver.wait_for("/flaky", 5, WITHIN).await;
    // Five consecutive failures opened the circuit: new deliveries wait without a request.
    for _ in 0..5 {
        app.publish(EventType::CustomerUpdated, "cb", "{}").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&app, "hookrelay_circuits_opened_total").await, 1.0);
    assert!(metric(&app, "hookrelay_deliveries_deferred_total").await >= 5.0);
    assert_eq!(
        app.receiver.hits_on("/flaky").len(),
        5,
        "no request while open"
    );

    // The endpoint recovers: a probe succeeds, the circuit closes, all ten are delivered.
    app.receiver.behave("/flaky", Behaviour::Status(200));
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let delivered = app.receiver.hits_on("/flaky").len() - 5;
        // Each of the 10 events is delivered once it gets a 200 (earlier tries were 500s).
        let ok_ids: std::collections::HashSet<_> = app.receiver.hits_on("/flaky")[5..]
            .iter()
            .map(|h| h.headers["webhook-id"].to_str().unwrap().to_owned())
            .collect();
        if ok_ids.len() == 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} requests after recovery, {} events",
            ok_ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    app.cleanup().await;
}

/// Five accounts with ten webhooks each on one origin (the slow receiver), one account with a
/// healthy webhook on another origin (a second receiver, another port).
struct Neighbours {
    healthy: Receiver,
    healthy_shutdown: tokio_util::sync::CancellationToken,
}

const SLOW_ACCOUNTS: usize = 5;
const SLOW_WEBHOOKS: usize = 10;
/// The origin and account shares of the noisy-neighbour measurement.
const SHARE: &str = "32";

impl Neighbours {
    async fn set_up(app: &TestApp, slow: Behaviour) -> Neighbours {
        for a in 0..SLOW_ACCOUNTS {
            for w in 0..SLOW_WEBHOOKS {
                let path = format!("/slow/{a}/{w}");
                app.receiver.behave(&path, slow.clone());
                app.add_webhook(&format!("noisy{a}"), &path, &["*"], Format::Standard)
                    .await;
            }
        }
        let healthy_shutdown = tokio_util::sync::CancellationToken::new();
        let healthy = Receiver::start(healthy_shutdown.clone()).await;
        app.store
            .create(
                &"calm".parse().unwrap(),
                hookrelay::subscription::store::NewWebhook {
                    url: hookrelay::subscription::WebhookUrl::parse(&healthy.url("/ok"), true)
                        .unwrap(),
                    events: hookrelay::subscription::EventFilter::parse(&["*"]).unwrap(),
                    format: Format::Standard,
                    description: String::new(),
                    rate_limit: None,
                },
            )
            .await
            .unwrap();
        Neighbours {
            healthy,
            healthy_shutdown,
        }
    }

    async fn make_noise(&self, app: &TestApp, events_per_account: usize) {
        for _ in 0..events_per_account {
            for a in 0..SLOW_ACCOUNTS {
                app.publish(EventType::PaymentCardSuccess, &format!("noisy{a}"), "{}")
                    .await;
            }
        }
    }

    /// Publishes `n` events to the healthy account and waits until the healthy webhook has had
    /// `total` requests; returns how long that took.
    ///
    /// `within` is generous: on a starved machine a few healthy requests can take over 500 ms
    /// and defer (the per-webhook slow rule) for one first retry step.
    async fn healthy_events(
        &self,
        app: &TestApp,
        n: usize,
        total: usize,
        within: Duration,
    ) -> Duration {
        let started = std::time::Instant::now();
        for _ in 0..n {
            app.publish(EventType::PaymentCardSuccess, "calm", "{}")
                .await;
        }
        self.healthy.wait_for("/ok", total, within).await;
        started.elapsed()
    }

    fn slow_hits(&self, app: &TestApp) -> usize {
        app.receiver
            .hits()
            .iter()
            .filter(|h| h.path.starts_with("/slow/"))
            .count()
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        self.healthy_shutdown.cancel();
    }
}

#[tokio::test]
async fn fifty_hanging_webhooks_on_one_origin_hold_one_share_and_another_accounts_events_all_arrive(
) {
    // Deferred deliveries and hanging requests do not come back while the test runs.
    let app = spawn_app_with(
        "60s",
        &[
            ("HOOKRELAY__DELIVERY__TIMEOUT", "60s"),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT", "16"),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT_PER_ORIGIN", "4"),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT_PER_ACCOUNT", "4"),
            ("HOOKRELAY__AMQP__PREFETCH", "64"),
        ],
    )
    .await;
    let n = Neighbours::set_up(&app, Behaviour::Hang).await;
    n.make_noise(&app, 4).await;
    // The noise is in flight (and hangs) before the healthy events.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while n.slow_hits(&app) < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no noise in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without isolation by origin the 50 webhooks take all 16 slots (32 each allowed) and the
    // healthy events wait for the 60 s timeout.
    // 45 s: less than the hanging requests' timeout.
    n.healthy_events(&app, 20, 20, Duration::from_secs(45))
        .await;
    assert_eq!(
        n.slow_hits(&app),
        4,
        "the slow origin holds its share of 4, nothing more, while everything hangs"
    );
    // The other 196 deliveries to the slow origin wait in the delay queue, not in the worker.
    let delay_queue = app.topology().retry_queue(Duration::from_secs(60));
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.queue_depth(&delay_queue).await < 196 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deferred deliveries missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.queue_depth(&delay_queue).await, 196);
    assert!(metric(&app, "hookrelay_share_deferrals_total{share=\"origin\"}").await >= 1.0);
    assert_eq!(n.slow_hits(&app), 4);
    app.cleanup().await;
}

#[tokio::test]
async fn a_healthy_webhook_under_a_slow_neighbour_with_fifty_webhooks_prints_its_time_alone_and_under_noise(
) {
    // The receiver (3 s); max_in_flight and its shares scaled down from the defaults
    // (a quarter each), so that the noise fills max_in_flight without the shares.
    let app = spawn_app_with(
        "10s",
        &[
            ("HOOKRELAY__DELIVERY__TIMEOUT", "30s"),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT", "128"),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT_PER_ORIGIN", SHARE),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT_PER_ACCOUNT", SHARE),
        ],
    )
    .await;
    let n = Neighbours::set_up(&app, Behaviour::Delay(Duration::from_secs(3))).await;
    let alone = n
        .healthy_events(&app, 100, 100, Duration::from_secs(90))
        .await;

    n.make_noise(&app, 40).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while n.slow_hits(&app) < 32 {
        assert!(tokio::time::Instant::now() < deadline, "no noise in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noisy = n
        .healthy_events(&app, 100, 200, Duration::from_secs(90))
        .await;
    println!(
        "noisy neighbour: 100 events to the healthy webhook took {} ms alone and {} ms while \
         {} accounts x {} webhooks on a 3 s receiver were busy ({} slow requests so far; {:.1}x)",
        alone.as_millis(),
        noisy.as_millis(),
        SLOW_ACCOUNTS,
        SLOW_WEBHOOKS,
        n.slow_hits(&app),
        noisy.as_secs_f64() / alone.as_secs_f64()
    );
    app.cleanup().await;
}
