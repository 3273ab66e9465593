//! Every metric family hookrelay exports, in one place: its name, `# HELP` text and, for
//! histograms, the buckets; the process-wide Prometheus recorder and its upkeep; and small
//! functions the worker and the publisher call where something worth counting happens.
//!
//! Durations are histograms in seconds with explicit buckets, never client-side quantiles: a
//! quantile cannot be summed across replicas, bucket counts can (`histogram_quantile` over
//! `sum by (le) (rate(..._bucket[5m]))`). Label values are always from a small, known set (a
//! result, a reason, a retry step, a route template), never an id, so series stay bounded.

use chrono::{DateTime, Utc};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const EVENTS: &str = "hookrelay_events_total";
pub const EVENTS_UNMATCHED: &str = "hookrelay_events_unmatched_total";
pub const ATTEMPTS: &str = "hookrelay_attempts_total";
pub const ATTEMPT_DURATION: &str = "hookrelay_attempt_duration_seconds";
pub const DELIVERY_LAG: &str = "hookrelay_delivery_lag_seconds";
pub const DEAD_LETTERS: &str = "hookrelay_dead_letters_total";
pub const RETRIES: &str = "hookrelay_retries_total";
pub const DEFERRED: &str = "hookrelay_deliveries_deferred_total";
pub const SHARE_DEFERRALS: &str = "hookrelay_share_deferrals_total";
pub const IN_FLIGHT: &str = "hookrelay_in_flight_deliveries";
pub const BROKER_CONNECTED: &str = "hookrelay_broker_connected";
pub const BROKER_RECONNECTS: &str = "hookrelay_broker_reconnects_total";
pub const REDIS_OK: &str = "hookrelay_redis_ok";
pub const STORE_OK: &str = "hookrelay_store_ok";
pub const BROKER_BLOCKED: &str = "hookrelay_broker_blocked";
pub const PUBLISH_FAILURES: &str = "hookrelay_publish_failures_total";
pub const CIRCUITS_OPENED: &str = "hookrelay_circuits_opened_total";
/// By `type`; its series are created at 0 by `operational` (the types are its own).
pub const OPERATIONAL_EVENTS: &str = "hookrelay_operational_events_total";
pub const CACHE_HITS: &str = "hookrelay_cache_hits_total";
pub const CACHE_MISSES: &str = "hookrelay_cache_misses_total";
pub const ATTEMPT_LOG_DROPPED: &str = "hookrelay_attempt_log_dropped_total";
pub const ATTEMPT_LOG_ERRORS: &str = "hookrelay_attempt_log_errors_total";
pub const BUILD_INFO: &str = "hookrelay_build_info";
pub const API_REQUESTS: &str = "hookrelay_api_requests_total";
pub const API_REQUEST_DURATION: &str = "hookrelay_api_request_duration_seconds";

/// One attempt: a POST to a merchant, from a fast local receiver (ms) to `delivery.timeout`
/// (15 s by default, so the last finite buckets straddle it).
const ATTEMPT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// Event `created_at` → the 2xx: milliseconds when the first attempt succeeds, then the retry
/// schedule's scale (5 s, 5 min, 30 min, 2 h, … up to about 3 days in all).
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
    3600.0, 7200.0, 21600.0, 43200.0, 86400.0, 172800.0, 259200.0,
];

/// Admin API requests: Redis round trips, a test delivery at worst (`delivery.timeout`).
const API_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes, so memory
/// stays flat between scrapes (the exporter only drains on render or upkeep).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed (with its descriptions, `build_info` and its
/// upkeep thread) on first use; later calls, e.g. several workers in one test process, share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a library user's): then ours stays empty
        // and theirs gets the samples.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        process_collector().describe();
        let upkeep = handle.clone();
        // A plain thread: the recorder outlives any one Tokio runtime (tests start several).
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms drain on scrape only");
        }
        handle
    })
}

/// `/metrics`: refreshes the process metrics, then renders every family.
pub fn render() -> String {
    let handle = prometheus();
    process_collector().collect();
    handle.render()
}

