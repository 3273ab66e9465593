//! The per-webhook attempt log merchants read (“recent deliveries”): the last
//! [`LOG_SIZE`] attempts of each webhook in a Redis list `<prefix>:{A}:attempts:<webhook>`.
//! Written off the hot path: handlers hand records to a bounded channel (dropping, and counting,
//! when it is full rather than slowing deliveries), and one task writes them in pipelined
//! batches.

use super::store::{Store, StoreError};
use super::WebhookId;
use crate::event::AccountId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
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
    /// attempts have failed without a success, and disables a webhook failing for
    /// `disable_after` (Svix's rule), recording why.
    pub fn start(store: Store, disable_after: Duration) -> AttemptLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, rx, disable_after));
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
    disable_after: Duration,
) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        match write_batch(&store, &mut batch).await {
            Ok(failing) => disable_long_failing(&store, failing, disable_after).await,
            Err(e) => {
                metrics::counter!("hookrelay_attempt_log_errors_total").increment(1);
                tracing::warn!(error = %e, "could not write the attempt log");
            }
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
    let mut pipe = redis::pipe();
    pipe.lpush(&key, json)
        .ignore()
        .ltrim(&key, 0, LOG_SIZE - 1)
        .ignore();
    store.run_pipeline(&pipe).await
}

/// Appends the records, trims each log, and updates each webhook's "failing since" mark (set
/// on a failure if unset, cleared by a success). Returns the failing webhooks with their mark.
/// One pipeline per account, sent concurrently: on Redis Cluster a pipeline must stay in one
/// slot, and an account's keys share one (its hash tag).
async fn write_batch(
    store: &Store,
    batch: &mut Vec<(AccountId, WebhookId, AttemptRecord)>,
) -> Result<Vec<(AccountId, WebhookId, i64)>, StoreError> {
    let mut by_account: HashMap<AccountId, Vec<(WebhookId, AttemptRecord)>> = HashMap::new();
    for (account, webhook, record) in batch.drain(..) {
        by_account
            .entry(account)
            .or_default()
            .push((webhook, record));
    }
    let writes = by_account
        .into_iter()
        .map(|(account, records)| write_account(store, account, records));
    let mut failing = Vec::new();
    for result in futures_util::future::join_all(writes).await {
        failing.extend(result?);
    }
    Ok(failing)
}

async fn write_account(
    store: &Store,
    account: AccountId,
    records: Vec<(WebhookId, AttemptRecord)>,
) -> Result<Vec<(AccountId, WebhookId, i64)>, StoreError> {
    let mut pipe = redis::pipe();
    let mut logs = Vec::with_capacity(records.len());
    let mut failed = Vec::new();
    for (webhook, record) in records {
        let key = store.attempts_key(&account, &webhook);
        let json = serde_json::to_string(&record).expect("a record serializes");
        pipe.lpush(&key, json).ignore();
        logs.push(key);
        let failing = store.failing_key(&account, &webhook);
        if record.succeeded() {
            pipe.del(&failing).ignore();
        } else {
            pipe.cmd("SET")
                .arg(&failing)
                .arg(record.at.timestamp())
                .arg("NX")
                .ignore();
            pipe.get(&failing);
            failed.push(webhook);
        }
    }
    logs.sort();
    logs.dedup();
    for key in &logs {
        pipe.ltrim(key, 0, LOG_SIZE - 1).ignore();
    }
    let since: Vec<Option<i64>> = store.query_pipeline(&pipe).await?;
    Ok(failed
        .into_iter()
        .zip(since)
        .filter_map(|(w, s)| Some((account.clone(), w, s?)))
        .collect())
}

async fn disable_long_failing(
    store: &Store,
    mut failing: Vec<(AccountId, WebhookId, i64)>,
    disable_after: Duration,
) {
    let now = Utc::now().timestamp();
    failing.retain(|(_, _, since)| now - since >= disable_after.as_secs() as i64);
    failing.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    failing.dedup_by(|a, b| a.1 == b.1);
    for (account, webhook, since) in failing {
        let since = DateTime::from_timestamp(since, 0).unwrap_or_default();
        let reason = format!(
            "failing: no successful delivery since {}",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        match store.get(&account, &webhook).await {
            Ok(w) if w.enabled => {
                tracing::warn!(webhook_id = %webhook, %reason, "disabling a webhook that keeps failing");
                if let Err(e) = store.disable(&account, &webhook, &reason).await {
                    tracing::warn!(error = %e, webhook_id = %webhook, "could not disable");
                }
            }
            _ => {}
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
