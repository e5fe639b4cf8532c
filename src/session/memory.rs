//! The in-memory session table (mini-redis `db.rs` style) and the one-member [`MemoryStore`].
//!
//! [`Db`] is shared state behind ONE `std::sync::Mutex`: every critical section is a map lookup
//! or insert, never an `.await` and never I/O, so a plain mutex is cheaper than an async one and
//! cannot be held across a peer round-trip. Expiry is an ordered index `(expires_ms, id)`; a purge
//! task sleeps until the earliest expiry and is stopped by [`DbDropGuard`] when the store goes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{now_ms, Changes, Session, SessionStore, StoreError, StoreFuture};

/// A stored session and, in the replicated store, the peers holding its copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub session: Session,
    /// Clone ids of the replica holders (replicated store only; empty otherwise).
    pub replicas: Vec<String>,
}

/// Counters a member reports (log lines and, later, metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// New sessions refused because `max_sessions` was reached.
    pub refused: AtomicU64,
    /// Sessions removed by the purge task.
    pub expired: AtomicU64,
}

/// Handle to the shared table; cheap to clone.
#[derive(Clone)]
pub struct Db {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the purge task when an earlier expiry is inserted or on shutdown.
    purge: Notify,
    max_sessions: usize,
    stats: Stats,
}

struct State {
    entries: HashMap<String, Entry>,
    expirations: BTreeSet<(u64, String)>,
    shutdown: bool,
}

/// Owns the [`Db`] for a store; dropping it stops the purge task.
pub struct DbDropGuard {
    db: Db,
}

impl DbDropGuard {
    /// A new table with its purge task. Must be called inside a tokio runtime.
    pub fn new(max_sessions: usize) -> DbDropGuard {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: HashMap::new(),
                expirations: BTreeSet::new(),
                shutdown: false,
            }),
            purge: Notify::new(),
            max_sessions,
            stats: Stats::default(),
        });
        tokio::spawn(purge_task(shared.clone()));
        DbDropGuard { db: Db { shared } }
    }

    pub fn db(&self) -> Db {
        self.db.clone()
    }
}

impl Drop for DbDropGuard {
    fn drop(&mut self) {
        self.db.lock().shutdown = true;
        self.db.shared.purge.notify_one();
    }
}

impl Db {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a critical section leaves the maps consistent (each section is one
        // insert/remove pair), so a poisoned lock is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live entry for `id` (an expired one counts as absent).
    pub fn get(&self, id: &str) -> Option<Entry> {
        let now = now_ms();
        let state = self.lock();
        state
            .entries
            .get(id)
            .filter(|e| !e.session.is_expired(now))
            .cloned()
    }

    /// Inserts `entry` if `check` accepts the live entry now stored (or its absence); returns the
    /// entry it replaced. `Full` when a new id would pass `max_sessions`.
    pub fn put_if(
        &self,
        entry: Entry,
        check: impl FnOnce(Option<&Entry>) -> Result<(), StoreError>,
    ) -> Result<Option<Entry>, StoreError> {
        let now = now_ms();
        let mut state = self.lock();
        let current = state
            .entries
            .get(&entry.session.id)
            .filter(|e| !e.session.is_expired(now));
        check(current)?;
        let is_new = !state.entries.contains_key(&entry.session.id);
        if is_new && state.entries.len() >= self.shared.max_sessions {
            drop(state);
            let refused = self.shared.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                max_sessions = self.shared.max_sessions,
                refused_total = refused,
                "session table full: new session refused (raise max_sessions or lower max_inactive)"
            );
            return Err(StoreError::Full {
                max: self.shared.max_sessions,
            });
        }
        let expires = entry.session.expires_ms();
        let id = entry.session.id.clone();
        let previous = state.entries.insert(id.clone(), entry);
        if let Some(prev) = &previous {
            state
                .expirations
                .remove(&(prev.session.expires_ms(), id.clone()));
        }
        let earliest = state.expirations.first().is_none_or(|(t, _)| expires < *t);
        state.expirations.insert((expires, id));
        drop(state);
        if earliest {
            self.shared.purge.notify_one();
        }
        Ok(previous.filter(|p| !p.session.is_expired(now)))
    }

    /// Removes `id` if `keep` says no; returns what was removed.
    pub fn remove_if(&self, id: &str, remove: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        let mut state = self.lock();
        let entry = state.entries.get(id)?;
        if !remove(entry) {
            return None;
        }
        let entry = state.entries.remove(id)?;
        state
            .expirations
            .remove(&(entry.session.expires_ms(), id.to_owned()));
        Some(entry)
    }

    pub fn remove(&self, id: &str) -> Option<Entry> {
        self.remove_if(id, |_| true)
    }

