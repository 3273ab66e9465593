//! The per-webhook attempt log merchants read (“recent deliveries”): the last
//! [`LOG_SIZE`] attempts of each webhook in a Redis list `<prefix>:{A}:attempts:<webhook>`.
//! Written off the hot path: handlers hand records to a bounded channel (dropping, and counting,
//! when it is full rather than slowing deliveries), and one task writes them in batches, each
//! webhook's as a few single-key commands (safe while a Redis Cluster slot migrates, see
//! [`write_webhook`]). A write that fails is counted (`hookrelay_attempt_log_errors_total`)
//! and dropped.

use super::store::{Store, StoreError};
use super::WebhookId;
use crate::event::AccountId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tokio::sync::mpsc;

/// Attempts kept per webhook.
pub const LOG_SIZE: isize = 100;

/// Records waiting to be written; past this the log drops rather than delay deliveries.
const QUEUE: usize = 16_384;

/// One attempt, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub attempt: u32,
    pub event_id: String,
    pub event_type: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub response_excerpt: String,
    /// The envelope, so that a merchant can resend it; left out above [`RESEND_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<serde_json::value::RawValue>>,
}

/// Envelopes up to this size are kept in the log for resending.
pub const RESEND_MAX_BYTES: usize = 16 * 1024;

/// The writing end, cheap to clone.
#[derive(Clone)]
pub struct AttemptLog {
    tx: mpsc::Sender<(AccountId, WebhookId, AttemptRecord)>,
}

impl AttemptLog {
    /// Starts the writer task on `store`'s connection. It also keeps, per webhook, since when
    /// attempts have failed without a success (shown by the API). Disabling a webhook failing
    /// for `delivery.disable_after` is decided with its operational events, per attempt, in
    /// `health`.
    pub fn start(store: Store) -> AttemptLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, rx));
        AttemptLog { tx }
    }

    pub fn record(&self, account: &AccountId, webhook: &WebhookId, record: AttemptRecord) {
        if self
            .tx
            .try_send((account.clone(), webhook.clone(), record))
            .is_err()
        {
            metrics::counter!("hookrelay_attempt_log_dropped_total").increment(1);
        }
    }
}

impl AttemptRecord {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<(AccountId, WebhookId, AttemptRecord)>,
) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let errors = write_batch(&store, &mut batch).await;
        if let Some((count, e)) = errors {
            // Counted and dropped: the log is best-effort, and a failed write (a slot moving,
            // a node failing over) says nothing about the connection's health.
            metrics::counter!("hookrelay_attempt_log_errors_total").increment(count);
            tracing::warn!(error = %e, writes = count, "could not write the attempt log");
        }
    }
}

/// Appends one record now, bypassing the batching writer (the API's test-send: the merchant
/// reads the attempts right after).
pub async fn append_now(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
    record: &AttemptRecord,
) -> Result<(), StoreError> {
    let key = store.attempts_key(account, webhook);
    let json = serde_json::to_string(record).expect("a record serializes");
    store
        .run_command(redis::cmd("LPUSH").arg(&key).arg(json))
        .await?;
    store
        .run_command(redis::cmd("LTRIM").arg(&key).arg(0).arg(LOG_SIZE - 1))
        .await
}

/// What a batch of one webhook's attempts does to its "failing since" mark, in order: the mark
/// is set by a failure if unset and cleared by a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailingMark {
    /// The last attempt succeeded.
    Clear,
    /// Failures since the batch's last success, the first at this time: the mark is that.
    Set(i64),
    /// Only failures, the first at this time: the mark is kept if set, else set to that.
    SetIfUnset(i64),
}

/// Folds one webhook's attempts (oldest first) into their effect on the mark, so that each
/// webhook costs one or two single-key commands whatever the batch holds.
fn failing_mark(records: &[AttemptRecord]) -> FailingMark {
    match records.iter().rposition(AttemptRecord::succeeded) {
        Some(last) if last + 1 == records.len() => FailingMark::Clear,
        Some(last) => FailingMark::Set(records[last + 1].at.timestamp()),
        None => FailingMark::SetIfUnset(records.first().map_or(0, |r| r.at.timestamp())),
    }
}

