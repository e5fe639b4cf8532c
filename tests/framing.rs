//! Request framing (issue 2, "Framing"): raw bytes over TCP. Every rejected request must be
//! answered by the proxy itself and reach no member.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(5);

async fn setup(proxy_extra: &str) -> (Backend, Proxy) {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let text = config(proxy_extra, "", "", &[member(&m1, "c1", "")]);
    let proxy = Proxy::start(&text).await;
    (m1, proxy)
}

fn show(resp: &[u8]) -> String {
    String::from_utf8_lossy(&resp[..resp.len().min(400)]).into_owned()
}

/// Sends `request` raw and asserts the first response's status is one of `expected`.
async fn expect_status(proxy: &Proxy, request: &[u8], expected: &[u16]) -> Vec<u8> {
    let resp = raw_exchange(proxy.addr, request, WAIT).await;
    let status = raw_status(&resp);
    assert!(
        status.is_some_and(|s| expected.contains(&s)),
        "expected one of {expected:?}, got {status:?}: {}",
        show(&resp)
    );
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_raw_request_reaches_the_member() {
    // The control case: the raw client and the recording work, so "recorded nothing" means
    // something in the tests below.
    let (m1, proxy) = setup("").await;
    let resp = expect_status(
        &proxy,
        b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        &[200],
    )
    .await;
    assert!(resp.ends_with(b"m1"), "{}", show(&resp));
    let seen = m1.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/ok");
    assert_eq!(seen[0].body.as_deref(), Some(&b"hello"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_400() {
    let (m1, proxy) = setup("").await;
    expect_status(
        &proxy,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        &[400],
    )
    .await;
    assert_eq!(m1.request_count(), 0);
    assert_eq!(m1.accepted_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host_is_400() {
    let (m1, proxy) = setup("").await;
    expect_status(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        &[400],
    )
    .await;
    expect_status(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        &[400],
    )
    .await;
    assert_eq!(m1.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_content_lengths_are_400() {
    let (m1, proxy) = setup("").await;
    expect_status(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde",
        &[400],
    )
    .await;
    assert_eq!(m1.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_transfer_encoding_is_400_or_501() {
    let (m1, proxy) = setup("").await;
    expect_status(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nabcde",
        &[400, 501],
    )
    .await;
    assert_eq!(m1.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_smuggling_never_makes_a_member_see_an_extra_request() {
    let (m1, proxy) = setup("").await;
    // CL.TE: by Content-Length the body is "0\r\n\r"; by chunked it is empty and a second
    // request follows.
    let cl_te = b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let resp = raw_exchange(proxy.addr, cl_te, WAIT).await;
    // TE.CL: by chunked the body ends early; by Content-Length it swallows a second request.
    let te_cl = b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled2 HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let resp2 = raw_exchange(proxy.addr, te_cl, WAIT).await;

    let seen = m1.requests();
    for r in &seen {
        assert!(
            !r.uri.contains("smuggled"),
            "a member saw a smuggled request {}; responses: {} / {}",
            r.uri,
            show(&resp),
            show(&resp2)
        );
    }
    assert!(seen.len() <= 2, "at most the two outer requests: {seen:?}");
    for (r, raw) in [(&resp, "CL.TE"), (&resp2, "TE.CL")] {
        let statuses = raw_statuses(r);
        assert!(
            statuses.len() <= 1,
            "{raw}: the proxy answered a second request: {statuses:?}"
        );
        assert!(
            statuses.first().is_some_and(|s| *s < 500),
            "{raw}: {}",
            show(r)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_post_size_limit_is_413() {
    let (m1, proxy) = setup("post_size_limit = \"1KiB\"").await;
    let mut req = b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(&pattern(2048));
    expect_status(&proxy, &req, &[413]).await;
    assert_eq!(m1.request_count(), 0);
    // At the limit it passes.
    let mut req = b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(&pattern(1024));
    expect_status(&proxy, &req, &[200]).await;
    assert_eq!(m1.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_post_size_limit_is_413() {
    let (m1, proxy) = setup("post_size_limit = \"1KiB\"").await;
    let mut req = b"POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&pattern(512));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    expect_status(&proxy, &req, &[413]).await;
    let complete = m1.requests().iter().filter(|r| r.complete).count();
    assert_eq!(complete, 0, "no member received the whole over-limit body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_max_header_bytes_are_431() {
    let (m1, proxy) = setup("max_header_bytes = 8192").await;
    let big = "x".repeat(16 * 1024);
    let req =
        format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    expect_status(&proxy, req.as_bytes(), &[431]).await;
    assert_eq!(m1.request_count(), 0);
    // Well under the limit it passes.
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(2048)
    );
    expect_status(&proxy, req.as_bytes(), &[200]).await;
}
