//! The scenarios of `hookrelay bench --scenario`: what each one publishes, what it compares its
//! main run with, and how its figures print. Every scenario reports its main run's deliveries/s,
//! latency percentiles, the workers' CPU per delivery and peak RSS, and (unless skipped) the
//! broker's ceiling measured in the same run.

use super::receiver::Answer;
use super::{procstat, Bench, RunFigures, IN_FLIGHT};
use crate::config::Settings;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// Most messages the ceiling run sends (a backlog of a million would take minutes more).
const CEILING_MAX: usize = 100_000;

/// Events of the steady-state reference run after a backlog drain.
const STEADY_EVENTS: usize = 50_000;

/// Accounts of the warm reference run of `many-accounts`.
const HOT_ACCOUNTS: usize = 100;

/// A prime stride that spreads consecutive events over the accounts (every account once per
/// `accounts` events, neighbours far apart) unless it divides their number.
const STRIDE: usize = 1_000_003;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Warm cache, 100-byte payloads, every endpoint answering: the friendly case.
    Headline,
    /// 1,000,000 accounts, one webhook each, events spread so most lookups miss the cache.
    ManyAccounts,
    /// 64 KiB payloads.
    LargePayloads,
    /// Half the webhooks answer 500 at once.
    RetryStorm,
    /// 1,000,000 events waiting before the first worker starts.
    Backlog,
    /// Ten webhooks per account.
    FanOut,
}

/// What a scenario uses where the command line does not say.
pub struct Preset {
    pub events: usize,
    pub accounts: usize,
    pub webhooks: usize,
    pub payload_bytes: usize,
}

