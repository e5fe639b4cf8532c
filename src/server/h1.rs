//! The client side of HTTP/1.1: request heads (httparse) and their framing (RFC 9112 §6), and
//! response heads written for the client.
//!
//! Header values are slices of the one buffer the head was read into, as on the member side
//! (`upstream::h1`), whose chunked decoder and Content-Length rules this shares.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use crate::upstream::h1::{last_token, parse_content_length, HeaderLines};

/// As hyper's server: a request with more header fields than this is refused (431).
const MAX_HEADERS: usize = 100;

/// Why a request head is refused; nothing of it reaches a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over `max_header_bytes`, or too many fields: 431.
    TooLarge,
    /// Malformed, or framed in a way that cannot be trusted: 400.
    Bad(&'static str),
}

impl HeadError {
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Bad(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head.
pub struct RequestHead {
    /// Method, target, version and headers; the body is read from the connection.
    pub request: Request<()>,
    pub framing: RequestFraming,
    /// The client lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before it sends the body.
    pub expect_continue: bool,
}

/// Parses a request head at the start of `buf`; `Ok(None)`: not complete yet. On success the
/// head's bytes are taken out of `buf`; what follows (the body, or a pipelined request) stays.
pub fn parse_request_head(
    buf: &mut BytesMut,
    max_header_bytes: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len > max_header_bytes => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_header_bytes => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Bad("invalid method"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Offsets, so the slices can be taken from the frozen head once the parse's borrow ends.
    let base = buf.as_ptr() as usize;
    let path = request.path.unwrap_or("");
    let path_at = (path.as_ptr() as usize - base, path.len());
    let mut fields = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = request.headers.len();
    field_offsets(base, request.headers, &mut fields);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at.0..path_at.0 + path_at.1))
        .map_err(|_| HeadError::Bad("invalid request target"))?;
    build(head, &fields[..count], method, uri, version).map(Some)
}

/// The (name start, name end, value start, value end) of each parsed field, as offsets from
/// `base`, the start of the buffer the fields were parsed from.
fn field_offsets(base: usize, parsed: &[httparse::Header<'_>], out: &mut [(u32, u32, u32, u32)]) {
    for (field, h) in out.iter_mut().zip(parsed) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *field = (
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        );
    }
}

fn build(
    head: Bytes,
    fields: &[(u32, u32, u32, u32)],
    method: Method,
    uri: Uri,
    version: Version,
) -> Result<RequestHead, HeadError> {
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for &(ns, ne, vs, ve) in fields {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| HeadError::Bad("invalid header name"))?;
        let value = &head[vs as usize..ve as usize];
        match name {
            header::CONTENT_LENGTH => {
                let n = parse_content_length(value)
                    .map_err(|_| HeadError::Bad("invalid Content-Length"))?;
                if content_length.is_some_and(|old| old != n) {
                    return Err(HeadError::Bad("different Content-Length values"));
                }
                content_length = Some(n);
            }
            header::TRANSFER_ENCODING => transfer_encoding = Some(value),
            header::CONNECTION => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            header::EXPECT => expect_continue = value.eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| HeadError::Bad("invalid header value"))?;
        headers.append(name, value);
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let framing = match (transfer_encoding, content_length) {
        (Some(_), _) if version == Version::HTTP_10 => {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(te), length) => {
            // Only chunked as the final coding frames a request (RFC 9112 §6.3).
            if !last_token(te).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Bad("Transfer-Encoding does not end in chunked"));
            }
            if length.is_some() {
                // Both: framed by Transfer-Encoding, and the connection is closed afterwards
                // (RFC 9112 §6.1), so what a smuggler hid behind it is never read as a request.
                headers.remove(header::CONTENT_LENGTH);
                keep_alive = false;
            }
            RequestFraming::Chunked
        }
        (None, Some(0) | None) => RequestFraming::Empty,
        (None, Some(n)) => RequestFraming::Length(n),
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(RequestHead {
        request,
        framing,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
    })
}

