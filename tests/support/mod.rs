//! Shared harness for the integration tests: misbehaving members ([`Backend`]), the proxy run
//! in-process ([`Proxy`]), config text builders, an HTTP/1.1 client with a timeout on every
//! call ([`Conn`], [`get`], [`send`]) and a raw TCP client ([`raw_exchange`]).
//!
//! Everything listens on `127.0.0.1:0`; every wait is bounded.

// Each test crate uses a different part of the harness.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant, Sleep};

/// Default bound on one client call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one call that moves 100 MiB through a debug build.
pub const BIG_CALL_TIMEOUT: Duration = Duration::from_secs(240);
/// Bodies up to this size are kept whole in [`Recorded::body`].
pub const RECORD_BODY_LIMIT: usize = 64 * 1024;
/// Chunk size of [`PatternBody`] and of the `Download` behaviour.
pub const CHUNK: usize = 64 * 1024;
/// How long a `NoResponse` member holds a request before dropping the socket.
pub const NO_RESPONSE_HOLD: Duration = Duration::from_secs(30);
/// The config text's listen address; [`Proxy::start`] and the binary tests replace it.
pub const LISTEN_PLACEHOLDER: &str = "@LISTEN@";

// ---------------------------------------------------------------------------------------------
// Checksums and the deterministic body pattern
// ---------------------------------------------------------------------------------------------

/// Streaming FNV-1a (64 bit): the same result however the bytes are split into chunks.
#[derive(Debug, Clone, Copy)]
pub struct Hasher {
    state: u64,
    len: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            state: 0xcbf2_9ce4_8422_2325,
            len: 0,
        }
    }
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.state;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.state = h;
        self.len += bytes.len() as u64;
    }

    pub fn finish(&self) -> (u64, u64) {
        (self.len, self.state)
    }
}

pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = Hasher::default();
    h.update(bytes);
    h.finish().1
}

const PATTERN_PERIOD: usize = 251;

fn pattern_block() -> &'static Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BLOCK.get_or_init(|| {
        let v: Vec<u8> = (0..CHUNK + PATTERN_PERIOD)
            .map(|i| (i % PATTERN_PERIOD) as u8 ^ 0x5a)
            .collect();
        Bytes::from(v)
    })
}

/// Bytes `offset..offset+len` of the deterministic pattern (`len <= CHUNK`), without copying.
fn pattern_slice(offset: u64, len: usize) -> Bytes {
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    pattern_block().slice(start..start + len)
}

/// The first `n` bytes of the pattern, as one buffer (for small bodies).
pub fn pattern(n: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(n);
    let mut off = 0u64;
    while (off as usize) < n {
        let len = CHUNK.min(n - off as usize);
        out.extend_from_slice(&pattern_slice(off, len));
        off += len as u64;
    }
    out.freeze()
}

/// `(length, checksum)` of the first `n` bytes of the pattern, computed without holding them.
pub fn pattern_checksum(n: u64) -> (u64, u64) {
    let mut h = Hasher::default();
    let mut off = 0u64;
    while off < n {
        let len = (CHUNK as u64).min(n - off) as usize;
        h.update(&pattern_slice(off, len));
        off += len as u64;
    }
    h.finish()
}

/// A body of `n` pattern bytes generated in [`CHUNK`]-sized frames, with an exact size hint
/// (so it goes out with a `Content-Length`).
pub struct PatternBody {
    offset: u64,
    len: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        PatternBody { offset: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.offset >= self.len {
            return Poll::Ready(None);
        }
        let n = (CHUNK as u64).min(self.len - self.offset) as usize;
        let chunk = pattern_slice(self.offset, n);
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

/// The `i`th chunk a `SlowStream` member sends.
pub fn slow_stream_chunk(i: usize) -> Bytes {
    Bytes::from(format!("chunk-{i:04}|").repeat(100))
}

/// The whole body a `SlowStream { chunks, .. }` member sends.
pub fn slow_stream_body(chunks: usize) -> Bytes {
    let mut out = BytesMut::new();
    for i in 0..chunks {
        out.extend_from_slice(&slow_stream_chunk(i));
    }
    out.freeze()
}

/// Sends chunk 0 at once, then one chunk every `interval`; exact size hint.
struct SlowStreamBody {
    next: usize,
    chunks: usize,
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for SlowStreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next >= self.chunks {
            return Poll::Ready(None);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let chunk = slow_stream_chunk(self.next);
        self.next += 1;
        self.sleep = Some(Box::pin(tokio::time::sleep(self.interval)));
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.chunks
    }

    fn size_hint(&self) -> SizeHint {
        let left: u64 = (self.next..self.chunks)
            .map(|i| slow_stream_chunk(i).len() as u64)
            .sum();
        SizeHint::with_exact(left)
    }
}

type BoxBody = UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).boxed_unsync()
}

