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

/// Runs `hookrelay worker` on `prefix` and waits (bounded) for it to exit.
async fn worker_exit(prefix: &str, env: &[(&str, &str)]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("worker")
        .env("HOOKRELAY__AMQP__URL", AMQP_URL)
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__AMQP__PREFIX", prefix)
        .env("HOOKRELAY__REDIS__PREFIX", prefix)
        .env("HOOKRELAY__OPS__LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the worker exits instead of starting")
        .unwrap()
}

#[tokio::test]
async fn a_worker_refuses_to_start_without_the_store_marker_and_says_where_it_looked() {
    let prefix = test_prefix();
    let out = worker_exit(&prefix, &[]).await;
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "redis://127.0.0.1:6379 database 0",
        &format!("{prefix:?}"),
        "hookrelay store init",
        "webhooks import",
    ] {
        assert!(stderr.contains(part), "{part} not in: {stderr}");
    }
}

#[tokio::test]
async fn a_worker_on_the_wrong_redis_database_refuses_to_start() {
    let prefix = test_prefix();
    let store = store_on(&prefix).await;
    store.init_marker().await.unwrap();
    let out = worker_exit(
        &prefix,
        &[("HOOKRELAY__REDIS__URL", "redis://127.0.0.1:6379/9")],
    )
    .await;
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("database 9"));
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn webhook_writes_are_refused_without_the_marker_by_the_cli_and_the_api() {
    let prefix = test_prefix();
    let add = hookrelay(
        &prefix,
        &[
            "webhooks",
            "add",
            "--account",
            "a1",
            "--url",
            "https://example.com/h",
            "--events",
            "*",
        ],
        &[],
    );
    assert_eq!(add.status.code(), Some(78), "{add:?}");
    let stderr = String::from_utf8_lossy(&add.stderr);
    assert!(stderr.contains(&format!("{prefix}:store")), "{stderr}");

    let settings = crate::helpers::api::api_settings(&prefix, &[]);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let api = hookrelay::api::start(settings, shutdown.clone())
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/accounts/a1/webhooks", api.addr))
        .bearer_auth(crate::helpers::api::ADMIN)
        .header("content-type", "application/json")
        .body(r#"{"url": "https://example.com/h", "events": ["*"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "store_missing", "{body}");
    let store = store_on(&prefix).await;
    assert_eq!(
        store
            .snapshot(&"a1".parse().unwrap())
            .await
            .unwrap()
            .webhooks
            .len(),
        0
    );
    shutdown.cancel();
    store.purge_prefix().await.unwrap();
}

/// Every key of the prefix as DUMP payloads, to put back with RESTORE (a stand-in for a
/// backup that brings back the same records).
async fn dump_keys(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dumped = Vec::new();
    // The marker last, as a restore must write it: workers resume as soon as they see it.
    let marker = format!("{prefix}:store");
    let (mut keys, markers): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| *k != marker);
    keys.extend(markers);
    for key in keys {
        let payload: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        dumped.push((key, payload));
    }
    dumped
}

async fn restore_keys(dumped: &[(String, Vec<u8>)]) {
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (key, payload) in dumped {
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(payload.as_slice())
            .arg("REPLACE")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

async fn ops(app: &TestApp, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", app.ops_addr))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn wait_until_not_ready(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ops(app, "/readyz").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready 20 s after the store went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_store_deleted_under_a_running_worker_pauses_it_and_a_restore_delivers_every_event_once()
{
    let app = spawn_app_with(
        "200ms,200ms",
        &[("HOOKRELAY__WORKER__STORE_CHECK_INTERVAL", "200ms")],
    )
    .await;
    app.add_webhook(
        "acct",
        "/acct",
        &["*"],
        hookrelay::subscription::Format::Standard,
    )
    .await;
    app.publish(hookrelay::event::EventType::CustomerUpdated, "acct", "{}")
        .await;
    app.receiver
        .wait_for("/acct", 1, Duration::from_secs(20))
        .await;
    let backup = dump_keys(&app.prefix).await;

    // The store's keys are deleted (a Redis restart without persistence looks the same).
    app.store.purge_prefix().await.unwrap();
    wait_until_not_ready(&app).await;
    let (_, metrics) = ops(&app, "/metrics").await;
    assert!(metrics.contains("hookrelay_store_ok 0"), "{metrics}");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            app.publish(hookrelay::event::EventType::CustomerUpdated, "acct", "{}")
                .await,
        );
    }
    // Nothing is acked as unmatched nor delivered while the store is gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.receiver.hits_on("/acct").len(), 1);
    assert_eq!(ops(&app, "/readyz").await.0, 503);

    restore_keys(&backup).await;
    let hits = app
        .receiver
        .wait_for("/acct", 4, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hits_now = app.receiver.hits_on("/acct");
    assert_eq!(hits_now.len(), 4, "each event delivered once: {hits:?}");
    for id in &ids {
        assert_eq!(
            hits_now
                .iter()
                .filter(|h| String::from_utf8_lossy(&h.body).contains(id.as_str()))
                .count(),
            1,
            "{id}"
        );
    }
    assert_eq!(ops(&app, "/readyz").await.0, 200);
    assert!(ops(&app, "/metrics")
        .await
        .1
        .contains("hookrelay_store_ok 1"));
    app.cleanup().await;
}

#[tokio::test]
async fn a_lookup_that_finds_no_webhooks_and_no_marker_holds_the_event_whatever_the_check_interval()
{
    // The periodic check would not run for an hour: the lookup itself must see the marker gone.
    let app = spawn_app_with(
        "200ms,200ms",
        &[("HOOKRELAY__WORKER__STORE_CHECK_INTERVAL", "1h")],
    )
    .await;
    app.add_webhook(
        "cold",
        "/cold",
        &["*"],
        hookrelay::subscription::Format::Standard,
    )
    .await;
    let backup = dump_keys(&app.prefix).await;
    app.store.purge_prefix().await.unwrap();

    let id = app
        .publish(hookrelay::event::EventType::CustomerUpdated, "cold", "{}")
        .await;
    wait_until_not_ready(&app).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(app.receiver.hits_on("/cold").is_empty());

    restore_keys(&backup).await;
    let hits = app
        .receiver
        .wait_for("/cold", 1, Duration::from_secs(30))
        .await;
    assert!(String::from_utf8_lossy(&hits[0].body).contains(id.as_str()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ops(&app, "/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again after the restore"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.cleanup().await;
}

/// A redis-server of the test's own, on a free port, with `args`; killed on drop.
struct OwnRedis {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl OwnRedis {
    fn start(args: &[&str]) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("hookrelay-{}", test_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        OwnRedis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
            dir,
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn store_status_reports_persistence_as_unknown_where_config_is_refused() {
    let redis = OwnRedis::start(&["--rename-command", "CONFIG", ""]);
    let env = [("HOOKRELAY__REDIS__URL", redis.url.as_str())];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !hookrelay("hrt-cfg", &["store", "init"], &env)
        .status
        .success()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "own Redis did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = hookrelay("hrt-cfg", &["store", "status", "--json"], &env);

    assert!(out.status.success(), "{out:?}");
    let persistence = &json_of(&out)["persistence"];
    assert!(persistence["appendonly"].is_null(), "{persistence}");
    assert!(
        persistence["error"].as_str().unwrap().contains("CONFIG"),
        "{persistence}"
    );
}
