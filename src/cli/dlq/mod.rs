//! `hookrelay dlq list|show|replay|purge`: the dead-letter queues for on-call (docs/design.md
//! §4, §6). This file runs the commands; [`args`] is what clap parses, [`render`] how letters
//! are shown.

mod args;
mod render;

pub use args::DlqAction;
use args::{ListArgs, PurgeArgs, ReplayArgs};
use render::{full_json, print_full, replay_line, write_item, Columns};

use super::exit::{Interrupted, NotDeclared, Unavailable, Usage};
use super::progress::Reporter;
use crate::config::Settings;
use crate::dlq::replay::{ReplayOptions, ReplaySummary};
use crate::dlq::{Control, Dlq, DlqError, Outcome, Summary};
use crate::subscription::store::Store;
use anyhow::{bail, Context};
use std::io::{BufWriter, IsTerminal, Write};
use tokio_util::sync::CancellationToken;

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
    print_replay_summary(&mut out, &summary, a.json)?;
    out.flush()?;
    replay_status(&summary)
}

/// The closing line (or the JSON document's `summary` and its end).
fn print_replay_summary(
    out: &mut impl Write,
    summary: &ReplaySummary,
    json: bool,
) -> anyhow::Result<()> {
    let c = &summary.counts;
    if json {
        write!(out, "\n], \"summary\": ")?;
        serde_json::to_writer(&mut *out, summary)?;
        writeln!(out, "}}")?;
    } else {
        writeln!(
            out,
            "{} {} of {} dead letters selected ({} duplicates removed, {} refused, {} failed, {} kept)",
            if summary.dry_run { "would replay" } else { "replayed" },
            c.replayed,
            summary.summary.selected,
            c.duplicate,
            c.refused,
            c.failed,
            c.skipped
        )?;
    }
    Ok(())
}

/// Exit 130 when interrupted, 1 when letters were left unreplayed, else success.
fn replay_status(summary: &ReplaySummary) -> anyhow::Result<()> {
    let c = &summary.counts;
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
