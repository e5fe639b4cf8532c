//! The built-in demo app, served behind the [`SessionLayer`](crate::session::SessionLayer):
//!
//! - `GET /count` increments the session counter: `{"member":"c1","session":"<id>","count":n}`
//!   (`?pad=N` also stores an N-byte attribute, for the bench);
//! - `GET /peek` the same without a write (`count` is `null` without a session);
//! - `GET /invalidate` ends the session everywhere;
//! - `GET /` a small HTML page with a button that calls `/count`;
//! - `GET /_tether/stats` the member's store counters as JSON.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;

use crate::session::SessionHandle;

/// Returns the store's counters as JSON.
pub type StatsFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Clone)]
pub struct DemoApp {
    clone_id: Arc<str>,
    stats: StatsFn,
}

impl DemoApp {
    pub fn new(clone_id: &str, stats: StatsFn) -> DemoApp {
        DemoApp {
            clone_id: clone_id.into(),
            stats,
        }
    }

    fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        // `;jsessionid=` and the query are not part of the route.
        let path = request.uri().path();
        let path = path.split(';').next().unwrap_or(path);
        let handle = request.extensions().get::<SessionHandle>();
        let member = &*self.clone_id;
        match (path, handle) {
            ("/count", Some(session)) => {
                let count = read_count(session) + 1;
                session.set("count", count.to_string());
                // `?pad=N` (at most 64 KiB) also stores N bytes: the bench's session size knob.
                if let Some(pad) = pad_bytes(request.uri().query()) {
                    session.set("pad", vec![b'x'; pad]);
                }
                // Built by hand to keep the documented key order (serde_json sorts keys).
                let body = format!(
                    r#"{{"member":{},"session":{},"count":{count}}}"#,
                    serde_json::Value::from(member),
                    serde_json::Value::from(session.id()),
                );
                json_text(body)
            }
            ("/peek", Some(session)) => {
                let count = session.get("count").map(|_| read_count(session));
                json(
                    serde_json::json!({ "member": member, "session": session.id(), "count": count }),
                )
            }
            ("/invalidate", Some(session)) => {
                let had = session.id().is_some();
                session.invalidate();
                json(serde_json::json!({ "member": member, "invalidated": had }))
            }
            ("/", Some(session)) => {
                let count = session.get("count").map_or(0, |_| read_count(session));
                html(&page(member, session.id().as_deref(), count))
            }
            ("/_tether/stats", _) => json((self.stats)()),
            ("/count" | "/peek" | "/invalidate" | "/", None) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the demo app runs behind the session layer\n",
            ),
            _ => text(StatusCode::NOT_FOUND, "404 Not Found\n"),
        }
    }
}

fn pad_bytes(query: Option<&str>) -> Option<usize> {
    let n: usize = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("pad="))?
        .parse()
        .ok()?;
    Some(n.min(64 * 1024))
}

fn read_count(session: &SessionHandle) -> u64 {
    session
        .get("count")
        .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    json_text(value.to_string())
}

fn json_text(body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn html(body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// Escapes the few characters that matter in HTML text (ids and clone ids are plain already).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(member: &str, session: Option<&str>, count: u64) -> String {
    let session = session.map_or_else(|| "(none yet)".to_owned(), escape);
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>tether demo</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:3em auto}}code{{background:#eee;padding:0 .3em}}</style>
</head><body>
<h1>tether demo</h1>
<p>Served by member <code id="member">{member}</code>, session <code id="session">{session}</code>.</p>
<p>Count: <strong id="count">{count}</strong></p>
<button id="inc">Count</button>
<p>Kill the member serving you (<code>kill -9 PID</code> from the list <code>tether demo</code> printed),
then press the button again: another member continues the same count.</p>
<script>
document.getElementById('inc').onclick = async () => {{
  const r = await fetch('/count', {{credentials: 'same-origin'}});
  const j = await r.json();
  for (const k of ['member', 'session', 'count']) document.getElementById(k).textContent = j[k];
}};
</script>
</body></html>
"#,
        member = escape(member),
    )
}

impl<B: Send + 'static> tower::Service<Request<B>> for DemoApp {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let response = self.respond(&request);
        Box::pin(async move { Ok(response) })
    }
}
