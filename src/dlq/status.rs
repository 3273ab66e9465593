//! Why is merchant X failing: one account's webhooks, each with its state (enabled, or disabled
//! and why), its last attempts, its success rate over the attempt log, and its dead letters in
//! `<prefix>.dlq.deliveries` by reason. Shared by `hookrelay webhooks status` and the API's
//! `GET /v1/accounts/{account_id}/status`.
//!
//! Counting dead letters by webhook needs a pass over the queue (a quorum queue has no index):
//! the pass reads in order and hands everything back, like `dlq list`, and stops after
//! `scan_limit` letters or `scan_time`, whichever comes first; the answer then says it was cut
//! (`complete: false`) and how far it got. While it reads, another `dlq` command on the same
//! queue sees only what it does not hold, so the API keeps its passes short.

use super::{Dlq, DlqError, DlqQueue};
use crate::event::AccountId;
use crate::subscription::attempts::{self, AttemptRecord, LOG_SIZE};
use crate::subscription::store::{Store, StoreError};
use crate::subscription::Webhook;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use utoipa::ToSchema;

/// How much a status looks at.
#[derive(Clone, Copy, Debug)]
pub struct StatusOptions {
    /// Last attempts shown per webhook.
    pub last: usize,
    /// Dead letters read at most, and for at most how long.
    pub scan_limit: u32,
    pub scan_time: Duration,
}

/// One attempt as the status shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AttemptSummary {
    /// RFC 3339, when the attempt ended.
    pub at: String,
    pub attempt: u32,
    pub event_id: String,
    pub event_type: String,
    /// The HTTP status, null without a response.
    pub status: Option<u16>,
    /// Why there was no response, or none.
    pub error: Option<String>,
}

/// The attempt log's verdict (the last up to 100 attempts of the webhook).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SuccessRate {
    /// Attempts in the log.
    pub attempts: usize,
    /// Of those, answered with 2xx.
    pub succeeded: usize,
    /// `succeeded / attempts`, null without attempts.
    pub rate: Option<f64>,
}

/// Dead letters counted by reason.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct DeadLetterCount {
    pub total: u64,
    /// e.g. `{"exhausted": 120, "gone": 1}`
    pub by_reason: BTreeMap<String, u64>,
}

impl DeadLetterCount {
    fn add(&mut self, reason: &str) {
        self.total += 1;
        *self.by_reason.entry(reason.to_owned()).or_default() += 1;
    }
}

/// One webhook of the account.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookStatus {
    pub id: String,
    pub url: String,
    /// `standard` or `inplayer`.
    pub format: String,
    pub enabled: bool,
    /// Why hookrelay disabled it (e.g. `gone`), null when enabled.
    pub disabled_reason: Option<String>,
    /// Since when attempts have failed without a success (RFC 3339), null if the last
    /// attempt succeeded or none failed.
    pub failing_since: Option<String>,
    /// The failing period's last status or error (`HTTP 500`, `connection refused`), null
    /// when the webhook is not failing.
    pub last_error: Option<String>,
    /// Failed attempts in a row in the failing period (0 when not failing).
    pub consecutive_failures: u64,
    pub success_rate: SuccessRate,
    /// Newest first.
    pub last_attempts: Vec<AttemptSummary>,
    /// Its deliveries in the dead-letter queue (within what the pass read, see `dlq`).
    pub dead_letters: DeadLetterCount,
}

/// How much of the dead-letter queue the pass read.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DlqPass {
    /// Letters in `<prefix>.dlq.deliveries` when counted, and letters read.
    pub depth: u32,
    pub read: u32,
    /// False when the pass was cut (scan limit or time) or could not read: the counts are
    /// then lower bounds.
    pub complete: bool,
    /// Why the counts are incomplete, if they are.
    pub note: Option<String>,
}

/// An account's webhooks and what is wrong with them.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AccountStatus {
    pub account_id: String,
    pub webhooks: Vec<WebhookStatus>,
    /// Dead letters of this account whose webhook no longer exists.
    pub dead_letters_of_deleted_webhooks: DeadLetterCount,
    pub dlq: DlqPass,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading the account's webhooks")]
    Store(#[from] StoreError),
}

/// The status of `account`; `dlq` is `None` (or fails) when the broker cannot be reached, and
/// the answer says so instead of failing: the Redis half is still worth seeing.
pub async fn account_status(
    store: &Store,
    dlq: Result<&Dlq, String>,
    account: &AccountId,
    options: StatusOptions,
) -> Result<AccountStatus, StatusError> {
    let webhooks = store.snapshot(account).await?.webhooks;
    let mut statuses = Vec::with_capacity(webhooks.len());
    for webhook in &webhooks {
        statuses.push(webhook_status(store, webhook, options.last).await?);
    }
    let mut by_webhook: HashMap<String, DeadLetterCount> = HashMap::new();
    let pass = match dlq {
        Ok(dlq) => match count_dead_letters(dlq, account, options, &mut by_webhook).await {
            Ok(pass) => pass,
            Err(e) => unread(format!("the dead-letter queue could not be read: {e}")),
        },
        Err(why) => unread(why),
    };
    for status in &mut statuses {
        if let Some(count) = by_webhook.remove(&status.id) {
            status.dead_letters = count;
        }
    }
    let mut deleted = DeadLetterCount::default();
    for count in by_webhook.into_values() {
        for (reason, n) in count.by_reason {
            deleted.total += n;
            *deleted.by_reason.entry(reason).or_default() += n;
        }
    }
    Ok(AccountStatus {
        account_id: account.to_string(),
        webhooks: statuses,
        dead_letters_of_deleted_webhooks: deleted,
        dlq: pass,
    })
}

