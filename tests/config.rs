//! Config loading: the shipped files in `conf/`, the defaults, and one bad file per rule, each
//! checked for a message that names the key (and the line, where the key is in the file).
//!
//! Key paths in messages use 0-based array indexes: `cluster.shop.member[1]` is the second member.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tether::config::{
    Config, ConfigError, HostPattern, IdFormat, LoadBalance, PathPattern, Role, MAX_ATTEMPTS_LIMIT,
};

/// A valid file: one route to cluster `shop` with two members. Tests edit it with [`with`].
const VALID: &str = r#"# a test config
[proxy]
listen = ["127.0.0.1:8080"]
max_header_bytes = 65536
post_size_limit = "100MiB"
request_timeout = "60s"
trusted_proxies = ["10.0.0.0/8"]

[[route]]
hosts = ["*"]
paths = ["/*"]
cluster = "shop"

[cluster.shop]
load_balance = "round_robin"
max_attempts = 3
post_buffer_size = "64KiB"

[cluster.shop.affinity]
format = "websphere"
separator = ":"

[[cluster.shop.member]]
name = "a"
clone_id = "c1"
address = "127.0.0.1:9081"
weight = 1
role = "primary"
connect_timeout = "5s"

[[cluster.shop.member]]
name = "b"
clone_id = "c2"
address = "127.0.0.1:9082"
"#;

/// [`VALID`] with the first `from` replaced by `to` (`from` must be there).
fn with(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} is not in the base config");
    VALID.replacen(from, to, 1)
}

/// [`VALID`] with `extra` appended.
fn plus(extra: &str) -> String {
    format!("{VALID}\n{extra}")
}

/// Expects `text` to be rejected with `line N: KEY: …`, where N is the line of the last
/// occurrence of `at` in `text`. Returns the message for further checks.
fn rejects(text: &str, key: &str, at: &str) -> String {
    let line = line_of(text, at);
    let Err(error) = Config::parse(text) else {
        panic!("a config with a bad {key} was accepted");
    };
    let message = error.to_string();
    let prefix = format!("line {line}: {key}: ");
    assert!(
        message.starts_with(&prefix),
        "want {prefix:?}…, got {message:?}"
    );
    assert!(!message.contains('\n'), "not one line: {message:?}");
    message
}

/// The line of the last occurrence of `at` in `text`.
fn line_of(text: &str, at: &str) -> usize {
    let pos = text
        .rfind(at)
        .unwrap_or_else(|| panic!("{at:?} not in {text}"));
    text[..pos].matches('\n').count() + 1
}

fn conf(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn minimal_conf() {
    let cfg = conf("minimal.toml");
    assert_eq!(cfg.clusters.len(), 1);
    let app = &cfg.clusters[0];
    assert_eq!(&*app.name, "app");
    let ids: Vec<&str> = app.members.iter().map(|m| &*m.clone_id).collect();
    assert_eq!(ids, ["c1", "c2", "c3"]);
    let addrs: Vec<SocketAddr> = app.members.iter().map(|m| m.address).collect();
    assert_eq!(
        addrs,
        [
            addr("127.0.0.1:9081"),
            addr("127.0.0.1:9082"),
            addr("127.0.0.1:9083")
        ]
    );
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].hosts, [HostPattern::Any]);
    assert_eq!(cfg.routes[0].paths, [PathPattern::Prefix("/".into())]);
    assert_eq!(cfg.routes[0].cluster, 0);
}

