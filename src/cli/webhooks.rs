//! `hookrelay webhooks add|list|show|update|remove|rotate-secret|status` (`export|import` are in
//! `backup`).

use super::exit::Unavailable;
use crate::config::Settings;
use crate::dlq::status::{account_status, AccountStatus, StatusOptions, WebhookStatus};
use crate::dlq::Dlq;
use crate::event::AccountId;
use crate::subscription::store::{NewWebhook, Store, WebhookPatch};
use crate::subscription::{EventFilter, Format, RateLimit, Webhook, WebhookId, WebhookUrl};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum WebhooksAction {
    /// Add a webhook; prints it with its secret (shown only here and on rotation).
    #[command(
        after_help = "Example:\n  hookrelay webhooks add --account 68 --url https://shop.example/hooks --events 'payment.card.success,payment.card.failed'"
    )]
    Add(AddArgs),
    /// List an account's webhooks.
    #[command(after_help = "Example:\n  hookrelay webhooks list --account 68")]
    List {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        json: bool,
    },
    /// Show one webhook (without its secret).
    #[command(after_help = "Example:\n  hookrelay webhooks show wh_2b1f9c3e --json")]
    Show(IdArgs),
    /// Change a webhook's url, events, format, enabled, description or rate limit.
    #[command(
        after_help = "Example:\n  hookrelay webhooks update wh_2b1f9c3e --enabled true --rate-limit 50"
    )]
    Update(UpdateArgs),
    /// Delete a webhook.
    #[command(after_help = "Example:\n  hookrelay webhooks remove wh_2b1f9c3e")]
    Remove(IdArgs),
    /// Issue a new secret; the old one keeps signing for delivery.rotation_grace.
    #[command(after_help = "Example:\n  hookrelay webhooks rotate-secret wh_2b1f9c3e")]
    RotateSecret(IdArgs),
    /// Why is an account failing: each webhook's state, last attempts, success rate over the
    /// attempt log, and dead letters by reason (from a bounded pass over the deliveries DLQ).
    #[command(after_help = "Example:\n  hookrelay webhooks status --account 68 --json")]
    Status(StatusArgs),
    /// export and import (`super::backup`).
    #[command(flatten)]
    Backup(super::backup::BackupAction),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    account: AccountId,
    /// Last attempts shown per webhook.
    #[arg(long, default_value_t = 5)]
    last: usize,
    /// Read at most this many dead letters to count them (the output says when it was cut).
    #[arg(long, default_value_t = 500_000)]
    scan_limit: u32,
    /// Read dead letters for at most this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    scan_time: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    #[arg(long)]
    account: AccountId,
    #[arg(long)]
    url: String,
    /// Comma-separated event types, or '*' for all.
    #[arg(long)]
    events: String,
    #[arg(long, default_value = "standard")]
    format: Format,
    #[arg(long, default_value = "")]
    description: String,
    /// Deliveries per second across all workers, 1 to 10000 (default: no limit).
    #[arg(long, value_name = "N")]
    rate_limit: Option<RateLimit>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    id: WebhookId,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    id: WebhookId,
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    events: Option<String>,
    #[arg(long)]
    format: Option<Format>,
    #[arg(long)]
    enabled: Option<bool>,
    #[arg(long)]
    description: Option<String>,
    /// Deliveries per second, 1 to 10000, or `none` to remove the limit.
    #[arg(long, value_name = "N|none", value_parser = parse_rate_limit)]
    rate_limit: Option<Limit>,
    #[arg(long)]
    json: bool,
}

/// `--rate-limit` of `update`: a limit, or none.
#[derive(Clone, Debug)]
struct Limit(Option<RateLimit>);

fn parse_rate_limit(text: &str) -> Result<Limit, String> {
    match text {
        "none" => Ok(Limit(None)),
        n => n.parse().map(|r| Limit(Some(r))).map_err(|e| e.to_string()),
    }
}

fn parse_events(text: &str) -> anyhow::Result<EventFilter> {
    let labels: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    EventFilter::parse(&labels).context("--events")
}

