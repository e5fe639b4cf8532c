//! Connections to one member: connect with a timeout, a keep-alive pool, and the
//! `max_connections` limit.
//!
//! The limit is a semaphore whose permit travels with the request until its response body is
//! finished; a connection goes back to the idle list *before* its permit is released, so the
//! number of open connections never exceeds the limit. The idle list is a `Vec` behind a mutex
//! of its own member: the critical section is one push or pop, and no lock is shared by the
//! requests of different members.
//!
//! A connection is driven by the request that holds it ([`conn`]), in HTTP/1.1 as [`h1`] writes
//! and parses it; an idle one is just a socket, checked when it is taken again.

pub mod conn;
pub mod h1;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};

pub use conn::{ExchangeError, MemberConn};

/// Pool settings shared by every member (from `[proxy]`).
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// Why no connection could be had. None of these sent anything to the member.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed: {0}")]
    Refused(#[source] std::io::Error),
    #[error("connect timed out")]
    Timeout,
    /// `max_connections` were in use for the whole connect timeout.
    #[error("member busy: max_connections in use")]
    Busy,
}

impl ConnectError {
    /// Refused and timed-out connects mark the member down; a busy member is just skipped.
    pub fn marks_down(&self) -> bool {
        !matches!(self, ConnectError::Busy)
    }
}

/// One connection checked out for one request.
pub struct Conn {
    pub member: MemberConn,
    /// Came from the idle list (for the log and the metrics).
    pub reused: bool,
    /// When it was ready to send on: the `now` given to [`Upstream::acquire`] when nothing was
    /// waited for, else read after the wait.
    pub ready_at: Instant,
    permit: Option<OwnedSemaphorePermit>,
}

struct Idle {
    member: MemberConn,
    since: Instant,
}

pub struct Upstream {
    addr: SocketAddr,
    connect_timeout: Duration,
    limit: Option<Arc<Semaphore>>,
    idle: Mutex<Vec<Idle>>,
    settings: PoolSettings,
    opened: AtomicU64,
}

impl Upstream {
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        max_connections: usize,
        settings: &PoolSettings,
    ) -> Upstream {
        let mut settings = *settings;
        if max_connections > 0 {
            settings.max_idle = settings.max_idle.min(max_connections);
        }
        Upstream {
            addr,
            connect_timeout,
            limit: (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections))),
            idle: Mutex::new(Vec::new()),
            settings,
            opened: AtomicU64::new(0),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections opened so far (a metric; tests read it too).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A ready connection: an idle one if there is one, else a new one. `now` is the caller's
    /// clock reading; it judges how long the idle ones have waited unless waiting for a
    /// `max_connections` slot made it stale.
    pub async fn acquire(&self, now: Instant) -> Result<Conn, ConnectError> {
        let (permit, now) = match &self.limit {
            None => (None, now),
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(permit) => (Some(permit), now),
                Err(_) => match timeout(self.connect_timeout, sem.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => (Some(permit), Instant::now()),
                    Ok(Err(_)) | Err(_) => return Err(ConnectError::Busy),
                },
            },
        };
        if let Some(member) = self.pop_idle(now) {
            return Ok(Conn {
                member,
                reused: true,
                ready_at: now,
                permit,
            });
        }
        // Boxed: connecting is rare on a warm pool, and its state would otherwise make every
        // request's future larger (and costlier to move).
        let member = Box::pin(self.connect()).await?;
        Ok(Conn {
            member,
            reused: false,
            ready_at: Instant::now(),
            permit,
        })
    }

    /// Hands a connection whose exchange finished cleanly back to the idle list.
    pub fn release(&self, conn: Conn) {
        let Conn {
            mut member, permit, ..
        } = conn;
        if member.keep_alive && member.buf.is_empty() {
            member.settle();
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.settings.max_idle {
                idle.push(Idle {
                    member,
                    since: Instant::now(),
                });
            }
        }
        drop(permit);
    }

    /// The most recently used idle connection that can still carry a request; the others
    /// met on the way (closed by the member, or idle too long) are dropped.
    fn pop_idle(&self, now: Instant) -> Option<MemberConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            let waited = now.saturating_duration_since(conn.since);
            if waited < self.settings.idle_timeout && conn.member.is_reusable() {
                return Some(conn.member);
            }
        }
        None
    }

    async fn connect(&self) -> Result<MemberConn, ConnectError> {
        let stream = match timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::Refused(e)),
            Ok(Ok(stream)) => stream,
        };
        // Requests are written whole; waiting to coalesce only adds latency.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(addr = %self.addr, error = %e, "set_nodelay failed");
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(MemberConn::new(stream))
    }
}