#[test]
fn minimal_conf_has_the_documented_defaults() {
    let cfg = conf("minimal.toml");
    let p = &cfg.proxy;
    assert_eq!(p.listen, [addr("127.0.0.1:8080")]);
    assert_eq!(p.max_header_bytes, 65_536);
    assert_eq!(p.post_size_limit, 100 * 1024 * 1024);
    assert_eq!(p.request_timeout, Duration::from_secs(60));
    assert_eq!(p.shutdown_grace, Duration::from_secs(30));
    assert!(p.trusted_proxies.is_empty() && !p.websphere_headers);
    assert_eq!((p.workers, p.pool_max_idle), (0, 256));
    assert_eq!(p.pool_idle_timeout, Duration::from_secs(60));
    assert_eq!(p.defer_accept, Duration::from_secs(1));
    let c = &cfg.clusters[0];
    assert_eq!(c.load_balance, LoadBalance::RoundRobin);
    assert_eq!(c.retry_interval, Duration::from_secs(60));
    assert_eq!((c.max_attempts, c.post_buffer_size), (3, 64 * 1024));
    assert!(c.retry_idempotency_key && !c.mark_down_on_timeout);
    assert_eq!(c.virtual_address, None);
    let a = &c.affinity;
    assert_eq!(
        (a.format, a.separator, a.strict),
        (IdFormat::WebSphere, b':', false)
    );
    assert_eq!(a.cookies, [Box::<str>::from("JSESSIONID")]);
    assert_eq!(a.url_parameter.as_deref(), Some("jsessionid"));
    let m = &c.members[0];
    assert_eq!((m.weight, m.role, m.max_connections), (1, Role::Primary, 0));
    assert_eq!(m.connect_timeout, Duration::from_secs(5));
    assert_eq!(m.io_timeout, Duration::from_secs(60));
}

#[test]
fn full_conf() {
    let cfg = conf("full.toml");
    assert!(cfg.proxy.websphere_headers);
    assert_eq!(cfg.proxy.defer_accept, Duration::from_secs(3));
    assert_eq!(cfg.proxy.trusted_proxies.len(), 2);
    assert_eq!(cfg.proxy.trusted_proxies[0].prefix, 8);
    assert!(cfg.proxy.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
    // Sorted by name: legacy, shop.
    let names: Vec<&str> = cfg.clusters.iter().map(|c| &*c.name).collect();
    assert_eq!(names, ["legacy", "shop"]);
    let (legacy, shop) = (&cfg.clusters[0], &cfg.clusters[1]);

    assert_eq!(legacy.affinity.format, IdFormat::Tomcat);
    assert!(legacy.affinity.strict);
    assert_eq!(legacy.affinity.separator, b'.');
    assert_eq!(legacy.affinity.url_parameter, None);
    assert_eq!(legacy.load_balance, LoadBalance::LeastRequests);
    assert!(legacy.mark_down_on_timeout);
    assert!(
        legacy.members[0].address.ip().is_loopback(),
        "localhost resolved"
    );
    assert_eq!(legacy.members[0].address.port(), 9181);

    assert_eq!(shop.affinity.separator, b':');
    assert_eq!(shop.virtual_address, Some(addr("127.0.0.1:9000")));
    let roles: Vec<Role> = shop.members.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::Primary, Role::Primary, Role::Backup]);
    assert_eq!(shop.members[0].weight, 2);

    let shop_route = &cfg.routes[0];
    assert_eq!(shop_route.cluster, 1);
    assert_eq!(
        shop_route.hosts,
        [
            HostPattern::Exact("shop.example.com".into()),
            HostPattern::Suffix(".shop.example.com".into())
        ]
    );
    assert_eq!(
        shop_route.paths,
        [
            PathPattern::Prefix("/shop/".into()),
            PathPattern::Exact("/cart".into())
        ]
    );
    assert_eq!(cfg.routes[1].cluster, 0);
}

