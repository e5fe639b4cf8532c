//! The Redis store's connection modes against real servers: AUTH with an ACL user and password
//! (URL form, `username`/`password` keys, `password_file`), TLS (`rediss://`) trusting a private
//! CA (`ca_file`) made at test time, and Sentinel (a master, two replicas and a sentinel; the
//! master is killed by PID and the store follows the sentinel to the promoted replica by
//! itself). Failures — a wrong password, a server certificate from another CA — end as
//! `Unavailable` (the layer's 503) within a bound, with a log line that names the cause and
//! never the password.

mod redis_support;
mod session_support;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_support::*;
use session_support::{wait_listening, Client, InProcess};
use tether::member::MemberConfig;
use tether::session::redis::{RedisConfig, RedisStore};
use tether::session::{Session, SessionStore, StoreError};

const USER: &str = "tether";
const PASSWORD: &str = "s3cret-pass";
const WRONG: &str = "wr0ng-Pa55word";

/// A failing operation must end within this (attempts × (connect or reply timeout) + pauses is
/// well under a second with the timeouts [`member_toml`] sets): far below a hang.
const FAIL_BOUND: Duration = Duration::from_secs(3);

/// The member config around a `[redis]` table, as an operator writes it; short timeouts
/// unless the table sets them.
fn member_toml(listen: &str, table: &str) -> String {
    let mut table = table.to_owned();
    for (key, value) in [
        ("connect_timeout", "\"500ms\""),
        ("response_timeout", "\"500ms\""),
        ("retries", "1"),
    ] {
        if !table.contains(key) {
            table.push_str(&format!("\n{key} = {value}"));
        }
    }
    format!(
        "[member]\nclone_id = \"c1\"\nlisten = \"{listen}\"\n[session]\nstore = \"redis\"\n\
         [redis]\n{table}\n"
    )
}

/// The validated `[redis]` table.
fn redis_config(table: &str) -> RedisConfig {
    MemberConfig::parse(&member_toml("127.0.0.1:1", table))
        .unwrap_or_else(|e| panic!("{table}: {e}"))
        .redis
        .unwrap()
}

fn store(table: &str) -> RedisStore {
    RedisStore::new("c1", redis_config(table)).unwrap()
}

/// A 32-character session id made of `tag` and `n`.
fn session_id(tag: &str, n: usize) -> String {
    format!("{tag:a<24}{n:08}")
}

fn count_of(s: &Session) -> String {
    String::from_utf8_lossy(&s.attributes["count"]).into_owned()
}

/// Create, load, compare-and-set update, a stale write refused, load again.
async fn round_trip(store: &RedisStore, id: &str) {
    let fresh = Session::new(id.to_owned(), "c1", Duration::from_secs(60));
    write_count(store, &fresh, "1").await.unwrap();
    let loaded = store.load(id, &[]).await.unwrap().expect("just saved");
    assert_eq!((loaded.version, count_of(&loaded).as_str()), (1, "1"));
    write_count(store, &loaded, "2").await.unwrap();
    assert!(
        matches!(
            write_count(store, &loaded, "stale").await,
            Err(StoreError::Conflict { found: Some(2), .. })
        ),
        "a write from version 1 after version 2 must conflict"
    );
    let again = store.load(id, &[]).await.unwrap().unwrap();
    assert_eq!((again.version, count_of(&again).as_str()), (2, "2"));
}

/// One load and one save on a store that cannot reach its server: both `Unavailable`, each
/// within [`FAIL_BOUND`], no panic; the error text holds no password.
async fn assert_unavailable(store: &RedisStore, what: &str) {
    let id = session_id("unavailable", 0);
    let started = Instant::now();
    let load = store.load(&id, &[]).await;
    let took = started.elapsed();
    assert!(
        matches!(load, Err(StoreError::Unavailable(_))),
        "{what}: load gave {load:?}"
    );
    assert!(took < FAIL_BOUND, "{what}: load took {took:?}");
    let started = Instant::now();
    let save = write_count(store, &Session::new(id, "c1", Duration::from_secs(60)), "1").await;
    let took = started.elapsed();
    assert!(
        matches!(save, Err(StoreError::Unavailable(_))),
        "{what}: save gave {save:?}"
    );
    assert!(took < FAIL_BOUND, "{what}: save took {took:?}");
    for e in [load.unwrap_err(), save.unwrap_err()] {
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains(WRONG) && !text.contains(PASSWORD),
            "{what}: {text}"
        );
    }
    assert!(store.stats().unavailable.load(Ordering::Relaxed) >= 2);
}

