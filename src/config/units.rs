//! Value parsers: durations (`"500ms"`, `"5s"`, `"2m"`), sizes (`"64KiB"`, `"100MiB"`), socket
//! addresses (`"host:port"`), `trusted_proxies` entries (`"10.0.0.7"`, `"10.0.0.0/8"`) and route
//! host and path patterns; plus the serde adapters `raw` uses for durations and sizes.
//!
//! Each returns a one-line message that quotes the offending text (cut to a few dozen
//! characters), so the caller only has to add the key and the line.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use super::{HostPattern, IpNet, PathPattern};

/// Parses `<digits><unit>`: `us`, `ms`, `s`, `m`, `h` or `d` (`"250us"`, `"500ms"`, `"5s"`, `"2m"`,
/// `"1h"`, `"1d"`). No sign, no fraction, no spaces; a unit is required (`"5"` is an error, since
/// seconds and milliseconds are both common guesses).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text, "duration")?;
    let unit_nanos: u64 = match unit {
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        "" => {
            return Err(format!(
                "invalid duration {}: missing unit (write e.g. \"{number}s\" or \"{number}ms\")",
                quote(text)
            ))
        }
        _ => {
            return Err(format!(
                "invalid duration {}: unknown unit {} (use us, ms, s, m, h or d)",
                quote(text),
                quote(unit)
            ))
        }
    };
    let nanos = number
        .checked_mul(unit_nanos)
        .ok_or_else(|| format!("invalid duration {}: too large", quote(text)))?;
    Ok(Duration::from_nanos(nanos))
}

/// Parses `<digits>[unit]`: plain digits are bytes; `B`; decimal `KB` `MB` `GB` `TB` (powers of
/// 1000); binary `KiB` `MiB` `GiB` `TiB` (powers of 1024). Units are case-insensitive
/// (`"64kib"` = `"64KiB"`). No sign, no fraction, no spaces.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text, "size")?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size {}: unknown unit {} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)",
                quote(text),
                quote(unit)
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {}: too large", quote(text)))
}

/// Splits `"<digits><rest>"` and parses the digits. `what` names the value in messages.
fn split_number<'a>(text: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    if text.is_empty() {
        return Err(format!("empty {what}"));
    }
    if text.starts_with('-') {
        return Err(format!(
            "invalid {what} {}: must not be negative",
            quote(text)
        ));
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid {what} {}: must start with a number (e.g. \"{}\")",
            quote(text),
            if what == "size" { "64KiB" } else { "5s" }
        ));
    }
    let number = text[..digits]
        .parse::<u64>()
        .map_err(|_| format!("invalid {what} {}: too large", quote(text)))?;
    Ok((number, &text[digits..]))
}

/// Parses `"host:port"`: an IP address (`"127.0.0.1:80"`, `"[::1]:80"`) or a host name, which is
/// resolved now (the first address the resolver returns is used). `allow_port_zero` is for
/// listen addresses, where port 0 means "any free port".
pub(crate) fn parse_address(text: &str, allow_port_zero: bool) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => resolve(text)?,
    };
    if addr.port() == 0 && !allow_port_zero {
        return Err(format!("invalid address {}: port 0", quote(text)));
    }
    Ok(addr)
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "invalid address {}: missing port (write host:port)",
            quote(text)
        ));
    };
    if host.starts_with('[') {
        return Err(format!("invalid address {}: bad IPv6 address", quote(text)));
    }
    if host.contains(':') {
        return Err(format!(
            "invalid address {}: an IPv6 address needs brackets, e.g. \"[::1]:8080\"",
            quote(text)
        ));
    }
    if host.is_empty() {
        return Err(format!("invalid address {}: missing host", quote(text)));
    }
    let valid_host = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid_host {
        return Err(format!("invalid address {}: bad host name", quote(text)));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid address {}: bad port {}", quote(text), quote(port)))?;
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {}: {e}", quote(host)))?;
    addrs
        .next()
        .ok_or_else(|| format!("cannot resolve host {}: no address", quote(host)))
}

