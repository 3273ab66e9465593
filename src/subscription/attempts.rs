//! The per-webhook attempt log merchants read (“recent deliveries”): the last
//! [`LOG_SIZE`] attempts of each webhook in a Redis list `<prefix>:{A}:attempts:<webhook>`, each
//! in the [`compact`] encoding. Written off the hot path: handlers encode each record once and
//! hand it to a bounded channel (dropping, and counting, when it is full rather than slowing
//! deliveries), and one task writes them in batches: on one node (single or Sentinel) a whole
//! batch as one script; on a cluster each webhook's records and its "failing since" mark as one
//! script on the account's slot (safe while a slot migrates, see [`write_webhook`]). A write
//! that fails is counted (`hookrelay_attempt_log_errors_total`) and dropped.

pub mod compact;

use super::store::{Store, StoreError};
use super::WebhookId;
use crate::event::AccountId;
use chrono::{DateTime, Utc};
use compact::Entry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::LazyLock;
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

/// A webhook's records, oldest first, and its "failing since" mark, in one script: the records
/// pushed, the list trimmed to [`LOG_SIZE`], then the mark cleared (`c`), set (`s`) or set
/// unless set (`n`) to ARGV[2]. Returns the mark when the webhook is failing.
/// KEYS: attempts list, failing mark (one slot: the account's). ARGV: mode, time, last index
/// kept, records...
const WRITE: &str = r#"
redis.call('LPUSH', KEYS[1], unpack(ARGV, 4))
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]))
if ARGV[1] == 'c' then
  redis.call('DEL', KEYS[2])
  return false
end
if ARGV[1] == 's' then
  redis.call('SET', KEYS[2], ARGV[2])
  return tonumber(ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return tonumber(redis.call('GET', KEYS[2]))
"#;

/// Hashed once: each write sends only its SHA1 (EVALSHA).
static WRITE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(WRITE));

/// [`WRITE`] for every webhook of a batch at once, where all keys are on one node (single or
/// Sentinel; never on a cluster, where a script's keys must share a slot). KEYS: attempts list
/// and failing mark of each webhook. ARGV: last index kept, then per webhook its mode, time,
/// record count and records. Returns each webhook's mark, -1 when it is not failing.
const WRITE_ALL: &str = r#"
local keep = tonumber(ARGV[1])
local marks = {}
local a = 2
for i = 1, #KEYS, 2 do
  local mode, at, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  redis.call('LPUSH', KEYS[i], unpack(ARGV, a + 3, a + 2 + n))
  redis.call('LTRIM', KEYS[i], 0, keep)
  local mark = -1
  if mode == 'c' then
    redis.call('DEL', KEYS[i + 1])
  elseif mode == 's' then
    redis.call('SET', KEYS[i + 1], at)
    mark = tonumber(at)
  else
    redis.call('SET', KEYS[i + 1], at, 'NX')
    mark = tonumber(redis.call('GET', KEYS[i + 1]))
  end
  marks[#marks + 1] = mark
  a = a + 3 + n
end
return marks
"#;

static WRITE_ALL_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(WRITE_ALL));

/// A batch's records of one webhook are one script's arguments; Lua's stack holds about 8,000.
const MAX_RECORDS_PER_WRITE: usize = 512;

/// What travels from a handler to the writer.
type Queued = (AccountId, WebhookId, Entry);

/// The writing end, cheap to clone.
#[derive(Clone)]
pub struct AttemptLog {
    tx: mpsc::Sender<Queued>,
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

