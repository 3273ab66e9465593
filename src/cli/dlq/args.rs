//! The arguments of `hookrelay dlq`: subcommands, filters and selections as clap parses them.

use crate::dlq::{DlqQueue, Filter, Selection};
use clap::{Args, Subcommand};
use std::time::Duration;

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
    pub(super) account: Option<String>,
    /// Event type label.
    #[arg(long = "type")]
    pub(super) event_type: Option<String>,
    /// Webhook id (wh_...).
    #[arg(long)]
    pub(super) webhook: Option<String>,
    /// exhausted, gone, target_refused, webhook_deleted, webhook_disabled, delivery_limit, or a
    /// poison reason (invalid_json, missing_field, ...).
    #[arg(long)]
    pub(super) reason: Option<String>,
    /// Only letters whose last attempt (or dead-lettering) is older than this, e.g. 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(super) older_than: Option<Duration>,
}

impl FilterArgs {
    pub(super) fn into_filter(self) -> Filter {
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
    pub(super) queue: DlqQueue,
    #[command(flatten)]
    pub(super) filter: FilterArgs,
    /// At most this many letters (the first in queue order).
    #[arg(long)]
    pub(super) limit: Option<usize>,
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    pub(super) id: String,
    /// Look only in this queue (default: both).
    #[arg(long)]
    pub(super) queue: Option<DlqQueue>,
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub struct SelectArgs {
    /// Dead letter ids (as `dlq list` shows them).
    pub(super) ids: Vec<String>,
    /// Every letter of the queue (that matches the filters).
    #[arg(long, conflicts_with = "ids")]
    pub(super) all: bool,
    /// deliveries or events (default: both for ids, else deliveries).
    #[arg(long)]
    pub(super) queue: Option<DlqQueue>,
    #[command(flatten)]
    pub(super) filter: FilterArgs,
}

impl SelectArgs {
    pub(super) fn into_selection(self) -> Selection {
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
    pub(super) select: SelectArgs,
    /// Say what would happen; change nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Replay deliveries even when their webhook is deleted or disabled.
    #[arg(long)]
    pub(super) force: bool,
    /// At most this many republishes per second: N, N/s or N/m (default: as fast as the
    /// broker confirms).
    #[arg(long, value_parser = parse_rate)]
    pub(super) rate: Option<f64>,
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub(super) select: SelectArgs,
    /// Confirm: purged letters are gone for good.
    #[arg(long)]
    pub(super) yes: bool,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    #[arg(long)]
    pub(super) json: bool,
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
