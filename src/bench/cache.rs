//! `hookrelay bench --cache-accounts N`: what the worker's subscription cache costs after it has
//! seen N distinct accounts. Seeds N accounts (every tenth with one webhook, the rest empty,
//! like a platform where most accounts have none) in pipelined batches, looks each one up once
//! through a cache with the configured bound, and prints the process's peak RSS, the entries
//! kept and their estimated bytes. Cleans its keys up afterwards.

use super::procstat;
use crate::config::Settings;
use crate::event::AccountId;
use crate::subscription::cache::{CacheLimits, SubscriptionCache};
use crate::subscription::store::{NewWebhook, Store};
use crate::subscription::{EventFilter, Format, WebhookUrl};
use futures_util::StreamExt;
use std::time::Instant;

/// Lookups in flight at once (a worker's prefetch makes many concurrent misses too).
const CONCURRENT: usize = 64;

#[derive(Debug, serde::Serialize)]
pub struct CacheFigures {
    pub accounts_seen: usize,
    pub accounts_with_a_webhook: usize,
    pub cache_max_bytes: u64,
    pub entries_kept: u64,
    pub estimated_bytes_kept: u64,
    pub lookups_per_second: f64,
    pub rss_before_mb: f64,
    pub peak_rss_mb: f64,
}

/// Account `i` of the run.
fn account(i: usize) -> AccountId {
    AccountId::parse(&format!("acct{i}")).expect("a valid account id")
}

/// Gives every tenth of `accounts` one webhook; returns how many have one. Seeded in chunks so
/// the ids are never all in memory.
async fn seed(store: &Store, accounts: usize) -> anyhow::Result<usize> {
    let new = NewWebhook {
        url: WebhookUrl::parse("https://merchant.example/hooks/payments", false)?,
        events: EventFilter::parse(&["payment.card.success", "subscribe.success"])?,
        format: Format::Standard,
        description: "bench".to_owned(),
        rate_limit: None,
    };
    for chunk in (0..accounts).step_by(10).collect::<Vec<_>>().chunks(10_000) {
        let webhooks = chunk.iter().map(|i| (account(*i), new.clone())).collect();
        store.seed(webhooks).await?;
    }
    Ok(accounts.div_ceil(10))
}

pub async fn run(settings: &Settings, accounts: usize) -> anyhow::Result<CacheFigures> {
    let prefix = format!(
        "{}-cachebench-{}",
        settings.redis.prefix,
        crate::random_token(6)
    );
    let mut redis = settings.redis.clone();
    redis.prefix = prefix;
    let store = Store::from_settings(&redis).await?;
    // Lookups of accounts without webhooks read the marker, as in a worker.
    store.init_marker().await?;
    let with_webhook = seed(&store, accounts).await?;

    let limits = CacheLimits {
        max_bytes: settings.worker.cache_max_bytes,
        ttl: settings.worker.cache_ttl,
    };
    let cache = SubscriptionCache::with_limits(store.clone(), limits);
    // Entries are only cached while changes are followed, as in a worker.
    let follow = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cache.clone().follow_changes(follow.clone()));
    cache.wait_live(std::time::Duration::from_secs(5)).await;
    let rss_before = procstat::own_peak_rss_bytes();
    let started = Instant::now();
    // Each result is dropped as soon as it is counted: only the cache keeps anything.
    let failed = futures_util::stream::iter(0..accounts)
        .map(|i| {
            let cache = cache.clone();
            async move { cache.lookup(&account(i)).await.is_err() }
        })
        .buffer_unordered(CONCURRENT)
        .fold(0usize, |n, failed| async move { n + usize::from(failed) })
        .await;
    let elapsed = started.elapsed();
    // Read before the follower stops: stopping flushes the cache.
    let (entries, bytes) = cache.footprint();
    follow.cancel();
    anyhow::ensure!(failed == 0, "{failed} lookups failed");
    let figures = CacheFigures {
        accounts_seen: accounts,
        accounts_with_a_webhook: with_webhook,
        cache_max_bytes: limits.max_bytes,
        entries_kept: entries,
        estimated_bytes_kept: bytes,
        lookups_per_second: accounts as f64 / elapsed.as_secs_f64(),
        rss_before_mb: rss_before as f64 / 1e6,
        peak_rss_mb: procstat::own_peak_rss_bytes() as f64 / 1e6,
    };
    store.purge_prefix().await?;
    Ok(figures)
}
