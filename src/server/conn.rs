//! One client connection: read a request head, let the proxy answer it, write the response,
//! and again while the client keeps the connection alive. All in the connection's one task.
//!
//! Between requests the connection holds no buffer (it is allocated when bytes arrive), so an
//! idle keep-alive connection costs little more than its task and socket.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout_at, Duration, Instant};

use super::h1::{self, HeadError, RequestFraming, RequestHead, ResponseFraming};
use crate::proxy::body::{
    chunk_size_line, poll_fill, try_fill, write_all_slices, BodyError, ClientBodyError,
    ReadBuffered, Remaining, ResponseBody,
};
use crate::proxy::error::ProxyError;
use crate::proxy::headers::ClientConn;
use crate::proxy::timer::{Deadline, Timers};
use crate::proxy::Proxy;
use crate::upstream::h1::Chunked;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 8 * 1024;
/// A connection closed with request bytes unread is drained this long, this much, at most.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;
/// Read buffers kept for reuse by each runtime thread (see [`take_buffer`]).
const SPARE_BUFFERS: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer for a connection that has bytes to read. An idle connection holds none, and
/// a busy one should not pay malloc and free for 8 KiB on every request: buffers go back to a
/// small per-thread list between requests (memory bounded per thread, not per connection).
fn take_buffer() -> BytesMut {
    SPARE
        .with_borrow_mut(|spare| spare.pop())
        .unwrap_or_default()
}

fn give_back(mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() >= READ_CHUNK / 2 && buf.capacity() <= 8 * READ_CHUNK {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        });
    }
}

/// The client's socket and what was read from it and not consumed yet.
pub struct ClientStream {
    stream: TcpStream,
    buf: BytesMut,
    /// TCP_NODELAY is set: done before the first response that keeps the connection open.
    nodelay: bool,
}

impl ReadBuffered for ClientStream {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        poll_fill(&self.stream, &mut self.buf, cx, want, READ_CHUNK)
    }
}

impl ClientStream {
    /// Reads what a new connection's client has sent already. tokio takes an accepted socket
    /// for readable, so this tries the socket before the event loop has reported it; with
    /// deferred accept (`proxy.defer_accept`) the request is usually there. When nothing is
    /// there yet, `WouldBlock` clears that (and only that: an event that came
    /// meanwhile is kept), and the next read waits for the event loop instead of trying the
    /// socket a second time. `Ok(0)`: the client closed it.
    fn read_early(&mut self) -> io::Result<usize> {
        self.buf = take_buffer();
        let read = try_fill(&self.stream, &mut self.buf, READ_CHUNK);
        if self.buf.is_empty() {
            // Nothing came: a connection that says nothing holds no buffer.
            give_back(std::mem::take(&mut self.buf));
        }
        read
    }

    /// Waits for bytes; the buffer is allocated only once some have arrived.
    async fn fill(&mut self) -> io::Result<usize> {
        loop {
            self.stream.readable().await?;
            if self.buf.capacity() == 0 {
                self.buf = take_buffer();
            }
            match try_fill(&self.stream, &mut self.buf, READ_CHUNK) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

/// The connection as the request pipeline sees it: the stream and where the body stands.
pub struct ClientIo {
    conn: ClientStream,
    body: Remaining,
    /// `Expect: 100-continue`: bytes of the go-ahead still to send before the body is read.
    continue_left: usize,
    /// The trailer section of a chunked body, as read.
    trailers: Vec<u8>,
}

/// The request body, read from the client connection as the pipeline asks for it.
pub struct ClientBody<'a> {
    io: &'a mut ClientIo,
}

impl Body for ClientBody<'_> {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let io = &mut *self.get_mut().io;
        while io.continue_left > 0 {
            let sent = CONTINUE.len() - io.continue_left;
            match Pin::new(&mut io.conn.stream).poll_write(cx, &CONTINUE[sent..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => io.continue_left -= n,
                Poll::Ready(Ok(_)) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Some(Err(ClientBodyError::Aborted(BodyError::Io(e)))));
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Some(Err(ClientBodyError::Aborted(BodyError::Io(e)))))
                }
            }
        }
        let next =
            ready!(io
                .body
                .poll_next_keeping_trailers(&mut io.conn, cx, Some(&mut io.trailers)));
        Poll::Ready(match next {
            Some(data) => Some(data.map(Frame::data).map_err(ClientBodyError::Aborted)),
            // A chunked body's trailer fields follow its data (streamed bodies pass them on).
            None if !io.trailers.is_empty() => {
                let section = std::mem::take(&mut io.trailers);
                h1::parse_trailers(&section).map(|fields| Ok(Frame::trailers(fields)))
            }
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.io.body.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.io.body.size_hint()
    }
}

