//! The `redis` backend (DESIGN.md §5): sessions in Redis — standalone (`redis://`, `rediss://`
//! for TLS, AUTH user/password), behind Sentinel, or on Redis Cluster.
//!
//! - [`config`]: the `[redis]` table, raw and validated;
//! - [`conn`]: lazy connections, dropped and made again after an error (Sentinel asked again);
//! - [`script`]: the Lua compare-and-set save and the touch.
//!
//! One key per session, `<prefix>{<id>}` (the id is the hash tag, so whatever keys a session
//! ever gets share its Cluster slot), holding a hash: small metadata fields and one field per
//! attribute. A hash rather than one serialized value because the save script must read the
//! version (one `HGET`, no decoding in Lua) and because a write then sends only the attributes
//! the request changed, not the whole session. TTL = max inactive, set again by every save and
//! touch; invalidation is `DEL`.
//!
//! Failures: every attempt is bounded (connect and reply timeouts, plus an outer timeout),
//! attempts are bounded (`retries`), and what is left is [`StoreError::Unavailable`] — the layer
//! answers 503, never a new empty session. A save is safe to retry: the script recognises its
//! own write token. One warning per second at most says why Redis failed.
//!
//! No near cache: a cached copy would have to be validated against the stored version on every
//! load to be safe after a failover, and that check is itself a round trip to Redis — the same
//! price as reading the (small) session — so the cache would buy only bandwidth, for the risk of
//! a stale read. Every load reads Redis.

pub mod config;
pub mod conn;
pub mod script;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::{RedisError, RetryMethod};

pub use config::{RawRedis, RedisConfig, Topology};
use conn::{ConnectError, Connector};

use super::{now_ms, Changes, Session, SessionStore, StoreError, StoreFuture};

/// Counters for `/_tether/stats` and the tests.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Operations that ended `Unavailable` (each one a 503).
    pub unavailable: AtomicU64,
    /// Attempts made again after a connection error or a timeout.
    pub retries: AtomicU64,
    /// Saves that lost the compare-and-set.
    pub conflicts: AtomicU64,
    /// Saves that `WAIT` could not confirm on `wait_replicas` replicas in time.
    pub unreplicated: AtomicU64,
}

pub struct RedisStore {
    clone_id: String,
    config: RedisConfig,
    connector: Connector,
    stats: RedisStats,
    /// Unix ms of the last warning, and warnings held back since (one line a second at most).
    last_warning_ms: AtomicU64,
    held_back: AtomicU64,
}

/// What one save attempt found.
enum Saved {
    Written,
    Conflict(Option<u64>),
    /// Written on the primary, but fewer than `wait_replicas` replicas confirmed it.
    Unreplicated(i64),
}

/// An attempt's failure: retried (after reconnecting when the connection is at fault) or not.
enum Failure {
    Retry { reconnect: bool, error: String },
    Fatal(String),
}