#[test]
fn values_in_other_accepted_forms() {
    let text = with("max_header_bytes = 65536", "max_header_bytes = \"16KiB\"")
        .replace("post_size_limit = \"100MiB\"", "post_size_limit = 1048576")
        .replace("127.0.0.1:9082", "[::1]:9082")
        .replace(
            "hosts = [\"*\"]",
            "hosts = [\"Shop.Example.COM\", \"*.Example.com\", \"[::1]\"]",
        )
        .replace("paths = [\"/*\"]", "paths = [\"/app/*\", \"/login\"]")
        .replace("separator = \":\"", "separator = \"+\"")
        .replace("clone_id = \"c1\"", "clone_id = \"c-1_x.y\"")
        .replace("request_timeout", "defer_accept = \"0s\"\nrequest_timeout");
    let cfg = Config::parse(&text).unwrap();
    assert_eq!(cfg.proxy.defer_accept, Duration::ZERO);
    assert_eq!(cfg.proxy.max_header_bytes, 16 * 1024);
    assert_eq!(cfg.proxy.post_size_limit, 1_048_576);
    assert_eq!(cfg.clusters[0].members[1].address, addr("[::1]:9082"));
    assert_eq!(cfg.clusters[0].affinity.separator, b'+');
    assert_eq!(&*cfg.clusters[0].members[0].clone_id, "c-1_x.y");
    assert_eq!(
        cfg.routes[0].hosts,
        [
            HostPattern::Exact("shop.example.com".into()),
            HostPattern::Suffix(".example.com".into()),
            HostPattern::Exact("[::1]".into())
        ]
    );
    assert_eq!(
        cfg.routes[0].paths,
        [
            PathPattern::Prefix("/app/".into()),
            PathPattern::Exact("/login".into())
        ]
    );
}

#[test]
fn clusters_are_sorted_and_routes_point_at_them() {
    let text = with("cluster = \"shop\"", "cluster = \"zeta\"").replace("shop", "zeta")
        + "\n[[route]]\npaths = [\"/a/*\"]\ncluster = \"alpha\"\n\
           [[cluster.alpha.member]]\nname = \"x\"\nclone_id = \"x1\"\naddress = \"127.0.0.1:9090\"\n";
    let cfg = Config::parse(&text).unwrap();
    let names: Vec<&str> = cfg.clusters.iter().map(|c| &*c.name).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    assert_eq!((cfg.routes[0].cluster, cfg.routes[1].cluster), (1, 0));
}

