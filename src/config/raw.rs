//! The TOML file as written (serde, `deny_unknown_fields`), with the defaults of DESIGN.md §7,
//! and a [`Locator`] that knows where each key of the file is, for messages that name the line.
//!
//! Durations and sizes are parsed while deserializing (`units::duration`, `units::size`), so a
//! bad one is reported by toml with its position; rules that need context (names, addresses,
//! patterns, ranges) are in `validate`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml_edit::{ImDocument, Item, TableLike, Value};

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
    #[serde(deserialize_with = "duration")]
    pub defer_accept: Duration,
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
            defer_accept: Duration::from_secs(1),
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
/// indexes are 0-based). Built from a second, schema-free parse of the text with `toml_edit`, the
/// parser `toml` itself runs on, so its spans are the ones toml's errors carry.
#[derive(Debug, Default)]
pub struct Locator {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    path: String,
    /// The key as written (absent for array elements).
    key: Option<Range<usize>>,
    /// The value, where the parser knows it (not for implicit tables like `cluster` in
    /// `[cluster.shop]`).
    value: Option<Range<usize>>,
}

impl Locator {
    /// An empty locator when the text is not valid TOML (the parse error has its own position).
    pub fn new(text: &str) -> Locator {
        let mut locator = Locator::default();
        if let Ok(document) = ImDocument::parse(text) {
            locator.add_table(String::new(), document.as_table());
        }
        locator
    }

    fn add_table(&mut self, path: String, table: &dyn TableLike) {
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            let path = join_key(&path, name);
            self.entries.push(Entry {
                path: path.clone(),
                key: key.span(),
                value: item.span(),
            });
            self.add_item(path, item);
        }
    }

    fn add_item(&mut self, path: String, item: &Item) {
        match item {
            Item::Table(table) => self.add_table(path, table),
            Item::ArrayOfTables(tables) => {
                for (i, table) in tables.iter().enumerate() {
                    let path = self.add_element(&path, i, table.span());
                    self.add_table(path, table);
                }
            }
            Item::Value(value) => self.add_value(path, value),
            Item::None => {}
        }
    }

    fn add_value(&mut self, path: String, value: &Value) {
        match value {
            Value::InlineTable(table) => self.add_table(path, table),
            Value::Array(array) => {
                for (i, element) in array.iter().enumerate() {
                    let path = self.add_element(&path, i, element.span());
                    self.add_value(path, element);
                }
            }
            _ => {}
        }
    }

    /// Records element `i` of the array at `path`; returns the element's path.
    fn add_element(&mut self, path: &str, i: usize, span: Option<Range<usize>>) -> String {
        let path = format!("{path}[{i}]");
        self.entries.push(Entry {
            path: path.clone(),
            key: None,
            value: span,
        });
        path
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
    fn locates_inside_inline_tables_and_dotted_keys() {
        let text = "[proxy]\na.b = 1\nt = { k = [1, { x = 2 }] }\nu = [\n  { y = 3 },\n]\n";
        let line = |span: Range<usize>| text[..span.start].matches('\n').count() + 1;
        let loc = Locator::new(text);
        assert_eq!(loc.span_of("proxy.a.b").map(line), Some(2));
        assert_eq!(loc.span_of("proxy.t.k[1].x").map(line), Some(3));
        assert_eq!(loc.span_of("proxy.u[0].y").map(line), Some(5));
        let at = text.find("{ x").unwrap();
        assert_eq!(loc.path_at(&(at..at + 9)), Some("proxy.t.k[1]"));
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
