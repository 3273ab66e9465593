//! A webhook's health record, `<prefix>:{A}:health:<webhook>` (a hash in the account's slot),
//! where the operational events about it are decided: once per change whatever the number of
//! workers, and never lost to a crash.
//!
//! Every attempt's outcome goes through one Lua script ([`OBSERVE`]) on the record alone (one
//! key: atomic on Redis Cluster, and safe while its slot migrates, see `attempts`). The script
//! keeps the failing period (since when, last error, consecutive failures, thresholds already
//! announced, disabled or not) and, when the outcome changes the state, writes the event's
//! whole body into the record as *pending* with a lease, in the same step. So of N workers
//! failing the same endpoint at once exactly one sees each change. The worker that got it
//! publishes it with confirms and then removes it ([`confirmed`]); one that crashes (or whose
//! publish fails) in between leaves it pending, and the first call after the lease ran out
//! takes it again: the same body, the same id (at least once; consumers dedupe on `id`).
//!
//! The lease is there only so that N workers do not all republish an event another is still
//! publishing; it is twice `amqp.publish_timeout`, past which that publish has been given up.

use super::store::{Store, StoreError};
use super::WebhookId;
use crate::event::AccountId;
use chrono::{DateTime, SecondsFormat, Utc};
use std::time::Duration;

/// Decides what an attempt's outcome changes. KEYS[1]: the health record. ARGV: 1 now (Unix
/// ms), 2 outcome (`ok` | `fail` | `gone` | `none`), 3 last status or error, 4
/// `delivery.disable_after` (ms), 5 lease (ms), 6 id stem of new events, 7 now (RFC 3339), 8
/// account, 9 webhook id, 10 URL. Returns {why the webhook is disabled by hookrelay or '',
/// bodies of the events this caller is to publish...}: pending ones whose lease ran out, then
/// new ones.
///
/// Fields: `since` (ms) and `since_at` (RFC 3339) of the first failure of the period,
/// `failures`, `last`, `notified` (highest threshold announced: 25, 50, 75, 100 = disabled),
/// `disabled` (`failing` | `gone`: the period is frozen until the webhook is re-enabled),
/// `recovering` (re-enabled after an announced period: the next success is a recovery),
/// `p:<id>` / `l:<id>`: a pending event's body and lease.
const OBSERVE: &str = r#"
local h = KEYS[1]
local now, lease, after = tonumber(ARGV[1]), tonumber(ARGV[5]), tonumber(ARGV[4])
local rec = {}
local flat = redis.call('HGETALL', h)
for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
local out = {''}
for k, v in pairs(rec) do
  if string.sub(k, 1, 2) == 'l:' and tonumber(v) <= now then
    local body = rec['p:' .. string.sub(k, 3)]
    if body then
      redis.call('HSET', h, k, now + lease)
      table.insert(out, body)
    else
      redis.call('HDEL', h, k)
    end
  end
end
local n = 0
local function emit(kind, data)
  n = n + 1
  local id = ARGV[6] .. '-' .. n
  data['webhook_id'] = ARGV[9]
  data['url'] = ARGV[10]
  local body = cjson.encode({id = id, type = kind, account_id = ARGV[8],
    created_at = ARGV[7], data = data})
  redis.call('HSET', h, 'p:' .. id, body, 'l:' .. id, now + lease)
  table.insert(out, body)
end
local outcome = ARGV[2]
if rec['disabled'] or outcome == 'none' then
  out[1] = rec['disabled'] or ''
  return out
end
if outcome == 'ok' then
  if rec['notified'] or rec['recovering'] then
    local since = rec['since_at']
    if not since and rec['recovering'] ~= '1' then since = rec['recovering'] end
    emit('webhook.recovered', {failing_since = since or cjson.null,
      failures = tonumber(rec['failures']) or 0})
  end
  if rec['since'] or rec['recovering'] then
    redis.call('HDEL', h, 'since', 'since_at', 'failures', 'last', 'notified', 'recovering')
  end
  return out
end
local since = tonumber(rec['since'])
if not since then
  since = now
  rec['since_at'] = ARGV[7]
  redis.call('HSET', h, 'since', now, 'since_at', ARGV[7])
end
local failures = redis.call('HINCRBY', h, 'failures', 1)
redis.call('HSET', h, 'last', ARGV[3])
if outcome == 'gone' then
  redis.call('HSET', h, 'disabled', 'gone', 'notified', 100)
  emit('webhook.disabled', {reason = 'gone', failing_since = rec['since_at'],
    last_error = ARGV[3], consecutive_failures = failures})
  out[1] = 'gone'
  return out
end
local elapsed = now - since
local notified = tonumber(rec['notified']) or 0
for _, t in ipairs({25, 50, 75}) do
  if t > notified and elapsed * 100 >= after * t then
    notified = t
    redis.call('HSET', h, 'notified', t)
    emit('webhook.failing', {threshold_percent = t, failing_since = rec['since_at'],
      last_error = ARGV[3], consecutive_failures = failures,
      disable_after_seconds = math.floor(after / 1000)})
  end
