//! How `hookrelay dlq` shows letters: streamed table rows of fixed widths, a letter in full
//! (text or JSON), and a line per letter a replay did not simply send.

use crate::dlq::{DeadLetter, DlqQueue, Outcome, ReplayItem};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::SecondsFormat;
use std::io::Write;

pub(super) fn write_item(
    out: &mut impl Write,
    item: &ReplayItem,
    first: bool,
) -> std::io::Result<()> {
    out.write_all(if first { b"\n  " } else { b",\n  " })?;
    serde_json::to_writer(&mut *out, &item.to_json())?;
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

/// The columns of a streamed listing: fixed widths, so rows can be printed as they are read
/// (a table crate would need every row first). Longer values widen their row, not the table.
pub(super) struct Columns {
    queue: DlqQueue,
}

impl Columns {
    pub(super) fn of(queue: DlqQueue) -> Columns {
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

    pub(super) fn header(&self, out: &mut impl Write) -> std::io::Result<()> {
        let names: Vec<String> = self.spec().iter().map(|(n, _)| n.to_string()).collect();
        self.line(out, &names)
    }

    pub(super) fn row(&self, out: &mut impl Write, letter: &DeadLetter) -> std::io::Result<()> {
        self.line(out, &self.cells(letter))
    }
}

/// The listing's object plus the event (deliveries) or the body read as JSON (events).
pub(super) fn full_json(letter: &DeadLetter) -> serde_json::Value {
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

pub(super) fn print_full(letter: &DeadLetter) {
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
pub(super) fn replay_line(item: &ReplayItem, dry_run: bool) -> String {
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
