//! Peer-link frames: `u32` big-endian payload length, then the payload (a tag byte and fields).
//!
//! The decoder takes untrusted bytes (it runs before and after authentication), so every length
//! is checked against what is left of the frame before anything is allocated, and the frame
//! length itself against the configured limit before it is read. `fuzz/` drives [`decode`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::session::Session;

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

/// Reads fields off a frame payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn len(&mut self) -> Result<usize, FrameError> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        // Each counted item takes at least 4 bytes: a count the frame cannot hold is a lie.
        if n > self.buf.len() {
            return Err(FrameError::Truncated);
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.len()?;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| FrameError::NotUtf8)
    }
    fn opt(&mut self) -> Result<Option<u64>, FrameError> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.u64()?)),
        }
    }
    fn attrs(&mut self) -> Result<BTreeMap<String, Bytes>, FrameError> {
        let n = self.len()?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let name = self.string()?;
            let value = Bytes::copy_from_slice(self.bytes()?);
            out.insert(name, value);
        }
        Ok(out)
    }
    fn session(&mut self) -> Result<Session, FrameError> {
        Ok(Session {
            id: self.string()?,
            version: self.u64()?,
            owner: self.string()?,
            created_ms: self.u64()?,
            last_access_ms: self.u64()?,
            max_inactive: Duration::from_millis(self.u64()?),
            attributes: self.attrs()?,
        })
    }
}

