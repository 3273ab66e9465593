//! `hookrelay dlq list|show|replay|purge`: the dead-letter queues for on-call (DESIGN §4, §6).

use crate::config::Settings;
use crate::dlq::replay::ReplayOptions;
use crate::dlq::{DeadLetter, Dlq, DlqQueue, Filter, Outcome, ReplayReport, Selection};
use crate::subscription::store::Store;
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::SecondsFormat;
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// List dead letters in queue order; nothing is removed or reordered.
    List(ListArgs),
    /// Show one dead letter in full, with its event.
    Show(ShowArgs),
    /// Send dead letters again: a delivery for a fresh round of attempts, a poison event back to
    /// the events exchange. Each is removed once the broker confirmed it.
    Replay(ReplayArgs),
    /// Remove dead letters for good.
    Purge(PurgeArgs),
}

#[derive(Args, Debug)]
pub struct FilterArgs {
    #[arg(long)]
    account: Option<String>,
    /// Event type label.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Webhook id (wh_...).
    #[arg(long)]
    webhook: Option<String>,
    /// exhausted, gone, target_refused, webhook_deleted, webhook_disabled, delivery_limit, or a
    /// poison reason (invalid_json, missing_field, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Only letters whose last attempt (or dead-lettering) is older than this, e.g. 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
}

