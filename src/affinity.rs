//! Session ids and the clone ids inside them — the one codec the proxy (to route) and the
//! session layer (to mint cookies) share.
//!
//! WebSphere form: `<cache id: 4 chars><id><sep><clone>[<sep><clone>…]`, e.g. `0000AbC:c1:c3`.
//! Tomcat form: `<id>.<route>`. Everything here borrows from the request: no allocation on the
//! request path.

use std::ops::ControlFlow;

use http::header::COOKIE;
use http::HeaderMap;

use crate::config::{Affinity, IdFormat};

/// Longer session id values are treated as sessionless (WebSphere's `SessionIdentifierMaxLength`).
pub const MAX_SESSION_ID_LEN: usize = 1024;

/// Length of the WebSphere cache id ("version prefix") that starts every WebSphere-form value.
pub const CACHE_ID_LEN: usize = 4;

/// A session id value split into its parts, borrowing from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId<'a> {
    /// WebSphere cache id (4 chars); empty in the Tomcat form.
    pub cache_id: &'a str,
    /// The session id proper.
    pub id: &'a str,
    /// What follows the first separator: the clone ids joined by the separator.
    clone_list: &'a str,
    separator: u8,
}

impl<'a> SessionId<'a> {
    /// The clone ids in preference order (owner first). Empty segments are skipped.
    pub fn clones(&self) -> impl Iterator<Item = &'a str> + 'a {
        // `clone_list` only ever comes out of `parse`, so it is visible ASCII: a separator byte
        // outside ASCII matches nothing, exactly as it matched nothing in `parse`.
        let separator = char::from(self.separator);
        self.clone_list
            .split(separator)
            .filter(|clone| !clone.is_empty())
    }
}

/// `b` may appear in a session id value: visible ASCII (0x21..=0x7E) except the characters that
/// would break a cookie or a path parameter: `;`, `,`, `"` and `\`. Non-short-circuit `&` keeps
/// it branch-free, so the validation loop in [`parse`] vectorises.
#[inline]
fn is_id_byte(b: u8) -> bool {
    (b > 0x20) & (b < 0x7F) & (b != b';') & (b != b',') & (b != b'"') & (b != b'\\')
}

/// Parses one session id value. `None` for anything malformed: empty, over
/// [`MAX_SESSION_ID_LEN`], non-ASCII or control characters, no id part.
pub fn parse(value: &str, format: IdFormat, separator: u8) -> Option<SessionId<'_>> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_SESSION_ID_LEN {
        return None;
    }
    // A fold, not `all`: no early exit over at most 1 KiB, so it vectorises.
    if !bytes.iter().fold(true, |ok, &b| ok & is_id_byte(b)) {
        return None;
    }
    let first_separator = bytes.iter().position(|&b| b == separator);
    // From here on `value` is ASCII: every byte index is a char boundary.
    let id_start = match format {
        IdFormat::WebSphere => {
            // The cache id is 4 chars and may not hold the separator (WebSphere PK86131).
            if bytes.len() < CACHE_ID_LEN || first_separator.is_some_and(|i| i < CACHE_ID_LEN) {
                return None;
            }
            CACHE_ID_LEN
        }
        IdFormat::Tomcat => 0,
    };
    let (id, clone_list) = match first_separator {
        Some(i) => (&value[id_start..i], &value[i + 1..]),
        None => (&value[id_start..], ""),
    };
    if id.is_empty() {
        return None;
    }
    Some(SessionId {
        cache_id: &value[..id_start],
        id,
        clone_list,
        separator,
    })
}

/// Builds a session id value: `cache_id` is used only in the WebSphere form; the Tomcat form
/// carries only the first clone id (its route).
pub fn encode(
    format: IdFormat,
    separator: u8,
    cache_id: &str,
    id: &str,
    clones: &[&str],
) -> String {
    let separator = char::from(separator);
    match format {
        IdFormat::WebSphere => {
            let len = cache_id.len()
                + id.len()
                + clones
                    .iter()
                    .map(|c| separator.len_utf8() + c.len())
                    .sum::<usize>();
            let mut out = String::with_capacity(len);
            out.push_str(cache_id);
            out.push_str(id);
            for clone in clones {
                out.push(separator);
                out.push_str(clone);
            }
            out
        }
        IdFormat::Tomcat => match clones.first() {
            Some(route) => {
                let mut out = String::with_capacity(id.len() + separator.len_utf8() + route.len());
                out.push_str(id);
                out.push(separator);
                out.push_str(route);
                out
            }
            None => id.to_owned(),
        },
    }
}

