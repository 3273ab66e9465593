//! The store's identity (DESIGN §5 "The store"): `store init` and `store status`, and what
//! refuses to work without the marker.

use crate::helpers::*;
use hookrelay::subscription::store::{NewWebhook, Store};
use hookrelay::subscription::{EventFilter, Format, WebhookUrl};
use std::process::Output;
use std::time::Duration;

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn new_webhook(url: &str) -> NewWebhook {
    NewWebhook {
        url: WebhookUrl::parse(url, false).unwrap(),
        events: EventFilter::All,
        format: Format::Standard,
        description: String::new(),
        rate_limit: None,
    }
}

async fn store_on(prefix: &str) -> Store {
    Store::connect(REDIS_URL, prefix, Duration::from_secs(2))
        .await
        .unwrap()
}

#[tokio::test]
async fn store_init_creates_the_marker_once_and_then_reports_the_same_store() {
    let prefix = test_prefix();
    let first = hookrelay(&prefix, &["store", "init", "--json"], &[]);
    assert!(first.status.success(), "{first:?}");
    let first = json_of(&first);
    assert_eq!(first["created"], true);
    let id = first["store"]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("st_"), "{id}");
    assert_eq!(first["store"]["layout"], 1);

    let second = json_of(&hookrelay(&prefix, &["store", "init", "--json"], &[]));
    assert_eq!(second["created"], false);
    assert_eq!(second["store"]["id"], id.as_str());
    let text = hookrelay(&prefix, &["store", "init"], &[]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("store {id} already exists")));
    store_on(&prefix).await.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn store_status_reports_the_id_counts_mode_and_persistence() {
    let prefix = test_prefix();
    assert!(hookrelay(&prefix, &["store", "init"], &[]).status.success());
    let store = store_on(&prefix).await;
    let id = store.require_marker().await.unwrap().id;
    for (account, n) in [("acc1", 2), ("acc2", 1)] {
        for i in 0..n {
            store
                .create(
                    &account.parse().unwrap(),
                    new_webhook(&format!("https://example.com/{i}")),
                )
                .await
                .unwrap();
        }
    }

    let out = hookrelay(&prefix, &["store", "status", "--json"], &[]);
    assert!(out.status.success(), "{out:?}");
    let status = json_of(&out);
    assert_eq!(status["store"]["id"], id.as_str());
    assert_eq!(status["prefix"], prefix.as_str());
    assert_eq!(status["location"], "redis://127.0.0.1:6379 database 0");
    assert_eq!(status["mode"], "single");
    assert_eq!(status["webhooks"], 3);
    assert_eq!(status["accounts"], 2);
    // The shared test Redis allows CONFIG GET: its answers are reported as they are.
    let persistence = &status["persistence"];
    assert!(persistence["error"].is_null(), "{persistence}");
    assert!(
        ["yes", "no"].contains(&persistence["appendonly"].as_str().unwrap()),
        "{persistence}"
    );
    assert!(persistence["save"].is_string(), "{persistence}");
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn store_status_without_a_marker_says_missing_and_exits_78() {
    let prefix = test_prefix();
    let out = hookrelay(&prefix, &["store", "status", "--json"], &[]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(json_of(&out)["store"].is_null());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{prefix}:store")), "{stderr}");
    assert!(stderr.contains("hookrelay store init"), "{stderr}");
}
