//! The Redis subscription store. Every key of an account carries the account as a hash tag
//! (`<prefix>:{<account>}:…`), so each write is one Lua script on one slot, atomic and valid on
//! Redis Cluster:
//! - `<prefix>:{A}:webhooks`  hash webhook id → webhook JSON
//! - `<prefix>:{A}:urls`      hash url → webhook id (no duplicate URL in an account)
//! - `<prefix>:{A}:version`   bumped by every write; published on `<prefix>:changes` as "A v"
//! - `<prefix>:{A}:rate:<id>` a rate-limited webhook's next free slot (`worker::rate_limit`)
//! - `<prefix>:webhook-accounts` hash webhook id → account, so commands can take a bare id.
//!
//! With `redis.secret_key` set, the secrets in the webhook JSON are sealed (XChaCha20-Poly1305,
//! bound to the account and webhook id); secrets stored in plain text stay readable.

use super::{EventFilter, Format, PreviousSecret, RateLimit, Webhook, WebhookId, WebhookUrl};
use super::{UrlError, MAX_WEBHOOKS_PER_ACCOUNT as LIMIT};
use crate::config::SecretKey;
use crate::delivery::signing::Secret;
use crate::event::AccountId;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
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
}

impl StoreError {
    /// Whether Redis itself failed (worth waiting out), as opposed to a refusal or bad data.
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Redis(_) | StoreError::Timeout(_))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Unreadable(RecordError::Json(e))
    }
}

/// Why one stored webhook cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a webhook record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("its secret is encrypted, and redis.secret_key is not set")]
    SecretNeedsKey,
    #[error("its secret does not decrypt with this redis.secret_key")]
    SecretWrongKey,
    #[error("its secret is invalid")]
    SecretInvalid,
    #[error("its account id is invalid")]
    Account,
}

/// A stored webhook that could not be read, with whatever of it could be: its deliveries are
/// dead-lettered as `webhook_unreadable` (DESIGN §4) instead of failing the account's lookup.
#[derive(Debug)]
pub struct UnreadableWebhook {
    /// The hash field it is stored under: its id, kept even if malformed so that on-call can
    /// find the record.
    pub id: String,
    pub url: Option<String>,
    pub events: Option<EventFilter>,
    pub enabled: Option<bool>,
    pub error: RecordError,
}

impl UnreadableWebhook {
    /// Whether an event of type `t` may have been meant for it: when its filter or its
    /// enabled flag cannot be read either, every event might be (at-least-once).
    pub fn may_match(&self, t: crate::event::EventType) -> bool {
        self.enabled != Some(false) && self.events.is_none_or(|e| e.matches(t))
    }

    /// Reads what can be read of a record that did not decode.
    fn salvage(id: String, json: &str, error: RecordError) -> Self {
        #[derive(Deserialize)]
        struct Partial {
            url: Option<Box<serde_json::value::RawValue>>,
            events: Option<Box<serde_json::value::RawValue>>,
            enabled: Option<bool>,
        }
        let partial: Option<Partial> = serde_json::from_str(json).ok();
        let field = |raw: &Option<Box<serde_json::value::RawValue>>| {
            raw.as_ref().map(|r| r.get().to_owned())
        };
        let (url, events, enabled) = match &partial {
            Some(p) => (
                field(&p.url).and_then(|u| serde_json::from_str::<String>(&u).ok()),
                field(&p.events).and_then(|e| serde_json::from_str::<EventFilter>(&e).ok()),
                p.enabled,
            ),
            None => (None, None, None),
        };
        UnreadableWebhook {
            id,
            url,
            events,
            enabled,
            error,
        }
    }
}

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

/// The stored form; the secret is kept because workers sign with it.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: WebhookId,
    account_id: String,
    url: WebhookUrl,
    events: EventFilter,
    secret: String,
    #[serde(default)]
    previous_secret: Option<String>,
    #[serde(default)]
    previous_secret_until: Option<DateTime<Utc>>,
    format: Format,
    enabled: bool,
    description: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    disabled_reason: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

/// Seals secrets at rest with `redis.secret_key`. A sealed secret is `sealed:v1:` and the base64
/// of a random 24-byte nonce and the ciphertext; the account and webhook id are its associated
/// data, so a sealed secret copied onto another webhook does not open.
#[derive(Clone)]
struct Sealer(XChaCha20Poly1305);

const SEALED: &str = "sealed:v1:";

impl Sealer {
    fn new(key: &SecretKey) -> Sealer {
        Sealer(XChaCha20Poly1305::new(&key.0.into()))
    }

