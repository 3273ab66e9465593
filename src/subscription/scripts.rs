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

/// Restores webhooks of one account (`webhooks import`): all of them or, when a rule would
/// break, none. ARGV: limit, channel, account, then id, url, json of each webhook. An id
/// already stored is replaced (its old URL released); an identical record is left as it is, and
/// the version is bumped and announced only when something changed. Returns {version or 0,
/// created, updated}, or {-1, 0, 0} (limit), {-2, owner of the url, index of the webhook}
/// (duplicate URL).
pub(super) const IMPORT: &str = r#"
local limit = tonumber(ARGV[1])
local n = (#ARGV - 3) / 3
local mine = {}
for i = 0, n - 1 do mine[ARGV[4 + 3 * i]] = true end
local adding = 0
for i = 0, n - 1 do
  local id, url = ARGV[4 + 3 * i], ARGV[5 + 3 * i]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then adding = adding + 1 end
  local owner = redis.call('HGET', KEYS[2], url)
  if owner and owner ~= id and not mine[owner] then return {-2, owner, i} end
end
if redis.call('HLEN', KEYS[1]) + adding > limit then return {-1, 0, 0} end
local created, updated = 0, 0
for i = 0, n - 1 do
  local id, url, json = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  local cur = redis.call('HGET', KEYS[1], id)
  if cur ~= json then
    if cur then
      updated = updated + 1
      local ok, old = pcall(cjson.decode, cur)
      if ok and type(old) == 'table' and old['url'] and old['url'] ~= url
        and redis.call('HGET', KEYS[2], old['url']) == id then
        redis.call('HDEL', KEYS[2], old['url'])
      end
    else
      created = created + 1
    end
    redis.call('HSET', KEYS[1], id, json)
    redis.call('HSET', KEYS[2], url, id)
  end
end
if created + updated == 0 then return {0, created, updated} end
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. v)
return {v, created, updated}
"#;