fn builder() -> PrometheusBuilder {
    let buckets = [
        (ATTEMPT_DURATION, ATTEMPT_BUCKETS),
        (DELIVERY_LAG, LAG_BUCKETS),
        (API_REQUEST_DURATION, API_BUCKETS),
    ];
    buckets
        .into_iter()
        .fold(PrometheusBuilder::new(), |b, (name, values)| {
            // Only fails on an empty list, and these are constants.
            b.set_buckets_for_metric(Matcher::Full(name.to_owned()), values)
                .expect("bucket lists are not empty")
        })
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …: the names
    // Prometheus' own client libraries use, so stock dashboards work.
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// What kind of family a metric is, for its `# TYPE` line; histograms are in seconds.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which series of a counter a worker creates at 0 when it starts, so that a dashboard shows 0
/// rather than "No data" and rate() and alerts see the first increase.
#[derive(Clone, Copy)]
enum AtStart {
    /// None from this table: a gauge, a histogram, an API family, or a counter whose label
    /// values come from the code or the topology (see [`worker_started`]).
    Nothing,
    /// The one series without labels.
    Unlabelled,
    /// One series for each of these values of this label.
    EachOf(&'static str, &'static [&'static str]),
}

/// One metric family: its name, kind, `# HELP` text, and its series at a worker's start.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    at_start: AtStart,
}

const fn family(name: &'static str, kind: Kind, help: &'static str, at_start: AtStart) -> Family {
    Family {
        name,
        kind,
        help,
        at_start,
    }
}

/// Every hookrelay family (the exporter prints a `# HELP` line only for a described one).
// A table, one family a row: rustfmt would give each row six lines.
#[rustfmt::skip]
const FAMILIES: &[Family] = {
    use AtStart::{EachOf, Nothing, Unlabelled};
    use Kind::{Counter, Gauge, Histogram};
    &[
        family(EVENTS, Counter, "Events consumed from <prefix>.events and parsed", Unlabelled),
        family(EVENTS_UNMATCHED, Counter, "Events whose account had no enabled webhook for their type (acked, nothing sent; only after a lookup that saw the store's marker)", Unlabelled),
        family(ATTEMPTS, Counter, "HTTP delivery attempts by result: delivered (2xx), failed (retried), gone (410), refused (no request made: not a public target), body_too_large (no request made)", EachOf("result", crate::delivery::policy::Verdict::LABELS)),
        family(ATTEMPT_DURATION, Histogram, "Duration of one delivery attempt, request sent to response or error", Nothing),
        family(DELIVERY_LAG, Histogram, "Event created_at to the 2xx that delivered it, retries included (created_at in whole seconds reads up to 1 s high)", Nothing),
        family(DEAD_LETTERS, Counter, "Messages dead-lettered, by queue (deliveries|events) and reason", Nothing),
        family(RETRIES, Counter, "Deliveries scheduled for another attempt, by retry step (the delay queue they wait in)", Nothing),
        family(DEFERRED, Counter, "Deliveries sent to wait in a delay queue without an attempt (endpoint slow or circuit open, or a share spent)", Unlabelled),
        family(SHARE_DEFERRALS, Counter, "Deliveries deferred because their origin's or account's share of delivery.max_in_flight was held by slow requests, by share (origin|account)", EachOf("share", &["origin", "account"])),
        family(IN_FLIGHT, Gauge, "Deliveries this worker is attempting or settling right now", Nothing),
        family(BROKER_CONNECTED, Gauge, "1 while this worker has a broker session and consumes, else 0", Nothing),
        family(BROKER_RECONNECTS, Counter, "Broker sessions lost and reopened by this worker", Unlabelled),
        family(BROKER_BLOCKED, Gauge, "1 while the broker blocks this worker's publishes (memory or disk alarm), else 0", Nothing),
        family(REDIS_OK, Gauge, "1 while Redis answers (a PING every half heartbeat), 0 while it does not or lookups fail", Nothing),
        family(STORE_OK, Gauge, "1 while the subscription store's marker (<prefix>:store) is there, 0 while it is missing (the worker takes no new messages)", Nothing),
        family(PUBLISH_FAILURES, Counter, "Confirmed publishes that failed (nack, returned, timeout, blocked, connection), by target and reason", Nothing),
        family(OPERATIONAL_EVENTS, Counter, "Operational events published and confirmed on <prefix>.operational, by type", Nothing),
        family(CIRCUITS_OPENED, Counter, "Times an endpoint's circuit opened because its requests were slow", Unlabelled),
        family(CACHE_HITS, Counter, "Subscription lookups answered by the worker's cache", Unlabelled),
        family(CACHE_MISSES, Counter, "Subscription lookups that went to Redis", Unlabelled),
        family(ATTEMPT_LOG_DROPPED, Counter, "Attempt records dropped because the attempt log's queue was full", Unlabelled),
        family(ATTEMPT_LOG_ERRORS, Counter, "Attempt log writes to Redis that failed", Unlabelled),
        family(BUILD_INFO, Gauge, "Always 1; the version label says which hookrelay is running", Nothing),
        family(API_REQUESTS, Counter, "Admin API requests by method, route template and status", Nothing),
        family(API_REQUEST_DURATION, Histogram, "Admin API request duration by method and route template", Nothing),
    ]
};

fn describe() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => describe_counter!(f.name, f.help),
            Kind::Gauge => describe_gauge!(f.name, f.help),
            Kind::Histogram => describe_histogram!(f.name, Unit::Seconds, f.help),
        }
    }
}

