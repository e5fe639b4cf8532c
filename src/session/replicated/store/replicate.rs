//! The write side of [`Inner`]: one copy to one holder ([`Inner::copy_to`]), a write fanned
//! out to all its holders with conflict detection and undo ([`Inner::replicate_now`],
//! [`Inner::revert`]), and telling holders to drop stale copies ([`Inner::disown`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{CopyOutcome, Inner};
use crate::session::memory::Entry;
use crate::session::replicated::frame::Frame;
use crate::session::replicated::link::{LinkError, Peer};
use crate::session::{Changes, Session, StoreError};

impl Inner {
    /// Sends one copy: a delta when `delta` is given (falling back to the full session when the
    /// holder lacks the base), else the full session.
    pub(super) async fn copy_to(
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
    pub(super) async fn replicate_now(
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
    pub(super) async fn revert(
        self: &Arc<Self>,
        failed: &Session,
        base: &Session,
        stored: &[String],
    ) {
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

    /// Tells `clones` to drop copies of `id` older than `version`.
    pub(super) async fn disown(&self, id: &str, version: u64, clones: &[String]) {
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
}