/// What this thread's tracing events print, for asserting on log lines (the tests that use
/// it run on a current-thread runtime, so the store's events are on this thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// The `WARN` lines.
    fn warnings(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("WARN"))
            .map(str::to_owned)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// AUTH

#[tokio::test]
async fn auth_user_and_password_work_in_every_form_and_a_wrong_password_is_a_bounded_503() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // An ACL user limited to the store's keys; the default user is off, so nothing works
    // without AUTH.
    let mut args = base_args(port, dir.path());
    args.extend(strings(&[
        "--user",
        USER,
        "on",
        &format!(">{PASSWORD}"),
        "~tether:*",
        "+@all",
        "&*",
        "--user",
        "default",
        "off",
    ]));
    let mut server = RedisProcess::spawn(port, &args, &dir.path().join("redis.log"));
    server.wait_until("PING as the ACL user", Duration::from_secs(10), || {
        command_as(port, USER, PASSWORD, "PING").starts_with("+PONG")
    });
    let anonymous = command(port, "PING");
    assert!(
        anonymous.starts_with("-NOAUTH"),
        "the server must refuse a client that did not authenticate: {anonymous:?}"
    );

    // The three ways to give user and password; the keys override what the URL says.
    let password_file = dir.path().join("redis.password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let forms = [
        (
            "URL",
            format!("url = \"redis://{USER}:{PASSWORD}@127.0.0.1:{port}\""),
        ),
        (
            "username/password keys",
            format!("url = \"redis://127.0.0.1:{port}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\""),
        ),
        (
            "password_file, overriding the URL's wrong user and password",
            format!(
                "url = \"redis://nobody:{WRONG}@127.0.0.1:{port}\"\nusername = \"{USER}\"\n\
                 password_file = \"{}\"",
                password_file.display()
            ),
        ),
    ];
    for (i, (what, table)) in forms.iter().enumerate() {
        let store = store(table);
        round_trip(&store, &session_id("auth", i)).await;
        eprintln!("AUTH by {what}: round trip ok");
    }
    assert_eq!(
        integer(&command_as(port, USER, PASSWORD, "DBSIZE")),
        forms.len() as i64,
        "one key per session, written as the ACL user"
    );

    // A wrong password, in the URL or in the keys: Unavailable, bounded, nothing leaked.
    let wrong = [
        (
            "wrong password in the URL",
            format!("url = \"redis://{USER}:{WRONG}@127.0.0.1:{port}\""),
        ),
        (
            "wrong password key",
            format!("url = \"redis://127.0.0.1:{port}\"\nusername = \"{USER}\"\npassword = \"{WRONG}\""),
        ),
        (
            "right password, unknown user",
            format!("url = \"redis://127.0.0.1:{port}\"\nusername = \"nobody\"\npassword = \"{PASSWORD}\""),
        ),
    ];
    for (what, table) in &wrong {
        assert_unavailable(&store(table), what).await;
    }
    // A clear log line for each store (one a second at most per store), naming the cause.
    let warnings = logs.warnings();
    let auth_warnings: Vec<&String> = warnings
        .iter()
        .filter(|l| {
            l.contains("redis session store unavailable") && l.contains("AuthenticationFailed")
        })
        .collect();
    // (A store logs one line a second at most: its save right after the load is usually
    // held back.)
    assert!(
        auth_warnings.len() >= wrong.len(),
        "a warning per store naming the authentication failure; the warnings: {warnings:#?}"
    );
    let all = logs.text();
    assert!(
        !all.contains(WRONG) && !all.contains(PASSWORD),
        "a password reached the log:\n{all}"
    );
    eprintln!("the log line: {}", auth_warnings[0]);

    // Through a member: the wrong password answers 503 and makes no session; the right one
    // serves. (The member runs on its own runtime.)
    for (password, expected) in [(WRONG, 503), (PASSWORD, 200)] {
        let app = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = app.local_addr().unwrap();
        let config = MemberConfig::parse(&member_toml(
            &addr.to_string(),
            &format!("url = \"redis://127.0.0.1:{port}\"\nusername = \"{USER}\"\npassword = \"{password}\""),
        ))
        .unwrap();
        let _member = InProcess::start(config, app, None);
        wait_listening(addr).await;
        let mut client = Client::default();
        for n in 1..=2u64 {
            let started = Instant::now();
            let r = client.get(addr, "/count").await;
            assert_eq!(r.status, expected, "{}", r.body);
            assert!(started.elapsed() < FAIL_BOUND, "{:?}", started.elapsed());
            if expected == 503 {
                assert!(r.body.contains("session store"), "{}", r.body);
                assert!(
                    r.set_cookie.is_empty(),
                    "no new session: {:?}",
                    r.set_cookie
                );
                assert!(!r.body.contains(WRONG), "{}", r.body);
            } else {
                assert_eq!(r.count(), n, "{}", r.body);
            }
        }
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A TLS-only server (`--port 0`) presenting `cert`, ready when `redis-cli --tls` trusting
/// `ca` gets PONG.
fn start_tls_server(dir: &Path, cert: &Path, key: &Path, ca: &Path) -> RedisProcess {
    let port = free_port();
    let mut server = RedisProcess::spawn(
        port,
        &tls_args(port, dir, cert, key, ca),
        &dir.join("redis.log"),
    );
    server.wait_until("PING over TLS", Duration::from_secs(10), || {
        tls_cli(port, ca, &["PING"]) == ["PONG"]
    });
    server
}

#[tokio::test]
async fn rediss_trusts_the_configured_ca_and_refuses_a_server_signed_by_another() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tether test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let other = TestCa::new("some other CA");
    let other_file = other.write(dir.path(), "other-ca");
    let (crt, key) = ca.server_cert(dir.path(), "server");
    let (rogue_crt, rogue_key) = other.server_cert(dir.path(), "rogue");
    let good = start_tls_server(&dir.path().join("good"), &crt, &key, &ca_file);
    let rogue = start_tls_server(
        &dir.path().join("rogue"),
        &rogue_crt,
        &rogue_key,
        &other_file,
    );
    // TLS only: the port does not speak plain RESP.
    assert!(!command(good.port, "PING").starts_with("+PONG"));

    // The configured CA: a round trip, and the data is on that server.
    let table = |port: u16, ca: &Path| {
        format!(
            "url = \"rediss://127.0.0.1:{port}\"\nca_file = \"{}\"",
            ca.display()
        )
    };
    let trusted = store(&table(good.port, &ca_file));
    round_trip(&trusted, &session_id("tls", 1)).await;
    assert_eq!(tls_cli(good.port, &ca_file, &["DBSIZE"]), ["1"]);

    // A server whose certificate another CA signed: refused (no data goes there).
    assert_unavailable(
        &store(&table(rogue.port, &ca_file)),
        "server cert from another CA",
    )
    .await;
    assert_eq!(tls_cli(rogue.port, &other_file, &["DBSIZE"]), ["0"]);
    let refused: Vec<String> = logs
        .warnings()
        .into_iter()
        .filter(|l| l.contains("redis session store unavailable"))
        .collect();
    assert!(!refused.is_empty(), "no warning logged");
    assert!(
        refused[0].contains("certificate") && refused[0].contains("UnknownIssuer"),
        "the log line names the certificate problem: {}",
        refused[0]
    );
    eprintln!("the log line: {}", refused[0]);

    // Without ca_file the system roots are used, and they do not hold the test CA: refused.
    assert_unavailable(
        &store(&format!("url = \"rediss://127.0.0.1:{}\"", good.port)),
        "no ca_file (system roots)",
    )
    .await;
    // A plain redis:// client on the TLS port: refused too, within the bound (no hang).
    assert_unavailable(
        &store(&format!("url = \"redis://127.0.0.1:{}\"", good.port)),
        "plain client on the TLS port",
    )
    .await;

    // The trusted store still works after all that.
    round_trip(&trusted, &session_id("tls", 2)).await;
}

