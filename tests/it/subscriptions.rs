//! The webhook rules hold atomically, and changes reach a running worker within a second.

use crate::helpers::*;
use hookrelay::event::{AccountId, EventType};
use hookrelay::subscription::cache::SubscriptionCache;
use hookrelay::subscription::store::{NewWebhook, Store, StoreError, WebhookPatch};
use hookrelay::subscription::{EventFilter, Format, WebhookUrl};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn new_webhook(url: &str) -> NewWebhook {
    NewWebhook {
        url: WebhookUrl::parse(url, false).unwrap(),
        events: EventFilter::All,
        format: Format::Standard,
        description: String::new(),
        rate_limit: None,
    }
}

async fn store() -> Store {
    Store::connect(REDIS_URL, &test_prefix(), Duration::from_secs(2))
        .await
        .unwrap()
}

#[tokio::test]
async fn twenty_concurrent_creates_leave_exactly_ten_webhooks() {
    let store = store().await;
    let account: AccountId = "limit".parse().unwrap();

    let attempts = (0..20).map(|i| {
        let (store, account) = (store.clone(), account.clone());
        tokio::spawn(async move {
            store
                .create(&account, new_webhook(&format!("https://example.com/{i}")))
                .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts).await;

    let created = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::LimitReached(_)))))
        .count();
    assert_eq!((created, refused), (10, 10));
    assert_eq!(store.snapshot(&account).await.unwrap().webhooks.len(), 10);
    let err = store
        .create(&account, new_webhook("https://example.com/eleventh"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("10 webhooks"), "{err}");
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn concurrent_creates_of_one_url_leave_one_webhook() {
    let store = store().await;
    let account: AccountId = "dup".parse().unwrap();

    let attempts = (0..8).map(|_| {
        let (store, account) = (store.clone(), account.clone());
        tokio::spawn(async move {
            store
                .create(&account, new_webhook("https://example.com/same"))
                .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts).await;

    assert_eq!(results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count(), 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().unwrap().as_ref().err())
        .all(|e| matches!(e, StoreError::DuplicateUrl { .. })));
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn updates_keep_the_rules_and_deletes_free_the_url() {
    let store = store().await;
    let account: AccountId = "upd".parse().unwrap();
    let a = store
        .create(&account, new_webhook("https://example.com/a"))
        .await
        .unwrap();
    let b = store
        .create(&account, new_webhook("https://example.com/b"))
        .await
        .unwrap();

    let clash = store
        .update(
            &account,
            &b.id,
            WebhookPatch {
                url: Some(a.url.clone()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(clash, Err(StoreError::DuplicateUrl { .. })));

    let disabled = store
        .update(
            &account,
            &b.id,
            WebhookPatch {
                enabled: Some(false),
                events: Some(EventFilter::parse(&["customer.updated"]).unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.events.labels(), vec!["customer.updated"]);
    assert_eq!(store.find(&b.id).await.unwrap().url, b.url);

    store.delete(&account, &a.id).await.unwrap();
    assert!(matches!(
        store.find(&a.id).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .create(&account, new_webhook("https://example.com/a"))
        .await
        .unwrap();
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn every_key_of_an_account_carries_the_account_as_hash_tag() {
    let store = store().await;
    let account: AccountId = "tagged".parse().unwrap();
    store
        .create(&account, new_webhook("https://example.com/t"))
        .await
        .unwrap();

    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", store.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    let account_keys: Vec<_> = keys
        .iter()
        .filter(|k| !k.ends_with(":webhook-accounts"))
        .collect();
    assert!(!account_keys.is_empty());
    for key in account_keys {
        assert!(
            key.starts_with(&format!("{}:{{tagged}}:", store.prefix())),
            "{key}"
        );
    }
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn a_subscription_change_reaches_a_running_worker_within_a_second() {
    let app = spawn_app().await;
    let account: AccountId = "live".parse().unwrap();
    let webhook = app
        .add_webhook("live", "/before", &["customer.updated"], Format::Standard)
        .await;
    // Warm the worker's cache with the current subscription.
    app.publish(EventType::CustomerUpdated, "live", "{}").await;
    app.receiver
        .wait_for("/before", 1, Duration::from_secs(10))
        .await;

    let changed_at = Instant::now();
    app.store
        .update(
            &account,
            &webhook.id,
            WebhookPatch {
                url: Some(WebhookUrl::parse(&app.receiver.url("/after"), true).unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Publish repeatedly until a delivery reaches the new URL.
    loop {
        app.publish(EventType::CustomerUpdated, "live", "{}").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !app.receiver.hits_on("/after").is_empty() {
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(1),
            "change not seen within 1 s"
        );
    }
    let taken = changed_at.elapsed();

    // Deleting stops deliveries just as fast; an account with no webhooks is cached too.
    app.store.delete(&account, &webhook.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = app.receiver.hits().len();
    app.publish(EventType::CustomerUpdated, "live", "{}").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.receiver.hits().len(), before);
    eprintln!("change picked up after {taken:?}");
    app.cleanup().await;
}

async fn following_cache(store: &Store) -> (std::sync::Arc<SubscriptionCache>, CancellationToken) {
    let cache = SubscriptionCache::new(store.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(cache.clone().follow_changes(shutdown.clone()));
    assert!(cache.wait_live(Duration::from_secs(5)).await);
    (cache, shutdown)
}

#[tokio::test]
async fn concurrent_misses_of_one_account_share_one_redis_read() {
    let store = store().await;
    let (cache, shutdown) = following_cache(&store).await;
    let account: AccountId = "burst".parse().unwrap();
    store
        .create(&account, new_webhook("https://example.com/burst"))
        .await
        .unwrap();

    // A burst of one merchant's events on a cold entry: every lookup answers, one reads.
    let lookups = (0..64).map(|_| cache.lookup(&account));
    let results = futures_util::future::join_all(lookups).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_ok_and(|w| w.len() == 1)));
    assert_eq!(
        cache.reads_made(),
        1,
        "64 concurrent misses, one Redis read"
    );

    // A change is not answered from a read that may predate it.
    store
        .create(&account, new_webhook("https://example.com/burst2"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while cache.cached_version(&account).is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lookups = (0..8).map(|_| cache.lookup(&account));
    let results = futures_util::future::join_all(lookups).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_ok_and(|w| w.len() == 2)));
    assert_eq!(cache.reads_made(), 2);
    shutdown.cancel();
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn a_lookup_that_raced_a_change_leaves_no_stale_entry() {
    let store = store().await;
    let (cache, shutdown) = following_cache(&store).await;
    let account: AccountId = "race".parse().unwrap();
    store
        .create(&account, new_webhook("https://example.com/1"))
        .await
        .unwrap();

    // The announcement of a newer version arrived while a lookup was reading an older one.
    cache.invalidate(account.clone(), 1_000);
    let read = cache.lookup(&account).await.unwrap();

    assert_eq!(read.len(), 1, "the lookup still answers");
    assert_eq!(
        cache.cached_version(&account),
        None,
        "but does not cache the older version"
    );

    // A real change: announced, dropped, and the next lookup caches the new version.
    let (cache, _s) = following_cache(&store).await;
    cache.lookup(&account).await.unwrap();
    let before = cache.cached_version(&account);
    assert!(before.is_some());
    store
        .create(&account, new_webhook("https://example.com/2"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while cache.cached_version(&account) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "change not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.lookup(&account).await.unwrap().len(), 2);
    shutdown.cancel();
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn losing_the_redis_change_channel_flushes_the_cache_until_it_is_followed_again() {
    let store = store().await;
    let (cache, shutdown) = following_cache(&store).await;
    let account: AccountId = "flush".parse().unwrap();
    store
        .create(&account, new_webhook("https://example.com/f"))
        .await
        .unwrap();
    cache.lookup(&account).await.unwrap();
    assert!(cache.cached_version(&account).is_some());

    // Cut every pub/sub connection (other tests' workers just resubscribe too).
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cache.cached_version(&account).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "cache not flushed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cache.wait_live(Duration::from_secs(5)).await,
        "follows changes again"
    );
    shutdown.cancel();
    store.purge_prefix().await.unwrap();
}
