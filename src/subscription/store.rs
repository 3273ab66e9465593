//! The Redis subscription store. Every key of an account carries the account as a hash tag
//! (`<prefix>:{<account>}:…`), so each write is one Lua script on one slot, atomic and valid on
//! Redis Cluster:
//! - `<prefix>:{A}:webhooks`  hash webhook id → webhook JSON
//! - `<prefix>:{A}:urls`      hash url → webhook id (no duplicate URL in an account)
//! - `<prefix>:{A}:version`   bumped by every write; published on `<prefix>:changes` as "A v"
//! - `<prefix>:{A}:rate:<id>` a rate-limited webhook's next free slot (`worker::rate_limit`)
//! - `<prefix>:webhook-accounts` hash webhook id → account, so commands can take a bare id.
//! - `<prefix>:store` the store's identity ([`super::marker`]): no marker, no work.
//!
//! - `<prefix>:secret-key-check` a value sealed with `redis.secret_key` ([`keycheck`]).
//!
//! This file reads and writes the webhooks. Opening a store (modes, options, the marker) is in
//! `open`, the key names and plain commands other modules use in `access`, the errors in
//! `error`, export and import in `backup`. The record's JSON and the sealing of its secrets are
//! in `record`, the Lua scripts in `scripts`. With `redis.secret_key` set, secrets are sealed
//! (XChaCha20-Poly1305, bound to the account and webhook id); secrets stored in plain text stay
//! readable.

use super::connection::RedisConn;
use super::record::{decode, encode, Sealer};
pub use super::record::{RecordError, UnreadableWebhook};
use super::scripts::{CONFLICT, CREATE, DELETE, DUPLICATE_URL, LIMIT_REACHED, NOT_FOUND};
use super::scripts::{SNAPSHOT, UPDATE};
use super::secret::Secret;
use super::MAX_WEBHOOKS_PER_ACCOUNT as LIMIT;
use super::{EventFilter, Format, PreviousSecret, RateLimit, Webhook, WebhookId, WebhookUrl};
use crate::event::AccountId;
use chrono::Utc;
pub use keycheck::KeyCheckError;
use redis::AsyncCommands;
use std::time::Duration;

mod access;
mod backup;
mod error;
mod keycheck;
mod open;
pub use backup::{ExportedAccount, ImportOutcome};
pub use error::StoreError;

/// What a merchant asks for when adding a webhook.
#[derive(Clone, Debug)]
pub struct NewWebhook {
    pub url: WebhookUrl,
    pub events: EventFilter,
    pub format: Format,
    pub description: String,
    pub rate_limit: Option<RateLimit>,
}

impl NewWebhook {
    /// The webhook it becomes in `account`: a fresh id and secret, enabled.
    fn into_webhook(self, account: &AccountId) -> Webhook {
        Webhook {
            id: WebhookId::generate(),
            account_id: account.clone(),
            url: self.url,
            events: self.events,
            secret: Secret::generate(),
            previous_secret: None,
            format: self.format,
            enabled: true,
            description: self.description,
            created_at: Utc::now(),
            disabled_reason: None,
            rate_limit: self.rate_limit,
        }
    }
}

/// A change to a webhook; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct WebhookPatch {
    pub url: Option<WebhookUrl>,
    pub events: Option<EventFilter>,
    pub format: Option<Format>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
    /// `Some(None)` removes the limit.
    pub rate_limit: Option<Option<RateLimit>>,
}

/// An account's webhooks as of one version.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub webhooks: Vec<Webhook>,
    /// Records that could not be read; each is logged with its id when read.
    pub unreadable: Vec<UnreadableWebhook>,
}

#[derive(Clone)]
pub struct Store {
    conn: RedisConn,
    prefix: String,
    /// Where Redis is (address, database), for messages.
    location: String,
    timeout: Duration,
    sealer: Option<Sealer>,
    /// `redis.min_replicas`: replicas that must confirm a merchant's write (see [`Store::confirm`]).
    min_replicas: u32,
}

