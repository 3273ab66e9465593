//! Per-webhook rate limits (DESIGN §5): at most `rate_limit` deliveries per second to one
//! webhook, across every worker process together.
//!
//! # Algorithm: GCRA slots, leased in batches
//! The shared state is one Redis key per limited webhook holding its GCRA "theoretical arrival
//! time" (TAT): the instant of the next free slot, on the Redis server's clock. Slots are
//! `1 / rate` apart. A worker that needs permits runs [`LEASE_SCRIPT`], one round trip, which
//! hands it a *lease* of [`Pacing::lease`] consecutive slots (about a tenth of a second's worth)
//! starting at the TAT, and moves the TAT past them; the worker then spends each slot no earlier
//! than its instant. So the slots of all workers are disjoint instants `1 / rate` apart, and a
//! one-second window holds at most `rate + 1` of them, whatever the number of workers.
//!
//! Why this and not a token bucket: a bucket's permits are "spend any time", so a lease of K
//! tokens can be spent at once by every worker together (bursts of workers × K), and the bucket's
//! own burst adds more; keeping a bucket within +10 % over every one-second window forces tiny
//! leases (a round trip per permit). GCRA slots carry their instant, so leases can be a tenth of a
//! second long and still never bunch up. It is also one integer per webhook, no refill arithmetic.
//!
//! Bounds that keep it honest:
//! - The script grants a lease only while the TAT is at most [`Pacing::horizon`] (~100 ms) ahead
//!   of now; otherwise it answers how long until it would. So at most about two leases' worth of
//!   future slots exist at any moment, and a worker that dies holding a lease costs that lease.
//! - A slot not used within [`STALE`] of its instant is dropped, not spent late (also when the
//!   delivery that took it was woken late, e.g. in a CPU-starved process): late spending of old
//!   slots next to fresh ones elsewhere is what would push a window over the limit.
//! - A delivery waits in-process only briefly ([`MAX_WAIT`]), selecting on shutdown, and only
//!   [`RateLimits::waiters_cap`] deliveries of one webhook wait at a time per worker; the rest go
//!   back through the first delay queue without an attempt. So a limited webhook holds only a few
//!   of the worker's prefetched messages and cannot slow the other webhooks.
//! - Redis down: a limited webhook gets no slots, so its deliveries wait (fail closed). Webhooks
//!   without a limit never reach this module (fail open, and no round trip at all).
//!
//! The pure part ([`Pacing`], [`Lease`]) is tested beside itself; the script against Redis in
//! `tests/it/rate_limit.rs`.

use crate::event::AccountId;
use crate::subscription::store::{Store, StoreError};
use crate::subscription::{RateLimit, WebhookId};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest a delivery waits in-process for a slot before it goes to the delay queue (plus,
/// at worst, one Redis round trip under way).
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// How long a lease lasts: about this much of a second's worth of slots per round trip.
const LEASE_SPAN: Duration = Duration::from_millis(100);

/// A leased slot unused this long after its instant is dropped (see the module comment).
pub const STALE: Duration = Duration::from_millis(20);

/// After a failed round trip, no new one for this long (Redis is likely down).
const REDIS_BACKOFF: Duration = Duration::from_millis(250);

/// Admissions between two sweeps of idle lanes.
const SWEEP_EVERY: u64 = 1024;

/// A lane untouched this long holds only stale slots (leases reach < 300 ms ahead).
const IDLE_AFTER: Duration = Duration::from_secs(2);

/// Leases slots of one webhook. KEYS[1]: its TAT (microseconds, Redis clock). ARGV: the slot
/// interval, the lease size and the horizon, all in microseconds or slots. Returns
/// `{granted, offset_us}`: `granted` slots, the first `offset_us` after now and the others an
/// interval apart; or `{0, wait_us}` when the next lease is possible in `wait_us`.
/// `TIME` before a write needs effects replication, the default since Redis 5 (and the only
/// mode since 7); asking for it explicitly keeps 6.2 configured otherwise correct too.
pub const LEASE_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > horizon then return {0, tat - now - horizon} end
local next_tat = tat + size * interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1000)
return {size, tat - now}
"#;

/// How one limit is paced: the slot interval, lease size and horizon. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// Time between two slots, rounded up so the rate is never exceeded.
    pub interval: Duration,
    /// Slots per lease: a [`LEASE_SPAN`]'s worth, at least one.
    pub lease: u32,
    /// A lease is granted only while the next free slot is at most this far ahead.
    pub horizon: Duration,
}

