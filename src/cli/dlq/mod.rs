//! `hookrelay dlq list|show|replay|purge`: the dead-letter queues for on-call (DESIGN §4, §6).

use super::exit::{Interrupted, NotDeclared, Unavailable, Usage};
use super::progress::Reporter;
use crate::config::Settings;
use crate::dlq::replay::ReplayOptions;
use crate::dlq::{
    Control, DeadLetter, Dlq, DlqError, DlqQueue, Filter, Outcome, ReplayItem, Selection, Summary,
};
use crate::subscription::store::Store;
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::SecondsFormat;
use clap::{Args, Subcommand};
use std::io::{BufWriter, IsTerminal, Write};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// List dead letters in queue order, streamed as they are read; nothing is removed or
    /// reordered.
    #[command(
        after_help = "Example:\n  hookrelay dlq list --account 68 --reason exhausted --older-than 1h --json > letters.json"
    )]
    List(ListArgs),
    /// Show one dead letter in full, with its event.
    #[command(after_help = "Example:\n  hookrelay dlq show dl_Xb3kq9TzP0aLr2mN8vWy")]
    Show(ShowArgs),
    /// Send dead letters again: a delivery for a fresh round of attempts, a poison event back to
    /// the events exchange. Each is removed once the broker confirmed it. Ctrl-C stops it with
    /// nothing lost and nothing sent twice; run it again to continue.
    #[command(
        after_help = "Example:\n  hookrelay dlq replay --account 68 --webhook wh_2b1f9c3e --rate 50/s\n  hookrelay dlq replay dl_Xb3kq9TzP0aLr2mN8vWy --dry-run"
    )]
    Replay(ReplayArgs),
    /// Remove dead letters for good.
    #[command(after_help = "Example:\n  hookrelay dlq purge --reason webhook_deleted --yes")]
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
    /// At most this many republishes per second: N, N/s or N/m (default: as fast as the
    /// broker confirms).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
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

/// A `--rate` value: `N`, `N/s` or `N/m` (letters per second or per minute).
fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, per) = match text.split_once('/') {
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some((_, unit)) => return Err(format!("unit {unit:?}: write N/s or N/m")),
        None => (text, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(n / per),
        _ => Err(format!("{text:?} is not a rate like 100/s")),
    }
}

pub async fn run(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
    if let DlqAction::Purge(a) = &action {
        if !a.yes && !a.dry_run {
            return Err(Usage(
                "purge removes dead letters for good: add --yes to confirm (or --dry-run)".into(),
            )
            .into());
        }
    }
    let dlq = Dlq::connect(settings)
        .await
        .map_err(Unavailable::rabbitmq)?;
    let shutdown = crate::shutdown::on_signal();
    let result = run_with(settings, &dlq, action, &shutdown).await;
    dlq.close().await;
    result.map_err(not_declared)
}

/// A dead-letter queue that does not exist is a set-up step left out (exit 78, one line), not a
/// broker that cannot be reached.
fn not_declared(err: anyhow::Error) -> anyhow::Error {
    let missing = err.chain().find_map(|cause| match cause.downcast_ref() {
        Some(DlqError::NoQueue(queue, e)) if crate::broker::is_not_found(e) => Some(queue.clone()),
        _ => None,
    });
    match missing {
        Some(queue) => NotDeclared(format!("queue {queue}")).into(),
        None => err,
    }
}

async fn run_with(
    settings: &Settings,
    dlq: &Dlq,
    action: DlqAction,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    match action {
        DlqAction::List(a) => list(dlq, a, shutdown).await,
        DlqAction::Show(a) => {
            let letter = dlq.show(&a.id, a.queue).await?;
            if a.json {
                super::print_json(&full_json(&letter));
            } else {
                print_full(&letter);
            }
            Ok(())
        }
        DlqAction::Replay(a) => replay(settings, dlq, a, shutdown).await,
        DlqAction::Purge(a) => purge(dlq, a, shutdown).await,
    }
}

