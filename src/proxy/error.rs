//! Every way a request can fail, and the one function that turns each into a response.
//! Member faults become 502/503/504, client faults 400/404/413/431; the proxy never answers 500 for
//! a member's fault. Details go to the log, not to the client.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    // The client's fault.
    /// A request head that cannot be parsed or framed safely.
    MalformedRequest,
    HeadersTooLarge,
    MissingHost,
    DuplicateHost,
    BadHost,
    PayloadTooLarge,
    ClientBodyAborted,
    NoRoute,
    // The members' fault, or none available.
    NoMemberAvailable,
    OwnerDown,
    MemberFailed,
    MemberTimeout,
    RequestTimeout,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::MalformedRequest
            | ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ClientBodyAborted => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoMemberAvailable | ProxyError::OwnerDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::MemberFailed => StatusCode::BAD_GATEWAY,
            ProxyError::MemberTimeout | ProxyError::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn text(self) -> &'static str {
        match self {
            ProxyError::MalformedRequest => "400 Bad Request: malformed request\n",
            ProxyError::HeadersTooLarge => "431 Request Header Fields Too Large\n",
            ProxyError::MissingHost => "400 Bad Request: missing Host header\n",
            ProxyError::DuplicateHost => "400 Bad Request: more than one Host header\n",
            ProxyError::BadHost => "400 Bad Request: invalid Host header\n",
            ProxyError::ClientBodyAborted => "400 Bad Request: request body incomplete\n",
            ProxyError::PayloadTooLarge => "413 Payload Too Large\n",
            ProxyError::NoRoute => "404 Not Found: no route for this host and path\n",
            ProxyError::NoMemberAvailable => {
                "503 Service Unavailable: no cluster member available\n"
            }
            ProxyError::OwnerDown => {
                "503 Service Unavailable: the member holding this session is down\n"
            }
            ProxyError::MemberFailed => "502 Bad Gateway: the cluster member failed\n",
            ProxyError::MemberTimeout => {
                "504 Gateway Timeout: the cluster member did not answer in time\n"
            }
            ProxyError::RequestTimeout => "504 Gateway Timeout: request_timeout elapsed\n",
        }
    }

    /// The response to the client. `close` asks the client connection to close (the request
    /// body was not read to its end).
    pub fn respond(self, close: bool) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::local(self.text()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(date) = HeaderValue::from_str(&date) {
            headers.insert(header::DATE, date);
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
