//! Worker processes for the bench: started from this same binary, measured through /proc.

use crate::config::Settings;
use anyhow::Context;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct WorkerProcess {
    child: Child,
    pid: u32,
    /// Its ops endpoint (`/metrics`), from its start-up log line.
    ops_addr: Option<String>,
}

/// Starts `n` `hookrelay worker` processes on the bench's prefix and waits until each is
/// consuming (it logs its ops address then).
pub async fn spawn_workers(settings: &Settings, n: usize) -> anyhow::Result<Vec<WorkerProcess>> {
    let exe = std::env::current_exe().context("locating the hookrelay binary")?;
    let mut workers = Vec::new();
    for _ in 0..n {
        workers.push(start_worker(worker_command(&exe, settings)).await?);
    }
    Ok(workers)
}

/// `hookrelay worker` with the bench's broker and Redis configuration, its log on a pipe.
fn worker_command(exe: &std::path::Path, settings: &Settings) -> Command {
    let mut command = Command::new(exe);
    command
        .arg("worker")
        // The same broker configuration as the bench itself: nodes and TLS files.
        .env("HOOKRELAY__AMQP__URL", &settings.amqp.url)
        .env(
            "HOOKRELAY__AMQP__TLS__CA_FILE",
            &settings.amqp.tls_files.ca_file,
        )
        .env(
            "HOOKRELAY__AMQP__TLS__CERT_FILE",
            &settings.amqp.tls_files.cert_file,
        )
        .env(
            "HOOKRELAY__AMQP__TLS__KEY_FILE",
            &settings.amqp.tls_files.key_file,
        )
        .env("HOOKRELAY__AMQP__PREFIX", &settings.amqp.prefix)
        .env(
            "HOOKRELAY__AMQP__PARTITIONS",
            settings.amqp.partitions.to_string(),
        )
        .envs(settings.redis.to_env())
        .env("HOOKRELAY__DELIVERY__ALLOW_HTTP", "true")
        .env("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("HOOKRELAY__OPS__LISTEN", "127.0.0.1:0")
        .env("HOOKRELAY__LOG__FORMAT", "text")
        .env("RUST_LOG", "warn,hookrelay::worker=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !settings.amqp.urls.is_empty() {
        command.env("HOOKRELAY__AMQP__URLS", settings.amqp.urls.join(","));
    }
    command
}

/// Starts one worker and waits (at most 30 s) for its "worker consuming" line.
async fn start_worker(mut command: Command) -> anyhow::Result<WorkerProcess> {
    let mut child = command.spawn().context("starting a worker")?;
    let pid = child.id().context("worker pid")?;
    let stderr = child.stderr.take().context("worker stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("worker consuming") {
                return Ok::<_, std::io::Error>(Some(ops_addr(&line)));
            }
            eprintln!("worker: {line}");
        }
        Ok(None)
    })
    .await;
    let Ok(Ok(Some(ops_addr))) = ready else {
        anyhow::bail!("a worker did not start");
    };
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("worker {pid}: {line}");
        }
    });
    Ok(WorkerProcess {
        child,
        pid,
        ops_addr,
    })
}

/// The `ops_addr=127.0.0.1:PORT` of a worker's start-up line (colours or not).
fn ops_addr(line: &str) -> Option<String> {
    let rest = &line[line.find("ops_addr")? + "ops_addr".len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let addr: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    Some(addr)
}

/// The sum over the workers of the given counters (every label set), from their `/metrics`.
pub async fn counter_sum(workers: &[WorkerProcess], names: &[&str]) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let mut sum = 0.0;
    for addr in workers.iter().filter_map(|w| w.ops_addr.as_ref()) {
        let text = client
            .get(format!("http://{addr}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .text()
            .await?;
        sum += text
            .lines()
            .filter(|l| {
                names.iter().any(|n| {
                    l.strip_prefix(n)
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
                })
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

/// SIGTERM, then a bounded wait.
pub async fn stop_workers(workers: Vec<WorkerProcess>) {
    for mut w in workers {
        let _ = Command::new("kill").arg(w.pid.to_string()).status().await;
        if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.kill().await;
        }
    }
}

/// User + system CPU seconds of all workers so far.
pub fn cpu_seconds(workers: &[WorkerProcess]) -> f64 {
    workers
        .iter()
        .filter_map(|w| std::fs::read_to_string(format!("/proc/{}/stat", w.pid)).ok())
        .filter_map(|stat| {
            // Fields after the parenthesized command; utime and stime are the 14th and 15th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / USER_HZ)
        })
        .sum()
}

/// /proc reports CPU times in USER_HZ ticks, 100 a second on every mainstream Linux.
const USER_HZ: f64 = 100.0;

/// The largest peak resident set (VmHWM) among the workers, in MB.
pub fn peak_rss_mb(workers: &[WorkerProcess]) -> Option<f64> {
    workers
        .iter()
        .filter_map(|w| peak_rss_kb(&format!("/proc/{}/status", w.pid)))
        .map(|kb| kb as f64 / 1024.0)
        .reduce(f64::max)
}

/// This process's own peak resident set, in bytes (0 if /proc cannot be read).
pub fn own_peak_rss_bytes() -> u64 {
    peak_rss_kb("/proc/self/status").unwrap_or(0) * 1024
}

fn peak_rss_kb(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
