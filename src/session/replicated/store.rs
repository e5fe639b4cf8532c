//! [`ReplicatedStore`]: load with takeover, compare-and-set save with sync/async copies,
//! replicated removal and touch, and re-replication when the live set changes.
//!
//! # The sync write protocol: decide at one member, then spread
//!
//! A sync write (a handler's save, or a takeover at load) replaces version `v` by `v+1`. Two
//! members may write over the same `v` at once (the same old cookie on two members after a
//! failover). Exactly one may win, and the loser's write must be *nowhere*: its `409` promises
//! "nothing was saved", and no other member may build on it.
//!
//! The old protocol wrote the local table first, then copied to the holders and, when one
//! refused, reverted. Between the local write and the revert the loser's `v+1` was visible, and
//! another member's takeover lookup (`Get`, highest version wins) could take it over and build
//! `v+2` on it; the loser then reverted nothing (its copies had moved on) and answered `409`
//! while its write lived on: a phantom write (the counter test saw one increment too many).
//!
//! So no version is shown before it is decided:
//!
//! 1. **Decide.** The writer and its holders, in rendezvous order of the session id, are asked
//!    *one at a time*: the first that answers decides, with its compare-and-set (the local table)
//!    or by storing/refusing the copy (a peer). The writer's own table is not touched before a
//!    peer decided. Since every member ranks the same live set alike, the decider of two racing
//!    writers is the same member (the top of the live set: a writer is either that member, or
//!    has it as its first holder), and its one table lock orders them. A candidate that does not
//!    answer is skipped (and undone if the write is then refused). Refused: nothing was written
//!    anywhere; the local copy is marked *suspect* (owner unknown) so the next load asks the
//!    peers for the newest version; `Conflict`.
//! 2. **Spread.** Only now do the local table and the other holders get the copy. Whatever a
//!    member or a takeover lookup can see was decided; a version built on it is built on a write
//!    that stays. A holder already holding a newer version just moved on (that version was
//!    decided after this one). A holder holding *another copy of the same version* reveals two
//!    deciders (members disagreeing on the live set, e.g. during a link flap): only then is the
//!    write undone where it landed and reported as a conflict, as the old protocol did.
//!
//! A new session (no base version; its id is fresh from the CSPRNG) has no competitor: the
//! local table decides, and enforces `max_sessions` before a copy leaves. Async writes are
//! decided by the local table; their copies follow in batches (DESIGN.md §5 accepts losing the
//! last `write_interval` there).
//!
//! This file holds the store's state ([`Inner`]), its start-up and the [`SessionStore`] impl;
//! the halves of [`Inner`]'s work are in `store/`: `replicate.rs` (the write side),
//! `takeover.rs` (the load side) and `background.rs` (re-replication and async batches).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::frame::Frame;
use super::link::{self, LinkContext, Peer};
use super::server::{self, holder_check, ServerContext};
use super::{rendezvous, Replicas, ReplicationConfig, ReplicationStats, WriteContents, WriteMode};
use crate::session::memory::{Db, DbDropGuard, Entry};
use crate::session::{Changes, Session, SessionStore, StoreError, StoreFuture};

mod background; // re-replication after a live-set change, and the async batch flush
mod replicate; // sending copies: one holder, all holders with conflict undo, disown
mod takeover; // finding a session elsewhere and taking it over

use background::{batch_task, rebalance_task};

/// The replicated backend. Dropping it stops its tasks and closes its peer links.
pub struct ReplicatedStore {
    inner: Arc<Inner>,
    _stop: StopGuard,
}

struct StopGuard {
    stop: watch::Sender<bool>,
    _db: DbDropGuard,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

struct Inner {
    cfg: ReplicationConfig,
    db: Db,
    peers: Vec<Arc<Peer>>,
    stats: ReplicationStats,
    view: Arc<AtomicU64>,
    view_changed: Arc<Notify>,
    /// Owned sessions written since the last async batch.
    dirty: Mutex<HashSet<String>>,
    /// Owned sessions read without a write since the last batch: their new last access.
    touched: Mutex<HashMap<String, u64>>,
}

/// How one copy to one holder went.
enum CopyOutcome {
    Stored,
    /// The holder has a newer version than the copy's base (`found`, when it said).
    Conflict {
        found: Option<u64>,
    },
    Unavailable,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplicatedStore {
    /// Starts the store on an already bound peer `listener`: the inbound server, one link task
    /// per peer, the re-replication task and the batch task. Must run inside a tokio runtime.
    pub fn start(cfg: ReplicationConfig, listener: TcpListener) -> ReplicatedStore {
        let guard = DbDropGuard::new(cfg.max_sessions);
        let (stop, stop_rx) = watch::channel(false);
        let view = Arc::new(AtomicU64::new(1));
        let view_changed = Arc::new(Notify::new());
        let peers: Vec<Arc<Peer>> = cfg
            .peers
            .iter()
            .filter(|p| p.clone_id != cfg.clone_id)
            .map(|p| Arc::new(Peer::new(p.clone_id.clone(), p.address)))
            .collect();
        let inner = Arc::new(Inner {
            db: guard.db(),
            peers,
            stats: ReplicationStats::default(),
            view: view.clone(),
            view_changed: view_changed.clone(),
            dirty: Mutex::default(),
            touched: Mutex::default(),
            cfg,
        });
        let server_ctx = Arc::new(ServerContext {
            me: inner.cfg.clone_id.clone(),
            secret: inner.cfg.secret.clone(),
            version: inner.cfg.protocol_version,
            max_frame: inner.cfg.max_frame,
            timeout: inner.cfg.timeout,
            db: inner.db.clone(),
        });
        tokio::spawn(server::accept_loop(listener, server_ctx, stop_rx.clone()));
        let link_ctx = Arc::new(LinkContext {
            me: inner.cfg.clone_id.clone(),
            secret: inner.cfg.secret.clone(),
            version: inner.cfg.protocol_version,
            timeout: inner.cfg.timeout,
            max_frame: inner.cfg.max_frame,
            view,
            view_changed,
        });
        for peer in &inner.peers {
            tokio::spawn(link::maintain(
                peer.clone(),
                link_ctx.clone(),
                stop_rx.clone(),
            ));
        }
        tokio::spawn(rebalance_task(inner.clone(), stop_rx.clone()));
        tokio::spawn(batch_task(inner.clone(), stop_rx));
        ReplicatedStore {
            inner,
            _stop: StopGuard { stop, _db: guard },
        }
    }

    pub fn stats(&self) -> &ReplicationStats {
        &self.inner.stats
    }

    pub fn db(&self) -> Db {
        self.inner.db.clone()
    }

    /// Clone ids of the peers whose link is up.
    pub fn live_peers(&self) -> Vec<String> {
        self.inner.live().map(|p| p.clone_id.clone()).collect()
    }

    /// `true` once re-replication has run for the current live set.
    pub fn is_settled(&self) -> bool {
        self.inner.stats.settled_view.load(Ordering::Acquire)
            == self.inner.view.load(Ordering::Acquire)
    }

    /// Sessions this member owns (the rest of its table are copies it backs up).
    pub fn owned(&self) -> usize {
        let me = &self.inner.cfg.clone_id;
        self.inner.db.select(|e| &e.session.owner == me).len()
    }
}

impl Inner {
    fn me(&self) -> &str {
        &self.cfg.clone_id
    }

