//! Routing and affinity (issue 2, "Routing and affinity"; DESIGN.md §2–3): which member answers,
//! seen through the `X-Member` header each backend sets and the requests each backend recorded.

mod support;

use std::time::Duration;

use support::*;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Three members `m1`/`m2`/`m3` with clone ids `c1`/`c2`/`c3`.
async fn three_members() -> (Backend, Backend, Backend) {
    (
        Backend::start("m1", Behavior::Normal).await,
        Backend::start("m2", Behavior::Normal).await,
        Backend::start("m3", Behavior::Normal).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_patterns_longest_match_wins_and_no_route_is_404() {
    let exact = Backend::start("exact", Behavior::Normal).await;
    let wild = Backend::start("wild", Behavior::Normal).await;
    let api = Backend::start("api", Behavior::Normal).await;
    let apiv2 = Backend::start("apiv2", Behavior::Normal).await;
    let login = Backend::start("login", Behavior::Normal).await;

    let mut text = proxy_toml("");
    text += &route_toml(&["shop.example.com"], &["/*"], "exact");
    text += &route_toml(&["*.example.com"], &["/*"], "wild");
    text += &route_toml(&["*"], &["/api/*"], "api");
    text += &route_toml(&["*"], &["/api/v2/*"], "apiv2");
    text += &route_toml(&["*"], &["/login"], "login");
    for b in [&exact, &wild, &api, &apiv2, &login] {
        text += &cluster_toml(&b.name, "", "", &[member(b, "c1", "")]);
    }
    let proxy = Proxy::start(&text).await;

    let cases: &[(&str, &str, Option<&str>)] = &[
        ("shop.example.com", "/", Some("exact")),
        ("shop.example.com", "/cart/items", Some("exact")),
        ("shop.example.com:8080", "/x", Some("exact")),
        ("www.example.com", "/x", Some("wild")),
        ("a.b.example.com", "/x", Some("wild")),
        ("other.test", "/api/x", Some("api")),
        ("other.test", "/api", Some("api")),
        ("other.test", "/api/v2/x", Some("apiv2")),
        ("other.test", "/api/v2x", Some("api")),
        ("other.test", "/login", Some("login")),
        ("other.test", "/login/x", None),
        ("other.test", "/apix", None),
        ("other.test", "/", None),
    ];
    for (host, path, expected) in cases {
        let r = get(proxy.addr, path, &[("host", host)]).await;
        match expected {
            Some(name) => {
                assert_eq!(r.status, 200, "Host {host} {path}: {}", r.text());
                assert_eq!(r.member(), *name, "Host {host} {path}");
            }
            None => {
                assert_eq!(r.status, 404, "Host {host} {path} has no route");
                assert_eq!(r.member(), "", "a 404 is the proxy's own answer");
            }
        }
    }
    let routed = cases.iter().filter(|c| c.2.is_some()).count();
    let recorded: usize = [&exact, &wild, &api, &apiv2, &login]
        .iter()
        .map(|b| b.request_count())
        .sum();
    assert_eq!(
        recorded, routed,
        "no-route requests must not reach any member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessionless_goes_to_the_virtual_address_when_it_is_up() {
    let (m1, m2, _) = three_members().await;
    let vip = Backend::start("vip", Behavior::Normal).await;
    let text = config(
        "",
        &format!("virtual_address = \"{}\"", vip.addr),
        "",
        &[member(&m1, "c1", ""), member(&m2, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..10 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(
            (r.status, r.member()),
            (200, "vip"),
            "sessionless request {i}"
        );
    }
    // A sessional request still goes to its member, not to the virtual address.
    let r = get_with_session(proxy.addr, "0000abcdefgh:c2").await;
    assert_eq!((r.status, r.member()), (200, "m2"));
    assert_eq!(vip.request_count(), 10);
    assert_eq!(m1.request_count(), 0);
    assert_eq!(m2.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessionless_is_balanced_when_the_virtual_address_is_down() {
    let (m1, m2, _) = three_members().await;
    let vip = Backend::closed("vip");
    let text = config(
        "",
        &format!("virtual_address = \"{}\"", vip.addr),
        "",
        &[member(&m1, "c1", ""), member(&m2, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    let mut replies = Vec::new();
    for i in 0..10 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        replies.push(r);
    }
    let t = tally(&replies, &["m1", "m2"]);
    assert_eq!(t[0] + t[1], 10, "every answer comes from a member: {t:?}");
    assert!(t[0] >= 3 && t[1] >= 3, "balanced over both members: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weights_3_1_0_give_exactly_300_100_0() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "load_balance = \"round_robin\"",
        "",
        &[
            member(&m1, "c1", "weight = 3"),
            member(&m2, "c2", "weight = 1"),
            member(&m3, "c3", "weight = 0"),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let mut conn = Conn::open(proxy.addr).await.expect("connect");
    let mut replies = Vec::new();
    for i in 0..400 {
        let r = conn
            .get("/", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        replies.push(r);
    }
    assert_eq!(tally(&replies, &["m1", "m2", "m3"]), vec![300, 100, 0]);
    assert_eq!(
        (m1.request_count(), m2.request_count(), m3.request_count()),
        (300, 100, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_member_still_serves_its_sessions() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&m1, "c1", "weight = 1"),
            member(&m2, "c2", "weight = 1"),
            member(&m3, "c3", "weight = 0"),
        ],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..10 {
        let r = get_with_session(proxy.addr, "0000abcdefgh:c3").await;
        assert_eq!((r.status, r.member()), (200, "m3"), "request {i}");
    }
    assert_eq!(m3.request_count(), 10);
    assert_eq!(m1.request_count() + m2.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_over_weighted_members_only() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "load_balance = \"random\"",
        "",
        &[
            member(&m1, "c1", "weight = 1"),
            member(&m2, "c2", "weight = 1"),
            member(&m3, "c3", "weight = 0"),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let mut conn = Conn::open(proxy.addr).await.expect("connect");
    let mut replies = Vec::new();
    for i in 0..200 {
        let r = conn
            .get("/", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        replies.push(r);
    }
    let t = tally(&replies, &["m1", "m2", "m3"]);
    assert_eq!(t[0] + t[1] + t[2], 200, "{t:?}");
    // p = 1/2 each: fewer than 20 of 200 has a probability far below 1e-20.
    assert!(
        t[0] >= 20 && t[1] >= 20,
        "both weighted members get a share: {t:?}"
    );
    assert_eq!(
        t[2], 0,
        "the weight-0 member takes no sessionless traffic: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_spreads_over_weighted_members_only() {
    let slow = Behavior::Slow(Duration::from_millis(300));
    let m1 = Backend::start("m1", slow.clone()).await;
    let m2 = Backend::start("m2", slow.clone()).await;
    let m3 = Backend::start("m3", slow).await;
    let text = config(
        "",
        "load_balance = \"least_requests\"",
        "",
        &[
            member(&m1, "c1", "weight = 1"),
            member(&m2, "c2", "weight = 1"),
            member(&m3, "c3", "weight = 0"),
        ],
    );
    let proxy = Proxy::start(&text).await;

    // Concurrent requests, so the outstanding counts differ while they are chosen.
    let mut set = JoinSet::new();
    for _ in 0..30 {
        let addr = proxy.addr;
        set.spawn(async move { get(addr, "/", &[]).await });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        let r = r.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text());
        replies.push(r);
    }
    let t = tally(&replies, &["m1", "m2", "m3"]);
    assert_eq!(t[0] + t[1] + t[2], 30, "{t:?}");
    // Even if every choice were a coin flip (equal loads), fewer than 2 of 30 on one side has a
    // probability below 1e-7; a balancer that never picks one of them gives it 0.
    assert!(
        t[0] >= 2 && t[1] >= 2,
        "both weighted members get a share: {t:?}"
    );
    assert_eq!(
        t[2], 0,
        "the weight-0 member takes no sessionless traffic: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_take_no_traffic_while_a_primary_is_up() {
    let p1 = Backend::start("p1", Behavior::Normal).await;
    let p2 = Backend::closed("p2");
    let b1 = Backend::start("b1", Behavior::Normal).await;
    let text = config(
        "",
        "max_attempts = 3",
        "",
        &[
            member(&p1, "c1", ""),
            member(&p2, "c2", ""),
            member(&b1, "c3", "role = \"backup\""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..10 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!((r.status, r.member()), (200, "p1"), "request {i}");
    }
    assert_eq!(
        b1.request_count(),
        0,
        "the backup is used only when no primary is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_tried_in_list_order_when_every_primary_is_down() {
    let p1 = Backend::closed("p1");
    let p2 = Backend::closed("p2");
    let b1 = Backend::closed("b1");
    let b2 = Backend::start("b2", Behavior::Normal).await;
    let b3 = Backend::start("b3", Behavior::Normal).await;
    let text = config(
        "",
        "max_attempts = 5",
        "",
        &[
            member(&p1, "c1", ""),
            member(&b1, "c3", "role = \"backup\""),
            member(&p2, "c2", ""),
            member(&b2, "c4", "role = \"backup\""),
            member(&b3, "c5", "role = \"backup\""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..6 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(
            (r.status, r.member()),
            (200, "b2"),
            "request {i}: the first live backup in list order answers ({})",
            r.text()
        );
    }
    assert_eq!(b2.request_count(), 6);
    assert_eq!(b3.request_count(), 0, "backups are not balanced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websphere_session_goes_to_its_clone() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..10 {
        let r = get_with_session(proxy.addr, "0000abcdefgh:c2").await;
        assert_eq!((r.status, r.member()), (200, "m2"), "request {i}");
    }
    assert_eq!(m2.request_count(), 10);
    assert_eq!(m1.request_count() + m3.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websphere_owner_down_fails_over_to_the_next_clone() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let m2 = Backend::closed("m2");
    let m3 = Backend::start("m3", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..5 {
        let r = get_with_session(proxy.addr, "0000abcdefgh:c2:c3").await;
        assert_eq!(
            (r.status, r.member()),
            (200, "m3"),
            "request {i}: {}",
            r.text()
        );
    }
    assert_eq!(
        m1.request_count(),
        0,
        "the replica holder c3 is preferred to balancing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_clone_down_is_balanced() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let m2 = Backend::closed("m2");
    let m3 = Backend::closed("m3");
    let m4 = Backend::start("m4", Behavior::Normal).await;
    let text = config(
        "",
        "max_attempts = 4",
        "",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
            member(&m4, "c4", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let mut replies = Vec::new();
    for i in 0..6 {
        let r = get_with_session(proxy.addr, "0000abcdefgh:c2:c3").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        replies.push(r);
    }
    let t = tally(&replies, &["m1", "m4"]);
    assert_eq!(t[0] + t[1], 6, "a live member answers: {t:?}");
    assert!(
        t[0] >= 1 && t[1] >= 1,
        "balanced, not pinned to one member: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tomcat_route_goes_to_its_member() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "",
        "format = \"tomcat\"",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..5 {
        let r = get_with_session(proxy.addr, "A1B2C3D4E5F6.c2").await;
        assert_eq!((r.status, r.member()), (200, "m2"), "request {i}");
    }
    assert_eq!(m1.request_count() + m3.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_path_parameter_routes_and_the_path_is_forwarded_unchanged() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let path = "/app/page;jsessionid=0000abcdefgh:c2?x=1&y=two";
    for i in 0..5 {
        let r = get(proxy.addr, path, &[]).await;
        assert_eq!((r.status, r.member()), (200, "m2"), "request {i}");
    }
    let seen = m2.requests();
    assert_eq!(seen.len(), 5);
    for r in &seen {
        assert_eq!(r.uri, path, "the member sees the path exactly as sent");
    }
    assert_eq!(m1.request_count() + m3.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_path_parameter_is_read_before_the_cookie() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let r = get(
        proxy.addr,
        "/a;jsessionid=0000abcdefgh:c3",
        &[("cookie", "JSESSIONID=0000abcdefgh:c1")],
    )
    .await;
    assert_eq!((r.status, r.member()), (200, "m3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_session_cookies_first_naming_a_live_member_wins() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let m2 = Backend::closed("m2");
    let m3 = Backend::start("m3", Behavior::Normal).await;
    let m4 = Backend::start("m4", Behavior::Normal).await;
    let text = config(
        "",
        "max_attempts = 4",
        "",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
            member(&m4, "c4", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    // In one Cookie header: c9 names no member, c2 is down, c3 is the first live one.
    let cookie = "other=1; JSESSIONID=0000aaaaaaaa:c9; JSESSIONID=0000bbbbbbbb:c2; \
                  JSESSIONID=0000cccccccc:c3; JSESSIONID=0000dddddddd:c4";
    for i in 0..4 {
        let r = get(proxy.addr, "/", &[("cookie", cookie)]).await;
        assert_eq!(
            (r.status, r.member()),
            (200, "m3"),
            "request {i}: {}",
            r.text()
        );
    }
    // Across two Cookie headers, in header order.
    let r = get(
        proxy.addr,
        "/",
        &[
            ("cookie", "JSESSIONID=0000aaaaaaaa:c9"),
            (
                "cookie",
                "JSESSIONID=0000dddddddd:c4; JSESSIONID=0000cccccccc:c3",
            ),
        ],
    )
    .await;
    assert_eq!((r.status, r.member()), (200, "m4"));
    assert_eq!(m1.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_session_values_are_sessionless_never_an_error() {
    let (m1, m2, m3) = three_members().await;
    let text = config(
        "",
        "",
        "",
        &[
            member(&m1, "c1", ""),
            member(&m2, "c2", ""),
            member(&m3, "c3", ""),
        ],
    );
    let proxy = Proxy::start(&text).await;

    let long = format!("0000{}:c2", "a".repeat(8192));
    let values = [
        "",
        "::::",
        long.as_str(),
        "0000abcdefgh:c9",
        "0000abcdefgh:",
        ":c2",
        "0000",
        "0000abcdefgh:c2:::c1:",
        "\"0000abcdefgh:c2\"",
    ];
    for v in values {
        let cookie = format!("JSESSIONID={v}");
        let r = get(proxy.addr, "/", &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 200, "cookie {:?}: {}", truncate(v), r.text());
        assert!(
            ["m1", "m2", "m3"].contains(&r.member()),
            "cookie {:?}",
            truncate(v)
        );
    }
    for path in [
        "/;jsessionid=",
        "/;jsessionid=::::",
        "/x;jsessionid=;jsessionid=0000ab:",
    ] {
        let r = get(proxy.addr, path, &[]).await;
        assert_eq!(r.status, 200, "path {path}: {}", r.text());
    }
    // Non-ASCII bytes in the cookie value (obs-text), sent raw.
    let raw = b"GET / HTTP/1.1\r\nHost: app.test\r\nCookie: JSESSIONID=0000\xc3\xa9\xff\xfe\x80abc:c2\r\nConnection: close\r\n\r\n";
    let resp = raw_exchange(proxy.addr, raw, Duration::from_secs(10)).await;
    assert_eq!(
        raw_status(&resp),
        Some(200),
        "non-ASCII session id: {}",
        String::from_utf8_lossy(&resp)
    );
}

fn truncate(s: &str) -> &str {
    &s[..s.len().min(40)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_affinity_owner_down_is_503() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let m2 = Backend::closed("m2");
    let text = config(
        "",
        "",
        "strict = true",
        &[member(&m1, "c1", ""), member(&m2, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    for i in 0..2 {
        let r = get_with_session(proxy.addr, "0000abcdefgh:c2").await;
        assert_plain_error(&r, 503);
        assert_eq!(r.member(), "", "request {i}");
    }
    assert_eq!(
        m1.request_count(),
        0,
        "strict affinity never fails a session over"
    );
    // Sessionless traffic is unaffected.
    let r = get(proxy.addr, "/", &[]).await;
    assert_eq!((r.status, r.member()), (200, "m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_member_is_marked_down_then_probed_after_retry_interval() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let down = Backend::closed("m2");
    let m2_addr = down.addr;
    let text = config(
        "",
        "retry_interval = \"3s\"",
        "",
        &[member(&m1, "c1", ""), member(&down, "c2", "")],
    );
    let proxy = Proxy::start(&text).await;

    // The connect to m2 is refused: fail over to m1, mark m2 down.
    let marked_at = Instant::now();
    let r = get_with_session(proxy.addr, "0000abcdefgh:c2").await;
    assert_eq!((r.status, r.member()), (200, "m1"), "{}", r.text());

    // m2 comes back on its port; while marked down it gets nothing.
    let m2 = Backend::start_at("m2", m2_addr, Behavior::Normal).await;
    let r = get_with_session(proxy.addr, "0000abcdefgh:c2").await;
    assert_eq!(
        (r.status, r.member()),
        (200, "m1"),
        "m2 is still marked down"
    );
    for i in 0..4 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(
            (r.status, r.member()),
            (200, "m1"),
            "sessionless request {i}"
        );
    }
    assert!(
        marked_at.elapsed() < Duration::from_millis(2500),
        "test precondition: the requests above ran within the retry interval"
    );
    assert_eq!(
        m2.accepted_connections(),
        0,
        "no connection to a member marked down"
    );

    // After the interval the next request that selects m2 probes it, and it is back.
    tokio::time::sleep_until(marked_at + Duration::from_millis(3300)).await;
    let r = get_with_session(proxy.addr, "0000abcdefgh:c2").await;
    assert_eq!((r.status, r.member()), (200, "m2"), "{}", r.text());
    assert_eq!(m2.request_count(), 1);
}