/// The series [`FAMILIES`] says a worker creates at 0 when it starts.
fn zero_from_table() {
    for f in FAMILIES {
        match f.at_start {
            AtStart::Nothing => {}
            AtStart::Unlabelled => metrics::counter!(f.name).increment(0),
            AtStart::EachOf(label, values) => {
                for value in values {
                    metrics::counter!(f.name, label => *value).increment(0);
                }
            }
        }
    }
}

/// A worker starts: installs the recorder before anything is counted, and its gauges exist
/// from the first scrape on, before any message arrives (Redis is checked right after this).
/// Every counter whose label values are known in advance exists at 0 too, so that a dashboard
/// shows 0 rather than "No data" and rate() and alerts see the first increase: those
/// [`FAMILIES`] names, then the dead-letter queues and reasons, retry steps, publish targets and
/// failure reasons, which come from other modules' enums and from the topology.
pub fn worker_started(topology: &crate::broker::topology::Topology) {
    prometheus();
    redis_ok(true);
    broker_blocked(false);
    metrics::gauge!(IN_FLIGHT).set(0.0);
    zero_from_table();
    for reason in crate::event::PoisonReason::ALL {
        metrics::counter!(DEAD_LETTERS, "queue" => "events", "reason" => reason.as_str())
            .increment(0);
    }
    for reason in crate::messages::dead::DeadReason::ALL {
        metrics::counter!(DEAD_LETTERS, "queue" => "deliveries", "reason" => reason.as_str())
            .increment(0);
    }
    for step in &topology.retry_steps {
        let step = crate::broker::topology::duration_name(*step);
        metrics::counter!(RETRIES, "step" => step).increment(0);
    }
    for target in worker_publish_targets(topology) {
        for reason in PublishFailure::ALL {
            metrics::counter!(PUBLISH_FAILURES, "target" => target.clone(), "reason" => reason.as_str())
                .increment(0);
        }
    }
}

/// Every queue a worker publishes to (through the default exchange, so the queue is the target):
/// fresh deliveries, each delay queue, and both dead-letter queues.
fn worker_publish_targets(topology: &crate::broker::topology::Topology) -> Vec<String> {
    let mut targets = vec![
        topology.deliveries_queue(),
        topology.dlq_events(),
        topology.dlq_deliveries(),
    ];
    for step in &topology.retry_steps {
        let queue = topology.retry_queue(*step);
        if !targets.contains(&queue) {
            targets.push(queue);
        }
    }
    targets
}

/// Why a confirmed publish failed: the `reason` label of `hookrelay_publish_failures_total`.
/// The publisher sorts its errors into these (`PublishError::failure`), so that this module
/// names no broker type and the broker can count its failures here without a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishFailure {
    Nacked,
    Returned,
    Timeout,
    Blocked,
    Connection,
}

