//! `tether member`: one cluster member — its session store (memory, replicated with the peer
//! listener, or redis) and the demo app behind the [`SessionLayer`] on an HTTP/1.1 listener.

pub mod app;
pub mod config;

use std::future::Future;
use std::io::Read;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::{Layer, Service};

pub use config::{MemberConfig, StoreKind};

use crate::session::redis::RedisStore;
use crate::session::replicated::ReplicatedStore;
use crate::session::{MemoryStore, SessionLayer, SessionStore};
use app::{DemoApp, StatsFn};

/// Builds the member's store and its stats reporter. Must run inside a tokio runtime.
pub fn build_store(
    config: &MemberConfig,
    peer_listener: Option<TcpListener>,
) -> std::io::Result<(Arc<dyn SessionStore>, StatsFn)> {
    let clone_id = config.clone_id.clone();
    // store = "redis" (issue 4): the sessions live in Redis; connects lazily.
    if let Some(redis) = &config.redis {
        let store = Arc::new(
            RedisStore::new(&config.clone_id, redis.clone()).map_err(std::io::Error::other)?,
        );
        let s = store.clone();
        let stats: StatsFn = Arc::new(move || {
            let st = s.stats();
            serde_json::json!({
                "member": clone_id,
                "store": "redis",
                "unavailable": st.unavailable.load(Ordering::Relaxed),
                "retries": st.retries.load(Ordering::Relaxed),
                "conflicts": st.conflicts.load(Ordering::Relaxed),
                "unreplicated": st.unreplicated.load(Ordering::Relaxed),
            })
        });
        return Ok((store, stats));
    }
    match (&config.replication, peer_listener) {
        (Some((_, repl)), Some(listener)) => {
            let store = Arc::new(ReplicatedStore::start(repl.clone(), listener));
            let s = store.clone();
            let stats: StatsFn = Arc::new(move || {
                let st = s.stats();
                let db = s.db();
                serde_json::json!({
                    "member": clone_id,
                    "store": "replicated",
                    "sessions": db.len(),
                    "owned": s.owned(),
                    "live_peers": s.live_peers(),
                    "settled": s.is_settled(),
                    "takeovers": st.takeovers.load(Ordering::Relaxed),
                    "lost": st.lost.load(Ordering::Relaxed),
                    "conflicts": st.conflicts.load(Ordering::Relaxed),
                    "write_timeouts": st.write_timeouts.load(Ordering::Relaxed),
                    "rereplicated": st.rereplicated.load(Ordering::Relaxed),
                    "refused": db.stats().refused.load(Ordering::Relaxed),
                    "expired": db.stats().expired.load(Ordering::Relaxed),
                })
            });
            Ok((store, stats))
        }
        (Some(_), None) => Err(std::io::Error::other(
            "replicated store needs its peer listener",
        )),
        (None, _) => {
            let store = Arc::new(MemoryStore::new(&config.clone_id, config.max_sessions));
            let s = store.clone();
            let stats: StatsFn = Arc::new(move || {
                let db = s.db();
                serde_json::json!({
                    "member": clone_id,
                    "store": "memory",
                    "sessions": db.len(),
                    "owned": db.len(),
                    "refused": db.stats().refused.load(Ordering::Relaxed),
                    "expired": db.stats().expired.load(Ordering::Relaxed),
                })
            });
            Ok((store, stats))
        }
    }
}

/// Serves the member on already bound listeners until `shutdown` resolves, then drains.
pub async fn serve(
    config: MemberConfig,
    app_listener: TcpListener,
    peer_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (store, stats) = build_store(&config, peer_listener)?;
    let layer = SessionLayer::new(store, config.session.clone());
    let service = layer.layer(DemoApp::new(&config.clone_id, stats));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = app_listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let service = service.clone();
        let hyper_service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let mut service = service.clone();
                async move {
                    std::future::poll_fn(|cx| {
                        Service::<http::Request<hyper::body::Incoming>>::poll_ready(
                            &mut service,
                            cx,
                        )
                    })
                    .await?;
                    service.call(request).await
                }
            });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(stream), hyper_service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "member connection ended with an error");
            }
        });
    }
    drop(app_listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after 10s; closing them");
    }
    Ok(())
}

/// `tether member --config FILE`. With `exit_with_parent`, the member also stops when its
/// standard input closes (the `tether demo` parent died, even by `kill -9`).
pub fn run(config: MemberConfig, exit_with_parent: bool) -> ExitCode {
    crate::server::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = match TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", config.listen);
                return ExitCode::FAILURE;
            }
        };
        let peers = match &config.replication {
            Some((addr, _)) => match TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("error: cannot listen for peers on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        tracing::info!(clone = %config.clone_id, listen = %config.listen, store = ?config.store, "tether member listening");
        let (parent_gone_tx, parent_gone) = tokio::sync::oneshot::channel::<()>();
        // Without the watch, the sender stays here (alive) so `parent_gone` never fires.
        let mut _keep_sender = None;
        if exit_with_parent {
            std::thread::spawn(move || {
                let mut sink = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                // Err only when the member is already stopping.
                parent_gone_tx.send(()).ok();
            });
        } else {
            _keep_sender = Some(parent_gone_tx);
        }
        let shutdown = async move {
            tokio::select! {
                _ = crate::signal::shutdown() => {}
                _ = parent_gone => tracing::info!("parent process gone; stopping"),
            }
        };
        match serve(config, app, peers, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
