//! Raw config → validated [`Config`].
//!
//! Every error is a [`ConfigError::Invalid`] that displays as one line, `line N: KEY: what is
//! wrong` (after `FILE: ` when loaded from a file), where KEY is the key path as in the
//! file (`cluster.shop.member[1].clone_id`, array indexes **0-based**: `route[0]` is the first
//! `[[route]]`). `line N: ` is left out only where the key is not in the file at all (no
//! `[[route]]`). Values are quoted (cut short) to help find them, except for keys that look like
//! secrets, and the file itself is never echoed.

use std::collections::HashMap;
use std::time::Duration;

use super::raw::{
    join_key, Locator, RawAffinity, RawCluster, RawConfig, RawIdFormat, RawLoadBalance, RawMember,
    RawProxy, RawRole, RawRoute,
};
use super::units::{host_pattern, parse_address, parse_ip_net, path_pattern, quote};
use super::{
    Affinity, Cluster, Config, ConfigError, IdFormat, LoadBalance, Member, ProxySettings, Role,
    Route, MAX_ATTEMPTS_LIMIT,
};

/// hyper refuses a read buffer (which must hold the whole request head) under 8 KiB.
const MIN_HEADER_BYTES: u64 = 8192;
const MAX_WEIGHT: i64 = 10_000;

pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    build(raw).map_err(|fault| fault.into_error(text))
}

/// An error about the text of a file, which [`Config::load`](super::Config::load) names.
fn invalid(line: Option<usize>, key: Option<String>, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: None,
        line,
        key,
        message: one_line(&message),
    }
}

/// A rule broken at a key path; the line is looked up only when rendering.
struct Fault {
    path: String,
    message: String,
}

fn fault(path: impl Into<String>, message: impl Into<String>) -> Fault {
    Fault {
        path: path.into(),
        message: message.into(),
    }
}

impl Fault {
    fn into_error(self, text: &str) -> ConfigError {
        let line = Locator::new(text)
            .span_of(&self.path)
            .map(|span| line_of(text, span.start));
        // No rule quotes a secret today; this keeps it so if one ever does.
        let message = match looks_secret(&self.path) && self.message.contains('"') {
            true => "invalid value (not shown, the key looks like a secret)".into(),
            false => self.message,
        };
        invalid(line, Some(self.path), message)
    }
}

/// A parse error from toml (syntax, unknown key, wrong type, bad duration or size), with the line
/// and, when the text is valid TOML, the key path.
fn toml_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let locator = Locator::new(text);
    let mut path = error
        .span()
        .and_then(|span| locator.path_at(&span))
        .map(str::to_owned);
    // serde speaks of fields, variants and Rust types; the file has keys, values and numbers.
    let mut message = one_line(error.message())
        .replace("unknown variant `", "unknown value `")
        .replace("expected usize", "expected a whole number >= 0")
        .replace("expected u64", "expected a whole number >= 0");
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, rest) = rest.split_once('`').unwrap_or((rest, ""));
        message = match path {
            Some(_) => format!("unknown key{rest}"),
            None => format!("unknown key `{name}`{rest}"),
        };
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        message = match &mut path {
            Some(path) => {
                *path = join_key(path, name);
                "required key is missing".into()
            }
            None => format!("required key `{name}` is missing"),
        };
    } else if path.as_deref().is_some_and(looks_secret) {
        message = "invalid value (not shown, the key looks like a secret)".into();
    }
    let line = error.span().map(|span| line_of(text, span.start));
    invalid(line, path, message)
}