    fn seal(&self, secret: &Secret, aad: &str) -> String {
        // 24 random bytes: XChaCha's nonce is long enough to be drawn at random without a
        // realistic chance of repeating.
        let nonce: [u8; 24] = rand::random();
        let payload = Payload {
            msg: secret.expose().as_bytes(),
            aad: aad.as_bytes(),
        };
        // Encryption only fails for messages of gigabytes; a secret is under 100 bytes.
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("a secret seals");
        format!("{SEALED}{}", B64.encode([&nonce[..], &sealed].concat()))
    }

    fn open(&self, sealed: &str, aad: &str) -> Option<String> {
        let bytes = B64.decode(sealed).ok()?;
        if bytes.len() < 24 {
            return None;
        }
        let (nonce, msg) = bytes.split_at(24);
        let payload = Payload {
            msg,
            aad: aad.as_bytes(),
        };
        let plain = self.0.decrypt(XNonce::from_slice(nonce), payload).ok()?;
        String::from_utf8(plain).ok()
    }
}

/// The stored form of a secret: sealed when there is a key, else the secret itself.
fn seal_secret(sealer: Option<&Sealer>, secret: &Secret, aad: &str) -> String {
    match sealer {
        Some(sealer) => sealer.seal(secret, aad),
        None => secret.expose().to_owned(),
    }
}

fn open_secret(sealer: Option<&Sealer>, stored: &str, aad: &str) -> Result<Secret, RecordError> {
    let text = match (stored.strip_prefix(SEALED), sealer) {
        (None, _) => stored.to_owned(),
        (Some(_), None) => return Err(RecordError::SecretNeedsKey),
        (Some(sealed), Some(sealer)) => sealer
            .open(sealed, aad)
            .ok_or(RecordError::SecretWrongKey)?,
    };
    Secret::parse(&text).map_err(|_| RecordError::SecretInvalid)
}

impl Stored {
    fn from_webhook(w: &Webhook, sealer: Option<&Sealer>) -> Stored {
        let aad = format!("{}/{}", w.account_id, w.id);
        Stored {
            id: w.id.clone(),
            account_id: w.account_id.as_str().to_owned(),
            url: w.url.clone(),
            events: w.events,
            secret: seal_secret(sealer, &w.secret, &aad),
            previous_secret: w
                .previous_secret
                .as_ref()
                .map(|p| seal_secret(sealer, &p.secret, &aad)),
            previous_secret_until: w.previous_secret.as_ref().map(|p| p.until),
            format: w.format,
            enabled: w.enabled,
            description: w.description.clone(),
            created_at: w.created_at,
            disabled_reason: w.disabled_reason.clone(),
            rate_limit: w.rate_limit,
        }
    }

    fn into_webhook(self, sealer: Option<&Sealer>) -> Result<Webhook, RecordError> {
        let aad = format!("{}/{}", self.account_id, self.id);
        let previous_secret = match (self.previous_secret, self.previous_secret_until) {
            (Some(s), Some(until)) => Some(PreviousSecret {
                secret: open_secret(sealer, &s, &aad)?,
                until,
            }),
            _ => None,
        };
        Ok(Webhook {
            id: self.id,
            account_id: AccountId::parse(&self.account_id).ok_or(RecordError::Account)?,
            url: self.url,
            events: self.events,
            secret: open_secret(sealer, &self.secret, &aad)?,
            previous_secret,
            format: self.format,
            enabled: self.enabled,
            description: self.description,
            created_at: self.created_at,
            disabled_reason: self.disabled_reason,
            rate_limit: self.rate_limit,
        })
    }
}

fn encode(w: &Webhook, sealer: Option<&Sealer>) -> String {
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_string(&Stored::from_webhook(w, sealer)).expect("webhook serializes")
}

fn decode(json: &str, sealer: Option<&Sealer>) -> Result<Webhook, RecordError> {
    serde_json::from_str::<Stored>(json)?.into_webhook(sealer)
}

// Results below zero are refusals; otherwise the account's new version.
const LIMIT_REACHED: i64 = -1;
const DUPLICATE_URL: i64 = -2;
const NOT_FOUND: i64 = -3;
const CONFLICT: i64 = -4;

/// KEYS: webhooks, urls, version. ARGV: id, url, json, limit, channel, account.
const CREATE: &str = r#"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {-1, ''} end
local owner = redis.call('HGET', KEYS[2], ARGV[2])
if owner then return {-2, owner} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. v)
return {v, ''}
"#;

