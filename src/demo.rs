//! `tether demo`: the proxy (in this process) in front of N member child processes (this same
//! binary run as `tether member`), so a newcomer can `kill -9` a member and watch failover.
//!
//! Ports: the demo asks the OS for free loopback ports (bind to port 0, note the port, release
//! it) and writes them into the members' config files; the members bind them at once. The
//! children are stopped by PID when the demo gets SIGTERM/SIGINT or exits, and each child also
//! stops by itself when its standard input (a pipe from the demo) closes, so even `kill -9` of
//! the demo leaves no member behind.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub members: usize,
    /// `"memory"`, `"replicated"`, or a Redis URL (`redis://HOST:PORT`, `rediss://…`).
    pub store: String,
    /// `"sync"` or `"async"`.
    pub write_mode: String,
}

/// One planned member: clone id and its two addresses.
#[derive(Debug, Clone)]
pub struct PlannedMember {
    pub clone_id: String,
    pub app: SocketAddr,
    pub peer: SocketAddr,
}

/// A free loopback port, chosen by the OS now.
pub fn free_port() -> std::io::Result<SocketAddr> {
    StdListener::bind("127.0.0.1:0")?.local_addr()
}

/// `c1..cN` with free ports.
pub fn plan(n: usize) -> std::io::Result<Vec<PlannedMember>> {
    (1..=n)
        .map(|i| {
            Ok(PlannedMember {
                clone_id: format!("c{i}"),
                app: free_port()?,
                peer: free_port()?,
            })
        })
        .collect()
}

/// The member config text for `members[index]` (the schema of `conf/member.toml`).
pub fn member_config(
    members: &[PlannedMember],
    index: usize,
    store: &str,
    write_mode: &str,
    secret: &str,
    extra_replication: &str,
) -> String {
    let me = &members[index];
    // A Redis URL as the store (issue 4): `store = "redis"` and a [redis] table with that url.
    let redis_url = is_redis_url(store).then_some(store);
    let kind = if redis_url.is_some() { "redis" } else { store };
    let mut out = format!(
        "[member]\nclone_id = \"{}\"\nlisten = \"{}\"\n\n[session]\nstore = \"{kind}\"\n\n",
        me.clone_id, me.app
    );
    if let Some(url) = redis_url {
        let _ = write!(out, "[redis]\nurl = \"{url}\"\n");
    }
    if store == "replicated" {
        let _ = write!(
            out,
            "[replication]\nlisten = \"{}\"\nsecret = \"{secret}\"\nwrite_mode = \"{write_mode}\"\n{extra_replication}\n",
            me.peer
        );
        for (i, peer) in members.iter().enumerate() {
            if i != index {
                let _ = write!(
                    out,
                    "\n[[replication.peer]]\nclone_id = \"{}\"\naddress = \"{}\"\n",
                    peer.clone_id, peer.peer
                );
            }
        }
    }
    out
}

/// `true` for a `redis://` or `rediss://` URL (the demo's `--store redis://HOST:PORT`).
pub fn is_redis_url(store: &str) -> bool {
    store.starts_with("redis://") || store.starts_with("rediss://")
}

/// The proxy config text: one cluster `demo` with the members, every route to it.
pub fn proxy_config(listen: SocketAddr, members: &[PlannedMember]) -> String {
    let mut out = format!(
        "[proxy]\nlisten = [\"{listen}\"]\nshutdown_grace = \"2s\"\n\n[[route]]\ncluster = \"demo\"\n\n\
         [cluster.demo]\nretry_interval = \"2s\"\nmax_attempts = 3\n"
    );
    for m in members {
        let _ = write!(
            out,
            "\n[[cluster.demo.member]]\nname = \"{0}\"\nclone_id = \"{0}\"\naddress = \"{1}\"\nconnect_timeout = \"1s\"\nio_timeout = \"10s\"\n",
            m.clone_id, m.app
        );
    }
    out
}

/// Random hex for the demo's shared secret.
pub fn random_secret() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Member child processes, killed (by PID) and reaped when dropped.
pub struct Children {
    pub children: Vec<(String, Child)>,
    dir: Option<PathBuf>,
}