fn looks_secret(path: &str) -> bool {
    let path = path.to_ascii_lowercase();
    ["secret", "password", "passwd", "token", "credential"]
        .iter()
        .any(|word| path.contains(word))
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn build(raw: RawConfig) -> Result<Config, Fault> {
    let proxy = proxy(raw.proxy)?;
    let clusters = raw
        .clusters
        .into_iter()
        .map(|(name, c)| cluster(name, c))
        .collect::<Result<Vec<_>, _>>()?;
    let routes = routes(raw.routes, &clusters)?;
    Ok(Config {
        proxy,
        routes,
        clusters,
    })
}

fn proxy(raw: RawProxy) -> Result<ProxySettings, Fault> {
    if raw.listen.is_empty() {
        return Err(fault("proxy.listen", "must name at least one address"));
    }
    let mut listen = Vec::with_capacity(raw.listen.len());
    for (i, text) in raw.listen.iter().enumerate() {
        let path = format!("proxy.listen[{i}]");
        let addr = parse_address(text, true).map_err(|m| fault(&path, m))?;
        if let Some(first) = listen.iter().position(|a| *a == addr) {
            return Err(fault(path, format!("{addr} is already listen[{first}]")));
        }
        listen.push(addr);
    }
    if raw.max_header_bytes < MIN_HEADER_BYTES {
        return Err(fault(
            "proxy.max_header_bytes",
            format!(
                "must be at least {MIN_HEADER_BYTES} (8KiB), hyper's minimum buffer size; got {}",
                raw.max_header_bytes
            ),
        ));
    }
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, t)| parse_ip_net(t).map_err(|m| fault(format!("proxy.trusted_proxies[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ProxySettings {
        listen,
        max_header_bytes: to_usize("proxy.max_header_bytes", raw.max_header_bytes)?,
        post_size_limit: raw.post_size_limit,
        request_timeout: positive("proxy.request_timeout", raw.request_timeout)?,
        shutdown_grace: raw.shutdown_grace,
        trusted_proxies,
        websphere_headers: raw.websphere_headers,
        workers: raw.workers,
        pool_idle_timeout: raw.pool_idle_timeout,
        pool_max_idle: raw.pool_max_idle,
        defer_accept: whole_seconds("proxy.defer_accept", raw.defer_accept)?,
    })
}

fn cluster(name: String, raw: RawCluster) -> Result<Cluster, Fault> {
    let at = join_key("cluster", &name);
    if !is_name(&name) {
        return Err(fault(
            &at,
            "a cluster name may use only letters, digits, '_', '-' and '.'",
        ));
    }
    if raw.members.is_empty() {
        return Err(fault(
            &at,
            format!("has no members: add a [[{at}.member]] table"),
        ));
    }
    if !(1..=i64::from(MAX_ATTEMPTS_LIMIT)).contains(&raw.max_attempts) {
        return Err(fault(
            format!("{at}.max_attempts"),
            format!("must be 1..={MAX_ATTEMPTS_LIMIT}; got {}", raw.max_attempts),
        ));
    }
    let virtual_address = match &raw.virtual_address {
        Some(text) => Some(
            parse_address(text, false).map_err(|m| fault(format!("{at}.virtual_address"), m))?,
        ),
        None => None,
    };
    let affinity = affinity(&format!("{at}.affinity"), raw.affinity)?;
    let members = members(&at, raw.members, affinity.separator)?;
    Ok(Cluster {
        load_balance: match raw.load_balance {
            RawLoadBalance::RoundRobin => LoadBalance::RoundRobin,
            RawLoadBalance::Random => LoadBalance::Random,
            RawLoadBalance::LeastRequests => LoadBalance::LeastRequests,
        },
        retry_interval: raw.retry_interval,
        max_attempts: raw.max_attempts as u32, // in 1..=MAX_ATTEMPTS_LIMIT, checked above
        post_buffer_size: to_usize(&format!("{at}.post_buffer_size"), raw.post_buffer_size)?,
        retry_idempotency_key: raw.retry_idempotency_key,
        virtual_address,
        mark_down_on_timeout: raw.mark_down_on_timeout,
        affinity,
        members,
        name: name.into(),
    })
}

fn affinity(at: &str, raw: RawAffinity) -> Result<Affinity, Fault> {
    let format = match raw.format {
        RawIdFormat::WebSphere => IdFormat::WebSphere,
        RawIdFormat::Tomcat => IdFormat::Tomcat,
    };
    let separator = match (&raw.separator, format) {
        (Some(text), _) => separator(text).map_err(|m| fault(format!("{at}.separator"), m))?,
        (None, IdFormat::WebSphere) => b':',
        (None, IdFormat::Tomcat) => b'.',
    };
    let mut cookies = Vec::with_capacity(raw.cookies.len());
    for (i, cookie) in raw.cookies.iter().enumerate() {
        if !is_token(cookie) {
            return Err(fault(
                format!("{at}.cookies[{i}]"),
                format!("{} is not a valid cookie name", quote(cookie)),
            ));
        }
        cookies.push(cookie.as_str().into());
    }
    let url_parameter = match raw.url_parameter.as_str() {
        "" => None,
        p if is_token(p) => Some(p.into()),
        p => {
            return Err(fault(
                format!("{at}.url_parameter"),
                format!(
                    "{} is not a valid parameter name (\"\" turns it off)",
                    quote(p)
                ),
            ))
        }
    };
    Ok(Affinity {
        format,
        cookies,
        url_parameter,
        separator,
        strict: raw.strict,
    })
}

/// One ASCII punctuation character that can sit inside a cookie value (RFC 6265 excludes `"`,
/// `,`, `;` and `\`) and inside a `;jsessionid=` path parameter (so not `=`).
fn separator(text: &str) -> Result<u8, String> {
    match text.as_bytes() {
        [b] if b.is_ascii_punctuation() && !matches!(b, b';' | b'=' | b',' | b'"' | b'\\') => {
            Ok(*b)
        }
        _ => Err(format!(
            "must be exactly one ASCII punctuation character other than ';', '=', ',', '\"' \
             and '\\' (e.g. \":\" or \"+\"); got {}",
            quote(text)
        )),
    }
}

fn members(at: &str, raw: Vec<RawMember>, separator: u8) -> Result<Vec<Member>, Fault> {
    let mut members: Vec<Member> = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let at = format!("{at}.member[{i}]");
        if !is_name(&m.name) {
            return Err(fault(
                format!("{at}.name"),
                format!(
                    "{} is not a valid member name: use letters, digits, '_', '-' and '.'",
                    quote(&m.name)
                ),
            ));
        }
        if let Some(j) = members.iter().position(|o| *o.name == *m.name) {
            return Err(fault(
                format!("{at}.name"),
                format!("duplicate member name {}, also member[{j}]", quote(&m.name)),
            ));
        }
        clone_id(&m.clone_id, separator).map_err(|e| fault(format!("{at}.clone_id"), e))?;
        if let Some(j) = members.iter().position(|o| *o.clone_id == *m.clone_id) {
            return Err(fault(
                format!("{at}.clone_id"),
                format!(
                    "duplicate clone id {}, also member[{j}] ({})",
                    quote(&m.clone_id),
                    quote(&members[j].name)
                ),
            ));
        }
        let address =
            parse_address(&m.address, false).map_err(|e| fault(format!("{at}.address"), e))?;
        if !(0..=MAX_WEIGHT).contains(&m.weight) {
            return Err(fault(
                format!("{at}.weight"),
                format!("must be 0..={MAX_WEIGHT}; got {}", m.weight),
            ));
        }
        members.push(Member {
            address,
            weight: m.weight as u32, // in 0..=MAX_WEIGHT, checked above
            role: match m.role {
                RawRole::Primary => Role::Primary,
                RawRole::Backup => Role::Backup,
            },
            connect_timeout: positive(&format!("{at}.connect_timeout"), m.connect_timeout)?,
            io_timeout: positive(&format!("{at}.io_timeout"), m.io_timeout)?,
            max_connections: m.max_connections,
            name: m.name.into(),
            clone_id: m.clone_id.into(),
        });
    }
    Ok(members)
}

