//! Inspecting, replaying and purging the dead-letter queues (DESIGN §4): `hookrelay dlq`.
//!
//! Every command reads a queue through a [`snapshot::Snapshot`], which holds the messages unacked
//! and hands back all it does not remove in their order, so listing never loses or reorders a
//! message. A letter ([`DeadLetter`]) is read from whichever of the three shapes it arrived in
//! ([`letter`]). Replay ([`replay`]) republishes with confirms and acks a letter only once the
//! broker confirmed its republish; purge acks the selected letters and nothing else.
//! The letters a replay or purge works through are handed out by [`Selected`] (`selected`);
//! this file is what a `dlq` command asks for (a selection, a filter) and the commands that only
//! read or remove (list, show, purge).

pub mod headers;
pub mod letter;
pub mod plan;
pub mod replay;
mod selected;
pub mod snapshot;
pub mod status;

pub use letter::{DeadLetter, DeadLetteredBy, DlqQueue};
pub use replay::{Outcome, Refusal, ReplayItem, ReplayReport};

use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::config::Settings;
use crate::subscription::store::StoreError;
use chrono::{DateTime, Utc};
use lapin::Connection;
use snapshot::Snapshot;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a `dlq` command failed; the CLI tells `NotFound` and `NothingSelected` apart from broker
/// and Redis failures.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("queue {0} cannot be read (is the topology declared?)")]
    NoQueue(String, #[source] lapin::Error),
    #[error("the broker ended the consumer on {0}")]
    ConsumerEnded(String),
    #[error("no dead letter {}", .0.join(", "))]
    NotFound(Vec<String>),
    #[error("nothing selected: name dead letters by id, or pass --all or a filter")]
    NothingSelected,
    #[error("the broker ended the channel before the removals were confirmed; list again to see what is left (a replayed letter still there would be sent twice)")]
    Unconfirmed(#[source] lapin::Error),
    #[error("interrupted before anything changed")]
    Interrupted,
    #[error("writing the output")]
    Output(#[source] std::io::Error),
    #[error("talking to RabbitMQ")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] crate::broker::ConnectError),
    #[error("looking up a webhook")]
    Store(#[from] StoreError),
}

/// Which letters a command looks at; every field set must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub account: Option<String>,
    pub event_type: Option<String>,
    pub webhook: Option<String>,
    pub reason: Option<String>,
    /// Only letters whose last attempt (or, without one, their dead-lettering) is older.
    pub older_than: Option<Duration>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.account.is_none()
            && self.event_type.is_none()
            && self.webhook.is_none()
            && self.reason.is_none()
            && self.older_than.is_none()
    }

    pub fn matches(&self, letter: &DeadLetter, now: DateTime<Utc>) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let old_enough = self.older_than.is_none_or(|age| {
            let cutoff = chrono::Duration::from_std(age)
                .ok()
                .and_then(|age| now.checked_sub_signed(age));
            // A letter of unknown age is not known to be older: left out.
            matches!((letter.age_reference(), cutoff), (Some(at), Some(cutoff)) if at < cutoff)
        });
        eq(&self.account, &letter.account_id)
            && eq(&self.event_type, &letter.event_type)
            && eq(&self.webhook, &letter.webhook_id)
            && self.reason.as_ref().is_none_or(|r| *r == letter.reason)
            && old_enough
    }
}

/// The letters a replay or purge acts on: the ids named (each must exist), or with `all` or a
/// filter, every letter that matches the filter.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub ids: Vec<String>,
    pub all: bool,
    pub filter: Filter,
    /// The queue to look in; `None` means both when ids are named, else `deliveries`.
    pub queue: Option<DlqQueue>,
}

impl Selection {
    fn queues(&self) -> Vec<DlqQueue> {
        match (self.queue, self.ids.is_empty()) {
            (Some(q), _) => vec![q],
            (None, false) => vec![DlqQueue::Deliveries, DlqQueue::Events],
            (None, true) => vec![DlqQueue::Deliveries],
        }
    }

