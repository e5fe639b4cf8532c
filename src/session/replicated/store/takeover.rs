//! The load side of [`Inner`]: finding a session this member does not own ([`Inner::find`],
//! [`Inner::ask`]) and taking it over ([`Inner::take_over`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::Inner;
use crate::session::replicated::frame::Frame;
use crate::session::replicated::server::holder_check;
use crate::session::{now_ms, Changes, Session, StoreError};

impl Inner {
    /// Local replica, then the cookie's clone ids, then every live peer; highest version wins.
    /// A suspect local copy (left by a lost conflict) only counts if no peer has newer.
    pub(super) async fn find(self: &Arc<Self>, id: &str, clones: &[&str]) -> Option<Session> {
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
    pub(super) async fn ask(self: &Arc<Self>, id: &str, clones: &[String]) -> Option<Session> {
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

    /// Makes this member the owner of `found`: version+1, written with the sync protocol
    /// (always synchronously: this is where two members taking one session over are told apart,
    /// at the member that decides), and every other live peer told to drop older copies.
    pub(super) async fn take_over(self: &Arc<Self>, found: Session) -> Result<Session, StoreError> {
        let mut session = found.clone();
        session.version += 1;
        session.owner = self.me().to_owned();
        session.last_access_ms = now_ms().max(found.last_access_ms);
        let replicas = self.choose(&session.id);
        // A local copy newer than what was found: someone already moved on; nothing sent.
        if let Err(e) = holder_check(self.db.get(&session.id).as_ref(), Some(found.version)) {
            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.write_sync(
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
}
