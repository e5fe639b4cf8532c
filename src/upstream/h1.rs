//! The member side of HTTP/1.1, as a proxy needs it: write a request head, parse a response
//! head, frame the response body (RFC 9112 §6.3). Synchronous and allocation-light, so the
//! exchange runs inside the client's task with no hand-off to a connection task.
//!
//! Response header values are slices of the one buffer the head was read into (no copy per
//! header); hop-by-hop headers are left out while the map is built.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, StatusCode, Version};

use crate::proxy::headers::Added;

/// A response head larger than this is refused (the member is broken).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// As hyper's client: more header fields than this are refused. At most 128: the fields left
/// out are marked in a `u128`.
const MAX_HEADERS: usize = 100;
const _: () = assert!(MAX_HEADERS <= 128);

/// What is wrong with what a member sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("101 Switching Protocols was not asked for")]
    UnexpectedUpgrade,
    #[error("different Content-Length values")]
    ContentLength,
    #[error("invalid chunked encoding")]
    Chunked,
}

/// Writes the request line and headers for a member: the client's `headers` as rewritten, the
/// proxy's `added` ones, and `extra`, a framing header the body needs and the client's headers
/// do not carry (chunked).
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    added: &Added<'_>,
    extra: Option<&[u8]>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    added.write_to(out);
    if let Some(extra) = extra {
        out.extend_from_slice(extra);
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the member closes the connection (which then cannot be reused).
    Close,
}

/// A parsed response head.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// Without the hop-by-hop headers.
    pub headers: HeaderLines,
    pub framing: Framing,
    /// The member lets the connection carry another request.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: not complete yet, read more.
/// Interim (1xx) responses are consumed and skipped. On success the head's bytes are taken out
/// of `buf`; what follows (the start of the body) stays.
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, ProtocolError> {
    loop {
        // Uninitialised slots: initialising 100 of them cost more than parsing a small head.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(ProtocolError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProtocolError::Head("too many headers"))
            }
            Err(_) => return Err(ProtocolError::Head("malformed")),
        };
        let code = response.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| ProtocolError::Head("invalid status"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtocolError::UnexpectedUpgrade);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: the final response follows.
            buf.advance(len);
            continue;
        }
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut head = build(
            &buf[..len],
            response.headers,
            status,
            version,
            request_method,
        )?;
        // The lines are offsets into the head, which is taken out of the buffer now.
        head.headers.head = buf.split_to(len).freeze();
        return Ok(Some(head));
    }
}

/// The response head parsed from `head` (the header lines are offsets into it, their `head` not
/// set yet).
fn build(
    head: &[u8],
    fields: &[httparse::Header<'_>],
    status: StatusCode,
    version: Version,
    request_method: &Method,
) -> Result<ResponseHead, ProtocolError> {
    // Bit i set: field i does not go on to the client.
    let mut dropped: u128 = 0;
    let mut content_length: Option<u64> = None;
    let mut length_field: u128 = 0;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut connection_names = false;
    for (i, field) in fields.iter().enumerate() {
        let (name, value) = (field.name.as_bytes(), field.value);
        let bit = 1u128 << i;
        match classify(name) {
            Field::ContentLength => {
                let n = parse_content_length(value)?;
                if content_length.is_some_and(|old| old != n) {
                    return Err(ProtocolError::ContentLength);
                }
                content_length = Some(n);
                length_field |= bit;
            }
            Field::TransferEncoding => {
                transfer_encoding = true;
                // Only the last coding decides (RFC 9112 §6.3).
                chunked = last_token(value).eq_ignore_ascii_case(b"chunked");
                dropped |= bit;
            }
            Field::Connection => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if !token.is_empty() {
                        connection_names = true;
                    }
                }
                dropped |= bit;
            }
            Field::HopByHop => dropped |= bit,
            Field::Other => {}
        }
    }
    if connection_names {
        // Rare: the member named headers of its own in Connection; they go too.
        for field in fields {
            if classify(field.name.as_bytes()) != Field::Connection {
                continue;
            }
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                for (i, named) in fields.iter().enumerate() {
                    if named.name.as_bytes().eq_ignore_ascii_case(token) {
                        dropped |= 1 << i;
                    }
                }
            }
        }
    }
    if transfer_encoding {
        // A message with both is framed by Transfer-Encoding; its Content-Length is wrong.
        dropped |= length_field;
    }

    let no_body = request_method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive =
        !close && framing != Framing::Close && (version == Version::HTTP_11 || keep_alive_token);
    let has_length = length_field & !dropped != 0;
    Ok(ResponseHead {
        status,
        version,
        headers: HeaderLines::new(head, fields, dropped, has_length),
        framing,
        keep_alive,
    })
}