/// The value of the path parameter `;name=` in a request path, e.g. `/a;jsessionid=X?q` → `X`.
pub fn path_parameter<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    let bytes = path.as_bytes();
    // Only the path portion: stop at the query or the fragment.
    let path_end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    let bytes = &bytes[..path_end];
    let name = name.as_bytes();
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&b| b == b';') {
        let name_start = from + offset + 1;
        let after_name = name_start + name.len();
        if bytes.len() > after_name
            && bytes[name_start..after_name].eq_ignore_ascii_case(name)
            && bytes[after_name] == b'='
        {
            let value_start = after_name + 1;
            let value_len = bytes[value_start..]
                .iter()
                .position(|&b| matches!(b, b';' | b'/'))
                .unwrap_or(bytes.len() - value_start);
            // Both ends sit next to an ASCII byte (`=` before; `;`, `/`, `?`, `#` or the end
            // after), so they are char boundaries; `get` keeps that a `None`, not a panic.
            return path
                .get(value_start..value_start + value_len)
                .filter(|value| !value.is_empty());
        }
        from = name_start;
    }
    None
}

/// Every value of the cookie `name` across all `Cookie` headers, in header order.
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|header| header.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| {
            let (pair_name, value) = pair.split_once('=')?;
            if pair_name.trim_matches(is_cookie_space) != name {
                return None;
            }
            let value = value.trim_matches(is_cookie_space);
            Some(
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value),
            )
        })
}

fn is_cookie_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Calls `f` with each clone id the request carries, in preference order: the URL path
/// parameter's value first, then each configured cookie name, each occurrence in header order,
/// each value's clone ids owner first. Malformed values are skipped. Stops when `f` breaks.
pub fn for_each_clone<'a>(
    affinity: &'a Affinity,
    path: &'a str,
    headers: &'a HeaderMap,
    mut f: impl FnMut(&'a str) -> ControlFlow<()>,
) {
    let _ = visit_clones(affinity, path, headers, &mut f);
}

