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
    ca_file: Option<String>,
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

/// The certificate authorities a `rediss://` connection trusts instead of the system roots
/// (`ca_file`): read and checked when the config is loaded.
#[derive(Clone)]
pub struct CaFile {
    /// Where it was read from (for log lines).
    pub path: String,
    /// The PEM text: one or more `CERTIFICATE` blocks.
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

/// A validated `[redis]` table.
#[derive(Clone)]
pub struct RedisConfig {
    pub topology: Topology,
    /// AUTH user (Redis 6 ACL); overrides the one in the URLs.
    pub username: Option<String>,
    /// AUTH password; overrides the one in the URLs.
    pub password: Option<String>,
    /// TLS: trust these CAs (PEM) for every `rediss://` connection (server, cluster nodes,
    /// sentinels, and the master with `sentinel_master_tls`); `None`: the system roots.
    pub ca_file: Option<CaFile>,
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
            .field("ca_file", &self.ca_file)
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
            ca_file: None,
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
        let ca_file = raw.ca_file.as_deref().map(read_ca_file).transpose()?;
        if ca_file.is_some() {
            check_ca_use(&topology)?;
        }
        let mut config = RedisConfig::standalone("");
        config.topology = topology;
        config.username = raw.username;
        config.password = password;
        config.ca_file = ca_file;
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

/// Reads `ca_file`: PEM, at least one `CERTIFICATE`, each usable as a trust anchor.
fn read_ca_file(path: &str) -> Result<CaFile, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let pem = std::fs::read(path).map_err(|e| format!("redis.ca_file: cannot read {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("redis.ca_file: {path}: not PEM ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("redis.ca_file: {path}: not a usable CA certificate ({e})"))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "redis.ca_file: {path} holds no PEM CERTIFICATE block"
        ));
    }
    Ok(CaFile {
        path: path.to_owned(),
        pem,
    })
}

/// `ca_file` is only read by TLS connections: refuse it where none is configured (a CA file on
/// a `redis://` URL would suggest a protection that is not there).
fn check_ca_use(topology: &Topology) -> Result<(), String> {
    let tls = |url: &String| url.starts_with("rediss://");
    match topology {
        Topology::Standalone(url) if tls(url) => Ok(()),
        Topology::Cluster(nodes) if nodes.iter().all(tls) => Ok(()),
        Topology::Sentinel {
            sentinels,
            master_tls,
            ..
        } if *master_tls || sentinels.iter().any(tls) => {
            // The crate hands a CA to the master's connections only together with one AUTH for
            // every sentinel: the sentinel URLs must agree on user and password.
            if *master_tls {
                let auth = |url: &String| {
                    redis::IntoConnectionInfo::into_connection_info(url.as_str())
                        .map(|i| {
                            let r = i.redis_settings();
                            (
                                r.username().map(str::to_owned),
                                r.password().map(str::to_owned),
                            )
                        })
                        .ok()
                };
                let first = auth(&sentinels[0]);
                if sentinels.iter().any(|s| auth(s) != first) {
                    return Err("redis.sentinels: with ca_file and sentinel_master_tls, every sentinel URL must carry the same user and password".into());
                }
            }
            Ok(())
        }
        _ => Err(
            "redis.ca_file: only with TLS (rediss:// URLs, or sentinel_master_tls = true)".into(),
        ),
    }
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

    /// A self-signed CA certificate in PEM, made now.
    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ca_file_is_read_checked_and_only_taken_with_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        let ca = ca.display().to_string();
        let c = parse(&format!(
            "url = \"rediss://u:pw-9@127.0.0.1:6380\"\nca_file = \"{ca}\""
        ))
        .unwrap();
        let read = c.ca_file.as_ref().unwrap();
        assert!(read.pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert!(format!("{c:?}").contains(&ca), "{c:?}");
        // The TLS topologies take it.
        for ok in [
            "cluster = [\"rediss://a:1\", \"rediss://b:1\"]".to_owned(),
            "sentinels = [\"redis://s:1\"]\nsentinel_master = \"m\"\nsentinel_master_tls = true"
                .to_owned(),
            "sentinels = [\"rediss://s:1\"]\nsentinel_master = \"m\"".to_owned(),
        ] {
            parse(&format!("{ok}\nca_file = \"{ca}\"")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let key_only = dir.path().join("key.pem");
        std::fs::write(
            &key_only,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");
        let cases = [
            (
                format!("url = \"redis://u:hunter2@a:1\"\nca_file = \"{ca}\""),
                "only with TLS",
            ),
            (
                format!("cluster = [\"rediss://a:1\", \"rediss://b:1\"]\nca_file = \"{}\"", missing.display()),
                "cannot read",
            ),
            (
                format!("url = \"rediss://a:1\"\nca_file = \"{}\"", garbage.display()),
                "no PEM CERTIFICATE",
            ),
            (
                format!("url = \"rediss://a:1\"\nca_file = \"{}\"", key_only.display()),
                "no PEM CERTIFICATE",
            ),
            (
                format!("sentinels = [\"redis://s:1\"]\nsentinel_master = \"m\"\nca_file = \"{ca}\""),
                "only with TLS",
            ),
            (
                format!(
                    "sentinels = [\"redis://:hunter2@s:1\", \"redis://s:2\"]\nsentinel_master = \"m\"\n\
                     sentinel_master_tls = true\nca_file = \"{ca}\""
                ),
                "same user and password",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            assert!(
                err.contains(expected) && err.contains("redis."),
                "{expected}: {err}"
            );
            assert!(!err.contains("hunter2"), "password leaked: {err}");
        }
    }
}
