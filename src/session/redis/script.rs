//! The Lua scripts: the compare-and-set save and the touch. Each runs atomically on the server
//! that holds the session's key (one key per session, so one slot in a Cluster).
//!
//! The session is a hash: `v` version, `w` the write token of the save that wrote `v`, `o` owner,
//! `c` created (ms), `a` last access (ms), `t` max inactive (ms), and one field `@<name>` per
//! attribute. The key's TTL is `t`; every save and touch sets it again.

use std::sync::LazyLock;

use redis::Script;

/// KEYS[1] the session key. ARGV: [1] expected version ("" = must not exist), [2] new version,
/// [3] write token, [4] ttl ms, [5] owner, [6] created ms, [7] last access ms, [8] "1" to write
/// the whole session (a new one) or "0" for changed attributes only, [9] n = attributes set,
/// then n (field, value) pairs, then the fields removed.
///
/// Returns `{1, version}` when written, `{0, stored version or ""}` on a conflict. A retry of a
/// save whose reply was lost finds its own token under the new version and returns `{1, …}`, so
/// retrying a save is safe (idempotent) and never turns a success into a conflict.
const SAVE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if not ((cur == false and ARGV[1] == '') or cur == ARGV[1]) then
  if cur == ARGV[2] and redis.call('HGET', KEYS[1], 'w') == ARGV[3] then
    return {1, cur}
  end
  return {0, cur or ''}
end
if ARGV[8] == '1' then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'w', ARGV[3], 't', ARGV[4], 'o', ARGV[5],
  'c', ARGV[6], 'a', ARGV[7])
local n = tonumber(ARGV[9])
local i = 10
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, ARGV[2]}
"#;

/// KEYS[1] the session key, ARGV[1] now (ms). Moves the last access forward (never back) and
/// sets the TTL to the session's own max inactive again; keeps the version. 0 when absent.
const TOUCH: &str = r#"
local t = redis.call('HGET', KEYS[1], 't')
if not t then
  return 0
end
local a = tonumber(redis.call('HGET', KEYS[1], 'a') or '0')
if a < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'a', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], t)
return 1
"#;

/// `EVALSHA` first, `EVAL` (which loads it) when the server answers `NOSCRIPT` (a restarted or
/// failed-over server has an empty script cache): the `redis` crate's [`Script`] does both.
pub static SAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SAVE));
pub static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TOUCH));

/// The hash field that holds attribute `name`.
pub fn attribute_field(name: &str) -> String {
    format!("@{name}")
}