// ---------------------------------------------------------------------------------------------
// Backends (cluster members)
// ---------------------------------------------------------------------------------------------

/// How a [`Backend`] answers.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200, `X-Member: <name>`, body `<name>`.
    Normal,
    /// 200, `X-Member: <name>`, body = the request body.
    Echo,
    /// 200, `X-Member: <name>`, `n` bytes of the pattern in 64 KiB chunks.
    Download(u64),
    /// Raw TCP: reads the request head and body, records it, then resets the connection.
    ResetAfterRequest,
    /// Raw TCP: reads the request, records it, then never answers (holds the socket 30 s).
    NoResponse,
    /// Raw TCP: reads the request, records it, sends a head with `Content-Length: 1000000` and
    /// 10 body bytes, then closes.
    DieMidResponse,
    /// Like `Normal`, answered after a delay.
    Slow(Duration),
    /// 200, `X-Member`, `chunks` chunks (see [`slow_stream_chunk`]), one every `interval`.
    SlowStream { chunks: usize, interval: Duration },
    /// Raw TCP: reads each request, records it, and writes `reply` verbatim. Then, with
    /// `keep_open`, waits for the next request on the connection; else closes it (without
    /// saying so in the reply, like a member whose keep-alive timeout just ran out).
    Raw {
        reply: &'static [u8],
        keep_open: bool,
    },
}

/// One request as a member saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target exactly as received (path and query).
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_checksum: u64,
    /// The whole body when it is at most [`RECORD_BODY_LIMIT`] bytes.
    pub body: Option<Bytes>,
    /// False when the body ended in an error (connection closed mid-body).
    pub complete: bool,
    /// The trailer section of a chunked body, as raw lines (raw backends only).
    pub trailers: String,
}

impl Recorded {
    /// All values of a header, in order, as lossy strings.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The values of a header joined with `", "` (the list form), `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values = self.header_values(name);
        if values.is_empty() {
            None
        } else {
            Some(values.join(", "))
        }
    }
}

#[derive(Default)]
struct BackendState {
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
}

impl BackendState {
    fn record(&self, r: Recorded) {
        self.requests.lock().unwrap().push(r);
    }
}

/// Decrements the open-connection count when a connection task ends or is aborted.
struct OpenGuard(Arc<BackendState>);

impl OpenGuard {
    fn new(state: &Arc<BackendState>) -> Self {
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let now = state.open.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_open.fetch_max(now, Ordering::SeqCst);
        OpenGuard(state.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cluster member on `127.0.0.1`. Stops (and drops its connections) when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a member on `127.0.0.1:0`.
    pub async fn start(name: &str, behavior: Behavior) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        Self::serve(name, listener, behavior)
    }

    /// Starts a member on a given address (for a member that comes back on its old port).
    pub async fn start_at(name: &str, addr: SocketAddr, behavior: Behavior) -> Backend {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("bind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind backend {name} on {addr}: {e}"),
            }
        };
        Self::serve(name, listener, behavior)
    }

    /// A member whose address has nothing listening (a port bound, then released).
    pub fn closed(name: &str) -> Backend {
        Backend {
            name: name.to_string(),
            addr: free_addr(),
            state: Arc::default(),
            task: None,
        }
    }

    fn serve(name: &str, listener: TcpListener, behavior: Behavior) -> Backend {
        let addr = listener.local_addr().expect("backend address");
        let state: Arc<BackendState> = Arc::default();
        let task = tokio::spawn(accept_loop(
            listener,
            name.to_string(),
            behavior,
            state.clone(),
        ));
        Backend {
            name: name.to_string(),
            addr,
            state,
            task: Some(task),
        }
    }

    /// TCP connections accepted so far.
    pub fn accepted_connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// The most connections that were open at the same time.
    pub fn max_concurrent_connections(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order (recorded once its body was read).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An address on `127.0.0.1` with nothing listening: a port bound to `:0`, then released.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind for a free port");
    l.local_addr().expect("free port address")
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    behavior: Behavior,
    state: Arc<BackendState>,
) {
    // The set owns every connection task: aborting this task drops the set, which aborts them.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("backend {name}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let guard = OpenGuard::new(&state);
        let name = name.clone();
        let behavior = behavior.clone();
        let state = state.clone();
        conns.spawn(async move {
            let _guard = guard;
            match behavior {
                Behavior::ResetAfterRequest => raw_reset(stream, &state).await,
                Behavior::NoResponse => raw_no_response(stream, &state).await,
                Behavior::DieMidResponse => raw_die_mid_response(stream, &state).await,
                Behavior::Raw { reply, keep_open } => {
                    raw_reply(stream, &state, reply, keep_open).await
                }
                _ => serve_http(stream, name, behavior, state).await,
            }
        });
    }
}