    fn live(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.iter().filter(|p| p.is_up())
    }

    fn peer(&self, clone_id: &str) -> Option<&Arc<Peer>> {
        self.peers.iter().find(|p| p.clone_id == clone_id)
    }

    /// The replica holders for `id` among the live peers, best first.
    fn choose(&self, id: &str) -> Vec<String> {
        let n = match self.cfg.replicas {
            Replicas::Count(n) => n,
            Replicas::All => self.peers.len(),
        };
        rendezvous::top(id, self.live().map(|p| p.clone_id.as_str()), n)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

impl SessionStore for ReplicatedStore {
    fn load<'a>(&'a self, id: &'a str, clones: &'a [&'a str]) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move {
            let inner = &self.inner;
            if let Some(entry) = inner.db.get(id) {
                if entry.session.owner == inner.me() {
                    return Ok(Some(entry.session));
                }
            }
            match inner.find(id, clones).await {
                Some(found) => inner.take_over(found).await.map(Some),
                None => {
                    if clones.iter().any(|c| *c != inner.me()) {
                        let lost = inner.stats.lost.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(cookie_clones = ?clones, lost_total = lost, "session not found on any member: lost");
                    }
                    Ok(None)
                }
            }
        })
    }

    fn save<'a>(
        &'a self,
        session: &'a Session,
        expected: Option<u64>,
        changes: &'a Changes,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut session = session.clone();
            session.owner = inner.me().to_owned();
            let replicas = inner.choose(&session.id);
            if inner.cfg.write_mode == WriteMode::Sync {
                let current = inner.db.get(&session.id);
                // A local copy newer than the base: someone already wrote; nothing sent.
                if let Err(e) = holder_check(current.as_ref(), expected) {
                    inner.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                // Holders that had the base version can take just the changes.
                let delta_to: Vec<String> = match (&current, inner.cfg.write_contents) {
                    (Some(prev), WriteContents::Changed) if prev.session.owner == inner.me() => {
                        prev.replicas.clone()
                    }
                    _ => Vec::new(),
                };
                let base = current.map(|p| p.session);
                return inner
                    .write_sync(
                        &session,
                        base.as_ref(),
                        expected,
                        &delta_to,
                        changes,
                        &replicas,
                    )
                    .await;
            }
            // Async: the local table decides; the copies follow in the next batch.
            let entry = Entry {
                session: session.clone(),
                replicas,
            };
            inner
                .db
                .put_if(entry, |cur| holder_check(cur, expected))
                .inspect_err(|e| {
                    if matches!(e, StoreError::Conflict { .. }) {
                        inner.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                })?;
            lock(&inner.dirty).insert(session.id.clone());
            Ok(())
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.db.remove(id);
            lock(&inner.dirty).remove(id);
            let mut tasks = JoinSet::new();
            for peer in inner.live() {
                let (peer, id, timeout) = (peer.clone(), id.to_owned(), inner.cfg.timeout);
                tasks.spawn(
                    async move { peer.request(|req| Frame::Remove { req, id }, timeout).await },
                );
            }
            while tasks.join_next().await.is_some() {}
            Ok(())
        })
    }

    fn touch<'a>(&'a self, id: &'a str, now_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.db.touch(id, now_ms) {
                lock(&inner.touched).insert(id.to_owned(), now_ms);
            }
            Ok(())
        })
    }

    fn clone_list(&self, session: &Session) -> Vec<String> {
        let inner = &self.inner;
        let replicas = match inner.db.get(&session.id) {
            Some(entry) if entry.session.owner == inner.me() => entry.replicas,
            _ => inner.choose(&session.id),
        };
        std::iter::once(inner.me().to_owned())
            .chain(replicas)
            .collect()
    }
}
