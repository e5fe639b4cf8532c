//! Operations (issue 2; DESIGN.md §6): the access log, and graceful shutdown — the real binary gets SIGTERM/SIGINT
//! while a slow response is still streaming; the in-process `serve` gets its shutdown future.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const CHUNKS: usize = 15;
const INTERVAL: Duration = Duration::from_millis(200);

/// The `tether proxy` process; killed (SIGKILL) if the test ends while it still runs.
struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
    stderr: tempfile::NamedTempFile,
    _config: tempfile::NamedTempFile,
}

impl ProxyProcess {
    /// Writes the config (listen address filled in) and starts `tether proxy --config FILE`;
    /// returns once the port accepts (at most 5 s).
    async fn start(config_text: &str) -> ProxyProcess {
        let addr = free_addr();
        let text = config_text.replace(LISTEN_PLACEHOLDER, &addr.to_string());
        let mut config = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("config file");
        std::io::Write::write_all(&mut config, text.as_bytes()).expect("write config");
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("proxy")
            .arg("--config")
            .arg(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().expect("stderr handle"))
            .spawn()
            .expect("spawn tether");
        let mut p = ProxyProcess {
            child,
            addr,
            stderr,
            _config: config,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                panic!("tether exited early with {status}: {}", p.stderr_text());
            }
            if let Ok(Ok(_)) = timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tether did not listen on {addr} within 5 s: {}",
                p.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tether still running {limit:?} after the signal: {}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = self.stderr.reopen() {
            f.read_to_string(&mut s).ok();
        }
        let start = s.len().saturating_sub(4000);
        s[start..].to_string()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// Starts a GET that streams a SlowStream body; returns once the head and the first chunk
/// have arrived, with the rest of the body still on its way.
async fn begin_streaming(addr: SocketAddr) -> (Conn, Incoming, BytesMut) {
    let mut conn = Conn::open(addr).await.expect("connect");
    let resp = conn
        .send_streaming("GET", "/stream", &[], ReqBody::Empty)
        .await
        .expect("response head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = BytesMut::new();
    let first = timeout(CALL_TIMEOUT, body.frame())
        .await
        .expect("first chunk in time")
        .expect("a first frame")
        .expect("first frame ok");
    if let Ok(data) = first.into_data() {
        got.extend_from_slice(&data);
    }
    (conn, body, got)
}

/// Reads the rest of the body in a task (bounded), returning everything received.
fn finish_body(mut body: Incoming, mut got: BytesMut) -> JoinHandle<Result<BytesMut, String>> {
    tokio::spawn(async move {
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| format!("body aborted after {} bytes: {e}", got.len()))?;
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            Ok(got)
        };
        timeout(Duration::from_secs(20), read)
            .await
            .map_err(|_| "body not complete within 20 s".to_string())?
    })
}

/// Polls until a connect to `addr` is refused (at most `limit`); true if it was.
async fn refused_within(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

fn slow_config(backend: &Backend, grace: &str) -> String {
    config(
        &format!("shutdown_grace = \"{grace}\""),
        "",
        "",
        &[member(backend, "c1", "")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_finishes_the_body_then_exits_zero() {
    let slow = Backend::start(
        "m1",
        Behavior::SlowStream {
            chunks: CHUNKS,
            interval: INTERVAL,
        },
    )
    .await;
    let mut proc_ = ProxyProcess::start(&slow_config(&slow, "10s")).await;

    let (conn, body, got) = begin_streaming(proc_.addr).await;
    proc_.signal("TERM");
    let signalled = Instant::now();
    let reader = finish_body(body, got);

    assert!(
        refused_within(proc_.addr, Duration::from_secs(2)).await,
        "new connections must be refused after SIGTERM: {}",
        proc_.stderr_text()
    );
    assert!(
        !reader.is_finished(),
        "test precondition: the listener closed while the body was still streaming"
    );

    let body = reader.await.expect("reader task").unwrap_or_else(|e| {
        panic!(
            "in-flight response cut: {e}; stderr: {}",
            proc_.stderr_text()
        )
    });
    assert_eq!(body.len(), slow_stream_body(CHUNKS).len());
    assert!(body == slow_stream_body(CHUNKS), "the body arrives intact");

    // The idle keep-alive client connection must not hold the process up.
    let status = proc_
        .wait_exit(Duration::from_secs(10 + 5).saturating_sub(signalled.elapsed()))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}: {}",
        proc_.stderr_text()
    );
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_on_an_idle_proxy_exits_zero_without_waiting_for_the_grace_period() {
    let m1 = Backend::start("m1", Behavior::Normal).await;
    let mut proc_ = ProxyProcess::start(&slow_config(&m1, "30s")).await;
    let r = get(proc_.addr, "/", &[]).await;
    assert_eq!((r.status, r.member()), (200, "m1"));

    proc_.signal("INT");
    let status = proc_.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}: {}",
        proc_.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_grace_expiry_cuts_a_response_that_is_too_slow() {
    let slow = Backend::start(
        "m1",
        Behavior::SlowStream {
            chunks: 100,
            interval: INTERVAL,
        },
    )
    .await;
    let mut proc_ = ProxyProcess::start(&slow_config(&slow, "1s")).await;

    let (_conn, body, got) = begin_streaming(proc_.addr).await;
    proc_.signal("TERM");
    let reader = finish_body(body, got);

    // 100 chunks take 20 s; the grace period is 1 s.
    proc_.wait_exit(Duration::from_secs(6)).await;
    let result = timeout(Duration::from_secs(5), reader)
        .await
        .expect("the client notices the cut promptly")
        .expect("reader task");
    assert!(
        result.is_err(),
        "a response still streaming when the grace period ends is cut, not completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_drains_the_streaming_response() {
    let slow = Backend::start(
        "m1",
        Behavior::SlowStream {
            chunks: CHUNKS,
            interval: INTERVAL,
        },
    )
    .await;
    let mut proxy = Proxy::start(&slow_config(&slow, "10s")).await;

    let (conn, body, got) = begin_streaming(proxy.addr).await;
    proxy.begin_shutdown();
    let reader = finish_body(body, got);

    assert!(
        refused_within(proxy.addr, Duration::from_secs(2)).await,
        "new connections must be refused once shutdown has begun"
    );
    assert!(
        !proxy.is_finished(),
        "serve must not return while a response is still streaming (within the grace period)"
    );
    let body = reader
        .await
        .expect("reader task")
        .unwrap_or_else(|e| panic!("in-flight response cut: {e}"));
    assert!(body == slow_stream_body(CHUNKS), "the body arrives intact");

    proxy
        .join(Duration::from_secs(10))
        .await
        .expect("serve returns Ok after draining");
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_serve_returns_when_the_grace_period_ends() {
    let slow = Backend::start(
        "m1",
        Behavior::SlowStream {
            chunks: 100,
            interval: INTERVAL,
        },
    )
    .await;
    let mut proxy = Proxy::start(&slow_config(&slow, "1s")).await;

    let (_conn, _body, _got) = begin_streaming(proxy.addr).await;
    let started = Instant::now();
    proxy.begin_shutdown();
    let result = proxy.join(Duration::from_secs(6)).await;
    assert!(result.is_ok(), "serve returns Ok: {result:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "serve waited for the in-flight response up to the grace period, returned after {:?}",
        started.elapsed()
    );
}

/// One access-log line per request through `tracing` (issue 2, "Operations"): route, cluster,
/// member, affinity outcome, attempts, status, duration — for a sessionless request, a hit and
/// a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request() {
    let dead = Backend::closed("dead");
    let live = Backend::start("live", Behavior::Normal).await;
    let text = config(
        "",
        "",
        "",
        &[member(&dead, "c1", ""), member(&live, "c2", "")],
    );
    let mut proxy = ProxyProcess::start(&text).await;

    // c1 is dead: the first request naming it finds out (2 attempts) and marks it down, so the
    // sessionless request after it goes straight to c2.
    let failover = get(
        proxy.addr,
        "/failover",
        &[("cookie", "JSESSIONID=0000abcdefgh:c1:c2")],
    )
    .await;
    let sessionless = get(proxy.addr, "/none", &[]).await;
    let hit = get(
        proxy.addr,
        "/hit",
        &[("cookie", "JSESSIONID=0000abcdefgh:c2")],
    )
    .await;
    let missing_host = raw_status(
        &raw_exchange(
            proxy.addr,
            b"GET /bad HTTP/1.1\r\n\r\n",
            Duration::from_secs(2),
        )
        .await,
    );
    for reply in [&sessionless, &hit, &failover] {
        assert_eq!((reply.status, reply.member()), (200, "live"));
    }
    assert_eq!(missing_host, Some(400));
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(10)).await.success());

    let log = proxy.stderr_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tether::access"))
        .collect();
    assert_eq!(lines.len(), 4, "one access line per request:\n{log}");
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("path=\"{path}\"")))
            .unwrap_or_else(|| panic!("no access line for {path}:\n{log}"))
            .to_string()
    };
    for (path, member, affinity, attempts) in [
        ("/none", "live", "none", 1),
        ("/hit", "live", "hit", 1),
        ("/failover", "live", "failover", 2),
    ] {
        let l = line(path);
        for field in [
            "route=0".to_string(),
            "cluster=\"app\"".to_string(),
            format!("member=\"{member}\""),
            format!("affinity=\"{affinity}\""),
            format!("attempts={attempts}"),
            "status=200".to_string(),
            "duration_us=".to_string(),
        ] {
            assert!(l.contains(&field), "{path}: missing {field} in {l}");
        }
    }
    let bad = line("/bad");
    assert!(
        bad.contains("status=400") && bad.contains("attempts=0"),
        "{bad}"
    );
}
