//! The write side of [`Inner`]: one copy to one holder ([`Inner::copy_to`]), the sync write
//! protocol — decide at one member, then spread ([`Inner::write_sync`], described at the top of
//! `store.rs`) — the plain fan-out of async batches ([`Inner::replicate_now`]), undoing a write
//! ([`Inner::undo`]) and telling holders to drop stale copies ([`Inner::disown`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{CopyOutcome, Inner};
use crate::session::memory::Entry;
use crate::session::replicated::frame::Frame;
use crate::session::replicated::link::{LinkError, Peer};
use crate::session::replicated::rendezvous;
use crate::session::replicated::server::holder_check;
use crate::session::{Changes, Session, StoreError};

/// What a fan-out of copies to several holders got back.
#[derive(Default)]
struct FanOut {
    stored: Vec<String>,
    /// The `found` version of each holder that refused.
    conflicts: Vec<Option<u64>>,
    unavailable: u64,
}

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
                Ok(Frame::Conflict { found, .. }) => return CopyOutcome::Conflict { found },
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
            Ok(Frame::Conflict { found, .. }) => CopyOutcome::Conflict { found },
            Ok(_) | Err(LinkError::Down) | Err(LinkError::Timeout) => CopyOutcome::Unavailable,
        }
    }

    /// The sync write protocol (see the top of `store.rs`): `session` (the new version, owned by
    /// this member) replaces version `expected`, whose content `base` is, if known.
    ///
    /// 1. **Decide.** This member and its `replicas`, in rendezvous order, are asked one at a
    ///    time until one answers: the first that answers *decides*. The local table decides with
    ///    its compare-and-set; a peer decides by storing the copy or refusing it. Until then the
    ///    new version is nowhere (a peer that did not answer may hold it: it is undone there on
    ///    refusal). Refused: nothing was written, the local copy is marked suspect, `Conflict`.
    /// 2. **Spread.** The write is decided: the local table (when a peer decided) and the other
    ///    holders get it. A holder that already has a *newer* version is left alone (the session
    ///    moved on from this write, decided after it); one that has *another copy of this very
    ///    version* means two deciders (members disagreeing on the live set): the write is undone
    ///    where it landed and reported as a conflict, as before this protocol.
    ///
    /// A brand-new session (`expected == None`, an id fresh from the CSPRNG: no competitor) is
    /// decided by the local table, which also enforces `max_sessions` before any copy leaves.
    pub(super) async fn write_sync(
        self: &Arc<Self>,
        session: &Session,
        base: Option<&Session>,
        expected: Option<u64>,
        delta_to: &[String],
        changes: &Changes,
        replicas: &[String],
    ) -> Result<(), StoreError> {
        let me = self.me().to_owned();
        let candidates: Vec<String> = if expected.is_none() {
            vec![me.clone()]
        } else {
            let all = replicas.iter().map(String::as_str).chain([me.as_str()]);
            rendezvous::top(&session.id, all, usize::MAX)
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        let mut silent = Vec::new();
        let mut decider = None;
        for candidate in &candidates {
            if *candidate == me {
                let entry = Entry {
                    session: session.clone(),
                    replicas: replicas.to_vec(),
                };
                if let Err(e) = self.db.put_if(entry, |cur| holder_check(cur, expected)) {
                    if matches!(e, StoreError::Conflict { .. }) {
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    self.undo(session, base, &silent, false).await;
                    return Err(e);
                }
                decider = Some(me.clone());
                break;
            }
            let Some(peer) = self.peer(candidate).cloned() else {
                continue;
            };
            let delta = delta_to.contains(candidate).then_some(changes);
            match self.copy_to(&peer, session, expected, delta).await {
                CopyOutcome::Stored => {
                    decider = Some(candidate.clone());
                    break;
                }
                CopyOutcome::Conflict { .. } => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.distrust_local(&session.id, expected);
                    self.undo(session, base, &silent, false).await;
                    return Err(conflict(session, expected));
                }
                CopyOutcome::Unavailable => silent.push(candidate.clone()),
            }
        }
        // This member is a candidate and always answers: the loop ended with a decider.
        let decider = decider.unwrap_or_else(|| me.clone());
        let mut stored = Vec::new();
        let mut local_written = decider == me;
        if decider != me {
            stored.push(decider.clone());
            let entry = Entry {
                session: session.clone(),
                replicas: replicas.to_vec(),
            };
            // Never backwards: a newer local copy was decided after this write (built on it).
            let local = self.db.put_if(entry, |cur| match cur {
                Some(c) if c.session.version >= session.version => {
                    Err(StoreError::Unavailable("local copy already newer"))
                }
                _ => Ok(()),
            });
            match local {
                Ok(_) => local_written = true,
                Err(e @ StoreError::Full { .. }) => {
                    self.undo(session, base, &stored, false).await;
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        // The candidates before the decider did not answer; the others get their copy now.
        let rest: Vec<String> = replicas
            .iter()
            .filter(|c| **c != decider && !silent.contains(c))
            .cloned()
            .collect();
        let fan = self
            .fan_out(session, expected, delta_to, changes, &rest)
            .await;
        stored.extend(fan.stored);
        if fan.conflicts.contains(&Some(session.version)) {
            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                version = session.version,
                "two members decided the same session version (live sets disagree); undoing this write"
            );
            self.undo(session, base, &stored, local_written).await;
            return Err(conflict(session, expected));
        }
        self.note_unavailable(fan.unavailable + silent.len() as u64);
        Ok(())
    }

    /// Sends `session` to every holder in `to` at once and waits (each bounded by `timeout`):
    /// the async batch, whose local write is already done. `Err(Conflict)` when any holder has
    /// a newer version; the write is then undone where it landed.
    pub(super) async fn replicate_now(
        self: &Arc<Self>,
        session: &Session,
        base: Option<&Session>,
        expected: Option<u64>,
        delta_to: &[String],
        changes: &Changes,
        to: &[String],
    ) -> Result<(), StoreError> {
        let fan = self.fan_out(session, expected, delta_to, changes, to).await;
        if !fan.conflicts.is_empty() {
            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            self.undo(session, base, &fan.stored, true).await;
            return Err(conflict(session, expected));
        }
        self.note_unavailable(fan.unavailable);
        Ok(())
    }

    /// One copy to each holder in `to`, concurrently.
    async fn fan_out(
        self: &Arc<Self>,
        session: &Session,
        expected: Option<u64>,
        delta_to: &[String],
        changes: &Changes,
        to: &[String],
    ) -> FanOut {
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
        let mut fan = FanOut::default();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((clone, CopyOutcome::Stored)) => fan.stored.push(clone),
                Ok((_, CopyOutcome::Conflict { found })) => fan.conflicts.push(found),
                Ok((_, CopyOutcome::Unavailable)) | Err(_) => fan.unavailable += 1,
            }
        }
        fan
    }

    fn note_unavailable(&self, unavailable: u64) {
        if unavailable == 0 {
            return;
        }
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

    /// A peer refused a write built on `expected`: it has newer. The local copy, if it is not
    /// newer than that base, is stale: marked suspect (empty owner), so the next load asks the
    /// peers for the newest version instead of trusting it.
    fn distrust_local(&self, id: &str, expected: Option<u64>) {
        let (Some(expected), Some(mut entry)) = (expected, self.db.get(id)) else {
            return;
        };
        if entry.session.version > expected || entry.session.owner.is_empty() {
            return;
        }
        let (version, owner) = (entry.session.version, entry.session.owner.clone());
        entry.session.owner.clear();
        entry.replicas.clear();
        let marked = self.db.put_if(entry, |cur| match cur {
            Some(c) if c.session.version == version && c.session.owner == owner => Ok(()),
            _ => Err(StoreError::Unavailable("local copy moved on")),
        });
        if let Err(e) = marked {
            tracing::debug!(error = %e, "local copy not marked suspect");
        }
    }

    /// Undoes a failed write: the holders in `stored` and, when `local` (this write reached the
    /// local table), the local table get `base` back where they still hold exactly the failed
    /// copy, the local copy marked suspect. Without a base (a new session) only the local copy
    /// is removed. `local` is false when the write never reached the local table: the local copy
    /// with the failed version may then be another request's decided write, never to be undone.
    pub(super) async fn undo(
        self: &Arc<Self>,
        failed: &Session,
        base: Option<&Session>,
        stored: &[String],
        local: bool,
    ) {
        match base {
            Some(base) => self.revert(failed, base, stored, local).await,
            None if !local => {}
            None => {
                self.db.remove_if(&failed.id, |e| {
                    e.session.version == failed.version && e.session.owner == self.me()
                });
            }
        }
    }

    /// Undoes a failed write: the holders in `stored` and (when `local`) the local table get
    /// `base` back, the local copy marked suspect (empty owner).
    async fn revert(
        self: &Arc<Self>,
        failed: &Session,
        base: &Session,
        stored: &[String],
        local: bool,
    ) {
        let me = self.me().to_owned();
        if local {
            let mut suspect = base.clone();
            suspect.owner = String::new();
            let entry = Entry {
                session: suspect,
                replicas: Vec::new(),
            };
            if let Err(e) = self.db.put_if(entry, |cur| match cur {
                Some(c) if c.session.version == failed.version && c.session.owner == me => Ok(()),
                _ => Err(StoreError::Unavailable("local copy moved on")),
            }) {
                tracing::debug!(error = %e, "local revert skipped");
            }
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

fn conflict(session: &Session, expected: Option<u64>) -> StoreError {
    StoreError::Conflict {
        id: session.id.clone(),
        expected,
        found: None,
    }
}
