//! The request pipeline: framing checks → route → clone ids → header rules → read-ahead of the
//! body → attempts on candidates until one answers, the retry rule says stop, or `max_attempts`
//! is reached → one access-log line.

pub mod body;
pub mod error;
pub mod headers;
pub mod retry;
pub mod route;
pub mod timer;

use std::ops::ControlFlow;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use tokio::time::Instant;

use crate::balance::{Affinity, Balancer, Clock, Clones, NoCandidate, Tried};
use crate::config::{Config, ProxySettings};
use crate::server::conn::ClientBody;
use crate::upstream::{ExchangeError, PoolSettings};
use body::{BodySource, ClientBodyError, Lease, ResponseBody};
use error::ProxyError;
use headers::ClientConn;
use retry::{may_retry, Failure};
use route::Router;
use timer::Timers;

/// The proxy's whole run-time state, shared by every connection.
pub struct Proxy {
    pub settings: ProxySettings,
    router: Router,
    clusters: Box<[Balancer]>,
    clock: Clock,
}

/// What the access log says of one request.
struct Outcome {
    route: Option<usize>,
    cluster: Option<usize>,
    member: Option<Arc<crate::balance::Target>>,
    affinity: Affinity,
    attempts: usize,
}

impl Proxy {
    pub fn new(config: Config) -> Proxy {
        let pool = PoolSettings {
            idle_timeout: config.proxy.pool_idle_timeout,
            max_idle: config.proxy.pool_max_idle,
        };
        Proxy {
            clusters: config
                .clusters
                .iter()
                .map(|c| Balancer::new(c, &pool))
                .collect(),
            router: Router::new(config.routes),
            settings: config.proxy,
            clock: Clock::new(),
        }
    }

    /// The cluster with this name (tests and admin use it to read member state).
    pub fn cluster(&self, name: &str) -> Option<&Balancer> {
        self.clusters.iter().find(|c| &*c.config.name == name)
    }

    /// Handles one client request (its head; the body is read from the client connection as
    /// needed). Never fails: every error becomes a response.
    pub async fn handle(
        &self,
        request: Request<()>,
        body: ClientBody<'_>,
        conn: &ClientConn,
        timers: &mut Timers,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let method = request.method().clone();
        let mut outcome = Outcome {
            route: None,
            cluster: None,
            member: None,
            affinity: Affinity::None,
            attempts: 0,
        };
        // Copied only when the access log is on: the request is consumed before the line is written.
        let path_for_log = tracing::enabled!(target: "tether::access", tracing::Level::INFO)
            .then(|| {
                request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
            })
            .flatten();
        let has_body = !body.is_end_stream();
        let forwarded = self
            .forward(request, body, conn, start, timers, &mut outcome)
            .await;
        let response = match forwarded {
            Ok(response) => response,
            Err((error, body_read)) => error.respond(has_body && !body_read),
        };
        tracing::info!(
            target: "tether::access",
            client = %conn.client,
            method = %method,
            path = path_for_log.as_ref().map_or("", |p| p.as_str()),
            route = outcome.route.map(|r| r as i64).unwrap_or(-1),
            cluster = outcome.cluster.map(|c| &*self.clusters[c].config.name).unwrap_or("-"),
            member = outcome.member.as_ref().map(|m| &*m.name).unwrap_or("-"),
            affinity = outcome.affinity.as_str(),
            attempts = outcome.attempts,
            status = response.status().as_u16(),
            duration_us = start.elapsed().as_micros() as u64,
        );
        response
    }

