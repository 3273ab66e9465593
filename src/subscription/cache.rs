//! The worker's subscription cache: on a warm entry an event needs no Redis round trip (empty
//! results are cached too). Every store write bumps the account's version and announces it on a
//! pub/sub channel; the listener here drops the entry and remembers the version, so a lookup that
//! raced the write (and read the older version) cannot put a stale entry back. While the
//! subscription to the channel is down, nothing is cached and lookups go to Redis.
//!
//! An empty result is cached only from a read that also saw the store's marker
//! ([`super::marker`]); the worker drops the cache when the marker goes missing.
//!
//! Misses are single-flight: while one lookup of an account reads Redis, other lookups of that
//! account wait for its result instead of each making the same round trip (a burst of one
//! merchant's events after its entry expired costs one read, not a prefetch window of them).
//! Concurrent misses of different accounts share the multiplexed connection, whose writer
//! sends them back to back, so a thousand cold accounts cost a few pipelined round trips, not
//! a thousand sequential ones.
//!
//! The cache is bounded: entries are weighed by their estimated size against
//! `worker.cache_max_bytes` (least recently and least often used go first, moka's TinyLFU) and
//! expire after `worker.cache_ttl`, so a worker that sees a million accounts keeps only what
//! fits. An evicted invalidation marker (rare: it needs memory pressure within the moment a
//! lookup races a change) can at worst let that lookup cache the older snapshot until the TTL.

use super::store::{Snapshot, Store, StoreError, UnreadableWebhook};
use super::Webhook;
use crate::event::AccountId;
use backon::BackoffBuilder;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// An account's webhooks, shared by every event of that account: the readable ones (what the
/// slice derefs to) and the records that could not be read.
#[derive(Debug, Default)]
pub struct AccountWebhooks {
    webhooks: Vec<Arc<Webhook>>,
    pub unreadable: Vec<UnreadableWebhook>,
}

impl Deref for AccountWebhooks {
    type Target = [Arc<Webhook>];

    fn deref(&self) -> &Self::Target {
        &self.webhooks
    }
}

pub type Webhooks = Arc<AccountWebhooks>;

/// What an account's webhooks say about one webhook id.
pub enum Found<'a> {
    Readable(&'a Webhook),
    Unreadable(&'a UnreadableWebhook),
    Missing,
}

impl AccountWebhooks {
    pub fn find(&self, id: &super::WebhookId) -> Found<'_> {
        if let Some(w) = self.webhooks.iter().find(|w| w.id == *id) {
            return Found::Readable(w);
        }
        match self.unreadable.iter().find(|u| u.id == id.as_str()) {
            Some(u) => Found::Unreadable(u),
            None => Found::Missing,
        }
    }
}

#[derive(Clone)]
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

/// How big the cache may grow and how long an entry may be trusted without a change
/// announcement (`worker.cache_max_bytes`, `worker.cache_ttl`).
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// Bound on the estimated bytes of the cached entries.
    pub max_bytes: u64,
    /// An entry older than this is read again even without an announced change: a safety
    /// net for a missed announcement, not the way changes normally arrive.
    pub ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_bytes: 32 << 20,
            ttl: Duration::from_secs(300),
        }
    }
}

/// An estimate of what an entry costs in memory: the map's own overhead, the key, and each
/// webhook's strings. Used to weigh entries against [`CacheLimits::max_bytes`].
fn weigh(account: &AccountId, slot: &Slot) -> u32 {
    // Calibrated with `hookrelay bench --cache-accounts 1000000`: moka's own bookkeeping per
    // entry (hash table, access and write-order deques, timer wheel), the key, the shared slot
    // and allocator overhead come to about 500 bytes for an account without webhooks. A webhook
    // (its Arc, parsed URL, secret, filter and strings, plus the churn of a cache that evicts
    // all the time) adds about 1.2 KB: `bench --scenario many-accounts --accounts 200000`
    // grew the worker's RSS by 35 MB between bounds of 8 and 32 MiB at 640 bytes a webhook.
    const ENTRY: usize = 512;
    const WEBHOOK: usize = 1_152;
    let webhooks = match slot {
        Slot::Fresh { webhooks, .. } => {
            webhooks
                .iter()
                .map(|w| WEBHOOK + w.url.as_str().len() + w.description.len())
                .sum::<usize>()
                + webhooks.unreadable.len() * WEBHOOK
        }
        Slot::Invalidated { .. } => 0,
    };
    u32::try_from(ENTRY + account.as_str().len() + webhooks).unwrap_or(u32::MAX)
}

pub struct SubscriptionCache {
    store: Store,
    /// Bounded by estimated size and aged out by `ttl` (moka: reads are lock-free).
    slots: moka::sync::Cache<AccountId, Slot>,
    /// Serializes the read-compare-write of a slot (a miss filling it, an invalidation), so a
    /// lookup that raced a change cannot put an older snapshot over the invalidation. Held for
    /// a map operation only, never across an await (a std Mutex).
    writes: Mutex<()>,
    /// Bumped on every flush; a lookup that began before one does not cache its result.
    epoch: AtomicU64,
    /// True while the change channel is subscribed, i.e. while cached entries can be trusted.
    live: AtomicBool,
    /// The Redis read in flight per account (single flight), tagged with a number so a finished
    /// read removes only its own entry. Bounded by the lookups in flight (the prefetch).
    reads: Mutex<HashMap<AccountId, (u64, Read)>>,
    /// Reads started so far (also numbers them).
    next_read: AtomicU64,
}

/// A read's outcome as its followers see it: `None` until it succeeded. A failed or cancelled
/// read drops its sender, and each follower then reads for itself.
type Read = tokio::sync::watch::Receiver<Option<Webhooks>>;

