//! Request and response bodies on their way through the proxy.
//!
//! Request bodies up to `post_buffer_size` are read before a member is chosen, so they can be
//! resent (the replay buffer). A longer body is not touched until a connection to a member is
//! up: a connect failure loses nothing, only the retries after the body started to flow are
//! given up. Response bodies are read from the member connection as the client takes them, and
//! hand the connection back to the pool when they end cleanly.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::{InFlight, Target};
use crate::upstream::h1::{Chunked, Framing, ProtocolError, Step};
use crate::upstream::Conn;

/// The client's request body failed: it is the client's fault, never the member's.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body larger than post_size_limit")]
    TooLarge,
    #[error("client request body failed: {0}")]
    Aborted(#[source] hyper::Error),
}

/// The body sent to a member for one attempt.
pub enum RequestBody {
    Empty,
    /// The whole body, held in the replay buffer.
    Full(Option<Bytes>),
    /// A body too long to replay: what was read ahead, then the rest straight from the client.
    Stream {
        prefix: Option<Bytes>,
        rest: Incoming,
        seen: u64,
        limit: u64,
    },
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Stream {
                prefix,
                rest,
                seen,
                limit,
            } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                match ready!(Pin::new(rest).poll_frame(cx)) {
                    None => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(ClientBodyError::Aborted(e)))),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(ClientBodyError::TooLarge)));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Stream { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Stream { prefix, rest, .. } => {
                let head = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                match rest.exact() {
                    Some(n) => SizeHint::with_exact(head + n),
                    None => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(head + rest.lower());
                        hint
                    }
                }
            }
        }
    }
}

/// Where the body of one request comes from, attempt after attempt.
pub enum BodySource {
    Empty,
    /// Replayable: every attempt gets a copy (a reference count, not a copy of the bytes).
    Buffered(Bytes),
    /// Can be sent once; `None` once it was handed to an attempt.
    Once(Option<RequestBody>),
}

impl BodySource {
    /// Reads up to `cap` bytes of the body ahead; a body announced longer than `cap` is not
    /// touched at all. `limit` is `post_size_limit`.
    pub async fn read_ahead(
        mut body: Incoming,
        content_length: Option<u64>,
        cap: usize,
        limit: u64,
    ) -> Result<BodySource, ClientBodyError> {
        if body.is_end_stream() {
            return Ok(BodySource::Empty);
        }
        if content_length.is_some_and(|n| n > cap as u64) {
            return Ok(BodySource::Once(Some(RequestBody::Stream {
                prefix: None,
                rest: body,
                seen: 0,
                limit,
            })));
        }
        let mut buf = BytesMut::with_capacity(content_length.map_or(8192, |n| n as usize));
        while buf.len() <= cap {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break,
                Some(Err(e)) => return Err(ClientBodyError::Aborted(e)),
                Some(Ok(frame)) => {
                    // Trailers of a buffered body are dropped (rare; noted in the README).
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
            }
            if body.is_end_stream() {
                break;
            }
        }
        if buf.len() as u64 > limit {
            return Err(ClientBodyError::TooLarge);
        }
        if body.is_end_stream() {
            return Ok(BodySource::Buffered(buf.freeze()));
        }
        let seen = buf.len() as u64;
        Ok(BodySource::Once(Some(RequestBody::Stream {
            prefix: Some(buf.freeze()),
            rest: body,
            seen,
            limit,
        })))
    }

    /// The body for the next attempt, or `None` when it was already sent once.
    pub fn take(&mut self) -> Option<RequestBody> {
        match self {
            BodySource::Empty => Some(RequestBody::Empty),
            BodySource::Buffered(bytes) => Some(RequestBody::Full(Some(bytes.clone()))),
            BodySource::Once(body) => body.take(),
        }
    }

    /// Gives back a body that was never written (the connection was not ready).
    pub fn put_back(&mut self, body: RequestBody) {
        if let BodySource::Once(slot) = self {
            *slot = Some(body);
        }
    }

    /// Whether a failure after the request was written can still be retried.
    pub fn replayable(&self) -> bool {
        !matches!(self, BodySource::Once(_))
    }