/// Parses a `trusted_proxies` entry: an IP address (a /32 or /128) or a CIDR block. Host bits
/// set below the prefix (`"10.1.2.3/8"`) are accepted; matching masks them.
pub(crate) fn parse_ip_net(text: &str) -> Result<IpNet, String> {
    let bad = || {
        format!(
            "invalid address {}: expected an IP address or a CIDR block like \"10.0.0.0/8\"",
            quote(text)
        )
    };
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "invalid CIDR block {}: the prefix length must be 0..={max}",
                        quote(text)
                    ))
                }
            }
        }
        Some(_) => return Err(bad()),
    };
    Ok(IpNet { addr, prefix })
}

/// `"*"`, `"*.example.com"` or an exact host name (or `"[::1]"`), lower-cased, without a port.
pub(crate) fn host_pattern(text: &str) -> Result<HostPattern, String> {
    if text == "*" {
        return Ok(HostPattern::Any);
    }
    let lower = text.to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix("*.") {
        if !suffix.contains('*') {
            host_name(text, suffix)?;
            return Ok(HostPattern::Suffix(format!(".{suffix}").into()));
        }
    }
    if lower.contains('*') {
        return Err(format!(
            "invalid host pattern {}: '*' is allowed only as \"*\" or as \"*.example.com\"",
            quote(text)
        ));
    }
    if let Some(ip) = lower.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if ip.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(HostPattern::Exact(lower.into()));
        }
    }
    host_name(text, &lower)?;
    Ok(HostPattern::Exact(lower.into()))
}

/// Dot-separated labels of letters, digits, `-` and `_`.
fn host_name(text: &str, name: &str) -> Result<(), String> {
    let why = if !name.is_ascii() {
        "write an internationalized name in its ASCII (xn--) form"
    } else if name.contains(':') {
        "a host pattern has no port"
    } else if name.split('.').any(|l| {
        l.is_empty()
            || !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        "expected a host name like \"shop.example.com\", \"*.example.com\" or \"*\""
    } else {
        return Ok(());
    };
    Err(format!("invalid host pattern {}: {why}", quote(text)))
}

/// An exact path (`"/login"`) or a prefix (`"/app/*"` → `"/app/"`, `"/*"` → `"/"`).
pub(crate) fn path_pattern(text: &str) -> Result<PathPattern, String> {
    let why = if !text.starts_with('/') {
        "must start with '/'"
    } else if !text.is_ascii() {
        "write non-ASCII characters percent-encoded"
    } else if text
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        "must not contain spaces, control characters, '?' or '#'"
    } else if let Some(prefix) = text.strip_suffix("/*").filter(|p| !p.contains('*')) {
        return Ok(PathPattern::Prefix(format!("{prefix}/").into()));
    } else if text.contains('*') {
        "'*' is allowed only as a final \"/*\" (a prefix match, e.g. \"/app/*\")"
    } else {
        return Ok(PathPattern::Exact(text.into()));
    };
    Err(format!("invalid path pattern {}: {why}", quote(text)))
}

/// serde `deserialize_with` for a duration string, parsed by [`parse_duration`].
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration string like \"5s\" or \"500ms\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(V)
}

/// serde `deserialize_with` for a size string parsed by [`parse_size`], or a number of bytes.
pub(crate) fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size like \"64KiB\" or a number of bytes")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(V)
}