impl Pacing {
    pub fn of(limit: RateLimit) -> Pacing {
        let rate = u64::from(limit.per_second());
        let interval = Duration::from_micros(1_000_000_u64.div_ceil(rate));
        let lease = (rate * LEASE_SPAN.as_millis() as u64).div_ceil(1000).max(1) as u32;
        Pacing {
            interval,
            lease,
            horizon: (interval * lease).min(LEASE_SPAN),
        }
    }

    /// Deliveries of one webhook that may wait in-process at once on one worker: what its
    /// whole limit could serve within [`MAX_WAIT`], and never more than `per_webhook_cap` (the
    /// share of the prefetch window a webhook may hold anyway, `max_in_flight_per_webhook`).
    pub fn waiters_cap(self, per_webhook_cap: usize) -> usize {
        let servable = MAX_WAIT.as_micros().div_ceil(self.interval.as_micros()) as usize;
        servable.clamp(1, per_webhook_cap.max(1))
    }
}

/// The script's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// `slots` slots, the first `first` after the round trip, the rest an interval apart.
    Granted { slots: u32, first: Duration },
    /// None now; a lease is possible after `wait`.
    Refused { wait: Duration },
}

impl Lease {
    /// Reads the script's `{granted, offset_us}`; anything else is not a lease.
    pub fn from_reply(granted: i64, offset_us: i64) -> Option<Lease> {
        let offset = Duration::from_micros(u64::try_from(offset_us).ok()?);
        match u32::try_from(granted).ok()? {
            0 => Some(Lease::Refused { wait: offset }),
            slots => Some(Lease::Granted {
                slots,
                first: offset,
            }),
        }
    }

    /// The instants of a granted lease, from `base` (when the answer arrived: a little later
    /// than Redis's now, so slots only ever move later, never earlier).
    pub fn slots(self, base: Instant, interval: Duration) -> impl Iterator<Item = Instant> {
        let (n, first) = match self {
            Lease::Granted { slots, first } => (slots, first),
            Lease::Refused { .. } => (0, Duration::ZERO),
        };
        (0..n).map(move |i| base + first + interval * i)
    }
}

/// What a delivery of a limited webhook may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// Its slot has come: make the request now.
    Go,
    /// No slot soon enough: wait in the delay queue, without an attempt.
    Defer,
    ShuttingDown,
}

/// One limited webhook's slots on this worker.
struct Lane {
    /// Leased slots not yet taken, in order; behind an async lock so that one waiter at a time
    /// takes a slot or leases more (FIFO: tokio's Mutex is fair), the others queue behind it.
    state: tokio::sync::Mutex<LaneState>,
    waiters: AtomicUsize,
    touched: Mutex<Instant>,
}

#[derive(Default)]
struct LaneState {
    slots: VecDeque<Instant>,
    /// No round trip before this: the script said when, or Redis failed.
    quiet_until: Option<Instant>,
}

/// Why no slot was found before the deadline.
enum NoSlot {
    TooFar,
}

/// The rate limits of one worker: a lane per limited webhook, the Redis script shared by all.
pub struct RateLimits {
    store: Store,
    per_webhook_cap: usize,
    lanes: Mutex<HashMap<WebhookId, Arc<Lane>>>,
    admissions: AtomicU64,
    /// False while leases fail; logged once per outage.
    redis_ok: AtomicBool,
}

impl RateLimits {
    pub fn new(store: Store, per_webhook_cap: usize) -> Arc<Self> {
        describe_metrics();
        Arc::new(RateLimits {
            store,
            per_webhook_cap,
            lanes: Mutex::new(HashMap::new()),
            admissions: AtomicU64::new(0),
            redis_ok: AtomicBool::new(true),
        })
    }

