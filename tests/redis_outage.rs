//! Redis killed mid-run: requests get a 503 quickly (bounded timeouts and retries), never a new
//! empty session, no panic, no hang; Redis restarted on the same port with its append-only file
//! (`appendfsync always`) → the member reconnects by itself and every session resumes its count.

mod redis_support;
mod session_support;

use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use redis_support::{RedisServer, DURABLE};
use session_support::*;
use tether::member::MemberConfig;

const SESSIONS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_503_and_sessions_resume_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path(), DURABLE);
    let app = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = app.local_addr().unwrap();
    let config = MemberConfig::parse(&format!(
        "[member]\nclone_id = \"r1\"\nlisten = \"{addr}\"\n[session]\nstore = \"redis\"\n\
         [redis]\nurl = \"{}\"\nconnect_timeout = \"200ms\"\nresponse_timeout = \"300ms\"\nretries = 1\n",
        redis.url()
    ))
    .unwrap();
    let _member = InProcess::start(config, app, None);
    wait_listening(addr).await;

    let mut clients = vec![Client::default(); SESSIONS];
    for round in 1..=3u64 {
        for c in &mut clients {
            let r = c.get(addr, "/count").await;
            assert_eq!((r.status, r.count()), (200, round), "{}", r.body);
        }
    }

    redis.kill9();
    for (i, c) in clients.iter_mut().enumerate() {
        let before = c.cookie.clone();
        let started = Instant::now();
        let r = c.get(addr, "/count").await;
        assert_eq!(r.status, 503, "session {i}: {}", r.body);
        assert!(r.body.contains("session store"), "{}", r.body);
        assert!(
            r.set_cookie.is_empty(),
            "no new session: {:?}",
            r.set_cookie
        );
        assert_eq!(c.cookie, before);
        // Bound: 2 attempts × (connect 200 ms … reply 300 ms + 100 ms) plus pauses; 3 s is
        // far above it and far below a hang.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }
    // A request without a session is refused too (it would write a new one).
    assert_eq!(get(addr, "/count", None).await.unwrap().status, 503);
    let s = stats(addr).await;
    assert!(s["unavailable"].as_u64().unwrap() >= SESSIONS as u64, "{s}");

    redis.restart();
    // The member reconnects by itself: poll (bounded) until the first session answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let r = clients[0].get(addr, "/count").await;
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "the member never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        first.count(),
        4,
        "the session came back from the AOF: {}",
        first.body
    );
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        let r = c.get(addr, "/count").await;
        assert_eq!((r.status, r.count()), (200, 4), "session {i}: {}", r.body);
    }
}
