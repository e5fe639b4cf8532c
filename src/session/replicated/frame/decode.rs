//! The frame decoder: a bounds-checked [`Reader`] over one payload and [`decode`], which turns
//! untrusted bytes into a [`Frame`] or a [`FrameError`], never allocating past the input.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::{Frame, FrameError, MAGIC};
use crate::session::Session;

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