    /// Waits until the webhook's next slot, or says to defer when none comes within
    /// [`MAX_WAIT`] (or too many of its deliveries wait already). With `may_defer` false
    /// (no delay queue configured) it waits as long as it takes: the limit is never exceeded.
    pub async fn admit(
        &self,
        account: &AccountId,
        webhook: &WebhookId,
        limit: RateLimit,
        may_defer: bool,
        shutdown: &CancellationToken,
    ) -> Pass {
        let pacing = Pacing::of(limit);
        let lane = self.lane(webhook);
        let waiting = lane.waiters.fetch_add(1, Ordering::AcqRel);
        let _left = Leave(&lane);
        if may_defer && waiting >= pacing.waiters_cap(self.per_webhook_cap) {
            return deferred();
        }
        let deadline = may_defer.then(|| Instant::now() + MAX_WAIT);
        let key = self.store.rate_limit_key(account, webhook);
        let mut waited = false;
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => return Pass::ShuttingDown,
                slot = self.take_slot(&lane, &key, pacing, deadline) => slot,
            };
            let Ok(slot) = slot else {
                return deferred();
            };
            if slot > Instant::now() {
                waited = true;
                tokio::select! {
                    _ = shutdown.cancelled() => return Pass::ShuttingDown,
                    _ = tokio::time::sleep_until(slot) => {}
                }
            }
            // Woken too late (a stalled process): the slot is stale, and spending it now,
            // next to on-time slots of other workers, could go over the limit.
            if Instant::now() <= slot + STALE {
                break;
            }
            metrics::counter!(SLOTS_UNUSED).increment(1);
        }
        if waited {
            metrics::counter!(WAITED.0, "outcome" => WAITED.1).increment(1);
        }
        Pass::Go
    }

    /// The lane of `webhook`, made on first use; every [`SWEEP_EVERY`] calls, lanes nobody
    /// used for [`IDLE_AFTER`] are dropped (their slots are stale by then).
    fn lane(&self, webhook: &WebhookId) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap();
        let now = Instant::now();
        if self.admissions.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            lanes.retain(|_, lane| {
                Arc::strong_count(lane) > 1
                    || now.duration_since(*lane.touched.lock().unwrap()) < IDLE_AFTER
            });
        }
        let lane = lanes.entry(webhook.clone()).or_insert_with(|| {
            Arc::new(Lane {
                state: tokio::sync::Mutex::new(LaneState::default()),
                waiters: AtomicUsize::new(0),
                touched: Mutex::new(now),
            })
        });
        *lane.touched.lock().unwrap() = now;
        lane.clone()
    }

    /// Lanes kept now (for tests).
    pub fn tracked(&self) -> usize {
        self.lanes.lock().unwrap().len()
    }

    /// The next fresh slot of the lane, leasing more when it has none; `TooFar` when none can
    /// be had before `deadline`.
    async fn take_slot(
        &self,
        lane: &Lane,
        key: &str,
        pacing: Pacing,
        deadline: Option<Instant>,
    ) -> Result<Instant, NoSlot> {
        let past = |at: Instant| deadline.is_some_and(|d| at > d);
        let mut state = match deadline {
            Some(d) => tokio::time::timeout_at(d, lane.state.lock())
                .await
                .map_err(|_| NoSlot::TooFar)?,
            None => lane.state.lock().await,
        };
        loop {
            let now = Instant::now();
            while state.slots.front().is_some_and(|s| *s + STALE < now) {
                state.slots.pop_front();
                metrics::counter!(SLOTS_UNUSED).increment(1);
            }
            if let Some(slot) = state.slots.pop_front() {
                return Ok(slot);
            }
            if let Some(quiet) = state.quiet_until.filter(|q| *q > now) {
                if past(quiet) {
                    return Err(NoSlot::TooFar);
                }
                tokio::time::sleep_until(quiet).await;
                continue;
            }
            // Not cut off at the deadline: a lease cut off after Redis granted it would be
            // lost, so the holder waits out the round trip (at most `redis.lookup_timeout`).
            let leased = self.lease(key, pacing).await;
            let now = Instant::now();
            match leased {
                Ok(lease @ Lease::Granted { .. }) => {
                    state.slots.extend(lease.slots(now, pacing.interval));
                    state.quiet_until = None;
                }
                Ok(Lease::Refused { wait }) => state.quiet_until = Some(now + wait),
                Err(e) => {
                    if self.redis_ok.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "rate-limit leases failing; limited webhooks wait until Redis answers");
                    }
                    state.quiet_until = Some(now + REDIS_BACKOFF);
                }
            }
        }
    }

    /// One round trip: runs [`LEASE_SCRIPT`] for the webhook's key. `EVAL` with the script's
    /// text each time (a few hundred bytes; Redis caches the compiled script by its hash), so
    /// nothing breaks when Redis restarts and forgets loaded scripts.
    async fn lease(&self, key: &str, pacing: Pacing) -> Result<Lease, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(LEASE_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(pacing.interval.as_micros() as u64)
            .arg(pacing.lease)
            .arg(pacing.horizon.as_micros() as u64);
        let ((granted, offset),): ((i64, i64),) = self.store.query_pipeline(&pipe).await?;
        metrics::counter!(ROUND_TRIPS).increment(1);
        if !self.redis_ok.swap(true, Ordering::AcqRel) {
            tracing::info!("rate-limit leases answer again");
        }
        Lease::from_reply(granted, offset).ok_or_else(|| {
            StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected rate-limit lease reply",
            )))
        })
    }
}

