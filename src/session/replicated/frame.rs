//! Peer-link frames: `u32` big-endian payload length, then the payload (a tag byte and fields).
//!
//! The decoder takes untrusted bytes (it runs before and after authentication), so every length
//! is checked against what is left of the frame before anything is allocated, and the frame
//! length itself against the configured limit before it is read. `fuzz/` drives [`decode`].

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::session::Session;

mod decode; // the decoder: untrusted payload bytes → Frame, every length checked
#[cfg(test)]
mod tests; // round trips, truncations, lying counts, oversized frames

pub use decode::decode;

/// The protocol version a member speaks; peers with another version are refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// First bytes of a `Hello`, so a stray client (HTTP, a port scanner) is told apart at once.
pub const MAGIC: &[u8; 4] = b"TTHR";
/// Default bound on one frame's payload.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;
pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    // ---- handshake ----
    Hello {
        version: u16,
        clone_id: String,
        nonce: [u8; NONCE_LEN],
    },
    Challenge {
        version: u16,
        clone_id: String,
        nonce: [u8; NONCE_LEN],
        mac: [u8; MAC_LEN],
    },
    Auth {
        mac: [u8; MAC_LEN],
    },
    Accepted,
    Refused {
        reason: String,
    },
    // ---- requests (the `u64` is the request id echoed in the response) ----
    /// A full copy. Accepted unless the holder has a newer version than `expected`.
    Put {
        req: u64,
        session: Session,
        expected: Option<u64>,
    },
    /// Only the changed attributes; applies only on exactly version `expected`.
    Delta {
        req: u64,
        id: String,
        version: u64,
        expected: u64,
        last_access_ms: u64,
        set: BTreeMap<String, Bytes>,
        removed: Vec<String>,
    },
    Get {
        req: u64,
        id: String,
    },
    Remove {
        req: u64,
        id: String,
    },
    Touch {
        req: u64,
        id: String,
        last_access_ms: u64,
    },
    /// Drop a copy older than `version`: the session moved on without this holder.
    Disown {
        req: u64,
        id: String,
        version: u64,
    },
    Ping {
        req: u64,
    },
    /// Undo a copy this sender wrote as `failed_version` (its write lost a conflict): restore
    /// `session` (the base it wrote over) if the holder still has exactly that failed copy.
    Revert {
        req: u64,
        failed_version: u64,
        owner: String,
        session: Session,
    },
    // ---- responses ----
    Ok {
        req: u64,
    },
    Conflict {
        req: u64,
        found: Option<u64>,
    },
    Found {
        req: u64,
        session: Session,
    },
    NotFound {
        req: u64,
    },
    /// A delta could not apply (the holder lacks the base version): send the full copy.
    Missing {
        req: u64,
    },
    Full {
        req: u64,
    },
}

