//! Request and response bodies on their way through the proxy.
//!
//! Request bodies up to `post_buffer_size` are read before a member is chosen, so they can be
//! resent (the replay buffer). A longer body is not touched until a connection to a member is
//! up: a connect failure loses nothing, only the retries after the body started to flow are
//! given up. Response bodies are read from the member connection as the client takes them, and
//! hand the connection back to the pool when they end cleanly.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::balance::{InFlight, Target};
use crate::server::conn::ClientBody;
use crate::upstream::h1::{Chunked, Framing, HeaderLines, ProtocolError, Step};
use crate::upstream::Conn;

/// The client's request body failed: it is the client's fault, never the member's.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body larger than post_size_limit")]
    TooLarge,
    #[error("client request body failed: {0}")]
    Aborted(#[source] BodyError),
}

/// A body read off a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("connection failed mid-body: {0}")]
    Io(#[source] io::Error),
    #[error("connection closed before the body ended")]
    Incomplete,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// A connection read through a buffer: what was read and not consumed yet, and a way to read
/// more.
pub trait ReadBuffered {
    fn buf(&mut self) -> &mut BytesMut;
    /// Reads more into the buffer; `Ok(0)` when the peer closed. `want` bounds what is asked.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>>;
}

/// Reads what the socket has into `buf` (at least `chunk` bytes of room), without waiting.
/// A read that leaves room in the buffer took all the socket had, so its readiness is dropped
/// then and there, as tokio's own `poll_read` does: the next wait costs no useless syscall.
/// A close the peer signalled is kept (tokio never clears the closed states).
pub fn try_fill(stream: &TcpStream, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
    if buf.capacity() - buf.len() < chunk.div_ceil(2) {
        buf.reserve(chunk);
    }
    let spare = buf.capacity() - buf.len();
    let mut got = None;
    let result = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < spare {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (got, result) {
        (Some(n), _) => Ok(n),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(0),
    }
}

/// [`try_fill`] once the socket is readable; `want` (what is left of a body of known length)
/// bounds the room made, `chunk` at most.
pub fn poll_fill(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    want: u64,
    chunk: usize,
) -> Poll<io::Result<usize>> {
    let chunk = (want.min(chunk as u64) as usize).max(1);
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match try_fill(stream, buf, chunk) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

/// Writes every slice whole, in as few syscalls as the socket allows.
pub async fn write_all_slices(stream: &TcpStream, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    write_all_counted(stream, slices, &mut 0).await
}

/// [`write_all_slices`]; `written` counts what went out, so a failure can tell "nothing sent"
/// from "partly sent".
pub async fn write_all_counted(
    stream: &TcpStream,
    mut slices: &mut [IoSlice<'_>],
    written: &mut usize,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match try_send(stream, slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *written += n;
                IoSlice::advance_slices(&mut slices, n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Up to this many bytes in several slices are copied into one buffer and sent with `send`:
/// the copy costs less than `writev`'s extra work in the kernel (the iovec import, the file
/// layer), which is measurable on small responses (HAProxy sends the same way).
const COALESCE: usize = 8 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(COALESCE));
}

/// One non-blocking send of `slices` (the first of them is not empty).
fn try_send(stream: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut live = slices.iter().filter(|s| !s.is_empty());
    let (Some(first), None) = (live.next(), live.clone().next()) else {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total > COALESCE {
            return stream.try_write_vectored(slices);
        }
        return SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            for s in slices {
                buf.extend_from_slice(s);
            }
            stream.try_write(buf)
        });
    };
    stream.try_write(first)
}

/// The size line of one chunk of a chunked body (`1a2b\r\n`), made without `fmt`; the chunk's
/// data and its closing `\r\n` follow it.
pub fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> &[u8] {
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[i..]
}

/// Where a body read off a connection stands: a member's response, a client's request.
pub enum Remaining {
    Length(u64),
    Chunked(Chunked),
    /// Until the peer closes the connection.
    Close,
    Done,
}

impl Remaining {
    pub fn is_done(&self) -> bool {
        matches!(self, Remaining::Done | Remaining::Length(0))
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            Remaining::Length(n) => SizeHint::with_exact(*n),
            Remaining::Done => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }

    /// The next piece of the body: from the buffer when it holds some, else read first.
    pub fn poll_next(
        &mut self,
        io: &mut impl ReadBuffered,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.poll_next_keeping_trailers(io, cx, None)
    }

    /// [`Remaining::poll_next`]; a chunked body's trailer section goes to `trailers`.
    pub fn poll_next_keeping_trailers(
        &mut self,
        io: &mut impl ReadBuffered,
        cx: &mut Context<'_>,
        mut trailers: Option<&mut Vec<u8>>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            let buf = io.buf();
            let step = match self {
                Remaining::Done | Remaining::Length(0) => Step::Done,
                Remaining::Length(_) | Remaining::Close if buf.is_empty() => Step::More,
                Remaining::Length(left) => {
                    let n = (buf.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    Step::Data(buf.split_to(n).freeze())
                }
                Remaining::Chunked(decoder) => {
                    match decoder.decode_keeping_trailers(buf, trailers.as_deref_mut()) {
                        Ok(step) => step,
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
                Remaining::Close => Step::Data(buf.split().freeze()),
            };
            match step {
                Step::Data(data) => {
                    if let Remaining::Length(0) = self {
                        *self = Remaining::Done;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Step::Done => {
                    *self = Remaining::Done;
                    return Poll::Ready(None);
                }
                Step::More => {}
            }
            let want = match self {
                Remaining::Length(left) => *left,
                _ => u64::MAX,
            };
            match ready!(io.poll_fill(cx, want)) {
                Ok(0) if matches!(self, Remaining::Close) => {
                    *self = Remaining::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(BodyError::Incomplete))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
            }
        }
    }
}

/// The body sent to a member for one attempt.
pub enum RequestBody<'a> {
    Empty,
    /// The whole body, held in the replay buffer.
    Full(Option<Bytes>),
    /// A body too long to replay: what was read ahead, then the rest straight from the client.
    Stream {
        prefix: Option<Bytes>,
        rest: ClientBody<'a>,
        seen: u64,
        limit: u64,
    },
}

impl Body for RequestBody<'_> {
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
                    Some(Err(e)) => Poll::Ready(Some(Err(e))),
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
pub enum BodySource<'a> {
    Empty,
    /// Replayable: every attempt gets a copy (a reference count, not a copy of the bytes).
    Buffered(Bytes),
    /// Can be sent once; `None` once it was handed to an attempt.
    Once(Option<RequestBody<'a>>),
}

impl<'a> BodySource<'a> {
    /// Reads up to `cap` bytes of the body ahead; a body announced longer than `cap` is not
    /// touched at all. `limit` is `post_size_limit`.
    pub async fn read_ahead(
        mut body: ClientBody<'a>,
        content_length: Option<u64>,
        cap: usize,
        limit: u64,
    ) -> Result<BodySource<'a>, ClientBodyError> {
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
        // A body that came in one piece (most do: with the head, in one read) is kept as that
        // piece, a slice of the connection's read buffer; only a body in several is copied.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let mut len = 0;
        while len <= cap {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    // Trailers of a buffered body are dropped (rare; noted in the README).
                    if let Ok(data) = frame.into_data() {
                        len += data.len();
                        if first.is_none() && buf.is_empty() {
                            first = Some(data);
                        } else {
                            if let Some(first) = first.take() {
                                buf.reserve(content_length.map_or(8192, |n| n as usize));
                                buf.extend_from_slice(&first);
                            }
                            buf.extend_from_slice(&data);
                        }
                    }
                }
            }
            if body.is_end_stream() {
                break;
            }
        }
        if len as u64 > limit {
            return Err(ClientBodyError::TooLarge);
        }
        let read = first.unwrap_or_else(|| buf.freeze());
        if body.is_end_stream() {
            return Ok(BodySource::Buffered(read));
        }
        Ok(BodySource::Once(Some(RequestBody::Stream {
            prefix: Some(read),
            rest: body,
            seen: len as u64,
            limit,
        })))
    }

    /// The body for the next attempt, or `None` when it was already sent once.
    pub fn take(&mut self) -> Option<RequestBody<'a>> {
        match self {
            BodySource::Empty => Some(RequestBody::Empty),
            BodySource::Buffered(bytes) => Some(RequestBody::Full(Some(bytes.clone()))),
            BodySource::Once(body) => body.take(),
        }
    }

    /// Gives back a body that was never written (the connection was not ready).
    pub fn put_back(&mut self, body: RequestBody<'a>) {
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
// Boxing the member variant would cost an allocation on every proxied response, to save a
// little space on the rare local ones.
#[allow(clippy::large_enum_variant)]
pub enum ResponseBody {
    /// Made by the proxy (error pages).
    Local(Option<Bytes>),
    /// Read from the member connection as the client takes it. `lines` are the member's header
    /// lines to pass on, taken when the head is written.
    Member {
        remaining: Remaining,
        lease: Option<Lease>,
        lines: HeaderLines,
    },
}

impl ResponseBody {
    pub fn local(text: &'static str) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn member(framing: Framing, lease: Lease, lines: HeaderLines) -> ResponseBody {
        let remaining = match framing {
            Framing::Empty => Remaining::Done,
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(Chunked::new()),
            Framing::Close => Remaining::Close,
        };
        let mut body = ResponseBody::Member {
            remaining,
            lease: Some(lease),
            lines,
        };
        body.finish_if_done();
        body
    }

    /// The member's header lines, to be written after the status line (none for a local body).
    pub fn take_header_lines(&mut self) -> HeaderLines {
        match self {
            ResponseBody::Member { lines, .. } => std::mem::replace(lines, HeaderLines::none()),
            ResponseBody::Local(_) => HeaderLines::none(),
        }
    }

    /// Hands the connection back as soon as the body is complete, before the client has it:
    /// the next request can use it at once.
    fn finish_if_done(&mut self) {
        if let ResponseBody::Member {
            remaining, lease, ..
        } = self
        {
            if remaining.is_done() {
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
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let (remaining, lease) = match this {
            ResponseBody::Local(data) => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            ResponseBody::Member {
                remaining, lease, ..
            } => (remaining, lease),
        };
        let Some(held) = lease.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(remaining.poll_next(&mut held.conn.member, cx)) {
            Some(Ok(data)) => {
                this.finish_if_done();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            None => {
                // A close-delimited body ended with its connection: release() will not pool it.
                this.finish_if_done();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                // The member connection is broken: dropping the lease closes it.
                drop(lease.take());
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(data) => data.is_none(),
            ResponseBody::Member { remaining, .. } => remaining.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Member { remaining, .. } => remaining.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_size_line;

    #[test]
    fn chunk_size_lines_are_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            assert_eq!(chunk_size_line(len, &mut [0; 18]), line.as_bytes());
        }
    }
}
