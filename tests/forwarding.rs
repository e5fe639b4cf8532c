//! Forwarding (issue 2, "Forwarding"; DESIGN.md §4): streaming bodies, keep-alive and pooling,
//! the per-member connection limit, and the header rules.

mod support;

use std::time::Duration;

use support::*;
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_100_mib_streams_through_intact() {
    let member_ = Backend::start("m1", Behavior::Normal).await;
    let text = config(
        "post_size_limit = \"128MiB\"",
        "",
        "",
        &[member(&member_, "c1", "")],
    );
    let proxy = Proxy::start(&text).await;

    let len = 100 * MIB;
    let mut conn = Conn::open(proxy.addr).await.expect("connect");
    conn.timeout = BIG_CALL_TIMEOUT;
    let reply = conn
        .send("POST", "/upload", &[], ReqBody::Pattern(len))
        .await
        .expect("upload");
    assert_eq!((reply.status, reply.member()), (200, "m1"));

    let seen = member_.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].complete);
    assert_eq!(
        (seen[0].body_len, seen[0].body_checksum),
        pattern_checksum(len)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_100_mib_streams_through_intact() {
    let len = 100 * MIB;
    let member_ = Backend::start("m1", Behavior::Download(len)).await;
    let text = config("", "", "", &[member(&member_, "c1", "")]);
    let proxy = Proxy::start(&text).await;

    let mut conn = Conn::open(proxy.addr).await.expect("connect");
    let resp = conn
        .send_streaming("GET", "/file", &[], ReqBody::Empty)
        .await
        .expect("response head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let got = hash_body(&mut body, BIG_CALL_TIMEOUT)
        .await
        .expect("whole body");
    assert_eq!(
        got,
        pattern_checksum(len),
        "(length, checksum) of the download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keep_alive_and_pooled_member_connections_are_reused() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config("", "", "", &[member(&m1, "c1", "")]);
    let proxy = Proxy::start(&text).await;

    let mut conn = Conn::open(proxy.addr).await.expect("connect");
    for i in 0..20 {
        let r = conn
            .get("/", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i} on the same client connection: {e}"));
        assert_eq!((r.status, r.member()), (200, "m1"), "request {i}");
    }
    assert_eq!(m1.request_count(), 20);
    assert!(
        m1.accepted_connections() <= 2,
        "20 sequential requests should reuse pooled connections, member accepted {}",
        m1.accepted_connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_member_is_honoured() {
    let m1 = Backend::start("m1", Behavior::Slow(Duration::from_millis(300))).await;
    let text = config("", "", "", &[member(&m1, "c1", "max_connections = 2")]);
    let proxy = Proxy::start(&text).await;

    let mut set = JoinSet::new();
    for _ in 0..6 {
        let addr = proxy.addr;
        set.spawn(async move { get(addr, "/", &[]).await });
    }
    while let Some(r) = set.join_next().await {
        let r = r.expect("request task");
        assert_eq!((r.status, r.member()), (200, "m1"), "{}", r.text());
    }
    assert_eq!(m1.request_count(), 6);
    let max = m1.max_concurrent_connections();
    assert!(
        (1..=2).contains(&max),
        "at most 2 connections open to the member at once, saw {max}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_do_not_reach_the_member() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config("", "", "", &[member(&m1, "c1", "")]);
    let proxy = Proxy::start(&text).await;

    let r = get(
        proxy.addr,
        "/",
        &[
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("upgrade", "websocket"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = m1.requests();
    assert_eq!(seen.len(), 1);
    let h = &seen[0];
    for name in [
        "x-custom",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(
            h.header(name),
            None,
            "hop-by-hop header {name} reached the member"
        );
    }
    if let Some(c) = h.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-custom"),
            "the client's Connection header reached the member: {c}"
        );
    }
    assert_eq!(h.header("x-end-to-end").as_deref(), Some("kept"));
}

/// `Forwarded` element values with quotes removed and lower-cased, for `contains` checks.
fn forwarded(r: &Recorded) -> String {
    r.header("forwarded")
        .unwrap_or_default()
        .replace('"', "")
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config("", "", "", &[member(&m1, "c1", "")]);
    let proxy = Proxy::start(&text).await;

    let r = get(proxy.addr, "/", &[("host", "app.example.com")]).await;
    assert_eq!(r.status, 200);
    let seen = m1.requests();
    let h = &seen[0];
    assert_eq!(h.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        h.header("x-forwarded-host").as_deref(),
        Some("app.example.com")
    );
    let fwd = forwarded(h);
    for part in ["for=127.0.0.1", "proto=http", "host=app.example.com"] {
        assert!(fwd.contains(part), "Forwarded {fwd:?} lacks {part}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarding_headers_are_replaced_when_the_client_is_not_trusted() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config("trusted_proxies = []", "", "", &[member(&m1, "c1", "")]);
    let proxy = Proxy::start(&text).await;

    let r = get(
        proxy.addr,
        "/",
        &[
            ("host", "app.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6;proto=https"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = m1.requests();
    let h = &seen[0];
    assert_eq!(h.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        h.header("x-forwarded-host").as_deref(),
        Some("app.example.com")
    );
    let fwd = forwarded(h);
    assert!(!fwd.contains("6.6.6.6"), "spoofed Forwarded kept: {fwd:?}");
    assert!(fwd.contains("for=127.0.0.1"), "{fwd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarding_headers_are_appended_to_when_the_client_is_trusted() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config(
        "trusted_proxies = [\"127.0.0.1\"]",
        "",
        "",
        &[member(&m1, "c1", "")],
    );
    let proxy = Proxy::start(&text).await;

    let r = get(
        proxy.addr,
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6;proto=https"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = m1.requests();
    let h = &seen[0];
    let xff: Vec<String> = h
        .header("x-forwarded-for")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(xff, ["6.6.6.6", "127.0.0.1"], "client address appended");
    let fwd = forwarded(h);
    let client = fwd
        .find("for=6.6.6.6")
        .expect("the trusted Forwarded is kept");
    let us = fwd.find("for=127.0.0.1").expect("our element is appended");
    assert!(client < us, "appended after the client's element: {fwd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websphere_private_headers_are_added_and_client_copies_replaced() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config("websphere_headers = true", "", "", &[member(&m1, "c1", "")]);
    let proxy = Proxy::start(&text).await;

    let r = get(
        proxy.addr,
        "/",
        &[
            ("host", "app.example.com"),
            ("$WSRA", "6.6.6.6"),
            ("$WSIS", "true"),
            ("$WSSC", "https"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = m1.requests();
    let h = &seen[0];
    assert_eq!(
        h.header_values("$wsra"),
        ["127.0.0.1"],
        "$WSRA is the real client"
    );
    assert_eq!(h.header_values("$wssc"), ["http"]);
    let is = h.header_values("$wsis");
    assert!(
        is.len() == 1 && is[0].eq_ignore_ascii_case("false"),
        "$WSIS: {is:?}"
    );
    for name in ["$wsrh", "$wssn", "$wssp"] {
        assert_eq!(h.header_values(name).len(), 1, "{name} added once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_websphere_private_headers_are_stripped_when_not_enabled() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config(
        "websphere_headers = false",
        "",
        "",
        &[member(&m1, "c1", "")],
    );
    let proxy = Proxy::start(&text).await;

    let r = get(
        proxy.addr,
        "/",
        &[("$WSRA", "6.6.6.6"), ("$WSSC", "https"), ("$WSIS", "true")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = m1.requests();
    let h = &seen[0];
    for name in ["$wsra", "$wssc", "$wsis"] {
        assert_eq!(h.header(name), None, "client-sent {name} must be stripped");
    }
}
