//! The store's Redis names and plain commands, for the modules that keep their own data beside
//! the webhooks (the attempt log, failing-since, rate limits, the change feed): every key is
//! named here, under the account's hash tag, and every command runs with the store's timeout.

use super::{Store, StoreError};
use crate::event::AccountId;
use crate::subscription::WebhookId;

impl Store {
    /// The pub/sub channel on which every write announces "<account> <version>".
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    pub(crate) fn keys(&self, account: &AccountId) -> [String; 3] {
        let base = format!("{}:{{{}}}", self.prefix, account);
        [
            format!("{base}:webhooks"),
            format!("{base}:urls"),
            format!("{base}:version"),
        ]
    }

    /// The attempt log of one webhook (see `attempts`).
    pub fn attempts_key(&self, account: &AccountId, id: &WebhookId) -> String {
        format!("{}:{{{}}}:attempts:{}", self.prefix, account, id)
    }

    /// Since when (Unix seconds) a webhook's attempts fail without a success; absent if not.
    pub fn failing_key(&self, account: &AccountId, id: &WebhookId) -> String {
        format!("{}:{{{}}}:failing:{}", self.prefix, account, id)
    }

    /// The health record of one webhook: its failing period and the operational events decided
    /// and not yet confirmed (see `health`).
    pub fn health_key(&self, account: &AccountId, id: &WebhookId) -> String {
        format!("{}:{{{}}}:health:{}", self.prefix, account, id)
    }

    /// The shared rate-limit state of one webhook (see `worker::rate_limit`).
    pub fn rate_limit_key(&self, account: &AccountId, id: &WebhookId) -> String {
        format!("{}:{{{}}}:rate:{}", self.prefix, account, id)
    }

    /// Runs one command whose reply is ignored.
    pub async fn run_command(&self, cmd: &redis::Cmd) -> Result<(), StoreError> {
        self.query_command(cmd).await
    }

    /// Runs one command and decodes its reply. A single-key command is what follows a slot
    /// migration safely (see `attempts::write_webhook`).
    pub async fn query_command<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.timed(cmd.query_async::<T>(&mut conn)).await
    }

    /// Runs a pipeline whose replies are ignored.
    pub async fn run_pipeline(&self, pipe: &redis::Pipeline) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Runs a pipeline and decodes its replies.
    pub async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<T>(&mut conn)).await
    }

    pub(crate) fn index_key(&self) -> String {
        format!("{}:webhook-accounts", self.prefix)
    }

    pub(super) async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}
