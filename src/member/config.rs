//! The member config file (`tether member --config FILE`, example in `conf/member.toml`): a raw
//! serde shape that rejects unknown keys, validated into [`MemberConfig`]. Errors name the key;
//! the file (it holds the shared secret) is never echoed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{parse_duration, parse_size, IdFormat};
use crate::session::redis::{RawRedis, RedisConfig};
use crate::session::replicated::{
    frame, PeerConfig, Replicas, ReplicationConfig, WriteContents, WriteMode,
};
use crate::session::SessionConfig;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    member: RawMember,
    #[serde(default)]
    session: RawSession,
    replication: Option<RawReplication>,
    // store = "redis" (issue 4)
    redis: Option<RawRedis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    clone_id: String,
    listen: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSession {
    store: Option<String>,
    format: Option<String>,
    cookie: Option<String>,
    url_parameter: Option<String>,
    separator: Option<String>,
    max_inactive: Option<String>,
    max_sessions: Option<usize>,
    cookie_path: Option<String>,
    secure_cookie: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawReplicas {
    Count(i64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    listen: String,
    secret: Option<String>,
    secret_file: Option<String>,
    replicas: Option<RawReplicas>,
    write_mode: Option<String>,
    write_interval: Option<String>,
    write_contents: Option<String>,
    timeout: Option<String>,
    max_frame: Option<String>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    clone_id: String,
    address: String,
}

/// Which backend the member runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Replicated,
    Redis,
}

/// A validated member config.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub clone_id: String,
    pub listen: SocketAddr,
    pub store: StoreKind,
    pub session: SessionConfig,
    pub max_sessions: usize,
    /// Present when `store = "replicated"`.
    pub replication: Option<(SocketAddr, ReplicationConfig)>,
    /// Present when `store = "redis"`.
    pub redis: Option<RedisConfig>,
}

fn addr(key: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{key}: {text:?} is not an address like \"127.0.0.1:9081\""))
}

fn duration(key: &str, text: Option<&str>, default: Duration) -> Result<Duration, String> {
    text.map_or(Ok(default), |t| {
        parse_duration(t).map_err(|e| format!("{key}: {e}"))
    })
}

fn clone_id_ok(key: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key}: {id:?} must be 1-32 characters of A-Z, a-z, 0-9, '-', '_'"
        ))
    }
}

impl MemberConfig {
    pub fn load(path: &Path) -> Result<MemberConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        MemberConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<MemberConfig, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        let clone_id = raw.member.clone_id;
        clone_id_ok("member.clone_id", &clone_id)?;
        let listen = addr("member.listen", &raw.member.listen)?;
        let s = raw.session;
        let store = match s.store.as_deref().unwrap_or("replicated") {
            "memory" => StoreKind::Memory,
            "replicated" => StoreKind::Replicated,
            "redis" => StoreKind::Redis,
            other => {
                return Err(format!(
                    "session.store: {other:?} is not one of \"memory\", \"replicated\", \"redis\""
                ))
            }
        };
        let format = match s.format.as_deref().unwrap_or("websphere") {
            "websphere" => IdFormat::WebSphere,
            "tomcat" => IdFormat::Tomcat,
            other => {
                return Err(format!(
                    "session.format: {other:?} is not one of \"websphere\", \"tomcat\""
                ))
            }
        };
        let separator = match s.separator.as_deref() {
            None if format == IdFormat::Tomcat => b'.',
            None => b':',
            Some(t) if t.len() == 1 && t.as_bytes()[0].is_ascii_punctuation() => t.as_bytes()[0],
            Some(t) => {
                return Err(format!(
                    "session.separator: {t:?} must be one punctuation character"
                ))
            }
        };
        let mut session = SessionConfig::new(&clone_id);
        session.format = format;
        session.separator = separator;
        if let Some(cookie) = s.cookie {
            if cookie.is_empty()
                || !cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!("session.cookie: {cookie:?} is not a cookie name"));
            }
            session.cookie_name = cookie;
        }
        if let Some(p) = s.url_parameter {
            session.url_parameter = (!p.is_empty()).then_some(p);
        }
        session.max_inactive = duration(
            "session.max_inactive",
            s.max_inactive.as_deref(),
            session.max_inactive,
        )?;
        if let Some(path) = s.cookie_path {
            if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
                return Err(format!(
                    "session.cookie_path: {path:?} must start with '/' and hold no ';'"
                ));
            }
            session.cookie_path = path;
        }
        session.secure_cookie = s.secure_cookie.unwrap_or(false);
        let max_sessions = s.max_sessions.unwrap_or(100_000);
        if max_sessions == 0 {
            return Err("session.max_sessions: must be at least 1".into());
        }
        let redis = match (store, raw.redis) {
            (StoreKind::Redis, Some(r)) => Some(RedisConfig::from_raw(r)?),
            (StoreKind::Redis, None) => {
                return Err(
                    "session.store = \"redis\" needs the [redis] table (url, cluster or sentinels)"
                        .into(),
                )
            }
            (_, Some(_)) => {
                return Err(
                    "redis: the [redis] table is only read with session.store = \"redis\"".into(),
                )
            }
            (_, None) => None,
        };
        let replication = match (store, raw.replication) {
            (StoreKind::Memory | StoreKind::Redis, _) => None,
            (StoreKind::Replicated, None) => {
                return Err("replication: the [replication] table is required with session.store = \"replicated\"".into())
            }
            (StoreKind::Replicated, Some(r)) => Some(replication(&clone_id, r, max_sessions)?),
        };
        Ok(MemberConfig {
            clone_id,
            listen,
            store,
            session,
            max_sessions,
            replication,
            redis,
        })
    }
}

