//! Harness for the session tests: a tiny HTTP/1.1 client (one request per connection, every
//! call bounded), members in-process (each on its own runtime, so "kill" drops every socket at
//! once like `kill -9`) or as real `tether member` processes, and the real proxy in-process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether::demo::{member_config, proxy_config, PlannedMember};
use tether::member::MemberConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SECRET: &str = "test-secret-0123456789";
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub set_cookie: Vec<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    /// The `JSESSIONID` value this reply sets, if any (empty when it deletes the cookie).
    pub fn session_cookie(&self) -> Option<String> {
        self.set_cookie.iter().find_map(|c| {
            let v = c.strip_prefix("JSESSIONID=")?;
            Some(v.split(';').next().unwrap_or("").to_owned())
        })
    }
    pub fn count(&self) -> u64 {
        self.json()["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no count: {}", self.body))
    }
    pub fn member(&self) -> String {
        self.json()["member"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// `GET path` with an optional `JSESSIONID` cookie value; `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> std::io::Result<Reply> {
    tokio::time::timeout(CALL_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await?;
        let cookie = cookie
            .map(|c| format!("Cookie: JSESSIONID={c}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{cookie}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        parse(&raw).ok_or_else(|| {
            std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
        })
    })
    .await
    .map_err(|_| std::io::Error::other("call timed out"))?
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut set_cookie = Vec::new();
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("set-cookie") {
            set_cookie.push(value.trim().to_owned());
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some(Reply {
        status,
        set_cookie,
        body,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A client session: keeps the cookie the way a browser would.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub cookie: Option<String>,
}

impl Client {
    pub async fn get(&mut self, addr: SocketAddr, path: &str) -> Reply {
        let r = get(addr, path, self.cookie.as_deref())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        if let Some(c) = r.session_cookie() {
            self.cookie = (!c.is_empty()).then_some(c);
        }
        r
    }
    /// The clone ids in the cookie, owner first.
    pub fn clones(&self) -> Vec<String> {
        self.cookie.as_deref().map_or_else(Vec::new, |c| {
            c.split(':').skip(1).map(str::to_owned).collect()
        })
    }
}

/// Loopback listeners on port 0 for `n` members (kept bound until a member takes them).
pub fn plan(n: usize) -> (Vec<PlannedMember>, Vec<(StdListener, StdListener)>) {
    let mut planned = Vec::new();
    let mut listeners = Vec::new();
    for i in 1..=n {
        let app = StdListener::bind("127.0.0.1:0").unwrap();
        let peer = StdListener::bind("127.0.0.1:0").unwrap();
        planned.push(PlannedMember {
            clone_id: format!("c{i}"),
            app: app.local_addr().unwrap(),
            peer: peer.local_addr().unwrap(),
        });
        listeners.push((app, peer));
    }
    (planned, listeners)
}

/// The member config for `members[i]`, replicated, with extra `[replication]` lines.
pub fn config(members: &[PlannedMember], i: usize, write_mode: &str, extra: &str) -> MemberConfig {
    let extra = format!("timeout = \"2s\"\n{extra}");
    MemberConfig::parse(&member_config(
        members,
        i,
        "replicated",
        write_mode,
        SECRET,
        &extra,
    ))
    .unwrap()
}

/// A member in this process on its own runtime; [`InProcess::kill`] drops it abruptly.
pub struct InProcess {
    pub clone_id: String,
    pub addr: SocketAddr,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    pub fn start(config: MemberConfig, app: StdListener, peer: Option<StdListener>) -> InProcess {
        let clone_id = config.clone_id.clone();
        let addr = app.local_addr().unwrap();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                app.set_nonblocking(true).unwrap();
                let app = tokio::net::TcpListener::from_std(app).unwrap();
                let peer = peer.map(|p| {
                    p.set_nonblocking(true).unwrap();
                    tokio::net::TcpListener::from_std(p).unwrap()
                });
                tether::member::serve(config, app, peer, std::future::pending())
                    .await
                    .unwrap();
            });
            // Blocks this thread (not the runtime's workers) until killed or dropped.
            killed.recv().ok();
            rt.shutdown_background();
        });
        InProcess {
            clone_id,
            addr,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Rebinds the same addresses (same clone id) after a kill.
    pub fn restart(config: MemberConfig, peer_addr: SocketAddr) -> InProcess {
        let app = bind_retry(config.listen);
        let peer = bind_retry(peer_addr);
        InProcess::start(config, app, Some(peer))
    }

    pub fn kill(&mut self) {
        self.kill.take();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bind_retry(addr: SocketAddr) -> StdListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match StdListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() > deadline => panic!("rebind {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Starts `n` replicated members in-process.
pub fn start_cluster(
    n: usize,
    write_mode: &str,
    extra: &str,
) -> (Vec<PlannedMember>, Vec<InProcess>) {
    let (planned, listeners) = plan(n);
    let members = listeners
        .into_iter()
        .enumerate()
        .map(|(i, (app, peer))| {
            InProcess::start(config(&planned, i, write_mode, extra), app, Some(peer))
        })
        .collect();
    (planned, members)
}

/// The real proxy in-process in front of `members`; stops when the returned sender drops.
pub async fn start_proxy(
    members: &[PlannedMember],
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let text =
        proxy_config(addr, members).replace("retry_interval = \"2s\"", "retry_interval = \"1s\"");
    let config = tether::config::Config::parse(&text).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tether::server::serve(vec![listener], config, async move {
            stopped.await.ok();
        })
        .await
        .unwrap();
    });
    (addr, stop)
}

// ---- The kill -9 scenario's rounds (tests/session_failover.rs, tests/redis_failover.rs) ----

/// One `/count` per session; asserts each counter is exactly where it should be and the
/// session id never changed.
pub async fn round(
    proxy: SocketAddr,
    clients: &mut [Client],
    expected: &mut [u64],
    ids: &mut [Option<String>],
) {
    for (i, client) in clients.iter_mut().enumerate() {
        let r = client.get(proxy, "/count").await;
        assert_eq!(r.status, 200, "session {i}: {}", r.body);
        expected[i] += 1;
        assert_eq!(
            r.count(),
            expected[i],
            "session {i}: lost or stale update ({})",
            r.body
        );
        let id = r.json()["session"].as_str().unwrap().to_owned();
        match &ids[i] {
            Some(old) => assert_eq!(old, &id, "session {i} was lost and recreated"),
            None => ids[i] = Some(id),
        }
    }
}

/// The clone that owns the most sessions (first in their cookies) and how many it owns.
pub fn top_owner(clients: &[Client], alive: &[&str]) -> (String, usize) {
    let mut owners: HashMap<String, usize> = HashMap::new();
    for c in clients {
        *owners.entry(c.clones()[0].clone()).or_default() += 1;
    }
    owners
        .into_iter()
        .filter(|(o, _)| alive.contains(&o.as_str()))
        .max_by_key(|(_, n)| *n)
        .unwrap()
}

/// The member's `/_tether/stats`.
pub async fn stats(addr: SocketAddr) -> serde_json::Value {
    get(addr, "/_tether/stats", None).await.unwrap().json()
}

/// Waits until every member in `addrs` sees `peers` live peers and has settled, at most 15 s.
pub async fn wait_settled(addrs: &[SocketAddr], peers: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut ok = true;
        for addr in addrs {
            let s = stats(*addr).await;
            ok &= s["live_peers"].as_array().map_or(0, Vec::len) == peers && s["settled"] == true;
        }
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster did not settle with {peers} live peers each"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real `tether member` process, killed with SIGKILL on drop.
pub struct Process {
    pub clone_id: String,
    pub addr: SocketAddr,
    pub child: Child,
    _dir: PathBuf,
}

impl Process {
    pub fn spawn(
        members: &[PlannedMember],
        i: usize,
        write_mode: &str,
        dir: &std::path::Path,
    ) -> Process {
        Process::spawn_store(members, i, "replicated", write_mode, dir)
    }

    /// [`Process::spawn`] with another store: `"memory"`, `"replicated"` or a Redis URL.
    pub fn spawn_store(
        members: &[PlannedMember],
        i: usize,
        store: &str,
        write_mode: &str,
        dir: &std::path::Path,
    ) -> Process {
        let text = member_config(members, i, store, write_mode, SECRET, "timeout = \"2s\"\n");
        let path = dir.join(format!("{}.toml", members[i].clone_id));
        std::fs::write(&path, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["member", "--config"])
            .arg(&path)
            .arg("--exit-with-parent")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Process {
            clone_id: members[i].clone_id.clone(),
            addr: members[i].app,
            child,
            _dir: path,
        }
    }

    /// `kill -9` by PID and reap.
    pub fn kill9(&mut self) {
        self.child.kill().ok();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `addr` accepts connections, at most 10 s.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scripted replication peer: it accepts the link a real [`ReplicatedStore`] dials to it,
/// answers heartbeats by itself, and hands every other request to the test, which answers it
/// when it chooses. That holds a store's write at any step of the peer protocol, so a test can
/// look at the store (as another member would) while the write is in flight.
///
/// [`ReplicatedStore`]: tether::session::replicated::ReplicatedStore
pub struct ScriptedPeer {
    pub clone_id: String,
    pub addr: SocketAddr,
    requests: tokio::sync::mpsc::UnboundedReceiver<(
        tether::session::replicated::frame::Frame,
        tokio::sync::oneshot::Sender<tether::session::replicated::frame::Frame>,
    )>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedPeer {
    /// Listens on a loopback port as `clone_id` with the shared [`SECRET`].
    pub async fn start(clone_id: &str) -> ScriptedPeer {
        use tether::session::replicated::frame::{
            read_frame, write_frame, Frame, PROTOCOL_VERSION,
        };
        use tether::session::replicated::handshake;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (to_test, requests) = tokio::sync::mpsc::unbounded_channel();
        let me = clone_id.to_owned();
        let task = tokio::spawn(async move {
            // One link at a time; a redial (after a dropped link) is served the same way.
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                if handshake::accept(&mut stream, SECRET.as_bytes(), &me, PROTOCOL_VERSION)
                    .await
                    .is_err()
                {
                    continue;
                }
                let (mut reader, mut writer) = stream.into_split();
                let (answers, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Frame>();
                let writing = tokio::spawn(async move {
                    while let Some(frame) = outgoing.recv().await {
                        if write_frame(&mut writer, &frame).await.is_err() {
                            return;
                        }
                    }
                });
                while let Ok(Some(frame)) = read_frame(&mut reader, 1 << 20).await {
                    if let Frame::Ping { req } = frame {
                        let _ = answers.send(Frame::Ok { req });
                        continue;
                    }
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    if to_test.send((frame, reply)).is_err() {
                        return;
                    }
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        if let Ok(frame) = answer.await {
                            let _ = answers.send(frame);
                        }
                    });
                }
                writing.abort();
            }
        });
        ScriptedPeer {
            clone_id: clone_id.to_owned(),
            addr,
            requests,
            task,
        }
    }

    /// The next request the store sent (heartbeats excepted), at most 5 s away, and where to
    /// answer it.
    pub async fn next(
        &mut self,
    ) -> (
        tether::session::replicated::frame::Frame,
        tokio::sync::oneshot::Sender<tether::session::replicated::frame::Frame>,
    ) {
        tokio::time::timeout(Duration::from_secs(5), self.requests.recv())
            .await
            .expect("the store sent no request within 5 s")
            .expect("scripted peer stopped")
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- `tether demo` run as a process (tests/demo.rs, tests/redis_slow.rs) ----

/// Kills the demo by PID if the test fails before its own SIGTERM (the members then stop by
/// themselves: their stdin pipe closes).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}
