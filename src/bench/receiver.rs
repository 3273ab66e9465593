//! The benchmark's receiver: a keep-alive loopback HTTP server that verifies every signature
//! (as a merchant would) and records publish→receipt latency by the event's sequence number.

use crate::delivery::signing::Secret;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How a bench webhook answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 204 after checking the signature.
    Ok,
    /// Never answers (until the sender's timeout).
    Hang,
    /// 500 while the storm is on ([`Tally::set_storm`]), 204 before.
    Fail,
}

/// What the receiver has seen; shared with the bench loop.
pub struct Tally {
    epoch: Instant,
    /// Publish time of each sequence number, in ns since `epoch` (0 = not yet published).
    published_at: Vec<AtomicU64>,
    /// Webhook secrets by index (the URL path names the index).
    secrets: Vec<Secret>,
    /// How each webhook answers, by index.
    answers: Vec<Answer>,
    storm: AtomicBool,
    pub delivered: AtomicU64,
    /// 500s answered by failing webhooks during the storm.
    pub failed: AtomicU64,
    pub bad_signatures: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    last_receipt_ns: AtomicU64,
}

impl Tally {
    pub fn new(events: usize, secrets: Vec<Secret>, answers: Vec<Answer>) -> Arc<Self> {
        Arc::new(Tally {
            epoch: Instant::now(),
            published_at: (0..events).map(|_| AtomicU64::new(0)).collect(),
            secrets,
            answers,
            storm: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::with_capacity(events)),
            last_receipt_ns: AtomicU64::new(0),
        })
    }

    /// Failing webhooks answer 500 from now on.
    pub fn set_storm(&self) {
        self.storm.store(true, Ordering::Release);
    }

    /// Whether a delivery to the webhook at `index` is answered 2xx now.
    pub fn succeeds(&self, index: usize) -> bool {
        match self.answers.get(index) {
            Some(Answer::Ok) | None => true,
            Some(Answer::Hang) => false,
            Some(Answer::Fail) => !self.storm.load(Ordering::Acquire),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn mark_published(&self, seq: usize) {
        self.published_at[seq].store(self.now_ns().max(1), Ordering::Release);
    }

    pub fn last_receipt(&self) -> Duration {
        Duration::from_nanos(self.last_receipt_ns.load(Ordering::Acquire))
    }

    pub fn since_epoch(&self, t: Instant) -> Duration {
        t.duration_since(self.epoch)
    }

    /// Forgets latencies and counts (between the warm-up and the measured runs).
    pub fn reset(&self) {
        self.delivered.store(0, Ordering::Release);
        self.failed.store(0, Ordering::Release);
        self.latencies_us.lock().unwrap().clear();
        for p in &self.published_at {
            p.store(0, Ordering::Release);
        }
    }

    /// Latency percentiles in ms: p50, p90, p99, max.
    pub fn percentiles(&self) -> [f64; 4] {
        let mut l = self.latencies_us.lock().unwrap().clone();
        if l.is_empty() {
            return [0.0; 4];
        }
        l.sort_unstable();
        let at = |q: f64| f64::from(l[((l.len() - 1) as f64 * q).round() as usize]) / 1000.0;
        [at(0.5), at(0.9), at(0.99), at(1.0)]
    }
}

/// Serves on `listener` until `shutdown`.
pub fn serve(listener: tokio::net::TcpListener, tally: Arc<Tally>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/b/{index}", post(receive))
        .with_state(tally);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
}

async fn receive(
    State(tally): State<Arc<Tally>>,
    Path(index): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    match tally.answers.get(index) {
        // Holds the request until the sender's timeout: the endpoint "hangs".
        Some(Answer::Hang) => tokio::time::sleep(Duration::from_secs(3600)).await,
        Some(Answer::Fail) if !tally.succeeds(index) => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        _ => {}
    }
    let received_ns = tally.now_ns();
    // Verified exactly as `hookrelay listen` (and a merchant's receiver) does.
    let verified = tally.secrets.get(index).is_some_and(|secret| {
        crate::listen::verify(&headers, &body, std::slice::from_ref(secret)).is_ok()
    });
    if !verified {
        tally.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    if let Some(seq) = sequence(&body) {
        let sent = tally
            .published_at
            .get(seq)
            .map_or(0, |p| p.load(Ordering::Acquire));
        if sent > 0 {
            let us = (received_ns.saturating_sub(sent) / 1000).min(u64::from(u32::MAX)) as u32;
            tally.latencies_us.lock().unwrap().push(us);
        }
    }
    tally
        .last_receipt_ns
        .fetch_max(received_ns, Ordering::AcqRel);
    tally.delivered.fetch_add(1, Ordering::AcqRel);
    StatusCode::NO_CONTENT
}

/// The `"seq":N` the bench put first in `data`.
fn sequence(body: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"seq\":")? + 6;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