// ---------------------------------------------------------------------------------------------
// Sentinel

fn role(port: u16) -> String {
    command(port, "INFO replication")
        .lines()
        .find_map(|l| l.strip_prefix("role:"))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The master's port as the sentinel on `sentinel` reports it now.
fn sentinel_master_port(sentinel: u16) -> Option<u16> {
    let values = resp_values(&ask(sentinel, "SENTINEL get-master-addr-by-name mymaster"));
    values.get(1)?.parse().ok()
}

/// Saves with a bounded retry while the store answers Unavailable (a failover going on). A
/// 503 on a save means "maybe applied": a Conflict that finds this very version, with these
/// attributes, is this write having landed.
async fn save_retrying(store: &RedisStore, loaded: &Session, count: &str) -> Session {
    for _ in 0..100 {
        match write_count(store, loaded, count).await {
            Ok(next) => return next,
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(StoreError::Conflict { found, .. }) if found == Some(loaded.version + 1) => {
                let stored = store.load(&loaded.id, &[]).await.unwrap().unwrap();
                assert_eq!(count_of(&stored), count, "overwritten by someone else");
                return stored;
            }
            Err(e) => panic!("save {}: {e}", loaded.id),
        }
    }
    panic!("save {} never succeeded", loaded.id);
}

const SENTINEL_SESSIONS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_the_store_follows_the_promoted_replica_and_loses_no_acknowledged_write()
{
    let dir = tempfile::tempdir().unwrap();
    let mut master = RedisServer::start(&dir.path().join("master"), &[]);
    let mport = master.port.to_string();
    let replicas: Vec<RedisServer> = (1..=2)
        .map(|i| {
            RedisServer::start(
                &dir.path().join(format!("replica{i}")),
                &["--replicaof", "127.0.0.1", &mport],
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !command(master.port, "INFO replication").contains("connected_slaves:2")
        || replicas
            .iter()
            .any(|r| !command(r.port, "INFO replication").contains("master_link_status:up"))
    {
        assert!(Instant::now() < deadline, "replicas never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sport = free_port();
    let mut sentinel = spawn_sentinel(sport, &dir.path().join("sentinel"), master.port, "");
    sentinel.wait_until(
        "the sentinel knows the master and both replicas",
        Duration::from_secs(15),
        || {
            let master_ok = field(
                &resp_values(&ask(sport, "SENTINEL master mymaster")),
                "flags",
            ) == Some("master");
            let replicas = resp_values(&ask(sport, "SENTINEL replicas mymaster"));
            let linked = replicas
                .chunks(2)
                .filter(|kv| kv[0] == "master-link-status" && kv.get(1).is_some_and(|v| v == "ok"))
                .count();
            master_ok && linked == 2
        },
    );

    // The store knows only the sentinels: a dead one first (it must go on to the next), then
    // the live one. A write is acknowledged only once a replica holds it (WAIT 1).
    let dead_sentinel = free_port();
    let store = store(&format!(
        "sentinels = [\"redis://127.0.0.1:{dead_sentinel}\", \"redis://127.0.0.1:{sport}\"]\n\
         sentinel_master = \"mymaster\"\nwait_replicas = 1\nwait_timeout = \"1s\"\n\
         connect_timeout = \"500ms\"\nresponse_timeout = \"500ms\"\nretries = 2"
    ));
    round_trip(&store, &session_id("sentinel-rt", 0)).await;
    let mut sessions = Vec::new();
    for i in 0..SENTINEL_SESSIONS {
        let fresh = Session::new(session_id("sentinel", i), "c1", Duration::from_secs(300));
        let v1 = write_count(&store, &fresh, "1").await.unwrap();
        // Acknowledged (Ok) = on the master and confirmed by WAIT on at least one replica.
        sessions.push(write_count(&store, &v1, "2").await.unwrap());
    }
    assert_eq!(
        integer(&master.command("DBSIZE")),
        SENTINEL_SESSIONS as i64 + 1
    );

    // Kill the master by PID right after the last acknowledged write.
    let killed_at = Instant::now();
    master.kill9();

    // The sentinel promotes a replica (bounded).
    let deadline = killed_at + Duration::from_secs(30);
    let new_master = loop {
        if let Some(p) = sentinel_master_port(sport).filter(|p| *p != master.port) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no failover within 30 s; the sentinel's log ends:\n{}",
            sentinel.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(replicas.iter().any(|r| r.port == new_master));
    assert_eq!(role(new_master), "master");
    eprintln!(
        "sentinel promoted 127.0.0.1:{new_master} {:?} after the kill",
        killed_at.elapsed()
    );

    // The same store instance resumes by itself: loads fail (Unavailable, never a wrong
    // answer) until it has found the new master, then every acknowledged write is there.
    let mut unavailable = 0u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match store.load(&sessions[0].id, &[]).await {
            Ok(found) => break found,
            Err(StoreError::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("load: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the store never reached the new master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "store resumed {:?} after the kill ({unavailable} loads answered Unavailable meanwhile)",
        killed_at.elapsed()
    );
    let first = first.expect("session 0 lost in the failover");
    assert_eq!((first.version, count_of(&first).as_str()), (2, "2"));
    for s in &sessions {
        let found = store
            .load(&s.id, &[])
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: acknowledged write lost", s.id));
        assert_eq!(
            (found.version, count_of(&found)),
            (2, "2".to_owned()),
            "{}",
            s.id
        );
    }
    assert_eq!(
        integer(&command(new_master, "DBSIZE")),
        SENTINEL_SESSIONS as i64 + 1
    );

    // Writes resume too, still with WAIT 1: once the sentinel has pointed the other replica
    // at the new master (until then WAIT finds no replica and the save answers Unavailable).
    for s in &sessions {
        let next = save_retrying(&store, s, "3").await;
        assert_eq!(next.version, 3);
    }
    let last = store.load(&sessions[SENTINEL_SESSIONS - 1].id, &[]).await;
    assert_eq!(last.unwrap().unwrap().version, 3);
    let other = replicas.iter().find(|r| r.port != new_master).unwrap();
    assert_eq!(
        command(other.port, "INFO replication")
            .lines()
            .find_map(|l| l.strip_prefix("master_port:"))
            .map(str::trim),
        Some(new_master.to_string().as_str()),
        "the sentinel re-pointed the other replica"
    );
    eprintln!("all done {:?} after the kill", killed_at.elapsed());
}

#[tokio::test]
async fn sentinel_and_master_over_tls_with_the_configured_ca() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tether test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let other_file = TestCa::new("some other CA").write(dir.path(), "other-ca");
    let (crt, key) = ca.server_cert(dir.path(), "server");
    let master = start_tls_server(&dir.path().join("master"), &crt, &key, &ca_file);
    // The sentinel: TLS only, and TLS to the master (tls-replication).
    let sport = free_port();
    let mut sentinel = spawn_sentinel(
        sport,
        &dir.path().join("sentinel"),
        master.port,
        &tls_lines(sport, &crt, &key, &ca_file),
    );
    sentinel.wait_until(
        "the TLS sentinel monitors the TLS master",
        Duration::from_secs(15),
        || {
            let values = tls_cli(sport, &ca_file, &["SENTINEL", "master", "mymaster"]);
            field(&values, "flags") == Some("master")
        },
    );
    let table = |ca: &Path| {
        format!(
            "sentinels = [\"rediss://127.0.0.1:{sport}\"]\nsentinel_master = \"mymaster\"\n\
             sentinel_master_tls = true\nca_file = \"{}\"",
            ca.display()
        )
    };
    round_trip(&store(&table(&ca_file)), &session_id("sentinel-tls", 0)).await;
    assert_eq!(tls_cli(master.port, &ca_file, &["DBSIZE"]), ["1"]);
    // Another CA: neither the sentinel nor the master is trusted.
    assert_unavailable(&store(&table(&other_file)), "sentinel with another CA").await;
    let warnings = logs.warnings();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("redis session store unavailable") && l.contains("certificate")),
        "{warnings:#?}"
    );
    eprintln!("the log line: {}", warnings[0]);
}
