//! The Redis side of `webhooks export` and `import` (the line format and the rules are in
//! `subscription::backup`): reading accounts as export lines, reading what an import must check
//! against, and writing an import's accounts in batches, each account in one atomic script.
//!
//! Every command names one account's keys or the index, so all of it works unchanged on a
//! Redis Cluster; the commands of a batch are sent concurrently and the multiplexed
//! connection pipelines them (one round trip per batch rather than per account).

use super::{Store, StoreError, LIMIT};
use crate::event::AccountId;
use crate::subscription::backup::{parse_line, Existing, Line, LineError};
use crate::subscription::connection::KeyPages;
use crate::subscription::record::Stored;
use crate::subscription::scripts::IMPORT;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::AsyncCommands;

/// Accounts read or written at once; bounds what is in hand and in flight.
const CONCURRENCY: usize = 64;

/// One account's webhooks as export lines, ordered by creation.
#[derive(Debug)]
pub struct ExportedAccount {
    pub account: AccountId,
    pub lines: Vec<String>,
    /// Records that do not read as a webhook of this account: their id and why. Not exported.
    pub unreadable: Vec<(String, String)>,
}

/// What an import wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportOutcome {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
}

impl Store {
    /// The keys of every account's webhooks, a page at a time (every master of a cluster).
    pub fn account_pages(&self) -> KeyPages {
        self.conn
            .key_pages(&format!("{}:{{*}}:webhooks", self.prefix))
    }

    /// The account of a key `account_pages` found (`None` for a key of another shape).
    pub fn account_of_key(&self, key: &str) -> Option<AccountId> {
        let account = key
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:webhooks")?;
        AccountId::parse(account)
    }

    /// Reads accounts as export lines, concurrently, in the order given.
    pub async fn export_accounts(
        &self,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<ExportedAccount>, StoreError> {
        stream::iter(accounts)
            .map(|account| self.export_account(account))
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }

    /// One account as export lines: each record as stored (secrets not opened), normalised.
    pub async fn export_account(&self, account: AccountId) -> Result<ExportedAccount, StoreError> {
        let [webhooks, _, _] = self.keys(&account);
        let mut conn = self.conn.clone();
        let entries: Vec<(String, String)> = self.timed(conn.hgetall(&webhooks)).await?;
        let mut records = Vec::with_capacity(entries.len());
        let mut unreadable = Vec::new();
        for (id, json) in entries {
            match Stored::parse(&json) {
                Ok(r) if r.account() == account.as_str() && r.id().as_str() == id => {
                    records.push(r)
                }
                Ok(_) => unreadable.push((id, "its id or account differ from its key".into())),
                Err(e) => unreadable.push((id, e.to_string())),
            }
        }
        records.sort_by(|a, b| {
            (a.created_at(), a.id().as_str()).cmp(&(b.created_at(), b.id().as_str()))
        });
        Ok(ExportedAccount {
            account,
            lines: records.iter().map(Stored::to_json).collect(),
            unreadable,
        })
    }

    /// Parses an import line with this store's `redis.secret_key` (see `backup::parse_line`).
    pub fn parse_backup_line(
        &self,
        number: u64,
        text: &str,
        allow_http: bool,
    ) -> Result<Line, LineError> {
        parse_line(number, text, self.sealer.as_ref(), allow_http)
    }

    /// What the store holds for each group's account (its webhooks' ids and URLs, and the
    /// index's owner of each line's id), for `backup::check_group`.
    pub async fn import_state(&self, groups: &[Vec<Line>]) -> Result<Vec<Existing>, StoreError> {
        let ids: Vec<&str> = groups.iter().flatten().map(|l| l.id.as_str()).collect();
        let mut owners: Vec<Option<String>> = if ids.is_empty() {
            Vec::new()
        } else {
            let mut conn = self.conn.clone();
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(self.index_key()).arg(&ids);
            self.timed(hmget.query_async(&mut conn)).await?
        };
        let stored: Vec<Vec<(String, Option<String>)>> = stream::iter(groups)
            .map(|g| self.stored_urls(&g[0].account))
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut states = Vec::with_capacity(groups.len());
        for (group, webhooks) in groups.iter().zip(stored) {
            let rest = owners.split_off(group.len().min(owners.len()));
            states.push(Existing {
                webhooks,
                owners: std::mem::replace(&mut owners, rest),
            });
        }
        Ok(states)
    }

    /// An account's stored webhooks: id and URL (`None` when the record does not read).
    async fn stored_urls(
        &self,
        account: &AccountId,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let [webhooks, _, _] = self.keys(account);
        let mut conn = self.conn.clone();
        let entries: Vec<(String, String)> = self.timed(conn.hgetall(&webhooks)).await?;
        Ok(entries
            .into_iter()
            .map(|(id, json)| {
                let url = Stored::parse(&json)
                    .ok()
                    .map(|r| r.url().as_str().to_owned());
                (id, url)
            })
            .collect())
    }

    /// Writes checked groups (one account each): the index first (as `create` does: a webhook
    /// findable by id but not stored reads as not found), then each account in one script
    /// that applies the rules again, atomically, and writes all of the account or nothing.
    /// Then waits for `redis.min_replicas` (every master of a cluster).
    pub async fn import_groups(&self, groups: &[Vec<Line>]) -> Result<ImportOutcome, StoreError> {
        let mut index = redis::pipe();
        for line in groups.iter().flatten() {
            index
                .hset(self.index_key(), line.id.as_str(), line.account.as_str())
                .ignore();
        }
        self.run_pipeline(&index).await?;
        let outcomes: Vec<ImportOutcome> = stream::iter(groups)
            .map(|g| self.import_account(g))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        self.confirm(&[]).await?;
        Ok(outcomes
            .into_iter()
            .fold(ImportOutcome::default(), |a, b| ImportOutcome {
                created: a.created + b.created,
                updated: a.updated + b.updated,
                unchanged: a.unchanged + b.unchanged,
            }))
    }

    async fn import_account(&self, lines: &[Line]) -> Result<ImportOutcome, StoreError> {
        let account = &lines[0].account;
        let keys = self.keys(account);
        let script = redis::Script::new(IMPORT);
        let mut invocation = script.prepare_invoke();
        for k in &keys {
            invocation.key(k);
        }
        invocation
            .arg(LIMIT)
            .arg(self.changes_channel())
            .arg(account.as_str());
        for line in lines {
            invocation
                .arg(line.id.as_str())
                .arg(&line.url)
                .arg(&line.json);
        }
        let mut conn = self.conn.clone();
        let (code, detail, updated): (i64, redis::Value, u64) =
            self.timed(invocation.invoke_async(&mut conn)).await?;
        match code {
            -1 => Err(StoreError::LimitReached(account.clone())),
            -2 => {
                let existing: String =
                    redis::from_redis_value(detail).map_err(redis::RedisError::from)?;
                // `updated` carries the index of the webhook whose URL is taken.
                let url = lines
                    .get(updated as usize)
                    .map(|l| l.url.clone())
                    .unwrap_or_default();
                Err(StoreError::DuplicateUrl {
                    account: account.clone(),
                    url,
                    existing,
                })
            }
            _ => {
                let created: u64 =
                    redis::from_redis_value(detail).map_err(redis::RedisError::from)?;
                let total = lines.len() as u64;
                Ok(ImportOutcome {
                    created,
                    updated,
                    unchanged: total.saturating_sub(created + updated),
                })
            }
        }
    }
}
