//! Header rules of DESIGN.md §4: hop-by-hop headers out, forwarding headers in, the WebSphere
//! private headers (`$WS*`) stripped from clients and optionally added by the proxy.
//!
//! What depends only on the client connection (its address as a header value) is made once per
//! connection in [`ClientConn`], not once per request.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::IpNet;
use crate::server::h1::itoa;

const HOP_COUNT: usize = 7;
/// The hop-by-hop headers of RFC 9110 §7.6.1 (and `Proxy-Connection`), removed both ways.
pub(crate) const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const WSRA: HeaderName = HeaderName::from_static("$wsra");
const WSRH: HeaderName = HeaderName::from_static("$wsrh");
const WSSC: HeaderName = HeaderName::from_static("$wssc");
const WSIS: HeaderName = HeaderName::from_static("$wsis");
const WSSN: HeaderName = HeaderName::from_static("$wssn");
const WSSP: HeaderName = HeaderName::from_static("$wssp");

/// What the header rules need to know of one client connection.
pub struct ClientConn {
    pub client: SocketAddr,
    /// The listener's address (with a wildcard listen address, the IP is unspecified).
    pub local: SocketAddr,
    /// The client is in `trusted_proxies`: its forwarding headers are kept and appended to.
    pub trusted: bool,
    /// The client's IP as text, and the listener's port: kept in place, so that a new
    /// connection costs no allocation here.
    client_ip: Inline<45>,
    ipv6: bool,
    local_port: Inline<5>,
}

/// Short text held in place (an IP address, a port number).
#[derive(Clone, Copy)]
struct Inline<const N: usize> {
    bytes: [u8; N],
    len: u8,
}

impl<const N: usize> Inline<N> {
    fn new(text: &[u8]) -> Inline<N> {
        let mut inline = Inline {
            bytes: [0; N],
            len: 0,
        };
        inline.push(text);
        inline
    }

    fn push(&mut self, text: &[u8]) {
        let at = usize::from(self.len);
        self.bytes[at..at + text.len()].copy_from_slice(text);
        self.len += text.len() as u8;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl ClientConn {
    pub fn new(client: SocketAddr, local: SocketAddr, trusted_proxies: &[IpNet]) -> ClientConn {
        let ip = canonical(client.ip());
        let client_ip = match ip {
            IpAddr::V4(v4) => ipv4_text(v4),
            IpAddr::V6(v6) => Inline::new(v6.to_string().as_bytes()),
        };
        ClientConn {
            client,
            local,
            trusted: trusted_proxies.iter().any(|net| net.contains(ip)),
            client_ip,
            ipv6: ip.is_ipv6(),
            local_port: Inline::new(itoa(u64::from(local.port()), &mut [0; 20])),
        }
    }
}

/// `10.1.2.3`, as `Ipv4Addr`'s `Display` writes it, without `fmt`.
fn ipv4_text(ip: std::net::Ipv4Addr) -> Inline<45> {
    let mut text = Inline::new(b"");
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push(b".");
        }
        text.push(itoa(u64::from(octet), &mut [0; 20]));
    }
    text
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Which of the names the rules act on a header map holds, found in one pass over its names
/// (most requests carry few of them, and a removal costs a hash lookup whether or not the
/// header is there).
#[derive(Clone, Copy, Default)]
struct Present {
    hop_by_hop: [bool; HOP_COUNT],
    any_hop_by_hop: bool,
    expect: bool,
    private: bool,
    forwarded: bool,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut p = Present::default();
        for name in headers.keys() {
            if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
                p.hop_by_hop[i] = true;
                p.any_hop_by_hop = true;
            } else if name == header::EXPECT {
                p.expect = true;
            } else if name == header::FORWARDED {
                p.forwarded = true;
            } else if name == X_FORWARDED_FOR {
                p.forwarded_for = true;
            } else if name == X_FORWARDED_PROTO {
                p.forwarded_proto = true;
            } else if name == X_FORWARDED_HOST {
                p.forwarded_host = true;
            } else if name.as_str().starts_with("$ws") {
                p.private = true;
            }
        }
        p
    }
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_hop_by_hop_present(headers, &Present::scan(headers));
}