async fn serve_http(stream: TcpStream, name: String, behavior: Behavior, state: Arc<BackendState>) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let name = name.clone();
        let behavior = behavior.clone();
        let state = state.clone();
        async move { Ok::<_, Infallible>(answer(req, &name, &behavior, &state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        eprintln!("backend connection ended with an error: {e}");
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    behavior: &Behavior,
    state: &BackendState,
) -> Response<BoxBody> {
    let (parts, mut body) = req.into_parts();
    let keep = matches!(behavior, Behavior::Echo);
    let mut hasher = Hasher::default();
    let mut kept = BytesMut::new();
    let mut complete = true;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    hasher.update(&data);
                    if keep || kept.len() + data.len() <= RECORD_BODY_LIMIT {
                        kept.extend_from_slice(&data);
                    }
                }
            }
            Some(Err(_)) => {
                complete = false;
                break;
            }
        }
    }
    let (body_len, body_checksum) = hasher.finish();
    let kept = kept.freeze();
    state.record(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len,
        body_checksum,
        body: (body_len as usize <= RECORD_BODY_LIMIT).then(|| kept.clone()),
        complete,
        trailers: String::new(),
    });
    if !complete {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("incomplete body"))
            .unwrap();
    }
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header("x-member", name);
    match behavior {
        Behavior::Normal => builder.body(full(name.to_string())).unwrap(),
        Behavior::Echo => builder.body(full(kept)).unwrap(),
        Behavior::Download(n) => builder
            .header("content-length", n.to_string())
            .body(PatternBody::new(*n).boxed_unsync())
            .unwrap(),
        Behavior::Slow(d) => {
            tokio::time::sleep(*d).await;
            builder.body(full(name.to_string())).unwrap()
        }
        Behavior::SlowStream { chunks, interval } => {
            let body = SlowStreamBody {
                next: 0,
                chunks: *chunks,
                interval: *interval,
                sleep: None,
            };
            let len = body.size_hint().exact().unwrap_or(0);
            builder
                .header("content-length", len.to_string())
                .body(body.boxed_unsync())
                .unwrap()
        }
        Behavior::ResetAfterRequest
        | Behavior::NoResponse
        | Behavior::DieMidResponse
        | Behavior::Raw { .. } => {
            unreachable!("raw behaviours are not served by hyper")
        }
    }
}

/// Reads one HTTP/1.1 request (head, then a `Content-Length` or chunked body) from a raw socket
/// and records it. `None` when the peer closed before a whole head arrived.
async fn read_raw_request(stream: &mut TcpStream, state: &BackendState) -> Option<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let uri = request_line.next().unwrap_or("").to_string();
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((n, v)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            ) {
                headers.append(n, v);
            }
        }
    }
    let mut rest = buf[head_end..].to_vec();
    let chunked = headers.get_all("transfer-encoding").iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("chunked")
    });
    let mut trailers = String::new();
    let (body, complete) = if chunked {
        read_chunked(stream, &mut rest, &mut trailers).await
    } else {
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut complete = true;
        while rest.len() < len {
            let mut chunk = vec![0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    complete = false;
                    break;
                }
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        rest.truncate(len);
        (rest, complete)
    };
    let mut h = Hasher::default();
    h.update(&body);
    let (body_len, body_checksum) = h.finish();
    state.record(Recorded {
        method,
        uri,
        headers,
        body_len,
        body_checksum,
        body: (body.len() <= RECORD_BODY_LIMIT).then(|| Bytes::from(body)),
        complete,
        trailers,
    });
    Some(())
}