impl Scenario {
    pub fn preset(self) -> Preset {
        let base = Preset {
            events: 20_000,
            accounts: 100,
            webhooks: 1,
            payload_bytes: 100,
        };
        match self {
            Scenario::Headline | Scenario::RetryStorm => base,
            Scenario::ManyAccounts => Preset {
                events: 200_000,
                accounts: 1_000_000,
                ..base
            },
            Scenario::LargePayloads => Preset {
                events: 10_000,
                payload_bytes: 64 << 10,
                ..base
            },
            Scenario::Backlog => Preset {
                events: 1_000_000,
                ..base
            },
            Scenario::FanOut => Preset {
                events: 5_000,
                accounts: 1_000,
                webhooks: 10,
                ..base
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Headline => "headline",
            Scenario::ManyAccounts => "many-accounts",
            Scenario::LargePayloads => "large-payloads",
            Scenario::RetryStorm => "retry-storm",
            Scenario::Backlog => "backlog",
            Scenario::FanOut => "fan-out",
        }
    }

    /// The backlog is published before any worker runs, so the bench starts its own later.
    pub(super) fn workers_start_late(self) -> bool {
        self == Scenario::Backlog
    }

    /// How the webhook at `index` (of `total`) answers: the first `hanging` never do; in a
    /// retry storm the second half fails.
    pub(super) fn answer(self, index: usize, hanging: usize, total: usize) -> Answer {
        if index < hanging {
            Answer::Hang
        } else if self == Scenario::RetryStorm && index >= total / 2 {
            Answer::Fail
        } else {
            Answer::Ok
        }
    }
}

pub(super) async fn measure(bench: &mut Bench, base: &Settings) -> anyhow::Result<Value> {
    let opts = bench.opts.clone();
    let ceiling = if opts.skip_ceiling {
        None
    } else {
        let n = opts.events.min(CEILING_MAX);
        eprintln!("measuring the broker's ceiling ({n} messages)…");
        Some(
            super::ceiling::measure(
                &crate::broker::Connector::new(&base.amqp),
                &bench.settings.amqp.prefix,
                n,
                opts.payload_bytes,
                bench.settings.amqp.partitions,
            )
            .await?,
        )
    };
    let mut figures = match opts.scenario {
        Scenario::Headline | Scenario::LargePayloads | Scenario::FanOut => steady(bench).await?,
        Scenario::ManyAccounts => many_accounts(bench).await?,
        Scenario::RetryStorm => retry_storm(bench).await?,
        Scenario::Backlog => backlog(bench).await?,
    };
    let main_rate = figures["throughput"]["events_per_sec"].as_f64();
    figures["scenario"] = json!(opts.scenario.name());
    figures["setup"] = json!({
        "events": opts.events, "accounts": opts.accounts,
        "webhooks_per_account": opts.webhooks_per_account,
        "payload_bytes": opts.payload_bytes, "workers": opts.workers,
        "attached": opts.attach, "hanging_webhooks": opts.hanging,
        "prefetch": bench.settings.amqp.prefetch,
    });
    figures["broker_ceiling_msgs_per_sec"] = json!(ceiling);
    figures["ratio_to_ceiling"] = json!(ceiling.zip(main_rate).map(|(c, r)| r / c));
    figures["worker_peak_rss_mb"] = json!(bench.peak_rss_mb());
    figures["bad_signatures"] = json!(bench.tally.bad_signatures.load(Ordering::Acquire));
    figures["load_average"] = json!(load_average());
    Ok(figures)
}

/// Every account once (warming the caches), then the full-speed run, then half that rate.
async fn steady(bench: &Bench) -> anyhow::Result<Value> {
    let (events, accounts) = (bench.opts.events, bench.opts.accounts);
    let all = |seq: usize| seq % accounts;
    bench.run_events("warm-up", accounts, None, all).await?;
    let cpu = bench.cpu_seconds();
    let main = bench.run_events("throughput", events, None, all).await?;
    let cpu = bench.cpu_seconds() - cpu;
    let rate = bench.opts.rate.unwrap_or(main.events_per_sec / 2.0);
    let latency = bench
        .run_events("latency", (events / 2).max(1), Some(rate), all)
        .await?;
    let bytes = bench.opts.payload_bytes as f64;
    Ok(json!({
        "throughput": main,
        "payload_mb_per_sec": main.deliveries_per_sec * bytes / 1e6,
        "latency_run": latency,
        "worker_cpu_us_per_delivery": per_delivery(bench, cpu, &main),
    }))
}

/// A warm run over a few accounts, then the same number of events spread over all of them,
/// so nearly every lookup misses the cache.
async fn many_accounts(bench: &Bench) -> anyhow::Result<Value> {
    let (events, accounts) = (bench.opts.events, bench.opts.accounts);
    let hot = accounts.min(HOT_ACCOUNTS);
    let stride = if accounts % STRIDE == 0 { 1 } else { STRIDE };
    let spread = |seq: usize| (seq * stride) % accounts;
    bench
        .run_events("warm-up", hot, None, |seq| seq % hot)
        .await?;
    let warm = bench
        .run_events("warm", events, None, |seq| seq % hot)
        .await?;
    let cpu = bench.cpu_seconds();
    let cold = bench.run_events("spread", events, None, spread).await?;
    let cpu = bench.cpu_seconds() - cpu;
    let rate = bench.opts.rate.unwrap_or(cold.events_per_sec / 2.0);
    // Accounts the spread run did not reach yet, so these miss the cache too.
    let latency = bench
        .run_events("latency", (events / 2).max(1), Some(rate), |seq| {
            spread(seq + events)
        })
        .await?;
    Ok(json!({
        "throughput": cold,
        "reference": {"label": format!("warm cache, {hot} accounts"), "run": warm},
        "ratio_to_reference": cold.deliveries_per_sec / warm.deliveries_per_sec,
        "latency_run": latency,
        "worker_cpu_us_per_delivery": per_delivery(bench, cpu, &cold),
    }))
}

/// The healthy half alone, then every account while the other half answers 500: the healthy
/// half's deliveries/s in both, and the follow-ups (retries and deferrals) published per second.
async fn retry_storm(bench: &Bench) -> anyhow::Result<Value> {
    let (events, accounts) = (bench.opts.events, bench.opts.accounts);
    anyhow::ensure!(accounts >= 2, "a retry storm needs at least 2 accounts");
    let healthy = accounts / 2;
    bench
        .run_events("warm-up", accounts, None, |seq| seq % accounts)
        .await?;
    let alone = bench
        .run_events("alone", events / 2, None, |seq| seq % healthy)
        .await?;
    bench.tally.set_storm();
    let follow_up_counters = [crate::metrics::RETRIES, crate::metrics::DEFERRED];
    let follow_ups = procstat::counter_sum(&bench.workers, &follow_up_counters).await?;
    let cpu = bench.cpu_seconds();
    let storm = bench
        .run_events("storm", events, None, |seq| seq % accounts)
        .await?;
    let cpu = bench.cpu_seconds() - cpu;
    let follow_ups = procstat::counter_sum(&bench.workers, &follow_up_counters).await? - follow_ups;
    let failed = bench.tally.failed.load(Ordering::Acquire) as f64;
    Ok(json!({
        "throughput": storm,
        "reference": {"label": "the healthy half alone", "run": alone},
        "ratio_to_reference": storm.deliveries_per_sec / alone.deliveries_per_sec,
        "follow_ups_per_sec": follow_ups / storm.seconds,
        "failed_attempts_per_sec": failed / storm.seconds,
        "worker_cpu_us_per_delivery": per_delivery(bench, cpu, &storm),
    }))
}

/// Publishes the whole backlog with no worker running, starts the workers, and times the drain
/// from their start; then a steady run of the same workers for reference.
async fn backlog(bench: &mut Bench) -> anyhow::Result<Value> {
    let (events, accounts) = (bench.opts.events, bench.opts.accounts);
    let all = |seq: usize| seq % accounts;
    eprintln!("publishing a backlog of {events} events with no worker running…");
    let published = bench.publish("backlog", events, None, all).await?;
    let queued_in = bench.tally.now_ns() as f64 / 1e9 - published.first_publish.as_secs_f64();
    let start = bench.tally.since_epoch(std::time::Instant::now());
    bench.start_workers().await?;
    let drain = bench.wait(&published, start).await?;
    let cpu = bench.cpu_seconds();
    let rss_after_drain = bench.peak_rss_mb();
    let steady = bench
        .run_events("steady", events.min(STEADY_EVENTS), None, all)
        .await?;
    Ok(json!({
        "throughput": drain,
        "backlog_published_in_seconds": queued_in,
        "reference": {"label": "steady state, same workers", "run": steady},
        "ratio_to_reference": drain.deliveries_per_sec / steady.deliveries_per_sec,
        "peak_rss_mb_during_drain": rss_after_drain,
        "worker_cpu_us_per_delivery": per_delivery(bench, cpu, &drain),
    }))
}

fn per_delivery(bench: &Bench, cpu_seconds: f64, run: &RunFigures) -> Option<f64> {
    (!bench.workers.is_empty() && run.deliveries > 0)
        .then(|| cpu_seconds / run.deliveries as f64 * 1e6)
}

/// The 1-minute load average, to judge how quiet the machine was.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(super) fn print_report(r: &Value) {
    print_setup(r);
    print_throughput(r);
    print_scenario_figures(r);
    print_resources(r);
}