/// Streams the letters to stdout as they are read: one JSON array written element by element
/// (still one document, closed also when interrupted), or table rows under a header.
async fn list(dlq: &Dlq, a: ListArgs, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::io::stdout());
    // A bar on the terminal the rows are printed on would garble them.
    let reporter = Reporter::new("listed", !std::io::stdout().is_terminal());
    let control = Control {
        shutdown,
        progress: &reporter,
    };
    let columns = Columns::of(a.queue);
    let mut first = true;
    // The header (or the `[`) waits for the first row or the end of a listing that worked, so
    // that a queue that does not exist prints its one error line and nothing else.
    let summary = dlq
        .list_each(
            a.queue,
            &a.filter.into_filter(),
            a.limit,
            control,
            |letter| {
                if a.json {
                    out.write_all(if first { b"[\n  " } else { b",\n  " })?;
                    serde_json::to_writer(&mut out, &letter)?;
                } else {
                    if first {
                        columns.header(&mut out)?;
                    }
                    columns.row(&mut out, &letter)?;
                }
                first = false;
                Ok(())
            },
        )
        .await;
    reporter.finish();
    let summary = summary.context("listing")?;
    if a.json {
        out.write_all(if first { b"[]\n" } else { b"\n]\n" })?;
    } else {
        if first {
            columns.header(&mut out)?;
        }
        writeln!(
            out,
            "{} dead letters in {} (read {} of {})",
            summary.selected,
            dlq.queue_name(a.queue),
            summary.read(),
            summary.passes.iter().map(|p| p.depth).sum::<u32>()
        )?;
    }
    out.flush()?;
    stopped_early(
        &summary,
        &format!("listed {} dead letters", summary.selected),
    )
}

/// Turns an interruption into exit 130 after the summary was printed; warns of a stall.
fn stopped_early(summary: &Summary, done: &str) -> anyhow::Result<()> {
    if summary.stalled {
        eprintln!(
            "hookrelay: warning: part of the queue is held by another consumer (another dlq \
             command?) and was not read"
        );
    }
    if summary.interrupted {
        return Err(Interrupted(format!(
            "{done} after reading {} letters; everything else is in the queue, in order",
            summary.read()
        ))
        .into());
    }
    Ok(())
}

async fn replay(
    settings: &Settings,
    dlq: &Dlq,
    a: ReplayArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::from_settings(&settings.redis)
        .await
        .map_err(Unavailable::redis)?;
    let options = ReplayOptions {
        dry_run: a.dry_run,
        force: a.force,
        rate: a.rate,
    };
    let reporter = Reporter::new(if a.dry_run { "would replay" } else { "settled" }, true);
    let control = Control {
        shutdown,
        progress: &reporter,
    };
    let mut out = BufWriter::new(std::io::stdout());
    let mut first = true;
    let mut written = Ok(());
    if a.json {
        write!(out, "{{\"dry_run\": {}, \"items\": [", a.dry_run)?;
    }
    let summary = dlq
        .replay_each(
            &a.select.into_selection(),
            options,
            &store,
            control,
            |item| {
                if written.is_err() {
                    return;
                }
                written = if a.json {
                    write_item(&mut out, &item, first)
                } else {
                    if !matches!(item.outcome, Outcome::Replayed) {
                        reporter.println(&replay_line(&item, a.dry_run));
                    }
                    Ok(())
                };
                first = false;
            },
        )
        .await;
    reporter.finish();
    let summary = summary.context("replaying")?;
    written?;
    let c = summary.counts;
    if a.json {
        write!(out, "\n], \"summary\": ")?;
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out, "}}")?;
    } else {
        writeln!(
            out,
            "{} {} of {} dead letters selected ({} duplicates removed, {} refused, {} failed, {} kept)",
            if a.dry_run { "would replay" } else { "replayed" },
            c.replayed,
            summary.summary.selected,
            c.duplicate,
            c.refused,
            c.failed,
            c.skipped
        )?;
    }
    out.flush()?;
    stopped_early(
        &summary.summary,
        &format!(
            "replayed {} dead letters (each removed once its republish was confirmed)",
            c.replayed
        ),
    )?;
    if c.left() > 0 {
        bail!(
            "{} of {} dead letters were not replayed (see above; --force replays to deleted or disabled webhooks)",
            c.left(),
            c.total()
        );
    }
    Ok(())
}

fn write_item(out: &mut impl Write, item: &ReplayItem, first: bool) -> std::io::Result<()> {
    out.write_all(if first { b"\n  " } else { b",\n  " })?;
    serde_json::to_writer(&mut *out, &item.to_json())?;
    Ok(())
}

