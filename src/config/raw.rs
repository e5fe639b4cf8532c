//! The TOML file as written (serde, `deny_unknown_fields`), with the defaults of DESIGN.md §7,
//! and a [`Locator`] that knows where each key of the file is, for messages that name the line.
//!
//! Durations and sizes are parsed while deserializing (`units::duration`, `units::size`), so a
//! bad one is reported by toml with its position; rules that need context (names, addresses,
//! patterns, ranges) are in `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::units::{duration, size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    /// A `BTreeMap`, so clusters come out in name order.
    #[serde(default, rename = "cluster")]
    pub clusters: BTreeMap<String, RawCluster>,
}

/// `[proxy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub listen: Vec<String>,
    #[serde(deserialize_with = "size")]
    pub max_header_bytes: u64,
    #[serde(deserialize_with = "size")]
    pub post_size_limit: u64,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<String>,
    pub websphere_headers: bool,
    pub workers: usize,
    #[serde(deserialize_with = "duration")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: vec!["127.0.0.1:8080".into()],
            max_header_bytes: 65_536,
            post_size_limit: 100 << 20,
            request_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            websphere_headers: false,
            workers: 0,
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: 256,
        }
    }
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default = "any_host")]
    pub hosts: Vec<String>,
    #[serde(default = "any_path")]
    pub paths: Vec<String>,
    pub cluster: String,
}

/// `[cluster.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub load_balance: RawLoadBalance,
    #[serde(default = "sixty_seconds", deserialize_with = "duration")]
    pub retry_interval: Duration,
    /// Signed, so a negative value gets the same range message as a too large one.
    #[serde(default = "three")]
    pub max_attempts: i64,
    #[serde(default = "sixty_four_kib", deserialize_with = "size")]
    pub post_buffer_size: u64,
    #[serde(default = "yes")]
    pub retry_idempotency_key: bool,
    #[serde(default)]
    pub virtual_address: Option<String>,
    #[serde(default)]
    pub mark_down_on_timeout: bool,
    #[serde(default)]
    pub affinity: RawAffinity,
    #[serde(default, rename = "member")]
    pub members: Vec<RawMember>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawLoadBalance {
    #[default]
    RoundRobin,
    Random,
    LeastRequests,
}

/// `[cluster.NAME.affinity]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAffinity {
    pub format: RawIdFormat,
    pub cookies: Vec<String>,
    /// `""` turns the `;jsessionid=` path parameter off.
    pub url_parameter: String,
    /// `None`: `":"` for the WebSphere form, `"."` for the Tomcat form.
    pub separator: Option<String>,
    pub strict: bool,
}