/// Removes a read's entry when it ends, however it ends (a cancelled lookup included).
struct ReadGuard<'a> {
    cache: &'a SubscriptionCache,
    account: &'a AccountId,
    number: u64,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        let mut reads = self.cache.reads.lock().unwrap();
        if reads
            .get(self.account)
            .is_some_and(|(n, _)| *n == self.number)
        {
            reads.remove(self.account);
        }
    }
}

impl SubscriptionCache {
    pub fn new(store: Store) -> Arc<Self> {
        Self::with_limits(store, CacheLimits::default())
    }

    pub fn with_limits(store: Store, limits: CacheLimits) -> Arc<Self> {
        let slots = moka::sync::Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(weigh)
            .time_to_live(limits.ttl)
            .build();
        Arc::new(SubscriptionCache {
            store,
            slots,
            writes: Mutex::new(()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            reads: Mutex::new(HashMap::new()),
            next_read: AtomicU64::new(0),
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

    /// Redis reads the lookups have made so far (misses minus those that joined a read).
    pub fn reads_made(&self) -> u64 {
        self.next_read.load(Ordering::Relaxed)
    }

    /// The version an account's entry is cached at, if it is cached.
    pub fn cached_version(&self, account: &AccountId) -> Option<u64> {
        match self.slots.get(account) {
            Some(Slot::Fresh { version, .. }) => Some(version),
            _ => None,
        }
    }

    /// Accounts cached now and their estimated bytes (after pending evictions are applied).
    pub fn footprint(&self) -> (u64, u64) {
        self.slots.run_pending_tasks();
        (self.slots.entry_count(), self.slots.weighted_size())
    }

    /// The account's webhooks: from the cache when warm, else from Redis (with its timeout),
    /// joining a read of the same account already in flight.
    pub async fn lookup(&self, account: &AccountId) -> Result<Webhooks, StoreError> {
        if let Some(Slot::Fresh { webhooks, .. }) = self.slots.get(account) {
            metrics::counter!("hookrelay_cache_hits_total").increment(1);
            return Ok(webhooks);
        }
        metrics::counter!("hookrelay_cache_misses_total").increment(1);
        let joined = self
            .reads
            .lock()
            .unwrap()
            .get(account)
            .map(|(_, r)| r.clone());
        if let Some(mut read) = joined {
            if let Ok(webhooks) = read.wait_for(Option::is_some).await {
                return Ok(webhooks.clone().expect("waited for a result"));
            }
            // That read failed or was cancelled: read for ourselves.
        }
        let (done, read) = tokio::sync::watch::channel(None);
        let number = self.next_read.fetch_add(1, Ordering::Relaxed);
        self.reads
            .lock()
            .unwrap()
            .insert(account.clone(), (number, read));
        let _guard = ReadGuard {
            cache: self,
            account,
            number,
        };
        // Boxed: only a miss carries the Redis request's state, not every waiting handler.
        let webhooks = Box::pin(self.read(account)).await?;
        done.send_replace(Some(webhooks.clone()));
        Ok(webhooks)
    }

    /// Reads the account from Redis and caches the result unless a change overtook the read.
    async fn read(&self, account: &AccountId) -> Result<Webhooks, StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let live = self.is_live();
        let Snapshot {
            version,
            webhooks,
            unreadable,
        } = self.store.snapshot(account).await?;
        // "No webhooks" only counts from a store that is there: a lost store (Redis restarted
        // empty, flushed, the wrong database) reads as empty too. Read after the snapshot, so
        // a store lost before it is seen missing; on a cluster the marker's slot is another
        // one, hence a command of its own. Only empty results pay this round trip.
        if webhooks.is_empty() && unreadable.is_empty() && self.store.marker().await?.is_none() {
            return Err(self.store.missing().into());
        }
        let webhooks: Webhooks = Arc::new(AccountWebhooks {
            webhooks: webhooks.into_iter().map(Arc::new).collect(),
            unreadable,
        });
        if live && self.epoch.load(Ordering::Acquire) == epoch {
            let _serial = self.writes.lock().unwrap();
            let newer_known = match self.slots.get(account) {
                Some(Slot::Fresh { version: v, .. }) | Some(Slot::Invalidated { version: v }) => {
                    v > version
                }
                None => false,
            };
            if !newer_known {
                self.slots.insert(
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
        // A read in flight may predate the change: later lookups must not join it.
        self.reads.lock().unwrap().remove(&account);
        let _serial = self.writes.lock().unwrap();
        // A marker or an entry at least as new already covers this change (announcements can
        // arrive out of order with a racing lookup's own invalidation).
        let keep = match self.slots.get(&account) {
            Some(Slot::Fresh { version: v, .. }) | Some(Slot::Invalidated { version: v }) => {
                v >= version
            }
            None => false,
        };
        if !keep {
            self.slots.insert(account, Slot::Invalidated { version });
        }
    }

    /// Forgets everything: the change channel was lost, so any entry may have missed a change.
    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.reads.lock().unwrap().clear();
        self.slots.invalidate_all();
    }

    /// Follows the change channel until `shutdown`, resubscribing with backoff after a loss
    /// (on a cluster to the next reachable node, with sentinels to the current master).
    pub async fn follow_changes(self: Arc<Self>, shutdown: CancellationToken) {
        let channel = self.store.changes_channel();
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times();
        let mut delays = backoff.build();
        while !shutdown.is_cancelled() {
            match self.subscribe_once(&channel, &shutdown).await {
                // A clean end (the server closed the stream): start the backoff over.
                Ok(()) => delays = backoff.build(),
                Err(e) => tracing::warn!(error = %e, "subscription change channel lost; retrying"),
            }
            self.live.store(false, Ordering::Release);
            self.flush();
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
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
