//! `hookrelay bench`: publishes N events over K accounts to webhooks on a built-in receiver,
//! runs (or attaches to) M worker processes, and prints end-to-end throughput, publish→receipt
//! latency, the workers' CPU and peak RSS, and the broker's own ceiling measured the same way
//! every time, so the ratio between the two is comparable across machines.

mod cache;
mod ceiling;
mod procstat;
mod receiver;

use crate::broker::publisher::{Headers, Outgoing, Publisher};
use crate::broker::topology::Topology;
use crate::config::Settings;
use crate::event::EventType;
use crate::subscription::store::{NewWebhook, Store};
use crate::subscription::{EventFilter, Format, WebhookUrl};
use anyhow::Context;
use futures_util::StreamExt;
use receiver::Tally;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Publishes in flight at once, as in the ceiling run.
const IN_FLIGHT: usize = 512;

#[derive(Clone, Debug)]
pub struct BenchOptions {
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
    let shutdown = CancellationToken::new();
    let bench = Bench::setup(&settings, &opts, shutdown.clone()).await?;
    let result = bench.measure(&settings, &opts).await;
    bench.teardown().await;
    shutdown.cancel();
    let report = result?;
    if opts.json {
        crate::print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(())
}

struct Bench {
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

impl Bench {
    async fn setup(
        base: &Settings,
        opts: &BenchOptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Bench> {
        anyhow::ensure!(
            opts.events > 0 && opts.accounts > 0,
            "--events and --accounts must be positive"
        );
        anyhow::ensure!(
            (1..=crate::subscription::MAX_WEBHOOKS_PER_ACCOUNT)
                .contains(&opts.webhooks_per_account),
            "--webhooks must be 1 to 10 (the per-account limit)"
        );
        let mut settings = base.clone();
        if !opts.attach {
            // Its own names, so a bench never touches a deployment's queues or keys.
            let prefix = format!("hrbench-{}", crate::random_token(6).to_lowercase());
            settings.amqp.prefix = prefix.clone();
            settings.redis.prefix = prefix;
        }
        // The receiver is on loopback over http.
        settings.delivery.allow_http = true;
        settings.delivery.allow_private_targets = true;
        let topology = Topology::from_settings(&settings);
        let conn = crate::broker::Connector::new(&settings.amqp)
            .connect("hookrelay bench")
            .await?
            .connection;
        topology.declare(&conn.create_channel().await?).await?;
        let publisher = Publisher::new(&conn, settings.amqp.publish_timeout).await?;
        let store = Store::from_settings(&settings.redis)
            .await
            .context("connecting to Redis")?;

        let total = opts.accounts * opts.webhooks_per_account;
        let mut secrets = Vec::with_capacity(total);
        let mut accounts = Vec::with_capacity(total);
        let hanging: Vec<bool> = (0..total).map(|i| i < opts.hanging).collect();
        let mut creates = Vec::new();
        for a in 0..opts.accounts {
            for w in 0..opts.webhooks_per_account {
                creates.push((format!("bench-{a}"), a * opts.webhooks_per_account + w));
            }
        }
        // The URLs need the receiver's port and the receiver needs the secrets: bind first,
        // serve once the webhooks exist.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let listener_addr = listener.local_addr()?;
        let webhooks = futures_util::stream::iter(creates)
            .map(|(account, index)| {
                let store = store.clone();
                let url = format!("http://{listener_addr}/b/{index}");
                async move {
                    let w = store
                        .create(
                            &account.parse().expect("bench account ids are valid"),
                            NewWebhook {
                                url: WebhookUrl::parse(&url, true)?,
                                events: EventFilter::All,
                                format: Format::Standard,
                                description: "hookrelay bench".into(),
                                rate_limit: None,
                            },
                        )
                        .await?;
                    Ok::<_, anyhow::Error>((index, account, w.secret))
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let mut by_index: Vec<_> = webhooks.into_iter().collect::<Result<_, _>>()?;
        by_index.sort_by_key(|(i, _, _)| *i);
        for (_, account, secret) in by_index {
            accounts.push(account);
            secrets.push(secret);
        }
        let tally = Tally::new(opts.events.max(opts.accounts), secrets, hanging);
        receiver::serve(listener, tally.clone(), shutdown);

        let workers = if opts.attach {
            Vec::new()
        } else {
            procstat::spawn_workers(&settings, opts.workers).await?
        };
        Ok(Bench {
            settings,
            topology,
            store,
            publisher,
            conn,
            tally,
            workers,
            accounts,
            attached: opts.attach,
        })
    }

    async fn measure(
        &self,
        base: &Settings,
        opts: &BenchOptions,
    ) -> anyhow::Result<serde_json::Value> {
        let ceiling = if opts.skip_ceiling {
            None
        } else {
            eprintln!("measuring the broker's ceiling ({} messages)…", opts.events);
            Some(
                ceiling::measure(
                    &crate::broker::Connector::new(&base.amqp),
                    &self.settings.amqp.prefix,
                    opts.events,
                    opts.payload_bytes,
                )
                .await?,
            )
        };
        let hanging_total = opts.hanging;
        // Warm-up: one event per account, so every worker's cache is warm before measuring.
        self.run_events(opts, opts.accounts, None, "warm-up", hanging_total)
            .await?;
        let cpu_before = procstat::cpu_seconds(&self.workers);
        let max = self
            .run_events(opts, opts.events, None, "throughput", hanging_total)
            .await?;
        let cpu = procstat::cpu_seconds(&self.workers) - cpu_before;
        let rate = opts.rate.unwrap_or(max.events_per_sec / 2.0);
        let latency_events = (opts.events / 2).max(1);
        let paced = self
            .run_events(opts, latency_events, Some(rate), "latency", hanging_total)
            .await?;
        let peak_rss_mb = procstat::peak_rss_mb(&self.workers);
        Ok(serde_json::json!({
            "setup": {
                "events": opts.events, "accounts": opts.accounts,
                "webhooks_per_account": opts.webhooks_per_account,
                "payload_bytes": opts.payload_bytes, "workers": opts.workers,
                "attached": opts.attach, "hanging_webhooks": opts.hanging,
                "prefetch": self.settings.amqp.prefetch,
            },
            "broker_ceiling_msgs_per_sec": ceiling,
            "throughput": max,
            "ratio_to_ceiling": ceiling.map(|c| max.events_per_sec / c),
            "latency_run": paced,
            "worker_cpu_seconds_per_1000_deliveries":
                (!self.workers.is_empty()).then(|| cpu / max.deliveries as f64 * 1000.0),
            "worker_peak_rss_mb": peak_rss_mb,
            "bad_signatures": self.tally.bad_signatures.load(Ordering::Acquire),
        }))
    }

    /// Publishes `n` events (paced at `rate` if given) and waits for every live delivery.
    async fn run_events(
        &self,
        opts: &BenchOptions,
        n: usize,
        rate: Option<f64>,
        label: &str,
        hanging: usize,
    ) -> anyhow::Result<RunFigures> {
        self.tally.reset();
        let accounts = opts.accounts;
        let per_event_live = |seq: usize| {
            let a = seq % accounts;
            let first = a * opts.webhooks_per_account;
            (first..first + opts.webhooks_per_account)
                .filter(|i| *i >= hanging)
                .count() as u64
        };
        let expected: u64 = (0..n).map(per_event_live).sum();
        let pad = "x".repeat(opts.payload_bytes.saturating_sub(24));
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let exchange = self.topology.events_exchange();
        let started = Instant::now();
        let first_publish = self.tally.since_epoch(started);
        let progress = self.progress(label, n, expected);
        let publishing = futures_util::stream::iter(0..n)
            .map(|seq| {
                let body = format!(
                    r#"{{"id":"evt_b{seq}_{label}","type":"payment.card.success","account_id":"{}","created_at":"{created_at}","data":{{"seq":{seq},"pad":"{pad}"}}}}"#,
                    self.accounts[(seq % accounts) * opts.webhooks_per_account]
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
            .collect::<Vec<_>>();
        let published = publishing.await;
        published.into_iter().collect::<Result<Vec<()>, _>>()?;
        let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 500);
        while self.tally.delivered.load(Ordering::Acquire) < expected {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{label}: only {} of {expected} deliveries arrived",
                self.tally.delivered.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        progress.abort();
        let seconds = (self.tally.last_receipt() - first_publish).as_secs_f64();
        let delivered = self.tally.delivered.load(Ordering::Acquire);
        eprintln!(
            "\r[{label}] {n} events, {delivered} deliveries in {seconds:.2}s{:30}",
            ""
        );
        Ok(RunFigures {
            events: n,
            deliveries: delivered,
            seconds,
            events_per_sec: n as f64 / seconds,
            deliveries_per_sec: delivered as f64 / seconds,
            latency_ms: self.tally.percentiles(),
            target_rate: rate,
        })
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
            let _ = channel
                .exchange_delete(self.topology.events_exchange().into(), Default::default())
                .await;
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

fn print_report(r: &serde_json::Value) {
    let s = &r["setup"];
    println!(
        "hookrelay bench: {} events, {} accounts x {} webhook(s), {}-byte payload, {} worker process(es){}",
        s["events"], s["accounts"], s["webhooks_per_account"], s["payload_bytes"], s["workers"],
        if s["hanging_webhooks"].as_u64().unwrap_or(0) > 0 {
            format!(", {} hanging webhook(s)", s["hanging_webhooks"])
        } else {
            String::new()
        }
    );
    if let Some(c) = r["broker_ceiling_msgs_per_sec"].as_f64() {
        println!("broker ceiling (quorum queue, confirms {IN_FLIGHT} in flight, prefetch 256): {c:.0} msgs/s");
    }
    let t = &r["throughput"];
    println!(
        "throughput: {:.0} events/s, {:.0} deliveries/s end to end{}",
        t["events_per_sec"].as_f64().unwrap_or(0.0),
        t["deliveries_per_sec"].as_f64().unwrap_or(0.0),
        r["ratio_to_ceiling"]
            .as_f64()
            .map(|x| format!(" ({x:.2} x broker ceiling)"))
            .unwrap_or_default()
    );
    let lat = |run: &serde_json::Value| {
        let l = &run["latency_ms"];
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l[0].as_f64().unwrap_or(0.0),
            l[1].as_f64().unwrap_or(0.0),
            l[2].as_f64().unwrap_or(0.0),
            l[3].as_f64().unwrap_or(0.0)
        )
    };
    println!("  latency publish->receipt at full speed: {}", lat(t));
    let p = &r["latency_run"];
    println!(
        "latency run at {:.0} events/s: {}",
        p["target_rate"].as_f64().unwrap_or(0.0),
        lat(p)
    );
    if let Some(cpu) = r["worker_cpu_seconds_per_1000_deliveries"].as_f64() {
        println!(
            "workers: {cpu:.3} CPU-seconds per 1,000 deliveries ({:.0} us each)",
            cpu * 1000.0
        );
    }
    if let Some(rss) = r["worker_peak_rss_mb"].as_f64() {
        println!("workers: peak RSS {rss:.1} MB (largest process)");
    }
    println!(
        "signature failures at the receiver: {}",
        r["bad_signatures"]
    );
}
