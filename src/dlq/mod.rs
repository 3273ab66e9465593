//! Inspecting, replaying and purging the dead-letter queues (DESIGN §4): `hookrelay dlq`.
//!
//! Every command reads a queue through a [`snapshot::Snapshot`], which holds the messages unacked
//! and hands back all it does not remove in their order, so listing never loses or reorders a
//! message. A letter ([`DeadLetter`]) is read from whichever of the three shapes it arrived in
//! ([`letter`]). Replay ([`replay`]) republishes with confirms and acks a letter only once the
//! broker confirmed its republish; purge acks the selected letters and nothing else.

pub mod headers;
pub mod letter;
pub mod replay;
pub mod snapshot;

pub use letter::{DeadLetter, DeadLetteredBy, DlqQueue};
pub use replay::{Outcome, Refusal, ReplayItem, ReplayReport};

use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::config::Settings;
use crate::subscription::store::StoreError;
use chrono::{DateTime, Utc};
use lapin::Connection;
use snapshot::Snapshot;
use std::time::Duration;

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

/// A connection to the broker for `dlq` commands, and the names of one deployment.
pub struct Dlq {
    conn: Connection,
    topology: Topology,
    publish_timeout: Duration,
}

impl Dlq {
    pub async fn connect(settings: &Settings) -> Result<Dlq, DlqError> {
        let conn = crate::broker::Connector::new(&settings.amqp)
            .connect("hookrelay dlq")
            .await?
            .connection;
        Ok(Dlq {
            conn,
            topology: Topology::new(
                &settings.amqp.prefix,
                &settings.delivery.retry_schedule,
                settings.amqp.delivery_limit,
            ),
            publish_timeout: settings.amqp.publish_timeout,
        })
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

    /// The letters of `queue` that match `filter`, in queue order, at most `limit`.
    pub async fn list(
        &self,
        queue: DlqQueue,
        filter: &Filter,
        limit: Option<usize>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let now = Utc::now();
        let snapshot = self.take(queue, |l| filter.matches(l, now), limit).await?;
        let letters = snapshot.held.iter().map(|h| h.letter.clone()).collect();
        // Nothing was acked: whatever the close says, every message is back.
        let _ = snapshot.release().await;
        Ok(letters)
    }

    /// One letter by id, looked for in `queue` or, without one, in both queues.
    pub async fn show(&self, id: &str, queue: Option<DlqQueue>) -> Result<DeadLetter, DlqError> {
        let queues = queue.map_or(vec![DlqQueue::Deliveries, DlqQueue::Events], |q| vec![q]);
        for queue in queues {
            let mut found = self.list_ids(queue, &[id.to_owned()], Some(1)).await?;
            if let Some(letter) = found.pop() {
                return Ok(letter);
            }
        }
        Err(DlqError::NotFound(vec![id.to_owned()]))
    }

    async fn list_ids(
        &self,
        queue: DlqQueue,
        ids: &[String],
        limit: Option<usize>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let snapshot = self.take(queue, |l| ids.contains(&l.id), limit).await?;
        let letters = snapshot.held.iter().map(|h| h.letter.clone()).collect();
        let _ = snapshot.release().await; // as in `list`
        Ok(letters)
    }

    /// Removes the selected letters (a dry run only says which).
    pub async fn purge(
        &self,
        selection: &Selection,
        dry_run: bool,
    ) -> Result<PurgeReport, DlqError> {
        let snapshots = self.select(selection).await?;
        let mut purged = Vec::new();
        let mut result = Ok(());
        'queues: for snapshot in &snapshots {
            for held in &snapshot.held {
                if !dry_run {
                    if let Err(e) = snapshot.ack(held.tag).await {
                        result = Err(e);
                        break 'queues;
                    }
                }
                purged.push(held.letter.clone());
            }
        }
        let released = release_all(snapshots).await;
        result?;
        if !dry_run {
            released?;
        }
        Ok(PurgeReport { dry_run, purged })
    }

    /// Holds the selected letters of every queue the selection looks in; fails, holding
    /// nothing, when nothing is selected or a named id is in none of them.
    async fn select(&self, selection: &Selection) -> Result<Vec<Snapshot>, DlqError> {
        if selection.ids.is_empty() && !selection.all && selection.filter.is_empty() {
            return Err(DlqError::NothingSelected);
        }
        let now = Utc::now();
        let mut snapshots = Vec::new();
        for queue in selection.queues() {
            match self.take(queue, |l| selection.matches(l, now), None).await {
                Ok(s) => snapshots.push(s),
                Err(e) => {
                    // Nothing was acked yet.
                    let _ = release_all(snapshots).await;
                    return Err(e);
                }
            }
        }
        let missing: Vec<String> = selection
            .ids
            .iter()
            .filter(|id| {
                !snapshots
                    .iter()
                    .any(|s| s.held.iter().any(|h| &h.letter.id == *id))
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            let _ = release_all(snapshots).await; // nothing was acked yet
            return Err(DlqError::NotFound(missing));
        }
        Ok(snapshots)
    }

    async fn take(
        &self,
        queue: DlqQueue,
        keep: impl Fn(&DeadLetter) -> bool,
        limit: Option<usize>,
    ) -> Result<Snapshot, DlqError> {
        let snapshot =
            Snapshot::take(&self.conn, queue, &self.queue_name(queue), keep, limit).await?;
        if snapshot.truncated() {
            tracing::warn!(queue = %snapshot.name, depth = snapshot.depth,
                max = snapshot::MAX_MESSAGES, "the queue holds more than one read can see; only the first were read");
        }
        Ok(snapshot)
    }

    async fn publisher(&self) -> Result<Publisher, DlqError> {
        Ok(Publisher::new(&self.conn, self.publish_timeout).await?)
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "dlq done".into()).await;
    }
}

/// Releases every snapshot; fails if any channel had ended before its close.
async fn release_all(snapshots: Vec<Snapshot>) -> Result<(), DlqError> {
    let mut result = Ok(());
    for s in snapshots {
        if let Err(e) = s.release().await {
            result = result.and(Err(DlqError::Unconfirmed(e)));
        }
    }
    result
}

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
