//! What can go wrong with the store, as values a caller branches on: the CLI's exit status, the
//! API's HTTP status and the worker's "outage or not" all read these variants.

use super::RecordError;
use crate::event::AccountId;
use crate::subscription::connection::ConnectError;
use crate::subscription::marker::StoreMissing;
use crate::subscription::{UrlError, WebhookId, MAX_WEBHOOKS_PER_ACCOUNT as LIMIT};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account {0} already has {LIMIT} webhooks, the most an account may have")]
    LimitReached(AccountId),
    #[error("account {account} already has a webhook for {url} ({existing})")]
    DuplicateUrl {
        account: AccountId,
        url: String,
        existing: String,
    },
    #[error("no webhook {0}")]
    NotFound(WebhookId),
    #[error("invalid webhook: {0}")]
    Url(#[from] UrlError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A stored record that cannot be read: a fact about the data, not an outage, so it is
    /// never waited out.
    #[error("a stored record is unreadable: {0}")]
    Unreadable(#[from] RecordError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `redis.min_replicas` was not met: the write is done on the primary, but a failover now
    /// could lose it.
    #[error("the write is on the Redis primary but unconfirmed: {confirmed} of the {wanted} replicas redis.min_replicas asks for acknowledged it within {timeout:?} (a failover now could lose it; check the replicas, then `webhooks list` or `show` before writing again)")]
    Unconfirmed {
        wanted: u32,
        confirmed: u32,
        timeout: Duration,
    },
    /// The store's marker is absent: new, lost, or not the store configured.
    #[error(transparent)]
    Missing(#[from] StoreMissing),
}

impl StoreError {
    /// Whether Redis itself failed (worth waiting out), as opposed to a refusal or bad data.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            StoreError::Redis(_) | StoreError::Timeout(_) | StoreError::Connect(_)
        )
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Unreadable(RecordError::Json(e))
    }
}