/// What a response header field means to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    /// The other hop-by-hop fields ([`crate::proxy::headers::HOP_BY_HOP`]).
    HopByHop,
    Other,
}

fn classify(name: &[u8]) -> Field {
    // By length first: most names are compared with nothing.
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match name.len() {
        14 if is(b"content-length") => Field::ContentLength,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::HopByHop,
        16 if is(b"proxy-connection") => Field::HopByHop,
        2 if is(b"te") => Field::HopByHop,
        7 if is(b"trailer") || is(b"upgrade") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// How many runs of consecutive passed lines a head keeps as ranges before the rest is copied.
const RANGES: usize = 6;

/// The member's header lines that go on to the client, as the member sent them: runs of lines
/// of the head (most heads need one to three), so nothing is parsed into a map only to be
/// written out again.
pub struct HeaderLines {
    head: Bytes,
    ranges: [(u32, u32); RANGES],
    count: usize,
    /// The lines after the ranges ran out or after a line that did not end in CRLF, written
    /// anew as `name: value\r\n`.
    rest: Vec<u8>,
    content_length: bool,
}

impl HeaderLines {
    /// The lines of `fields` not `dropped`, as offsets into `head` (which they were parsed
    /// from); the caller sets [`HeaderLines::head`].
    fn new(
        head: &[u8],
        fields: &[httparse::Header<'_>],
        dropped: u128,
        content_length: bool,
    ) -> HeaderLines {
        let mut lines = HeaderLines {
            content_length,
            ..HeaderLines::none()
        };
        let base = head.as_ptr() as usize;
        let mut spilled = false;
        for (i, field) in fields.iter().enumerate() {
            if dropped & (1 << i) != 0 {
                continue;
            }
            // (An empty value's slice still points into the head; a slice from elsewhere would
            // fail the CRLF check below and be copied.)
            let ns = (field.name.as_ptr() as usize).wrapping_sub(base) as u32;
            let ve = (field.value.as_ptr() as usize)
                .wrapping_sub(base)
                .wrapping_add(field.value.len());
            // httparse leaves trailing blanks out of the value; the line ends after them.
            let mut end = ve;
            while matches!(head.get(end), Some(b' ' | b'\t')) {
                end += 1;
            }
            let crlf = head.get(end..end + 2) == Some(b"\r\n");
            if !spilled && crlf {
                let line = (ns, end as u32 + 2);
                if lines.count > 0 && lines.ranges[lines.count - 1].1 == ns {
                    lines.ranges[lines.count - 1].1 = line.1;
                    continue;
                }
                if lines.count < RANGES {
                    lines.ranges[lines.count] = line;
                    lines.count += 1;
                    continue;
                }
            }
            // From here on every line is copied, so the fields keep their order.
            spilled = true;
            lines.rest.extend_from_slice(field.name.as_bytes());
            lines.rest.extend_from_slice(b": ");
            lines.rest.extend_from_slice(field.value);
            lines.rest.extend_from_slice(b"\r\n");
        }
        lines
    }

    /// No lines at all (a response made by the proxy).
    pub fn none() -> HeaderLines {
        HeaderLines {
            head: Bytes::new(),
            ranges: [(0, 0); RANGES],
            count: 0,
            rest: Vec::new(),
            content_length: false,
        }
    }

    /// Appends the lines, each ending in CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for &(start, end) in &self.ranges[..self.count] {
            out.extend_from_slice(&self.head[start as usize..end as usize]);
        }
        out.extend_from_slice(&self.rest);
    }

    /// A `Content-Length` is among the lines.
    pub fn has_content_length(&self) -> bool {
        self.content_length
    }
}

pub(crate) fn parse_content_length(value: &[u8]) -> Result<u64, ProtocolError> {
    // `Content-Length: 5, 5` is one length said twice (RFC 9110 §8.6).
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(ProtocolError::ContentLength);
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|old| old != n) {
            return Err(ProtocolError::ContentLength);
        }
        found = Some(n);
    }
    found.ok_or(ProtocolError::ContentLength)
}

pub(crate) fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or(b"")
        .trim_ascii()
}

