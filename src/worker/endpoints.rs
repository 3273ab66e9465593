//! Endpoint isolation (endpoint = webhook), per worker: a cap on the requests in flight to one
//! webhook, and a circuit that opens when a webhook keeps failing. A fast endpoint at its cap
//! only makes its deliveries wait for a slot; a slow one (several requests in flight for over
//! [`SLOW_AFTER`]) or one whose circuit is open makes them wait in the first delay queue
//! instead, without a request (not counted as an attempt), so one slow or failing endpoint
//! cannot take the worker's prefetch window, and its time, from the others. After a cool-down
//! one probe is let through; its success closes the circuit.
//!
//! The state is bounded: an endpoint's entry is dropped as soon as it is idle (nothing in flight
//! or waiting, circuit closed), and one whose circuit stays open unvisited (e.g. its webhook was
//! deleted) is swept once it has been quiet for [`FORGET_AFTER_COOL_DOWNS`] cool-downs.

use crate::delivery::policy::Verdict;
use crate::subscription::WebhookId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Consecutive failed attempts that open a webhook's circuit.
pub const OPEN_AFTER_FAILURES: u32 = 5;

/// A request in flight longer than this is slow.
pub const SLOW_AFTER: Duration = Duration::from_millis(500);

/// An endpoint with this many slow requests in flight is slow: its further deliveries defer
/// instead of waiting for a slot. A fast endpoint at its cap only makes deliveries wait.
pub const SLOW_IN_FLIGHT: usize = 4;

/// How often a delivery waiting for a slot checks whether the endpoint turned slow.
const RECHECK: Duration = Duration::from_millis(100);

/// An open circuit nobody asked about for this many cool-downs is forgotten.
pub const FORGET_AFTER_COOL_DOWNS: u32 = 10;

/// Admissions between two sweeps of forgotten entries.
const SWEEP_EVERY: u64 = 4096;

struct Endpoint {
    slots: Arc<Semaphore>,
    /// Start of each request in flight, by permit number.
    started: HashMap<u64, Instant>,
    next_permit: u64,
    consecutive_failures: u32,
    /// Set while the circuit is open: no request before this instant, then one probe.
    open_until: Option<Instant>,
    probing: bool,
}

impl Endpoint {
    fn new(cap: usize) -> Self {
        Endpoint {
            slots: Arc::new(Semaphore::new(cap)),
            started: HashMap::new(),
            next_permit: 0,
            consecutive_failures: 0,
            open_until: None,
            probing: false,
        }
    }

    /// Nothing to remember: no request in flight, none waiting for a slot (a waiter holds a
    /// clone of `slots`; `holders` counts the clones that are expected, e.g. the map's own),
    /// and a healthy record.
    fn is_idle(&self, holders: usize) -> bool {
        self.started.is_empty()
            && Arc::strong_count(&self.slots) <= holders
            && self.consecutive_failures == 0
            && self.open_until.is_none()
            && !self.probing
    }

    /// Slow: [`SLOW_IN_FLIGHT`] requests (or the whole cap, if smaller) older than
    /// [`SLOW_AFTER`].
    fn is_slow(&self, now: Instant, cap: usize) -> bool {
        self.started
            .values()
            .filter(|t| now.duration_since(**t) >= SLOW_AFTER)
            .count()
            >= SLOW_IN_FLIGHT.min(cap)
    }
}

/// Whether a delivery may make its request now.
pub enum Admission {
    Go(Permit),
    /// The endpoint is slow or its circuit is open.
    Defer,
}

pub struct Endpoints {
    cap: usize,
    cool_down: Duration,
    // A std Mutex: held for a map operation only, never across an await.
    states: Mutex<HashMap<WebhookId, Endpoint>>,
    admissions: std::sync::atomic::AtomicU64,
}

/// An admitted request; holds its slot until dropped, and reports how it went.
pub struct Permit {
    endpoints: Arc<Endpoints>,
    webhook: WebhookId,
    number: u64,
    probe: bool,
    _slot: OwnedSemaphorePermit,
}

enum Check {
    Defer,
    Wait { slots: Arc<Semaphore>, probe: bool },
}