/// Parses one frame payload (without its length prefix).
pub fn decode(payload: &[u8]) -> Result<Frame, FrameError> {
    let mut r = Reader { buf: payload };
    let tag = r.u8()?;
    let frame = match tag {
        1 => {
            if &r.array::<4>()? != MAGIC {
                return Err(FrameError::BadMagic);
            }
            Frame::Hello {
                version: r.u16()?,
                clone_id: r.string()?,
                nonce: r.array()?,
            }
        }
        2 => Frame::Challenge {
            version: r.u16()?,
            clone_id: r.string()?,
            nonce: r.array()?,
            mac: r.array()?,
        },
        3 => Frame::Auth { mac: r.array()? },
        4 => Frame::Accepted,
        5 => Frame::Refused {
            reason: r.string()?,
        },
        10..=25 => {
            let req = r.u64()?;
            match tag {
                10 => Frame::Put {
                    req,
                    session: r.session()?,
                    expected: r.opt()?,
                },
                11 => {
                    let id = r.string()?;
                    let (version, expected, last_access_ms) = (r.u64()?, r.u64()?, r.u64()?);
                    let set = r.attrs()?;
                    let n = r.len()?;
                    let mut removed = Vec::new();
                    for _ in 0..n {
                        removed.push(r.string()?);
                    }
                    Frame::Delta {
                        req,
                        id,
                        version,
                        expected,
                        last_access_ms,
                        set,
                        removed,
                    }
                }
                12 => Frame::Get {
                    req,
                    id: r.string()?,
                },
                13 => Frame::Remove {
                    req,
                    id: r.string()?,
                },
                14 => Frame::Touch {
                    req,
                    id: r.string()?,
                    last_access_ms: r.u64()?,
                },
                15 => Frame::Disown {
                    req,
                    id: r.string()?,
                    version: r.u64()?,
                },
                16 => Frame::Ping { req },
                17 => Frame::Revert {
                    req,
                    failed_version: r.u64()?,
                    owner: r.string()?,
                    session: r.session()?,
                },
                20 => Frame::Ok { req },
                21 => Frame::Conflict {
                    req,
                    found: r.opt()?,
                },
                22 => Frame::Found {
                    req,
                    session: r.session()?,
                },
                23 => Frame::NotFound { req },
                24 => Frame::Missing { req },
                25 => Frame::Full { req },
                other => return Err(FrameError::UnknownTag(other)),
            }
        }
        other => return Err(FrameError::UnknownTag(other)),
    };
    if !r.buf.is_empty() {
        return Err(FrameError::Trailing(r.buf.len()));
    }
    Ok(frame)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let mut s = Session::new("abc".into(), "c1", Duration::from_secs(60));
        s.version = 7;
        s.attributes
            .insert("count".into(), Bytes::from_static(b"41"));
        s.attributes
            .insert("blob".into(), Bytes::from(vec![0u8, 255, 10]));
        s
    }

    fn all_frames() -> Vec<Frame> {
        let mut set = BTreeMap::new();
        set.insert("k".to_owned(), Bytes::from_static(b"v"));
        vec![
            Frame::Hello {
                version: 1,
                clone_id: "c1".into(),
                nonce: [7; 32],
            },
            Frame::Challenge {
                version: 1,
                clone_id: "c2".into(),
                nonce: [1; 32],
                mac: [2; 32],
            },
            Frame::Auth { mac: [3; 32] },
            Frame::Accepted,
            Frame::Refused {
                reason: "nope".into(),
            },
            Frame::Put {
                req: 1,
                session: session(),
                expected: Some(6),
            },
            Frame::Put {
                req: 2,
                session: session(),
                expected: None,
            },
            Frame::Delta {
                req: 3,
                id: "abc".into(),
                version: 8,
                expected: 7,
                last_access_ms: 5,
                set,
                removed: vec!["x".into()],
            },
            Frame::Get {
                req: 4,
                id: "abc".into(),
            },
            Frame::Remove {
                req: 5,
                id: "abc".into(),
            },
            Frame::Touch {
                req: 6,
                id: "abc".into(),
                last_access_ms: 99,
            },
            Frame::Disown {
                req: 7,
                id: "abc".into(),
                version: 9,
            },
            Frame::Ping { req: 8 },
            Frame::Revert {
                req: 15,
                failed_version: 8,
                owner: "c2".into(),
                session: session(),
            },
            Frame::Ok { req: 9 },
            Frame::Conflict {
                req: 10,
                found: Some(3),
            },
            Frame::Found {
                req: 11,
                session: session(),
            },
            Frame::NotFound { req: 12 },
            Frame::Missing { req: 13 },
            Frame::Full { req: 14 },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in all_frames() {
            let bytes = encode(&frame);
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4);
            assert_eq!(decode(&bytes[4..]), Ok(frame));
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for frame in all_frames() {
            let bytes = encode(&frame);
            for cut in 0..bytes.len() - 4 {
                assert!(
                    decode(&bytes[4..4 + cut]).is_err(),
                    "{frame:?} cut at {cut}"
                );
            }
            let mut long = bytes[4..].to_vec();
            long.push(0);
            assert_eq!(decode(&long), Err(FrameError::Trailing(1)));
        }
    }

    #[test]
    fn lying_counts_and_bad_tags_are_errors() {
        // A Get whose id claims 4 GiB.
        let mut b = vec![12];
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&b), Err(FrameError::Truncated));
        assert_eq!(decode(&[99]), Err(FrameError::UnknownTag(99)));
        assert_eq!(
            decode(&[1, b'H', b'T', b'T', b'P']),
            Err(FrameError::BadMagic)
        );
        let mut bad_utf8 = vec![5];
        bad_utf8.extend_from_slice(&2u32.to_be_bytes());
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(decode(&bad_utf8), Err(FrameError::NotUtf8));
    }

    #[tokio::test]
    async fn read_frame_refuses_oversized_frames_before_reading_them() {
        let mut input: &[u8] = &[0, 0, 1, 0, 1, 2, 3];
        let err = read_frame(&mut input, 255).await.unwrap_err();
        assert!(err.to_string().contains("over the 255-byte limit"), "{err}");
        let frame = Frame::Ping { req: 5 };
        let bytes = encode(&frame);
        let mut input: &[u8] = &bytes;
        assert_eq!(read_frame(&mut input, 255).await.unwrap(), Some(frame));
        assert_eq!(read_frame(&mut input, 255).await.unwrap(), None);
    }
}