/// The fields of a chunked body's trailer section; `None` when there are none worth passing
/// on (or the section cannot be parsed: trailers are advisory, the body is whole without them).
pub fn parse_trailers(section: &[u8]) -> Option<HeaderMap> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut slots)
    else {
        return None;
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then_some(map)
}

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body on the wire (HEAD, 204, 304), whatever the headers say.
    None,
    /// `Content-Length` is in the headers.
    Length,
    Chunked,
    /// Until the connection closes (a body of unknown length to an HTTP/1.0 client).
    Close,
}

/// Writes the status line and headers of a response: the proxy's own `headers`, then the
/// member's `lines` as it sent them (dropped here: they hold the member's head). `length` is the
/// body's length when known; a `Content-Length` is added when neither has one.
#[allow(clippy::too_many_arguments)]
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    lines: HeaderLines,
    length: Option<u64>,
    head_only: bool,
    client: Version,
    keep_alive: bool,
) -> ResponseFraming {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    lines.write_to(out);
    let has_length = lines.has_content_length() || headers.contains_key(header::CONTENT_LENGTH);
    drop(lines);
    let no_body = head_only
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let framing = match length {
        _ if has_length => ResponseFraming::Length,
        Some(n) if !(status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
            ResponseFraming::Length
        }
        Some(_) => ResponseFraming::None,
        None if no_body => ResponseFraming::None,
        None if client == Version::HTTP_11 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ResponseFraming::Chunked
        }
        None => ResponseFraming::Close,
    };
    let keep_alive = keep_alive && framing != ResponseFraming::Close;
    if !keep_alive {
        if !headers.contains_key(header::CONNECTION) {
            out.extend_from_slice(b"connection: close\r\n");
        }
    } else if client == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if no_body {
        ResponseFraming::None
    } else {
        framing
    }
}

/// Decimal digits of `n` without going through `fmt`.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(&mut BytesMut::from(text), 8192)
    }

    #[test]
    fn a_request_head_is_parsed_with_its_framing() {
        let mut buf = BytesMut::from(
            &b"POST /a?b HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\nabcGET"[..],
        );
        let head = parse_request_head(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/a?b");
        assert_eq!(head.request.headers()["host"], "shop");
        assert_eq!(head.framing, RequestFraming::Length(3));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"abcGET", "the body and what follows stay");
    }

    #[test]
    fn framing_rules_of_rfc_9112() {
        let framing = |t: &[u8]| parse(t).unwrap().unwrap().framing;
        assert_eq!(
            framing(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            RequestFraming::Empty
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            RequestFraming::Chunked
        );
        let both = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(both.framing, RequestFraming::Chunked);
        assert!(
            !both.keep_alive,
            "CL and TE together: closed after the response"
        );
        assert!(!both.request.headers().contains_key(header::CONTENT_LENGTH));
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::Bad(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keep_alive_and_expect() {
        let head = |t: &[u8]| parse(t).unwrap().unwrap();
        assert!(!head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(
            head(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
    }

    #[test]
    fn a_head_over_the_limit_is_431() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(9000, b'a');
        assert_eq!(parse(&big).err(), Some(HeadError::TooLarge));
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn response_heads_say_how_the_body_is_framed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-member", HeaderValue::from_static("c1"));
        let head = |length, head_only, client| {
            let mut out = Vec::new();
            let framing = encode_response_head(
                &mut out,
                StatusCode::OK,
                &headers,
                HeaderLines::none(),
                length,
                head_only,
                client,
                true,
            );
            (framing, out)
        };
        let (f, out) = head(Some(2), false, Version::HTTP_11);
        assert_eq!(f, ResponseFraming::Length);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nx-member: c1\r\ncontent-length: 2\r\n\r\n".to_vec()
        );
        assert_eq!(
            head(None, false, Version::HTTP_11).0,
            ResponseFraming::Chunked
        );
        let (f, out) = head(None, false, Version::HTTP_10);
        assert_eq!(f, ResponseFraming::Close);
        assert!(out.ends_with(b"connection: close\r\n\r\n"));
        assert_eq!(head(None, true, Version::HTTP_11).0, ResponseFraming::None);
    }
}