impl Endpoints {
    pub fn new(cap: usize, cool_down: Duration) -> Arc<Self> {
        Arc::new(Endpoints {
            cap,
            cool_down,
            states: Mutex::new(HashMap::new()),
            admissions: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Endpoints with state kept now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.states.lock().unwrap().len()
    }

    /// Waits for a slot of `webhook` while it is healthy; defers when it is slow or open.
    pub async fn admit(self: &Arc<Self>, webhook: &WebhookId) -> Admission {
        loop {
            let (slots, probe) = match self.check(webhook) {
                Check::Defer => return Admission::Defer,
                Check::Wait { slots, probe } => (slots, probe),
            };
            // The semaphore is never closed, so only the timeout ends the wait without a slot.
            if let Ok(Ok(slot)) = tokio::time::timeout(RECHECK, slots.acquire_owned()).await {
                return Admission::Go(self.register(webhook, probe, slot));
            }
            if probe {
                self.end_probe(webhook);
            }
        }
    }

    fn check(&self, webhook: &WebhookId) -> Check {
        let mut states = self.states.lock().unwrap();
        let now = Instant::now();
        let n = self
            .admissions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(&mut states, now);
        }
        let state = states
            .entry(webhook.clone())
            .or_insert_with(|| Endpoint::new(self.cap));
        let mut probe = false;
        if let Some(until) = state.open_until {
            if state.probing || now < until {
                return Check::Defer;
            }
            state.probing = true;
            probe = true;
        }
        if !probe && state.is_slow(now, self.cap) {
            return Check::Defer;
        }
        Check::Wait {
            slots: state.slots.clone(),
            probe,
        }
    }

    fn register(
        self: &Arc<Self>,
        webhook: &WebhookId,
        probe: bool,
        slot: OwnedSemaphorePermit,
    ) -> Permit {
        let mut states = self.states.lock().unwrap();
        // The entry exists: a waiter's clone of its semaphore keeps it from being pruned.
        // Should that ever not hold, a fresh entry is safe (only the slot accounting restarts).
        let state = states
            .entry(webhook.clone())
            .or_insert_with(|| Endpoint::new(self.cap));
        let number = state.next_permit;
        state.next_permit += 1;
        state.started.insert(number, Instant::now());
        Permit {
            endpoints: self.clone(),
            webhook: webhook.clone(),
            number,
            probe,
            _slot: slot,
        }
    }

    /// Whether the webhook's circuit is open now (for metrics and tests).
    pub fn is_open(&self, webhook: &WebhookId) -> bool {
        self.states
            .lock()
            .unwrap()
            .get(webhook)
            .is_some_and(|s| s.open_until.is_some())
    }

    /// Forgets open circuits nobody asked about for a long time (deleted or abandoned webhooks).
    fn sweep(&self, states: &mut HashMap<WebhookId, Endpoint>, now: Instant) {
        let quiet = self.cool_down * FORGET_AFTER_COOL_DOWNS;
        states.retain(|_, s| {
            let forgotten = s.started.is_empty()
                && Arc::strong_count(&s.slots) == 1
                && s.open_until
                    .is_some_and(|until| now.saturating_duration_since(until) >= quiet);
            !forgotten && !s.is_idle(1)
        });
    }

    fn end_probe(&self, webhook: &WebhookId) {
        if let Some(state) = self.states.lock().unwrap().get_mut(webhook) {
            state.probing = false;
        }
    }

    fn judge(&self, permit: &Permit, succeeded: bool) {
        let mut states = self.states.lock().unwrap();
        let Some(state) = states.get_mut(&permit.webhook) else {
            return;
        };
        if succeeded {
            if state.open_until.is_some() {
                tracing::info!(webhook_id = %permit.webhook, "circuit closed: the endpoint answers again");
            }
            state.consecutive_failures = 0;
            state.open_until = None;
            return;
        }
        state.consecutive_failures += 1;
        if permit.probe || state.consecutive_failures >= OPEN_AFTER_FAILURES {
            if state.open_until.is_none() {
                tracing::warn!(webhook_id = %permit.webhook, "circuit opened: the endpoint keeps failing");
                metrics::counter!("hookrelay_circuits_opened_total").increment(1);
            }
            state.open_until = Some(Instant::now() + self.cool_down);
        }
    }

    fn release(&self, permit: &Permit) {
        let mut states = self.states.lock().unwrap();
        if let Some(state) = states.get_mut(&permit.webhook) {
            state.started.remove(&permit.number);
            if permit.probe {
                state.probing = false;
            }
            // The map and this permit's slot hold the semaphore; anyone else is waiting.
            if state.is_idle(2) {
                states.remove(&permit.webhook);
            }
        }
    }
}

impl Permit {
    /// The request answered 2xx (`true`), or failed in a way that counts against the endpoint.
    /// A permit dropped without a report (shutdown, a refused target) judges nothing.
    pub fn report(self, succeeded: bool) {
        self.endpoints.judge(&self, succeeded);
    }