/// One bad edit of [`VALID`] per rule: (replace this, with this, the key the message must name,
/// text on the line it must name, text the message must contain).
#[rustfmt::skip]
const BAD_EDITS: &[(&str, &str, &str, &str, &str)] = &[
    // Unknown keys, at every level.
    ("[proxy]\n", "[proxy]\nlistn = []\n", "proxy.listn", "listn", "unknown key, expected one of `listen`"),
    ("[[route]]\n", "[[route]]\nhost = \"x\"\n", "route[0].host", "host =", "unknown key"),
    ("max_attempts = 3", "max_atempts = 3", "cluster.shop.max_atempts", "max_atempts", "unknown key"),
    ("[cluster.shop.affinity]", "[cluster.shop.afinity]", "cluster.shop.afinity", "afinity", "unknown key"),
    ("separator =", "seperator =", "cluster.shop.affinity.seperator", "seperator", "unknown key"),
    ("weight = 1", "wieght = 1", "cluster.shop.member[0].wieght", "wieght", "expected one of `name`, `clone_id`"),
    // Durations and sizes.
    ("\"60s\"", "\"60x\"", "proxy.request_timeout", "60x", "invalid duration \"60x\": unknown unit \"x\""),
    ("\"60s\"", "60", "proxy.request_timeout", "= 60", "expected a duration string like \"5s\""),
    ("\"60s\"", "\"0ms\"", "proxy.request_timeout", "0ms", "must be more than 0"),
    ("\"5s\"", "\"-5s\"", "cluster.shop.member[0].connect_timeout", "-5s", "must not be negative"),
    ("\"5s\"", "\"5\"", "cluster.shop.member[0].connect_timeout", "\"5\"", "missing unit"),
    ("\"64KiB\"", "\"64XB\"", "cluster.shop.post_buffer_size", "64XB", "unknown unit \"XB\""),
    ("\"100MiB\"", "\"99999999999TiB\"", "proxy.post_size_limit", "TiB", "too large"),
    ("\"100MiB\"", "-1", "proxy.post_size_limit", "-1", "must not be negative"),
    ("request_timeout", "defer_accept = \"1500ms\"\nrequest_timeout", "proxy.defer_accept", "1500ms",
     "must be whole seconds"),
    ("request_timeout", "defer_accept = \"2h\"\nrequest_timeout", "proxy.defer_accept", "2h",
     "at most \"1h\""),
    // Addresses.
    ("127.0.0.1:9081", "127.0.0.1", "cluster.shop.member[0].address", "127.0.0.1\"", "missing port"),
    ("127.0.0.1:9081", "no-such-host.invalid:9081", "cluster.shop.member[0].address", "no-such",
     "cannot resolve host \"no-such-host.invalid\""),
    ("127.0.0.1:9082", "::1:9082", "cluster.shop.member[1].address", "::1", "needs brackets"),
    ("max_attempts", "virtual_address = \"10.0.0.1:x\"\nmax_attempts", "cluster.shop.virtual_address",
     "virtual_address", "bad port \"x\""),
    ("[\"127.0.0.1:8080\"]", "[\"127.0.0.1:8080\",\n  \"localhost\"]", "proxy.listen[1]", "\"localhost\"",
     "missing port"),
    ("[\"127.0.0.1:8080\"]", "[]", "proxy.listen", "listen", "must name at least one address"),
    ("[\"127.0.0.1:8080\"]", "[\"127.0.0.1:8080\", \"127.0.0.1:8080\"]", "proxy.listen[1]", "listen",
     "already listen[0]"),
    ("[\"10.0.0.0/8\"]", "[\"10.0.0.0/8\", \"10.0.0.0/33\"]", "proxy.trusted_proxies[1]", "/33",
     "prefix length must be 0..=32"),
    ("[\"10.0.0.0/8\"]", "[\"proxy.example.com\"]", "proxy.trusted_proxies[0]", "example",
     "expected an IP address or a CIDR block"),
    // Limits and ranges.
    ("= 65536", "= 8191", "proxy.max_header_bytes", "8191", "at least 8192 (8KiB), hyper's minimum"),
    ("weight = 1", "weight = 10001", "cluster.shop.member[0].weight", "weight", "must be 0..=10000; got 10001"),
    ("weight = 1", "weight = -1", "cluster.shop.member[0].weight", "weight", "must be 0..=10000; got -1"),
    ("max_attempts = 3", "max_attempts = 0", "cluster.shop.max_attempts", "max_", "must be 1..=16; got 0"),
    ("max_attempts = 3", "max_attempts = 17", "cluster.shop.max_attempts", "max_", "must be 1..=16; got 17"),
    // Names, clone ids, cookies.
    ("name = \"b\"", "name = \"a\"", "cluster.shop.member[1].name", "name = \"a\"",
     "duplicate member name \"a\", also member[0]"),
    ("\"c2\"", "\"c1\"", "cluster.shop.member[1].clone_id", "clone_id = \"c1\"",
     "duplicate clone id \"c1\", also member[0] (\"a\")"),
    ("name = \"a\"", "name = \"a b\"", "cluster.shop.member[0].name", "a b", "not a valid member name"),
    ("\"c1\"", "\"c:1\"", "cluster.shop.member[0].clone_id", "c:1", "contains the separator ':'"),
    ("\"c1\"", "\"c/1\"", "cluster.shop.member[0].clone_id", "c/1", "may use only letters, digits"),
    ("\"c1\"", "\"\"", "cluster.shop.member[0].clone_id", "clone_id = \"\"", "must not be empty"),
    ("format", "cookies = [\"JSESSIONID\", \"a=b\"]\nformat", "cluster.shop.affinity.cookies[1]", "a=b",
     "not a valid cookie name"),
    ("format", "url_parameter = \"j;x\"\nformat", "cluster.shop.affinity.url_parameter", "j;x",
     "\"\" turns it off"),
    // Unknown values list the valid ones.
    ("\"round_robin\"", "\"fastest\"", "cluster.shop.load_balance", "fastest",
     "unknown value `fastest`, expected one of `round_robin`, `random`, `least_requests`"),
    ("\"websphere\"", "\"jetty\"", "cluster.shop.affinity.format", "jetty", "expected `websphere` or `tomcat`"),
    ("\"primary\"", "\"spare\"", "cluster.shop.member[0].role", "spare", "expected `primary` or `backup`"),
    // Routes.
    ("cluster = \"shop\"", "cluster = \"shp\"", "route[0].cluster", "shp", "unknown cluster \"shp\" (defined: shop)"),
    ("[\"*\"]", "[]", "route[0].hosts", "hosts", "must not be empty"),
    ("[\"/*\"]", "[]", "route[0].paths", "paths", "must not be empty"),
];

