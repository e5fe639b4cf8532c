//! The member side of HTTP/1.1 (src/upstream/h1.rs, src/upstream/conn.rs) against raw TCP
//! members that answer with exact bytes: response framing (RFC 9112 §6.3), interim responses,
//! hop-by-hop headers, broken members, and pooled connections the member has closed.

mod support;

use std::time::Duration;

use support::*;

async fn one_member(reply: &'static [u8], keep_open: bool) -> (Backend, Proxy) {
    let m1 = Backend::start("m1", Behavior::Raw { reply, keep_open }).await;
    let proxy = Proxy::start(&config("", "", "", &[member(&m1, "c1", "")])).await;
    (m1, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_closing_idle_connections_costs_no_post() {
    // Every answer looks keep-alive, but the member closes the connection right after it.
    let (m1, proxy) = one_member(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    for i in 0..10 {
        let reply = send(
            proxy.addr,
            "POST",
            "/order",
            &[],
            format!("order {i}").as_str(),
        )
        .await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "ok"),
            "POST {i}"
        );
        // Give the close time to arrive, as between two users' requests.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = m1.requests();
    assert_eq!(seen.len(), 10, "each POST reached the member exactly once");
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.body.as_deref(), Some(format!("order {i}").as_bytes()));
    }
    assert_eq!(
        m1.accepted_connections(),
        10,
        "no closed connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_arrives_whole_and_its_connection_is_reused() {
    let (m1, proxy) = one_member(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Member: m1\r\n\r\n\
          5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Sum: 12\r\n\r\n",
        true,
    )
    .await;
    let mut conn = Conn::open(proxy.addr).await.expect("connect");
    for i in 0..3 {
        let reply = conn.get("/", &[]).await.expect("chunked response");
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "hello, world"),
            "GET {i}"
        );
        assert!(
            reply.header("transfer-encoding").is_none() || reply.header("content-length").is_none()
        );
    }
    assert_eq!(
        m1.accepted_connections(),
        1,
        "the body's end was found exactly, so the member connection carried all three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_is_read_to_the_end() {
    let (m1, proxy) = one_member(
        b"HTTP/1.0 200 OK\r\nX-Member: m1\r\n\r\nread until close",
        false,
    )
    .await;
    for _ in 0..2 {
        let reply = get(proxy.addr, "/", &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "read until close")
        );
    }
    assert_eq!(
        m1.accepted_connections(),
        2,
        "such a connection is never reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_not_passed_on() {
    let (_m1, proxy) = one_member(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
          HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
        true,
    )
    .await;
    let reply = send(proxy.addr, "POST", "/things", &[], "new thing").await;
    assert_eq!((reply.status, reply.text().as_str()), (201, "done"));
    assert!(reply.header("link").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_and_chunked_together_are_framed_by_chunked() {
    let (_m1, proxy) = one_member(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n",
        true,
    )
    .await;
    let reply = get(proxy.addr, "/", &[]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "abc"));
    assert_ne!(reply.header("content-length"), Some("100"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_has_no_body_whatever_its_length_says() {
    let (m1, proxy) = one_member(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", true).await;
    let mut conn = Conn::open(proxy.addr).await.expect("connect");
    for i in 0..2 {
        let reply = conn
            .send("HEAD", "/", &[], ReqBody::Empty)
            .await
            .unwrap_or_else(|e| panic!("HEAD {i}: {e}"));
        assert_eq!((reply.status, reply.body.len()), (200, 0));
        assert_eq!(reply.header("content-length"), Some("1000"));
    }
    assert_eq!(m1.accepted_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_member_names_in_connection_do_not_reach_the_client() {
    let (_m1, proxy) = one_member(
        b"HTTP/1.1 200 OK\r\nConnection: x-internal, keep-alive\r\nX-Internal: secret\r\n\
          Keep-Alive: timeout=5\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\nok",
        true,
    )
    .await;
    let reply = get(proxy.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-public"), Some("yes"));
    for name in ["x-internal", "keep-alive"] {
        assert!(reply.header(name).is_none(), "{name} reached the client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_response_head_is_502_retried_only_when_safe() {
    for reply in [
        &b"SMTP ready\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ] {
        let m1 = Backend::start(
            "m1",
            Behavior::Raw {
                reply,
                keep_open: false,
            },
        )
        .await;
        let m2 = Backend::start(
            "m2",
            Behavior::Raw {
                reply,
                keep_open: false,
            },
        )
        .await;
        let text = config("", "", "", &[member(&m1, "c1", ""), member(&m2, "c2", "")]);
        let proxy = Proxy::start(&text).await;

        let got = get(proxy.addr, "/", &[]).await;
        assert_plain_error(&got, 502);
        assert_eq!(
            (m1.request_count(), m2.request_count()),
            (1, 1),
            "a GET goes to the other member"
        );
        let got = send(proxy.addr, "POST", "/pay", &[], "once").await;
        assert_plain_error(&got, 502);
        assert_eq!(
            m1.request_count() + m2.request_count(),
            3,
            "a POST that reached a member is not sent again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_chunked_upload_keeps_its_trailers() {
    let (m1, proxy) = one_member(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    // Larger than post_buffer_size (64 KiB), so it is streamed, not buffered.
    let chunk = vec![b'x'; 40 * 1024];
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: shop\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\nX-Checksum: 42\r\n\r\n");
    let reply = raw_exchange(proxy.addr, &request, Duration::from_secs(5)).await;
    assert_eq!(
        raw_status(&reply),
        Some(200),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let seen = m1.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].complete);
    assert_eq!(seen[0].body_len, 3 * 40 * 1024);
    assert_eq!(seen[0].trailers.to_ascii_lowercase(), "x-checksum: 42\r\n");
}
