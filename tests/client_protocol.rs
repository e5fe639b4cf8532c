//! The client side of HTTP/1.1 (src/server/conn.rs, src/server/h1.rs) with raw TCP clients:
//! pipelining, `Expect: 100-continue`, HTTP/1.0 clients, the head-read timeout, a request that
//! arrives after its connection, and the listener's TCP_DEFER_ACCEPT.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(5);

async fn setup(proxy_extra: &str, behavior: Behavior) -> (Backend, Proxy) {
    let m1 = Backend::start("m1", behavior).await;
    let proxy = Proxy::start(&config(proxy_extra, "", "", &[member(&m1, "c1", "")])).await;
    (m1, proxy)
}

/// Reads from `stream` until `needle` has arrived (or panics after [`WAIT`]).
async fn read_until(stream: &mut TcpStream, got: &mut Vec<u8>, needle: &[u8]) {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!(
                "waiting for {:?}: {other:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(got)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (m1, proxy) = setup("", Behavior::Echo).await;
    let reply = raw_exchange(
        proxy.addr,
        // Bodies end in a newline so that raw_statuses finds the status line after each.
        b"POST /one HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\none\nPOST /two HTTP/1.1\r\nHost: a.test\r\n\
          Content-Length: 4\r\n\r\ntwo\nGET /three HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(
        raw_statuses(&reply),
        vec![200, 200, 200],
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let text = String::from_utf8_lossy(&reply);
    let (one, two) = (
        text.find("one").expect("one"),
        text.find("two").expect("two"),
    );
    assert!(one < two, "{text}");
    let uris: Vec<String> = m1.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(uris, ["/one", "/two", "/three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_the_go_ahead_before_the_body_is_sent() {
    let (m1, proxy) = setup("", Behavior::Echo).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"PUT /doc HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .expect("head");
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, b"HTTP/1.1 100 Continue\r\n\r\n").await;
    stream.write_all(b"hello").await.expect("body");
    read_until(&mut stream, &mut got, b"hello").await;
    assert_eq!(raw_statuses(&got), vec![100, 200]);
    let seen = m1.requests();
    assert_eq!(seen[0].body.as_deref(), Some(&b"hello"[..]));
    assert!(
        seen[0].header("expect").is_none(),
        "members never see the expectation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_gets_keep_alive_only_when_it_asks() {
    let (_m1, proxy) = setup("", Behavior::Normal).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut got = Vec::new();
    for i in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("request");
        read_until(&mut stream, &mut got, b"m1").await;
        assert!(
            String::from_utf8_lossy(&got)
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "request {i}"
        );
        got.clear();
    }
    // Without asking, the connection closes after the response.
    let reply = raw_exchange(proxy.addr, b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n", WAIT).await;
    assert_eq!(raw_status(&reply), Some(200));
    assert!(String::from_utf8_lossy(&reply).ends_with("m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_goes_to_an_http_1_0_client_until_close() {
    let (_m1, proxy) = setup(
        "",
        Behavior::Raw {
            reply: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
            keep_open: true,
        },
    )
    .await;
    let reply = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n",
        WAIT,
    )
    .await;
    let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(
        text.ends_with("\r\n\r\nwxyz"),
        "no chunked framing for HTTP/1.0: {text}"
    );
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_no_head_in_time_is_closed() {
    let (m1, proxy) = setup("request_timeout = \"300ms\"", Behavior::Normal).await;
    // Idle after a request, and a head that never ends (slowloris): both closed.
    let mut idle = Conn::open(proxy.addr).await.expect("connect");
    assert_eq!(idle.get("/", &[]).await.expect("first request").status, 200);
    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a.te")
        .await
        .expect("partial head");
    let mut buf = [0u8; 64];
    let closed = timeout(Duration::from_secs(3), slow.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "slow head: {closed:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        idle.get("/", &[]).await.is_err(),
        "the idle connection was closed"
    );
    assert_eq!(m1.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_comes_after_the_connection_is_served() {
    // The proxy's first read on a new connection finds nothing here (without TCP_DEFER_ACCEPT,
    // or with it once its second has passed); it must then wait for the request rather than
    // give up on the connection or try it in a loop. With it, a request that comes within the
    // second is accepted with its first half.
    for defer in ["0s", "1s"] {
        let (m1, proxy) = setup(&format!("defer_accept = \"{defer}\""), Behavior::Normal).await;
        for pause_ms in [0u64, 50, 1200] {
            let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
                .await
                .expect("first half of the head");
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            stream
                .write_all(b"Connection: close\r\n\r\n")
                .await
                .expect("rest of the head");
            let mut got = Vec::new();
            read_until(&mut stream, &mut got, b"\r\n\r\n").await;
            assert!(
                got.starts_with(b"HTTP/1.1 200 "),
                "defer_accept {defer}, after {pause_ms} ms: {}",
                String::from_utf8_lossy(&got)
            );
        }
        assert_eq!(m1.request_count(), 3, "defer_accept {defer}");
    }
}

/// TCP_DEFER_ACCEPT as the listener has it, in seconds (the kernel rounds up to its SYN-ACK
/// retransmission schedule).
#[cfg(target_os = "linux")]
fn defer_accept_of(listener: &std::net::TcpListener) -> libc::c_int {
    use std::os::fd::AsRawFd;
    let mut secs: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the call; `secs` and `len` outlive it, and `len` is
    // the size of `secs`.
    let done = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw mut secs).cast(),
            &mut len,
        )
    };
    assert_eq!(done, 0, "getsockopt: {}", std::io::Error::last_os_error());
    secs
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_defers_accept_as_configured() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    for (extra, want) in [
        ("", 1..=1),
        ("defer_accept = \"0s\"", 0..=0),
        ("defer_accept = \"5s\"", 5..=7),
    ] {
        let bound = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        bound.set_nonblocking(true).expect("non-blocking");
        // The same socket: what tether sets on its listener shows here.
        let probe = bound.try_clone().expect("clone the listener");
        let listener = tokio::net::TcpListener::from_std(bound).expect("register the listener");
        let proxy = Proxy::start_on(listener, &config(extra, "", "", &[member(&m1, "c1", "")]));
        // A request through it: the accept loop has set up the listener by then.
        let mut conn = Conn::open(proxy.addr).await.expect("connect");
        assert_eq!(conn.get("/", &[]).await.expect("request").status, 200);
        let secs = defer_accept_of(&probe);
        assert!(
            want.contains(&secs),
            "{extra:?}: TCP_DEFER_ACCEPT is {secs}, want {want:?}"
        );
    }
    assert_eq!(m1.request_count(), 3);
}
