//! The `hookrelay` binary as users script it: JSON on stdout, one-line reasons on stderr.

use crate::helpers::*;
use std::process::Output;
use std::time::Duration;

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

#[test]
fn events_lists_the_27_labels_with_descriptions() {
    let out = hookrelay("hrt-cli", &["events", "--json"], &[]);
    let types = stdout_json(&out)["event_types"].as_array().unwrap().clone();
    assert_eq!(types.len(), 27);
    assert!(types.iter().any(|t| t["label"] == "payment.card.success"
        && t["description"] == "Payment sale with card succeeded"));
}

#[test]
fn a_broken_config_stops_with_a_message_naming_the_key() {
    let out = hookrelay(
        "hrt-cli",
        &["events"],
        &[("HOOKRELAY__DELIVERY__TIMEOUT", "soon")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("delivery.timeout"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn config_is_read_from_a_file_given_before_or_after_the_subcommand() {
    let dir = std::env::temp_dir().join(format!("hr-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[delivery]\nmax_event_bytes = \"lots\"\n").unwrap();
    let path = file.to_str().unwrap();
    for args in [
        vec!["--config", path, "events"],
        vec!["events", "--config", path],
    ] {
        let out = hookrelay("hrt-cli", &args, &[]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("max_event_bytes"));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn webhooks_commands_manage_subscriptions_and_explain_refusals() {
    let prefix = test_prefix();
    assert!(hookrelay(&prefix, &["store", "init"], &[]).status.success());
    // example.com does not resolve on a loopback-only machine: registration checks the target
    // only with private targets refused (see the_cli_refuses_webhook_urls_inside_the_network…).
    let http = [
        ("HOOKRELAY__DELIVERY__ALLOW_HTTP", "true"),
        ("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true"),
    ];
    let add = |url: &str, events: &str| {
        hookrelay(
            &prefix,
            &[
                "webhooks",
                "add",
                "--account",
                "a1",
                "--url",
                url,
                "--events",
                events,
                "--json",
            ],
            &http,
        )
    };

    let created = stdout_json(&add(
        "https://example.com/x",
        "payment.card.success,customer.registered",
    ));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = created["id"].as_str().unwrap().to_owned();

    for (url, events, needle) in [
        ("https://example.com/y", "*,payment.card.success", "alone"),
        ("https://example.com/y", "payment.cash", "payment.cash"),
        ("https://example.com/y", "", "empty"),
        ("not a url", "*", "url"),
        ("https://example.com/x", "*", "already has a webhook"),
    ] {
        let out = add(url, events);
        assert!(!out.status.success(), "{url} {events}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
    let plain = hookrelay(
        &prefix,
        &[
            "webhooks",
            "add",
            "--account",
            "a1",
            "--url",
            "http://example.com/",
            "--events",
            "*",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&plain.stderr).contains("https"));

    let updated = stdout_json(&hookrelay(
        &prefix,
        &["webhooks", "update", &id, "--enabled", "false", "--json"],
        &[],
    ));
    assert_eq!(updated["enabled"], false);
    let shown = stdout_json(&hookrelay(
        &prefix,
        &["webhooks", "show", &id, "--json"],
        &[],
    ));
    assert_eq!(shown["url"], "https://example.com/x");
    assert!(shown.get("secret").is_none());
    let rotated = stdout_json(&hookrelay(
        &prefix,
        &["webhooks", "rotate-secret", &id, "--json"],
        &[],
    ));
    assert_ne!(rotated["secret"], created["secret"]);
    let list = stdout_json(&hookrelay(
        &prefix,
        &["webhooks", "list", "--account", "a1", "--json"],
        &[],
    ));
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);

    assert!(hookrelay(&prefix, &["webhooks", "remove", &id], &[])
        .status
        .success());
    let list = stdout_json(&hookrelay(
        &prefix,
        &["webhooks", "list", "--account", "a1", "--json"],
        &[],
    ));
    assert!(list["webhooks"].as_array().unwrap().is_empty());
    let gone = hookrelay(&prefix, &["webhooks", "show", &id], &[]);
    assert!(!gone.status.success());

    let store =
        hookrelay::subscription::store::Store::connect(REDIS_URL, &prefix, Duration::from_secs(2))
            .await
            .unwrap();
    store.purge_prefix().await.unwrap();
}

#[tokio::test]
async fn publish_sends_a_valid_confirmed_envelope() {
    let app = spawn_app().await;
    app.add_webhook(
        "68",
        "/cli",
        &["payment.card.success"],
        hookrelay::subscription::Format::Standard,
    )
    .await;

    let out = hookrelay(
        &app.prefix,
        &[
            "publish",
            "--type",
            "payment.card.success",
            "--account",
            "68",
            "--data",
            r#"{"amount":"10.00"}"#,
            "--json",
        ],
        &[],
    );

    let envelope = stdout_json(&out);
    let hit = app
        .receiver
        .wait_for("/cli", 1, Duration::from_secs(10))
        .await
        .remove(0);
    assert_eq!(hit.headers["webhook-id"], envelope["id"].as_str().unwrap());
    assert!(std::str::from_utf8(&hit.body)
        .unwrap()
        .contains(r#""data":{"amount":"10.00"}"#));

    let bad = hookrelay(
        &app.prefix,
        &["publish", "--type", "payment.cash", "--account", "68"],
        &[],
    );
    assert!(!bad.status.success());
    app.cleanup().await;
}

#[test]
fn the_cli_refuses_webhook_urls_inside_the_network_like_the_api_with_exit_65() {
    let prefix = test_prefix();
    assert!(hookrelay(&prefix, &["store", "init"], &[]).status.success());
    let private = [("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "false")];
    // A public IP literal needs no resolver, so the machine's lack of DNS does not matter.
    let created = stdout_json(&hookrelay(
        &prefix,
        &[
            "webhooks",
            "add",
            "--account",
            "g1",
            "--url",
            "https://93.184.215.14/hook",
            "--events",
            "*",
            "--json",
        ],
        &private,
    ));
    let id = created["id"].as_str().unwrap().to_owned();

    for url in [
        "https://localhost/hook",
        "https://127.1/hook",
        "https://[::1]/hook",
        "https://[::ffff:7f00:1]/hook",
        "https://0/hook",
        "https://169.254.169.254/latest",
    ] {
        let add = hookrelay(
            &prefix,
            &[
                "webhooks",
                "add",
                "--account",
                "g1",
                "--url",
                url,
                "--events",
                "*",
            ],
            &private,
        );
        let update = hookrelay(
            &prefix,
            &["webhooks", "update", &id, "--url", url],
            &private,
        );

        for out in [add, update] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(65), "{url}: {stderr}");
            assert!(
                stderr.contains("must point to the internet"),
                "{url}: {stderr}"
            );
        }
    }
    let listed = stdout_json(&hookrelay(
        &prefix,
        &["webhooks", "list", "--account", "g1", "--json"],
        &private,
    ));
    let urls: Vec<&str> = listed["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, ["https://93.184.215.14/hook"]);
    hookrelay(&prefix, &["webhooks", "remove", &id], &[]);
}
