//! `hookrelay dlq purge` (DESIGN §4): it removes exactly the selected letters, and without `--yes`
//! nothing; `dlq list --json` prints one array for scripts.

use crate::helpers::dead_letters::*;
use crate::helpers::*;
use hookrelay::dlq::{DlqError, DlqQueue, Filter, Selection};
use hookrelay::event::EventType;
use hookrelay::messages::DeadReason;
use hookrelay::subscription::WebhookId;

#[tokio::test]
async fn purge_removes_exactly_the_selected_dead_letters() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let webhook = WebhookId::generate();
    let mut written = Vec::new();
    for i in 0..6 {
        let account = if i % 2 == 0 { "even" } else { "odd" };
        let e = event(account, EventType::SubscribeSuccess);
        written.push(
            writer
                .put(&app, &dead(&e, &webhook, DeadReason::Gone))
                .await,
        );
    }
    let dlq = dlq(&app).await;
    let remaining = || async {
        ids(&dlq
            .list(DlqQueue::Deliveries, &Filter::default(), None)
            .await
            .unwrap())
    };

    let by_id = dlq
        .purge(
            &Selection {
                ids: vec![written[1].clone(), written[4].clone()],
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(ids(&by_id.purged), [written[1].clone(), written[4].clone()]);
    assert_eq!(remaining().await, [0, 2, 3, 5].map(|i| written[i].clone()));

    let by_filter = dlq
        .purge(
            &Selection {
                filter: Filter {
                    account: Some("even".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&by_filter.purged),
        [written[0].clone(), written[2].clone()]
    );
    assert_eq!(remaining().await, [written[3].clone(), written[5].clone()]);

    let unknown = Selection {
        ids: vec![written[3].clone(), "dl_nosuchletter".into()],
        ..Default::default()
    };
    assert!(
        matches!(dlq.purge(&unknown, false).await, Err(DlqError::NotFound(missing)) if missing == ["dl_nosuchletter"])
    );
    assert!(matches!(
        dlq.purge(&Selection::default(), false).await,
        Err(DlqError::NothingSelected)
    ));
    assert_eq!(remaining().await, [written[3].clone(), written[5].clone()]);
    dlq.close().await;
    app.cleanup().await;
}

async fn hookrelay(app: &TestApp, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(args)
        .env("HOOKRELAY__AMQP__URL", AMQP_URL)
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__AMQP__PREFIX", &app.prefix)
        .env("HOOKRELAY__REDIS__PREFIX", &app.prefix)
        .output()
        .await
        .expect("hookrelay runs")
}

#[tokio::test]
async fn dlq_list_json_prints_one_array_and_purge_without_yes_changes_nothing() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let e = event("cli", EventType::CustomerPasswordUpdated);
    let id = writer
        .put(
            &app,
            &dead(&e, &WebhookId::generate(), DeadReason::TargetRefused),
        )
        .await;

    let listed = hookrelay(&app, &["dlq", "list", "--json"]).await;
    let refused = hookrelay(&app, &["dlq", "purge", "--all"]).await;
    let shown = hookrelay(&app, &["dlq", "show", &id, "--json"]).await;

    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let array: serde_json::Value =
        serde_json::from_slice(&listed.stdout).expect("one JSON document");
    let array = array.as_array().expect("an array");
    assert_eq!(array.len(), 1);
    let letter = &array[0];
    assert_eq!(letter["id"], id.as_str());
    assert_eq!(letter["queue"], "deliveries");
    assert_eq!(letter["event_id"], e.id.as_str());
    assert_eq!(letter["reason"], "target_refused");
    assert_eq!(letter["attempts"], 3);
    for key in [
        "webhook_id",
        "url",
        "event_type",
        "account_id",
        "first_attempt_at",
    ] {
        assert!(letter[key].is_string(), "{key}: {letter}");
    }
    for key in [
        "last_status",
        "last_error",
        "last_attempt_at",
        "raw_body_base64",
    ] {
        assert!(
            letter.get(key).is_some_and(|v| v.is_null()),
            "{key}: {letter}"
        );
    }

    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 1);

    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["event"]["id"], e.id.as_str());
    app.cleanup().await;
}