/// Decodes a chunked body from `buf` plus whatever more the socket sends. Returns the body and
/// whether the last chunk arrived; the trailer lines go to `trailers`.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    trailers: &mut String,
) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    let mut pos = 0usize;
    loop {
        // chunk-size line
        let line_end = loop {
            if let Some(i) = find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            if !fill(stream, buf).await {
                return (body, false);
            }
        };
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (body, false);
        };
        pos = line_end + 2;
        if size == 0 {
            // trailers up to the empty line
            loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    if i == 0 {
                        return (body, true);
                    }
                    trailers.push_str(&String::from_utf8_lossy(&buf[pos..pos + i + 2]));
                    pos += i + 2;
                    continue;
                }
                if !fill(stream, buf).await {
                    return (body, false);
                }
            }
        }
        while buf.len() < pos + size + 2 {
            if !fill(stream, buf).await {
                return (body, false);
            }
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn raw_reset(mut stream: TcpStream, state: &BackendState) {
    read_raw_request(&mut stream, state).await;
    // RST instead of FIN.
    if let Err(e) = stream.set_zero_linger() {
        eprintln!("set_linger: {e}");
    }
    drop(stream);
}

async fn raw_reply(mut stream: TcpStream, state: &BackendState, reply: &[u8], keep_open: bool) {
    while read_raw_request(&mut stream, state).await.is_some() {
        if stream.write_all(reply).await.is_err() || !keep_open {
            break;
        }
    }
    // Dropping the stream closes it (FIN): the proxy must notice before it reuses it.
}

async fn raw_no_response(mut stream: TcpStream, state: &BackendState) {
    if read_raw_request(&mut stream, state).await.is_some() {
        // Hold the socket without answering; stop early if the proxy gives up and closes.
        let mut sink = [0u8; 1024];
        let deadline = Instant::now() + NO_RESPONSE_HOLD;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    }
}

async fn raw_die_mid_response(mut stream: TcpStream, state: &BackendState) {
    if read_raw_request(&mut stream, state).await.is_some() {
        let head = "HTTP/1.1 200 OK\r\nx-member: dying\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\n0123456789";
        if stream.write_all(head.as_bytes()).await.is_ok() {
            let _flushed = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config text
// ---------------------------------------------------------------------------------------------

/// One `[[cluster.NAME.member]]` entry.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub clone_id: String,
    pub addr: SocketAddr,
    /// Extra `key = value` lines (weight, role, io_timeout, …).
    pub extra: String,
}

/// A member entry for a backend: name and address from the backend.
pub fn member(backend: &Backend, clone_id: &str, extra: &str) -> MemberSpec {
    MemberSpec {
        name: backend.name.clone(),
        clone_id: clone_id.to_string(),
        addr: backend.addr,
        extra: extra.to_string(),
    }
}

/// The TOML of one member of cluster `cluster`.
pub fn member_toml(cluster: &str, m: &MemberSpec) -> String {
    format!(
        "[[cluster.{cluster}.member]]\nname = \"{}\"\nclone_id = \"{}\"\naddress = \"{}\"\n{}\n\n",
        m.name, m.clone_id, m.addr, m.extra
    )
}

/// `[proxy]` with the listen placeholder and extra lines.
pub fn proxy_toml(extra: &str) -> String {
    format!("[proxy]\nlisten = [\"{LISTEN_PLACEHOLDER}\"]\n{extra}\n\n")
}

/// One `[[route]]`.
pub fn route_toml(hosts: &[&str], paths: &[&str], cluster: &str) -> String {
    let list = |xs: &[&str]| {
        xs.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[route]]\nhosts = [{}]\npaths = [{}]\ncluster = \"{cluster}\"\n\n",
        list(hosts),
        list(paths)
    )
}

/// A cluster: its own keys, its affinity keys, its members.
pub fn cluster_toml(name: &str, extra: &str, affinity: &str, members: &[MemberSpec]) -> String {
    let mut s = format!("[cluster.{name}]\n{extra}\n\n[cluster.{name}.affinity]\n{affinity}\n\n");
    for m in members {
        s.push_str(&member_toml(name, m));
    }
    s
}

/// The common shape: one catch-all route to cluster `app`.
pub fn config(
    proxy_extra: &str,
    cluster_extra: &str,
    affinity: &str,
    members: &[MemberSpec],
) -> String {
    let mut s = proxy_toml(proxy_extra);
    s.push_str(&route_toml(&["*"], &["/*"], "app"));
    s.push_str(&cluster_toml("app", cluster_extra, affinity, members));
    s
}

// ---------------------------------------------------------------------------------------------
// The proxy, in-process
// ---------------------------------------------------------------------------------------------

/// `tether::server::serve` on a listener bound to `127.0.0.1:0`. Stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Proxy {
    /// Parses the config (after putting the bound address in place of [`LISTEN_PLACEHOLDER`])
    /// and starts serving. Panics with the parser's message when the config is rejected.
    pub async fn start(config_text: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        Proxy::start_on(listener, config_text)
    }

    /// [`Proxy::start`] on a listener the caller bound.
    pub fn start_on(listener: TcpListener, config_text: &str) -> Proxy {
        let addr = listener.local_addr().expect("proxy address");
        let text = config_text.replace(LISTEN_PLACEHOLDER, &addr.to_string());
        let config = tether::config::Config::parse(&text)
            .unwrap_or_else(|e| panic!("config rejected: {e}\n--- config ---\n{text}"));
        let (tx, rx) = oneshot::channel::<()>();
        let signal = async move {
            // A dropped sender also means "shut down".
            rx.await.ok();
        };
        let task = tokio::spawn(tether::server::serve(vec![listener], config, signal));
        Proxy {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Fires the shutdown signal without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The receiver is gone only if serve already returned; nothing to signal then.
            tx.send(()).ok();
        }
    }

    /// Waits (at most `limit`) for `serve` to return; panics on timeout or a panic inside it.
    pub async fn join(&mut self, limit: Duration) -> io::Result<()> {
        let task = self.task.take().expect("proxy already joined");
        match timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("serve panicked or was cancelled: {e}"),
            Err(_) => panic!("serve did not return within {limit:?} of the shutdown signal"),
        }
    }

    /// Whether `serve` has returned.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Signals shutdown and waits for `serve` to return (bounded by `limit`).
    pub async fn shutdown(mut self, limit: Duration) -> io::Result<()> {
        self.begin_shutdown();
        self.join(limit).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The `X-Member` header (which member answered), or `""`.
    pub fn member(&self) -> &str {
        self.header("x-member").unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request body for [`Conn::send`].
pub enum ReqBody {
    Empty,
    Bytes(Bytes),
    /// `n` pattern bytes generated on the fly (Content-Length set).
    Pattern(u64),
}

impl ReqBody {
    fn into_box(self) -> BoxBody {
        match self {
            ReqBody::Empty => full(Bytes::new()),
            ReqBody::Bytes(b) => full(b),
            ReqBody::Pattern(n) => PatternBody::new(n).boxed_unsync(),
        }
    }
}

impl From<&str> for ReqBody {
    fn from(s: &str) -> Self {
        ReqBody::Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<Bytes> for ReqBody {
    fn from(b: Bytes) -> Self {
        ReqBody::Bytes(b)
    }
}

impl From<Vec<u8>> for ReqBody {
    fn from(b: Vec<u8>) -> Self {
        ReqBody::Bytes(Bytes::from(b))
    }
}

/// One client connection (HTTP/1.1 keep-alive) to the proxy.
pub struct Conn {
    addr: SocketAddr,
    /// Bound on each call (head and body); [`CALL_TIMEOUT`] unless changed.
    pub timeout: Duration,
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
    driver: JoinHandle<()>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = timeout(CALL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("client connection ended with an error: {e}");
            }
        });
        Ok(Conn {
            addr,
            timeout: CALL_TIMEOUT,
            sender,
            driver,
        })
    }

    /// Sends a request and returns the response head with its body still streaming.
    /// Adds `Host: <proxy address>` unless `headers` has a Host.
    pub async fn send_streaming(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<Response<Incoming>, String> {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
            .uri(path);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            builder = builder.header("host", self.addr.to_string());
        }
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let req = builder
            .body(body.into_box())
            .map_err(|e| format!("bad request: {e}"))?;
        let call = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            self.sender
                .send_request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))
        };
        let limit = self.timeout;
        timeout(limit, call)
            .await
            .map_err(|_| format!("no response head within {limit:?}"))?
    }

    /// Sends a request and reads the whole response (within `self.timeout`).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<Reply, String> {
        let started = Instant::now();
        let resp = self.send_streaming(method, path, headers, body).await?;
        let left = self.timeout.saturating_sub(started.elapsed());
        read_reply(resp, left).await
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.send("GET", path, headers, ReqBody::Empty).await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads a response body to the end, within `limit`.
pub async fn read_reply(resp: Response<Incoming>, limit: Duration) -> Result<Reply, String> {
    let (parts, body) = resp.into_parts();
    let collected = timeout(limit, body.collect())
        .await
        .map_err(|_| format!("response body not complete within {limit:?}"))?
        .map_err(|e| format!("response body aborted: {e}"))?;
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
    })
}

