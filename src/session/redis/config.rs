//! The `[redis]` table of the member config: a raw serde shape ([`RawRedis`], unknown keys are
//! errors) validated into [`RedisConfig`]. Errors name the key and never echo a password.

use std::time::Duration;

use serde::Deserialize;

use crate::config::parse_duration;

/// `[redis]` as written in the file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    url: Option<String>,
    cluster: Option<Vec<String>>,
    sentinels: Option<Vec<String>>,
    sentinel_master: Option<String>,
    sentinel_master_tls: Option<bool>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    retries: Option<u32>,
    key_prefix: Option<String>,
    wait_replicas: Option<u32>,
    wait_timeout: Option<String>,
}

/// Where the sessions live.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a primary behind a fixed address): `redis://` or `rediss://` (TLS).
    Standalone(String),
    /// Redis Cluster: the seed nodes (all `redis://` or all `rediss://`).
    Cluster(Vec<String>),
    /// Redis Sentinel: the sentinels' URLs and the master's name; `master_tls` connects to the
    /// master with TLS.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        master_tls: bool,
    },
}

/// A validated `[redis]` table.
#[derive(Clone)]
pub struct RedisConfig {
    pub topology: Topology,
    /// AUTH user (Redis 6 ACL); overrides the one in the URLs.
    pub username: Option<String>,
    /// AUTH password; overrides the one in the URLs.
    pub password: Option<String>,
    /// One TCP (+TLS, +AUTH) connect, at most.
    pub connect_timeout: Duration,
    /// One command's reply, at most.
    pub response_timeout: Duration,
    /// Extra attempts after a connection error or a timeout (so `retries + 1` in all).
    pub retries: u32,
    /// Prepended to every key: `<prefix>{<session id>}`.
    pub key_prefix: String,
    /// `WAIT <n>` after each write: the write is acknowledged only once `n` replicas have it.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
}