/// What ran, and the broker's ceiling.
fn print_setup(r: &Value) {
    let s = &r["setup"];
    println!(
        "hookrelay bench --scenario {}: {} events, {} accounts x {} webhook(s), {}-byte payload, {} worker process(es){}",
        r["scenario"].as_str().unwrap_or("?"),
        s["events"], s["accounts"], s["webhooks_per_account"], s["payload_bytes"], s["workers"],
        if s["hanging_webhooks"].as_u64().unwrap_or(0) > 0 {
            format!(", {} hanging webhook(s)", s["hanging_webhooks"])
        } else {
            String::new()
        }
    );
    if let Some(c) = r["broker_ceiling_msgs_per_sec"].as_f64() {
        let queues = r["partitions"].as_u64().unwrap_or(1);
        println!("broker ceiling ({queues} quorum queue(s), confirms {IN_FLIGHT} in flight, prefetch 256 each): {c:.0} msgs/s");
    }
}

/// End-to-end rates and full-speed latency.
fn print_throughput(r: &Value) {
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
    println!("  latency publish->receipt at full speed: {}", latency(t));
    if let Some(mb) = r["payload_mb_per_sec"].as_f64() {
        println!("  payload: {mb:.1} MB/s of event data delivered");
    }
}

/// The figures only some scenarios have: a reference run, the retry path, the backlog, the
/// latency run at a set rate.
fn print_scenario_figures(r: &Value) {
    if let Some(reference) = r["reference"].as_object() {
        println!(
            "reference ({}): {:.0} deliveries/s; ratio {:.2}",
            reference["label"].as_str().unwrap_or("?"),
            reference["run"]["deliveries_per_sec"]
                .as_f64()
                .unwrap_or(0.0),
            r["ratio_to_reference"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(f) = r["follow_ups_per_sec"].as_f64() {
        println!(
            "retry path: {f:.0} follow-ups published/s (retries and deferrals), {:.0} failed attempts/s",
            r["failed_attempts_per_sec"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(q) = r["backlog_published_in_seconds"].as_f64() {
        println!("backlog published in {q:.1} s; the lag above is publish->receipt");
    }
    let p = &r["latency_run"];
    if p.is_object() {
        println!(
            "latency run at {:.0} events/s: {}",
            p["target_rate"].as_f64().unwrap_or(0.0),
            latency(p)
        );
    }
}

/// What the workers and the machine spent.
fn print_resources(r: &Value) {
    if let Some(cpu) = r["worker_cpu_us_per_delivery"].as_f64() {
        println!("workers: {cpu:.0} us CPU per delivery");
    }
    if let Some(rss) = r["worker_peak_rss_mb"].as_f64() {
        println!("workers: peak RSS {rss:.1} MB (largest process)");
    }
    if let Some(load) = r["load_average"].as_f64() {
        println!("machine: load average {load:.2} at the end");
    }
    println!(
        "signature failures at the receiver: {}",
        r["bad_signatures"]
    );
}

fn latency(run: &Value) -> String {
    let l = &run["latency_ms"];
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l[0].as_f64().unwrap_or(0.0),
        l[1].as_f64().unwrap_or(0.0),
        l[2].as_f64().unwrap_or(0.0),
        l[3].as_f64().unwrap_or(0.0)
    )
}