fn visit_clones<'a>(
    affinity: &'a Affinity,
    path: &'a str,
    headers: &'a HeaderMap,
    f: &mut impl FnMut(&'a str) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let mut visit = |value: &'a str| -> ControlFlow<()> {
        if let Some(session) = parse(value, affinity.format, affinity.separator) {
            for clone in session.clones() {
                f(clone)?;
            }
        }
        ControlFlow::Continue(())
    };
    if let Some(value) = affinity
        .url_parameter
        .as_deref()
        .and_then(|name| path_parameter(path, name))
    {
        visit(value)?;
    }
    for name in &affinity.cookies {
        for value in cookie_values(headers, name) {
            visit(value)?;
        }
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const WS: IdFormat = IdFormat::WebSphere;
    const TC: IdFormat = IdFormat::Tomcat;

    fn clones_of(value: &str, format: IdFormat, separator: u8) -> Option<(&str, &str, Vec<&str>)> {
        parse(value, format, separator).map(|s| (s.cache_id, s.id, s.clones().collect()))
    }

    fn affinity(format: IdFormat, separator: u8, url: Option<&str>, cookies: &[&str]) -> Affinity {
        Affinity {
            format,
            cookies: cookies.iter().map(|&c| c.into()).collect(),
            url_parameter: url.map(Into::into),
            separator,
            strict: false,
        }
    }

    fn cookie_headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(COOKIE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn collect_clones<'a>(
        aff: &'a Affinity,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> Vec<&'a str> {
        let mut out = Vec::new();
        for_each_clone(aff, path, headers, |c| {
            out.push(c);
            ControlFlow::Continue(())
        });
        out
    }

    // ---- parse: WebSphere ----

    #[test]
    fn websphere_id_and_clones() {
        assert_eq!(
            clones_of("0000A1b2C3d4:c1:c3", WS, b':'),
            Some(("0000", "A1b2C3d4", vec!["c1", "c3"]))
        );
        assert_eq!(
            clones_of("0000A2MB4IJozU_VM8IffsMNfdR:v544d0o0", WS, b':'),
            Some(("0000", "A2MB4IJozU_VM8IffsMNfdR", vec!["v544d0o0"]))
        );
        assert_eq!(
            clones_of("0001abc:-1ABCDEF:c2", WS, b':'),
            Some(("0001", "abc", vec!["-1ABCDEF", "c2"]))
        );
    }

    #[test]
    fn websphere_plus_separator() {
        assert_eq!(
            clones_of("0000A1b2+c1+c3", WS, b'+'),
            Some(("0000", "A1b2", vec!["c1", "c3"]))
        );
        // With `:` configured, `+` is just part of the id.
        assert_eq!(
            clones_of("0000A1b2+c1", WS, b':'),
            Some(("0000", "A1b2+c1", vec![]))
        );
        // With `+` configured, `:` is part of the clone id.
        assert_eq!(
            clones_of("0000A1b2+c1:x", WS, b'+'),
            Some(("0000", "A1b2", vec!["c1:x"]))
        );
    }

    #[test]
    fn websphere_without_clones() {
        assert_eq!(
            clones_of("0000abc", WS, b':'),
            Some(("0000", "abc", vec![]))
        );
        assert_eq!(
            clones_of("0000abc:", WS, b':'),
            Some(("0000", "abc", vec![]))
        );
    }

    #[test]
    fn websphere_empty_clone_segments_are_skipped() {
        assert_eq!(
            clones_of("0000abc::c2:", WS, b':'),
            Some(("0000", "abc", vec!["c2"]))
        );
        assert_eq!(
            clones_of("0000abc:::", WS, b':'),
            Some(("0000", "abc", vec![]))
        );
        assert_eq!(
            clones_of("0000abc:c1::c2", WS, b':'),
            Some(("0000", "abc", vec!["c1", "c2"]))
        );
    }

    #[test]
    fn websphere_cache_id_rules() {
        // Separator inside the cache id.
        assert_eq!(parse("00:0abc:c1", WS, b':'), None);
        assert_eq!(parse(":000abc:c1", WS, b':'), None);
        assert_eq!(parse("000:abc", WS, b':'), None);
        // Too short for a cache id, or no id after it.
        assert_eq!(parse("000", WS, b':'), None);
        assert_eq!(parse("0000", WS, b':'), None);
        assert_eq!(parse("0000:c1", WS, b':'), None);
        // Only separators.
        assert_eq!(parse("::::", WS, b':'), None);
        assert_eq!(parse("++++", WS, b'+'), None);
        // The cache id need not be numeric.
        assert_eq!(
            clones_of("AbCdx:c", WS, b':'),
            Some(("AbCd", "x", vec!["c"]))
        );
    }

    // ---- parse: Tomcat ----

    #[test]
    fn tomcat_id_and_route() {
        assert_eq!(
            clones_of("ABC123.node2", TC, b'.'),
            Some(("", "ABC123", vec!["node2"]))
        );
        assert_eq!(clones_of("ABC123", TC, b'.'), Some(("", "ABC123", vec![])));
        assert_eq!(clones_of("ABC123.", TC, b'.'), Some(("", "ABC123", vec![])));
        // No cache id in the Tomcat form: `0000` is part of the id.
        assert_eq!(
            clones_of("0000ABC.n1", TC, b'.'),
            Some(("", "0000ABC", vec!["n1"]))
        );
        assert_eq!(parse(".node2", TC, b'.'), None);
        assert_eq!(parse("....", TC, b'.'), None);
        // Tomcat with a `:` separator, as configured.
        assert_eq!(clones_of("ABC:n1", TC, b':'), Some(("", "ABC", vec!["n1"])));
    }

    // ---- parse: malformed ----

    #[test]
    fn malformed_values_are_none() {
        for format in [WS, TC] {
            assert_eq!(parse("", format, b':'), None);
            assert_eq!(parse(&"0".repeat(8 * 1024), format, b':'), None);
            assert_eq!(
                parse(&"0".repeat(MAX_SESSION_ID_LEN + 1), format, b':'),
                None
            );
            for bad in [
                "0000abcé:c1", // non-ASCII
                "0000ab c:c1", // space
                "0000ab\tc",   // control
                "0000ab\u{7f}c",
                "0000ab;c:c1",
                "0000ab,c:c1",
                "0000ab\"c",
                "0000ab\\c",
                "0000abc:c\u{1}",
            ] {
                assert_eq!(parse(bad, format, b':'), None, "{bad:?}");
            }
        }
    }

    #[test]
    fn max_length_is_inclusive() {
        let value = format!("0000{}:c1", "a".repeat(MAX_SESSION_ID_LEN - 7));
        assert_eq!(value.len(), MAX_SESSION_ID_LEN);
        assert_eq!(
            parse(&value, WS, b':')
                .unwrap()
                .clones()
                .collect::<Vec<_>>(),
            ["c1"]
        );
    }

    #[test]
    fn odd_separators_do_not_break_parse() {
        // A separator the value can never contain: no clones, whole rest is the id.
        for sep in [b';', b'"', 0x80, 0xFF, 0, b' '] {
            assert_eq!(
                clones_of("0000abc:c1", WS, sep),
                Some(("0000", "abc:c1", vec![])),
                "{sep}"
            );
        }
    }

    // ---- encode ----

    #[test]
    fn encode_websphere() {
        assert_eq!(
            encode(WS, b':', "0000", "A1b2C3d4", &["c1", "c3"]),
            "0000A1b2C3d4:c1:c3"
        );
        assert_eq!(encode(WS, b'+', "0001", "abc", &["c1"]), "0001abc+c1");
        assert_eq!(encode(WS, b':', "0000", "abc", &[]), "0000abc");
    }

    #[test]
    fn encode_tomcat() {
        assert_eq!(
            encode(TC, b'.', "0000", "ABC123", &["node2", "node3"]),
            "ABC123.node2"
        );
        assert_eq!(encode(TC, b'.', "0000", "ABC123", &[]), "ABC123");
    }

    #[test]
    fn encode_parse_round_trip_examples() {
        let value = encode(WS, b':', "0000", "A1b2C3d4", &["c1", "c3"]);
        assert_eq!(
            clones_of(&value, WS, b':'),
            Some(("0000", "A1b2C3d4", vec!["c1", "c3"]))
        );
        let value = encode(TC, b'.', "", "ABC123", &["node2"]);
        assert_eq!(
            clones_of(&value, TC, b'.'),
            Some(("", "ABC123", vec!["node2"]))
        );
    }

    // ---- path_parameter ----

    #[test]
    fn path_parameter_rules() {
        assert_eq!(path_parameter("/a;jsessionid=X?q", "jsessionid"), Some("X"));
        assert_eq!(
            path_parameter("/app/page;jsessionid=0000abc:c1?x=1&y=2", "jsessionid"),
            Some("0000abc:c1")
        );
        assert_eq!(path_parameter("/a;JSESSIONID=X", "jsessionid"), Some("X"));
        assert_eq!(path_parameter("/a;jsessionid=X", "JSessionId"), Some("X"));
        assert_eq!(
            path_parameter("/a;jsessionid=X#frag", "jsessionid"),
            Some("X")
        );
        assert_eq!(
            path_parameter("/a;jsessionid=X;other=1", "jsessionid"),
            Some("X")
        );
        assert_eq!(path_parameter("/a;jsessionid=X/b", "jsessionid"), Some("X"));
        assert_eq!(
            path_parameter("/a;v=1;jsessionid=X", "jsessionid"),
            Some("X")
        );
        assert_eq!(
            path_parameter("/a;jsessionid=X;jsessionid=Y", "jsessionid"),
            Some("X")
        );
        assert_eq!(
            path_parameter("/a;b=1/c;jsessionid=X", "jsessionid"),
            Some("X")
        );
        // Only the path portion counts.
        assert_eq!(path_parameter("/a?q=1;jsessionid=X", "jsessionid"), None);
        assert_eq!(path_parameter("/a#;jsessionid=X", "jsessionid"), None);
        // Name must match exactly after `;` and be followed by `=`.
        assert_eq!(path_parameter("/a;xjsessionid=X", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jsessionidx=X", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jsessionid", "jsessionid"), None);
        assert_eq!(path_parameter("/a/jsessionid=X", "jsessionid"), None);
        // Empty values.
        assert_eq!(path_parameter("/a;jsessionid=", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jsessionid=?q", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jsessionid=;b", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jsessionid=X", ""), None);
        assert_eq!(path_parameter("", "jsessionid"), None);
        assert_eq!(path_parameter(";", "jsessionid"), None);
    }

    #[test]
    fn path_parameter_non_ascii() {
        assert_eq!(path_parameter("/é;jsessionid=X", "jsessionid"), Some("X"));
        assert_eq!(
            path_parameter("/a;jsessionid=Xé/b", "jsessionid"),
            Some("Xé")
        );
        assert_eq!(
            path_parameter("/a;é=1;jsessionid=X", "jsessionid"),
            Some("X")
        );
        assert_eq!(path_parameter("/a;jsessionié=X", "jsessionid"), None);
        // A multi-byte char straddling where the name would end.
        assert_eq!(path_parameter("/a;jsessioné", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jséssionid=X", "jsessionid"), None);
        // The parameter value is later rejected by `parse`.
        assert_eq!(
            parse(
                path_parameter("/a;jsessionid=0000é", "jsessionid").unwrap(),
                WS,
                b':'
            ),
            None
        );
    }

    // ---- cookie_values ----

    #[test]
    fn cookie_values_across_headers_and_within_one() {
        let headers = cookie_headers(&[
            "a=1; JSESSIONID=first; b=2; JSESSIONID=second",
            "JSESSIONID=third",
            "c=3",
        ]);
        assert_eq!(
            cookie_values(&headers, "JSESSIONID").collect::<Vec<_>>(),
            ["first", "second", "third"]
        );
        assert_eq!(cookie_values(&headers, "c").collect::<Vec<_>>(), ["3"]);
        assert_eq!(cookie_values(&headers, "missing").count(), 0);
    }

    #[test]
    fn cookie_values_tolerates_sloppy_syntax() {
        let headers = cookie_headers(&[
            "a=1;JSESSIONID=nospace;;  ;b=2",
            "  JSESSIONID =  spaced  ; ",
            ";JSESSIONID=\"quoted\"",
            "flag; JSESSIONID=x=y",
            "\tJSESSIONID=\ttab\t",
        ]);
        assert_eq!(
            cookie_values(&headers, "JSESSIONID").collect::<Vec<_>>(),
            ["nospace", "spaced", "quoted", "x=y", "tab"]
        );
    }

    #[test]
    fn cookie_values_names_are_case_sensitive_and_exact() {
        let headers =
            cookie_headers(&["jsessionid=lower; XJSESSIONID=x; JSESSIONIDX=y; JSESSIONID=ok"]);
        assert_eq!(
            cookie_values(&headers, "JSESSIONID").collect::<Vec<_>>(),
            ["ok"]
        );
        assert_eq!(
            cookie_values(&headers, "jsessionid").collect::<Vec<_>>(),
            ["lower"]
        );
    }

    #[test]
    fn cookie_values_quotes_and_empties() {
        let headers = cookie_headers(&["A=\"\"; A=; A=\"unbalanced; A=\""]);
        // Empty values are yielded as such (and rejected by `parse`); an unbalanced quote stays.
        assert_eq!(
            cookie_values(&headers, "A").collect::<Vec<_>>(),
            ["", "", "\"unbalanced", "\""]
        );
    }

    #[test]
    fn cookie_values_skips_non_ascii_headers() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"JSESSIONID=caf\xc3\xa9").unwrap(),
        );
        headers.append(COOKIE, HeaderValue::from_bytes(b"JSESSIONID=\xff").unwrap());
        headers.append(COOKIE, HeaderValue::from_static("JSESSIONID=good"));
        // Other headers are not cookies.
        headers.append("x-cookie", HeaderValue::from_static("JSESSIONID=nope"));
        assert_eq!(
            cookie_values(&headers, "JSESSIONID").collect::<Vec<_>>(),
            ["good"]
        );
    }

    // ---- for_each_clone ----

    #[test]
    fn for_each_clone_order_url_then_cookies() {
        let aff = affinity(WS, b':', Some("jsessionid"), &["JSESSIONID", "ALT"]);
        let headers = cookie_headers(&[
            "ALT=0000zzz:a1; JSESSIONID=0000abc:c1:c2",
            "JSESSIONID=0000def:c3",
        ]);
        assert_eq!(
            collect_clones(&aff, "/app;jsessionid=0000url:u1:u2?q=1", &headers),
            ["u1", "u2", "c1", "c2", "c3", "a1"]
        );
        // Without a path parameter: cookies only.
        assert_eq!(
            collect_clones(&aff, "/app", &headers),
            ["c1", "c2", "c3", "a1"]
        );
    }

    #[test]
    fn for_each_clone_url_parameter_disabled() {
        let aff = affinity(WS, b':', None, &["JSESSIONID"]);
        let headers = cookie_headers(&["JSESSIONID=0000abc:c1"]);
        assert_eq!(
            collect_clones(&aff, "/a;jsessionid=0000url:u1", &headers),
            ["c1"]
        );
    }

    #[test]
    fn for_each_clone_skips_malformed() {
        let aff = affinity(WS, b':', Some("jsessionid"), &["JSESSIONID"]);
        let headers = cookie_headers(&[
            "JSESSIONID=; JSESSIONID=::::; JSESSIONID=00:0x:bad; JSESSIONID=0000ok:c9",
        ]);
        assert_eq!(
            collect_clones(&aff, "/a;jsessionid=0000é:u1", &headers),
            ["c9"]
        );
        let long = format!("JSESSIONID=0000{}:big", "a".repeat(8 * 1024));
        let headers = cookie_headers(&[&long, "JSESSIONID=0000ok:c1"]);
        assert_eq!(collect_clones(&aff, "/", &headers), ["c1"]);
    }

    #[test]
    fn for_each_clone_stops_on_break() {
        let aff = affinity(WS, b':', Some("jsessionid"), &["JSESSIONID"]);
        let headers = cookie_headers(&["JSESSIONID=0000abc:c1:c2; JSESSIONID=0000def:c3"]);
        let mut seen = Vec::new();
        for_each_clone(&aff, "/a;jsessionid=0000u:u1", &headers, |c| {
            seen.push(c);
            if c == "c1" {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, ["u1", "c1"]);
        let mut calls = 0;
        for_each_clone(&aff, "/a;jsessionid=0000u:u1:u2", &headers, |_| {
            calls += 1;
            ControlFlow::Break(())
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn for_each_clone_tomcat() {
        let aff = affinity(TC, b'.', Some("jsessionid"), &["JSESSIONID"]);
        let headers = cookie_headers(&["JSESSIONID=ABC123.node2", "JSESSIONID=DEF456"]);
        assert_eq!(
            collect_clones(&aff, "/a;JSESSIONID=XYZ.node1", &headers),
            ["node1", "node2"]
        );
    }

    #[test]
    fn for_each_clone_no_session() {
        let aff = affinity(WS, b':', Some("jsessionid"), &["JSESSIONID"]);
        assert!(collect_clones(&aff, "/", &HeaderMap::new()).is_empty());
    }

    // ---- properties ----

    fn separator() -> impl Strategy<Value = u8> {
        prop::sample::select(vec![
            b':', b'+', b'.', b'!', b'~', b'0', b';', b' ', 0u8, 0x80, 0xFF,
        ])
    }

    fn valid_separator() -> impl Strategy<Value = u8> {
        prop::sample::select(vec![b':', b'+', b'.', b'!', b'~', b'-', b'_'])
    }

    fn format() -> impl Strategy<Value = IdFormat> {
        prop_oneof![Just(WS), Just(TC)]
    }

    /// Visible ASCII, none of `; , " \`, and not `separator`.
    fn segment(
        separator: u8,
        len: std::ops::RangeInclusive<usize>,
    ) -> impl Strategy<Value = String> {
        prop::collection::vec(0x21u8..=0x7E, len).prop_map(move |bytes| {
            bytes
                .into_iter()
                .map(|b| {
                    if is_id_byte(b) && b != separator {
                        b
                    } else {
                        b'x'
                    }
                })
                .map(char::from)
                .collect()
        })
    }

    /// Arbitrary strings biased towards session-id-looking text.
    fn messy_string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            "[0:+.;a-c=é\"\\ ]{0,40}",
            "(0000)?[A-Za-z0-9]{0,10}([:+.]{1,2}[a-z0-9]{0,4}){0,4}",
        ]
    }

    fn is_substring(outer: &str, inner: &str) -> bool {
        let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
        i >= o && i + inner.len() <= o + outer.len()
    }

    proptest! {
        #[test]
        fn prop_parse_never_panics(value in messy_string(), sep in separator(), format in format()) {
            if let Some(s) = parse(&value, format, sep) {
                let _ = s.clones().count();
            }
        }

        #[test]
        fn prop_parse_never_panics_on_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            sep in separator(),
            format in format(),
        ) {
            let value = String::from_utf8_lossy(&bytes);
            if let Some(s) = parse(&value, format, sep) {
                let _ = s.clones().count();
            }
        }

        #[test]
        fn prop_websphere_round_trip(
            (sep, cache_id, id, clones) in valid_separator().prop_flat_map(|sep| (
                Just(sep),
                segment(sep, 4..=4),
                segment(sep, 1..=64),
                prop::collection::vec(segment(sep, 1..=12), 0..6),
            ))
        ) {
            let clones: Vec<&str> = clones.iter().map(String::as_str).collect();
            let value = encode(WS, sep, &cache_id, &id, &clones);
            let parsed = parse(&value, WS, sep).expect("valid value parses");
            prop_assert_eq!(parsed.cache_id, cache_id.as_str());
            prop_assert_eq!(parsed.id, id.as_str());
            prop_assert_eq!(parsed.clones().collect::<Vec<_>>(), clones);
        }

        #[test]
        fn prop_tomcat_round_trip(
            (sep, id, clones) in valid_separator().prop_flat_map(|sep| (
                Just(sep),
                segment(sep, 1..=64),
                prop::collection::vec(segment(sep, 1..=12), 0..3),
            ))
        ) {
            let clones: Vec<&str> = clones.iter().map(String::as_str).collect();
            let value = encode(TC, sep, "0000", &id, &clones);
            let parsed = parse(&value, TC, sep).expect("valid value parses");
            prop_assert_eq!(parsed.cache_id, "");
            prop_assert_eq!(parsed.id, id.as_str());
            prop_assert_eq!(parsed.clones().collect::<Vec<_>>(), clones.first().copied().into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn prop_parsed_parts_are_sound(value in messy_string(), sep in separator(), format in format()) {
            if let Some(s) = parse(&value, format, sep) {
                prop_assert!(!value.is_empty() && value.len() <= MAX_SESSION_ID_LEN);
                prop_assert!(value.bytes().all(is_id_byte));
                prop_assert!(!s.id.is_empty());
                prop_assert!(!s.id.as_bytes().contains(&sep));
                prop_assert!(is_substring(&value, s.id));
                prop_assert_eq!(s.cache_id.len(), if format == WS { CACHE_ID_LEN } else { 0 });
                for clone in s.clones() {
                    prop_assert!(!clone.is_empty());
                    prop_assert!(!clone.as_bytes().contains(&sep));
                    prop_assert!(is_substring(&value, clone));
                }
            }
        }

        #[test]
        fn prop_path_parameter_never_panics(path in messy_string(), name in "[a-zA-Z;=é]{0,12}") {
            if let Some(v) = path_parameter(&path, &name) {
                prop_assert!(!v.is_empty());
                prop_assert!(is_substring(&path, v));
                prop_assert!(!v.contains([';', '/', '?', '#']));
            }
            let with_param = format!("{path};{name}=0000abc:c1");
            let _ = path_parameter(&with_param, &name);
        }

        #[test]
        fn prop_for_each_clone_never_panics(
            path in messy_string(),
            values in prop::collection::vec(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..128),
                "((JSESSIONID|A|jsessionid) ?= ?\"?[0:+.a-z\"]{0,20}\"? ?;? ?){0,5}"
                    .prop_map(String::into_bytes),
            ], 0..4),
            sep in separator(),
            format in format(),
            url in prop::option::of("[a-zA-Z]{0,10}"),
            stop_after in 0usize..8,
        ) {
            let mut headers = HeaderMap::new();
            for value in &values {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    headers.append(COOKIE, v);
                }
            }
            let aff = affinity(format, sep, url.as_deref(), &["JSESSIONID", "A"]);
            let mut seen = 0;
            for_each_clone(&aff, &path, &headers, |clone| {
                assert!(!clone.is_empty());
                seen += 1;
                if seen > stop_after { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            });
            prop_assert!(seen <= stop_after + 1);
        }
    }
}
