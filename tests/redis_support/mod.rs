//! Harness for the Redis tests: real `redis-server` processes on free loopback ports, each in
//! its own directory, stopped by PID (SIGKILL) when dropped. No mock and no skip: without
//! `redis-server` on PATH the test fails and says how to install it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `name` on PATH, or a failure that says how to get it.
pub fn require(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: run scripts/test.sh, which installs the Debian packages \
                 redis-server and redis-tools (apt-get install -y redis-server redis-tools)"
            )
        })
}

/// A free loopback port, chosen by the OS now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Persistence for a server that must keep its data across a `kill -9`.
pub const DURABLE: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port with its data in `dir` (created), plus `extra` arguments,
    /// and waits (bounded) until it answers PING.
    pub fn start(dir: &Path, extra: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), dir, extra)
    }

    pub fn start_on(port: u16, dir: &Path, extra: &[&str]) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap();
        let mut server = RedisServer {
            port,
            dir: dir.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = require("redis-server");
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            &self.dir.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if !self.extra.iter().any(|a| a == "--appendonly") {
            args.extend(["--appendonly".into(), "no".into()]);
        }
        args.extend(self.extra.iter().cloned());
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_ping(self.port, Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `kill -9` by PID and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port, with the same directory and arguments.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// One command over a fresh connection (inline protocol), bounded; the raw reply.
    pub fn command(&self, line: &str) -> String {
        command(self.port, line)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends one inline command to 127.0.0.1:`port` and returns the reply text (bounded: 2 s).
pub fn command(port: u16, line: &str) -> String {
    let try_once = || -> std::io::Result<String> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{line}\r\nQUIT\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim_end().trim_end_matches("+OK").to_owned())
    };
    try_once().unwrap_or_else(|e| format!("-ERR {e}"))
}

/// Waits until 127.0.0.1:`port` answers PING, at most `limit`.
pub fn wait_ping(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !command(port, "PING").starts_with("+PONG") {
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not answer PING within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The integer a `:<n>` reply holds.
pub fn integer(reply: &str) -> i64 {
    reply
        .strip_prefix(':')
        .and_then(|n| n.lines().next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {reply:?}"))
}

// ---- For tests/redis_modes.rs: servers that need AUTH or speak TLS only, and sentinels. ----

/// A `redis-server` started with exactly `args` (nothing added), logging to `log`: for the
/// servers [`RedisServer`]'s plain `PING` cannot probe (AUTH required, TLS only) and for
/// sentinels. Stopped by PID (SIGKILL) when dropped.
pub struct RedisProcess {
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts `redis-server args…`; `port` is the port it was told to listen on. Does not wait:
    /// see [`RedisProcess::wait_until`].
    pub fn spawn(port: u16, args: &[String], log: &Path) -> RedisProcess {
        let child = Command::new(require("redis-server"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        RedisProcess {
            port,
            log: log.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Polls `ready` every 50 ms until it holds, at most `limit`; fails with the end of the
    /// server's log if it does not (or if the process exited).
    pub fn wait_until(&mut self, what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if ready() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server on port {} exited ({status}) before {what}; its log ends:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?} (port {}); the log ends:\n{}",
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 20 lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `kill -9` by PID and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().unwrap();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The arguments [`RedisServer`] uses (loopback, no persistence, `dir`), with a log file, for a
/// plain-port server started through [`RedisProcess`].
pub fn base_args(port: u16, dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    strings(&[
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
        "--logfile",
        &dir.join("redis.log").display().to_string(),
    ])
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// One inline command after `AUTH user password` over a fresh connection, bounded (2 s); the
/// reply to `line` (the AUTH reply is dropped when it is `+OK`).
pub fn command_as(port: u16, user: &str, password: &str, line: &str) -> String {
    let reply = command(port, &format!("AUTH {user} {password}\r\n{line}"));
    match reply.strip_prefix("+OK\r\n") {
        Some(rest) => rest.to_owned(),
        None => reply,
    }
}

/// One inline command over a fresh connection, reading exactly one RESP reply (bounded: 2 s),
/// without the `QUIT` [`command`] relies on: a sentinel does not know `QUIT`.
pub fn ask(port: u16, line: &str) -> String {
    let try_once = || -> std::io::Result<String> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
        let deadline = Instant::now() + Duration::from_secs(2);
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while resp_end(&buf, 0).is_none() {
            if Instant::now() > deadline {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
    };
    try_once().unwrap_or_else(|e| format!("-ERR {e}"))
}

/// Where the RESP2 reply that starts at `at` ends, if `buf` holds all of it.
fn resp_end(buf: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let after = line_end + 2;
    let n = || -> Option<i64> {
        std::str::from_utf8(&buf[at + 1..line_end])
            .ok()?
            .parse()
            .ok()
    };
    match buf[at] {
        b'+' | b'-' | b':' => Some(after),
        b'$' => match n()? {
            len if len < 0 => Some(after),
            len => {
                let end = after + usize::try_from(len).ok()? + 2;
                (buf.len() >= end).then_some(end)
            }
        },
        b'*' => {
            let mut end = after;
            for _ in 0..n()?.max(0) {
                end = resp_end(buf, end)?;
            }
            Some(end)
        }
        _ => None,
    }
}

/// Runs `cmd` with stdout captured, killing it (by its PID) if it has not exited within
/// `limit`; its stdout, or `None` on a timeout or a failure to start.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Option<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                child.kill().ok();
                child.wait().ok();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `redis-cli --tls` (trusting `ca`) on 127.0.0.1:`port`, bounded (3 s): its output lines
/// (one value a line), or empty on a failure.
pub fn tls_cli(port: u16, ca: &Path, args: &[&str]) -> Vec<String> {
    let out = run_bounded(
        Command::new(require("redis-cli"))
            .args(["--tls", "--cacert"])
            .arg(ca)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        Duration::from_secs(3),
    );
    out.unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// The string values of a RESP reply (bulk and simple strings, integers as text), in order:
/// enough for the flat key/value arrays `SENTINEL` answers.
pub fn resp_values(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = reply.split("\r\n");
    while let Some(line) = lines.next() {
        match line.as_bytes().first() {
            Some(b'$') if line != "$-1" => out.push(lines.next().unwrap_or("").to_owned()),
            Some(b'+' | b':' | b'-') => out.push(line[1..].to_owned()),
            _ => {}
        }
    }
    out
}

/// In a flat `[key, value, key, value…]` list, the value of `key`.
pub fn field<'a>(values: &'a [String], key: &str) -> Option<&'a str> {
    values
        .chunks(2)
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

/// A sentinel (`redis-server sentinel.conf --sentinel`) on `port`, its config in `dir` (the
/// sentinel rewrites it), monitoring `mymaster` at 127.0.0.1:`master_port` with quorum 1,
/// down-after 1 s, failover timeout 5 s; `extra` lines are appended (TLS settings). Does not
/// wait.
pub fn spawn_sentinel(port: u16, dir: &Path, master_port: u16, extra: &str) -> RedisProcess {
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join("sentinel.log");
    let conf = dir.join("sentinel.conf");
    let port_line = if extra.contains("tls-port") {
        "port 0".to_owned()
    } else {
        format!("port {port}")
    };
    std::fs::write(
        &conf,
        format!(
            "{port_line}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n{extra}\n\
             sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 5000\n\
             sentinel parallel-syncs mymaster 1\n",
            dir = dir.display(),
            log = log.display(),
        ),
    )
    .unwrap();
    RedisProcess::spawn(
        port,
        &[conf.display().to_string(), "--sentinel".into()],
        &log,
    )
}

/// A certificate authority made at test time (rcgen), and server certificates it signs.
pub struct TestCa {
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            cert_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/<name>.pem`; its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }

    /// A server certificate for 127.0.0.1 signed by this CA, written to `dir/<name>.crt` and
    /// `dir/<name>.key`; their paths.
    pub fn server_cert(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (crt, key_path)
    }
}

/// The TLS settings of a server (or sentinel) that presents `cert`/`key`, trusts `ca` (for its
/// own outgoing links: replication, a sentinel's monitoring) and asks clients for no
/// certificate, as config-file lines.
pub fn tls_lines(port: u16, cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
         tls-auth-clients no\ntls-replication yes\n",
        cert.display(),
        key.display(),
        ca.display()
    )
}

/// The same as command-line arguments, for a TLS-only server (`--port 0`) in `dir`.
pub fn tls_args(port: u16, dir: &Path, cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    let mut args = base_args(0, dir);
    for line in tls_lines(port, cert, key, ca).lines() {
        let (k, v) = line.split_once(' ').unwrap();
        args.extend([format!("--{k}"), v.to_owned()]);
    }
    args
}

// ---- For tests/redis_slow.rs: a frozen (SIGSTOP) or sleeping server, and `redis-cli`. ----

/// `kill -<signal> <pid>` (by PID, through the `kill` command); `true` when it was delivered.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    assert!(pid > 0, "no PID to signal");
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The state letter of process `pid` from `/proc/<pid>/stat` (`T` when stopped), if it exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S …": the state follows the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A process frozen with SIGSTOP: `kill -CONT` by PID when thawed or dropped, so nothing stays
/// frozen when a test fails half-way.
pub struct Frozen {
    pid: u32,
    thawed: bool,
}

impl Frozen {
    /// `kill -STOP pid`, and waits (bounded: 2 s) until the kernel reports it stopped.
    pub fn freeze(pid: u32) -> Frozen {
        let frozen = Frozen { pid, thawed: false };
        assert!(send_signal(pid, "STOP"), "kill -STOP {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(2);
        while process_state(pid) != Some('T') {
            assert!(Instant::now() < deadline, "process {pid} did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        frozen
    }

    /// `kill -CONT pid` now.
    pub fn thaw(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        if !self.thawed {
            self.thawed = true;
            send_signal(self.pid, "CONT");
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.cont();
    }
}

/// Whether 127.0.0.1:`port` answers `PING` within `limit` over a fresh connection (`false`
/// for a frozen or sleeping server, whose kernel still accepts the connection).
pub fn pings_within(port: u16, limit: Duration) -> bool {
    let try_once = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), limit)?;
        s.set_read_timeout(Some(limit))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"+PONG"))
    };
    try_once().unwrap_or(false)
}

/// `redis-cli -h 127.0.0.1 -p port args…`, bounded (3 s): its output lines, or empty on a
/// failure.
pub fn cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = run_bounded(
        Command::new(require("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        Duration::from_secs(3),
    );
    out.unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Saves `loaded` as version `v + 1` with `count` set, expecting version `v` (`None` for a new
/// session, `loaded.version == 0`).
pub async fn write_count(
    store: &tether::session::redis::RedisStore,
    loaded: &tether::session::Session,
    count: &str,
) -> Result<tether::session::Session, tether::session::StoreError> {
    let mut changes = tether::session::Changes::default();
    changes.set.insert(
        "count".into(),
        bytes::Bytes::copy_from_slice(count.as_bytes()),
    );
    let mut next = loaded.clone();
    next.version += 1;
    next.last_access_ms = tether::session::now_ms();
    changes.apply(&mut next.attributes);
    let expected = (loaded.version > 0).then_some(loaded.version);
    tether::session::SessionStore::save(store, &next, expected, &changes)
        .await
        .map(|()| next)
}