impl Store {
    async fn timed_store<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// All webhooks of an account and the version they are at, read atomically.
    pub async fn snapshot(&self, account: &AccountId) -> Result<Snapshot, StoreError> {
        let [webhooks, _, version] = self.keys(account);
        // One script rather than MULTI/EXEC: a script is one command, which the cluster
        // client follows to the importing node (ASK) while the account's slot migrates.
        let (version, entries): (Option<u64>, Vec<(String, String)>) =
            self.run(SNAPSHOT, &[version, webhooks], &[]).await?;
        let mut webhooks = Vec::with_capacity(entries.len());
        let mut unreadable = Vec::new();
        for (id, json) in entries {
            match decode(&json, self.sealer.as_ref()) {
                Ok(w) => webhooks.push(w),
                Err(error) => {
                    tracing::error!(%account, webhook_id = %id, %error,
                        "stored webhook is unreadable; its deliveries are dead-lettered as webhook_unreadable");
                    unreadable.push(UnreadableWebhook::salvage(id, &json, error));
                }
            }
        }
        webhooks.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
        Ok(Snapshot {
            version: version.unwrap_or(0),
            webhooks,
            unreadable,
        })
    }

    /// Writes one new webhook per account in pipelined batches, for benchmark set-up only: it
    /// skips the per-account rules (limit, duplicate URL) and the change announcements that
    /// [`Store::create`] makes atomically, so it must only be used on fresh accounts that no
    /// running worker has looked up yet. Returns each new webhook's secret, in order.
    pub async fn seed(
        &self,
        webhooks: Vec<(AccountId, NewWebhook)>,
    ) -> Result<Vec<Secret>, StoreError> {
        let mut secrets = Vec::with_capacity(webhooks.len());
        for chunk in webhooks.chunks(1000) {
            // A cluster refuses a pipeline across slots: the index (one key) gets one
            // pipeline, and each account (its keys share its hash tag) one of its own; the
            // multiplexed connection still sends them back to back.
            let mut index = redis::pipe();
            let mut accounts = Vec::with_capacity(chunk.len());
            for (account, new) in chunk {
                let webhook = new.clone().into_webhook(account);
                let [webhooks, urls, version] = self.keys(account);
                let mut pipe = redis::pipe();
                pipe.hset(
                    &webhooks,
                    webhook.id.as_str(),
                    encode(&webhook, self.sealer.as_ref()),
                )
                .ignore()
                .hset(&urls, webhook.url.as_str(), webhook.id.as_str())
                .ignore()
                .incr(&version, 1)
                .ignore();
                accounts.push(pipe);
                index
                    .hset(self.index_key(), webhook.id.as_str(), account.as_str())
                    .ignore();
                secrets.push(webhook.secret);
            }
            self.run_pipeline(&index).await?;
            futures_util::future::try_join_all(accounts.iter().map(|p| self.run_pipeline(p)))
                .await?;
        }
        Ok(secrets)
    }

    pub async fn create(
        &self,
        account: &AccountId,
        new: NewWebhook,
    ) -> Result<Webhook, StoreError> {
        let webhook = new.into_webhook(account);
        // The index goes first: a webhook findable by id but not yet created reads as not found,
        // while the reverse order could leave a created webhook without its index.
        self.set_index(&webhook.id, account).await?;
        let keys = self.keys(account);
        let (code, owner): (i64, String) = self
            .run(
                CREATE,
                &keys,
                &[
                    webhook.id.as_str(),
                    webhook.url.as_str(),
                    &encode(&webhook, self.sealer.as_ref()),
                    &LIMIT.to_string(),
                    &self.changes_channel(),
                    account.as_str(),
                ],
            )
            .await?;
        match code {
            LIMIT_REACHED => {
                self.drop_index(&webhook.id).await?;
                Err(StoreError::LimitReached(account.clone()))
            }
            DUPLICATE_URL => {
                self.drop_index(&webhook.id).await?;
                Err(StoreError::DuplicateUrl {
                    account: account.clone(),
                    url: webhook.url.as_str().to_owned(),
                    existing: owner,
                })
            }
            _ => {
                self.confirm(&[&keys[0], &self.index_key()]).await?;
                Ok(webhook)
            }
        }
    }

