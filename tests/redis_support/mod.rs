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
