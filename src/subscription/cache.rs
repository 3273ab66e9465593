//! The worker's subscription cache: on a warm entry an event needs no Redis round trip (empty
//! results are cached too). Every store write bumps the account's version and announces it on a
//! pub/sub channel; the listener here drops the entry and remembers the version, so a lookup that
//! raced the write (and read the older version) cannot put a stale entry back. While the
//! subscription to the channel is down, nothing is cached and lookups go to Redis.

use super::store::{Snapshot, Store, StoreError};
use super::Webhook;
use crate::event::AccountId;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// An account's webhooks, shared by every event of that account.
pub type Webhooks = Arc<[Arc<Webhook>]>;

enum Slot {
    Fresh {
        version: u64,
        webhooks: Webhooks,
    },
    /// Dropped by a change to `version`: only a snapshot at least that new may be cached.
    Invalidated {
        version: u64,
    },
}

pub struct SubscriptionCache {
    store: Store,
    // A std Mutex: held only for a map operation, never across an await.
    slots: Mutex<HashMap<AccountId, Slot>>,
    /// Bumped on every flush; a lookup that began before one does not cache its result.
    epoch: AtomicU64,
    /// True while the change channel is subscribed, i.e. while cached entries can be trusted.
    live: AtomicBool,
}

impl SubscriptionCache {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(SubscriptionCache {
            store,
            slots: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether changes are being received (the worker is not ready without it).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Waits up to `within` for the change channel to be followed; false if it is not yet.
    pub async fn wait_live(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_live() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.is_live()
    }

    /// The version an account's entry is cached at, if it is cached.
    pub fn cached_version(&self, account: &AccountId) -> Option<u64> {
        match self.slots.lock().unwrap().get(account) {
            Some(Slot::Fresh { version, .. }) => Some(*version),
            _ => None,
        }
    }

    /// The account's webhooks: from the cache when warm, else from Redis (with its timeout).
    pub async fn lookup(&self, account: &AccountId) -> Result<Webhooks, StoreError> {
        if let Some(Slot::Fresh { webhooks, .. }) = self.slots.lock().unwrap().get(account) {
            metrics::counter!("hookrelay_cache_hits_total").increment(1);
            return Ok(webhooks.clone());
        }
        metrics::counter!("hookrelay_cache_misses_total").increment(1);
        let epoch = self.epoch.load(Ordering::Acquire);
        let live = self.is_live();
        let Snapshot { version, webhooks } = self.store.snapshot(account).await?;
        let webhooks: Webhooks = webhooks.into_iter().map(Arc::new).collect();
        if live && self.epoch.load(Ordering::Acquire) == epoch {
            let mut slots = self.slots.lock().unwrap();
            let newer_known = match slots.get(account) {
                Some(Slot::Fresh { version: v, .. }) | Some(Slot::Invalidated { version: v }) => {
                    *v > version
                }
                None => false,
            };
            if !newer_known {
                slots.insert(
                    account.clone(),
                    Slot::Fresh {
                        version,
                        webhooks: webhooks.clone(),
                    },
                );
            }
        }
        Ok(webhooks)
    }

    /// A change to `account` at `version` was announced.
    pub fn invalidate(&self, account: AccountId, version: u64) {
        let mut slots = self.slots.lock().unwrap();
        let keep =
            matches!(slots.get(&account), Some(Slot::Fresh { version: v, .. }) if *v >= version);
        if !keep {
            slots.insert(account, Slot::Invalidated { version });
        }
    }

    /// Forgets everything: the change channel was lost, so any entry may have missed a change.
    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.slots.lock().unwrap().clear();
    }

    /// Follows the change channel until `shutdown`, resubscribing with backoff after a loss
    /// (on a cluster to the next reachable node, with sentinels to the current master).
    pub async fn follow_changes(self: Arc<Self>, shutdown: CancellationToken) {
        let channel = self.store.changes_channel();
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.subscribe_once(&channel, &shutdown).await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(e) => tracing::warn!(error = %e, "subscription change channel lost; retrying"),
            }
            self.live.store(false, Ordering::Release);
            self.flush();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn subscribe_once(
        &self,
        channel: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), redis::RedisError> {
        let mut pubsub = self.store.redis().subscribe(channel).await?;
        // Subscribed: anything cached before may have missed a change made while we were not.
        self.flush();
        self.live.store(true, Ordering::Release);
        tracing::debug!(channel, "following subscription changes");
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = messages.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let payload: String = msg.get_payload()?;
                    match parse_change(&payload) {
                        Some((account, version)) => self.invalidate(account, version),
                        None => tracing::warn!(payload, "unreadable change announcement"),
                    }
                }
            }
        }
    }
}

fn parse_change(payload: &str) -> Option<(AccountId, u64)> {
    let (account, version) = payload.rsplit_once(' ')?;
    Some((AccountId::parse(account)?, version.parse().ok()?))
}
