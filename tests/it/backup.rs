//! `webhooks export` and `import` as an operator runs them: a lost store restored with the same
//! ids and secrets, idempotent imports, refusals that name the line and write nothing, sealed
//! secrets that stay sealed; and `redis.min_replicas` refusing a write no replica confirmed.

use crate::helpers::api::*;
use crate::helpers::*;
use base64::Engine;
use hookrelay::event::{AccountId, EventType};
use hookrelay::subscription::store::{Store, WebhookPatch};
use hookrelay::subscription::{Format, RateLimit, Webhook};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

const HTTP: (&str, &str) = ("HOOKRELAY__DELIVERY__ALLOW_HTTP", "true");

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hr-backup-{}-{name}", hookrelay::random_token(8)))
}

fn export(prefix: &str, file: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let out = hookrelay(
        prefix,
        &["webhooks", "export", "--output", file.to_str().unwrap()],
        env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn import(prefix: &str, file: &std::path::Path, env: &[(&str, &str)]) -> Output {
    hookrelay(
        prefix,
        &[
            "webhooks",
            "import",
            file.to_str().unwrap(),
            "--init-store",
            "--json",
        ],
        env,
    )
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

fn account(a: &str) -> AccountId {
    AccountId::parse(a).unwrap()
}

/// Everything a webhook is, secrets included, to compare before and after.
fn identity(w: &Webhook) -> serde_json::Value {
    let mut v = w.to_json(true);
    v["created_at"] = w.created_at.to_rfc3339().into();
    v["previous_secret"] = w
        .previous_secret
        .as_ref()
        .map(|p| p.secret.expose().to_owned())
        .into();
    v
}

async fn identities(store: &Store, accounts: &[&str]) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for a in accounts {
        let snapshot = store.snapshot(&account(a)).await.unwrap();
        all.extend(snapshot.webhooks.iter().map(identity));
    }
    all
}

#[tokio::test]
async fn a_store_restored_from_an_export_has_the_same_webhooks_and_deliveries_are_signed_as_before()
{
    let app = spawn_app().await;
    let kept = app
        .add_webhook("b1", "/kept", &["payment.card.success"], Format::Standard)
        .await;
    let limited = app
        .add_webhook("b1", "/limited", &["*"], Format::Inplayer)
        .await;
    app.store
        .update(
            &account("b1"),
            &limited.id,
            WebhookPatch {
                rate_limit: Some(Some(RateLimit::new(50).unwrap())),
                description: Some("with a limit".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let gone = app
        .add_webhook("b2", "/gone", &["*"], Format::Standard)
        .await;
    app.store
        .disable(&account("b2"), &gone.id, "gone")
        .await
        .unwrap();
    let before = identities(&app.store, &["b1", "b2"]).await;
    let file = temp_file("restore");

    let out = export(&app.prefix, &file, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported 3 webhooks of 2 accounts"));
    app.store.purge_prefix().await.unwrap();
    assert!(identities(&app.store, &["b1", "b2"]).await.is_empty());
    let restored = summary(&import(&app.prefix, &file, &[HTTP]));

    assert_eq!(restored["created"], 3, "{restored}");
    assert_eq!(identities(&app.store, &["b1", "b2"]).await, before);
    let event_id = app
        .publish(EventType::PaymentCardSuccess, "b1", r#"{"n":1}"#)
        .await;
    app.receiver
        .wait_for("/kept", 1, Duration::from_secs(20))
        .await;
    let hit = hits_of(&app, "/kept", &event_id).remove(0);
    assert_eq!(
        signatures(&hit),
        vec![signed_with(&hit, kept.secret.expose())]
    );
    let _ = std::fs::remove_file(file);
    app.cleanup().await;
}

#[tokio::test]
async fn importing_the_same_file_twice_changes_nothing_the_second_time() {
    let app = spawn_app().await;
    for path in ["/1", "/2", "/3"] {
        app.add_webhook("twice", path, &["*"], Format::Standard)
            .await;
    }
    let file = temp_file("twice");
    export(&app.prefix, &file, &[]);
    let version = app.store.snapshot(&account("twice")).await.unwrap().version;

    let first = summary(&import(&app.prefix, &file, &[HTTP]));
    let second = summary(&import(&app.prefix, &file, &[HTTP]));

    assert_eq!(first["unchanged"], 3, "{first}");
    assert_eq!(second["unchanged"], 3, "{second}");
    assert_eq!(second["created"], 0, "{second}");
    let snapshot = app.store.snapshot(&account("twice")).await.unwrap();
    assert_eq!(
        snapshot.version, version,
        "nothing changed, nothing announced"
    );
    assert_eq!(snapshot.webhooks.len(), 3);
    let _ = std::fs::remove_file(file);
    app.cleanup().await;
}

#[tokio::test]
async fn a_bad_line_is_reported_by_its_number_and_nothing_is_written() {
    let app = spawn_app().await;
    for (a, path) in [("c1", "/1"), ("c2", "/2"), ("c3", "/3")] {
        app.add_webhook(a, path, &["*"], Format::Standard).await;
    }
    let file = temp_file("bad");
    export(&app.prefix, &file, &[]);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    lines[2] = lines[2].replace(r#""events":["*"]"#, r#""events":["payment.cash"]"#);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    app.store.purge_prefix().await.unwrap();

    let out = import(&app.prefix, &file, &[HTTP]);

    assert_eq!(out.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3:") && stderr.contains("payment.cash"),
        "{stderr}"
    );
    for a in ["c1", "c2", "c3"] {
        let snapshot = app.store.snapshot(&account(a)).await.unwrap();
        assert!(snapshot.webhooks.is_empty(), "{a} was written");
    }
    assert!(
        app.store.marker().await.unwrap().is_none(),
        "not even the marker"
    );
    let _ = std::fs::remove_file(file);
    app.cleanup().await;
}

#[tokio::test]
async fn an_import_that_would_give_an_account_an_eleventh_webhook_is_refused_whole() {
    let source = spawn_app().await;
    source
        .add_webhook("early", "/early", &["*"], Format::Standard)
        .await;
    for n in 0..10 {
        let path = format!("/full/{n}");
        source
            .add_webhook("full", &path, &["*"], Format::Standard)
            .await;
    }
    let file = temp_file("limit");
    export(&source.prefix, &file, &[]);
    let target = test_prefix();
    assert!(hookrelay(&target, &["store", "init"], &[]).status.success());
    let store = Store::connect(REDIS_URL, &target, Duration::from_secs(2))
        .await
        .unwrap();
    let added = hookrelay(
        &target,
        &[
            "webhooks",
            "add",
            "--account",
            "full",
            "--url",
            "https://example.com/mine",
            "--events",
            "*",
        ],
        // example.com does not resolve on a loopback-only machine; registration checks it only
        // with private targets refused.
        &[("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true")],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let out = import(&target, &file, &[HTTP]);

    assert_eq!(out.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line ") && stderr.contains("at most 10"),
        "{stderr}"
    );
    assert_eq!(
        store
            .snapshot(&account("full"))
            .await
            .unwrap()
            .webhooks
            .len(),
        1
    );
    assert!(store
        .snapshot(&account("early"))
        .await
        .unwrap()
        .webhooks
        .is_empty());
    store.purge_prefix().await.unwrap();
    let _ = std::fs::remove_file(file);
    source.cleanup().await;
}

#[tokio::test]
async fn secrets_stay_sealed_in_an_export_and_open_after_an_import_with_the_same_key() {
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let with_key = [
        ("HOOKRELAY__REDIS__SECRET_KEY", key.as_str()),
        HTTP,
        ("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true"),
    ];
    let source = test_prefix();
    assert!(hookrelay(&source, &["store", "init"], &[]).status.success());
    let sealed = Store::from_settings(&settings(&source, "1s", &with_key).redis)
        .await
        .unwrap();
    let created = hookrelay(
        &source,
        &[
            "webhooks",
            "add",
            "--account",
            "s1",
            "--url",
            "https://example.com/s",
            "--events",
            "*",
            "--json",
        ],
        &with_key,
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let secret = created["secret"].as_str().unwrap();
    let file = temp_file("sealed");

    export(&source, &file, &with_key);
    let line = std::fs::read_to_string(&file).unwrap();
    let keyless = import(&test_prefix(), &file, &[HTTP]);
    let target = test_prefix();
    let restored = summary(&import(&target, &file, &with_key));

    assert!(
        line.contains("sealed:v1:") && !line.contains(&secret[6..]),
        "{line}"
    );
    assert_eq!(keyless.status.code(), Some(65));
    let err = String::from_utf8_lossy(&keyless.stderr);
    assert!(
        err.contains("line 1:") && err.contains("redis.secret_key"),
        "{err}"
    );
    assert_eq!(restored["created"], 1);
    let opened = Store::from_settings(&settings(&target, "1s", &with_key).redis)
        .await
        .unwrap();
    let webhook = opened
        .find(&created["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(webhook.secret.expose(), secret);
    opened.purge_prefix().await.unwrap();
    sealed.purge_prefix().await.unwrap();
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_write_that_no_replica_confirms_exits_75_and_the_api_answers_503() {
    // The shared Redis has no replica: min_replicas 1 cannot be met.
    let prefix = test_prefix();
    assert!(hookrelay(&prefix, &["store", "init"], &[]).status.success());
    let unmet = [
        ("HOOKRELAY__REDIS__MIN_REPLICAS", "1"),
        ("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true"),
    ];

    let out = hookrelay(
        &prefix,
        &[
            "webhooks",
            "add",
            "--account",
            "r1",
            "--url",
            "https://example.com/r",
            "--events",
            "*",
        ],
        &unmet,
    );
    let api = start_api(api_settings(&prefix, &unmet)).await;
    let token = api.token_for("r2").await;
    let (status, body) = api
        .post(
            "/v1/accounts/r2/webhooks",
            &token,
            serde_json::json!({"url": "https://example.com/r2", "events": ["*"]}),
        )
        .await;

    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("on the Redis primary but unconfirmed"),
        "{stderr}"
    );
    assert_eq!(
        error_code(status, &body, reqwest::StatusCode::SERVICE_UNAVAILABLE),
        "write_unconfirmed"
    );
    api.cleanup().await;
}

#[tokio::test]
async fn an_import_into_a_store_without_its_marker_is_refused_unless_asked_to_create_it() {
    let app = spawn_app().await;
    app.add_webhook("m1", "/m", &["*"], Format::Standard).await;
    let file = temp_file("marker");
    export(&app.prefix, &file, &[]);
    app.store.purge_prefix().await.unwrap();

    let refused = hookrelay(
        &app.prefix,
        &["webhooks", "import", file.to_str().unwrap()],
        &[HTTP],
    );
    let restored = summary(&import(&app.prefix, &file, &[HTTP]));

    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--init-store") && stderr.contains(&app.prefix),
        "{stderr}"
    );
    assert_eq!(restored["created"], 1);
    assert!(app.store.marker().await.unwrap().is_some());
    let _ = std::fs::remove_file(file);
    app.cleanup().await;
}