fn remove_hop_by_hop_present(headers: &mut HeaderMap, present: &Present) {
    if !present.any_hop_by_hop {
        return;
    }
    if present.hop_by_hop[0] {
        let named: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for value in &named {
            let Ok(text) = value.to_str() else { continue };
            for name in text.split(',') {
                let name = name.trim();
                // `keep-alive` and `close` are options, not header names (a `Keep-Alive`
                // header is removed below anyway).
                if !name.is_empty()
                    && !name.eq_ignore_ascii_case("keep-alive")
                    && !name.eq_ignore_ascii_case("close")
                {
                    headers.remove(name);
                }
            }
        }
    }
    for (name, _) in HOP_BY_HOP
        .iter()
        .zip(present.hop_by_hop)
        .filter(|(_, p)| *p)
    {
        headers.remove(name);
    }
}

/// Rewrites a client's request headers for a member. `host` is the request's host (with port,
/// as the client sent it). What goes is removed from the map; what this proxy adds comes back
/// as [`Added`], written after the map's lines: most requests then need no insert at all.
pub fn rewrite_request<'a>(
    headers: &mut HeaderMap,
    conn: &'a ClientConn,
    host: Option<&'a HeaderValue>,
    websphere: bool,
) -> Added<'a> {
    let present = Present::scan(headers);
    remove_hop_by_hop_present(headers, &present);
    // The proxy read the body (or streams it); members never see a client's expectation.
    if present.expect {
        headers.remove(header::EXPECT);
    }
    if present.private {
        remove_private_headers(headers);
    }
    let mut added = Added {
        conn,
        host,
        forwarded_for: true,
        forwarded_proto: true,
        forwarded_host: host.is_some(),
        forwarded: true,
        websphere,
    };
    if conn.trusted {
        // A trusted proxy's forwarding headers are kept, and the lists appended to.
        if present.forwarded_for {
            append_list(headers, X_FORWARDED_FOR, conn.client_ip.as_bytes());
            added.forwarded_for = false;
        }
        added.forwarded_proto = !present.forwarded_proto;
        added.forwarded_host &= !present.forwarded_host;
        if present.forwarded {
            let host_text = host.and_then(|h| h.to_str().ok());
            append_list(
                headers,
                header::FORWARDED,
                &forwarded_element(conn, host_text).concat(),
            );
            added.forwarded = false;
        }
    } else {
        // An untrusted client's own are replaced.
        for (there, name) in [
            (present.forwarded_for, X_FORWARDED_FOR),
            (present.forwarded_proto, X_FORWARDED_PROTO),
            (present.forwarded_host, X_FORWARDED_HOST),
            (present.forwarded, header::FORWARDED),
        ] {
            if there {
                headers.remove(name);
            }
        }
    }
    added
}

/// The headers [`rewrite_request`] adds, as lines of the member's request head.
pub struct Added<'a> {
    conn: &'a ClientConn,
    host: Option<&'a HeaderValue>,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
    forwarded: bool,
    websphere: bool,
}

impl Added<'_> {
    /// Appends the lines, each ending in CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let conn = self.conn;
        let ip = conn.client_ip.as_bytes();
        let mut line = |name: &[u8], value: &[&[u8]]| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            for part in value {
                out.extend_from_slice(part);
            }
            out.extend_from_slice(b"\r\n");
        };
        if self.forwarded_for {
            line(b"x-forwarded-for", &[ip]);
        }
        if self.forwarded_proto {
            line(b"x-forwarded-proto", &[b"http"]);
        }
        if let (true, Some(host)) = (self.forwarded_host, self.host) {
            line(b"x-forwarded-host", &[host.as_bytes()]);
        }
        if self.forwarded {
            let host = self.host.and_then(|h| h.to_str().ok());
            line(b"forwarded", &forwarded_element(conn, host));
        }
        if self.websphere {
            line(WSRA.as_str().as_bytes(), &[ip]);
            line(WSRH.as_str().as_bytes(), &[ip]);
            line(WSSC.as_str().as_bytes(), &[b"http"]);
            line(WSIS.as_str().as_bytes(), &[b"false"]);
            if let Some(host) = self.host {
                line(
                    WSSN.as_str().as_bytes(),
                    &[host_without_port(host.as_bytes())],
                );
            }
            line(WSSP.as_str().as_bytes(), &[conn.local_port.as_bytes()]);
        }
    }
}