#[test]
fn each_rule_names_its_key_and_line() {
    for (from, to, key, at, want) in BAD_EDITS {
        let message = rejects(&with(from, to), key, at);
        assert!(message.contains(want), "want {want:?} in {message:?}");
    }
}

#[test]
fn unknown_tables_and_keys_after_arrays() {
    rejects(&plus("[proxxy]"), "proxxy", "proxxy");
    let m = rejects(
        &plus("wieght = 3"),
        "cluster.shop.member[1].wieght",
        "wieght",
    );
    assert!(m.contains("unknown key, expected one of `name`"), "{m}");
}

#[test]
fn secrets_and_the_file_are_never_echoed() {
    let text = plus("password = \"hunter2\"");
    let m = rejects(&text, "cluster.shop.member[1].password", "password");
    assert!(!m.contains("hunter2"), "{m}");
    let m = Config::parse(&with("listen = [", "listen = \"x\"\nbad = ["))
        .unwrap_err()
        .to_string();
    assert!(
        !m.contains("# a test config") && !m.contains("[proxy]"),
        "{m}"
    );
}

#[test]
fn syntax_errors_and_missing_keys_carry_the_line() {
    let text = plus("[cluster.x\nname = 1");
    let m = Config::parse(&text).unwrap_err().to_string();
    let want = format!(
        "line {}: invalid table header",
        line_of(&text, "[cluster.x")
    );
    assert!(m.starts_with(&want), "{m}");
    let text = plus("[[cluster.shop.member]]\nname = \"c\"\naddress = \"127.0.0.1:9083\"");
    let m = rejects(&text, "cluster.shop.member[2].clone_id", "[[cluster");
    assert!(m.ends_with("required key is missing"), "{m}");
    rejects(
        &plus("[[route]]\nhosts = [\"*\"]"),
        "route[1].cluster",
        "[[route]]",
    );
}

#[test]
fn errors_keep_file_line_key_and_message_apart() {
    let text = with("weight = 1", "weight = 10001");
    let Err(ConfigError::Invalid {
        path,
        line,
        key,
        message,
    }) = Config::parse(&text)
    else {
        panic!("want an Invalid error");
    };
    assert_eq!(path, None);
    assert_eq!(line, Some(line_of(&text, "weight")));
    assert_eq!(key.as_deref(), Some("cluster.shop.member[0].weight"));
    assert_eq!(message, "must be 0..=10000; got 10001");

    // A syntax error has no key.
    let text = plus("[cluster.x\nname = 1");
    let Err(ConfigError::Invalid { line, key, .. }) = Config::parse(&text) else {
        panic!("want an Invalid error");
    };
    assert_eq!(line, Some(line_of(&text, "[cluster.x")));
    assert_eq!(key, None);

    // Loading names the file in front.
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), with("weight = 1", "weight = 10001")).unwrap();
    let error = Config::load(file.path()).unwrap_err();
    let shown = file.path().display().to_string();
    assert!(
        matches!(&error, ConfigError::Invalid { path: Some(p), .. } if *p == shown),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "{shown}: line {}: cluster.shop.member[0].weight: must be 0..=10000; got 10001",
            line_of(VALID, "weight")
        )
    );
}

