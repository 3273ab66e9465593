//! Endpoint isolation, per worker, at three levels: the webhook, its target origin (scheme,
//! host, port) and its account.
//!
//! - A webhook has a cap on its requests in flight and a circuit that opens when it keeps
//!   failing. A fast webhook at its cap only makes its deliveries wait for a slot; a slow one
//!   (several requests in flight for over [`SLOW_AFTER`]) or one whose circuit is open makes them
//!   wait in the first delay queue instead, without a request (not counted as an attempt). After
//!   a cool-down one probe is let through; its success closes the circuit.
//! - An origin and an account each hold at most a share of `delivery.max_in_flight`
//!   (`delivery.max_in_flight_per_origin`, `..._per_account`), whatever their number of webhooks:
//!   fifty webhooks on one slow host get one share, not fifty. At its share, a delivery waits
//!   for a slot while the share's requests are fast, and defers like a slow webhook's once most
//!   of them are slow, so a slow destination never holds the prefetch window, the consume loop
//!   or the other destinations' slots. Only the destination's own requests count against it.
//!
//! The state is bounded: an entry is dropped as soon as it is idle (nothing in flight or waiting,
//! circuit closed), idle leftovers and open circuits left unvisited (e.g. the webhook was deleted)
//! for [`FORGET_AFTER_COOL_DOWNS`] cool-downs are swept every [`SWEEP_EVERY`] admissions, so the
//! maps hold little more than what is in flight.

use crate::delivery::policy::Verdict;
use crate::event::AccountId;
use crate::subscription::{Webhook, WebhookId};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Consecutive failed attempts that open a webhook's circuit.
pub const OPEN_AFTER_FAILURES: u32 = 5;

/// A request in flight longer than this is slow.
pub const SLOW_AFTER: Duration = Duration::from_millis(500);

/// A webhook with this many slow requests in flight is slow: its further deliveries defer
/// instead of waiting for a slot. A fast webhook at its cap only makes deliveries wait.
pub const SLOW_IN_FLIGHT: usize = 4;

/// How often a delivery waiting for a slot checks whether its destination turned slow.
const RECHECK: Duration = Duration::from_millis(100);

/// An open circuit nobody asked about for this many cool-downs is forgotten.
pub const FORGET_AFTER_COOL_DOWNS: u32 = 10;

/// Admissions between two sweeps of forgotten entries.
const SWEEP_EVERY: u64 = 4096;

/// Requests in flight at each level: a delivery needs a slot of all three.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub webhook: usize,
    pub origin: usize,
    pub account: usize,
}

/// Where a delivery goes, as isolation sees it.
#[derive(Clone, Debug)]
pub struct Target {
    pub webhook: WebhookId,
    /// Scheme, host and port of the URL (`https://example.com:8443`).
    pub origin: String,
    pub account: AccountId,
}

impl Target {
    pub fn of(webhook: &Webhook) -> Target {
        Target {
            webhook: webhook.id.clone(),
            origin: webhook.url.as_url().origin().ascii_serialization(),
            account: webhook.account_id.clone(),
        }
    }
}

/// The requests in flight to one webhook, origin or account, and their slots.
struct Lane {
    slots: Arc<Semaphore>,
    /// Start of each request in flight, by permit number.
    started: HashMap<u64, Instant>,
}

impl Lane {
    fn new(cap: usize) -> Self {
        Lane {
            slots: Arc::new(Semaphore::new(cap)),
            started: HashMap::new(),
        }
    }

    /// Nothing in flight and nobody waiting (a waiter holds a clone of `slots`; `holders`
    /// counts the clones that are expected, e.g. the map's own).
    fn is_idle(&self, holders: usize) -> bool {
        self.started.is_empty() && Arc::strong_count(&self.slots) <= holders
    }

    fn slow(&self, now: Instant) -> usize {
        self.started
            .values()
            .filter(|t| now.duration_since(**t) >= SLOW_AFTER)
            .count()
    }

    /// A share (origin, account) is spent when all its slots are taken and at least half of
    /// them by slow requests: a slot will not free up soon, so waiting would hold the message.
    fn is_spent(&self, now: Instant, cap: usize) -> bool {
        self.started.len() >= cap && self.slow(now) * 2 >= cap
    }
}

struct Endpoint {
    lane: Lane,
    consecutive_failures: u32,
    /// Set while the circuit is open: no request before this instant, then one probe.
    open_until: Option<Instant>,
    probing: bool,
}

impl Endpoint {
    fn new(cap: usize) -> Self {
        Endpoint {
            lane: Lane::new(cap),
            consecutive_failures: 0,
            open_until: None,
            probing: false,
        }
    }

