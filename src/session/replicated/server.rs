//! The listening side of the peer links: authenticates each dialing peer, then answers its
//! requests against the local table ([`Db`]). Every answer is computed under the table's lock in
//! one short critical section: no request waits on another peer.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::frame::{read_frame, write_frame, Frame};
use super::handshake;
use crate::session::memory::{Db, Entry};
use crate::session::StoreError;

pub struct ServerContext {
    pub me: String,
    pub secret: Vec<u8>,
    pub version: u16,
    pub max_frame: usize,
    pub timeout: Duration,
    pub db: Db,
}

pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve(stream, addr, ctx) => {}
                _ = stop.changed() => {}
            }
        });
    }
}

async fn serve(mut stream: TcpStream, addr: std::net::SocketAddr, ctx: Arc<ServerContext>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let shaken = tokio::time::timeout(
        ctx.timeout,
        handshake::accept(&mut stream, &ctx.secret, &ctx.me, ctx.version),
    )
    .await;
    let peer = match shaken {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => {
            tracing::error!(%addr, error = %e, "peer link refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, "peer handshake timed out");
            return;
        }
    };
    tracing::debug!(%peer, %addr, "peer authenticated");
    loop {
        let frame = match read_frame(&mut stream, ctx.max_frame).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bad frame from peer; closing its link");
                return;
            }
        };
        let Some(answer) = handle(&ctx.db, frame) else {
            tracing::warn!(%peer, "unexpected frame from peer; closing its link");
            return;
        };
        if write_frame(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

/// The answer to one request frame; `None` for a frame that is not a request.
pub fn handle(db: &Db, frame: Frame) -> Option<Frame> {
    Some(match frame {
        Frame::Put {
            req,
            session,
            expected,
        } => {
            let entry = Entry {
                session,
                replicas: Vec::new(),
            };
            match db.put_if(entry, |current| holder_check(current, expected)) {
                Ok(_) => Frame::Ok { req },
                Err(StoreError::Conflict { found, .. }) => Frame::Conflict { req, found },
                Err(_) => Frame::Full { req },
            }
        }
        Frame::Delta {
            req,
            id,
            version,
            expected,
            last_access_ms,
            set,
            removed,
        } => {
            let Some(mut entry) = db.get(&id) else {
                return Some(Frame::Missing { req });
            };
            let found = entry.session.version;
            if found > expected {
                return Some(Frame::Conflict {
                    req,
                    found: Some(found),
                });
            }
            if found < expected {
                return Some(Frame::Missing { req });
            }
            let changes = crate::session::Changes { set, removed };
            changes.apply(&mut entry.session.attributes);
            entry.session.version = version;
            entry.session.last_access_ms = entry.session.last_access_ms.max(last_access_ms);
            let applied = db.put_if(entry, |current| match current {
                Some(c) if c.session.version == expected => Ok(()),
                c => Err(StoreError::Conflict {
                    id: id.clone(),
                    expected: Some(expected),
                    found: c.map(|c| c.session.version),
                }),
            });
            match applied {
                Ok(_) => Frame::Ok { req },
                Err(StoreError::Conflict { found, .. }) => Frame::Conflict { req, found },
                Err(_) => Frame::Full { req },
            }
        }
        Frame::Get { req, id } => match db.get(&id) {
            Some(entry) => Frame::Found {
                req,
                session: entry.session,
            },
            None => Frame::NotFound { req },
        },
        Frame::Remove { req, id } => {
            db.remove(&id);
            Frame::Ok { req }
        }
        Frame::Touch {
            req,
            id,
            last_access_ms,
        } => {
            db.touch(&id, last_access_ms);
            Frame::Ok { req }
        }
        Frame::Disown { req, id, version } => {
            db.remove_if(&id, |e| e.session.version < version);
            Frame::Ok { req }
        }
        Frame::Ping { req } => Frame::Ok { req },
        Frame::Revert {
            req,
            failed_version,
            owner,
            session,
        } => {
            let restore = Entry {
                session,
                replicas: Vec::new(),
            };
            // Only the exact failed copy is replaced; anything newer stays. `Full` cannot
            // happen (the id is present), and a refusal would leave the failed copy: logged.
            if let Err(e) = db.put_if(restore, |cur| match cur {
                Some(c) if c.session.version == failed_version && c.session.owner == owner => {
                    Ok(())
                }
                _ => Err(StoreError::Conflict {
                    id: String::new(),
                    expected: Some(failed_version),
                    found: cur.map(|c| c.session.version),
                }),
            }) {
                tracing::debug!(error = %e, "revert skipped");
            }
            Frame::Ok { req }
        }
        _ => return None,
    })
}

/// The rule for a copy arriving at a holder: accepted unless the holder already has a version
/// newer than the writer's base (`expected`), which means someone else wrote first. A holder
/// that is behind (missed an async batch, newly chosen) takes the full copy.
pub fn holder_check(current: Option<&Entry>, expected: Option<u64>) -> Result<(), StoreError> {
    let Some(current) = current else {
        return Ok(());
    };
    let found = current.session.version;
    let base = expected.unwrap_or(0);
    if found <= base {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            id: current.session.id.clone(),
            expected,
            found: Some(found),
        })
    }
}