impl Frame {
    /// The request id of a request or response frame.
    pub fn req(&self) -> Option<u64> {
        use Frame::*;
        match self {
            Hello { .. } | Challenge { .. } | Auth { .. } | Accepted | Refused { .. } => None,
            Put { req, .. }
            | Delta { req, .. }
            | Get { req, .. }
            | Remove { req, .. }
            | Touch { req, .. }
            | Disown { req, .. }
            | Ping { req }
            | Revert { req, .. }
            | Ok { req }
            | Conflict { req, .. }
            | Found { req, .. }
            | NotFound { req }
            | Missing { req }
            | Full { req } => Some(*req),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame truncated")]
    Truncated,
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    #[error("text field is not UTF-8")]
    NotUtf8,
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
    #[error("bad magic: not a tether peer")]
    BadMagic,
}

/// Serialises `frame` with its length prefix.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut w = Vec::with_capacity(64);
    w.extend_from_slice(&[0; 4]);
    use Frame::*;
    match frame {
        Hello {
            version,
            clone_id,
            nonce,
        } => {
            w.push(1);
            w.extend_from_slice(MAGIC);
            w.extend_from_slice(&version.to_be_bytes());
            put_str(&mut w, clone_id);
            w.extend_from_slice(nonce);
        }
        Challenge {
            version,
            clone_id,
            nonce,
            mac,
        } => {
            w.push(2);
            w.extend_from_slice(&version.to_be_bytes());
            put_str(&mut w, clone_id);
            w.extend_from_slice(nonce);
            w.extend_from_slice(mac);
        }
        Auth { mac } => {
            w.push(3);
            w.extend_from_slice(mac);
        }
        Accepted => w.push(4),
        Refused { reason } => {
            w.push(5);
            put_str(&mut w, reason);
        }
        Put {
            req,
            session,
            expected,
        } => {
            head(&mut w, 10, *req);
            put_session(&mut w, session);
            put_opt(&mut w, *expected);
        }
        Delta {
            req,
            id,
            version,
            expected,
            last_access_ms,
            set,
            removed,
        } => {
            head(&mut w, 11, *req);
            put_str(&mut w, id);
            for n in [*version, *expected, *last_access_ms] {
                w.extend_from_slice(&n.to_be_bytes());
            }
            put_attrs(&mut w, set);
            put_u32(&mut w, removed.len());
            for name in removed {
                put_str(&mut w, name);
            }
        }
        Get { req, id } => id_frame(&mut w, 12, *req, id),
        Remove { req, id } => id_frame(&mut w, 13, *req, id),
        Touch {
            req,
            id,
            last_access_ms,
        } => {
            id_frame(&mut w, 14, *req, id);
            w.extend_from_slice(&last_access_ms.to_be_bytes());
        }
        Disown { req, id, version } => {
            id_frame(&mut w, 15, *req, id);
            w.extend_from_slice(&version.to_be_bytes());
        }
        Ping { req } => head(&mut w, 16, *req),
        Revert {
            req,
            failed_version,
            owner,
            session,
        } => {
            head(&mut w, 17, *req);
            w.extend_from_slice(&failed_version.to_be_bytes());
            put_str(&mut w, owner);
            put_session(&mut w, session);
        }
        Ok { req } => head(&mut w, 20, *req),
        Conflict { req, found } => {
            head(&mut w, 21, *req);
            put_opt(&mut w, *found);
        }
        Found { req, session } => {
            head(&mut w, 22, *req);
            put_session(&mut w, session);
        }
        NotFound { req } => head(&mut w, 23, *req),
        Missing { req } => head(&mut w, 24, *req),
        Full { req } => head(&mut w, 25, *req),
    }
    let len = u32::try_from(w.len() - 4).unwrap_or(u32::MAX);
    w[..4].copy_from_slice(&len.to_be_bytes());
    w
}

fn head(w: &mut Vec<u8>, tag: u8, req: u64) {
    w.push(tag);
    w.extend_from_slice(&req.to_be_bytes());
}

fn id_frame(w: &mut Vec<u8>, tag: u8, req: u64, id: &str) {
    head(w, tag, req);
    put_str(w, id);
}

fn put_u32(w: &mut Vec<u8>, n: usize) {
    w.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len());
    w.extend_from_slice(b);
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

fn put_opt(w: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => {
            w.push(1);
            w.extend_from_slice(&n.to_be_bytes());
        }
        None => w.push(0),
    }
}

fn put_attrs(w: &mut Vec<u8>, attrs: &BTreeMap<String, Bytes>) {
    put_u32(w, attrs.len());
    for (name, value) in attrs {
        put_str(w, name);
        put_bytes(w, value);
    }
}

fn put_session(w: &mut Vec<u8>, s: &Session) {
    put_str(w, &s.id);
    w.extend_from_slice(&s.version.to_be_bytes());
    put_str(w, &s.owner);
    for n in [s.created_ms, s.last_access_ms] {
        w.extend_from_slice(&n.to_be_bytes());
    }
    let inactive = u64::try_from(s.max_inactive.as_millis()).unwrap_or(u64::MAX);
    w.extend_from_slice(&inactive.to_be_bytes());
    put_attrs(w, &s.attributes);
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames. A length over `max` is
/// an error before anything is read or allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes is over the {max}-byte limit"),
        ));
    }
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await?;
    decode(&payload)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> std::io::Result<()> {
    writer.write_all(&encode(frame)).await?;
    writer.flush().await
}
