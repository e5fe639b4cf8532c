//! Background work of the store: re-replication after the live set changes
//! ([`Inner::rebalance`], run by [`rebalance_task`]) and the periodic batch of async copies and
//! touches ([`Inner::flush`], run by [`batch_task`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{lock, CopyOutcome, Inner};
use crate::session::replicated::frame::Frame;
use crate::session::replicated::WriteMode;
use crate::session::Changes;

impl Inner {
    /// After a live-set change: copies owned sessions to their new holders, tells dropped holders
    /// to let go, and gives extra copies of sessions whose owner is gone.
    pub(super) async fn rebalance(self: &Arc<Self>) {
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
    pub(super) async fn flush(self: &Arc<Self>) {
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

pub(super) async fn rebalance_task(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
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

pub(super) async fn batch_task(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
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