    /// Moves the last access of a live `id` forward; `false` when there is no live copy.
    pub fn touch(&self, id: &str, now_ms: u64) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(id) else {
            return false;
        };
        if entry.session.is_expired(now_ms) || entry.session.last_access_ms >= now_ms {
            return !entry.session.is_expired(now_ms);
        }
        let old = entry.session.expires_ms();
        entry.session.last_access_ms = now_ms;
        let new = entry.session.expires_ms();
        state.expirations.remove(&(old, id.to_owned()));
        state.expirations.insert((new, id.to_owned()));
        true
    }

    /// The ids (and entries) that `filter` selects: for re-replication. Clones under the lock.
    pub fn select(&self, mut filter: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let state = self.lock();
        state
            .entries
            .values()
            .filter(|e| filter(e))
            .cloned()
            .collect()
    }

    /// Sets the replica list of a stored entry whose version is still `version`.
    pub fn set_replicas(&self, id: &str, version: u64, replicas: Vec<String>) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(id) {
            if entry.session.version == version {
                entry.replicas = replicas;
            }
        }
    }

    /// Removes every expired entry; returns the next expiry time, if any.
    fn purge_expired(&self) -> Option<u64> {
        let now = now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        while let Some((when, id)) = state.expirations.first().cloned() {
            if when > now {
                return Some(when);
            }
            state.expirations.pop_first();
            // The index entry is authoritative only if the entry still expires then.
            if state
                .entries
                .get(&id)
                .is_some_and(|e| e.session.expires_ms() == when)
            {
                state.entries.remove(&id);
                self.shared.stats.expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        None
    }

    fn is_shutdown(&self) -> bool {
        self.lock().shutdown
    }
}

async fn purge_task(shared: Arc<Shared>) {
    let db = Db { shared };
    while !db.is_shutdown() {
        match db.purge_expired() {
            Some(when) => {
                let wait = Duration::from_millis(when.saturating_sub(now_ms()).max(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = db.shared.purge.notified() => {}
                }
            }
            None => db.shared.purge.notified().await,
        }
    }
    tracing::debug!("session purge task stopped");
}

/// The `memory` backend: one member, no failover. Sessions live in this process only.
pub struct MemoryStore {
    clone_id: String,
    guard: DbDropGuard,
}

impl MemoryStore {
    /// Must be called inside a tokio runtime (it starts the purge task).
    pub fn new(clone_id: &str, max_sessions: usize) -> MemoryStore {
        MemoryStore {
            clone_id: clone_id.to_owned(),
            guard: DbDropGuard::new(max_sessions),
        }
    }

    pub fn db(&self) -> Db {
        self.guard.db()
    }
}

/// The compare-and-set rule every backend applies: the stored version must be `expected`.
pub fn check_version(
    id: &str,
    current: Option<&Entry>,
    expected: Option<u64>,
) -> Result<(), StoreError> {
    let found = current.map(|e| e.session.version);
    if found == expected {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            id: id.to_owned(),
            expected,
            found,
        })
    }
}

impl SessionStore for MemoryStore {
    fn load<'a>(&'a self, id: &'a str, _: &'a [&'a str]) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move { Ok(self.guard.db.get(id).map(|e| e.session)) })
    }

    fn save<'a>(
        &'a self,
        session: &'a Session,
        expected: Option<u64>,
        _: &'a Changes,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let entry = Entry {
                session: session.clone(),
                replicas: Vec::new(),
            };
            self.guard
                .db
                .put_if(entry, |current| {
                    check_version(&session.id, current, expected)
                })
                .map(drop)
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.guard.db.remove(id);
            Ok(())
        })
    }

    fn touch<'a>(&'a self, id: &'a str, now_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.guard.db.touch(id, now_ms);
            Ok(())
        })
    }

    fn clone_list(&self, _: &Session) -> Vec<String> {
        vec![self.clone_id.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, version: u64, inactive: Duration) -> Session {
        let mut s = Session::new(id.into(), "c1", inactive);
        s.version = version;
        s
    }

    #[tokio::test]
    async fn save_is_compare_and_set_on_version() {
        let store = MemoryStore::new("c1", 10);
        let no = Changes::default();
        let s1 = session("a", 1, Duration::from_secs(60));
        store.save(&s1, None, &no).await.unwrap();
        // Creating it again conflicts.
        let err = store.save(&s1, None, &no).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { found: Some(1), .. }));
        let s2 = session("a", 2, Duration::from_secs(60));
        store.save(&s2, Some(1), &no).await.unwrap();
        // A writer that loaded version 1 loses.
        let stale = session("a", 2, Duration::from_secs(60));
        assert!(matches!(
            store.save(&stale, Some(1), &no).await,
            Err(StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            })
        ));
        assert_eq!(store.load("a", &[]).await.unwrap().unwrap().version, 2);
        store.remove("a").await.unwrap();
        assert_eq!(store.load("a", &[]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn max_sessions_refuses_new_ids_and_counts() {
        let store = MemoryStore::new("c1", 2);
        let no = Changes::default();
        for id in ["a", "b"] {
            store
                .save(&session(id, 1, Duration::from_secs(60)), None, &no)
                .await
                .unwrap();
        }
        let err = store
            .save(&session("c", 1, Duration::from_secs(60)), None, &no)
            .await;
        assert_eq!(err, Err(StoreError::Full { max: 2 }));
        assert_eq!(store.db().stats().refused.load(Ordering::Relaxed), 1);
        // Existing sessions can still be written.
        store
            .save(&session("a", 2, Duration::from_secs(60)), Some(1), &no)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn purge_task_removes_expired_sessions_and_touch_defers_it() {
        let store = MemoryStore::new("c1", 10);
        let no = Changes::default();
        store
            .save(&session("short", 1, Duration::from_millis(150)), None, &no)
            .await
            .unwrap();
        store
            .save(&session("kept", 1, Duration::from_millis(400)), None, &no)
            .await
            .unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.touch("kept", now_ms()).await.unwrap();
        }
        // "short" is past its 150 ms; the purge task took it out of the table itself.
        let db = store.db();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while db.len() != 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(db.len(), 1, "only the touched session is left");
        assert!(store.load("kept", &[]).await.unwrap().is_some());
        assert_eq!(db.stats().expired.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn dropping_the_store_stops_the_purge_task() {
        let store = MemoryStore::new("c1", 10);
        let weak = Arc::downgrade(&store.guard.db.shared);
        drop(store);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while weak.upgrade().is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            weak.upgrade().is_none(),
            "the purge task let go of the table"
        );
    }
}
