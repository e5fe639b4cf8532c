//! The session layer on its own (memory store), with a plain hyper service and with axum:
//! lazy creation, cookie only when needed, `;jsessionid=`, invalidation, and conflicts that are
//! retried when safe and refused loudly (409) when not.

mod session_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get as route_get;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use session_support::{get, Client};
use tether::session::{MemoryStore, SessionConfig, SessionHandle, SessionLayer, SessionStore};
use tower::{Layer, Service};

/// Plain hyper + the layer around a handler written against `tower::Service`.
#[derive(Clone)]
struct Handler;

impl Service<Request<Incoming>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        Box::pin(async move {
            let s = req.extensions().get::<SessionHandle>().unwrap().clone();
            let path = req.uri().path().split(';').next().unwrap_or("").to_owned();
            let body = match path.as_str() {
                "/count" | "/slow-count" => {
                    let n: u64 = s
                        .get("n")
                        .map_or(0, |b| String::from_utf8_lossy(&b).parse().unwrap());
                    if path == "/slow-count" {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    s.set("n", (n + 1).to_string());
                    format!("{}", n + 1)
                }
                "/blind" => {
                    // Writes without reading: safe to re-apply after a conflict.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    s.set(&format!("k{}", req.uri().query().unwrap_or("")), "x");
                    "ok".into()
                }
                "/bump-other" => {
                    let n: u64 = s
                        .get("other")
                        .map_or(0, |b| String::from_utf8_lossy(&b).parse().unwrap());
                    s.set("other", (n + 1).to_string());
                    "ok".into()
                }
                "/logout" => {
                    s.invalidate();
                    "bye".into()
                }
                _ => format!("untouched {:?}", s.id()),
            };
            Ok(Response::new(Full::new(Bytes::from(body))))
        })
    }
}

async fn serve_hyper(store: Arc<dyn SessionStore>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = SessionLayer::new(store, SessionConfig::new("m1")).layer(Handler);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = svc.clone();
            tokio::spawn(async move {
                let hs = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut svc = svc.clone();
                    async move { svc.call(req).await }
                });
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hs)
                    .await
                    .ok();
            });
        }
    });
    addr
}

#[tokio::test]
async fn hyper_lazy_creation_cookie_and_invalidation() {
    let addr = serve_hyper(Arc::new(MemoryStore::new("m1", 100))).await;
    let r = get(addr, "/", None).await.unwrap();
    assert_eq!(r.body, "untouched None");
    assert!(
        r.set_cookie.is_empty(),
        "no cookie for a request that never wrote"
    );
    let mut c = Client::default();
    assert_eq!(c.get(addr, "/count").await.body, "1");
    let cookie = c.cookie.clone().unwrap();
    assert!(
        cookie.starts_with("0000") && cookie.ends_with(":m1"),
        "{cookie}"
    );
    let r = c.get(addr, "/count").await;
    assert_eq!(r.body, "2");
    assert!(r.set_cookie.is_empty(), "cookie unchanged: not sent again");
    // The URL form is read too.
    let r = get(addr, &format!("/count;jsessionid={cookie}"), None)
        .await
        .unwrap();
    assert_eq!(r.body, "3");
    // A forged or unknown id is never adopted: a fresh id is minted.
    let r = get(
        addr,
        "/count",
        Some("0000ffffffffffffffffffffffffffffffff:m1"),
    )
    .await
    .unwrap();
    assert_eq!(r.body, "1");
    assert!(!r.session_cookie().unwrap().contains("ffffffff"));
    let r = c.get(addr, "/logout").await;
    assert_eq!(
        r.session_cookie().as_deref(),
        Some(""),
        "cookie deleted: {:?}",
        r.set_cookie
    );
    assert_eq!(
        get(addr, "/count", Some(&cookie)).await.unwrap().body,
        "1",
        "gone from the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_are_refused_loudly_and_blind_writes_retried() {
    let addr = serve_hyper(Arc::new(MemoryStore::new("m1", 100))).await;
    let mut c = Client::default();
    c.get(addr, "/count").await;
    let cookie = c.cookie.clone().unwrap();
    // Two read-modify-writes of the same counter at once: one wins, the other is a 409.
    let (a, b) = tokio::join!(get(addr, "/slow-count", Some(&cookie)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(addr, "/count", Some(&cookie)).await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(b.body, "2");
    assert_eq!(
        a.status, 409,
        "the slow writer read 1 and must not overwrite 2: {}",
        a.body
    );
    assert_eq!(
        get(addr, "/peek-n", Some(&cookie)).await.unwrap().status,
        200
    );
    // A writer that read nothing the other changed is re-applied: both writes land.
    let (a, b) = tokio::join!(get(addr, "/blind?a", Some(&cookie)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(addr, "/bump-other", Some(&cookie)).await
    });
    assert_eq!((a.unwrap().status, b.unwrap().status), (200, 200));
    assert_eq!(
        get(addr, "/count", Some(&cookie)).await.unwrap().body,
        "3",
        "the 409 write was not saved"
    );
}

async fn axum_count(Extension(s): Extension<SessionHandle>) -> String {
    let n: u64 = s
        .get("n")
        .map_or(0, |b| String::from_utf8_lossy(&b).parse().unwrap());
    s.set("n", (n + 1).to_string());
    format!("{}", n + 1)
}

#[tokio::test]
async fn works_as_an_axum_layer() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new("ax1", 100));
    let app = Router::new()
        .route("/count", route_get(axum_count))
        .route("/", route_get(|| async { "hello" }))
        .layer(SessionLayer::new(store, SessionConfig::new("ax1")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = get(addr, "/", None).await.unwrap();
    assert_eq!((r.body.as_str(), r.set_cookie.len()), ("hello", 0));
    let mut c = Client::default();
    for n in 1..=3 {
        assert_eq!(c.get(addr, "/count").await.body, n.to_string());
    }
    assert!(c.cookie.unwrap().ends_with(":ax1"));
}