#[test]
fn routes_must_exist_and_not_repeat() {
    let start = VALID.find("[[route]]").unwrap();
    let end = VALID.find("[cluster.shop]").unwrap();
    let no_routes = format!("{}{}", &VALID[..start], &VALID[end..]);
    let m = Config::parse(&no_routes).unwrap_err().to_string();
    assert_eq!(
        m,
        "route: no routes: add at least one [[route]] naming a cluster"
    );
    let m = rejects(
        &plus("[[route]]\ncluster = \"shop\""),
        "route[1]",
        "[[route]]",
    );
    assert!(
        m.contains("host \"*\" with path \"/*\" is already routed by route[0]"),
        "{m}"
    );
}

#[test]
fn clusters_need_members_and_plain_names() {
    let m = rejects(
        &plus("[cluster.empty]\nmax_attempts = 2"),
        "cluster.empty",
        "empty",
    );
    assert!(
        m.ends_with("has no members: add a [[cluster.empty.member]] table"),
        "{m}"
    );
    let member = "name = \"x\"\nclone_id = \"x\"\naddress = \"127.0.0.1:1\"";
    let text = plus(&format!("[[cluster.\"my shop\".member]]\n{member}"));
    let m = rejects(&text, "cluster.\"my shop\"", "my shop");
    assert!(m.contains("a cluster name may use only"), "{m}");
}

#[test]
fn ranges_accept_their_bounds() {
    for (from, to) in [
        ("weight = 1", "weight = 0"),
        ("weight = 1", "weight = 10000"),
        ("max_attempts = 3", "max_attempts = 1"),
        ("max_attempts = 3", "max_attempts = 16"),
        ("= 65536", "= 8192"),
    ] {
        assert!(Config::parse(&with(from, to)).is_ok(), "{to}");
    }
    assert_eq!(MAX_ATTEMPTS_LIMIT, 16, "update BAD_EDITS and this test");
}

#[test]
fn separator_is_one_safe_punctuation_character() {
    for bad in ["::", ";", "=", ",", " ", "a", "", "\\\\", "é"] {
        let text = with("separator = \":\"", &format!("separator = \"{bad}\""));
        let m = rejects(&text, "cluster.shop.affinity.separator", "separator");
        assert!(
            m.contains("exactly one ASCII punctuation character"),
            "{bad:?}: {m}"
        );
    }
}

#[test]
fn clone_ids_must_not_contain_the_tomcat_separator() {
    // The Tomcat form's default separator is '.', so a dot is no longer allowed.
    let tomcat = with(
        "format = \"websphere\"\nseparator = \":\"",
        "format = \"tomcat\"",
    )
    .replace("\"c1\"", "\"tc.1\"");
    let m = rejects(&tomcat, "cluster.shop.member[0].clone_id", "tc.1");
    assert!(m.contains("contains the separator '.'"), "{m}");
}

#[test]
fn host_patterns() {
    let bad_hosts = [
        "shop.*.com",
        "*shop.com",
        "**",
        "a..b",
        "a.com:8080",
        "*.",
        "",
        "bücher.de",
    ];
    for bad in bad_hosts {
        let text = with("hosts = [\"*\"]", &format!("hosts = [\"*\", \"{bad}\"]"));
        let m = rejects(&text, "route[0].hosts[1]", "hosts");
        assert!(m.contains("invalid host pattern"), "{bad:?}: {m}");
    }
}

#[test]
fn path_patterns() {
    for bad in ["app", "/a*", "/a/*/b", "/*/x", "*", "/a b", "/a?b=1"] {
        let text = with(
            "paths = [\"/*\"]",
            &format!("paths = [\"/*\",\n  \"{bad}\"]"),
        );
        let m = rejects(&text, "route[0].paths[1]", &format!("\"{bad}\""));
        assert!(m.contains("invalid path pattern"), "{bad:?}: {m}");
    }
}