// By hand: the password must never reach a log line.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = match &self.topology {
            Topology::Standalone(_) => "standalone",
            Topology::Cluster(_) => "cluster",
            Topology::Sentinel { .. } => "sentinel",
        };
        f.debug_struct("RedisConfig")
            .field("topology", &topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("retries", &self.retries)
            .field("key_prefix", &self.key_prefix)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

impl RedisConfig {
    /// A standalone config for `url` with the defaults (what `tether demo --store redis://…`
    /// and the tests use).
    pub fn standalone(url: &str) -> RedisConfig {
        RedisConfig {
            topology: Topology::Standalone(url.to_owned()),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            retries: 2,
            key_prefix: "tether:".into(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(500),
        }
    }

    /// Validates `[redis]`.
    pub fn from_raw(raw: RawRedis) -> Result<RedisConfig, String> {
        let topology = match (raw.url, raw.cluster, raw.sentinels) {
            (Some(url), None, None) => {
                check_url("redis.url", &url)?;
                if raw.sentinel_master.is_some() {
                    return Err("redis.sentinel_master: only with redis.sentinels".into());
                }
                Topology::Standalone(url)
            }
            (None, Some(nodes), None) => {
                if nodes.is_empty() {
                    return Err("redis.cluster: list at least one node URL".into());
                }
                for (i, n) in nodes.iter().enumerate() {
                    check_url(&format!("redis.cluster[{i}]"), n)?;
                }
                let tls = nodes.iter().filter(|n| n.starts_with("rediss://")).count();
                if tls != 0 && tls != nodes.len() {
                    return Err("redis.cluster: all redis:// or all rediss://, not a mix".into());
                }
                Topology::Cluster(nodes)
            }
            (None, None, Some(sentinels)) => {
                if sentinels.is_empty() {
                    return Err("redis.sentinels: list at least one sentinel URL".into());
                }
                for (i, n) in sentinels.iter().enumerate() {
                    check_url(&format!("redis.sentinels[{i}]"), n)?;
                }
                let master = raw.sentinel_master.ok_or(
                    "redis.sentinel_master: required with redis.sentinels (the monitored master's name)",
                )?;
                if master.is_empty() {
                    return Err("redis.sentinel_master: must not be empty".into());
                }
                Topology::Sentinel {
                    sentinels,
                    master,
                    master_tls: raw.sentinel_master_tls.unwrap_or(false),
                }
            }
            (None, None, None) => {
                return Err(
                    "redis: set one of url, cluster or sentinels (with sentinel_master)".into(),
                )
            }
            _ => return Err("redis: set only one of url, cluster, sentinels".into()),
        };
        if raw.sentinel_master_tls.is_some() && !matches!(topology, Topology::Sentinel { .. }) {
            return Err("redis.sentinel_master_tls: only with redis.sentinels".into());
        }
        let password = match (raw.password, raw.password_file) {
            (Some(p), None) => Some(p),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map(|p| p.trim_end().to_owned())
                    .map_err(|e| format!("redis.password_file: cannot read {path}: {e}"))?,
            ),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err("redis: set password or password_file, not both".into())
            }
        };
        let mut config = RedisConfig::standalone("");
        config.topology = topology;
        config.username = raw.username;
        config.password = password;
        config.connect_timeout = positive(
            "redis.connect_timeout",
            raw.connect_timeout.as_deref(),
            config.connect_timeout,
        )?;
        config.response_timeout = positive(
            "redis.response_timeout",
            raw.response_timeout.as_deref(),
            config.response_timeout,
        )?;
        config.wait_timeout = positive(
            "redis.wait_timeout",
            raw.wait_timeout.as_deref(),
            config.wait_timeout,
        )?;
        config.retries = raw.retries.unwrap_or(config.retries);
        if config.retries > 10 {
            return Err("redis.retries: at most 10 (each retry waits for a timeout)".into());
        }
        config.wait_replicas = raw.wait_replicas.unwrap_or(0);
        if let Some(prefix) = raw.key_prefix {
            if prefix
                .bytes()
                .any(|b| b == b'{' || b == b'}' || b.is_ascii_control())
            {
                return Err(format!(
                    "redis.key_prefix: {prefix:?} must hold no '{{', '}}' or control characters (the session id is the hash tag)"
                ));
            }
            config.key_prefix = prefix;
        }
        Ok(config)
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    let ok = ["redis://", "rediss://"]
        .iter()
        .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
    if !ok {
        // The URL may hold a password: name the key, not the value.
        return Err(format!(
            "{key}: must be a redis://[user:password@]host:port or rediss://… URL"
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|e| format!("{key}: not a valid Redis URL ({:?})", e.kind()))
}

fn positive(key: &str, text: Option<&str>, default: Duration) -> Result<Duration, String> {
    let d = text.map_or(Ok(default), |t| {
        parse_duration(t).map_err(|e| format!("{key}: {e}"))
    })?;
    if d.is_zero() {
        return Err(format!("{key}: must be more than 0"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RedisConfig, String> {
        let raw: RawRedis = toml::from_str(text).map_err(|e| e.to_string())?;
        RedisConfig::from_raw(raw)
    }

    #[test]
    fn the_three_topologies_parse() {
        let c = parse(
            "url = \"rediss://u:secret-pw@h:6380\"\nretries = 1\nconnect_timeout = \"250ms\"",
        )
        .unwrap();
        assert!(matches!(c.topology, Topology::Standalone(ref u) if u.starts_with("rediss://")));
        assert_eq!(
            (c.retries, c.connect_timeout),
            (1, Duration::from_millis(250))
        );
        assert!(!format!("{c:?}").contains("secret-pw"));
        let c = parse("cluster = [\"redis://a:1\", \"redis://b:2\"]").unwrap();
        assert!(matches!(c.topology, Topology::Cluster(ref n) if n.len() == 2));
        let c =
            parse("sentinels = [\"redis://s:26379\"]\nsentinel_master = \"m\"\npassword = \"pw\"")
                .unwrap();
        assert!(matches!(c.topology, Topology::Sentinel { ref master, .. } if master == "m"));
        assert!(!format!("{c:?}").contains("\"pw\""));
    }

    #[test]
    fn errors_name_the_key_and_never_the_password() {
        let cases = [
            ("", "redis"),
            ("url = \"http://x\"", "redis.url"),
            (
                "url = \"redis://a:1\"\ncluster = [\"redis://b:1\"]",
                "only one",
            ),
            ("cluster = []", "redis.cluster"),
            (
                "cluster = [\"redis://a:1\", \"rediss://b:1\"]",
                "redis.cluster",
            ),
            ("sentinels = [\"redis://s:1\"]", "redis.sentinel_master"),
            (
                "url = \"redis://a:1\"\nresponse_timeout = \"0s\"",
                "redis.response_timeout",
            ),
            ("url = \"redis://a:1\"\nretries = 99", "redis.retries"),
            (
                "url = \"redis://a:1\"\nkey_prefix = \"{x}\"",
                "redis.key_prefix",
            ),
            ("url = \"redis://a:1\"\ncolour = 1", "colour"),
            ("url = \"htp://u:hunter2@a:1\"", "redis.url"),
        ];
        for (text, key) in cases {
            let err = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            assert!(err.contains(key), "{key}: {err}");
            assert!(!err.contains("hunter2"), "password leaked: {err}");
        }
    }
}