/// Compare-and-set of one webhook. ARGV: id, expected json, new json, old url, new url, channel,
/// account.
const UPDATE: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {-3, ''} end
if cur ~= ARGV[2] then return {-4, ''} end
if ARGV[4] ~= ARGV[5] then
  local owner = redis.call('HGET', KEYS[2], ARGV[5])
  if owner and owner ~= ARGV[1] then return {-2, owner} end
  redis.call('HDEL', KEYS[2], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[6], ARGV[7] .. ' ' .. v)
return {v, ''}
"#;

/// ARGV: id, channel, account.
const DELETE: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {-3, ''} end
redis.call('HDEL', KEYS[2], cjson.decode(cur)['url'])
redis.call('HDEL', KEYS[1], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. v)
return {v, ''}
"#;

/// The associated data of the key-check value (see [`Store::verify_secret_key`]).
const KEY_CHECK_AAD: &str = "hookrelay secret-key-check";
/// Stored webhooks tried when no key-check value exists yet, and SCAN calls to find them.
const KEY_CHECK_SAMPLE: usize = 100;
const KEY_CHECK_SCANS: usize = 20;

/// Why the configured `redis.secret_key` cannot be used with what is stored.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error("webhook secrets under redis prefix {0:?} are encrypted, but redis.secret_key is not set: set the key they were encrypted with")]
    KeyMissing(String),
    #[error("redis.secret_key does not open the webhook secrets stored under redis prefix {0:?} (they were encrypted with another key): set the key they were encrypted with")]
    WrongKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    sealer: Option<Sealer>,
}