    fn matches(&self, letter: &DeadLetter, now: DateTime<Utc>) -> bool {
        (self.ids.is_empty() || self.ids.contains(&letter.id)) && self.filter.matches(letter, now)
    }
}

/// What a purge removed (or, in a dry run, would remove).
#[derive(Debug, serde::Serialize)]
pub struct PurgeReport {
    pub dry_run: bool,
    pub purged: Vec<DeadLetter>,
}

/// How a long command reports how far it got; the CLI draws a bar or prints lines.
pub trait Progress: Send + Sync {
    /// `read` of the `depth` letters of `queue` were read; `done` of all were acted on.
    fn update(&self, queue: DlqQueue, read: u32, depth: u32, done: u64);
}

/// For callers that show no progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _: DlqQueue, _: u32, _: u32, _: u64) {}
}

/// What stops a long command (SIGINT, SIGTERM) and what it reports to.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    pub shutdown: &'a CancellationToken,
    pub progress: &'a dyn Progress,
}

impl Control<'_> {
    /// Never stopped, reporting nothing.
    pub fn none() -> Control<'static> {
        static NEVER: std::sync::LazyLock<CancellationToken> =
            std::sync::LazyLock::new(CancellationToken::new);
        Control {
            shutdown: &NEVER,
            progress: &NoProgress,
        }
    }
}

/// How far a command got through one queue.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pass {
    pub queue: DlqQueue,
    /// Letters in the queue when it was counted, and letters read.
    pub depth: u32,
    pub read: u32,
}

/// How far a command got: the queues it read, how many letters it selected, and whether it
/// was interrupted (by a signal) or stalled (letters held by another consumer were skipped).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub passes: Vec<Pass>,
    pub selected: u64,
    pub interrupted: bool,
    pub stalled: bool,
}

impl Summary {
    fn note(&mut self, snapshot: &Snapshot) {
        self.stalled |= snapshot.stalled();
        self.passes.push(Pass {
            queue: snapshot.queue,
            depth: snapshot.depth,
            read: snapshot.read,
        });
    }

    /// Letters read over every queue.
    pub fn read(&self) -> u64 {
        self.passes.iter().map(|p| u64::from(p.read)).sum()
    }
}

/// A connection to the broker for `dlq` commands, and the names of one deployment.
pub struct Dlq {
    conn: Connection,
    topology: Topology,
    publish_timeout: Duration,
    window: u32,
}

impl Dlq {
    pub async fn connect(settings: &Settings) -> Result<Dlq, DlqError> {
        let topology = Topology::from_settings(settings);
        let connector = crate::broker::Connector::new(&settings.amqp);
        Self::connect_to(&connector, topology, settings.amqp.publish_timeout).await
    }

    /// Connects through `connector` for the deployment named by `topology`.
    pub async fn connect_to(
        connector: &crate::broker::Connector,
        topology: Topology,
        publish_timeout: Duration,
    ) -> Result<Dlq, DlqError> {
        // The prefix in the name lets on-call (and tests) find this connection in the UI.
        let name = format!("hookrelay dlq {}", topology.prefix);
        let conn = connector.connect(&name).await?.connection;
        Ok(Dlq {
            conn,
            topology,
            publish_timeout,
            window: snapshot::DEFAULT_WINDOW,
        })
    }