    /// Reports an attempt's verdict: a 2xx counts for the endpoint, a failed request against
    /// it; no request (refused, too large) or a 410 judges nothing.
    pub fn judge(self, verdict: &Verdict) {
        match verdict {
            Verdict::Delivered => self.report(true),
            Verdict::Retry { .. } => self.report(false),
            Verdict::Gone | Verdict::Refused | Verdict::BodyTooLarge => drop(self),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.endpoints.release(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> WebhookId {
        "wh_test".parse().unwrap()
    }

    async fn go(e: &Arc<Endpoints>) -> Permit {
        match e.admit(&id()).await {
            Admission::Go(p) => p,
            Admission::Defer => panic!("expected to be admitted"),
        }
    }

    async fn deferred(e: &Arc<Endpoints>) -> bool {
        matches!(e.admit(&id()).await, Admission::Defer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_beyond_the_cap_of_a_fast_endpoint_waits_for_a_slot() {
        let e = Endpoints::new(2, Duration::from_secs(5));
        let (a, _b) = (go(&e).await, go(&e).await);
        let waiting = tokio::spawn({
            let e = e.clone();
            async move { matches!(e.admit(&id()).await, Admission::Go(_)) }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.report(true);
        assert!(
            waiting.await.unwrap(),
            "a freed slot admits the waiting one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_whose_requests_hang_is_slow_and_further_deliveries_defer() {
        let e = Endpoints::new(10, Duration::from_secs(5));
        let mut held = Vec::new();
        for _ in 0..SLOW_IN_FLIGHT {
            held.push(go(&e).await);
        }
        let young = go(&e).await;
        drop(young);
        tokio::time::sleep(SLOW_AFTER).await;
        assert!(deferred(&e).await);
        held.clear();
        assert!(!deferred(&e).await, "no slow request left in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_after_repeated_failures_and_a_successful_probe_closes_it() {
        let e = Endpoints::new(10, Duration::from_secs(5));
        for _ in 0..OPEN_AFTER_FAILURES {
            go(&e).await.report(false);
        }
        assert!(e.is_open(&id()));
        assert!(deferred(&e).await);

        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = go(&e).await;
        // Only one probe at a time.
        assert!(deferred(&e).await);
        probe.report(true);
        assert!(!e.is_open(&id()));
        assert!(!deferred(&e).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_keeps_the_circuit_open_for_another_cool_down() {
        let e = Endpoints::new(10, Duration::from_secs(5));
        for _ in 0..OPEN_AFTER_FAILURES {
            go(&e).await.report(false);
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        go(&e).await.report(false);
        assert!(e.is_open(&id()));
        assert!(deferred(&e).await);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!deferred(&e).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_endpoint_leaves_no_state_behind() {
        let e = Endpoints::new(10, Duration::from_secs(5));
        go(&e).await.report(true);
        assert_eq!(e.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_nobody_asks_about_is_forgotten() {
        let e = Endpoints::new(10, Duration::from_secs(5));
        for _ in 0..OPEN_AFTER_FAILURES {
            go(&e).await.report(false);
        }
        assert_eq!(e.tracked(), 1);
        tokio::time::advance(Duration::from_secs(5) * (FORGET_AFTER_COOL_DOWNS + 1)).await;
        let other: WebhookId = "wh_other".parse().unwrap();
        for _ in 0..SWEEP_EVERY {
            if let Admission::Go(p) = e.admit(&other).await {
                p.report(true);
            }
        }
        assert_eq!(e.tracked(), 0, "the forgotten circuit was swept");
    }
}