impl Drop for Children {
    fn drop(&mut self) {
        for (clone, child) in &mut self.children {
            if let Err(e) = child.kill() {
                tracing::debug!(%clone, error = %e, "member already gone");
            }
            if let Err(e) = child.wait() {
                tracing::debug!(%clone, error = %e, "cannot reap member");
            }
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot remove demo dir");
            }
        }
    }
}

/// Writes each member's config under `dir` and starts `tether member` for each.
pub fn spawn_members(
    exe: &std::path::Path,
    dir: PathBuf,
    configs: &[(String, String)],
) -> std::io::Result<Children> {
    std::fs::create_dir_all(&dir)?;
    let mut children = Children {
        children: Vec::new(),
        dir: Some(dir.clone()),
    };
    for (clone_id, text) in configs {
        let path = dir.join(format!("{clone_id}.toml"));
        std::fs::write(&path, text)?;
        let child = Command::new(exe)
            .arg("member")
            .arg("--config")
            .arg(&path)
            .arg("--exit-with-parent")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        children.children.push((clone_id.clone(), child));
    }
    Ok(children)
}

/// Waits until every address accepts a connection, at most `limit`.
pub fn wait_listening(addrs: &[SocketAddr], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    addrs.iter().all(|addr| loop {
        if std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    })
}

/// Waits until every member reports all its peers live and re-replication settled (read from
/// its `/_tether/stats`), at most `limit`.
pub fn wait_replication_ready(addrs: &[SocketAddr], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let peers = addrs.len().saturating_sub(1);
    addrs.iter().all(|addr| loop {
        if let Some(stats) = member_stats(*addr) {
            let live = stats["live_peers"].as_array().map_or(0, Vec::len);
            if live == peers && stats["settled"] == true {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    })
}

/// `GET /_tether/stats` from a member, blocking, bounded by one second.
fn member_stats(addr: SocketAddr) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /_tether/stats HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (_, body) = raw.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

pub fn run(opts: DemoOptions) -> ExitCode {
    crate::server::init_tracing();
    match run_inner(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(opts: &DemoOptions) -> Result<(), String> {
    if opts.members == 0 || opts.members > 64 {
        return Err("--members: between 1 and 64".into());
    }
    if !matches!(opts.store.as_str(), "memory" | "replicated") && !is_redis_url(&opts.store) {
        return Err("--store: memory, replicated or redis://HOST:PORT".into());
    }
    if !matches!(opts.write_mode.as_str(), "sync" | "async") {
        return Err("--write-mode: sync or async".into());
    }
    let listener = StdListener::bind(opts.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
    let members = plan(opts.members).map_err(|e| format!("cannot find free ports: {e}"))?;
    let secret = random_secret().map_err(|e| format!("no OS randomness: {e}"))?;
    let extra = if opts.write_mode == "async" {
        "write_interval = \"1s\"\n"
    } else {
        ""
    };
    let configs: Vec<(String, String)> = (0..members.len())
        .map(|i| {
            (
                members[i].clone_id.clone(),
                member_config(&members, i, &opts.store, &opts.write_mode, &secret, extra),
            )
        })
        .collect();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
    let children =
        spawn_members(&exe, dir, &configs).map_err(|e| format!("cannot start members: {e}"))?;
    for ((clone, child), m) in children.children.iter().zip(&members) {
        println!("member {clone} pid {} addr {}", child.id(), m.app);
    }
    let app_addrs: Vec<SocketAddr> = members.iter().map(|m| m.app).collect();
    if !wait_listening(&app_addrs, Duration::from_secs(10)) {
        return Err("members did not start listening within 10s".into());
    }
    if opts.store == "replicated" && !wait_replication_ready(&app_addrs, Duration::from_secs(10)) {
        eprintln!("warning: the members' peer links are not all up yet; sessions get their copies once they are");
    }
    let config = Config::parse(&proxy_config(opts.listen, &members))
        .map_err(|e| format!("demo proxy config: {e}"))?;
    println!(
        "proxy http://{} ({} members, store {}{}); open it in a browser or: curl -c jar -b jar http://{}/count",
        opts.listen,
        members.len(),
        opts.store,
        if opts.store == "replicated" { format!(", write mode {}", opts.write_mode) } else { String::new() },
        opts.listen
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let served = runtime.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        crate::server::serve(vec![listener], config, crate::signal::shutdown()).await
    });
    drop(children);
    served.map_err(|e| e.to_string())
}