/// The API's rule, SSRF guard included: what the API refuses, the CLI refuses (exit 65).
async fn parse_url(text: &str, settings: &Settings) -> anyhow::Result<WebhookUrl> {
    crate::api::webhooks::registrable_url(text, &settings.delivery)
        .await
        .context("--url")
}

pub async fn run(settings: &Settings, action: WebhooksAction) -> anyhow::Result<()> {
    let store = Store::from_settings(&settings.redis)
        .await
        .map_err(Unavailable::redis)?;
    if action.writes() {
        // No marker, no writes (exit 78): a lost store must not fill up anew unnoticed.
        store.require_marker().await?;
    }
    match action {
        WebhooksAction::Add(a) => add(settings, &store, a).await,
        WebhooksAction::List { account, json } => list(&store, &account, json).await,
        WebhooksAction::Status(a) => status(settings, &store, a).await,
        WebhooksAction::Backup(a) => super::backup::run(settings, &store, a).await,
        WebhooksAction::Show(a) => {
            print_one(&store.find(&a.id).await?, a.json, false);
            Ok(())
        }
        WebhooksAction::Update(a) => update(settings, &store, a).await,
        WebhooksAction::Remove(a) => remove(&store, a).await,
        WebhooksAction::RotateSecret(a) => rotate_secret(settings, &store, a).await,
    }
}

impl WebhooksAction {
    /// The actions that write to the store.
    fn writes(&self) -> bool {
        matches!(
            self,
            Self::Add(_) | Self::Update(_) | Self::Remove(_) | Self::RotateSecret(_)
        )
    }
}

async fn add(settings: &Settings, store: &Store, a: AddArgs) -> anyhow::Result<()> {
    let new = NewWebhook {
        url: parse_url(&a.url, settings).await?,
        events: parse_events(&a.events)?,
        format: a.format,
        description: a.description,
        rate_limit: a.rate_limit,
    };
    let webhook = store.create(&a.account, new).await?;
    print_one(&webhook, a.json, true);
    Ok(())
}

async fn list(store: &Store, account: &AccountId, json: bool) -> anyhow::Result<()> {
    let snapshot = store.snapshot(account).await?;
    if json {
        let list: Vec<_> = snapshot.webhooks.iter().map(|w| w.to_json(false)).collect();
        super::print_json(&serde_json::json!({ "webhooks": list }));
    } else if snapshot.webhooks.is_empty() {
        println!("account {account} has no webhooks");
    } else {
        print_table(&snapshot.webhooks);
    }
    Ok(())
}

async fn update(settings: &Settings, store: &Store, a: UpdateArgs) -> anyhow::Result<()> {
    let account = store.account_of(&a.id).await?;
    let patch = WebhookPatch {
        url: match a.url.as_deref() {
            Some(url) => Some(parse_url(url, settings).await?),
            None => None,
        },
        events: a.events.as_deref().map(parse_events).transpose()?,
        format: a.format,
        enabled: a.enabled,
        description: a.description,
        rate_limit: a.rate_limit.map(|l| l.0),
    };
    let webhook = store.update(&account, &a.id, patch).await?;
    print_one(&webhook, a.json, false);
    Ok(())
}

async fn remove(store: &Store, a: IdArgs) -> anyhow::Result<()> {
    let account = store.account_of(&a.id).await?;
    store.delete(&account, &a.id).await?;
    if a.json {
        super::print_json(&serde_json::json!({"id": a.id, "deleted": true}));
    } else {
        println!("removed {}", a.id);
    }
    Ok(())
}

async fn rotate_secret(settings: &Settings, store: &Store, a: IdArgs) -> anyhow::Result<()> {
    let account = store.account_of(&a.id).await?;
    let webhook = store
        .rotate_secret(&account, &a.id, settings.delivery.rotation_grace)
        .await?;
    print_one(&webhook, a.json, true);
    Ok(())
}

fn print_one(w: &Webhook, json: bool, with_secret: bool) {
    if json {
        super::print_json(&w.to_json(with_secret));
        return;
    }
    print_table(std::slice::from_ref(w));
    if with_secret {
        println!("secret: {}", w.secret.expose());
    }
}

/// The format as `--format` spells it (`standard`, `inplayer`).
fn format_name(format: Format) -> &'static str {
    match format {
        Format::Standard => "standard",
        Format::Inplayer => "inplayer",
    }
}

