//! Outbound peer links: one authenticated TCP connection from this member to each peer, kept up
//! by a task that redials with backoff. Requests are multiplexed by request id, so concurrent
//! writes to one peer share the connection. A peer is *live* while its link is up; every change
//! of that set wakes the re-replication task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::frame::{read_frame, write_frame, Frame};
use super::handshake::{self, HandshakeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("peer link down")]
    Down,
    #[error("peer did not answer in time")]
    Timeout,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

struct Conn {
    tx: mpsc::UnboundedSender<Frame>,
    pending: Pending,
}

/// One peer as seen from this member.
pub struct Peer {
    pub clone_id: String,
    pub addr: SocketAddr,
    up: AtomicBool,
    conn: Mutex<Option<Conn>>,
    next_req: AtomicU64,
}

/// What the link tasks need from their store.
pub struct LinkContext {
    pub me: String,
    pub secret: Vec<u8>,
    pub version: u16,
    pub timeout: Duration,
    pub max_frame: usize,
    /// Bumped on every live-set change; the re-replication task watches it.
    pub view: Arc<AtomicU64>,
    pub view_changed: Arc<Notify>,
}

impl Peer {
    pub fn new(clone_id: String, addr: SocketAddr) -> Peer {
        Peer {
            clone_id,
            addr,
            up: AtomicBool::new(false),
            conn: Mutex::new(None),
            next_req: AtomicU64::new(1),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Sends the frame `make(request id)` and waits for the answer, at most `timeout`.
    pub async fn request(
        &self,
        make: impl FnOnce(u64) -> Frame,
        timeout: Duration,
    ) -> Result<Frame, LinkError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let conn = conn.as_ref().ok_or(LinkError::Down)?;
            lock(&conn.pending).insert(req, tx);
            if conn.tx.send(make(req)).is_err() {
                lock(&conn.pending).remove(&req);
                return Err(LinkError::Down);
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(LinkError::Down),
            Err(_) => {
                if let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    lock(&conn.pending).remove(&req);
                }
                Err(LinkError::Timeout)
            }
        }
    }

    fn set_conn(&self, conn: Option<Conn>, ctx: &LinkContext) {
        let up = conn.is_some();
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
        if self.up.swap(up, Ordering::AcqRel) != up {
            ctx.view.fetch_add(1, Ordering::AcqRel);
            ctx.view_changed.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps the link to `peer` up until `shutdown` turns true.
pub async fn maintain(peer: Arc<Peer>, ctx: Arc<LinkContext>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    let mut last_error = String::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = tokio::select! {
            _ = shutdown.changed() => break,
            r = tokio::time::timeout(ctx.timeout, connect(&peer, &ctx)) => r,
        };
        match attempt {
            Ok(Ok(stream)) => {
                tracing::info!(peer = %peer.clone_id, addr = %peer.addr, "peer link up");
                last_error.clear();
                backoff = Duration::from_millis(50);
                run(&peer, &ctx, stream, &mut shutdown).await;
                peer.set_conn(None, &ctx);
                tracing::warn!(peer = %peer.clone_id, "peer link down");
            }
            Ok(Err(e)) => {
                let text = e.to_string();
                if text != last_error {
                    match e {
                        HandshakeError::Io(_) | HandshakeError::Closed => {
                            tracing::info!(peer = %peer.clone_id, addr = %peer.addr, error = %e, "peer unreachable")
                        }
                        _ => {
                            tracing::error!(peer = %peer.clone_id, addr = %peer.addr, error = %e, "peer link refused")
                        }
                    }
                    last_error = text;
                }
            }
            Err(_) => tracing::debug!(peer = %peer.clone_id, "peer connect timed out"),
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
    peer.set_conn(None, &ctx);
}

async fn connect(peer: &Peer, ctx: &LinkContext) -> Result<TcpStream, HandshakeError> {
    let mut stream = TcpStream::connect(peer.addr).await?;
    stream.set_nodelay(true)?;
    handshake::dial(
        &mut stream,
        &ctx.secret,
        &ctx.me,
        &peer.clone_id,
        ctx.version,
    )
    .await?;
    Ok(stream)
}

/// Serves one established link until it breaks, a heartbeat goes unanswered, or shutdown.
async fn run(
    peer: &Peer,
    ctx: &LinkContext,
    stream: TcpStream,
    shutdown: &mut watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let pending: Pending = Arc::default();
    peer.set_conn(
        Some(Conn {
            tx,
            pending: pending.clone(),
        }),
        ctx,
    );
    let writing = async {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut writer, &frame).await.is_err() {
                break;
            }
        }
    };
    let reading = async {
        loop {
            match read_frame(&mut reader, ctx.max_frame).await {
                Ok(Some(frame)) => {
                    let waiter = frame.req().and_then(|req| lock(&pending).remove(&req));
                    if let Some(waiter) = waiter {
                        // The requester may have timed out meanwhile; nothing to do then.
                        drop(waiter.send(frame));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer = %peer.clone_id, error = %e, "peer link read failed");
                    break;
                }
            }
        }
    };
    let heartbeat = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if peer
                .request(|req| Frame::Ping { req }, ctx.timeout)
                .await
                .is_err()
            {
                tracing::warn!(peer = %peer.clone_id, "peer missed a heartbeat");
                break;
            }
        }
    };
    tokio::select! {
        _ = writing => {}
        _ = reading => {}
        _ = heartbeat => {}
        _ = shutdown.changed() => {}
    }
    // Dropping the senders fails every waiting request with `Down` at once.
    lock(&pending).clear();
}