/// Writes a batch: per webhook, its records and its "failing since" mark (see
/// [`write_webhook`]), all webhooks concurrently. Returns how many webhooks' writes failed,
/// with the last error.
async fn write_batch(
    store: &Store,
    batch: &mut Vec<(AccountId, WebhookId, AttemptRecord)>,
) -> Option<(u64, StoreError)> {
    let mut by_webhook: HashMap<(AccountId, WebhookId), Vec<AttemptRecord>> = HashMap::new();
    for (account, webhook, record) in batch.drain(..) {
        by_webhook
            .entry((account, webhook))
            .or_default()
            .push(record);
    }
    let writes = by_webhook
        .into_iter()
        .map(|((account, webhook), records)| async move {
            write_webhook(store, &account, &webhook, &records).await
        });
    let mut errors: Option<(u64, StoreError)> = None;
    for result in futures_util::future::join_all(writes).await {
        if let Err(e) = result {
            errors = Some((errors.map_or(0, |(n, _)| n) + 1, e));
        }
    }
    errors
}

/// One webhook's records and mark, as single-key commands sent one after the other, never
/// pipelined together. On Redis Cluster, a command for a key that a migrating slot's source
/// no longer holds is answered ASK, and the cluster client re-sends the whole pipeline it was
/// in to the importing node: a command in it that creates a key the source still holds (LPUSH
/// after a DEL of a moved key) would make a second copy there, and the slot's move fails with
/// BUSYKEY. A single-key command is redirected only when its key is not on the source, so it
/// can never create such a copy.
async fn write_webhook(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
    records: &[AttemptRecord],
) -> Result<(), StoreError> {
    let key = store.attempts_key(account, webhook);
    let mut push = redis::cmd("LPUSH");
    push.arg(&key);
    for record in records {
        push.arg(serde_json::to_string(record).expect("a record serializes"));
    }
    store.run_command(&push).await?;
    store
        .run_command(redis::cmd("LTRIM").arg(&key).arg(0).arg(LOG_SIZE - 1))
        .await?;
    let failing = store.failing_key(account, webhook);
    match failing_mark(records) {
        FailingMark::Clear => store.run_command(redis::cmd("DEL").arg(&failing)).await,
        FailingMark::Set(at) => {
            store
                .run_command(redis::cmd("SET").arg(&failing).arg(at))
                .await
        }
        FailingMark::SetIfUnset(at) => {
            store
                .run_command(redis::cmd("SET").arg(&failing).arg(at).arg("NX"))
                .await
        }
    }
}

/// Since when a webhook's attempts have failed without a success, if they have.
pub async fn failing_since(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let mut pipe = redis::pipe();
    pipe.get(store.failing_key(account, webhook));
    let (since,): (Option<i64>,) = store.query_pipeline(&pipe).await?;
    Ok(since.and_then(|s| DateTime::from_timestamp(s, 0)))
}

/// The most recent attempts of a webhook, newest first.
pub async fn recent(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
    limit: usize,
) -> Result<Vec<AttemptRecord>, StoreError> {
    let limit = (limit.clamp(1, LOG_SIZE as usize) - 1) as isize;
    let mut pipe = redis::pipe();
    pipe.lrange(store.attempts_key(account, webhook), 0, limit);
    let (items,): (Vec<String>,) = store.query_pipeline(&pipe).await?;
    items
        .iter()
        .map(|j| serde_json::from_str(j).map_err(StoreError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(second: i64, status: u16) -> AttemptRecord {
        AttemptRecord {
            at: DateTime::from_timestamp(second, 0).unwrap(),
            attempt: 1,
            event_id: "evt_1".into(),
            event_type: "payment.card.success".into(),
            status: Some(status),
            error: None,
            duration_ms: 1,
            response_excerpt: String::new(),
            event: None,
        }
    }

    #[test]
    fn a_batch_ending_in_a_success_clears_the_failing_mark() {
        let records = [attempt(10, 500), attempt(11, 200)];
        assert_eq!(failing_mark(&records), FailingMark::Clear);
    }

    #[test]
    fn failures_after_a_success_mark_the_first_of_them() {
        let records = [
            attempt(10, 500),
            attempt(11, 200),
            attempt(12, 500),
            attempt(13, 503),
        ];
        assert_eq!(failing_mark(&records), FailingMark::Set(12));
    }

    #[test]
    fn only_failures_keep_an_older_mark_or_set_the_first() {
        let records = [attempt(10, 500), attempt(11, 500)];
        assert_eq!(failing_mark(&records), FailingMark::SetIfUnset(10));
    }
}