    /// Nothing to remember: nothing in flight or waiting, and a healthy record.
    fn is_idle(&self, holders: usize) -> bool {
        self.lane.is_idle(holders)
            && self.consecutive_failures == 0
            && self.open_until.is_none()
            && !self.probing
    }

    /// Slow: [`SLOW_IN_FLIGHT`] requests (or the whole cap, if smaller) older than
    /// [`SLOW_AFTER`].
    fn is_slow(&self, now: Instant, cap: usize) -> bool {
        self.lane.slow(now) >= SLOW_IN_FLIGHT.min(cap)
    }
}

/// Whether a delivery may make its request now.
pub enum Admission {
    Go(Permit),
    /// The webhook is slow or its circuit is open, or its origin's or account's share is spent.
    Defer,
}

#[derive(Default)]
struct States {
    webhooks: HashMap<WebhookId, Endpoint>,
    origins: HashMap<String, Lane>,
    accounts: HashMap<AccountId, Lane>,
    next_permit: u64,
}

pub struct Endpoints {
    caps: Caps,
    cool_down: Duration,
    // A std Mutex: held for a map operation only, never across an await.
    states: Mutex<States>,
    admissions: std::sync::atomic::AtomicU64,
}

/// An admitted request; holds its slots until dropped, and reports how it went.
pub struct Permit {
    endpoints: Arc<Endpoints>,
    target: Target,
    number: u64,
    probe: bool,
    _slots: [OwnedSemaphorePermit; 3],
}

/// The slots a delivery waits for: webhook, origin, account (always taken in this order).
type Slots = [Arc<Semaphore>; 3];

enum Check {
    Defer,
    Wait { slots: Slots, probe: bool },
}

