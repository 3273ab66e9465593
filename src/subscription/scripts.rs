//! The Lua scripts that make each write to an account atomic on one slot (the account's hash
//! tag): create with the 10-webhook and duplicate-URL rules, compare-and-set update, delete;
//! and the account's snapshot, read atomically (a script, unlike MULTI/EXEC, follows ASK).
//! Each bumps the account's version and announces it on the changes channel.

// Results below zero are refusals; otherwise the account's new version.
pub(super) const LIMIT_REACHED: i64 = -1;
pub(super) const DUPLICATE_URL: i64 = -2;
pub(super) const NOT_FOUND: i64 = -3;
pub(super) const CONFLICT: i64 = -4;

/// An account's version and webhooks, read atomically. KEYS: version, webhooks.
pub(super) const SNAPSHOT: &str = r#"
local v = redis.call('GET', KEYS[1])
return {v, redis.call('HGETALL', KEYS[2])}
"#;

/// KEYS: webhooks, urls, version. ARGV: id, url, json, limit, channel, account.
pub(super) const CREATE: &str = r#"
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
pub(super) const UPDATE: &str = r#"
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
pub(super) const DELETE: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {-3, ''} end
redis.call('HDEL', KEYS[2], cjson.decode(cur)['url'])
redis.call('HDEL', KEYS[1], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. v)
return {v, ''}
"#;