    /// The error side carries whether the request body was read to its end.
    async fn forward(
        &self,
        request: Request<()>,
        incoming: ClientBody<'_>,
        conn: &ClientConn,
        start: Instant,
        timers: &mut Timers,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, (ProxyError, bool)> {
        let (parts, ()) = request.into_parts();
        let method = parts.method;
        let mut headers = parts.headers;
        let host = request_host(&parts.uri, &headers, parts.version).map_err(|e| (e, false))?;
        let content_length = content_length(&headers);
        if content_length.is_some_and(|n| n > self.settings.post_size_limit) {
            return Err((ProxyError::PayloadTooLarge, false));
        }

        let host_name = host
            .as_ref()
            .map(|h| headers::host_without_port(h.as_bytes()))
            .unwrap_or(b"");
        let host_name = std::str::from_utf8(host_name).map_err(|_| (ProxyError::BadHost, false))?;
        let path = parts.uri.path();
        let route = self
            .router
            .find(host_name, path)
            .ok_or((ProxyError::NoRoute, false))?;
        outcome.route = Some(route);
        let cluster_index = self.router.route(route).cluster;
        outcome.cluster = Some(cluster_index);
        let cluster = &self.clusters[cluster_index];
        let config = &cluster.config;

        let mut clones = Clones::default();
        crate::affinity::for_each_clone(&config.affinity, path, &headers, |clone| {
            match cluster.member_by_clone(clone) {
                Some(id) if !clones.push(id) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        });
        outcome.affinity = if clones.is_empty() {
            Affinity::None
        } else {
            Affinity::Hit
        };

        let added = headers::rewrite_request(
            &mut headers,
            conn,
            host.as_ref(),
            self.settings.websphere_headers,
        );
        let uri = origin_form(parts.uri);

        let deadline = start + self.settings.request_timeout;
        let read_ahead = BodySource::read_ahead(
            incoming,
            content_length,
            config.post_buffer_size,
            self.settings.post_size_limit,
        );
        let mut body = match timers.client.run(deadline, read_ahead).await {
            None => return Err((ProxyError::RequestTimeout, false)),
            Some(Err(e)) => return Err((client_body_error(&e), false)),
            Some(Ok(body)) => body,
        };
        let body_read = body.replayable();
        if let Some(len) = body.buffered_len() {
            // Left as it is when it already says exactly that, on one line.
            let one_line = headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .nth(1)
                .is_none();
            if content_length != Some(len as u64) || !one_line {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }

        let mut tried = Tried::default();
        let mut last_error = ProxyError::NoMemberAvailable;
        let max_attempts = config.max_attempts as usize;
        // A pooled connection that turns out closed when written to costs no attempt, a few
        // times at most.
        let mut unsent_budget = 3;
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        while tried.len() < max_attempts {
            // The clock is read once per attempt, and not at all for the first, which starts
            // with the request. (So does a request resent after a pooled connection turned out
            // closed, which takes its attempt back: that is microseconds later.)
            let now = if tried.is_empty() {
                start
            } else {
                Instant::now()
            };
            let (id, affinity) =
                match cluster.next_candidate(&clones, &tried, self.clock.ms_at(now)) {
                    Ok(candidate) => candidate,
                    Err(NoCandidate::OwnerDown) => return Err((ProxyError::OwnerDown, body_read)),
                    Err(NoCandidate::Exhausted) => break,
                };
            tried.add(id);
            outcome.attempts += 1;
            outcome.affinity = affinity;
            let target = cluster.target(id);
            outcome.member = Some(target.clone());
            // Counted from the choice, not from the connect: least_requests must see requests
            // still connecting, or a burst piles onto one member.
            let in_flight = target.start_request();

            let mut conn = match timers
                .client
                .run(deadline, target.upstream.acquire(now))
                .await
            {
                None => return Err((ProxyError::RequestTimeout, body_read)),
                Some(Err(e)) => {
                    tracing::debug!(member = %target.name, error = %e, "attempt failed before sending");
                    if e.marks_down() {
                        target.mark_down(self.clock.now_ms(), config.retry_interval);
                    }
                    last_error = ProxyError::MemberFailed;
                    continue;
                }
                Some(Ok(conn)) => conn,
            };
            target.mark_up();

            let Some(mut request_body) = body.take() else {
                // Only reachable if a streamed body was already sent: nothing may be resent.
                break;
            };
            let retry_after_write = tried.len() < max_attempts
                && may_retry(
                    Failure::AfterWrite,
                    &method,
                    &headers,
                    config.retry_idempotency_key,
                    body.replayable(),
                );
            // Deadlines only move on for this timer: the earlier of io_timeout and the request's,
            // counted from the send, which follows the connection's being ready at once.
            let wait = (conn.ready_at + target.io_timeout).min(deadline);
            let sent = conn
                .member
                .send(&method, path, &headers, &added, &mut request_body);
            match timers.member.run(wait, sent).await {
                Some(Ok(head)) => {
                    let mut response = Response::new(ResponseBody::member(
                        head.framing,
                        Lease {
                            conn,
                            target: target.clone(),
                            in_flight,
                        },
                        head.headers,
                    ));
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    return Ok(response);
                }
                Some(Err(ExchangeError::NotSent(error))) => {
                    tracing::debug!(member = %target.name, %error, "pooled connection closed before the request was written");
                    body.put_back(request_body);
                    if conn.reused && unsent_budget > 0 {
                        unsent_budget -= 1;
                        tried.forget(id);
                        outcome.attempts -= 1;
                    }
                    last_error = ProxyError::MemberFailed;
                    continue;
                }
                Some(Err(ExchangeError::ClientBody(e))) => {
                    return Err((client_body_error(&e), false));
                }
                Some(Err(error)) => {
                    tracing::debug!(member = %target.name, %error, "attempt failed after sending");
                    last_error = ProxyError::MemberFailed;
                    if !retry_after_write {
                        return Err((last_error, body_read));
                    }
                }
                None => {
                    if Instant::now() >= deadline {
                        return Err((ProxyError::RequestTimeout, body_read));
                    }
                    tracing::debug!(member = %target.name, "no response header within io_timeout");
                    if config.mark_down_on_timeout {
                        target.mark_down(self.clock.now_ms(), config.retry_interval);
                    }
                    last_error = ProxyError::MemberTimeout;
                    if !retry_after_write {
                        return Err((last_error, body_read));
                    }
                }
            }
        }
        Err((last_error, body_read))
    }
}

/// The host a request is for: the authority of an absolute-form URI, else the one `Host`
/// header. HTTP/1.1 requires exactly one `Host` header.
fn request_host(
    uri: &Uri,
    headers: &HeaderMap,
    version: Version,
) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    if let Some(authority) = uri.authority() {
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| ProxyError::BadHost);
    }
    match first {
        Some(host) if host.is_empty() && version >= Version::HTTP_11 => {
            Err(ProxyError::MissingHost)
        }
        Some(host) => Ok(Some(host.clone())),
        None if version >= Version::HTTP_11 => Err(ProxyError::MissingHost),
        None => Ok(None),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `http://host/a?b` → `/a?b`: members get the origin form.
fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri;
    }
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

fn client_body_error(error: &ClientBodyError) -> ProxyError {
    match error {
        ClientBodyError::TooLarge => ProxyError::PayloadTooLarge,
        ClientBodyError::Aborted(_) => ProxyError::ClientBodyAborted,
    }
}