/// `text` in quotes, escaped, cut to 40 characters so a garbage value cannot flood a log line.
pub(crate) fn quote(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations() {
        let err = |t: &str| parse_duration(t).unwrap_err();
        assert_eq!(err(""), "empty duration");
        assert!(
            err("-5s").contains("must not be negative"),
            "{}",
            err("-5s")
        );
        assert!(err("5").contains("missing unit"), "{}", err("5"));
        assert!(err("5x").contains("unknown unit \"x\""), "{}", err("5x"));
        assert!(err("s").contains("must start with a number"));
        assert!(err("five").contains("must start with a number"));
        assert!(err("5 s").contains("unknown unit \" s\""));
        assert!(err("1.5s").contains("unknown unit \".5s\""));
        assert!(err("99999999999999999999s").contains("too large"));
        assert!(err("999999999999d").contains("too large"));
        assert!(err("5s5").contains("unknown unit"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("64kib"), Ok(65_536));
        assert_eq!(parse_size("100MiB"), Ok(100 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes() {
        let err = |t: &str| parse_size(t).unwrap_err();
        assert_eq!(err(""), "empty size");
        assert!(err("-1KiB").contains("must not be negative"));
        assert!(err("KiB").contains("must start with a number"));
        assert!(err("64 KiB").contains("unknown unit \" KiB\""));
        assert!(err("64Kb/s").contains("unknown unit"));
        assert!(err("100m").contains("unknown unit \"m\""));
        assert!(err("99999999999999999999").contains("too large"));
        assert!(err("17179869184GiB").contains("too large"));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("127.0.0.1:9081", false),
            Ok("127.0.0.1:9081".parse().unwrap())
        );
        assert_eq!(
            parse_address("[::1]:80", false),
            Ok("[::1]:80".parse().unwrap())
        );
        let local = parse_address("localhost:8080", false).unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8080);
        assert!(parse_address("127.0.0.1:0", true).is_ok());
    }

    #[test]
    fn bad_addresses() {
        let err = |t: &str| parse_address(t, false).unwrap_err();
        assert!(err("127.0.0.1").contains("missing port"));
        assert!(err("127.0.0.1:0").contains("port 0"));
        assert!(err("::1:80").contains("needs brackets"));
        assert!(err("[::g]:80").contains("bad IPv6"));
        assert!(err(":80").contains("missing host"));
        assert!(err("localhost:http").contains("bad port \"http\""));
        assert!(err("localhost:70000").contains("bad port"));
        assert!(err("a b:80").contains("bad host name"));
        let e = err("no-such-host.invalid:80");
        assert!(
            e.starts_with("cannot resolve host \"no-such-host.invalid\""),
            "{e}"
        );
    }

    #[test]
    fn ip_nets() {
        let net = parse_ip_net("10.0.0.0/8").unwrap();
        assert_eq!(net.prefix, 8);
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip_net("192.0.2.7").unwrap().prefix, 32);
        assert_eq!(parse_ip_net("::1").unwrap().prefix, 128);
        assert_eq!(parse_ip_net("fd00::/8").unwrap().prefix, 8);
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/x",
            "localhost",
            "10.0.0",
        ] {
            assert!(parse_ip_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns() {
        let exact = |h: &str| HostPattern::Exact(h.into());
        assert_eq!(host_pattern("*"), Ok(HostPattern::Any));
        assert_eq!(
            host_pattern("Shop.Example.com"),
            Ok(exact("shop.example.com"))
        );
        assert_eq!(
            host_pattern("*.EXAMPLE.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(host_pattern("[::1]"), Ok(exact("[::1]")));
        assert_eq!(host_pattern("localhost"), Ok(exact("localhost")));
        let err = |h: &str| host_pattern(h).unwrap_err();
        assert!(err("a.example.com:80").ends_with("a host pattern has no port"));
        assert!(err("*.*.com").contains("'*' is allowed only"));
        assert!(err("w*.com").contains("'*' is allowed only"));
        assert!(err("bücher.de").contains("xn--"));
        for bad in ["", ".com", "a..b", "a b", "*.", "[::g]"] {
            assert!(host_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_patterns() {
        assert_eq!(path_pattern("/*"), Ok(PathPattern::Prefix("/".into())));
        assert_eq!(
            path_pattern("/app/*"),
            Ok(PathPattern::Prefix("/app/".into()))
        );
        assert_eq!(
            path_pattern("/login"),
            Ok(PathPattern::Exact("/login".into()))
        );
        assert_eq!(path_pattern("/"), Ok(PathPattern::Exact("/".into())));
        let err = |p: &str| path_pattern(p).unwrap_err();
        assert!(err("app/*").ends_with("must start with '/'"));
        assert!(err("/a*").contains("only as a final \"/*\""));
        assert!(err("/*/b").contains("only as a final"));
        assert!(err("/a/**").contains("only as a final"));
        assert!(err("/a b").contains("spaces"));
        assert!(err("/a?b").contains("'?'"));
        assert!(err("/café").contains("percent-encoded"));
    }

    #[test]
    fn quote_cuts_long_values() {
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        let long = "x".repeat(100);
        assert_eq!(quote(&long), format!("\"{}\"…", "x".repeat(40)));
    }
}
