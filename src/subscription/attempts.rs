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
    /// Starts the writer task on `store`'s connection.
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

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<(AccountId, WebhookId, AttemptRecord)>,
) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(batch.len());
        for (account, webhook, record) in batch.drain(..) {
            let key = store.attempts_key(&account, &webhook);
            let json = serde_json::to_string(&record).expect("a record serializes");
            pipe.lpush(&key, json).ignore();
            keys.push(key);
        }
        keys.sort();
        keys.dedup();
        for key in &keys {
            pipe.ltrim(key, 0, LOG_SIZE - 1).ignore();
        }
        if let Err(e) = store.run_pipeline(&pipe).await {
            metrics::counter!("hookrelay_attempt_log_errors_total").increment(1);
            tracing::warn!(error = %e, "could not write the attempt log");
        }
    }
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