end
if elapsed >= after then
  redis.call('HSET', h, 'disabled', 'failing', 'notified', 100)
  emit('webhook.disabled', {reason = 'failing', failing_since = rec['since_at'],
    last_error = ARGV[3], consecutive_failures = failures})
  out[1] = 'failing'
end
return out
"#;

/// Re-enabled: the failing period ends. After an announced one the next success is a
/// recovery (`recovering` keeps when the period began); pending events stay pending.
const REENABLED: &str = r#"
local h = KEYS[1]
if redis.call('HEXISTS', h, 'notified') == 1 then
  local since = redis.call('HGET', h, 'since_at') or '1'
  redis.call('HDEL', h, 'since', 'since_at', 'failures', 'last', 'notified', 'disabled')
  redis.call('HSET', h, 'recovering', since)
else
  redis.call('HDEL', h, 'since', 'since_at', 'failures', 'last')
end
return 0
"#;

/// What an attempt says about its webhook's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Succeeded,
    /// A failure that counts against the endpoint: the status (`HTTP 500`) or the error.
    Failed(String),
    /// 410 Gone: hookrelay disables the webhook.
    Gone,
    /// No request was judged (refused target, body too large, a dead letter without an
    /// attempt): only pending events whose lease ran out are taken.
    Nothing,
}

impl Outcome {
    fn as_arg(&self) -> &str {
        match self {
            Outcome::Succeeded => "ok",
            Outcome::Failed(_) => "fail",
            Outcome::Gone => "gone",
            Outcome::Nothing => "none",
        }
    }

    fn last(&self) -> &str {
        match self {
            Outcome::Failed(last) => last,
            Outcome::Gone => "HTTP 410",
            _ => "",
        }
    }
}

/// The webhook an outcome is about.
pub struct Subject<'a> {
    pub account: &'a AccountId,
    pub webhook: &'a WebhookId,
    pub url: &'a str,
}

/// What [`observe`] hands the caller.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// `failing` or `gone` while the period is frozen by a disable hookrelay decided.
    pub disabled: Option<String>,
    /// Event bodies (envelope-shaped JSON) this caller is to publish, then confirm.
    pub events: Vec<String>,
}

/// Runs [`OBSERVE`] for one outcome of `subject`.
pub async fn observe(
    store: &Store,
    subject: &Subject<'_>,
    outcome: &Outcome,
    disable_after: Duration,
    lease: Duration,
) -> Result<Decided, StoreError> {
    let now = Utc::now();
    let stem = format!("op_{}", crate::random_token(20));
    let args = [
        now.timestamp_millis().to_string(),
        outcome.as_arg().to_owned(),
        outcome.last().to_owned(),
        millis(disable_after).to_string(),
        millis(lease).max(1).to_string(),
        stem,
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
        subject.account.to_string(),
        subject.webhook.to_string(),
        subject.url.to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let key = store.health_key(subject.account, subject.webhook);
    let mut reply: Vec<String> = store.run(OBSERVE, &[key], &args).await?;
    let disabled = match reply.first().map(String::as_str) {
        None | Some("") => None,
        Some(why) => Some(why.to_owned()),
    };
    let events = if reply.is_empty() {
        Vec::new()
    } else {
        reply.split_off(1)
    };
    Ok(Decided { disabled, events })
}

/// The event `id` was published and confirmed: no longer pending.
pub async fn confirmed(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
    id: &str,
) -> Result<(), StoreError> {
    let key = store.health_key(account, webhook);
    store
        .run_command(
            redis::cmd("HDEL")
                .arg(key)
                .arg(format!("p:{id}"))
                .arg(format!("l:{id}")),
        )
        .await
}

/// Ends the failing period of a re-enabled webhook (see [`REENABLED`]).
pub async fn reenabled(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
) -> Result<(), StoreError> {
    let key = store.health_key(account, webhook);
    let _: i64 = store.run(REENABLED, &[key], &[]).await?;
    Ok(())
}

/// The failing period as `webhooks status` and the API show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Period {
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
}

/// Reads the failing period of a webhook (`None` when it is not failing).
pub async fn period(
    store: &Store,
    account: &AccountId,
    webhook: &WebhookId,
) -> Result<Option<Period>, StoreError> {
    let key = store.health_key(account, webhook);
    let (since, last, failures): (Option<String>, Option<String>, Option<u64>) = store
        .query_command(
            redis::cmd("HMGET")
                .arg(key)
                .arg("since_at")
                .arg("last")
                .arg("failures"),
        )
        .await?;
    let Some(since) = since else {
        return Ok(None);
    };
    Ok(Some(Period {
        since: DateTime::parse_from_rfc3339(&since)
            .ok()
            .map(|d| d.with_timezone(&Utc)),
        last_error: last.filter(|l| !l.is_empty()),
        consecutive_failures: failures.unwrap_or(0),
    }))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