/// The chunked-body decoder (RFC 9112 §7.1). Chunk extensions are ignored; trailer fields are
/// read and dropped (a proxy that passes them on would have to know the client asked for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: an extension, up to the CR.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// What the decoder made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    More,
    Done,
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked::Size { size: 0, digits: 0 }
    }

    /// Advances over `buf`, taking what it consumes. Returns data as soon as some is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        self.decode_keeping_trailers(buf, None)
    }

    /// [`Chunked::decode`], and the trailer section (its lines and the empty line that ends
    /// it, as sent) goes to `trailers` when there is one to keep it in.
    pub fn decode_keeping_trailers(
        &mut self,
        buf: &mut BytesMut,
        mut trailers: Option<&mut Vec<u8>>,
    ) -> Result<Step, ProtocolError> {
        loop {
            if let Chunked::Data { left } = *self {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(n).freeze();
                *self = if left == n as u64 {
                    Chunked::DataCr
                } else {
                    Chunked::Data {
                        left: left - n as u64,
                    }
                };
                return Ok(Step::Data(data));
            }
            if *self == Chunked::Done {
                return Ok(Step::Done);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            if let (
                Some(sink),
                Chunked::TrailerStart | Chunked::Trailer | Chunked::TrailerLf { .. },
            ) = (trailers.as_deref_mut(), *self)
            {
                if sink.len() < MAX_HEAD_BYTES {
                    sink.push(byte);
                }
            }
            *self = self.next(byte)?;
        }
    }

    fn next(self, byte: u8) -> Result<Chunked, ProtocolError> {
        let bad = Err(ProtocolError::Chunked);
        Ok(match self {
            Chunked::Size { size, digits } => match byte {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 15 {
                        return bad;
                    }
                    let d = (byte as char).to_digit(16).expect("hex digit") as u64;
                    Chunked::Size {
                        size: size * 16 + d,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return bad,
                b'\r' => Chunked::SizeLf { size },
                b';' | b' ' | b'\t' => Chunked::Extension { size },
                _ => return bad,
            },
            Chunked::Extension { size } => match byte {
                b'\r' => Chunked::SizeLf { size },
                b'\n' => return bad,
                _ => Chunked::Extension { size },
            },
            Chunked::SizeLf { size } => match byte {
                b'\n' if size == 0 => Chunked::TrailerStart,
                b'\n' => Chunked::Data { left: size },
                _ => return bad,
            },
            Chunked::DataCr => match byte {
                b'\r' => Chunked::DataLf,
                _ => return bad,
            },
            Chunked::DataLf => match byte {
                b'\n' => Chunked::new(),
                _ => return bad,
            },
            Chunked::TrailerStart => match byte {
                b'\r' => Chunked::TrailerLf { empty: true },
                b'\n' => return bad,
                _ => Chunked::Trailer,
            },
            Chunked::Trailer => match byte {
                b'\r' => Chunked::TrailerLf { empty: false },
                _ => Chunked::Trailer,
            },
            Chunked::TrailerLf { empty } => match byte {
                b'\n' if empty => Chunked::Done,
                b'\n' => Chunked::TrailerStart,
                _ => return bad,
            },
            Chunked::Data { .. } | Chunked::Done => unreachable!("handled by decode"),
        })
    }
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::{rewrite_request, ClientConn};
    use http::header::{self, HeaderValue};

    fn parse(
        text: &[u8],
        method: Method,
    ) -> (Result<Option<ResponseHead>, ProtocolError>, BytesMut) {
        let mut buf = BytesMut::from(text);
        let head = parse_response_head(&mut buf, &method);
        (head, buf)
    }

    #[test]
    fn request_head_is_written_with_extra_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop"));
        let conn = ClientConn::new(
            "10.1.2.3:5000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            &[],
        );
        let added = rewrite_request(&mut headers, &conn, None, false);
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::POST,
            "/a?b",
            &headers,
            &added,
            Some(b"transfer-encoding: chunked\r\n"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b HTTP/1.1\r\nhost: shop\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-proto: http\r\nforwarded: for=10.1.2.3;proto=http\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_head_is_parsed_and_hop_by_hop_headers_left_out() {
        let (head, rest) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-secret\r\n\
              X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Member: c1\r\n\r\nhello",
            Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(lines(&head), "Content-Length: 5\r\nX-Member: c1\r\n");
        assert!(head.headers.has_content_length());
        assert_eq!(&rest[..], b"hello");
    }

    fn lines(head: &ResponseHead) -> String {
        let mut out = Vec::new();
        head.headers.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn header_lines_pass_on_as_sent_in_order() {
        // Blanks kept, empty values, a repeated name, dropped fields between kept ones.
        let (head, _) = parse(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Empty:\r\nTE: x\r\nSet-Cookie: b=2  \r\n\
              Upgrade: h2c\r\nX-Last:  v \r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert_eq!(
            lines(&head),
            "Set-Cookie: a=1\r\nX-Empty:\r\nSet-Cookie: b=2  \r\nX-Last:  v \r\nContent-Length: 0\r\n"
        );
        // Lines that end in a bare LF are written anew, and so is everything after them.
        let (head, _) = parse(
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\nC: 3\r\n\r\n",
            Method::GET,
        );
        assert_eq!(lines(&head.unwrap().unwrap()), "A: 1\r\nB: 2\r\nC: 3\r\n");
        // More runs than are kept as ranges: the rest is copied, still in order.
        let mut text = b"HTTP/1.1 204 No Content\r\n".to_vec();
        let mut want = String::new();
        for i in 0..RANGES + 3 {
            text.extend_from_slice(format!("X-{i}: {i}\r\nKeep-Alive: 1\r\n").as_bytes());
            want.push_str(&format!("X-{i}: {i}\r\n"));
        }
        text.extend_from_slice(b"\r\n");
        let (head, _) = parse(&text, Method::GET);
        let head = head.unwrap().unwrap();
        assert_eq!(lines(&head), want);
        assert!(!head.headers.has_content_length());
    }

    #[test]
    fn every_hop_by_hop_name_is_dropped() {
        for name in crate::proxy::headers::HOP_BY_HOP {
            assert_ne!(classify(name.as_str().as_bytes()), Field::Other, "{name}");
            assert_ne!(
                classify(name.as_str().to_ascii_uppercase().as_bytes()),
                Field::Other
            );
        }
        assert_eq!(classify(b"x-member"), Field::Other);
        assert_eq!(classify(b"tf"), Field::Other);
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        let (head, rest) = parse(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET);
        assert!(head.unwrap().is_none());
        assert_eq!(rest.len(), 27);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let (head, rest) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 204 No Content\r\n\r\nX",
            Method::POST,
        );
        let head = head.unwrap().unwrap();
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(&rest[..], b"X");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |text: &[u8], method| parse(text, method).0.unwrap().unwrap().framing;
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                Method::HEAD
            ),
            Framing::Empty
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET
            ),
            Framing::Empty
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                Method::GET
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET
            ),
            Framing::Close
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET),
            Framing::Close
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                Method::GET
            ),
            Framing::Length(7)
        );
    }

    #[test]
    fn both_length_and_chunked_drop_the_length() {
        let (head, _) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert_eq!(lines(&head), "");
        assert!(!head.headers.has_content_length());
        assert_eq!(head.framing, Framing::Chunked);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keep = |text: &[u8]| parse(text, Method::GET).0.unwrap().unwrap().keep_alive;
        assert!(!keep(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keep(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep(b"HTTP/1.1 200 OK\r\n\r\n"), "close-delimited");
    }

    #[test]
    fn bad_heads_are_errors() {
        let err = |text: &[u8]| parse(text, Method::GET).0.err();
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Some(ProtocolError::ContentLength)
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Some(ProtocolError::ContentLength)
        );
        assert_eq!(
            err(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Some(ProtocolError::UnexpectedUpgrade)
        );
        assert!(err(b"SMTP ready\r\n\r\n").is_some());
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(err(&big), Some(ProtocolError::HeadTooLarge));
    }

    fn dechunk(input: &[u8], pieces: usize) -> Result<(Vec<u8>, bool, BytesMut), ProtocolError> {
        let mut decoder = Chunked::new();
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let step = input.len().div_ceil(pieces.max(1)).max(1);
        for (i, piece) in input.chunks(step).enumerate() {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::More => break,
                    Step::Done => {
                        buf.extend_from_slice(&input[((i + 1) * step).min(input.len())..]);
                        return Ok((out, true, buf));
                    }
                }
            }
        }
        Ok((out, false, buf))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let body = b"5;ext=1\r\nhello\r\nB\r\n, world!!!!\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for pieces in [1, 2, 3, 7, body.len()] {
            let (out, done, rest) = dechunk(body, pieces).unwrap();
            assert_eq!(out, b"hello, world!!!!", "pieces {pieces}");
            assert!(done);
            assert_eq!(&rest[..], b"NEXT", "what follows the body is left");
        }
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"\r\n",
            b"ffffffffffffffff1\r\n",
            b"5\n",
        ] {
            assert_eq!(
                dechunk(bad, 1).err(),
                Some(ProtocolError::Chunked),
                "{bad:?}"
            );
        }
        let (_, done, _) = dechunk(b"5\r\nhel", 1).unwrap();
        assert!(!done, "an unfinished body is not done");
    }
}