impl FilterArgs {
    fn into_filter(self) -> Filter {
        Filter {
            account: self.account,
            event_type: self.event_type,
            webhook: self.webhook,
            reason: self.reason,
            older_than: self.older_than,
        }
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// deliveries or events.
    #[arg(long, default_value = "deliveries")]
    queue: DlqQueue,
    #[command(flatten)]
    filter: FilterArgs,
    /// At most this many letters (the first in queue order).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    id: String,
    /// Look only in this queue (default: both).
    #[arg(long)]
    queue: Option<DlqQueue>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct SelectArgs {
    /// Dead letter ids (as `dlq list` shows them).
    ids: Vec<String>,
    /// Every letter of the queue (that matches the filters).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// deliveries or events (default: both for ids, else deliveries).
    #[arg(long)]
    queue: Option<DlqQueue>,
    #[command(flatten)]
    filter: FilterArgs,
}

impl SelectArgs {
    fn into_selection(self) -> Selection {
        Selection {
            ids: self.ids,
            all: self.all,
            filter: self.filter.into_filter(),
            queue: self.queue,
        }
    }
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Say what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay deliveries even when their webhook is deleted or disabled.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PurgeArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Confirm: purged letters are gone for good.
    #[arg(long)]
    yes: bool,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
    if let DlqAction::Purge(a) = &action {
        if !a.yes && !a.dry_run {
            bail!("purge removes dead letters for good: add --yes to confirm (or --dry-run)");
        }
    }
    let dlq = Dlq::connect(settings)
        .await
        .context("connecting to RabbitMQ (amqp.url / amqp.urls)")?;
    let result = run_with(settings, &dlq, action).await;
    dlq.close().await;
    result
}

async fn run_with(settings: &Settings, dlq: &Dlq, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List(a) => {
            let letters = dlq
                .list(a.queue, &a.filter.into_filter(), a.limit)
                .await
                .context("listing")?;
            if a.json {
                super::print_json(&letters);
            } else {
                print_table(a.queue, &dlq.queue_name(a.queue), &letters);
            }
        }
        DlqAction::Show(a) => {
            let letter = dlq.show(&a.id, a.queue).await?;
            if a.json {
                super::print_json(&full_json(&letter));
            } else {
                print_full(&letter);
            }
        }
        DlqAction::Replay(a) => {
            let store = Store::from_settings(&settings.redis)
                .await
                .context("connecting to Redis (redis.url)")?;
            let options = ReplayOptions {
                dry_run: a.dry_run,
                force: a.force,
            };
            let report = dlq
                .replay(&a.select.into_selection(), options, &store)
                .await
                .context("replaying")?;
            if a.json {
                super::print_json(&report.to_json());
            } else {
                print_replay(&report);
            }
            let left = report.items.len() - report.count("replayed") - report.count("duplicate");
            if left > 0 {
                bail!(
                    "{left} of {} dead letters were not replayed (see above; --force replays to deleted or disabled webhooks)",
                    report.items.len()
                );
            }
        }
        DlqAction::Purge(a) => {
            let report = dlq
                .purge(&a.select.into_selection(), a.dry_run)
                .await
                .context("purging")?;
            if a.json {
                super::print_json(&report);
            } else {
                let verb = if report.dry_run {
                    "would purge"
                } else {
                    "purged"
                };
                for l in &report.purged {
                    println!("{verb} {} ({}, {})", l.id, l.queue.as_str(), l.reason);
                }
                println!("{verb} {} dead letters", report.purged.len());
            }
        }
    }
    Ok(())
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".to_owned())
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("-".to_owned(), |t| {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    })
}

fn print_table(queue: DlqQueue, name: &str, letters: &[DeadLetter]) {
    if letters.is_empty() {
        println!("no dead letters in {name}");
        return;
    }
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(letters.len() + 1);
    match queue {
        DlqQueue::Deliveries => {
            rows.push(
                [
                    "ID",
                    "REASON",
                    "TYPE",
                    "ACCOUNT",
                    "WEBHOOK",
                    "ATTEMPTS",
                    "STATUS",
                    "LAST ATTEMPT",
                ]
                .map(String::from)
                .to_vec(),
            );
            rows.extend(letters.iter().map(|l| {
                vec![
                    l.id.clone(),
                    l.reason.clone(),
                    or_dash(&l.event_type),
                    or_dash(&l.account_id),
                    or_dash(&l.webhook_id),
                    l.attempts.map_or("-".into(), |n| n.to_string()),
                    l.last_status.map_or("-".into(), |s| s.to_string()),
                    time(l.last_attempt_at.or(l.dead_lettered_at)),
                ]
            }));
        }
        DlqQueue::Events => {
            rows.push(
                [
                    "ID",
                    "REASON",
                    "ROUTING KEY",
                    "EVENT",
                    "ACCOUNT",
                    "DEAD-LETTERED",
                ]
                .map(String::from)
                .to_vec(),
            );
            rows.extend(letters.iter().map(|l| {
                vec![
                    l.id.clone(),
                    l.reason.clone(),
                    or_dash(&l.routing_key),
                    or_dash(&l.event_id),
                    or_dash(&l.account_id),
                    time(l.dead_lettered_at),
                ]
            }));
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!("{} dead letters in {name}", letters.len());
}

/// The listing's object plus the event (deliveries) or the body read as JSON (events).
fn full_json(letter: &DeadLetter) -> serde_json::Value {
    let mut v = serde_json::to_value(letter).expect("a letter serializes");
    let event = match (&letter.event, &letter.raw_body_base64) {
        (Some(event), _) => serde_json::from_str(event.get()).ok(),
        (None, Some(raw)) => B64
            .decode(raw)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        (None, None) => None,
    };
    v["event"] = event.unwrap_or(serde_json::Value::Null);
    v
}

fn print_full(letter: &DeadLetter) {
    let v = full_json(letter);
    let serde_json::Value::Object(fields) = &v else {
        unreachable!("a letter serializes to an object")
    };
    for (key, value) in fields {
        if key == "event" || key == "raw_body_base64" {
            continue;
        }
        let text = match value {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{key:<17} {text}");
    }
    if let Some(raw) = &letter.raw_body_base64 {
        let body = B64.decode(raw).unwrap_or_default();
        match std::str::from_utf8(&body) {
            Ok(text) => println!("body:\n{text}"),
            Err(_) => println!("body (base64):\n{raw}"),
        }
    }
    if !v["event"].is_null() {
        println!(
            "event:\n{}",
            serde_json::to_string_pretty(&v["event"]).expect("JSON values serialize")
        );
    }
}

fn print_replay(report: &ReplayReport) {
    let would = |done: &str, planned: &str| {
        if report.dry_run {
            planned.to_owned()
        } else {
            done.to_owned()
        }
    };
    for item in &report.items {
        let l = &item.letter;
        let what = match l.queue {
            DlqQueue::Deliveries => format!(
                "{} ({} → {})",
                l.id,
                or_dash(&l.event_id),
                or_dash(&l.webhook_id)
            ),
            DlqQueue::Events => format!("{} (routing key {})", l.id, or_dash(&l.routing_key)),
        };
        match &item.outcome {
            Outcome::Replayed => println!("{} {what}", would("replayed", "would replay")),
            Outcome::Duplicate { of } => println!(
                "{} {what}: a duplicate of {of}",
                would("removed", "would remove")
            ),
            Outcome::Refused(r) => println!("refused {what}: {}", r.as_str()),
            Outcome::Failed(e) => println!("failed {what}: {e}"),
            Outcome::Skipped { of } => println!("kept {what}: {of} could not be replayed"),
        }
    }
    println!(
        "{} {} of {} dead letters",
        would("replayed", "would replay"),
        report.count("replayed"),
        report.items.len()
    );
}