fn state(enabled: bool, reason: &Option<String>) -> String {
    match (enabled, reason) {
        (true, _) => "enabled".to_owned(),
        (false, Some(reason)) => format!("disabled ({reason})"),
        (false, None) => "disabled".to_owned(),
    }
}

fn print_table(webhooks: &[Webhook]) {
    let mut table = super::table(&["ID", "URL", "EVENTS", "FORMAT", "RATE LIMIT", "STATE"]);
    for w in webhooks {
        table.add_row(vec![
            w.id.to_string(),
            w.url.as_str().to_owned(),
            w.events.labels().join(","),
            format_name(w.format).to_owned(),
            w.rate_limit
                .map(|r| format!("{}/s", r.per_second()))
                .unwrap_or_else(|| "-".to_owned()),
            state(w.enabled, &w.disabled_reason),
        ]);
    }
    println!("{table}");
}

async fn status(settings: &Settings, store: &Store, a: StatusArgs) -> anyhow::Result<()> {
    let options = StatusOptions {
        last: a.last,
        scan_limit: a.scan_limit,
        scan_time: a.scan_time,
    };
    // Without the broker the webhooks and attempts are still worth seeing: say so, go on.
    let dlq = Dlq::connect(settings).await;
    let reachable = dlq
        .as_ref()
        .map_err(|e| format!("cannot reach RabbitMQ (amqp.url): {e}"));
    let result = account_status(store, reachable, &a.account, options).await;
    if let Ok(dlq) = dlq {
        dlq.close().await;
    }
    let status = result.context("reading the account's status")?;
    if a.json {
        super::print_json(&status);
    } else {
        print_status(&status);
    }
    Ok(())
}

fn print_status(s: &AccountStatus) {
    if s.webhooks.is_empty() {
        println!("account {} has no webhooks", s.account_id);
    }
    for w in &s.webhooks {
        print_webhook_status(w);
        println!();
    }
    let deleted = &s.dead_letters_of_deleted_webhooks;
    if deleted.total > 0 {
        println!("dead letters of deleted webhooks: {}", deleted.total);
    }
    let pass = &s.dlq;
    match &pass.note {
        None => println!("dead letters counted over all {} in the queue", pass.read),
        Some(note) => println!(
            "dead letters counted over {} of {} in the queue: {note}",
            pass.read, pass.depth
        ),
    }
}

/// One webhook: its state, success rate, since when it fails, its dead letters, last attempts.
fn print_webhook_status(w: &WebhookStatus) {
    println!(
        "{}  {}  {}",
        w.id,
        w.url,
        state(w.enabled, &w.disabled_reason)
    );
    println!("  success rate: {}", success_rate(w));
    if let Some(since) = &w.failing_since {
        println!("  failing since: {since}");
    }
    if let Some(last) = &w.last_error {
        let n = w.consecutive_failures;
        println!("  last error: {last} ({n} failed attempts in a row)");
    }
    let reasons: Vec<String> = w
        .dead_letters
        .by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!(
        "  dead letters: {}{}",
        w.dead_letters.total,
        match reasons.is_empty() {
            true => String::new(),
            false => format!(" ({})", reasons.join(", ")),
        }
    );
    if !w.last_attempts.is_empty() {
        print_last_attempts(w);
    }
}

fn success_rate(w: &WebhookStatus) -> String {
    match w.success_rate.rate {
        Some(r) => format!(
            "{:.0}% ({} of the last {} attempts succeeded)",
            r * 100.0,
            w.success_rate.succeeded,
            w.success_rate.attempts
        ),
        None => "no attempts logged".to_owned(),
    }
}

fn print_last_attempts(w: &WebhookStatus) {
    let mut table = super::table(&["AT", "ATTEMPT", "EVENT", "TYPE", "STATUS", "ERROR"]);
    for t in &w.last_attempts {
        table.add_row(vec![
            t.at.clone(),
            t.attempt.to_string(),
            t.event_id.clone(),
            t.event_type.clone(),
            t.status.map_or("-".into(), |s| s.to_string()),
            t.error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    for line in table.to_string().lines() {
        println!("  {line}");
    }
}