    /// Runs a Lua script on `keys` (one slot: the account's). On a cluster, it follows ASK and
    /// is retried on TRYAGAIN (a script answered TRYAGAIN did not run; see `connection`).
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[String],
        args: &[&str],
    ) -> Result<T, StoreError> {
        let script = redis::Script::new(script);
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(*a);
        }
        let mut conn = self.conn.clone();
        self.timed(invocation.invoke_async(&mut conn)).await
    }

    /// Whether every key is on one node (not a cluster): see [`RedisConn::one_node`].
    pub(crate) fn one_node(&self) -> bool {
        self.conn.one_node()
    }

    /// Runs a prepared script invocation (its keys on one slot), as [`Store::run`] does: on a
    /// cluster it follows ASK and is retried on TRYAGAIN.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.timed(invocation.invoke_async(&mut conn)).await
    }

    async fn set_index(&self, id: &WebhookId, account: &AccountId) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.timed(conn.hset::<_, _, _, ()>(self.index_key(), id.as_str(), account.as_str()))
            .await
    }

    async fn drop_index(&self, id: &WebhookId) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.timed(conn.hdel::<_, _, ()>(self.index_key(), id.as_str()))
            .await
    }

    /// The account a webhook id belongs to.
    pub async fn account_of(&self, id: &WebhookId) -> Result<AccountId, StoreError> {
        let mut conn = self.conn.clone();
        let account: Option<String> = self.timed(conn.hget(self.index_key(), id.as_str())).await?;
        account
            .and_then(|a| AccountId::parse(&a))
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    /// One webhook of an account, as stored now, with the raw JSON for compare-and-set.
    async fn read(
        &self,
        account: &AccountId,
        id: &WebhookId,
    ) -> Result<(Webhook, String), StoreError> {
        let [webhooks, _, _] = self.keys(account);
        let mut conn = self.conn.clone();
        let json: Option<String> = self.timed(conn.hget(&webhooks, id.as_str())).await?;
        let json = json.ok_or_else(|| StoreError::NotFound(id.clone()))?;
        Ok((decode(&json, self.sealer.as_ref())?, json))
    }

    pub async fn get(&self, account: &AccountId, id: &WebhookId) -> Result<Webhook, StoreError> {
        Ok(self.read(account, id).await?.0)
    }

    /// Finds a webhook by id alone (through the index).
    pub async fn find(&self, id: &WebhookId) -> Result<Webhook, StoreError> {
        let account = self.account_of(id).await?;
        self.get(&account, id).await
    }

    /// Applies `change` to the stored webhook atomically (compare-and-set, retried on a race).
    pub async fn modify(
        &self,
        account: &AccountId,
        id: &WebhookId,
        change: impl Fn(&mut Webhook),
    ) -> Result<Webhook, StoreError> {
        loop {
            let (current, json) = self.read(account, id).await?;
            let mut next = current.clone();
            change(&mut next);
            let keys = self.keys(account);
            let (code, owner): (i64, String) = self
                .run(
                    UPDATE,
                    &keys,
                    &[
                        id.as_str(),
                        &json,
                        &encode(&next, self.sealer.as_ref()),
                        current.url.as_str(),
                        next.url.as_str(),
                        &self.changes_channel(),
                        account.as_str(),
                    ],
                )
                .await?;
            match code {
                CONFLICT => continue,
                NOT_FOUND => return Err(StoreError::NotFound(id.clone())),
                DUPLICATE_URL => {
                    return Err(StoreError::DuplicateUrl {
                        account: account.clone(),
                        url: next.url.as_str().to_owned(),
                        existing: owner,
                    })
                }
                _ => return Ok(next),
            }
        }
    }

    pub async fn update(
        &self,
        account: &AccountId,
        id: &WebhookId,
        patch: WebhookPatch,
    ) -> Result<Webhook, StoreError> {
        let updated = self
            .modify(account, id, |w| {
                if let Some(url) = &patch.url {
                    w.url = url.clone();
                }
                if let Some(events) = patch.events {
                    w.events = events;
                }
                if let Some(format) = patch.format {
                    w.format = format;
                }
                if let Some(description) = &patch.description {
                    w.description = description.clone();
                }
                if let Some(rate_limit) = patch.rate_limit {
                    w.rate_limit = rate_limit;
                }
                if let Some(enabled) = patch.enabled {
                    w.enabled = enabled;
                    if enabled {
                        // Enabling clears why hookrelay had disabled it (DESIGN §5).
                        w.disabled_reason = None;
                    }
                }
            })
            .await?;
        if patch.enabled == Some(true) {
            // A fresh start: failures before the merchant re-enabled it do not count.
            let mut conn = self.conn.clone();
            self.timed(conn.del::<_, ()>(self.failing_key(account, id)))
                .await?;
            // The failing period ends; the next success is announced as a recovery.
            super::health::reenabled(self, account, id).await?;
        }
        self.confirm(&[&self.keys(account)[0]]).await?;
        Ok(updated)
    }

    /// Disables a webhook and records why (e.g. `gone`).
    pub async fn disable(
        &self,
        account: &AccountId,
        id: &WebhookId,
        reason: &str,
    ) -> Result<Webhook, StoreError> {
        self.modify(account, id, |w| {
            w.enabled = false;
            w.disabled_reason = Some(reason.to_owned());
        })
        .await
    }

    /// A new secret; the old one keeps signing for `grace`.
    pub async fn rotate_secret(
        &self,
        account: &AccountId,
        id: &WebhookId,
        grace: Duration,
    ) -> Result<Webhook, StoreError> {
        let until = Utc::now() + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let fresh = Secret::generate();
        let rotated = self
            .modify(account, id, |w| {
                w.previous_secret = Some(PreviousSecret {
                    secret: w.secret.clone(),
                    until,
                });
                w.secret = fresh.clone();
            })
            .await?;
        self.confirm(&[&self.keys(account)[0]]).await?;
        Ok(rotated)
    }

    pub async fn delete(&self, account: &AccountId, id: &WebhookId) -> Result<(), StoreError> {
        let keys = self.keys(account);
        let (code, _): (i64, String) = self
            .run(
                DELETE,
                &keys,
                &[id.as_str(), &self.changes_channel(), account.as_str()],
            )
            .await?;
        if code == NOT_FOUND {
            return Err(StoreError::NotFound(id.clone()));
        }
        let keys = [
            self.attempts_key(account, id),
            self.failing_key(account, id),
            self.rate_limit_key(account, id),
            self.health_key(account, id),
        ];
        // Four keys: TRYAGAIN (retried) while a migration has moved some of them but not all.
        self.run_command(redis::cmd("DEL").arg(&keys)).await?;
        self.drop_index(id).await?;
        self.confirm(&[&self.keys(account)[0], &self.index_key()])
            .await
    }

    /// Deletes every key under this store's prefix (tests and `bench` clean up with it).
    pub async fn purge_prefix(&self) -> Result<u64, StoreError> {
        let pattern = format!("{}:*", self.prefix);
        // Every master of a cluster is scanned; DEL of keys in several slots is split by the
        // cluster client.
        let keys = self.conn.scan_match(&pattern).await?;
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(500) {
            conn.del::<_, ()>(chunk).await?;
        }
        Ok(keys.len() as u64)
    }
}