impl Endpoints {
    pub fn new(caps: Caps, cool_down: Duration) -> Arc<Self> {
        Arc::new(Endpoints {
            caps,
            cool_down,
            states: Mutex::new(States::default()),
            admissions: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Webhooks, origins and accounts with state kept now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        let states = self.states.lock().unwrap();
        states.webhooks.len() + states.origins.len() + states.accounts.len()
    }

    /// Waits for the slots of `target` while it is healthy; defers when the webhook is slow or
    /// open, or when the origin's or the account's share is spent.
    pub async fn admit(self: &Arc<Self>, target: &Target) -> Admission {
        loop {
            let (slots, probe) = match self.check(target) {
                Check::Defer => return Admission::Defer,
                Check::Wait { slots, probe } => (slots, probe),
            };
            // Always in the same order, so two waiters never hold what the other waits for.
            let [webhook, origin, account] = slots;
            let all = async {
                let w = webhook.acquire_owned().await.ok()?;
                let o = origin.acquire_owned().await.ok()?;
                let a = account.acquire_owned().await.ok()?;
                Some([w, o, a])
            };
            // The semaphores are never closed, so only the timeout ends the wait without slots
            // (and gives back those already taken).
            if let Ok(Some(held)) = tokio::time::timeout(RECHECK, all).await {
                return Admission::Go(self.register(target, probe, held));
            }
            if probe {
                self.end_probe(&target.webhook);
            }
        }
    }

    fn check(&self, target: &Target) -> Check {
        let mut guard = self.states.lock().unwrap();
        let states = &mut *guard;
        let now = Instant::now();
        let n = self
            .admissions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(states, now);
        }
        let caps = self.caps;
        let origin = lane(&mut states.origins, &target.origin, caps.origin);
        let origin_spent = origin.is_spent(now, caps.origin);
        let origin_slots = origin.slots.clone();
        let account = lane(&mut states.accounts, &target.account, caps.account);
        let account_spent = account.is_spent(now, caps.account);
        let account_slots = account.slots.clone();
        if origin_spent || account_spent {
            let share = if origin_spent { "origin" } else { "account" };
            metrics::counter!(crate::metrics::SHARE_DEFERRALS, "share" => share).increment(1);
            return Check::Defer;
        }
        let state = states
            .webhooks
            .entry(target.webhook.clone())
            .or_insert_with(|| Endpoint::new(caps.webhook));
        let mut probe = false;
        if let Some(until) = state.open_until {
            if state.probing || now < until {
                return Check::Defer;
            }
            state.probing = true;
            probe = true;
        }
        if !probe && state.is_slow(now, caps.webhook) {
            return Check::Defer;
        }
        Check::Wait {
            slots: [state.lane.slots.clone(), origin_slots, account_slots],
            probe,
        }
    }

    fn register(
        self: &Arc<Self>,
        target: &Target,
        probe: bool,
        slots: [OwnedSemaphorePermit; 3],
    ) -> Permit {
        let mut guard = self.states.lock().unwrap();
        let states = &mut *guard;
        let number = states.next_permit;
        states.next_permit += 1;
        let now = Instant::now();
        // The entries exist: a waiter's clones of their semaphores keep them from being pruned.
        // Should that ever not hold, a fresh entry is safe (only the slot accounting restarts).
        let caps = self.caps;
        states
            .webhooks
            .entry(target.webhook.clone())
            .or_insert_with(|| Endpoint::new(caps.webhook))
            .lane
            .started
            .insert(number, now);
        lane(&mut states.origins, &target.origin, caps.origin)
            .started
            .insert(number, now);
        lane(&mut states.accounts, &target.account, caps.account)
            .started
            .insert(number, now);
        Permit {
            endpoints: self.clone(),
            target: target.clone(),
            number,
            probe,
            _slots: slots,
        }
    }

    /// Whether the webhook's circuit is open now (for metrics and tests).
    pub fn is_open(&self, webhook: &WebhookId) -> bool {
        self.states
            .lock()
            .unwrap()
            .webhooks
            .get(webhook)
            .is_some_and(|s| s.open_until.is_some())
    }

    /// Forgets open circuits nobody asked about for a long time (deleted or abandoned
    /// webhooks), and idle entries left by waits that ended without a slot.
    fn sweep(&self, states: &mut States, now: Instant) {
        let quiet = self.cool_down * FORGET_AFTER_COOL_DOWNS;
        states.webhooks.retain(|_, s| {
            let forgotten = s.lane.is_idle(1)
                && s.open_until
                    .is_some_and(|until| now.saturating_duration_since(until) >= quiet);
            !forgotten && !s.is_idle(1)
        });
        states.origins.retain(|_, l| !l.is_idle(1));
        states.accounts.retain(|_, l| !l.is_idle(1));
    }

    fn end_probe(&self, webhook: &WebhookId) {
        if let Some(state) = self.states.lock().unwrap().webhooks.get_mut(webhook) {
            state.probing = false;
        }
    }

    fn judge(&self, permit: &Permit, succeeded: bool) {
        let mut states = self.states.lock().unwrap();
        let webhook = &permit.target.webhook;
        let Some(state) = states.webhooks.get_mut(webhook) else {
            return;
        };
        if succeeded {
            if state.open_until.is_some() {
                tracing::info!(webhook_id = %webhook, "circuit closed: the endpoint answers again");
            }
            state.consecutive_failures = 0;
            state.open_until = None;
            return;
        }
        state.consecutive_failures += 1;
        if permit.probe || state.consecutive_failures >= OPEN_AFTER_FAILURES {
            if state.open_until.is_none() {
                tracing::warn!(webhook_id = %webhook, "circuit opened: the endpoint keeps failing");
                metrics::counter!("hookrelay_circuits_opened_total").increment(1);
            }
            state.open_until = Some(Instant::now() + self.cool_down);
        }
    }

    fn release(&self, permit: &Permit) {
        let mut guard = self.states.lock().unwrap();
        let states = &mut *guard;
        let Target {
            webhook,
            origin,
            account,
        } = &permit.target;
        // Each map and this permit's slot hold a semaphore; anyone else is waiting.
        if let Some(state) = states.webhooks.get_mut(webhook) {
            state.lane.started.remove(&permit.number);
            if permit.probe {
                state.probing = false;
            }
            if state.is_idle(2) {
                states.webhooks.remove(webhook);
            }
        }
        release_lane(&mut states.origins, origin, permit.number);
        release_lane(&mut states.accounts, account, permit.number);
    }
}

/// The lane of `key`, created when missing.
fn lane<'a, K: Hash + Eq + Clone>(
    lanes: &'a mut HashMap<K, Lane>,
    key: &K,
    cap: usize,
) -> &'a mut Lane {
    // Looked up first: the common case (a busy destination) then clones no key.
    if !lanes.contains_key(key) {
        lanes.insert(key.clone(), Lane::new(cap));
    }
    lanes.get_mut(key).expect("inserted above")
}