impl RedisStore {
    /// Connects lazily: a member starts (and answers 503) while Redis is still down.
    pub fn new(clone_id: &str, config: RedisConfig) -> Result<RedisStore, String> {
        let connector = Connector::new(&config)
            .map_err(|e| format!("redis: cannot use the configured address ({:?})", e.kind()))?;
        tracing::info!(config = ?config, "redis session store");
        Ok(RedisStore {
            clone_id: clone_id.to_owned(),
            config,
            connector,
            stats: RedisStats::default(),
            last_warning_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> &RedisStats {
        &self.stats
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The key of session `id`.
    pub fn key(&self, id: &str) -> String {
        format!("{}{{{id}}}", self.config.key_prefix)
    }

    /// Runs `op` with bounded attempts; `what` names the operation in the log line.
    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        F: Fn(conn::Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let per_attempt = self.config.response_timeout
            + if self.config.wait_replicas > 0 {
                self.config.wait_timeout
            } else {
                Duration::ZERO
            }
            + Duration::from_millis(100);
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let pause = 25 * u64::from(attempt) + fastrand::u64(0..25);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let (generation, conn) = match self.connector.get().await {
                Ok(pair) => pair,
                Err(ConnectError::Redis(e)) => {
                    last = format!("cannot connect: {e}");
                    continue;
                }
                Err(ConnectError::TimedOut) => {
                    last = "cannot connect: timed out".into();
                    continue;
                }
                Err(ConnectError::CoolingDown) => {
                    if last.is_empty() {
                        last = "cannot connect (recent attempt failed)".into();
                    }
                    continue;
                }
            };
            let failure = match tokio::time::timeout(per_attempt, op(conn)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => classify(&e),
                Err(_) => Failure::Retry {
                    reconnect: true,
                    error: format!("no reply within {per_attempt:?}"),
                },
            };
            match failure {
                Failure::Retry { reconnect, error } => {
                    if reconnect {
                        self.connector.reset(generation).await;
                    }
                    last = error;
                }
                Failure::Fatal(error) => {
                    last = error;
                    break;
                }
            }
        }
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        self.warn(what, &last);
        Err(StoreError::Unavailable("redis unreachable or failing"))
    }

    fn warn(&self, what: &str, error: &str) {
        let now = now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let held_back = self.held_back.swap(0, Ordering::Relaxed);
            tracing::warn!(
                operation = what,
                error,
                attempts = self.config.retries + 1,
                similar_failures_not_logged = held_back,
                "redis session store unavailable: answering 503 (no new session is made)"
            );
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn save_once(
        &self,
        mut conn: conn::Conn,
        key: &str,
        session: &Session,
        expected: Option<u64>,
        changes: &Changes,
        token: &str,
    ) -> Result<Saved, RedisError> {
        let ttl = ttl_ms(session.max_inactive);
        let mut args: Vec<Vec<u8>> = [
            expected.map_or_else(String::new, |v| v.to_string()),
            session.version.to_string(),
            token.to_owned(),
            ttl.to_string(),
            session.owner.clone(),
            session.created_ms.to_string(),
            session.last_access_ms.to_string(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        // ARGV[8]: whole session (a new one) or changed attributes only; then ARGV[9] the count
        // of (field, value) pairs, the pairs, and the removed fields.
        let (whole, set) = if expected.is_none() {
            ("1", &session.attributes)
        } else {
            // `session` is the stored version `expected` plus `changes`: send only those.
            ("0", &changes.set)
        };
        args.push(whole.as_bytes().to_vec());
        args.push(set.len().to_string().into_bytes());
        for (name, value) in set {
            args.push(script::attribute_field(name).into_bytes());
            args.push(value.to_vec());
        }
        if expected.is_some() {
            for name in &changes.removed {
                args.push(script::attribute_field(name).into_bytes());
            }
        }
        // EVALSHA, and in the same pipeline `WAIT` (so in a Cluster it goes to the node that
        // holds the key, routed by the key of the first command); `NOSCRIPT` (a restarted or
        // promoted server has an empty script cache) → `SCRIPT LOAD`, then once more.
        let mut loaded = false;
        loop {
            let mut evalsha = redis::cmd("EVALSHA");
            evalsha.arg(script::SAVE_SCRIPT.get_hash()).arg(1).arg(key);
            for a in &args {
                evalsha.arg(a.as_slice());
            }
            let result: Result<((i64, String), i64), RedisError> = if self.config.wait_replicas > 0
            {
                let wait_ms =
                    u64::try_from(self.config.wait_timeout.as_millis()).unwrap_or(u64::MAX);
                let mut wait = redis::cmd("WAIT");
                wait.arg(self.config.wait_replicas).arg(wait_ms);
                let mut pipe = redis::pipe();
                pipe.add_command(evalsha).add_command(wait);
                pipe.query_async(&mut conn).await
            } else {
                evalsha.query_async(&mut conn).await.map(|r| (r, i64::MAX))
            };
            match result {
                Ok(((written, found), acked)) => {
                    if written != 1 {
                        return Ok(Saved::Conflict(found.parse().ok()));
                    }
                    if acked < i64::from(self.config.wait_replicas) {
                        return Ok(Saved::Unreplicated(acked));
                    }
                    return Ok(Saved::Written);
                }
                Err(e)
                    if !loaded
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script::SAVE_SCRIPT
                        .prepare_invoke()
                        .load_async(&mut conn)
                        .await?;
                    loaded = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// TTL in ms for PEXPIRE: at least 1, at most a year (a "never" max inactive).
fn ttl_ms(max_inactive: Duration) -> u64 {
    u64::try_from(max_inactive.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, 365 * 24 * 3600 * 1000)
}

/// Connection trouble, timeouts and "try again" server states are retried; the rest (a script
/// error, out of memory, a wrong password) is not — retrying would only repeat it.
fn classify(e: &RedisError) -> Failure {
    let error = e.to_string();
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return Failure::Retry {
            reconnect: true,
            error,
        };
    }
    match e.retry_method() {
        RetryMethod::NoRetry => Failure::Fatal(error),
        RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry => Failure::Retry {
            reconnect: false,
            error,
        },
        // READONLY after a Sentinel failover, a MOVED seen outside a cluster connection...:
        // the connection points at the wrong server; find the right one again.
        RetryMethod::Reconnect
        | RetryMethod::AskRedirect
        | RetryMethod::MovedRedirect
        | RetryMethod::ReconnectFromInitialConnections
        | RetryMethod::RefreshSlotsAndRetry => Failure::Retry {
            reconnect: true,
            error,
        },
        // `RetryMethod` is `#[non_exhaustive]`: a kind added later is treated as connection
        // trouble (bounded retries, then 503), the safe side.
        _ => Failure::Retry {
            reconnect: true,
            error,
        },
    }
}

/// A session from the fields of its hash; `None` when a field is missing or malformed.
fn decode(id: &str, mut fields: HashMap<String, Vec<u8>>) -> Option<Session> {
    fn num(fields: &HashMap<String, Vec<u8>>, name: &str) -> Option<u64> {
        std::str::from_utf8(fields.get(name)?).ok()?.parse().ok()
    }
    let version = num(&fields, "v")?;
    let created_ms = num(&fields, "c")?;
    let last_access_ms = num(&fields, "a")?;
    let max_inactive = Duration::from_millis(num(&fields, "t")?);
    let owner = String::from_utf8(fields.remove("o")?).ok()?;
    let attributes = fields
        .into_iter()
        .filter_map(|(field, value)| {
            let name = field.strip_prefix('@')?;
            Some((name.to_owned(), Bytes::from(value)))
        })
        .collect();
    Some(Session {
        id: id.to_owned(),
        version,
        owner,
        attributes,
        created_ms,
        last_access_ms,
        max_inactive,
    })
}

/// A random token that marks one save (its retries reuse it).
fn write_token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl SessionStore for RedisStore {
    fn load<'a>(&'a self, id: &'a str, _: &'a [&'a str]) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move {
            let key = self.key(id);
            let fields: HashMap<String, Vec<u8>> = self
                .run("load", |mut conn| {
                    let key = key.clone();
                    async move { redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await }
                })
                .await?;
            if fields.is_empty() {
                return Ok(None);
            }
            match decode(id, fields) {
                Some(mut session) => {
                    // Whoever serves it now is where the cookie sends the next request.
                    session.owner.clone_from(&self.clone_id);
                    Ok(Some(session))
                }
                None => {
                    tracing::error!(
                        key_prefix = %self.config.key_prefix,
                        "redis session store: a session hash is malformed (written by something else?); answering 503"
                    );
                    Err(StoreError::Unavailable("malformed session in redis"))
                }
            }
        })
    }

    fn save<'a>(
        &'a self,
        session: &'a Session,
        expected: Option<u64>,
        changes: &'a Changes,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(&session.id);
            let token = write_token();
            let saved = self
                .run("save", |conn| {
                    self.save_once(conn, &key, session, expected, changes, &token)
                })
                .await?;
            match saved {
                Saved::Written => Ok(()),
                Saved::Conflict(found) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    Err(StoreError::Conflict {
                        id: session.id.clone(),
                        expected,
                        found,
                    })
                }
                Saved::Unreplicated(acked) => {
                    self.stats.unreplicated.fetch_add(1, Ordering::Relaxed);
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    self.warn(
                        "save",
                        &format!(
                            "WAIT: {acked} of {} replicas confirmed the write within {:?}",
                            self.config.wait_replicas, self.config.wait_timeout
                        ),
                    );
                    Err(StoreError::Unavailable(
                        "redis replicas did not confirm the write",
                    ))
                }
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(id);
            self.run("remove", |mut conn| {
                let key = key.clone();
                async move {
                    redis::cmd("DEL")
                        .arg(&key)
                        .query_async::<i64>(&mut conn)
                        .await
                }
            })
            .await
            .map(drop)
        })
    }

    fn touch<'a>(&'a self, id: &'a str, now_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(id);
            let now = now_ms.to_string();
            self.run("touch", |mut conn| {
                let (key, now) = (key.clone(), now.clone());
                async move {
                    script::TOUCH_SCRIPT
                        .key(&key)
                        .arg(&now)
                        .invoke_async::<i64>(&mut conn)
                        .await
                }
            })
            .await
            .map(drop)
        })
    }

    fn clone_list(&self, _: &Session) -> Vec<String> {
        // Every member reads the same Redis: the member that served the request is the best
        // place for the next one (warm connections), and any other member will do on failover.
        vec![self.clone_id.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hash_tagged_by_session_id() {
        let store = RedisStore::new("c1", RedisConfig::standalone("redis://127.0.0.1:1")).unwrap();
        assert_eq!(store.key("abc"), "tether:{abc}");
    }

    #[test]
    fn decode_reads_metadata_and_attributes() {
        let mut f = HashMap::new();
        for (k, v) in [
            ("v", "3"),
            ("w", "x"),
            ("o", "c2"),
            ("c", "10"),
            ("a", "20"),
            ("t", "1500"),
        ] {
            f.insert(k.to_owned(), v.as_bytes().to_vec());
        }
        f.insert("@count".into(), b"7".to_vec());
        let s = decode("id", f.clone()).unwrap();
        assert_eq!(
            (s.version, s.owner.as_str(), s.created_ms, s.last_access_ms),
            (3, "c2", 10, 20)
        );
        assert_eq!(s.max_inactive, Duration::from_millis(1500));
        assert_eq!(s.attributes["count"], Bytes::from_static(b"7"));
        f.remove("v");
        assert!(decode("id", f).is_none());
    }

    #[test]
    fn ttl_is_clamped() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_ms(Duration::MAX), 365 * 24 * 3600 * 1000);
    }
}