/// Reads a response body to the end without keeping it: `(length, checksum)`, within `limit`.
pub async fn hash_body(body: &mut Incoming, limit: Duration) -> Result<(u64, u64), String> {
    let mut h = Hasher::default();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("response body aborted: {e}"))?;
            if let Ok(data) = frame.into_data() {
                h.update(&data);
            }
        }
        Ok::<_, String>(())
    };
    timeout(limit, read)
        .await
        .map_err(|_| format!("response body not complete within {limit:?}"))??;
    Ok(h.finish())
}

/// One request on a fresh connection; `Err` for anything but a whole response.
pub async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<ReqBody>,
) -> Result<Reply, String> {
    let mut conn = Conn::open(addr).await?;
    conn.send(method, path, headers, body.into()).await
}

/// One request on a fresh connection; panics unless a whole response arrives.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<ReqBody>,
) -> Reply {
    try_send(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A GET on a fresh connection; panics unless a whole response arrives.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", path, headers, ReqBody::Empty).await
}

/// A GET carrying `Cookie: JSESSIONID=<value>`.
pub async fn get_with_session(addr: SocketAddr, session: &str) -> Reply {
    let cookie = format!("JSESSIONID={session}");
    get(addr, "/", &[("cookie", &cookie)]).await
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

/// Connects, writes `bytes`, and reads until the peer closes, an error, or `wait` passes.
/// Returns whatever was read.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .expect("raw connect timed out")
        .expect("raw connect");
    // The proxy may answer and close before reading everything; keep what it said.
    if let Err(e) = stream.write_all(bytes).await {
        eprintln!("raw write: {e}");
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The status code of the first response in raw bytes (`HTTP/1.x NNN ...`).
pub fn raw_status(resp: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(resp.get(..12)?).ok()?;
    if !text.starts_with("HTTP/1.") {
        return None;
    }
    text.get(9..12)?.parse().ok()
}

/// All status codes of the responses in raw bytes (counts each `HTTP/1.x NNN` at a line start).
pub fn raw_statuses(resp: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&resp[i..], b"HTTP/1.") {
        let at = i + pos;
        if at == 0 || resp[at - 1] == b'\n' {
            if let Some(s) = raw_status(&resp[at..]) {
                out.push(s);
            }
        }
        i = at + 7;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// How many replies came from each of `names`, in that order.
pub fn tally(replies: &[Reply], names: &[&str]) -> Vec<usize> {
    names
        .iter()
        .map(|n| replies.iter().filter(|r| r.member() == *n).count())
        .collect()
}

/// Asserts the response is an error response of the proxy: status, `text/plain`, short non-empty
/// body.
pub fn assert_plain_error(reply: &Reply, status: u16) {
    assert_eq!(
        reply.status,
        status,
        "expected {status}, got {} with body {:?}",
        reply.status,
        reply.text()
    );
    let ct = reply.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain"),
        "a {status} carries a text/plain body, got content-type {ct:?}"
    );
    assert!(
        !reply.body.is_empty() && reply.body.len() < 1024,
        "a {status} carries a short body, got {} bytes",
        reply.body.len()
    );
    assert!(
        reply.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "a {status} made by the proxy carries a Date"
    );
}

/// Waits until `addr` accepts a TCP connection (at most `limit`).
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Ok(_)) = timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