impl PublishFailure {
    pub const ALL: [PublishFailure; 5] = [
        PublishFailure::Nacked,
        PublishFailure::Returned,
        PublishFailure::Timeout,
        PublishFailure::Blocked,
        PublishFailure::Connection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PublishFailure::Nacked => "nacked",
            PublishFailure::Returned => "returned",
            PublishFailure::Timeout => "timeout",
            PublishFailure::Blocked => "blocked",
            PublishFailure::Connection => "connection",
        }
    }
}

/// A 2xx received for an event created at `created_at`.
pub fn delivered(created_at: DateTime<Utc>) {
    // A publisher's clock ahead of ours would give a negative lag: that is zero, not a sample
    // below every bucket.
    let lag = (Utc::now() - created_at).to_std().unwrap_or_default();
    metrics::histogram!(DELIVERY_LAG).record(lag.as_secs_f64());
}

/// Counts a delivery in flight until the returned guard is dropped.
#[must_use = "the delivery counts as in flight only while the guard lives"]
pub fn in_flight() -> InFlight {
    metrics::gauge!(IN_FLIGHT).increment(1.0);
    InFlight(())
}

/// See [`in_flight`].
pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
    }
}

/// Whether the worker has a broker session and consumes.
pub fn broker_connected(connected: bool) {
    metrics::gauge!(BROKER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// Whether the broker blocks this worker's publishes (`connection.blocked`).
pub fn broker_blocked(blocked: bool) {
    metrics::gauge!(BROKER_BLOCKED).set(if blocked { 1.0 } else { 0.0 });
}

/// Whether subscription lookups in Redis succeed.
pub fn redis_ok(ok: bool) {
    metrics::gauge!(REDIS_OK).set(if ok { 1.0 } else { 0.0 });
}

/// Whether the store's marker is there (`hookrelay_store_ok`).
pub fn store_ok(ok: bool) {
    metrics::gauge!(STORE_OK).set(if ok { 1.0 } else { 0.0 });
}

/// A delivery scheduled for another attempt after `step` (its delay queue's name).
pub fn retry_scheduled(step: Duration) {
    let step = crate::broker::topology::duration_name(step);
    metrics::counter!(RETRIES, "step" => step).increment(1);
}

/// A confirmed publish to `target` (the exchange, or the queue for the default exchange) failed.
pub fn publish_failed(target: &str, reason: PublishFailure) {
    metrics::counter!(PUBLISH_FAILURES, "target" => target.to_owned(), "reason" => reason.as_str())
        .increment(1);
}

/// One admin API request, with its route template (never the path: ids would explode series).
pub fn api_request(method: &str, route: &str, status: u16, took: Duration) {
    metrics::counter!(API_REQUESTS, "method" => method.to_owned(), "route" => route.to_owned(),
        "status" => status.to_string())
    .increment(1);
    metrics::histogram!(API_REQUEST_DURATION, "method" => method.to_owned(), "route" => route.to_owned())
        .record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_in_the_table_once() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len());
        assert_eq!(names.len(), 25);
    }

    #[test]
    fn bucket_lists_are_strictly_increasing() {
        for buckets in [ATTEMPT_BUCKETS, LAG_BUCKETS, API_BUCKETS] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        }
    }

    #[test]
    fn attempt_buckets_straddle_the_default_request_timeout() {
        // delivery.timeout is 15 s: a bucket at it and one above separate timeouts from the rest.
        assert!(ATTEMPT_BUCKETS.contains(&15.0));
        assert!(ATTEMPT_BUCKETS.iter().any(|&b| b > 15.0));
    }

    #[test]
    fn lag_buckets_reach_the_whole_default_retry_schedule() {
        // The default schedule adds up to about 3 days (110 h 5 min 5 s, +20 % jitter at most).
        let schedule_secs = 5.0 + 300.0 + 1800.0 + 3600.0 * (2.0 + 5.0 + 10.0 + 14.0 + 20.0 + 24.0);
        assert!(LAG_BUCKETS.last().copied().unwrap() >= schedule_secs * 0.8);
    }
}
