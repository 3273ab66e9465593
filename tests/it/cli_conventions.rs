//! The CLI's conventions as scripts rely on them: exit statuses by cause (sysexits), `--json`
//! everywhere, tables with a header row, `config show` without secrets, completions, an
//! interrupted replay that says how far it got and resumes; and `webhooks status` (CLI and
//! API) saying why an account fails.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::messages::DeadReason;
use hookrelay::subscription::{Format, WebhookId};
use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(code(out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

#[test]
fn exit_statuses_say_why_a_command_failed() {
    let p = "hrt-exit";
    let unknown_flag = hookrelay(p, &["dlq", "list", "--nope"], &[]);
    let purge_unconfirmed = hookrelay(p, &["dlq", "purge", "--all"], &[]);
    let bad_config = hookrelay(p, &["events"], &[("HOOKRELAY__DELIVERY__TIMEOUT", "soon")]);
    let no_broker = hookrelay(
        p,
        &["dlq", "list"],
        &[("HOOKRELAY__AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    let no_broker_topology = hookrelay(
        p,
        &["topology", "declare", "--json"],
        &[("HOOKRELAY__AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    let help = hookrelay(p, &["dlq", "replay", "--help"], &[]);

    assert_eq!(code(&unknown_flag), 64);
    assert_eq!(code(&purge_unconfirmed), 64);
    assert_eq!(code(&bad_config), 78);
    assert_eq!(code(&no_broker), 69);
    assert_eq!(code(&no_broker_topology), 69);
    for out in [&purge_unconfirmed, &bad_config, &no_broker] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    assert_eq!(code(&help), 0);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--rate") && help.contains("Example"),
        "{help}"
    );
}

#[test]
fn config_show_prints_the_effective_configuration_without_secrets() {
    let secrets = [
        ("HOOKRELAY__API__ADMIN_TOKEN", "adm1n-t0ken-0123456789"),
        (
            "HOOKRELAY__REDIS__SECRET_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
        (
            "HOOKRELAY__AMQP__URL",
            "amqp://hr:pa55word@127.0.0.1:5672/%2f",
        ),
    ];

    let toml = hookrelay("hrt-cfg", &["config", "show"], &secrets);
    let shown = json(&hookrelay(
        "hrt-cfg",
        &["config", "show", "--json"],
        &secrets,
    ));
    let check = hookrelay("hrt-cfg", &["config", "check"], &secrets);
    let broken = hookrelay(
        "hrt-cfg",
        &["config", "check"],
        &[("HOOKRELAY__LOG__FORMAT", "xml")],
    );

    assert_eq!(code(&toml), 0);
    let text = String::from_utf8_lossy(&toml.stdout);
    for (_, secret) in secrets {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    for secret in ["adm1n-t0ken", "MDEyMzQ1", "pa55word"] {
        assert!(!shown.to_string().contains(secret), "{secret} in {shown}");
    }
    assert!(text.contains("prefix = \"hrt-cfg\""), "{text}");
    assert_eq!(shown["api"]["admin_token"], "<redacted>");
    assert_eq!(shown["redis"]["secret_key"], "<redacted>");
    assert_eq!(
        shown["amqp"]["url"],
        "amqp://hr:redacted@127.0.0.1:5672/%2f"
    );
    assert_eq!(shown["amqp"]["prefix"], "hrt-cfg");
    assert_eq!(code(&check), 0);
    assert_eq!(code(&broken), 78);
    assert!(String::from_utf8_lossy(&broken.stderr).contains("log.format"));
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = hookrelay("hrt-comp", &["completions", shell], &[]);
        assert_eq!(code(&out), 0);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("hookrelay") && script.contains("replay"),
            "{shell}"
        );
    }
    assert_eq!(
        code(&hookrelay("hrt-comp", &["completions", "tcsh"], &[])),
        64
    );
}

#[tokio::test]
async fn topology_declare_prints_json_and_webhooks_list_a_table_with_a_header() {
    let app = spawn_app().await;
    let p = app.prefix.clone();
    app.add_webhook("tbl", "/t", &["*"], Format::Standard).await;

    let declared = json(&hookrelay(&p, &["topology", "declare", "--json"], &[]));
    let listed = hookrelay(&p, &["webhooks", "list", "--account", "tbl"], &[]);

    let queues: Vec<&str> = declared["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert!(queues.contains(&format!("{p}.dlq.deliveries").as_str()));
    assert_eq!(declared["exchange"]["name"], format!("{p}.events"));
    assert_eq!(code(&listed), 0);
    let text = String::from_utf8_lossy(&listed.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("ID") && header.contains("URL") && header.contains("FORMAT"),
        "{text}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.contains("standard") && !row.contains("Standard"),
        "{text}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_interrupted_cli_replay_exits_130_with_valid_json_and_the_next_run_finishes_it() {
    let app = spawn_app_with("200ms", &[]).await;
    let webhook = app.add_webhook("ir", "/ir", &["*"], Format::Standard).await;
    let n = 1_500;
    let letters: Vec<_> = (0..n)
        .map(|_| small_dead_delivery("ir", &webhook.id, DeadReason::Exhausted))
        .collect();
    let events: HashSet<String> = letters.iter().map(|d| d.event_id.clone()).collect();
    write_dead_deliveries(&app.prefix, n, |i| letters[i].clone()).await;
    let run = |args: &'static [&'static str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(args)
            .env("HOOKRELAY__AMQP__URL", AMQP_URL)
            .env("HOOKRELAY__REDIS__URL", REDIS_URL)
            .env("HOOKRELAY__AMQP__PREFIX", &app.prefix)
            .env("HOOKRELAY__REDIS__PREFIX", &app.prefix)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    // 500 letters a second: the signal arrives about halfway.
    let first = run(&["dlq", "replay", "--all", "--rate", "500/s", "--json"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let pid = first.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let first = first.wait_with_output().await.unwrap();
    let second = run(&["dlq", "replay", "--all", "--json"])
        .wait_with_output()
        .await
        .unwrap();

    assert_eq!(
        code(&first),
        130,
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("interrupted: replayed"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&first.stdout).expect("one document");
    let sent = doc["summary"]["counts"]["replayed"].as_u64().unwrap() as usize;
    assert_eq!(doc["items"].as_array().unwrap().len(), sent);
    assert!(doc["summary"]["interrupted"].as_bool().unwrap());
    assert!(sent > 0 && sent < n, "replayed {sent}");
    let doc = json(&second);
    assert_eq!(doc["summary"]["counts"]["replayed"], (n - sent) as u64);
    app.receiver
        .wait_for("/ir", n, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hits = app.receiver.hits_on("/ir");
    let got: HashSet<String> = hits
        .iter()
        .map(|h| h.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, events, "lost 0");
    assert_eq!(hits.len(), n, "duplicates 0");
    app.cleanup().await;
}

#[tokio::test]
async fn webhooks_status_says_why_an_account_fails_in_the_cli_and_the_api() {
    let app = spawn_app_with("200ms", &[]).await;
    app.receiver.behave("/down", Behaviour::Status(500));
    let down = app
        .add_webhook("st", "/down", &["*"], Format::Standard)
        .await;
    app.publish(hookrelay::event::EventType::CustomerUpdated, "st", "{}")
        .await;
    let dlq = app.topology().dlq_deliveries();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.queue_depth(&dlq).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two more, as the worker would have written them: one for this webhook, one for a
    // webhook since deleted.
    write_dead_deliveries(&app.prefix, 2, |i| match i {
        0 => small_dead_delivery("st", &down.id, DeadReason::Gone),
        _ => small_dead_delivery("st", &WebhookId::generate(), DeadReason::Exhausted),
    })
    .await;
    // The attempt log is written in batches, shortly after the attempts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token = "status-admin-token-0123456789";
    let mut settings = app.settings.clone();
    settings.api.listen = "127.0.0.1:0".parse().unwrap();
    settings.api.admin_token = token.into();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let api = hookrelay::api::start(settings, shutdown.clone())
        .await
        .unwrap();

    let cli = json(&hookrelay(
        &app.prefix,
        &["webhooks", "status", "--account", "st", "--json"],
        &[],
    ));
    let from_api = reqwest::Client::new()
        .get(format!("http://{}/v1/accounts/st/status", api.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let from_api: serde_json::Value = serde_json::from_str(&from_api).unwrap();
    let openapi = reqwest::get(format!("http://{}/v1/openapi.json", api.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    for status in [&cli, &from_api] {
        let w = &status["webhooks"][0];
        assert_eq!(w["id"], down.id.as_str(), "{status}");
        assert_eq!(w["enabled"], true);
        assert_eq!(w["format"], "standard");
        assert!(w["success_rate"]["attempts"].as_u64().unwrap() >= 2, "{w}");
        assert_eq!(w["success_rate"]["succeeded"], 0);
        assert_eq!(w["success_rate"]["rate"], 0.0);
        assert_eq!(w["last_attempts"][0]["status"], 500);
        assert_eq!(w["dead_letters"]["total"], 2);
        assert_eq!(w["dead_letters"]["by_reason"]["exhausted"], 1);
        assert_eq!(w["dead_letters"]["by_reason"]["gone"], 1);
        assert_eq!(status["dead_letters_of_deleted_webhooks"]["total"], 1);
        assert_eq!(status["dlq"]["complete"], true);
        assert_eq!(status["dlq"]["read"], 3);
    }
    assert!(openapi.contains("/v1/accounts/{account_id}/status"));
    shutdown.cancel();
    api.wait().await.unwrap();
    app.cleanup().await;
}

#[test]
fn publish_and_dlq_list_without_a_declared_topology_say_to_declare_it_and_exit_78() {
    // A fresh prefix: nothing is declared under it, and nothing is created by these commands.
    let p = test_prefix();

    let publish = hookrelay(
        &p,
        &[
            "publish",
            "--type",
            "payment.card.success",
            "--account",
            "68",
        ],
        &[],
    );
    let list = hookrelay(&p, &["dlq", "list"], &[]);
    let list_json = hookrelay(&p, &["dlq", "list", "--json"], &[]);

    for (out, missing) in [
        (&publish, format!("exchange {p}.events")),
        (&list, format!("queue {p}.dlq.deliveries")),
        (&list_json, format!("queue {p}.dlq.deliveries")),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(out), 78, "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&missing) && stderr.contains("hookrelay topology declare"),
            "{stderr}"
        );
        assert!(!stderr.contains("retrying"), "no retry: {stderr}");
        assert!(out.stdout.is_empty(), "no table header, no `[`");
    }
}

#[tokio::test]
async fn a_worker_stopped_with_sigterm_after_delivering_logs_nothing_above_info() {
    let mut app = spawn_app().await;
    app.stop_worker().await;
    app.add_webhook("term", "/term", &["*"], Format::Standard)
        .await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("worker")
        .env("HOOKRELAY__AMQP__URL", AMQP_URL)
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__AMQP__PREFIX", &app.prefix)
        .env("HOOKRELAY__REDIS__PREFIX", &app.prefix)
        .env("HOOKRELAY__DELIVERY__RETRY_SCHEDULE", "200ms,200ms")
        .env("HOOKRELAY__DELIVERY__ALLOW_HTTP", "true")
        .env("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("HOOKRELAY__OPS__LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    app.publish(EventType::PaymentCardSuccess, "term", "{}")
        .await;
    app.receiver
        .wait_for("/term", 1, Duration::from_secs(30))
        .await;

    std::process::Command::new("kill")
        .args(["-TERM", &worker.id().unwrap().to_string()])
        .status()
        .unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s of SIGTERM")
        .unwrap();

    assert!(exit.success(), "{exit}: {stderr}");
    assert!(stderr.contains("worker stopped"), "{stderr}");
    let loud: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .filter(|l| !l.contains("redis.secret_key is empty"))
        .collect();
    assert!(loud.is_empty(), "a clean stop logged: {loud:#?}");
    app.cleanup().await;
}