/// This proxy's `Forwarded` element, `for=…;proto=http` and `;host="…"` when there is a host,
/// as pieces to write one after the other.
fn forwarded_element<'a>(conn: &'a ClientConn, host: Option<&'a str>) -> [&'a [u8]; 8] {
    let (open, close): (&[u8], &[u8]) = if conn.ipv6 {
        (b"\"[", b"]\"")
    } else {
        (b"", b"")
    };
    let (host_open, host, host_close): (&[u8], &[u8], &[u8]) = match host {
        Some(host) => (b";host=\"", host.as_bytes(), b"\""),
        None => (b"", b"", b""),
    };
    [
        b"for=",
        open,
        conn.client_ip.as_bytes(),
        close,
        b";proto=http",
        host_open,
        host,
        host_close,
    ]
}

/// Removes every `$WS…` header a client sent: only the proxy may set them.
fn remove_private_headers(headers: &mut HeaderMap) {
    let has_private = headers.keys().any(|name| name.as_str().starts_with("$ws"));
    if has_private {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("$ws"))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// Appends `item` to a comma-separated list header, folding several lines into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &[u8]) {
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(&name) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    let value = if joined.is_empty() {
        HeaderValue::from_bytes(item)
    } else {
        joined.extend_from_slice(item);
        HeaderValue::from_bytes(&joined)
    };
    if let Ok(value) = value {
        headers.insert(name, value);
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_is_display() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "255.255.255.255",
            "100.20.3.199",
        ] {
            let addr: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ipv4_text(addr).as_bytes(), addr.to_string().as_bytes());
        }
    }

    #[test]
    fn host_port_is_cut() {
        assert_eq!(host_without_port(b"a.example.com:8080"), b"a.example.com");
        assert_eq!(host_without_port(b"a.example.com"), b"a.example.com");
        assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
    }

    #[test]
    fn connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-a, keep-alive"),
        );
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-b"));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let conn = ClientConn::new(
            "10.1.2.3:5000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            &[],
        );
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert("$wsra", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let host = HeaderValue::from_static("shop:8080");
        let added = rewrite_request(&mut h, &conn, Some(&host), false);
        assert_eq!(
            sent(&h, &added),
            "x-kept: 1\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop:8080\r\n\
             forwarded: for=10.1.2.3;proto=http;host=\"shop:8080\"\r\n"
        );
    }

    /// The header lines a member is sent: the map's, then the added ones.
    fn sent(headers: &HeaderMap, added: &Added) -> String {
        let mut out = Vec::new();
        for (name, value) in headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        added.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ipv6_client_and_port_are_written_as_text() {
        let conn = ClientConn::new(
            "[2001:db8::1]:5000".parse().unwrap(),
            "[::1]:65535".parse().unwrap(),
            &[],
        );
        let mut h = HeaderMap::new();
        let added = rewrite_request(&mut h, &conn, None, true);
        assert_eq!(
            sent(&h, &added),
            "x-forwarded-for: 2001:db8::1\r\nx-forwarded-proto: http\r\n\
             forwarded: for=\"[2001:db8::1]\";proto=http\r\n\
             $wsra: 2001:db8::1\r\n$wsrh: 2001:db8::1\r\n$wssc: http\r\n$wsis: false\r\n\
             $wssp: 65535\r\n"
        );
        let conn = ClientConn::new(
            "[::ffff:10.0.0.7]:1".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            &[],
        );
        let added = rewrite_request(&mut h, &conn, None, true);
        let text = sent(&h, &added);
        assert!(
            text.contains("forwarded: for=10.0.0.7;proto=http\r\n"),
            "{text}"
        );
        assert!(text.contains("$wssp: 0\r\n"), "{text}");
    }

    #[test]
    fn trusted_forwarding_headers_are_appended() {
        let trusted = [IpNet {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8,
        }];
        let conn = ClientConn::new(
            "10.1.2.3:5000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            &trusted,
        );
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.append(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.append(header::FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        let host = HeaderValue::from_static("shop:8080");
        let added = rewrite_request(&mut h, &conn, Some(&host), true);
        assert_eq!(
            sent(&h, &added),
            "x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\nx-forwarded-proto: https\r\n\
             forwarded: for=1.1.1.1, for=10.1.2.3;proto=http;host=\"shop:8080\"\r\n\
             x-forwarded-host: shop:8080\r\n\
             $wsra: 10.1.2.3\r\n$wsrh: 10.1.2.3\r\n$wssc: http\r\n$wsis: false\r\n\
             $wssn: shop\r\n$wssp: 80\r\n"
        );
    }
}