    /// Reads in windows of `window` letters (1 to 65,535) instead of 8,192 (tests show the order
    /// is kept across many windows without writing hundreds of thousands of letters).
    pub fn with_window(mut self, window: u32) -> Dlq {
        self.window = window;
        self
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn queue_name(&self, queue: DlqQueue) -> String {
        match queue {
            DlqQueue::Deliveries => self.topology.dlq_deliveries(),
            DlqQueue::Events => self.topology.dlq_events(),
        }
    }

    /// The letters of `queue` that match `filter`, in queue order, at most `limit`, collected
    /// (see [`Dlq::list_each`] for a queue of any size).
    pub async fn list(
        &self,
        queue: DlqQueue,
        filter: &Filter,
        limit: Option<usize>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let mut letters = Vec::new();
        self.list_each(queue, filter, limit, Control::none(), |l| {
            letters.push(l);
            Ok(())
        })
        .await?;
        Ok(letters)
    }

    /// Hands the letters of `queue` that match `filter` to `sink` as they are read, in queue
    /// order, at most `limit`; nothing is kept, so memory does not grow with the queue. A
    /// `sink` error (e.g. a closed pipe) stops the listing; every letter is back in the queue
    /// either way.
    pub async fn list_each(
        &self,
        queue: DlqQueue,
        filter: &Filter,
        limit: Option<usize>,
        control: Control<'_>,
        mut sink: impl FnMut(DeadLetter) -> std::io::Result<()>,
    ) -> Result<Summary, DlqError> {
        let now = Utc::now();
        let mut snapshot = self.open(queue).await?;
        let mut summary = Summary::default();
        let read = async {
            while limit.is_none_or(|l| summary.selected < l as u64) {
                let held = tokio::select! {
                    biased;
                    _ = control.shutdown.cancelled() => {
                        summary.interrupted = true;
                        break;
                    }
                    held = snapshot.next() => held?,
                };
                let Some(held) = held else { break };
                if filter.matches(&held.letter, now) {
                    summary.selected += 1;
                    sink(held.letter).map_err(DlqError::Output)?;
                }
                control
                    .progress
                    .update(queue, snapshot.read, snapshot.depth, summary.selected);
            }
            Ok::<(), DlqError>(())
        }
        .await;
        summary.note(&snapshot);
        // Nothing was acked: whatever the close says, every message is back.
        let _ = snapshot.release().await;
        read.map(|()| summary)
    }

    /// One letter by id, looked for in `queue` or, without one, in both queues.
    pub async fn show(&self, id: &str, queue: Option<DlqQueue>) -> Result<DeadLetter, DlqError> {
        let queues = queue.map_or(vec![DlqQueue::Deliveries, DlqQueue::Events], |q| vec![q]);
        for queue in queues {
            let mut snapshot = self.open(queue).await?;
            let found = async {
                while let Some(held) = snapshot.next().await? {
                    if held.letter.id == id {
                        return Ok(Some(held.letter));
                    }
                }
                Ok::<_, DlqError>(None)
            }
            .await;
            let _ = snapshot.release().await; // as in `list_each`
            if let Some(letter) = found? {
                return Ok(letter);
            }
        }
        Err(DlqError::NotFound(vec![id.to_owned()]))
    }

    /// Removes the selected letters (a dry run only says which), collected (see
    /// [`Dlq::purge_each`]).
    pub async fn purge(
        &self,
        selection: &Selection,
        dry_run: bool,
    ) -> Result<PurgeReport, DlqError> {
        let mut purged = Vec::new();
        self.purge_each(selection, dry_run, Control::none(), |l| purged.push(l))
            .await?;
        Ok(PurgeReport { dry_run, purged })
    }

    /// Removes the selected letters as they are read, handing each to `sink` once its removal
    /// was sent (a dry run removes nothing). The removals are applied when the channel closes,
    /// before this returns; interrupted, it removes nothing more and returns what it did.
    pub async fn purge_each(
        &self,
        selection: &Selection,
        dry_run: bool,
        control: Control<'_>,
        mut sink: impl FnMut(DeadLetter),
    ) -> Result<Summary, DlqError> {
        let mut selected = Selected::open(self, selection, control).await?;
        let mut done = 0;
        let result = async {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = control.shutdown.cancelled() => {
                        selected.summary.interrupted = true;
                        break;
                    }
                    next = selected.next() => next?,
                };
                let Some((at, held)) = next else { break };
                if !dry_run {
                    selected.ack(at, held.tag, &held.letter.id).await?;
                }
                done += 1;
                sink(held.letter);
                selected.progress(done);
            }
            Ok::<(), DlqError>(())
        }
        .await;
        let (summary, released) = selected.release(self).await;
        result?;
        if !dry_run {
            released?;
        }
        Ok(summary)
    }

    /// Removes the letters of `queue` whose id is in `removed`: letters a command already
    /// removed once, that the broker handed back because it dropped their acks (RabbitMQ's
    /// quorum-queue client in a channel drops acks it had stashed when the channel closes).
    /// A few rounds at most; each reads the queue once.
    async fn sweep(&self, queue: DlqQueue, removed: &HashSet<String>) -> Result<(), DlqError> {
        for _ in 0..3 {
            let mut snapshot = self.open(queue).await?;
            let mut swept = 0;
            let result = async {
                while let Some(held) = snapshot.next().await? {
                    if removed.contains(&held.letter.id) {
                        snapshot.ack(held.tag).await?;
                        swept += 1;
                    }
                }
                Ok::<(), DlqError>(())
            }
            .await;
            let released = snapshot.release().await;
            result?;
            let released = released.map_err(DlqError::Unconfirmed)?;
            if swept > 0 {
                tracing::warn!(queue = %self.queue_name(queue), swept,
                    "the broker handed back letters already removed; removed them again");
            }
            if swept == 0 || released.surplus == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn open(&self, queue: DlqQueue) -> Result<Snapshot, DlqError> {
        Snapshot::open_with_window(&self.conn, queue, &self.queue_name(queue), self.window).await
    }

    async fn publisher(&self) -> Result<Publisher, DlqError> {
        Ok(Publisher::new(&self.conn, self.publish_timeout).await?)
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "dlq done".into()).await;
    }
}

