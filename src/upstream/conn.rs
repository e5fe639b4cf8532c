//! One connection to a member, driven by the task of the request that holds it: the request is
//! written and the response read in that task, with no connection task, channel or wake-up in
//! between (hyper's client would add all three per request).

use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::h1::{self, ProtocolError, ResponseHead};
use crate::proxy::body::{
    chunk_size_line, poll_fill, write_all_counted, write_all_slices, ClientBodyError, ReadBuffered,
    RequestBody,
};
use crate::proxy::headers::Added;

/// Bytes read from a member at a time to begin with (response heads, small bodies)...
const READ_CHUNK: usize = 16 * 1024;
/// ...and at most, doubling while reads fill the buffer (a large body): fewer syscalls per
/// byte, for at most this much held per response in flight.
const MAX_READ_CHUNK: usize = 256 * 1024;
/// A pooled connection keeps a read buffer at most this large.
const IDLE_BUFFER: usize = 16 * 1024;

/// Why an exchange with a member failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Nothing reached the member: the very first write failed.
    #[error("connection closed before the request was written: {0}")]
    NotSent(#[source] io::Error),
    #[error("member connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("member closed the connection before the response head")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The client's body failed while it was streamed: the client's fault.
    #[error(transparent)]
    ClientBody(ClientBodyError),
}

pub struct MemberConn {
    stream: TcpStream,
    /// Read from the member and not consumed yet.
    pub(crate) buf: BytesMut,
    /// The request head being written (its capacity is reused).
    head: Vec<u8>,
    /// The member lets this connection carry another request once the response has ended.
    pub(crate) keep_alive: bool,
    /// How much to read at a time now.
    read_chunk: usize,
}

impl ReadBuffered for MemberConn {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        let read = poll_fill(&self.stream, &mut self.buf, cx, want, self.read_chunk);
        if let Poll::Ready(Ok(n)) = read {
            if n > 0 && self.buf.len() == self.buf.capacity() {
                self.read_chunk = (self.read_chunk * 2).min(MAX_READ_CHUNK);
            }
        }
        read
    }
}

impl MemberConn {
    pub fn new(stream: TcpStream) -> MemberConn {
        MemberConn {
            stream,
            buf: BytesMut::new(),
            head: Vec::with_capacity(1024),
            keep_alive: true,
            read_chunk: READ_CHUNK,
        }
    }

    /// Whether an idle connection can carry a request: the member has neither closed it nor
    /// sent anything unasked. Costs no syscall unless the socket has signalled something.
    pub fn is_reusable(&self) -> bool {
        if !self.keep_alive || !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Gets a connection whose response has ended ready for the idle list.
    pub fn settle(&mut self) {
        self.read_chunk = READ_CHUNK;
        if self.buf.capacity() > IDLE_BUFFER {
            self.buf = BytesMut::new();
        }
    }

    /// Sends one request and reads the response head. `path` is the origin form. `body` is
    /// left as it was when nothing was sent ([`ExchangeError::NotSent`]), so it can go to
    /// another member.
    pub async fn send(
        &mut self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        added: &Added<'_>,
        body: &mut RequestBody<'_>,
    ) -> Result<ResponseHead, ExchangeError> {
        let chunked = matches!(body, RequestBody::Stream { .. })
            && !headers.contains_key(http::header::CONTENT_LENGTH);
        let extra: Option<&[u8]> = chunked.then_some(b"transfer-encoding: chunked\r\n");
        h1::encode_request_head(&mut self.head, method, path, headers, added, extra);
        let data = match body {
            RequestBody::Full(Some(data)) => data.clone(),
            _ => Bytes::new(),
        };
        let mut written = 0;
        let mut slices = [IoSlice::new(&self.head), IoSlice::new(&data)];
        write_all_counted(&self.stream, &mut slices, &mut written)
            .await
            .map_err(|e| {
                if written == 0 {
                    ExchangeError::NotSent(e)
                } else {
                    ExchangeError::Io(e)
                }
            })?;
        if let RequestBody::Stream { .. } = body {
            // Boxed: a streamed body is rare and long, and its state would otherwise make every
            // request's future larger (and costlier to move).
            Box::pin(self.stream_body(body, chunked)).await?;
        }
        self.read_head(method).await
    }

    async fn stream_body(
        &mut self,
        body: &mut RequestBody<'_>,
        chunked: bool,
    ) -> Result<(), ExchangeError> {
        let mut body = std::pin::Pin::new(body);
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.map_err(ExchangeError::ClientBody)?;
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    // Only a chunked body can carry trailer fields on.
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            let mut size = [0; 18];
            let result = if chunked {
                let mut slices = [
                    IoSlice::new(chunk_size_line(data.len(), &mut size)),
                    IoSlice::new(&data),
                    IoSlice::new(b"\r\n"),
                ];
                write_all_slices(&self.stream, &mut slices).await
            } else {
                write_all_slices(&self.stream, &mut [IoSlice::new(&data)]).await
            };
            result.map_err(ExchangeError::Io)?;
        }
        if chunked {
            let mut last = b"0\r\n".to_vec();
            for (name, value) in trailers.iter().flatten() {
                last.extend_from_slice(name.as_str().as_bytes());
                last.extend_from_slice(b": ");
                last.extend_from_slice(value.as_bytes());
                last.extend_from_slice(b"\r\n");
            }
            last.extend_from_slice(b"\r\n");
            self.stream
                .write_all(&last)
                .await
                .map_err(ExchangeError::Io)?;
        }
        Ok(())
    }

    async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, ExchangeError> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = h1::parse_response_head(&mut self.buf, method)? {
                    self.keep_alive = head.keep_alive;
                    return Ok(head);
                }
            }
            // tokio's read drops the socket's readiness after a short read: the probe of
            // is_reusable then costs no syscall.
            self.buf.reserve(READ_CHUNK);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(ExchangeError::Io)?;
            if n == 0 {
                return Err(ExchangeError::Closed);
            }
        }
    }
}