/// Serves one client connection until it closes, the client or a framing rule ends it, or
/// shutdown: `stop` ends it once it is idle, `kill` (the grace period is over) at once.
/// `_running` is dropped when the connection ends (shutdown waits for all of them).
pub async fn serve_client(
    stream: TcpStream,
    proxy: Arc<Proxy>,
    info: ClientConn,
    stop: watch::Receiver<bool>,
    kill: watch::Receiver<bool>,
    _running: mpsc::Sender<()>,
) {
    let mut io = ClientIo {
        conn: ClientStream {
            stream,
            buf: BytesMut::new(),
            nodelay: false,
        },
        body: Remaining::Done,
        continue_left: 0,
        trailers: Vec::new(),
    };
    // One timer of each kind and one watch on each signal for the connection's life, rather
    // than one per request (see proxy::timer). `stop` still answers "stopping?" at once.
    let mut timers = Timers::default();
    let mut stop_watch = stop.clone();
    let mut stopped = pin!(stop_watch.changed());
    let mut kill_watch = kill.clone();
    let mut killed = pin!(kill_watch.changed());
    match io.conn.read_early() {
        Ok(0) => return,
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
        _ => {}
    }
    loop {
        if io.conn.buf.is_empty() && *stop.borrow() {
            return;
        }
        let head = match read_head(&mut io.conn, &proxy, stopped.as_mut(), &mut timers.client).await
        {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                let error = match e {
                    HeadError::TooLarge => ProxyError::HeadersTooLarge,
                    HeadError::Bad(why) => {
                        tracing::debug!(client = %info.client, why, "malformed request");
                        ProxyError::MalformedRequest
                    }
                };
                let response = error.respond(true);
                match write_response(&mut io.conn, response, false, Version::HTTP_11, false).await {
                    Ok(_) => linger_close(io.conn.stream).await,
                    Err(e) => {
                        tracing::debug!(client = %info.client, error = %e, "writing the error response failed")
                    }
                }
                return;
            }
        };
        let RequestHead {
            request,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let head_only = request.method() == Method::HEAD;
        let version = request.version();
        io.body = match framing {
            RequestFraming::Empty => Remaining::Done,
            RequestFraming::Length(n) => Remaining::Length(n),
            RequestFraming::Chunked => Remaining::Chunked(Chunked::new()),
        };
        io.continue_left = if expect_continue && !io.body.is_done() {
            CONTINUE.len()
        } else {
            0
        };
        let keep = {
            let mut served = pin!(async {
                let response = proxy
                    .handle(request, ClientBody { io: &mut io }, &info, &mut timers)
                    .await;
                // A body not read to its end leaves no way to find the next request.
                let keep_alive = keep_alive && io.body.is_done() && !*stop.borrow();
                if keep_alive && !io.conn.nodelay {
                    // As nginx's tcp_nodelay: a response the connection outlives must not
                    // wait for an ACK (Nagle) before its last segment goes. One that ends the
                    // connection is pushed out by the close, and saves the syscall.
                    io.conn.nodelay = true;
                    if let Err(e) = io.conn.stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                }
                let clean = write_response(&mut io.conn, response, head_only, version, keep_alive)
                    .await
                    .unwrap_or(false);
                clean && keep_alive
            });
            // Polled in place: select! would move the whole request future into its own state.
            std::future::poll_fn(|cx| {
                if let Poll::Ready(keep) = served.as_mut().poll(cx) {
                    return Poll::Ready(keep);
                }
                killed.as_mut().poll(cx).map(|_| false)
            })
            .await
        };
        if !keep {
            // A connection per request should not cost an 8 KiB malloc and free each.
            give_back(std::mem::take(&mut io.conn.buf));
            if !io.body.is_done() && !*kill.borrow() {
                linger_close(io.conn.stream).await;
            }
            return;
        }
        if io.conn.buf.is_empty() {
            // Idle until the next request: the buffer goes back until bytes come.
            give_back(std::mem::take(&mut io.conn.buf));
        }
    }
}