pub(crate) use selected::Selected;

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;

    fn letter(account: &str, reason: &str, last_attempt: Option<&str>) -> DeadLetter {
        let mut l = DeadLetter::read(
            DlqQueue::Deliveries,
            &BasicProperties::default().with_message_id("dl_1".into()),
            b"?",
        );
        l.account_id = Some(account.to_owned());
        l.event_type = Some("payment.card.success".to_owned());
        l.webhook_id = Some("wh_a".to_owned());
        l.reason = reason.to_owned();
        l.last_attempt_at = last_attempt.map(|t| t.parse().unwrap());
        l
    }

    #[test]
    fn a_filter_matches_only_when_every_field_it_sets_matches() {
        let now: DateTime<Utc> = "2026-11-27T12:00:00Z".parse().unwrap();
        let l = letter("68", "exhausted", Some("2026-11-27T10:00:00Z"));
        let f = |f: Filter| f.matches(&l, now);

        assert!(f(Filter::default()));
        assert!(f(Filter {
            account: Some("68".into()),
            reason: Some("exhausted".into()),
            event_type: Some("payment.card.success".into()),
            webhook: Some("wh_a".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            account: Some("69".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            reason: Some("gone".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            older_than: Some(Duration::from_secs(3600)),
            ..Default::default()
        }));
        assert!(!f(Filter {
            older_than: Some(Duration::from_secs(3 * 3600)),
            ..Default::default()
        }));
    }

    #[test]
    fn a_letter_of_unknown_age_is_never_older_than_anything() {
        let l = letter("68", "exhausted", None);
        let filter = Filter {
            older_than: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(!filter.matches(&l, Utc::now()));
    }

    #[test]
    fn named_ids_are_looked_for_in_both_queues_unless_one_is_given() {
        let named = Selection {
            ids: vec!["dl_1".into()],
            ..Default::default()
        };
        assert_eq!(named.queues(), vec![DlqQueue::Deliveries, DlqQueue::Events]);
        let all = Selection {
            all: true,
            ..Default::default()
        };
        assert_eq!(all.queues(), vec![DlqQueue::Deliveries]);
        let events = Selection {
            queue: Some(DlqQueue::Events),
            ..named
        };
        assert_eq!(events.queues(), vec![DlqQueue::Events]);
    }
}
