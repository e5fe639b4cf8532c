//! The `replicated` store: the DRS model of DESIGN.md §5.
//!
//! Each member keeps a local table ([`Db`]) of the sessions it owns and the copies it backs up.
//! A write goes to `replicas` live peers chosen by [`rendezvous`] hash — in `sync` mode before
//! the response (bounded by `timeout`), in `async` mode in batches every `write_interval`.
//! A sync write is first *decided* by one member (the first of the writer and its holders in
//! rendezvous order that answers: a compare-and-set on the version, the point where two writers
//! are told apart) and only then shown anywhere else; the loser has written nothing and the
//! layer sees the conflict. The protocol and why it is safe: the top of `store.rs`.
//!
//! Since every member ranks the live peers in the same rendezvous order, two members writing
//! the same session at once have the same decider: the top of the live set is either the
//! writer itself or its first holder (each picks the top N of one list with itself left out).
//!
//! Modules: [`frame`] (wire format), [`handshake`] (version + HMAC), [`link`] (outbound links,
//! liveness), [`server`] (inbound requests), [`rendezvous`], [`store`] (the [`SessionStore`]
//! impl: load with takeover, save, re-replication).

pub mod frame; // wire format: frame types, encode, framed I/O (decoder in frame/decode.rs)
pub mod handshake; // protocol version check and mutual HMAC challenge–response
pub mod link; // outbound peer links: dial, multiplexed requests, liveness
pub mod rendezvous; // rendezvous hashing: which live peers hold a session's copies
pub mod server; // inbound peer links: answer requests against the local table
mod store; // the SessionStore impl (write/load/background halves in store/*.rs)

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use store::ReplicatedStore;

/// How many peers hold a copy of each session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    Count(usize),
    /// The whole replication domain.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The response waits for the replicas' acknowledgement (bounded by `timeout`).
    Sync,
    /// Copies are sent in batches every `write_interval`.
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteContents {
    /// Only the attributes a request changed (a full copy to a holder that lacks the base).
    Changed,
    /// The whole session on every write.
    All,
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub clone_id: String,
    pub address: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// This member's clone id.
    pub clone_id: String,
    /// The other members of the replication domain.
    pub peers: Vec<PeerConfig>,
    pub secret: Vec<u8>,
    pub replicas: Replicas,
    pub write_mode: WriteMode,
    pub write_interval: Duration,
    pub write_contents: WriteContents,
    /// Bound on one peer round trip (sync ack, takeover fetch, handshake).
    pub timeout: Duration,
    pub max_frame: usize,
    pub max_sessions: usize,
    /// The protocol version spoken; [`frame::PROTOCOL_VERSION`] except in refusal tests.
    pub protocol_version: u16,
}

impl ReplicationConfig {
    /// Defaults: 1 replica, sync, changed attributes, 10 s write interval, 5 s timeout.
    pub fn new(clone_id: &str, secret: &[u8], peers: Vec<PeerConfig>) -> ReplicationConfig {
        ReplicationConfig {
            clone_id: clone_id.to_owned(),
            peers,
            secret: secret.to_vec(),
            replicas: Replicas::Count(1),
            write_mode: WriteMode::Sync,
            write_interval: Duration::from_secs(10),
            write_contents: WriteContents::Changed,
            timeout: Duration::from_secs(5),
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_sessions: 100_000,
            protocol_version: frame::PROTOCOL_VERSION,
        }
    }
}

/// Counters of the replicated store (the member's `/_tether/stats` shows them).
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// Sessions taken over from a peer (or from a local replica).
    pub takeovers: AtomicU64,
    /// Requests whose cookie named a session that no member had any more.
    pub lost: AtomicU64,
    /// Sync writes a replica did not acknowledge in time (kept locally).
    pub write_timeouts: AtomicU64,
    /// Copies sent by re-replication after the live set changed.
    pub rereplicated: AtomicU64,
    /// Conflicts reported to the layer.
    pub conflicts: AtomicU64,
    /// The live-set generation the last finished re-replication ran for.
    pub settled_view: AtomicU64,
}