fn unread(note: String) -> DlqPass {
    DlqPass {
        depth: 0,
        read: 0,
        complete: false,
        note: Some(note),
    }
}

async fn webhook_status(
    store: &Store,
    webhook: &Webhook,
    last: usize,
) -> Result<WebhookStatus, StoreError> {
    let log = attempts::recent(store, &webhook.account_id, &webhook.id, LOG_SIZE as usize).await?;
    let failing_since = attempts::failing_since(store, &webhook.account_id, &webhook.id).await?;
    let period = crate::subscription::health::period(store, &webhook.account_id, &webhook.id)
        .await?
        .unwrap_or_default();
    Ok(WebhookStatus {
        id: webhook.id.to_string(),
        url: webhook.url.as_str().to_owned(),
        format: serde_json::to_value(webhook.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        enabled: webhook.enabled,
        disabled_reason: webhook.disabled_reason.clone(),
        failing_since: failing_since.map(rfc3339),
        last_error: period.last_error,
        consecutive_failures: period.consecutive_failures,
        success_rate: success_rate(&log),
        last_attempts: log.iter().take(last).map(summary).collect(),
        dead_letters: DeadLetterCount::default(),
    })
}

/// The share of 2xx answers in the log. Pure.
pub fn success_rate(log: &[AttemptRecord]) -> SuccessRate {
    let succeeded = log.iter().filter(|r| r.succeeded()).count();
    SuccessRate {
        attempts: log.len(),
        succeeded,
        rate: (!log.is_empty()).then(|| succeeded as f64 / log.len() as f64),
    }
}

fn summary(r: &AttemptRecord) -> AttemptSummary {
    AttemptSummary {
        at: rfc3339(r.at),
        attempt: r.attempt,
        event_id: r.event_id.clone(),
        event_type: r.event_type.clone(),
        status: r.status,
        error: r.error.clone(),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Reads the deliveries DLQ in order (handing everything back), counting the account's letters
/// by webhook and reason, within the limits of `options`.
async fn count_dead_letters(
    dlq: &Dlq,
    account: &AccountId,
    options: StatusOptions,
    by_webhook: &mut HashMap<String, DeadLetterCount>,
) -> Result<DlqPass, DlqError> {
    let deadline = tokio::time::Instant::now() + options.scan_time;
    let mut snapshot = dlq.open(DlqQueue::Deliveries).await?;
    let mut cut = None;
    let counted = async {
        loop {
            if snapshot.read >= options.scan_limit && snapshot.read < snapshot.depth {
                cut = Some(format!("read the first {} letters only (scan limit)", snapshot.read));
                break;
            }
            let next = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    cut = Some(format!("read {} letters in {:?} (time limit)", snapshot.read, options.scan_time));
                    break;
                }
                next = snapshot.next() => next?,
            };
            let Some(held) = next else { break };
            let l = held.letter;
            if l.account_id.as_deref() == Some(account.as_str()) {
                let webhook = l.webhook_id.unwrap_or_default();
                by_webhook.entry(webhook).or_default().add(&l.reason);
            }
        }
        Ok::<(), DlqError>(())
    }
    .await;
    if snapshot.stalled() && cut.is_none() {
        cut = Some("part of the queue is held by another consumer (a dlq command?)".into());
    }
    let pass = DlqPass {
        depth: snapshot.depth,
        read: snapshot.read,
        complete: cut.is_none(),
        note: cut,
    };
    // Nothing was acked: whatever the close says, every message is back.
    let _ = snapshot.release().await;
    counted.map(|()| pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Option<u16>) -> AttemptRecord {
        AttemptRecord {
            at: Utc::now(),
            attempt: 1,
            event_id: "evt_1".into(),
            event_type: "payment.card.success".into(),
            status,
            error: status.is_none().then(|| "timeout".to_owned()),
            duration_ms: 5,
            response_excerpt: String::new(),
            event: None,
        }
    }

    #[test]
    fn the_success_rate_counts_only_2xx_answers() {
        let log = [
            record(Some(200)),
            record(Some(204)),
            record(Some(500)),
            record(None),
        ];
        let rate = success_rate(&log);
        assert_eq!((rate.attempts, rate.succeeded), (4, 2));
        assert_eq!(rate.rate, Some(0.5));
        assert_eq!(success_rate(&[]).rate, None);
    }
}