impl Default for RawAffinity {
    fn default() -> Self {
        RawAffinity {
            format: RawIdFormat::WebSphere,
            cookies: vec!["JSESSIONID".into()],
            url_parameter: "jsessionid".into(),
            separator: None,
            strict: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub enum RawIdFormat {
    #[default]
    #[serde(rename = "websphere")]
    WebSphere,
    #[serde(rename = "tomcat")]
    Tomcat,
}

/// `[[cluster.NAME.member]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub name: String,
    pub clone_id: String,
    pub address: String,
    /// Signed, so a negative value gets the same range message as a too large one.
    #[serde(default = "one")]
    pub weight: i64,
    #[serde(default)]
    pub role: RawRole,
    #[serde(default = "five_seconds", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "sixty_seconds", deserialize_with = "duration")]
    pub io_timeout: Duration,
    #[serde(default)]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawRole {
    #[default]
    Primary,
    Backup,
}

fn any_host() -> Vec<String> {
    vec!["*".into()]
}
fn any_path() -> Vec<String> {
    vec!["/*".into()]
}
fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn three() -> i64 {
    3
}
fn one() -> i64 {
    1
}
fn yes() -> bool {
    true
}
fn sixty_four_kib() -> u64 {
    64 << 10
}

/// Where each key and value of a file is, by key path (`cluster.shop.member[1].clone_id`; array
/// indexes are 0-based). Built from a second, schema-free pass over the text with toml's own
/// spans, so it sees the file exactly as the parser did.
#[derive(Debug, Default)]
pub struct Locator {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    path: String,
    /// The key as written (absent for array elements).
    key: Option<Range<usize>>,
    /// The value, where toml knows it (not for implicit tables like `cluster` in
    /// `[cluster.shop]`).
    value: Option<Range<usize>>,
}

impl Locator {
    /// An empty locator when the text is not valid TOML (the parse error has its own position).
    pub fn new(text: &str) -> Locator {
        let mut locator = Locator::default();
        if let Ok(root) = toml::from_str::<SpanNode>(text) {
            locator.add(String::new(), root.node);
        }
        locator
    }

    fn add(&mut self, path: String, node: Node) {
        match node {
            Node::Table(entries) => {
                for (key, value) in entries {
                    let Node::Text(name) = &key.node else {
                        continue;
                    };
                    let path = join_key(&path, name);
                    self.entries.push(Entry {
                        path: path.clone(),
                        key: key.span,
                        value: value.span,
                    });
                    self.add(path, value.node);
                }
            }
            Node::Array(elements) => {
                for (i, element) in elements.into_iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    self.entries.push(Entry {
                        path: path.clone(),
                        key: None,
                        value: element.span,
                    });
                    self.add(path, element.node);
                }
            }
            Node::Text(_) | Node::Other => {}
        }
    }

    /// Where `path` is written: its key, else its value; for a key that is not in the file (a
    /// default, a missing key), its nearest ancestor that is.
    pub fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut path = path;
        loop {
            let found = self.entries.iter().find(|e| e.path == path);
            if let Some(span) = found.and_then(|e| e.key.clone().or_else(|| e.value.clone())) {
                return Some(span);
            }
            path = parent(path)?;
        }
    }

    /// The key path of the innermost key or value at `span` (an error position from toml).
    pub fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        let exact = |e: &&Entry| e.key.as_ref() == Some(span) || e.value.as_ref() == Some(span);
        if let Some(entry) = self
            .entries
            .iter()
            .filter(exact)
            .max_by_key(|e| e.path.len())
        {
            return Some(&entry.path);
        }
        self.entries
            .iter()
            .filter_map(|e| Some((e.value.as_ref()?, e)))
            .filter(|(v, _)| v.start <= span.start && span.end <= v.end)
            .min_by_key(|(v, _)| v.len())
            .map(|(_, e)| e.path.as_str())
    }
}

/// `parent.key`, with the key quoted when it is not a bare TOML key.
pub fn join_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `a.b[1].c` → `a.b[1]` → `a.b` → `a` → `None`; dots and brackets inside quotes are skipped.
fn parent(path: &str) -> Option<&str> {
    let (mut in_quotes, mut escaped, mut cut) = (false, false, None);
    for (i, c) in path.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '.' | '[' if !in_quotes => cut = Some(i),
            _ => {}
        }
    }
    cut.map(|i| &path[..i])
}

// The schema-free pass. toml hands out spans through serde's `Spanned` protocol: asked for a
// struct with these magic names, it answers with a map of start, end and value. `toml::Spanned`
// itself cannot be used because toml has no span for implicit tables and then answers with the
// plain value, which `toml::Spanned` rejects; this visitor takes either answer.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

/// One value of the file (a key is a `Text`), with its span where toml gives one.
struct SpanNode {
    span: Option<Range<usize>>,
    node: Node,
}

enum Node {
    Table(Vec<(SpanNode, SpanNode)>),
    Array(Vec<SpanNode>),
    Text(String),
    Other,
}

fn bare(node: Node) -> SpanNode {
    SpanNode { span: None, node }
}

impl<'de> Deserialize<'de> for SpanNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED, SPANNED_FIELDS, NodeVisitor)
    }
}

/// The value inside a spanned answer, asked for without a span (asking again would recurse).
struct Plain;