    /// Length to announce when the body is buffered (a chunked upload becomes fixed-length).
    pub fn buffered_len(&self) -> Option<usize> {
        match self {
            BodySource::Buffered(bytes) => Some(bytes.len()),
            _ => None,
        }
    }
}

/// A member connection lent to one response: handed back to the pool when the body ends
/// cleanly, closed when the body fails or the client goes away.
pub struct Lease {
    pub conn: Conn,
    pub target: Arc<Target>,
    pub in_flight: InFlight,
}

impl Lease {
    fn release(self) {
        let Lease {
            conn,
            target,
            in_flight,
        } = self;
        target.upstream.release(conn);
        drop(in_flight);
    }
}

/// A member's response body failed: the client's response is aborted.
#[derive(Debug, thiserror::Error)]
pub enum MemberBodyError {
    #[error("member connection failed mid-body: {0}")]
    Io(#[source] std::io::Error),
    #[error("member closed the connection before the body ended")]
    Incomplete,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Where a member's response body stands.
pub enum Remaining {
    Length(u64),
    Chunked(Chunked),
    /// Until the member closes the connection.
    Close,
    Done,
}

/// The body of a response to the client.
pub enum ResponseBody {
    /// Made by the proxy (error pages).
    Local(Option<Bytes>),
    /// Read from the member connection as the client takes it.
    Member {
        remaining: Remaining,
        lease: Option<Lease>,
    },
}

impl ResponseBody {
    pub fn local(text: &'static str) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn member(framing: Framing, lease: Lease) -> ResponseBody {
        let remaining = match framing {
            Framing::Empty => Remaining::Done,
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(Chunked::new()),
            Framing::Close => Remaining::Close,
        };
        let mut body = ResponseBody::Member {
            remaining,
            lease: Some(lease),
        };
        body.finish_if_done();
        body
    }

    /// Hands the connection back as soon as the body is complete, before the client has it:
    /// the next request can use it at once.
    fn finish_if_done(&mut self) {
        if let ResponseBody::Member { remaining, lease } = self {
            if matches!(remaining, Remaining::Length(0) | Remaining::Done) {
                *remaining = Remaining::Done;
                if let Some(lease) = lease.take() {
                    lease.release();
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = MemberBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MemberBodyError>>> {
        let this = &mut *self;
        let (remaining, lease) = match this {
            ResponseBody::Local(data) => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            ResponseBody::Member { remaining, lease } => (remaining, lease),
        };
        let Some(held) = lease.as_mut() else {
            return Poll::Ready(None);
        };
        let member = &mut held.conn.member;
        loop {
            let step = match remaining {
                Remaining::Done => Step::Done,
                Remaining::Length(_) if member.buf.is_empty() => Step::More,
                Remaining::Length(left) => {
                    let n = (member.buf.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    Step::Data(member.buf.split_to(n).freeze())
                }
                Remaining::Chunked(decoder) => match decoder.decode(&mut member.buf) {
                    Ok(step) => step,
                    Err(e) => {
                        drop(lease.take());
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Remaining::Close if member.buf.is_empty() => Step::More,
                Remaining::Close => Step::Data(member.buf.split().freeze()),
            };
            match step {
                Step::Data(data) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Done => {
                    *remaining = Remaining::Done;
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Step::More => {}
            }
            let want = match remaining {
                Remaining::Length(left) => *left,
                _ => u64::MAX,
            };
            match ready!(member.poll_fill(cx, want)) {
                Ok(0) if matches!(remaining, Remaining::Close) => {
                    // The end of a close-delimited body; the connection goes with it.
                    *remaining = Remaining::Done;
                    drop(lease.take());
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    drop(lease.take());
                    return Poll::Ready(Some(Err(MemberBodyError::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    drop(lease.take());
                    return Poll::Ready(Some(Err(MemberBodyError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(data) => data.is_none(),
            ResponseBody::Member { remaining, .. } => {
                matches!(remaining, Remaining::Done | Remaining::Length(0))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Member { remaining, .. } => match remaining {
                Remaining::Length(n) => SizeHint::with_exact(*n),
                Remaining::Done => SizeHint::with_exact(0),
                _ => SizeHint::new(),
            },
        }
    }
}
