//! `hookrelay bench`: publishes N events over K accounts to webhooks on a built-in receiver,
//! runs (or attaches to) M worker processes, and prints end-to-end throughput, publish→receipt
//! latency, the workers' CPU and peak RSS, and the broker's own ceiling measured the same way
//! every time, so the ratio between the two is comparable across machines. `--scenario` picks
//! what is measured (the friendly case, a million accounts, large payloads, a retry storm, a
//! backlog, fan-out); [`scenarios`] runs each.

mod cache;
mod ceiling;
mod procstat;
mod receiver;
mod scenarios;
mod setup;

pub use scenarios::Scenario;

use crate::broker::publisher::{Headers, Outgoing, Publisher};
use crate::broker::topology::Topology;
use crate::config::Settings;
use crate::event::EventType;
use crate::subscription::store::Store;
use anyhow::Context;
use futures_util::StreamExt;
use receiver::Tally;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Publishes in flight at once, as in the ceiling run.
const IN_FLIGHT: usize = 512;

/// Accounts written per pipelined batch when seeding (their ids and URLs are built per batch).
const SEED_BATCH: usize = 10_000;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub scenario: Scenario,
    pub events: usize,
    pub accounts: usize,
    pub webhooks_per_account: usize,
    pub payload_bytes: usize,
    pub workers: usize,
    /// Use workers already running on this prefix instead of starting them.
    pub attach: bool,
    /// Rate of the latency run in events/s; default half the measured maximum.
    pub rate: Option<f64>,
    pub skip_ceiling: bool,
    /// How many webhooks (the first ones) never answer.
    pub hanging: usize,
    /// Measure only the subscription cache's memory after this many distinct accounts.
    pub cache_accounts: Option<usize>,
    /// `--partitions N`: run twice, with 1 and with N work-queue partitions (`amqp.partitions`,
    /// the ceiling over as many quorum queues), and print both.
    pub partitions: Option<u16>,
    pub json: bool,
}

/// One measured run.
#[derive(Debug, serde::Serialize)]
pub struct RunFigures {
    pub events: usize,
    pub deliveries: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub latency_ms: [f64; 4],
    pub target_rate: Option<f64>,
}

pub async fn run(settings: Settings, opts: BenchOptions) -> anyhow::Result<()> {
    if let Some(accounts) = opts.cache_accounts {
        let figures = cache::run(&settings, accounts).await?;
        if opts.json {
            crate::print_json(&figures);
        } else {
            println!(
                "subscription cache after {} distinct accounts ({} with a webhook), bound {} MB:\n  \
                 kept {} entries, ~{:.1} MB estimated; {:.0} lookups/s\n  \
                 process peak RSS {:.1} MB (before the lookups {:.1} MB)",
                figures.accounts_seen,
                figures.accounts_with_a_webhook,
                figures.cache_max_bytes >> 20,
                figures.entries_kept,
                figures.estimated_bytes_kept as f64 / 1e6,
                figures.lookups_per_second,
                figures.peak_rss_mb,
                figures.rss_before_mb,
            );
        }
        return Ok(());
    }
    if let Some(n) = opts.partitions {
        return compare_partitions(settings, opts, n).await;
    }
    let report = run_once(&settings, &opts).await?;
    if opts.json {
        crate::print_json(&report);
    } else {
        scenarios::print_report(&report);
    }
    Ok(())
}

/// One whole run (set up, measure, tear down) on `settings`' partition count.
async fn run_once(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<serde_json::Value> {
    let shutdown = CancellationToken::new();
    let mut bench = Bench::setup(settings, opts, shutdown.clone()).await?;
    let result = scenarios::measure(&mut bench, settings).await;
    bench.teardown().await;
    shutdown.cancel();
    result
}

/// `bench --partitions N`: the same scenario with 1 and with N partitions, one after the
/// other on fresh prefixes, so both see the same machine (and the same other load).
async fn compare_partitions(settings: Settings, opts: BenchOptions, n: u16) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for partitions in [1, n] {
        eprintln!("bench with amqp.partitions = {partitions}…");
        let mut settings = settings.clone();
        settings.amqp.partitions = partitions;
        let mut report = run_once(&settings, &opts).await?;
        report["partitions"] = serde_json::json!(partitions);
        reports.push(report);
    }
    if opts.json {
        crate::print_json(&serde_json::json!({ "runs": reports }));
        return Ok(());
    }
    for r in &reports {
        println!("--- amqp.partitions = {} ---", r["partitions"]);
        scenarios::print_report(r);
    }
    println!("partitions  broker ceiling msgs/s  events/s  deliveries/s  load average");
    for r in &reports {
        println!(
            "{:>10}  {:>21.0}  {:>8.0}  {:>12.0}  {}",
            r["partitions"],
            r["broker_ceiling_msgs_per_sec"]
                .as_f64()
                .unwrap_or(f64::NAN),
            r["throughput"]["events_per_sec"]
                .as_f64()
                .unwrap_or(f64::NAN),
            r["throughput"]["deliveries_per_sec"]
                .as_f64()
                .unwrap_or(f64::NAN),
            r["load_average"],
        );
    }
    Ok(())
}

