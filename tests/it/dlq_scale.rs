//! `hookrelay dlq` on queues larger than one window (65,535 letters): reading in many windows
//! keeps the order, and loses nothing when the connection ends mid-read; filters, purge and
//! replay reach letters anywhere; a replay interrupted halfway and run again sends every letter
//! exactly once.

use crate::helpers::*;
use hookrelay::dlq::replay::ReplayOptions;
use hookrelay::dlq::snapshot::Snapshot;
use hookrelay::dlq::{Control, DeadLetter, Dlq, DlqQueue, Filter, Progress, Selection};
use hookrelay::messages::DeadReason;
use hookrelay::subscription::{Format, WebhookId};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn ids(letters: &[DeadLetter]) -> Vec<String> {
    letters.iter().map(|l| l.id.clone()).collect()
}

/// Asserts that `got` is `want`, describing a difference briefly (thousands of ids would bury
/// it).
fn assert_same_order(got: &[String], want: &[String], what: &str) {
    let first_difference = got.iter().zip(want).position(|(g, w)| g != w);
    assert!(
        got.len() == want.len() && first_difference.is_none(),
        "{what}: got {} ids, want {}; first difference at {first_difference:?}",
        got.len(),
        want.len()
    );
}

fn by_account(account: &str) -> Filter {
    Filter {
        account: Some(account.into()),
        ..Default::default()
    }
}

fn all() -> Selection {
    Selection {
        all: true,
        ..Default::default()
    }
}