fn replication(
    clone_id: &str,
    r: RawReplication,
    max_sessions: usize,
) -> Result<(SocketAddr, ReplicationConfig), String> {
    let listen = addr("replication.listen", &r.listen)?;
    let secret = match (r.secret, r.secret_file) {
        (Some(s), None) => s.into_bytes(),
        (None, Some(path)) => std::fs::read(&path)
            .map(|mut b| {
                while b.last().is_some_and(u8::is_ascii_whitespace) {
                    b.pop();
                }
                b
            })
            .map_err(|e| format!("replication.secret_file: cannot read {path}: {e}"))?,
        (Some(_), Some(_)) => return Err("replication: set secret or secret_file, not both".into()),
        (None, None) => return Err("replication.secret: required (or secret_file)".into()),
    };
    if secret.len() < 16 {
        return Err("replication.secret: at least 16 bytes".into());
    }
    let mut peers = Vec::new();
    for (i, p) in r.peer.into_iter().enumerate() {
        let key = format!("replication.peer[{i}]");
        clone_id_ok(&format!("{key}.clone_id"), &p.clone_id)?;
        if p.clone_id == clone_id {
            return Err(format!(
                "{key}.clone_id: {:?} is this member's own clone id",
                p.clone_id
            ));
        }
        if peers.iter().any(|q: &PeerConfig| q.clone_id == p.clone_id) {
            return Err(format!("{key}.clone_id: {:?} is listed twice", p.clone_id));
        }
        peers.push(PeerConfig {
            clone_id: p.clone_id,
            address: addr(&format!("{key}.address"), &p.address)?,
        });
    }
    let mut cfg = ReplicationConfig::new(clone_id, &secret, peers);
    cfg.max_sessions = max_sessions;
    cfg.replicas = match r.replicas {
        None => Replicas::Count(1),
        Some(RawReplicas::Count(n)) if n >= 1 => {
            Replicas::Count(usize::try_from(n).unwrap_or(usize::MAX))
        }
        Some(RawReplicas::Word(w)) if w == "all" => Replicas::All,
        Some(_) => return Err("replication.replicas: a number of at least 1, or \"all\"".into()),
    };
    cfg.write_mode = match r.write_mode.as_deref().unwrap_or("sync") {
        "sync" => WriteMode::Sync,
        "async" => WriteMode::Async,
        other => {
            return Err(format!(
                "replication.write_mode: {other:?} is not one of \"sync\", \"async\""
            ))
        }
    };
    cfg.write_contents = match r.write_contents.as_deref().unwrap_or("changed") {
        "changed" => WriteContents::Changed,
        "all" => WriteContents::All,
        other => {
            return Err(format!(
                "replication.write_contents: {other:?} is not one of \"changed\", \"all\""
            ))
        }
    };
    cfg.write_interval = duration(
        "replication.write_interval",
        r.write_interval.as_deref(),
        cfg.write_interval,
    )?;
    cfg.timeout = duration("replication.timeout", r.timeout.as_deref(), cfg.timeout)?;
    if cfg.write_interval.is_zero() || cfg.timeout.is_zero() {
        return Err("replication.write_interval / replication.timeout: must be more than 0".into());
    }
    if let Some(size) = r.max_frame {
        let n = parse_size(&size).map_err(|e| format!("replication.max_frame: {e}"))?;
        cfg.max_frame = usize::try_from(n).unwrap_or(usize::MAX).max(64 * 1024);
    } else {
        cfg.max_frame = frame::DEFAULT_MAX_FRAME;
    }
    Ok((listen, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[member]
clone_id = "c1"
listen = "127.0.0.1:9081"
[session]
store = "replicated"
max_inactive = "1m"
[replication]
listen = "127.0.0.1:9181"
secret = "0123456789abcdef"
replicas = "all"
write_mode = "async"
write_interval = "500ms"
[[replication.peer]]
clone_id = "c2"
address = "127.0.0.1:9182"
"#;

    #[test]
    fn a_full_file_parses() {
        let c = MemberConfig::parse(OK).unwrap();
        assert_eq!(c.clone_id, "c1");
        assert_eq!(c.session.max_inactive, Duration::from_secs(60));
        let (listen, r) = c.replication.unwrap();
        assert_eq!(listen.port(), 9181);
        assert_eq!(
            (r.replicas, r.write_mode),
            (Replicas::All, WriteMode::Async)
        );
        assert_eq!(r.write_interval, Duration::from_millis(500));
        assert_eq!(r.peers[0].clone_id, "c2");
    }

    #[test]
    fn errors_name_the_key_and_never_the_secret() {
        let cases = [
            (
                OK.replace("replicas = \"all\"", "replicas = 0"),
                "replication.replicas",
            ),
            (
                OK.replace("\"async\"", "\"later\""),
                "replication.write_mode",
            ),
            (
                OK.replace("secret = \"0123456789abcdef\"", "secret = \"short\""),
                "replication.secret",
            ),
            (
                OK.replace("\"127.0.0.1:9182\"", "\"nowhere\""),
                "replication.peer[0].address",
            ),
            (
                OK.replace("clone_id = \"c2\"", "clone_id = \"c1\""),
                "replication.peer[0].clone_id",
            ),
            (
                OK.replace("max_inactive = \"1m\"", "max_inactive = \"1\""),
                "session.max_inactive",
            ),
            (
                OK.replace("store = \"replicated\"", "store = \"redis\""),
                "session.store",
            ),
            (OK.replace("[session]", "[session]\ncolour = 1"), "colour"),
        ];
        for (text, key) in cases {
            let err = MemberConfig::parse(&text).unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
            assert!(!err.contains("0123456789abcdef"), "secret leaked: {err}");
        }
    }

    #[test]
    fn redis_store_reads_the_redis_table() {
        let base =
            "[member]\nclone_id = \"m1\"\nlisten = \"127.0.0.1:1\"\n[session]\nstore = \"redis\"\n";
        let c = MemberConfig::parse(&format!(
            "{base}[redis]\nurl = \"redis://127.0.0.1:6379\"\nretries = 1\n"
        ))
        .unwrap();
        assert_eq!(c.store, StoreKind::Redis);
        assert_eq!(c.redis.unwrap().retries, 1);
        let err = MemberConfig::parse(base).unwrap_err();
        assert!(err.contains("[redis]"), "{err}");
        let err = MemberConfig::parse(&format!(
            "{base}[redis]\nurl = \"redis://u:pw-secret@h:1\"\nretries = 99\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("redis.retries") && !err.contains("pw-secret"),
            "{err}"
        );
    }

    #[test]
    fn memory_store_needs_no_replication_table() {
        let c = MemberConfig::parse("[member]\nclone_id = \"m1\"\nlisten = \"127.0.0.1:1\"\n[session]\nstore = \"memory\"\n").unwrap();
        assert_eq!(c.store, StoreKind::Memory);
        assert!(c.replication.is_none());
    }
}