struct Bench {
    opts: BenchOptions,
    settings: Settings,
    topology: Topology,
    store: Store,
    publisher: Publisher,
    conn: lapin::Connection,
    tally: Arc<Tally>,
    workers: Vec<procstat::WorkerProcess>,
    /// Account of each webhook, by webhook index.
    accounts: Vec<String>,
    attached: bool,
}

/// What [`Bench::publish`] sent: the deliveries it should cause and when it began.
struct Published {
    label: String,
    events: usize,
    expected: u64,
    first_publish: Duration,
    rate: Option<f64>,
}

impl Bench {
    async fn setup(
        base: &Settings,
        opts: &BenchOptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Bench> {
        setup::check_options(opts)?;
        let settings = setup::bench_settings(base, opts);
        let topology = Topology::from_settings(&settings);
        let conn = crate::broker::Connector::new(&settings.amqp)
            .connect("hookrelay bench")
            .await?
            .connection;
        crate::broker::partitions::prepare(&topology, &conn).await?;
        let publisher = Publisher::new(&conn, settings.amqp.publish_timeout).await?;
        let store = Store::from_settings(&settings.redis)
            .await
            .context("connecting to Redis")?;
        // The bench's own prefix is a store of its own: its workers refuse one without a marker.
        store.init_marker().await?;

        // The URLs need the receiver's port and the receiver needs the secrets: bind first,
        // serve once the webhooks exist.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let total = opts.accounts * opts.webhooks_per_account;
        let accounts: Vec<String> = (0..total)
            .map(|i| format!("bench-{}", i / opts.webhooks_per_account))
            .collect();
        let secrets =
            setup::create_webhooks(&store, opts, listener.local_addr()?, &accounts).await?;
        let answers = (0..total)
            .map(|i| opts.scenario.answer(i, opts.hanging, total))
            .collect();
        let tally = Tally::new(opts.events.max(opts.accounts), secrets, answers);
        receiver::serve(listener, tally.clone(), shutdown);

        let mut bench = Bench {
            opts: opts.clone(),
            settings,
            topology,
            store,
            publisher,
            conn,
            tally,
            workers: Vec::new(),
            accounts,
            attached: opts.attach,
        };
        if !opts.scenario.workers_start_late() {
            bench.start_workers().await?;
        }
        Ok(bench)
    }

    /// Starts the worker processes (none when attached to running ones).
    async fn start_workers(&mut self) -> anyhow::Result<()> {
        if !self.attached {
            self.workers = procstat::spawn_workers(&self.settings, self.opts.workers).await?;
        }
        Ok(())
    }

    /// Publishes `n` events (paced at `rate` if given), event `seq` to the account `pick(seq)`.
    async fn publish(
        &self,
        label: &str,
        n: usize,
        rate: Option<f64>,
        pick: impl Fn(usize) -> usize,
    ) -> anyhow::Result<Published> {
        self.tally.reset();
        let per_account = self.opts.webhooks_per_account;
        let expected = (0..n)
            .map(|seq| {
                let first = pick(seq) * per_account;
                (first..first + per_account)
                    .filter(|i| self.tally.succeeds(*i))
                    .count() as u64
            })
            .sum();
        let pad = "x".repeat(self.opts.payload_bytes.saturating_sub(24));
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let exchange = self.topology.events_exchange();
        let started = Instant::now();
        let first_publish = self.tally.since_epoch(started);
        let publishing = futures_util::stream::iter(0..n)
            .map(|seq| {
                let body = format!(
                    r#"{{"id":"evt_b{seq}_{label}","type":"payment.card.success","account_id":"{}","created_at":"{created_at}","data":{{"seq":{seq},"pad":"{pad}"}}}}"#,
                    self.accounts[pick(seq) * per_account]
                );
                let exchange = exchange.clone();
                async move {
                    if let Some(rate) = rate {
                        tokio::time::sleep_until((started + Duration::from_secs_f64(seq as f64 / rate)).into()).await;
                    }
                    self.tally.mark_published(seq);
                    self.publisher
                        .publish(Outgoing {
                            exchange: &exchange,
                            routing_key: EventType::PaymentCardSuccess.label(),
                            body: body.as_bytes(),
                            message_id: None,
                            content_type: "application/json",
                            headers: Headers::default(),
                            expiration_ms: None,
                        })
                        .await
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .fold(Ok(()), |all, one| async move { all.and(one) });
        publishing.await?;
        Ok(Published {
            label: label.to_owned(),
            events: n,
            expected,
            first_publish,
            rate,
        })
    }

    /// Waits for every delivery `published` should cause; the time runs from `since` (since
    /// the receiver's epoch) to the last receipt.
    async fn wait(&self, published: &Published, since: Duration) -> anyhow::Result<RunFigures> {
        let Published {
            label,
            events,
            expected,
            ..
        } = published;
        let progress = self.progress(label, *events, *expected);
        let deadline = Instant::now() + Duration::from_secs(120 + *events as u64 / 500);
        while self.tally.delivered.load(Ordering::Acquire) < *expected {
            if Instant::now() >= deadline {
                progress.abort();
                anyhow::bail!(
                    "{label}: only {} of {expected} deliveries arrived",
                    self.tally.delivered.load(Ordering::Acquire)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        progress.abort();
        let seconds = (self.tally.last_receipt().saturating_sub(since)).as_secs_f64();
        let delivered = self.tally.delivered.load(Ordering::Acquire);
        eprintln!(
            "\r[{label}] {events} events, {delivered} deliveries in {seconds:.2}s{:30}",
            ""
        );
        Ok(RunFigures {
            events: *events,
            deliveries: delivered,
            seconds,
            events_per_sec: *events as f64 / seconds,
            deliveries_per_sec: delivered as f64 / seconds,
            latency_ms: self.tally.percentiles(),
            target_rate: published.rate,
        })
    }

    /// Publishes and waits: throughput from the first publish to the last receipt.
    async fn run_events(
        &self,
        label: &str,
        n: usize,
        rate: Option<f64>,
        pick: impl Fn(usize) -> usize,
    ) -> anyhow::Result<RunFigures> {
        let published = self.publish(label, n, rate, pick).await?;
        self.wait(&published, published.first_publish).await
    }

    fn progress(&self, label: &str, n: usize, expected: u64) -> tokio::task::JoinHandle<()> {
        let tally = self.tally.clone();
        let label = label.to_owned();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = tally.delivered.load(Ordering::Acquire);
                eprint!(
                    "\r[{label}] {n} events: {d}/{expected} delivered, {:.0}/s   ",
                    d as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    }

    fn cpu_seconds(&self) -> f64 {
        procstat::cpu_seconds(&self.workers)
    }

    fn peak_rss_mb(&self) -> Option<f64> {
        procstat::peak_rss_mb(&self.workers)
    }

    async fn teardown(self) {
        if self.attached {
            // A deployment's queues stay; only the bench's own webhooks go.
            self.remove_bench_webhooks().await;
            let _ = self.conn.close(200, "bench done".into()).await;
            return;
        }
        procstat::stop_workers(self.workers).await;
        let channel = self.conn.create_channel().await;
        if let Ok(channel) = channel {
            for q in self.topology.all_queues() {
                let _ = channel.queue_delete(q.into(), Default::default()).await;
            }
            for exchange in self.topology.all_exchanges() {
                let _ = channel
                    .exchange_delete(exchange.into(), Default::default())
                    .await;
            }
        }
        if let Err(e) = self.store.purge_prefix().await {
            eprintln!("could not remove the bench's Redis keys: {e}");
        }
        let _ = self.conn.close(200, "bench done".into()).await;
    }
}

impl Bench {
    async fn remove_bench_webhooks(&self) {
        let mut accounts = self.accounts.clone();
        accounts.dedup();
        for account in accounts {
            let Ok(account) = account.parse() else {
                continue;
            };
            if let Ok(snapshot) = self.store.snapshot(&account).await {
                for w in snapshot.webhooks {
                    let _ = self.store.delete(&account, &w.id).await;
                }
            }
        }
    }
}
