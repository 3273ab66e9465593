//! `hookrelay webhooks add|list|show|update|remove|rotate-secret`.

use crate::config::Settings;
use crate::event::AccountId;
use crate::subscription::store::{NewWebhook, Store, WebhookPatch};
use crate::subscription::{EventFilter, Format, RateLimit, Webhook, WebhookId, WebhookUrl};
use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum WebhooksAction {
    /// Add a webhook; prints it with its secret (shown only here and on rotation).
    Add(AddArgs),
    /// List an account's webhooks.
    List {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        json: bool,
    },
    /// Show one webhook (without its secret).
    Show(IdArgs),
    /// Change a webhook's url, events, format, enabled, description or rate limit.
    Update(UpdateArgs),
    /// Delete a webhook.
    Remove(IdArgs),
    /// Issue a new secret; the old one keeps signing for delivery.rotation_grace.
    RotateSecret(IdArgs),
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

fn parse_url(text: &str, settings: &Settings) -> anyhow::Result<WebhookUrl> {
    WebhookUrl::parse(text, settings.delivery.allow_http).context("--url")
}

pub async fn run(settings: &Settings, action: WebhooksAction) -> anyhow::Result<()> {
    let store = Store::from_settings(&settings.redis)
        .await
        .context("connecting to Redis (redis.url)")?;
    match action {
        WebhooksAction::Add(a) => {
            let new = NewWebhook {
                url: parse_url(&a.url, settings)?,
                events: parse_events(&a.events)?,
                format: a.format,
                description: a.description,
                rate_limit: a.rate_limit,
            };
            let webhook = store.create(&a.account, new).await?;
            print_one(&webhook, a.json, true);
        }
        WebhooksAction::List { account, json } => {
            let snapshot = store.snapshot(&account).await?;
            if json {
                let list: Vec<_> = snapshot.webhooks.iter().map(|w| w.to_json(false)).collect();
                super::print_json(&serde_json::json!({ "webhooks": list }));
            } else if snapshot.webhooks.is_empty() {
                println!("account {account} has no webhooks");
            } else {
                for w in &snapshot.webhooks {
                    print_line(w);
                }
            }
        }
        WebhooksAction::Show(a) => print_one(&store.find(&a.id).await?, a.json, false),
        WebhooksAction::Update(a) => {
            let account = store.account_of(&a.id).await?;
            let patch = WebhookPatch {
                url: a
                    .url
                    .as_deref()
                    .map(|u| parse_url(u, settings))
                    .transpose()?,
                events: a.events.as_deref().map(parse_events).transpose()?,
                format: a.format,
                enabled: a.enabled,
                description: a.description,
                rate_limit: a.rate_limit.map(|l| l.0),
            };
            let webhook = store.update(&account, &a.id, patch).await?;
            print_one(&webhook, a.json, false);
        }
        WebhooksAction::Remove(a) => {
            let account = store.account_of(&a.id).await?;
            store.delete(&account, &a.id).await?;
            if a.json {
                super::print_json(&serde_json::json!({"id": a.id, "deleted": true}));
            } else {
                println!("removed {}", a.id);
            }
        }
        WebhooksAction::RotateSecret(a) => {
            let account = store.account_of(&a.id).await?;
            let webhook = store
                .rotate_secret(&account, &a.id, settings.delivery.rotation_grace)
                .await?;
            print_one(&webhook, a.json, true);
        }
    }
    Ok(())
}

fn print_one(w: &Webhook, json: bool, with_secret: bool) {
    if json {
        super::print_json(&w.to_json(with_secret));
        return;
    }
    print_line(w);
    if with_secret {
        println!("secret: {}", w.secret.expose());
    }
}

fn print_line(w: &Webhook) {
    let state = match (&w.enabled, &w.disabled_reason) {
        (true, _) => "enabled".to_owned(),
        (false, Some(reason)) => format!("disabled ({reason})"),
        (false, None) => "disabled".to_owned(),
    };
    let limit = w
        .rate_limit
        .map(|r| format!("  {}/s", r.per_second()))
        .unwrap_or_default();
    println!(
        "{}  {}  [{}]  {:?}  {}{limit}",
        w.id,
        w.url.as_str(),
        w.events.labels().join(","),
        w.format,
        state
    );
}
