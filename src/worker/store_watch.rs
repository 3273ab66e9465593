//! Losing the store while running pauses, never drops (DESIGN §5 "The store"). Every
//! `worker.store_check_interval` the worker reads the store's marker; a lookup that found an
//! account empty reads it too (see `SubscriptionCache`), so an event is acked as unmatched only
//! by a lookup that also saw the marker. While the marker is missing the worker takes no new
//! message (what it holds finishes or waits), answers `/readyz` 503, sets `hookrelay_store_ok`
//! to 0 and logs an error every [`REMIND_EVERY`]; when the marker is back it resumes by itself.
//! A marker with another id (the store was replaced, e.g. restored with a new marker) is
//! adopted, and the cache, filled from the old store, is dropped.

use crate::subscription::cache::SubscriptionCache;
use crate::subscription::marker::Marker;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the error is repeated while the store stays missing.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);

/// While paused, the marker is read at least this often, so that a restore resumes the worker
/// promptly whatever `worker.store_check_interval` says.
const PAUSED_CHECK: Duration = Duration::from_secs(1);

/// Whether the store's marker is there, shared by the check, the handlers and the sessions.
pub struct StoreState {
    ok: watch::Sender<bool>,
    cache: Arc<SubscriptionCache>,
    /// The id of the store being served, and when the missing store was last logged.
    seen: Mutex<Seen>,
    /// Wakes the check when a lookup found the marker missing (it then checks more often).
    wake: tokio::sync::Notify,
}

struct Seen {
    id: String,
    logged_missing: Option<Instant>,
}

impl StoreState {
    /// The state of a worker that started on the store `marker`.
    pub fn new(marker: Marker, cache: Arc<SubscriptionCache>) -> Arc<StoreState> {
        crate::metrics::store_ok(true);
        Arc::new(StoreState {
            ok: watch::Sender::new(true),
            cache,
            seen: Mutex::new(Seen {
                id: marker.id,
                logged_missing: None,
            }),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn is_ok(&self) -> bool {
        *self.ok.borrow()
    }

    /// A receiver that sees every change (the sessions wait on it while paused).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ok.subscribe()
    }

    /// The marker is missing (the check found it so, or a lookup did): pause.
    pub fn missing(&self) {
        let was_ok = self.ok.send_replace(false);
        crate::metrics::store_ok(false);
        let mut seen = self.seen.lock().unwrap();
        let remind = seen
            .logged_missing
            .is_none_or(|at| at.elapsed() >= REMIND_EVERY);
        if was_ok {
            // What was cached came from a store that is gone.
            self.cache.flush();
            self.wake.notify_one();
        }
        if was_ok || remind {
            seen.logged_missing = Some(Instant::now());
            let store = self.cache.store();
            tracing::error!(error = %store.missing(),
                "the subscription store's marker is missing: taking no new messages until it is back (events wait in RabbitMQ)");
        }
    }

    /// The marker was read: resume if paused; adopt it if it is another store's.
    pub fn present(&self, marker: &Marker) {
        {
            let mut seen = self.seen.lock().unwrap();
            if seen.id != marker.id {
                tracing::warn!(previous = %seen.id, current = %marker.id,
                    "the subscription store was replaced (another marker id); dropping cached subscriptions");
                self.cache.flush();
                seen.id.clone_from(&marker.id);
            }
            seen.logged_missing = None;
        }
        crate::metrics::store_ok(true);
        if !self.ok.send_replace(true) {
            tracing::info!(store = %marker.id, "the subscription store's marker is back; resuming");
        }
    }

    /// Reads the marker every `interval` until `shutdown`. A Redis error leaves the state as it
    /// is: lookups wait out an outage by themselves (`hookrelay_redis_ok`).
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            let wait = match self.is_ok() {
                true => interval,
                false => interval.min(PAUSED_CHECK),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
            match self.cache.store().marker().await {
                Ok(Some(marker)) => self.present(&marker),
                Ok(None) => self.missing(),
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the store marker; trying again")
                }
            }
        }
    }
}
