//! Configuration: the raw TOML shape (`raw`), its validation into the typed [`Config`] the
//! proxy runs on (`validate`), and the value parsers for durations, sizes and addresses (`units`).
//!
//! The validated types below are what the hot path reads. Everything the request path needs is
//! precomputed here (clone-id lookup tables, route patterns, the weighted schedule inputs), so no
//! request ever parses a config string.

mod raw;
mod units;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub use units::{parse_duration, parse_size};

/// A whole, validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxySettings,
    /// In file order. Matching picks the most specific route, not the first.
    pub routes: Vec<Route>,
    /// In name order (the TOML table order is not kept by the parser).
    pub clusters: Vec<Cluster>,
}

/// `[proxy]`
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: Vec<SocketAddr>,
    pub max_header_bytes: usize,
    pub post_size_limit: u64,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub websphere_headers: bool,
    /// Extension: tokio worker threads; 0 = one per core. `1` runs a single-threaded runtime.
    pub workers: usize,
    /// Extension: how long an idle pooled connection to a member is kept (default 60s).
    pub pool_idle_timeout: Duration,
    /// Extension: idle keep-alive connections kept per member (default 256).
    pub pool_max_idle: usize,
    /// Extension: TCP_DEFER_ACCEPT on the listeners (Linux): a connection is handed over once
    /// its first bytes have come, or after about this long. Whole seconds; zero turns it off
    /// (default 1s).
    pub defer_accept: Duration,
}

/// An address or a CIDR block in `trusted_proxies` (`"10.0.0.7"`, `"10.0.0.0/8"`, `"::1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(ip)) => self.contains(IpAddr::V6(ip.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => self.contains(IpAddr::V4(v4)),
                None => false,
            },
        }
    }
}

/// `[[route]]`
#[derive(Debug, Clone)]
pub struct Route {
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathPattern>,
    /// Index into [`Config::clusters`].
    pub cluster: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `"*"`
    Any,
    /// `"shop.example.com"`, stored lower-case, without a port.
    Exact(Box<str>),
    /// `"*.example.com"`, stored as the lower-case suffix `".example.com"`.
    Suffix(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `"/login"`
    Exact(Box<str>),
    /// `"/app/*"`, stored as `"/app/"`; `"/*"` is stored as `"/"`. `"/app/*"` also matches `"/app"`.
    Prefix(Box<str>),
}

/// `[cluster.NAME]`
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: Box<str>,
    pub load_balance: LoadBalance,
    pub retry_interval: Duration,
    pub max_attempts: u32,
    pub post_buffer_size: usize,
    pub retry_idempotency_key: bool,
    pub virtual_address: Option<SocketAddr>,
    /// Extension: a response-header timeout also marks the member down (WebSphere's negative
    /// `ServerIOTimeout`). Default false.
    pub mark_down_on_timeout: bool,
    pub affinity: Affinity,
    /// In file order: primaries and backups mixed; backups are tried in this order.
    pub members: Vec<Member>,
}

/// Upper bound on `max_attempts`, so one request's tried-set fits in a fixed array.
pub const MAX_ATTEMPTS_LIMIT: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalance {
    RoundRobin,
    Random,
    LeastRequests,
}

/// `[cluster.NAME.affinity]`
#[derive(Debug, Clone)]
pub struct Affinity {
    pub format: IdFormat,
    pub cookies: Vec<Box<str>>,
    /// `None` when `url_parameter = ""`.
    pub url_parameter: Option<Box<str>>,
    /// One ASCII byte; `:` by default (WebSphere), `.` for the Tomcat form unless configured.
    pub separator: u8,
    pub strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFormat {
    /// `0000<id>:<clone>[:<clone>…]`
    WebSphere,
    /// `<id>.<route>`
    Tomcat,
}

/// `[[cluster.NAME.member]]`
#[derive(Debug, Clone)]
pub struct Member {
    pub name: Box<str>,
    pub clone_id: Box<str>,
    pub address: SocketAddr,
    pub weight: u32,
    pub role: Role,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    /// 0 = unlimited.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

/// A config that could not be read or is invalid. The message names the key and, where the
/// parser knows it, the line; it never echoes the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Shown as `FILE: line N: KEY: message`, leaving out the parts that are `None`.
    #[error(fmt = fmt_invalid)]
    Invalid {
        /// The file, when the text came from one ([`Config::load`]).
        path: Option<String>,
        /// 1-based; `None` where the key is not in the file (no `[[route]]`).
        line: Option<usize>,
        /// The key path as in the file (`cluster.shop.member[1].clone_id`, array indexes
        /// 0-based); `None` where there is none (a TOML syntax error).
        key: Option<String>,
        message: String,
    },
}

fn fmt_invalid(
    path: &Option<String>,
    line: &Option<usize>,
    key: &Option<String>,
    message: &str,
    f: &mut std::fmt::Formatter,
) -> std::fmt::Result {
    if let Some(path) = path {
        write!(f, "{path}: ")?;
    }
    if let Some(line) = line {
        write!(f, "line {line}: ")?;
    }
    if let Some(key) = key {
        write!(f, "{key}: ")?;
    }
    f.write_str(message)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|error| match error {
            ConfigError::Invalid {
                path: None,
                line,
                key,
                message,
            } => ConfigError::Invalid {
                path: Some(path.display().to_string()),
                line,
                key,
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text. The error ([`ConfigError::Invalid`], without a file)
    /// names the key and the line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        validate::parse(text)
    }
}
