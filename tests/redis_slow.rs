//! A slow or hung Redis, and `tether demo --store redis://…` as a user runs it (issue 4).
//!
//! - Redis frozen with `kill -STOP` (its kernel still accepts connections, nothing answers):
//!   every request gets a 503 within the bound the `[redis]` timeouts and retries allow, one at a
//!   time and in a concurrent burst, never a hang and never a new session (no Set-Cookie);
//!   `kill -CONT` → the member resumes by itself and every session continues its count.
//! - Redis alive but busy (`DEBUG SLEEP` longer than that bound): the same 503s within the
//!   bound, then service resumes when the sleep ends.
//! - The real `tether demo` binary against a `redis-server` started here: counts 1, 2 in one
//!   session, `kill -9` of the member that answered → 3 from another member, the session's key
//!   is in Redis, SIGTERM → exit 0 and no member left.

mod redis_support;
mod session_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis_support::{cli, integer, pings_within, process_state, Frozen, RedisServer};
use session_support::{alive, get, stats, wait_listening, Client, InProcess, KillOnDrop, Reply};
use tether::member::MemberConfig;

/// The `[redis]` settings of the members in the first two tests.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(150);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(200);
const RETRIES: u32 = 1;

const SESSIONS: usize = 6;
const ROUNDS: u64 = 2;

/// The longest one request may take while Redis does not answer, derived from the settings
/// above and the store's code (src/session/redis/): each of the `retries + 1` attempts may spend
/// the connector's connect budget (2 × connect + 2 × response timeout, for the Sentinel path)
/// and then one command's reply bound (response timeout + the store's 100 ms slack); before each
/// retry a pause below 25 ms × attempt + 25 ms; plus 500 ms of margin for a loaded machine.
/// With 150 ms / 200 ms / 1 retry: 2 × 1000 ms + 50 ms + 500 ms = 2.55 s.
fn request_bound() -> Duration {
    let per_attempt = CONNECT_TIMEOUT * 2 + RESPONSE_TIMEOUT * 3 + Duration::from_millis(100);
    let pauses: Duration = (1..=u64::from(RETRIES))
        .map(|attempt| Duration::from_millis(25 * attempt + 25))
        .sum();
    per_attempt * (RETRIES + 1) + pauses + Duration::from_millis(500)
}

/// A member in this process (as tests/redis_outage.rs runs it) with the short timeouts above.
async fn start_member(redis: &RedisServer) -> (InProcess, SocketAddr) {
    let app = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = app.local_addr().unwrap();
    let config = MemberConfig::parse(&format!(
        "[member]\nclone_id = \"r1\"\nlisten = \"{addr}\"\n[session]\nstore = \"redis\"\n\
         [redis]\nurl = \"{}\"\nconnect_timeout = \"{}ms\"\nresponse_timeout = \"{}ms\"\n\
         retries = {RETRIES}\n",
        redis.url(),
        CONNECT_TIMEOUT.as_millis(),
        RESPONSE_TIMEOUT.as_millis(),
    ))
    .unwrap();
    let member = InProcess::start(config, app, None);
    wait_listening(addr).await;
    (member, addr)
}

/// `n` sessions, each counted to `ROUNDS`; the clients and their session ids.
async fn write_sessions(addr: SocketAddr, n: usize) -> (Vec<Client>, Vec<String>) {
    let mut clients = vec![Client::default(); n];
    let mut ids = vec![String::new(); n];
    for round in 1..=ROUNDS {
        for (c, id) in clients.iter_mut().zip(&mut ids) {
            let r = c.get(addr, "/count").await;
            assert_eq!((r.status, r.count()), (200, round), "{}", r.body);
            if round == 1 {
                *id = session_of(&r);
            } else {
                assert_eq!(session_of(&r), *id);
            }
        }
    }
    (clients, ids)
}

fn session_of(r: &Reply) -> String {
    r.json()["session"].as_str().unwrap().to_owned()
}

/// A refusal while Redis does not answer: 503 from the session layer, no cookie set (no new
/// session), within [`request_bound`].
fn assert_refused(what: &str, r: &Reply, took: Duration) {
    assert_eq!(r.status, 503, "{what}: {}", r.body);
    assert!(r.body.contains("session store"), "{what}: {}", r.body);
    assert!(
        r.set_cookie.is_empty(),
        "{what}: no new session: {:?}",
        r.set_cookie
    );
    assert!(
        took < request_bound(),
        "{what}: took {took:?}, bound {:?}",
        request_bound()
    );
}