/// Letters, digits, `_`, `-`, `.`, without the cluster's separator.
fn clone_id(id: &str, separator: u8) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.as_bytes().contains(&separator) {
        return Err(format!(
            "{} contains the separator '{}'",
            quote(id),
            separator as char
        ));
    }
    if !is_name(id) {
        return Err(format!(
            "{} may use only letters, digits, '_', '-' and '.'",
            quote(id)
        ));
    }
    Ok(())
}

fn routes(raw: Vec<RawRoute>, clusters: &[Cluster]) -> Result<Vec<Route>, Fault> {
    if raw.is_empty() {
        return Err(fault(
            "route",
            "no routes: add at least one [[route]] naming a cluster",
        ));
    }
    // (host, path) as normalized text → the route that has it: the same pair twice is ambiguous.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("route[{i}]");
        let cluster = clusters
            .binary_search_by(|c| (*c.name).cmp(r.cluster.as_str()))
            .map_err(|_| {
                let known: Vec<&str> = clusters.iter().map(|c| &*c.name).collect();
                fault(
                    format!("{at}.cluster"),
                    format!(
                        "unknown cluster {} (defined: {})",
                        quote(&r.cluster),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
        let hosts = patterns(&format!("{at}.hosts"), &r.hosts, host_pattern)?;
        let paths = patterns(&format!("{at}.paths"), &r.paths, path_pattern)?;
        for host in &r.hosts {
            for path in &r.paths {
                let key = format!("{} {path}", host.to_ascii_lowercase());
                if let Some(j) = seen.insert(key, i).filter(|&j| j != i) {
                    return Err(fault(
                        at,
                        format!(
                            "host {} with path {} is already routed by route[{j}]",
                            quote(host),
                            quote(path)
                        ),
                    ));
                }
            }
        }
        routes.push(Route {
            hosts,
            paths,
            cluster,
        });
    }
    Ok(routes)
}

fn patterns<T>(
    at: &str,
    texts: &[String],
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Fault> {
    if texts.is_empty() {
        return Err(fault(
            at,
            "must not be empty (leave the key out to match all)",
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(j, t)| parse(t).map_err(|m| fault(format!("{at}[{j}]"), m)))
        .collect()
}

/// Cluster, member and clone-id characters: letters, digits, `_`, `-`, `.`.
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An HTTP token (RFC 9110 §5.6.2), as cookie and parameter names must be.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn positive(path: &str, value: Duration) -> Result<Duration, Fault> {
    if value.is_zero() {
        return Err(fault(path, "must be more than 0"));
    }
    Ok(value)
}

/// At most an hour, in whole seconds (what TCP_DEFER_ACCEPT takes).
fn whole_seconds(path: &str, value: Duration) -> Result<Duration, Fault> {
    if value.subsec_nanos() != 0 {
        return Err(fault(
            path,
            "must be whole seconds, e.g. \"1s\" (\"0s\" turns it off)",
        ));
    }
    if value > Duration::from_secs(3600) {
        return Err(fault(path, "must be at most \"1h\""));
    }
    Ok(value)
}

fn to_usize(path: &str, value: u64) -> Result<usize, Fault> {
    usize::try_from(value).map_err(|_| fault(path, format!("{value} is too large")))
}