    pub fn record(&self, account: &AccountId, webhook: &WebhookId, entry: Entry) {
        if self
            .tx
            .try_send((account.clone(), webhook.clone(), entry))
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

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(MAX_RECORDS_PER_WRITE);
    while rx.recv_many(&mut batch, MAX_RECORDS_PER_WRITE).await > 0 {
        // The marks of failing webhooks are what the API shows; the disabling is `health`'s.
        let (_failing, errors) = write_batch(&store, &mut batch).await;
        if let Some((count, e)) = errors {
            // Counted and dropped: the log is best-effort, and a failed write (a slot moving,
            // a node failing over) says nothing about the connection's health.
            metrics::counter!("hookrelay_attempt_log_errors_total").increment(count);
            tracing::warn!(error = %e, writes = count, "could not write the attempt log");
        }
    }
}

/// Appends one record now, bypassing the batching writer (the API's test-send: the merchant
/// reads the attempts right after). It leaves the "failing since" mark alone.
pub async fn append_now(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
    entry: &Entry,
) -> Result<(), StoreError> {
    let key = store.attempts_key(account, webhook);
    store
        .run_command(redis::cmd("LPUSH").arg(&key).arg(&entry.bytes))
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

impl FailingMark {
    /// The script's mode and time arguments.
    fn args(self) -> (&'static str, i64) {
        match self {
            FailingMark::Clear => ("c", 0),
            FailingMark::Set(at) => ("s", at),
            FailingMark::SetIfUnset(at) => ("n", at),
        }
    }
}

/// Folds one webhook's attempts (oldest first) into their effect on the mark, so that each
/// webhook costs one script whatever the batch holds.
fn failing_mark(records: &[Entry]) -> FailingMark {
    match records.iter().rposition(|r| r.succeeded) {
        Some(last) if last + 1 == records.len() => FailingMark::Clear,
        Some(last) => FailingMark::Set(records[last + 1].at),
        None => FailingMark::SetIfUnset(records.first().map_or(0, |r| r.at)),
    }
}

/// Writes a batch: per webhook, its records and its "failing since" mark (see
/// [`write_webhook`]), all webhooks concurrently. Returns the failing webhooks with their mark,
/// and how many webhooks' writes failed with the last error.
async fn write_batch(
    store: &Store,
    batch: &mut Vec<Queued>,
) -> (Vec<(AccountId, WebhookId, i64)>, Option<(u64, StoreError)>) {
    let mut by_webhook: HashMap<(AccountId, WebhookId), Vec<Entry>> = HashMap::new();
    for (account, webhook, record) in batch.drain(..) {
        by_webhook
            .entry((account, webhook))
            .or_default()
            .push(record);
    }
    if store.one_node() {
        return write_all(store, by_webhook).await;
    }
    let writes = by_webhook
        .into_iter()
        .map(|((account, webhook), records)| async move {
            let since = write_webhook(store, &account, &webhook, &records).await?;
            Ok::<_, StoreError>(since.map(|s| (account, webhook, s)))
        });
    let mut failing = Vec::new();
    let mut errors: Option<(u64, StoreError)> = None;
    for result in futures_util::future::join_all(writes).await {
        match result {
            Ok(since) => failing.extend(since),
            Err(e) => errors = Some((errors.map_or(0, |(n, _)| n) + 1, e)),
        }
    }
    (failing, errors)
}

/// One webhook's records and mark, as one script on the account's slot ([`WRITE`]), never
/// pipelined with another webhook's. On Redis Cluster, a command for a key that a migrating
/// slot's source no longer holds is answered ASK, and a pipeline is never re-sent (see
/// `connection::redirect`): one command is redirected whole, so it runs exactly once, on one
/// node. A script runs there only when the node holds all of its keys or none (else TRYAGAIN,
/// and it did not run), so it can never make a second copy of a key the source still holds
/// (which would fail the slot's move with BUSYKEY). Returns the mark when the webhook is
/// failing.
async fn write_webhook(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
    records: &[Entry],
) -> Result<Option<i64>, StoreError> {
    let (mode, at) = failing_mark(records).args();
    let mut invocation = WRITE_SCRIPT.prepare_invoke();
    invocation
        .key(store.attempts_key(account, webhook))
        .key(store.failing_key(account, webhook))
        .arg(mode)
        .arg(at)
        .arg(LOG_SIZE - 1);
    for record in records {
        invocation.arg(&record.bytes);
    }
    store.invoke(&invocation).await
}

/// The whole batch as one script ([`WRITE_ALL`]), on a store whose keys are all on one node.
async fn write_all(
    store: &Store,
    by_webhook: HashMap<(AccountId, WebhookId), Vec<Entry>>,
) -> (Vec<(AccountId, WebhookId, i64)>, Option<(u64, StoreError)>) {
    let webhooks: Vec<_> = by_webhook.into_iter().collect();
    let mut invocation = WRITE_ALL_SCRIPT.prepare_invoke();
    invocation.arg(LOG_SIZE - 1);
    for ((account, webhook), records) in &webhooks {
        let (mode, at) = failing_mark(records).args();
        invocation
            .key(store.attempts_key(account, webhook))
            .key(store.failing_key(account, webhook))
            .arg(mode)
            .arg(at)
            .arg(records.len());
        for record in records {
            invocation.arg(&record.bytes);
        }
    }
    match store.invoke::<Vec<i64>>(&invocation).await {
        Ok(marks) => {
            let failing = webhooks
                .into_iter()
                .zip(marks)
                .filter(|(_, mark)| *mark >= 0)
                .map(|(((account, webhook), _), mark)| (account, webhook, mark))
                .collect();
            (failing, None)
        }
        Err(e) => (Vec::new(), Some((webhooks.len() as u64, e))),
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
        .map(|j| compact::decode(j).map_err(StoreError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(second: i64, status: u16) -> Entry {
        Entry {
            at: second,
            succeeded: (200..300).contains(&status),
            bytes: Vec::new(),
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