impl Store {
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Store, StoreError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| StoreError::Timeout(timeout))??;
        Ok(Store {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            sealer: None,
        })
    }

    /// Encrypts webhook secrets with `key` (`redis.secret_key`) when writing, and decrypts them
    /// when reading. Without a key, secrets are written in plain text (the long-running
    /// commands, worker and api, warn about it at start-up).
    pub fn with_secret_key(mut self, key: Option<&SecretKey>) -> Store {
        self.sealer = key.map(Sealer::new);
        self
    }

    /// Connects with the `[redis]` settings: URL, prefix, lookup timeout and secret key.
    pub async fn from_settings(redis: &crate::config::RedisSettings) -> Result<Store, StoreError> {
        Ok(
            Store::connect(&redis.url, &redis.prefix, redis.lookup_timeout)
                .await?
                .with_secret_key(redis.secret_key.as_ref()),
        )
    }

    /// Whether secrets are encrypted at rest.
    pub fn seals_secrets(&self) -> bool {
        self.sealer.is_some()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel on which every write announces "<account> <version>".
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    fn keys(&self, account: &AccountId) -> [String; 3] {
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

    /// The shared rate-limit state of one webhook (see `worker::rate_limit`).
    pub fn rate_limit_key(&self, account: &AccountId, id: &WebhookId) -> String {
        format!("{}:{{{}}}:rate:{}", self.prefix, account, id)
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

    fn index_key(&self) -> String {
        format!("{}:webhook-accounts", self.prefix)
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// All webhooks of an account and the version they are at, read atomically.
    pub async fn snapshot(&self, account: &AccountId) -> Result<Snapshot, StoreError> {
        let [webhooks, _, version] = self.keys(account);
        let mut conn = self.conn.clone();
        let (version, entries): (Option<u64>, Vec<(String, String)>) = self
            .timed(
                redis::pipe()
                    .atomic()
                    .get(&version)
                    .hgetall(&webhooks)
                    .query_async(&mut conn),
            )
            .await?;
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
    /// [`Store::create`] makes atomically, so it must only be used on fresh accounts.
    pub async fn seed(&self, accounts: &[AccountId], new: &NewWebhook) -> Result<(), StoreError> {
        for chunk in accounts.chunks(1000) {
            let mut pipe = redis::pipe();
            for account in chunk {
                let webhook = new.clone().into_webhook(account);
                let [webhooks, urls, version] = self.keys(account);
                pipe.hset(
                    &webhooks,
                    webhook.id.as_str(),
                    encode(&webhook, self.sealer.as_ref()),
                )
                .ignore()
                .hset(&urls, webhook.url.as_str(), webhook.id.as_str())
                .ignore()
                .incr(&version, 1)
                .ignore()
                .hset(self.index_key(), webhook.id.as_str(), account.as_str())
                .ignore();
            }
            self.run_pipeline(&pipe).await?;
        }
        Ok(())
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
            _ => Ok(webhook),
        }
    }

    async fn run(
        &self,
        script: &str,
        keys: &[String],
        args: &[&str],
    ) -> Result<(i64, String), StoreError> {
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
        }
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
        self.modify(account, id, |w| {
            w.previous_secret = Some(PreviousSecret {
                secret: w.secret.clone(),
                until,
            });
            w.secret = fresh.clone();
        })
        .await
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
        let mut conn = self.conn.clone();
        let keys = [
            self.attempts_key(account, id),
            self.failing_key(account, id),
            self.rate_limit_key(account, id),
        ];
        self.timed(conn.del::<_, ()>(&keys)).await?;
        self.drop_index(id).await
    }

    /// Deletes every key under this store's prefix (tests and `bench` clean up with it).
    /// Refuses a `redis.secret_key` (or its absence) that cannot open the secrets already
    /// stored under this prefix, so that a worker or API with the wrong key stops at start-up
    /// instead of failing every delivery of every account with an encrypted secret.
    ///
    /// The first process with a key stores a check value sealed with it
    /// (`<prefix>:secret-key-check`); later ones must open it. Before the check value exists,
    /// a bounded sample of stored webhooks is tried instead.
    pub async fn verify_secret_key(&self) -> Result<(), KeyCheckError> {
        let check_key = format!("{}:secret-key-check", self.prefix);
        let mut conn = self.conn.clone();
        let stored: Option<String> = self.timed(conn.get(&check_key)).await?;
        if let Some(sealed) = stored {
            let sealed = sealed.strip_prefix(SEALED).unwrap_or(&sealed);
            return match &self.sealer {
                None => Err(KeyCheckError::KeyMissing(self.prefix.clone())),
                Some(sealer) if sealer.open(sealed, KEY_CHECK_AAD).is_none() => {
                    Err(KeyCheckError::WrongKey(self.prefix.clone()))
                }
                Some(_) => Ok(()),
            };
        }
        self.verify_sample().await?;
        if let Some(sealer) = &self.sealer {
            let sealed = sealer.seal(&Secret::generate(), KEY_CHECK_AAD);
            let _: bool = self.timed(conn.set_nx(&check_key, sealed)).await?;
        }
        Ok(())
    }

    /// Tries to open the secrets of up to [`KEY_CHECK_SAMPLE`] stored webhooks.
    async fn verify_sample(&self) -> Result<(), KeyCheckError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:{{*}}:webhooks", self.prefix);
        let mut cursor = 0u64;
        let mut tried = 0;
        for _ in 0..KEY_CHECK_SCANS {
            let (next, keys): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            for key in keys {
                let values: Vec<String> = self.timed(conn.hvals(&key)).await?;
                for json in values {
                    match decode(&json, self.sealer.as_ref()) {
                        Err(RecordError::SecretNeedsKey) => {
                            return Err(KeyCheckError::KeyMissing(self.prefix.clone()))
                        }
                        Err(RecordError::SecretWrongKey) => {
                            return Err(KeyCheckError::WrongKey(self.prefix.clone()))
                        }
                        _ => tried += 1,
                    }
                    if tried >= KEY_CHECK_SAMPLE {
                        return Ok(());
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(())
    }

    pub async fn purge_prefix(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", self.prefix);
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
            let mut keys = Vec::new();
            while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                keys.push(k?);
            }
            keys
        };
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(500) {
            conn.del::<_, ()>(chunk).await?;
        }
        Ok(keys.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&SecretKey([byte; 32]))
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_webhook() {
        let secret = Secret::generate();
        let stored = seal_secret(Some(&sealer(1)), &secret, "68/wh_a");

        assert!(stored.starts_with(SEALED));
        assert!(!stored.contains(secret.expose()));
        let opened = open_secret(Some(&sealer(1)), &stored, "68/wh_a").unwrap();
        assert_eq!(opened.expose(), secret.expose());
        assert!(open_secret(Some(&sealer(2)), &stored, "68/wh_a").is_err());
        assert!(open_secret(Some(&sealer(1)), &stored, "68/wh_b").is_err());
        let err = open_secret(None, &stored, "68/wh_a").unwrap_err();
        assert!(err.to_string().contains("redis.secret_key"), "{err}");
    }

    #[test]
    fn plain_secrets_stay_readable_with_or_without_a_key() {
        let secret = Secret::generate();
        let stored = seal_secret(None, &secret, "68/wh_a");

        assert_eq!(stored, secret.expose());
        for key in [None, Some(sealer(1))] {
            let opened = open_secret(key.as_ref(), &stored, "68/wh_a").unwrap();
            assert_eq!(opened.expose(), secret.expose());
        }
    }
}
