//! `[delivery]`: how a worker sends a webhook (timeouts, the retry schedule, what an envelope may
//! be, which targets are allowed) and how many requests it keeps in flight.
//! Defaults and their documentation: `[delivery]` in `config/default.toml`.

use super::value::{Bounded, Count, Period};
use super::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// The longest retry step: the broker's per-message expiration is a 32-bit count of
/// milliseconds (about 49 days), and a step's jitter adds up to 20 %.
pub const MAX_RETRY_STEP: Duration = Duration::from_secs(30 * 86_400);

/// The most steps `delivery.retry_schedule` may have (each is a delay queue).
const MAX_RETRY_STEPS: usize = 100;

#[derive(Clone, Debug)]
pub struct DeliverySettings {
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_event_bytes: usize,
    /// Nesting of objects and arrays allowed in an envelope's `data`.
    pub max_event_depth: usize,
    pub rotation_grace: Duration,
    pub disable_after: Duration,
    pub allow_private_targets: bool,
    pub allow_http: bool,
    /// Whether a merchant's request carries the attempt's W3C `traceparent` (and `tracestate`).
    pub send_traceparent: bool,
    pub max_in_flight_per_webhook: usize,
    /// Share of `max_in_flight` one target origin (scheme, host, port) may hold.
    pub max_in_flight_per_origin: usize,
    /// Share of `max_in_flight` one account may hold.
    pub max_in_flight_per_account: usize,
    pub max_in_flight: usize,
}

/// `[delivery]` as the layers hold it, every value already in its range.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    retry_schedule: RetrySchedule,
    timeout: Period,
    connect_timeout: Period,
    max_event_bytes: Bounded<1024, { usize::MAX as u64 }>,
    max_event_depth: Bounded<1, 10_000>,
    rotation_grace: Period,
    disable_after: Period,
    allow_private_targets: bool,
    allow_http: bool,
    send_traceparent: bool,
    max_in_flight_per_webhook: Count,
    max_in_flight_per_origin: Count,
    max_in_flight_per_account: Count,
    max_in_flight: Count,
}

impl RawDelivery {
    pub(super) fn settle(self) -> Result<DeliverySettings, ConfigError> {
        Ok(DeliverySettings {
            retry_schedule: self.retry_schedule.0,
            timeout: self.timeout.into(),
            connect_timeout: self.connect_timeout.into(),
            max_event_bytes: self.max_event_bytes.into(),
            // At most 10,000: fits any usize.
            max_event_depth: self.max_event_depth.get() as usize,
            rotation_grace: self.rotation_grace.into(),
            disable_after: self.disable_after.into(),
            allow_private_targets: self.allow_private_targets,
            allow_http: self.allow_http,
            send_traceparent: self.send_traceparent,
            max_in_flight_per_webhook: self.max_in_flight_per_webhook.into(),
            max_in_flight_per_origin: self.max_in_flight_per_origin.into(),
            max_in_flight_per_account: self.max_in_flight_per_account.into(),
            max_in_flight: self.max_in_flight.into(),
        })
    }
}

/// One wait of the retry schedule: a [`Period`] of at most [`MAX_RETRY_STEP`].
#[derive(Deserialize)]
#[serde(try_from = "Period")]
struct RetryStep(Duration);

impl TryFrom<Period> for RetryStep {
    type Error = &'static str;

    fn try_from(p: Period) -> Result<Self, Self::Error> {
        match Duration::from(p) {
            d if d > MAX_RETRY_STEP => {
                Err("a step may be at most 30 days (the broker's message expiration is bounded)")
            }
            d => Ok(RetryStep(d)),
        }
    }
}

/// `delivery.retry_schedule`: at most [`MAX_RETRY_STEPS`] steps.
#[derive(Deserialize)]
#[serde(try_from = "Vec<RetryStep>")]
struct RetrySchedule(Vec<Duration>);

impl TryFrom<Vec<RetryStep>> for RetrySchedule {
    type Error = String;

    fn try_from(steps: Vec<RetryStep>) -> Result<Self, String> {
        if steps.len() > MAX_RETRY_STEPS {
            return Err(format!("at most {MAX_RETRY_STEPS} steps"));
        }
        Ok(RetrySchedule(steps.into_iter().map(|s| s.0).collect()))
    }
}