/// Counts a waiter out of its lane when its admission ends, however it ends.
struct Leave<'a>(&'a Lane);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

fn deferred() -> Pass {
    metrics::counter!(WAITED.0, "outcome" => "deferred").increment(1);
    Pass::Defer
}

const WAITED: (&str, &str) = ("hookrelay_rate_limited_total", "waited");
const ROUND_TRIPS: &str = "hookrelay_rate_limit_leases_total";
const SLOTS_UNUSED: &str = "hookrelay_rate_limit_slots_unused_total";

fn describe_metrics() {
    // Describing needs the recorder in place, or the HELP text is lost.
    crate::metrics::prometheus();
    metrics::describe_counter!(
        WAITED.0,
        "Deliveries held back by their webhook's rate limit: outcome=\"waited\" waited in the \
         worker for their slot, outcome=\"deferred\" went back through the first delay queue \
         (neither counts as an attempt)"
    );
    metrics::describe_counter!(
        ROUND_TRIPS,
        "Redis round trips made to lease rate-limit slots (each grants a batch or says when)"
    );
    metrics::describe_counter!(
        SLOTS_UNUSED,
        "Leased rate-limit slots dropped unused (no delivery wanted them in time)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacing(rate: u64) -> Pacing {
        Pacing::of(RateLimit::new(rate).unwrap())
    }

    #[test]
    fn a_lease_is_a_tenth_of_a_seconds_worth_of_slots() {
        let p = pacing(50);
        assert_eq!(p.interval, Duration::from_millis(20));
        assert_eq!(p.lease, 5);
        assert_eq!(p.horizon, Duration::from_millis(100));
        let p = pacing(10_000);
        assert_eq!((p.interval, p.lease), (Duration::from_micros(100), 1000));
        let p = pacing(1);
        assert_eq!((p.interval, p.lease), (Duration::from_secs(1), 1));
        assert_eq!(
            p.horizon, LEASE_SPAN,
            "a slow limit still leases at most 100 ms ahead"
        );
    }

    #[test]
    fn the_interval_rounds_up_so_the_rate_is_never_exceeded() {
        for rate in [1, 3, 7, 50, 333, 9_999, 10_000] {
            let p = pacing(rate);
            let per_second = 1_000_000 / p.interval.as_micros() as u64;
            assert!(per_second <= rate, "{rate}: {per_second}");
        }
    }

    #[test]
    fn slots_of_a_lease_are_one_interval_apart_from_the_answer() {
        let base = Instant::now();
        let lease = Lease::from_reply(3, 5_000).unwrap();
        let slots: Vec<_> = lease.slots(base, Duration::from_millis(20)).collect();
        let ms = |d: u64| base + Duration::from_millis(d);
        assert_eq!(slots, vec![ms(5), ms(25), ms(45)]);
        assert_eq!(
            Lease::from_reply(0, 40_000),
            Some(Lease::Refused {
                wait: Duration::from_millis(40)
            })
        );
        assert_eq!(Lease::from_reply(-1, 0), None);
        assert_eq!(Lease::from_reply(1, -5), None);
    }

    #[test]
    fn few_deliveries_of_one_webhook_wait_in_a_worker() {
        assert_eq!(pacing(50).waiters_cap(32), 32);
        assert_eq!(pacing(20).waiters_cap(32), 20);
        assert_eq!(pacing(1).waiters_cap(32), 1);
        assert_eq!(pacing(10_000).waiters_cap(32), 32);
        assert_eq!(pacing(10_000).waiters_cap(0), 1);
    }
}