/// Polls (bounded: 10 s) until `client`'s next `/count` is a 200; only 503s are allowed before.
async fn wait_served(client: &mut Client, addr: SocketAddr) -> (Reply, Duration) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let r = client.get(addr, "/count").await;
        if r.status == 200 {
            return (r, started.elapsed());
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            r.set_cookie.is_empty(),
            "no new session: {:?}",
            r.set_cookie
        );
        assert!(Instant::now() < deadline, "the member never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After Redis answers again: every session continues at `ROUNDS + 1`, same id, and Redis
/// holds the sessions written before and nothing a client was given during the outage;
/// `refused_new` requests without a session were refused meanwhile.
async fn assert_resumed(
    addr: SocketAddr,
    clients: &mut [Client],
    ids: &[String],
    redis: &RedisServer,
    refused_new: usize,
) {
    let (first, took) = wait_served(&mut clients[0], addr).await;
    eprintln!("service resumed {took:?} after Redis answered again");
    assert_eq!(first.count(), ROUNDS + 1, "{}", first.body);
    assert_eq!(session_of(&first), ids[0]);
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        let r = c.get(addr, "/count").await;
        assert_eq!(
            (r.status, r.count()),
            (200, ROUNDS + 1),
            "session {i}: {}",
            r.body
        );
        assert_eq!(session_of(&r), ids[i], "session {i}");
    }
    // No session was made for a client: Redis holds the sessions written before, plus at most
    // one key per refused new visitor. Those are not cookies anyone got: a timed-out write has
    // an unknown outcome, and a new visitor's save sent on a live connection to a frozen or
    // sleeping Redis sits in its socket buffer and is applied when it runs again. Such a key is
    // an orphan at version 1 (no client holds its id) and expires with the TTL.
    let keys = cli(redis.port, &["--scan", "--pattern", "tether:*"]);
    for id in ids {
        assert!(keys.contains(&format!("tether:{{{id}}}")), "{id}: {keys:?}");
    }
    let orphans: Vec<&String> = keys
        .iter()
        .filter(|k| !ids.iter().any(|id| **k == format!("tether:{{{id}}}")))
        .collect();
    assert!(orphans.len() <= refused_new, "{orphans:?}");
    for key in &orphans {
        assert_eq!(cli(redis.port, &["HGET", key, "v"]), ["1"], "{key}");
    }
    assert_eq!(integer(&redis.command("DBSIZE")), keys.len() as i64);
    eprintln!("{} orphan key(s) from refused new visitors", orphans.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_gives_bounded_503s_and_service_resumes_on_sigcont() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), &[]);
    let (_member, addr) = start_member(&redis).await;
    let (mut clients, ids) = write_sessions(addr, SESSIONS).await;
    assert_eq!(integer(&redis.command("DBSIZE")), SESSIONS as i64);
    let before = stats(addr).await;

    let frozen = Frozen::freeze(redis.pid());
    assert!(
        !pings_within(redis.port, Duration::from_millis(100)),
        "a stopped redis-server answered"
    );
    let phase = Instant::now();
    // One request at a time: each session, then a request without a session (it would write a
    // new one).
    let mut slowest = Duration::ZERO;
    for (i, c) in clients.iter_mut().enumerate() {
        let cookie = c.cookie.clone();
        let started = Instant::now();
        let r = c.get(addr, "/count").await;
        let took = started.elapsed();
        assert_refused(&format!("session {i}"), &r, took);
        assert_eq!(c.cookie, cookie);
        slowest = slowest.max(took);
    }
    let started = Instant::now();
    let r = get(addr, "/count", None).await.unwrap();
    assert_refused("no session", &r, started.elapsed());
    // A burst: every session and three new visitors at once; none waits behind another
    // beyond the bound.
    let burst: Vec<_> = clients
        .iter()
        .map(|c| c.cookie.clone())
        .chain([None, None, None])
        .map(|cookie| {
            tokio::spawn(async move {
                let started = Instant::now();
                let r = get(addr, "/count", cookie.as_deref()).await;
                (r, started.elapsed())
            })
        })
        .collect();
    for (i, task) in burst.into_iter().enumerate() {
        let (r, took) = task.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("burst {i}: {e}"));
        assert_refused(&format!("burst {i}"), &r, took);
        slowest = slowest.max(took);
    }
    // Redis stayed frozen the whole time: these were real timeouts.
    assert_eq!(process_state(redis.pid()), Some('T'));
    let after = stats(addr).await;
    let refused = after["unavailable"].as_u64().unwrap() - before["unavailable"].as_u64().unwrap();
    assert!(refused >= (2 * SESSIONS + 4) as u64, "{after}");
    assert!(
        after["retries"].as_u64().unwrap() > before["retries"].as_u64().unwrap(),
        "the store retried: {after}"
    );
    eprintln!(
        "frozen: {} requests refused in {:?}, slowest {slowest:?} (bound {:?})",
        2 * SESSIONS + 4,
        phase.elapsed(),
        request_bound()
    );

    frozen.thaw();
    assert_resumed(addr, &mut clients, &ids, &redis, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_redis_gives_bounded_503s_and_service_resumes_after_the_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), &["--enable-debug-command", "yes"]);
    assert!(
        redis.command("DEBUG SLEEP 0").starts_with("+OK"),
        "DEBUG is enabled"
    );
    let (_member, addr) = start_member(&redis).await;
    let (mut clients, ids) = write_sessions(addr, 3).await;

    // Busy for longer than a request may take: the requests below start within moments of the
    // sleep and must end within the bound, so Redis is still asleep when they are refused.
    let sleep = request_bound() + Duration::from_secs(1);
    let mut sleeper =
        TcpStream::connect_timeout(&([127, 0, 0, 1], redis.port).into(), Duration::from_secs(1))
            .unwrap();
    let slept_at = Instant::now();
    sleeper
        .write_all(format!("DEBUG SLEEP {:.3}\r\n", sleep.as_secs_f64()).as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while pings_within(redis.port, Duration::from_millis(100)) {
        assert!(Instant::now() < deadline, "DEBUG SLEEP did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let requests: Vec<_> = [clients[0].cookie.clone(), None]
        .into_iter()
        .map(|cookie| {
            tokio::spawn(async move {
                let started = Instant::now();
                let r = get(addr, "/count", cookie.as_deref()).await;
                (r, started.elapsed())
            })
        })
        .collect();
    for (i, task) in requests.into_iter().enumerate() {
        let (r, took) = task.await.unwrap();
        assert_refused(&format!("request {i}"), &r.unwrap(), took);
        eprintln!("sleeping: request {i} refused in {took:?}");
    }
    assert!(
        slept_at.elapsed() < sleep,
        "the refusals came while Redis slept"
    );

    // The sleep ends (bounded wait for its reply), and the member resumes by itself.
    sleeper
        .set_read_timeout(Some(sleep + Duration::from_secs(2)))
        .unwrap();
    let mut reply = [0u8; 8];
    let n = sleeper.read(&mut reply).unwrap();
    assert!(reply[..n].starts_with(b"+OK"), "{:?}", &reply[..n]);
    assert_resumed(addr, &mut clients, &ids, &redis, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_redis_store_counts_fails_over_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), &[]);
    let listen = tether::demo::free_port().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "demo",
            "--store",
            &redis.url(),
            "--listen",
            &listen.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let mut demo = KillOnDrop(demo);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // `member <clone> pid <pid> addr <ip:port>` for each member, then the `proxy …` line.
    let mut members: Vec<(String, u32)> = Vec::new();
    let proxy_line = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("demo output");
        if line.starts_with("proxy ") {
            break line;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 6, "{line}");
        assert_eq!(
            (parts[0], parts[2], parts[4]),
            ("member", "pid", "addr"),
            "{line}"
        );
        parts[5].parse::<SocketAddr>().unwrap();
        members.push((parts[1].to_owned(), parts[3].parse().unwrap()));
        assert!(members.len() <= 3, "more members than the default 3");
    };
    assert_eq!(members.len(), 3, "{proxy_line}");
    assert!(proxy_line.contains(&redis.url()), "{proxy_line}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match get(listen, "/count", None).await {
            Ok(r) if r.status == 200 => break r,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("proxy never answered: {other:?}"),
        }
    };
    assert_eq!(first.count(), 1, "{}", first.body);
    let id = session_of(&first);
    let mut client = Client {
        cookie: first.session_cookie(),
    };
    assert!(client.cookie.is_some(), "{:?}", first.set_cookie);
    let second = client.get(listen, "/count").await;
    assert_eq!((second.status, second.count()), (200, 2), "{}", second.body);
    assert_eq!(session_of(&second), id);

    // kill -9 the member that answered: the next count comes from another member, from Redis.
    let serving = second.member();
    let (_, pid) = members
        .iter()
        .find(|(clone, _)| *clone == serving)
        .unwrap_or_else(|| panic!("{serving} is not a demo member"));
    assert!(redis_support::send_signal(*pid, "KILL"));
    let third = client.get(listen, "/count").await;
    assert_eq!((third.status, third.count()), (200, 3), "{}", third.body);
    assert_eq!(session_of(&third), id);
    assert_ne!(third.member(), serving);

    // The session lives in Redis: one key, `<prefix>{<id>}`, holding the count.
    let key = format!("tether:{{{id}}}");
    assert_eq!(
        cli(redis.port, &["--scan", "--pattern", "tether:*"]),
        std::slice::from_ref(&key)
    );
    assert_eq!(cli(redis.port, &["HGET", &key, "@count"]), ["3"]);

    // SIGTERM to the demo: exit 0, and no member process is left.
    assert!(redis_support::send_signal(demo.0.id(), "TERM"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (clone, pid) in &members {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(*pid) {
            assert!(
                Instant::now() < deadline,
                "member {clone} (pid {pid}) outlived the demo"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
