//! Request and response bodies on their way through the proxy.
//!
//! Request bodies up to `post_buffer_size` are read before a member is chosen, so they can be
//! resent (the replay buffer). A longer body is not touched until a connection to a member is
//! up: a connect failure loses nothing, only the retries after the body started to flow are
//! given up. Response bodies stream through and hand their member connection back to the pool
//! when they end cleanly.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::{InFlight, Target};
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

/// The body of a response to the client.
pub enum ResponseBody {
    /// Made by the proxy (error pages).
    Local(Option<Bytes>),
    Upstream {
        inner: Incoming,
        lease: Option<Lease>,
    },
}

impl ResponseBody {
    pub fn local(text: &'static str) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn upstream(inner: Incoming, lease: Lease) -> ResponseBody {
        if inner.is_end_stream() {
            lease.release();
            return ResponseBody::Upstream { inner, lease: None };
        }
        ResponseBody::Upstream {
            inner,
            lease: Some(lease),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream { inner, lease } => {
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
                match &frame {
                    Some(Ok(_)) if !inner.is_end_stream() => {}
                    Some(Ok(_)) | None => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    // The member connection is broken: dropping the lease closes it.
                    Some(Err(_)) => drop(lease.take()),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(data) => data.is_none(),
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