async fn purge(dlq: &Dlq, a: PurgeArgs, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let reporter = Reporter::new(if a.dry_run { "would purge" } else { "purged" }, true);
    let control = Control {
        shutdown,
        progress: &reporter,
    };
    let verb = if a.dry_run { "would purge" } else { "purged" };
    let by_id = !a.select.ids.is_empty();
    let mut out = BufWriter::new(std::io::stdout());
    let mut first = true;
    let mut written: std::io::Result<()> = Ok(());
    if a.json {
        write!(out, "{{\"dry_run\": {}, \"purged\": [", a.dry_run)?;
    }
    let summary = dlq
        .purge_each(&a.select.into_selection(), a.dry_run, control, |l| {
            if written.is_err() {
                return;
            }
            written = if a.json {
                out.write_all(if first { b"\n  " } else { b",\n  " })
                    .and_then(|()| serde_json::to_writer(&mut out, &l).map_err(Into::into))
            } else if by_id {
                writeln!(out, "{verb} {} ({}, {})", l.id, l.queue.as_str(), l.reason)
            } else {
                Ok(())
            };
            first = false;
        })
        .await;
    reporter.finish();
    let summary = summary.context("purging")?;
    written?;
    if a.json {
        write!(out, "\n], \"summary\": ")?;
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out, "}}")?;
    } else {
        writeln!(out, "{verb} {} dead letters", summary.selected)?;
    }
    out.flush()?;
    stopped_early(
        &summary,
        &format!("{verb} {} dead letters", summary.selected),
    )
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".to_owned())
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("-".to_owned(), |t| {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    })
}

/// The columns of a streamed listing: fixed widths, so rows can be printed as they are read
/// (a table crate would need every row first). Longer values widen their row, not the table.
struct Columns {
    queue: DlqQueue,
}

impl Columns {
    fn of(queue: DlqQueue) -> Columns {
        Columns { queue }
    }

    fn spec(&self) -> &'static [(&'static str, usize)] {
        match self.queue {
            DlqQueue::Deliveries => &[
                ("ID", 23),
                ("REASON", 16),
                ("TYPE", 32),
                ("ACCOUNT", 12),
                ("WEBHOOK", 27),
                ("ATTEMPTS", 8),
                ("STATUS", 6),
                ("LAST ATTEMPT", 20),
            ],
            DlqQueue::Events => &[
                ("ID", 27),
                ("REASON", 20),
                ("ROUTING KEY", 32),
                ("EVENT", 24),
                ("ACCOUNT", 12),
                ("DEAD-LETTERED", 20),
            ],
        }
    }

    fn cells(&self, l: &DeadLetter) -> Vec<String> {
        match self.queue {
            DlqQueue::Deliveries => vec![
                l.id.clone(),
                l.reason.clone(),
                or_dash(&l.event_type),
                or_dash(&l.account_id),
                or_dash(&l.webhook_id),
                l.attempts.map_or("-".into(), |n| n.to_string()),
                l.last_status.map_or("-".into(), |s| s.to_string()),
                time(l.last_attempt_at.or(l.dead_lettered_at)),
            ],
            DlqQueue::Events => vec![
                l.id.clone(),
                l.reason.clone(),
                or_dash(&l.routing_key),
                or_dash(&l.event_id),
                or_dash(&l.account_id),
                time(l.dead_lettered_at),
            ],
        }
    }

    fn line(&self, out: &mut impl Write, cells: &[String]) -> std::io::Result<()> {
        let text: Vec<String> = cells
            .iter()
            .zip(self.spec())
            .map(|(cell, (_, w))| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    }

    fn header(&self, out: &mut impl Write) -> std::io::Result<()> {
        let names: Vec<String> = self.spec().iter().map(|(n, _)| n.to_string()).collect();
        self.line(out, &names)
    }

    fn row(&self, out: &mut impl Write, letter: &DeadLetter) -> std::io::Result<()> {
        self.line(out, &self.cells(letter))
    }
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

/// A line for a letter that was not simply replayed.
fn replay_line(item: &ReplayItem, dry_run: bool) -> String {
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
        Outcome::Replayed if dry_run => format!("would replay {what}"),
        Outcome::Replayed => format!("replayed {what}"),
        Outcome::Duplicate { of } if dry_run => format!("would remove {what}: a duplicate of {of}"),
        Outcome::Duplicate { of } => format!("removed {what}: a duplicate of {of}"),
        Outcome::Refused(r) => format!("refused {what}: {}", r.as_str()),
        Outcome::Failed(e) => format!("failed {what}: {e}"),
        Outcome::Skipped { of } => format!("kept {what}: {of} could not be replayed"),
    }
}