/// Waits until nobody holds any of the queue's `n` messages.
async fn wait_until_ready(app: &TestApp, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.queue_depth(queue).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never had its {n} messages back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reading_in_many_windows_keeps_the_order_even_when_the_connection_ends_without_a_release() {
    let app = spawn_app_with("200ms", &[]).await;
    let webhook = WebhookId::generate();
    let written = write_dead_deliveries(&app.prefix, 100, |i| {
        let account = if i % 2 == 0 { "even" } else { "odd" };
        small_dead_delivery(account, &webhook, DeadReason::Exhausted)
    })
    .await;
    let queue = app.topology().dlq_deliveries();
    // Windows of 7: 15 windows on one channel. Windows of 3: 34, so a second channel too.
    let seven = Dlq::connect(&app.settings).await.unwrap().with_window(7);
    let three = Dlq::connect(&app.settings).await.unwrap().with_window(3);

    let first = seven
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    let odd = seven
        .list(DlqQueue::Deliveries, &by_account("odd"), None)
        .await
        .unwrap();
    let over_two_channels = three
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    let again = seven
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();

    assert_same_order(&ids(&first), &written, "windows of 7");
    let odd_written: Vec<String> = written.iter().skip(1).step_by(2).cloned().collect();
    assert_same_order(&ids(&odd), &odd_written, "a filter");
    assert_same_order(&ids(&over_two_channels), &written, "windows of 3");
    assert_same_order(&ids(&again), &written, "listing again");

    // Hold 60 letters in 9 windows, then end the connection without releasing anything, as a
    // process that dies does: the broker handles the channel's end as one event.
    let conn = hookrelay::broker::connect(AMQP_URL, "hookrelay dlq test")
        .await
        .unwrap();
    let mut held = Snapshot::open_with_window(&conn, DlqQueue::Deliveries, &queue, 7)
        .await
        .unwrap();
    for _ in 0..60 {
        held.next().await.unwrap().expect("a letter");
    }
    conn.close(320, "gone".into()).await.unwrap();
    drop(held);
    wait_until_ready(&app, &queue, 100).await;

    let after_crash = seven
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    // What 3.10 does when the connection ends first: the held letters go to the back of the
    // queue, in their order (see `dlq::snapshot`). Nothing is lost, and both the letters held
    // and the letters never read keep their order: a rotation of the queue.
    let got = ids(&after_crash);
    let start = got
        .iter()
        .position(|id| *id == written[0])
        .expect("nothing lost");
    let rotated: Vec<String> = got[start..].iter().chain(&got[..start]).cloned().collect();
    assert_same_order(
        &rotated,
        &written,
        "after the connection ended without a release",
    );
    seven.close().await;
    three.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_filter_finds_and_purges_letters_beyond_the_first_65535() {
    let app = spawn_app_with("200ms", &[]).await;
    let webhook = WebhookId::generate();
    // 70,000 letters: two windows of 65,535 and 4,465. Three belong to account "far".
    let far = [10, 65_600, 69_999];
    let written = write_dead_deliveries(&app.prefix, 70_000, |i| {
        let account = if far.contains(&i) { "far" } else { "near" };
        small_dead_delivery(account, &webhook, DeadReason::Exhausted)
    })
    .await;
    let dlq = Dlq::connect(&app.settings).await.unwrap();
    let started = std::time::Instant::now();

    let found = dlq
        .list(DlqQueue::Deliveries, &by_account("far"), None)
        .await
        .unwrap();
    eprintln!(
        "a filtered listing of 70,000 letters: {:?}",
        started.elapsed()
    );
    // In queue order, the last ones from the second window (the order of every letter across
    // windows is shown with small windows above: the window size is only a parameter).
    assert_eq!(ids(&found), far.map(|i| written[i].clone()));

    let purged = dlq
        .purge(
            &Selection {
                filter: by_account("far"),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(ids(&purged.purged), far.map(|i| written[i].clone()));
    assert_eq!(
        app.queue_depth(&app.topology().dlq_deliveries()).await,
        69_997
    );
    let by_id = dlq
        .show(&written[69_998], Some(DlqQueue::Deliveries))
        .await
        .unwrap();
    assert_eq!(by_id.account_id.as_deref(), Some("near"));
    dlq.close().await;
    app.cleanup().await;
}

/// Cancels `token` once `after` letters were settled: a Ctrl-C at a known point.
struct InterruptAfter {
    after: u64,
    token: CancellationToken,
}

impl Progress for InterruptAfter {
    fn update(&self, _: DlqQueue, _: u32, _: u32, done: u64) {
        if done >= self.after {
            self.token.cancel();
        }
    }
}

#[tokio::test]
async fn a_replay_interrupted_halfway_and_run_again_sends_every_letter_once() {
    let app = spawn_app_with("200ms", &[]).await;
    let webhook = app.add_webhook("rp", "/r", &["*"], Format::Standard).await;
    let n = 3_000;
    let letters: Vec<_> = (0..n)
        .map(|_| small_dead_delivery("rp", &webhook.id, DeadReason::Exhausted))
        .collect();
    let events: HashSet<String> = letters.iter().map(|d| d.event_id.clone()).collect();
    let written = write_dead_deliveries(&app.prefix, n, |i| letters[i].clone()).await;
    // Windows of 500: acks give a window credit back while the next ones wait (a window is
    // then sent more than its size, which must neither stall nor reorder the reading).
    let dlq = Dlq::connect(&app.settings).await.unwrap().with_window(500);
    let token = CancellationToken::new();
    let halfway = InterruptAfter {
        after: n as u64 / 2,
        token: token.clone(),
    };
    let control = Control {
        shutdown: &token,
        progress: &halfway,
    };

    let first = dlq
        .replay_each(
            &all(),
            ReplayOptions::default(),
            &app.store,
            control,
            |_| {},
        )
        .await
        .unwrap();

    assert!(first.summary.interrupted);
    let sent = first.counts.replayed as usize;
    assert!(sent >= n / 2 && sent < n, "replayed {sent} of {n}");
    assert_eq!(first.counts.total() as usize, sent, "nothing else happened");
    let left = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    assert_same_order(
        &ids(&left),
        &written[sent..],
        "the rest after the interruption",
    );

    let second = dlq
        .replay(&all(), ReplayOptions::default(), &app.store)
        .await
        .unwrap();

    assert_eq!(second.count("replayed"), n - sent);
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    let hits = app
        .receiver
        .wait_for("/r", n, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hits = app.receiver.hits_on("/r").len().max(hits.len());
    let got: HashSet<String> = app
        .receiver
        .hits_on("/r")
        .iter()
        .map(|h| h.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, events, "lost 0");
    assert_eq!(hits, n, "duplicates 0");
    dlq.close().await;
    app.cleanup().await;
}

/// Not a test: fills a deliveries DLQ for README's figures. `HOOKRELAY_FILL_PREFIX` (its
/// topology is declared), `HOOKRELAY_FILL_COUNT` letters of account `fig` to a webhook (created)
/// at `HOOKRELAY_FILL_URL`; the last 5 are of account `needle`, to time a filter that must read
/// to the end. Run: `cargo nextest run --run-ignored only -E 'test(fill_a_dlq)'`.
#[tokio::test]
#[ignore]
async fn fill_a_dlq_for_the_figures() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let prefix = var("HOOKRELAY_FILL_PREFIX");
    let n: usize = var("HOOKRELAY_FILL_COUNT").parse().unwrap();
    let url = var("HOOKRELAY_FILL_URL");
    let settings = settings(&prefix, "5s", &[]);
    let conn = hookrelay::broker::connect(AMQP_URL, "hookrelay fill")
        .await
        .unwrap();
    hookrelay::broker::topology::Topology::new(&prefix, &settings.delivery.retry_schedule, 20)
        .declare(&conn.create_channel().await.unwrap())
        .await
        .unwrap();
    let store =
        hookrelay::subscription::store::Store::connect(REDIS_URL, &prefix, Duration::from_secs(2))
            .await
            .unwrap();
    let mut webhooks = Vec::new();
    for account in ["fig", "needle"] {
        let w = store
            .create(
                &account.parse().unwrap(),
                hookrelay::subscription::store::NewWebhook {
                    url: hookrelay::subscription::WebhookUrl::parse(&url, true).unwrap(),
                    events: hookrelay::subscription::EventFilter::parse(&["*"]).unwrap(),
                    format: Format::Standard,
                    description: "figures".into(),
                    rate_limit: None,
                },
            )
            .await
            .unwrap();
        webhooks.push(w.id);
    }
    let started = std::time::Instant::now();
    write_dead_deliveries(&prefix, n, |i| match i + 5 >= n {
        true => small_dead_delivery("needle", &webhooks[1], DeadReason::Exhausted),
        false => small_dead_delivery("fig", &webhooks[0], DeadReason::Exhausted),
    })
    .await;
    eprintln!(
        "wrote {n} dead letters in {:?}; webhooks {webhooks:?}",
        started.elapsed()
    );
    let _ = conn.close(200, "filled".into()).await;
}