fn release_lane<K: Hash + Eq>(lanes: &mut HashMap<K, Lane>, key: &K, number: u64) {
    if let Some(lane) = lanes.get_mut(key) {
        lane.started.remove(&number);
        if lane.is_idle(2) {
            lanes.remove(key);
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

    fn to(webhook: &str, origin: &str, account: &str) -> Target {
        Target {
            webhook: webhook.parse().unwrap(),
            origin: origin.to_owned(),
            account: account.parse().unwrap(),
        }
    }

    fn target() -> Target {
        to("wh_test", "https://a.example", "acct_a")
    }

    /// `webhook` slots per webhook; origins and accounts do not bind.
    fn endpoints(webhook: usize) -> Arc<Endpoints> {
        shared(webhook, 1000, 1000)
    }

    fn shared(webhook: usize, origin: usize, account: usize) -> Arc<Endpoints> {
        let caps = Caps {
            webhook,
            origin,
            account,
        };
        Endpoints::new(caps, Duration::from_secs(5))
    }

    async fn go_to(e: &Arc<Endpoints>, t: &Target) -> Permit {
        match e.admit(t).await {
            Admission::Go(p) => p,
            Admission::Defer => panic!("expected to be admitted"),
        }
    }

    async fn go(e: &Arc<Endpoints>) -> Permit {
        go_to(e, &target()).await
    }

    async fn deferred_to(e: &Arc<Endpoints>, t: &Target) -> bool {
        matches!(e.admit(t).await, Admission::Defer)
    }

    async fn deferred(e: &Arc<Endpoints>) -> bool {
        deferred_to(e, &target()).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_beyond_the_cap_of_a_fast_endpoint_waits_for_a_slot() {
        let e = endpoints(2);
        let (a, _b) = (go(&e).await, go(&e).await);
        let waiting = tokio::spawn({
            let e = e.clone();
            async move { matches!(e.admit(&target()).await, Admission::Go(_)) }
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
        let e = endpoints(10);
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
        let e = endpoints(10);
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
        let e = endpoints(10);
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
        let e = endpoints(10);
        go(&e).await.report(true);
        assert_eq!(e.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_nobody_asks_about_is_forgotten() {
        let e = endpoints(10);
        for _ in 0..OPEN_AFTER_FAILURES {
            go(&e).await.report(false);
        }
        assert_eq!(e.tracked(), 1);
        tokio::time::advance(Duration::from_secs(5) * (FORGET_AFTER_COOL_DOWNS + 1)).await;
        let other = to("wh_other", "https://a.example", "acct_a");
        for _ in 0..SWEEP_EVERY {
            if let Admission::Go(p) = e.admit(&other).await {
                p.report(true);
            }
        }
        assert_eq!(e.tracked(), 0, "the forgotten circuit was swept");
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_slow_webhooks_on_one_origin_hold_one_share_and_the_next_ones_defer() {
        let e = shared(32, 8, 1000);
        let mut held = Vec::new();
        for i in 0..8 {
            let t = to(&format!("wh_slow{i}"), "https://slow.example", "acct_a");
            held.push(go_to(&e, &t).await);
        }
        tokio::time::sleep(SLOW_AFTER).await;
        for i in 8..50 {
            let t = to(&format!("wh_slow{i}"), "https://slow.example", "acct_a");
            assert!(
                deferred_to(&e, &t).await,
                "webhook {i} waits in the delay queue"
            );
        }
        let healthy = to("wh_fast", "https://fast.example", "acct_b");
        assert!(
            !deferred_to(&e, &healthy).await,
            "another origin is not held back"
        );
        held.clear();
        let t = to("wh_slow9", "https://slow.example", "acct_a");
        assert!(!deferred_to(&e, &t).await, "the share is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_with_slow_webhooks_on_many_origins_holds_one_share() {
        let e = shared(32, 1000, 4);
        let mut held = Vec::new();
        for i in 0..4 {
            let t = to(
                &format!("wh_s{i}"),
                &format!("https://h{i}.example"),
                "acct_a",
            );
            held.push(go_to(&e, &t).await);
        }
        tokio::time::sleep(SLOW_AFTER).await;
        let t = to("wh_s9", "https://h9.example", "acct_a");
        assert!(deferred_to(&e, &t).await);
        let other = to("wh_o", "https://h9.example", "acct_b");
        assert!(
            !deferred_to(&e, &other).await,
            "another account is not held back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_origin_at_its_share_makes_deliveries_wait_not_defer() {
        let e = shared(32, 2, 1000);
        let a = go_to(&e, &to("wh_1", "https://a.example", "acct_a")).await;
        let _b = go_to(&e, &to("wh_2", "https://a.example", "acct_a")).await;
        let waiting = tokio::spawn({
            let e = e.clone();
            async move {
                let t = to("wh_3", "https://a.example", "acct_a");
                matches!(e.admit(&t).await, Admission::Go(_))
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.report(true);
        assert!(
            waiting.await.unwrap(),
            "a freed origin slot admits the waiting one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn origins_and_accounts_leave_no_state_behind() {
        let e = shared(4, 4, 4);
        for i in 0..20 {
            let t = to(
                &format!("wh_{i}"),
                &format!("https://h{i}.example"),
                "acct_a",
            );
            go_to(&e, &t).await.report(true);
        }
        assert_eq!(e.tracked(), 0);
    }
}
