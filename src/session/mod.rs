//! Session state for cluster members (DESIGN.md §5): the [`Session`] record, the [`SessionStore`]
//! trait and its backends, and the tower [`SessionLayer`] that loads a session before the handler
//! and saves it after.
//!
//! - [`id`] mints session ids (128 bits from the OS CSPRNG) and writes the cookie value with the
//!   shared codec in [`crate::affinity`] (one codec for the proxy and the members);
//! - [`memory`] is the one-member store: one lock, an expiry index, a purge task;
//! - [`redis`] keeps sessions in Redis (standalone, TLS, Sentinel, Cluster): one hash per
//!   session, a Lua compare-and-set, TTL = max inactive;
//! - [`replicated`] is the DRS-model store: the memory store plus peer links that copy each write
//!   to `replicas` peers chosen by rendezvous hash, takeover and re-replication;
//! - [`layer`] is the tower layer and [`SessionHandle`], the handler's view of its session.
//!
//! A request flows: layer reads the id (`;jsessionid=` then cookie) → `store.load` (which in the
//! replicated store may take the session over from a peer) → handler reads/writes the handle →
//! layer `store.save`s with the version it loaded (compare-and-set) only if something changed →
//! `Set-Cookie` with the store's clone list (owner first, then replica holders).

pub mod id;
pub mod layer;
pub mod memory;
// The Redis backend (issue 4): src/session/redis/.
pub mod redis;
pub mod replicated;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use layer::{SessionConfig, SessionHandle, SessionLayer, SessionService};
pub use memory::MemoryStore;

/// One session: what every backend stores and what the peer protocol carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id proper: no cache id, no clone ids.
    pub id: String,
    /// +1 per write; the compare-and-set token of [`SessionStore::save`].
    pub version: u64,
    /// Clone id of the member that owns (writes) the session.
    pub owner: String,
    pub attributes: BTreeMap<String, Bytes>,
    /// Unix time, milliseconds.
    pub created_ms: u64,
    /// Unix time, milliseconds.
    pub last_access_ms: u64,
    pub max_inactive: Duration,
}

impl Session {
    /// A new, empty session owned by `owner`, version 0 (its first save writes version 1).
    pub fn new(id: String, owner: &str, max_inactive: Duration) -> Session {
        let now = now_ms();
        Session {
            id,
            version: 0,
            owner: owner.to_owned(),
            attributes: BTreeMap::new(),
            created_ms: now,
            last_access_ms: now,
            max_inactive,
        }
    }

    /// Unix time (ms) after which the session is gone.
    pub fn expires_ms(&self) -> u64 {
        let inactive = u64::try_from(self.max_inactive.as_millis()).unwrap_or(u64::MAX);
        self.last_access_ms.saturating_add(inactive)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms() <= now_ms
    }

    /// Rough bytes this session holds (keys, values, id, owner): what `max_sessions` sizing and
    /// the bench script talk about.
    pub fn payload_bytes(&self) -> usize {
        self.id.len()
            + self.owner.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// What a handler changed in one request: the "changed attributes only" write contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub set: BTreeMap<String, Bytes>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }

    /// Applies these changes to `attributes`.
    pub fn apply(&self, attributes: &mut BTreeMap<String, Bytes>) {
        for name in &self.removed {
            attributes.remove(name);
        }
        for (name, value) in &self.set {
            attributes.insert(name.clone(), value.clone());
        }
    }
}

/// Why a store operation failed. A Redis backend maps its errors onto the same three kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stored version is not the expected one: someone else wrote first. Never retried
    /// blindly (that would lose their write).
    #[error("session {id}: version conflict (expected {expected:?}, found {found:?})")]
    Conflict {
        id: String,
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// The store cannot be reached or cannot answer in time; the request may be retried later.
    #[error("session store unavailable: {0}")]
    Unavailable(&'static str),
    /// `max_sessions` reached: a new session was refused.
    #[error("session store full ({max} sessions)")]
    Full { max: usize },
}

/// A boxed future, so `dyn SessionStore` works (the member picks its backend at run time).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A session store. Every method is async and fallible, so a networked backend (Redis: one key
/// per session, `SET` guarded by a version check in Lua, TTL = max inactive) fits the same shape.
pub trait SessionStore: Send + Sync + 'static {
    /// The session `id`, or `None` when no live copy exists. `clones` are the clone ids the
    /// request's cookie named (owner first): where a replicated store looks for a session it does
    /// not hold. A store may take the session over here (the replicated store does).
    fn load<'a>(&'a self, id: &'a str, clones: &'a [&'a str]) -> StoreFuture<'a, Option<Session>>;

    /// Writes `session` if the stored version is `expected` (`None`: the session must not exist).
    /// `session.version` is the new version; `changes` is what changed since `expected`, for
    /// backends that write only changed attributes.
    fn save<'a>(
        &'a self,
        session: &'a Session,
        expected: Option<u64>,
        changes: &'a Changes,
    ) -> StoreFuture<'a, ()>;

    /// Deletes the session everywhere it is stored (invalidation).
    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;

    /// Records an access without a write: moves the expiry forward, keeps the version.
    fn touch<'a>(&'a self, id: &'a str, now_ms: u64) -> StoreFuture<'a, ()>;

    /// The clone ids for the session's cookie: owner first, then the replica holders.
    fn clone_list(&self, session: &Session) -> Vec<String>;
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_last_access_plus_max_inactive() {
        let mut s = Session::new("x".into(), "c1", Duration::from_secs(2));
        s.last_access_ms = 1_000;
        assert_eq!(s.expires_ms(), 3_000);
        assert!(!s.is_expired(2_999));
        assert!(s.is_expired(3_000));
        s.max_inactive = Duration::MAX;
        assert_eq!(s.expires_ms(), u64::MAX);
    }

    #[test]
    fn changes_apply_removes_then_sets() {
        let mut attrs = BTreeMap::new();
        attrs.insert("a".to_owned(), Bytes::from_static(b"1"));
        attrs.insert("b".to_owned(), Bytes::from_static(b"2"));
        let mut c = Changes::default();
        assert!(c.is_empty());
        c.removed.push("a".into());
        c.set.insert("c".into(), Bytes::from_static(b"3"));
        c.apply(&mut attrs);
        assert_eq!(attrs.keys().collect::<Vec<_>>(), ["b", "c"]);
    }
}
