//! [`ReplicatedStore`]: load with takeover, compare-and-set save with sync/async copies,
//! replicated removal and touch, and re-replication when the live set changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::frame::Frame;
use super::link::{self, LinkContext, LinkError, Peer};
use super::server::{self, holder_check, ServerContext};
use super::{rendezvous, Replicas, ReplicationConfig, ReplicationStats, WriteContents, WriteMode};
use crate::session::memory::{Db, DbDropGuard, Entry};
use crate::session::{now_ms, Changes, Session, SessionStore, StoreError, StoreFuture};

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
    Conflict,
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

    /// Sends one copy: a delta when `delta` is given (falling back to the full session when the
    /// holder lacks the base), else the full session.
    async fn copy_to(
        &self,
        peer: &Peer,
        session: &Session,
        expected: Option<u64>,
        delta: Option<&Changes>,
    ) -> CopyOutcome {
        let timeout = self.cfg.timeout;
        if let (Some(changes), Some(base)) = (delta, expected) {
            let answer = peer
                .request(
                    |req| Frame::Delta {
                        req,
                        id: session.id.clone(),
                        version: session.version,
                        expected: base,
                        last_access_ms: session.last_access_ms,
                        set: changes.set.clone(),
                        removed: changes.removed.clone(),
                    },
                    timeout,
                )
                .await;
            match answer {
                Ok(Frame::Ok { .. }) => return CopyOutcome::Stored,
                Ok(Frame::Conflict { .. }) => return CopyOutcome::Conflict,
                Ok(Frame::Missing { .. }) => {}
                Ok(_) | Err(_) => return CopyOutcome::Unavailable,
            }
        }
        let answer = peer
            .request(
                |req| Frame::Put {
                    req,
                    session: session.clone(),
                    expected,
                },
                timeout,
            )
            .await;
        match answer {
            Ok(Frame::Ok { .. }) => CopyOutcome::Stored,
            Ok(Frame::Conflict { .. }) => CopyOutcome::Conflict,
            Ok(_) | Err(LinkError::Down) | Err(LinkError::Timeout) => CopyOutcome::Unavailable,
        }
    }

    /// Sends `session` to every holder in `to` at once and waits (each bounded by `timeout`).
    /// `Err(Conflict)` when any holder has a newer version.
    async fn replicate_now(
        self: &Arc<Self>,
        session: &Session,
        base: Option<&Session>,
        expected: Option<u64>,
        delta_to: &[String],
        changes: &Changes,
        to: &[String],
    ) -> Result<(), StoreError> {
        let mut tasks = JoinSet::new();
        for clone in to {
            let Some(peer) = self.peer(clone).cloned() else {
                continue;
            };
            let inner = self.clone();
            let session = session.clone();
            let delta = delta_to.contains(clone).then(|| changes.clone());
            tasks.spawn(async move {
                let outcome = inner
                    .copy_to(&peer, &session, expected, delta.as_ref())
                    .await;
                (peer.clone_id.clone(), outcome)
            });
        }
        let (mut conflict, mut unavailable, mut stored) = (false, 0u64, Vec::new());
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((clone, CopyOutcome::Stored)) => stored.push(clone),
                Ok((_, CopyOutcome::Conflict)) => conflict = true,
                Ok((_, CopyOutcome::Unavailable)) | Err(_) => unavailable += 1,
            }
        }
        if conflict {
            // Someone else wrote (or is writing) a newer version: undo this write everywhere it
            // landed, and keep the base locally as a *suspect* copy (owner unknown), so the next
            // load asks the peers for the newest version instead of trusting it.
            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            if let Some(base) = base {
                self.revert(session, base, &stored).await;
            } else {
                self.db.remove_if(&session.id, |e| {
                    e.session.version == session.version && e.session.owner == self.me()
                });
            }
            return Err(StoreError::Conflict {
                id: session.id.clone(),
                expected,
                found: None,
            });
        }
        if unavailable > 0 {
            let total = self
                .stats
                .write_timeouts
                .fetch_add(unavailable, Ordering::Relaxed)
                + unavailable;
            tracing::warn!(
                replicas = unavailable,
                total,
                "session copy not acknowledged in time; kept locally (re-replicated when the peer set changes)"
            );
        }
        Ok(())
    }

    /// Undoes a failed write: the holders in `stored` and the local table get `base` back, the
    /// local copy marked suspect (empty owner).
    async fn revert(self: &Arc<Self>, failed: &Session, base: &Session, stored: &[String]) {
        let mut suspect = base.clone();
        suspect.owner = String::new();
        let local = Entry {
            session: suspect,
            replicas: Vec::new(),
        };
        let me = self.me().to_owned();
        if let Err(e) = self.db.put_if(local, |cur| match cur {
            Some(c) if c.session.version == failed.version && c.session.owner == me => Ok(()),
            _ => Err(StoreError::Unavailable("local copy moved on")),
        }) {
            tracing::debug!(error = %e, "local revert skipped");
        }
        let mut tasks = JoinSet::new();
        for clone in stored {
            let Some(peer) = self.peer(clone).cloned() else {
                continue;
            };
            let (base, timeout, failed_version, owner) =
                (base.clone(), self.cfg.timeout, failed.version, me.clone());
            tasks.spawn(async move {
                peer.request(
                    |req| Frame::Revert {
                        req,
                        failed_version,
                        owner,
                        session: base,
                    },
                    timeout,
                )
                .await
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Local replica, then the cookie's clone ids, then every live peer; highest version wins.
    /// A suspect local copy (left by a lost conflict) only counts if no peer has newer.
    async fn find(self: &Arc<Self>, id: &str, clones: &[&str]) -> Option<Session> {
        let local = self.db.get(id).map(|e| e.session);
        if let Some(session) = local.as_ref().filter(|s| !s.owner.is_empty()) {
            return Some(session.clone());
        }
        let cookie: Vec<String> = clones
            .iter()
            .filter(|c| **c != self.me())
            .map(|c| (*c).to_owned())
            .collect();
        let from_cookie = self.ask(id, &cookie).await;
        if local.is_none() && from_cookie.is_some() {
            return from_cookie;
        }
        let rest: Vec<String> = self
            .live()
            .map(|p| p.clone_id.clone())
            .filter(|c| !cookie.contains(c))
            .collect();
        let from_rest = self.ask(id, &rest).await;
        [local, from_cookie, from_rest]
            .into_iter()
            .flatten()
            .max_by_key(|s| s.version)
    }

    /// Asks `clones` (the live ones) for `id` concurrently; the highest version found.
    async fn ask(self: &Arc<Self>, id: &str, clones: &[String]) -> Option<Session> {
        let mut tasks = JoinSet::new();
        for clone in clones {
            let Some(peer) = self.peer(clone).filter(|p| p.is_up()).cloned() else {
                continue;
            };
            let (id, timeout) = (id.to_owned(), self.cfg.timeout);
            tasks.spawn(async move { peer.request(|req| Frame::Get { req, id }, timeout).await });
        }
        let mut best: Option<Session> = None;
        while let Some(done) = tasks.join_next().await {
            if let Ok(Ok(Frame::Found { session, .. })) = done {
                if !session.is_expired(now_ms())
                    && best.as_ref().is_none_or(|b| session.version > b.version)
                {
                    best = Some(session);
                }
            }
        }
        best
    }

    /// Makes this member the owner of `found`: version+1, copies to its holders (always
    /// synchronously: this is where two members taking one session over are told apart), and
    /// every other live peer told to drop older copies.
    async fn take_over(self: &Arc<Self>, found: Session) -> Result<Session, StoreError> {
        let mut session = found.clone();
        session.version += 1;
        session.owner = self.me().to_owned();
        session.last_access_ms = now_ms().max(found.last_access_ms);
        let replicas = self.choose(&session.id);
        let entry = Entry {
            session: session.clone(),
            replicas: replicas.clone(),
        };
        if let Err(e) = self
            .db
            .put_if(entry, |cur| holder_check(cur, Some(found.version)))
        {
            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.replicate_now(
            &session,
            Some(&found),
            Some(found.version),
            &[],
            &Changes::default(),
            &replicas,
        )
        .await?;
        let others: Vec<String> = self
            .live()
            .map(|p| p.clone_id.clone())
            .filter(|c| !replicas.contains(c))
            .collect();
        self.disown(&session.id, session.version, &others).await;
        let total = self.stats.takeovers.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(from = %found.owner, version = session.version, total, "session taken over");
        Ok(session)
    }

    /// Tells `clones` to drop copies of `id` older than `version`.
    async fn disown(&self, id: &str, version: u64, clones: &[String]) {
        let mut tasks = JoinSet::new();
        for clone in clones {
            let Some(peer) = self.peer(clone).cloned() else {
                continue;
            };
            let (id, timeout) = (id.to_owned(), self.cfg.timeout);
            tasks.spawn(async move {
                peer.request(|req| Frame::Disown { req, id, version }, timeout)
                    .await
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// After a live-set change: copies owned sessions to their new holders, tells dropped holders
    /// to let go, and gives extra copies of sessions whose owner is gone.
    async fn rebalance(self: &Arc<Self>) {
        let me = self.me().to_owned();
        let live: HashSet<String> = self.live().map(|p| p.clone_id.clone()).collect();
        let entries = self
            .db
            .select(|e| e.session.owner == me || !live.contains(&e.session.owner));
        let mut sent = 0u64;
        for entry in entries {
            let s = &entry.session;
            let new = self.choose(&s.id);
            let added: Vec<String> = if s.owner == me {
                new.iter()
                    .filter(|c| !entry.replicas.contains(c))
                    .cloned()
                    .collect()
            } else {
                new.iter().filter(|c| **c != s.owner).cloned().collect()
            };
            let base = Some(s.version.saturating_sub(1));
            for clone in &added {
                if let Some(peer) = self.peer(clone) {
                    if let CopyOutcome::Stored = self.copy_to(peer, s, base, None).await {
                        sent += 1;
                    }
                }
            }
            if s.owner == me {
                let dropped: Vec<String> = entry
                    .replicas
                    .iter()
                    .filter(|c| !new.contains(c) && live.contains(*c))
                    .cloned()
                    .collect();
                self.disown(&s.id, s.version + 1, &dropped).await;
                self.db.set_replicas(&s.id, s.version, new);
            }
        }
        if sent > 0 {
            self.stats.rereplicated.fetch_add(sent, Ordering::Relaxed);
            tracing::info!(
                copies = sent,
                live = live.len(),
                "re-replicated sessions after a peer set change"
            );
        }
    }

    /// One async batch: the latest copy of each dirty owned session, and the touches.
    async fn flush(self: &Arc<Self>) {
        let dirty: Vec<String> = lock(&self.dirty).drain().collect();
        for id in dirty {
            let Some(entry) = self.db.get(&id).filter(|e| e.session.owner == self.me()) else {
                continue;
            };
            let base = Some(entry.session.version.saturating_sub(1));
            if let Err(e) = self
                .replicate_now(
                    &entry.session,
                    None,
                    base,
                    &[],
                    &Changes::default(),
                    &entry.replicas,
                )
                .await
            {
                tracing::warn!(error = %e, "async session copy found a newer version elsewhere");
            }
        }
        let touched: Vec<(String, u64)> = lock(&self.touched).drain().collect();
        for (id, at) in touched {
            let Some(entry) = self.db.get(&id) else {
                continue;
            };
            for clone in &entry.replicas {
                if let Some(peer) = self.peer(clone).filter(|p| p.is_up()) {
                    let id = id.clone();
                    drop(
                        peer.request(
                            |req| Frame::Touch {
                                req,
                                id,
                                last_access_ms: at,
                            },
                            self.cfg.timeout,
                        )
                        .await,
                    );
                }
            }
        }
    }
}

async fn rebalance_task(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = inner.view_changed.notified() => {}
        }
        // Let a burst of link changes (a restart, the domain starting) settle first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let view = inner.view.load(Ordering::Acquire);
        inner.rebalance().await;
        inner.stats.settled_view.store(view, Ordering::Release);
    }
}

async fn batch_task(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let every = match inner.cfg.write_mode {
        WriteMode::Async => inner.cfg.write_interval,
        WriteMode::Sync => inner.cfg.write_interval.min(Duration::from_secs(1)),
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => inner.flush().await,
        }
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
            let entry = Entry {
                session: session.clone(),
                replicas: replicas.clone(),
            };
            let previous = inner
                .db
                .put_if(entry, |cur| holder_check(cur, expected))
                .inspect_err(|e| {
                    if matches!(e, StoreError::Conflict { .. }) {
                        inner.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                })?;
            match inner.cfg.write_mode {
                WriteMode::Async => {
                    lock(&inner.dirty).insert(session.id.clone());
                    Ok(())
                }
                WriteMode::Sync => {
                    // Holders that had the base version can take just the changes.
                    let delta_to: Vec<String> = match (&previous, inner.cfg.write_contents) {
                        (Some(prev), WriteContents::Changed)
                            if prev.session.owner == inner.me() =>
                        {
                            prev.replicas.clone()
                        }
                        _ => Vec::new(),
                    };
                    let base = previous.map(|p| p.session);
                    inner
                        .replicate_now(
                            &session,
                            base.as_ref(),
                            expected,
                            &delta_to,
                            changes,
                            &replicas,
                        )
                        .await
                }
            }
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