impl<'de> de::DeserializeSeed<'de> for Plain {
    type Value = SpanNode;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<SpanNode, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

macro_rules! other {
    ($($visit:ident: $t:ty),*) => {$(
        fn $visit<E>(self, _: $t) -> Result<SpanNode, E> {
            Ok(bare(Node::Other))
        }
    )*};
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = SpanNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }
    other!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);
    fn visit_str<E>(self, v: &str) -> Result<SpanNode, E> {
        Ok(bare(Node::Text(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SpanNode, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<SpanNode>()? {
            elements.push(element);
        }
        Ok(bare(Node::Array(elements)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpanNode, A::Error> {
        let is = |key: &SpanNode, name: &str| matches!(&key.node, Node::Text(k) if k == name);
        let Some(first) = map.next_key::<SpanNode>()? else {
            return Ok(bare(Node::Table(Vec::new())));
        };
        if first.span.is_none() && is(&first, SPANNED_START) {
            let start: usize = map.next_value()?;
            let (mut end, mut value) = (start, None);
            while let Some(key) = map.next_key::<SpanNode>()? {
                if is(&key, SPANNED_END) {
                    end = map.next_value()?;
                } else if is(&key, SPANNED_VALUE) {
                    value = Some(map.next_value_seed(Plain)?);
                } else {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
            let node = value.map_or(Node::Other, |v| v.node);
            return Ok(SpanNode {
                span: Some(start..end),
                node,
            });
        }
        let mut entries = vec![(first, map.next_value::<SpanNode>()?)];
        while let Some(key) = map.next_key::<SpanNode>()? {
            entries.push((key, map.next_value::<SpanNode>()?));
        }
        Ok(bare(Node::Table(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[proxy]\nlisten = [\n  \"a\",\n  \"b\",\n]\n\n[cluster.\"x.y\"]\n\
        max_attempts = 2\n[[cluster.\"x.y\".member]]\nname = \"m0\"\n[[cluster.\"x.y\".member]]\n\
        name = \"m1\"\nweight = 3\n";

    fn line(span: Range<usize>) -> usize {
        TEXT[..span.start].matches('\n').count() + 1
    }

    #[test]
    fn locates_keys_values_and_elements() {
        let loc = Locator::new(TEXT);
        assert_eq!(loc.span_of("proxy.listen").map(line), Some(2));
        assert_eq!(loc.span_of("proxy.listen[1]").map(line), Some(4));
        assert_eq!(loc.span_of("cluster.\"x.y\"").map(line), Some(7));
        assert_eq!(
            loc.span_of("cluster.\"x.y\".member[1].weight").map(line),
            Some(13)
        );
        // Not in the file: the nearest ancestor that is.
        assert_eq!(
            loc.span_of("cluster.\"x.y\".member[1].address").map(line),
            Some(11)
        );
        assert_eq!(loc.span_of("route[0]"), None);
    }

    #[test]
    fn finds_the_path_of_a_span() {
        let loc = Locator::new(TEXT);
        let at = |needle: &str| {
            let start = TEXT.find(needle).unwrap();
            loc.path_at(&(start..start + needle.len()))
                .map(str::to_owned)
        };
        assert_eq!(
            at("weight").as_deref(),
            Some("cluster.\"x.y\".member[1].weight")
        );
        assert_eq!(at("\"b\"").as_deref(), Some("proxy.listen[1]"));
        assert_eq!(at("2").as_deref(), Some("cluster.\"x.y\".max_attempts"));
    }

    #[test]
    fn parents() {
        assert_eq!(parent("a.b[1].c"), Some("a.b[1]"));
        assert_eq!(parent("a.b[1]"), Some("a.b"));
        assert_eq!(parent("a.\"b.c\""), Some("a"));
        assert_eq!(parent("a"), None);
        assert_eq!(join_key("cluster", "x y"), "cluster.\"x y\"");
        assert_eq!(join_key("", "proxy"), "proxy");
    }

    #[test]
    fn invalid_toml_gives_an_empty_locator() {
        assert!(Locator::new("[proxy\n").entries.is_empty());
    }
}