/// Reads the next request head, within `request_timeout`. `Ok(None)`: the client closed the
/// connection, said nothing in time, or the proxy is stopping and the connection is idle.
/// `stopped` completes when the proxy starts to stop.
async fn read_head(
    conn: &mut ClientStream,
    proxy: &Proxy,
    mut stopped: Pin<&mut impl Future>,
    timer: &mut Deadline,
) -> Result<Option<RequestHead>, HeadError> {
    let deadline = Instant::now() + proxy.settings.request_timeout;
    loop {
        if !conn.buf.is_empty() {
            if let Some(head) =
                h1::parse_request_head(&mut conn.buf, proxy.settings.max_header_bytes)?
            {
                return Ok(Some(head));
            }
        }
        let idle = conn.buf.is_empty();
        tokio::select! {
            biased;
            read = conn.fill() => match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            },
            _ = stopped.as_mut(), if idle => return Ok(None),
            _ = timer.until(deadline) => return Ok(None),
        }
    }
}

/// Writes a response; `Ok(true)` when it went out whole and the connection may carry more.
async fn write_response(
    conn: &mut ClientStream,
    response: Response<ResponseBody>,
    head_only: bool,
    client: Version,
    keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let mut head = Vec::with_capacity(512);
    let framing = h1::encode_response_head(
        &mut head,
        parts.status,
        &parts.headers,
        body.take_header_lines(),
        body.size_hint().exact(),
        head_only,
        client,
        keep_alive,
    );
    if framing == ResponseFraming::None {
        write_all_slices(&conn.stream, &mut [IoSlice::new(&head)]).await?;
        // Nothing of the body belongs on the wire; a member body left unread only closes its
        // member connection (the lease is dropped with it).
        return Ok(true);
    }
    let chunked = framing == ResponseFraming::Chunked;
    let mut pending: &[u8] = &head;
    loop {
        // The first piece of body goes out with the head when it is already there.
        let frame = if pending.is_empty() {
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        } else {
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write_all_slices(&conn.stream, &mut [IoSlice::new(pending)]).await?;
                    pending = &[];
                    continue;
                }
            }
        };
        match frame {
            None => {
                let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
                write_all_slices(
                    &conn.stream,
                    &mut [IoSlice::new(pending), IoSlice::new(end)],
                )
                .await?;
                return Ok(framing != ResponseFraming::Close);
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "member response failed mid-body; aborting the client's");
                return Ok(false);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // response trailers are not passed on
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let mut size = [0; 18];
                    let mut slices = [
                        IoSlice::new(pending),
                        IoSlice::new(chunk_size_line(data.len(), &mut size)),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ];
                    write_all_slices(&conn.stream, &mut slices).await?;
                } else {
                    write_all_slices(
                        &conn.stream,
                        &mut [IoSlice::new(pending), IoSlice::new(&data)],
                    )
                    .await?;
                }
                pending = &[];
            }
        }
    }
}

/// Closes a connection that has request bytes still unread: FIN first, then what the client
/// still sends is read and dropped for a moment, so the kernel does not answer it with a reset
/// that could destroy the response in flight (nginx's lingering close).
async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = vec![0u8; 16 * 1024];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}
