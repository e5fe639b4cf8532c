//! Accepting client connections, serving them with hyper, and draining them on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::proxy::headers::ClientConn;
use crate::proxy::Proxy;

/// Serves on already-bound listeners until `shutdown` resolves; then stops accepting, lets the
/// requests in flight finish within `shutdown_grace`, and returns.
pub async fn serve(
    listeners: Vec<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let proxy = Arc::new(Proxy::new(config));
    serve_proxy(listeners, proxy, shutdown).await
}

/// [`serve`] with a proxy the caller keeps a handle on (to read member state).
pub async fn serve_proxy(
    listeners: Vec<TcpListener>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept_loop(
            listener,
            proxy.clone(),
            graceful.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    // Stop accepting: each accept loop ends and drops its listener.
    let _ = stop_tx.send(true);
    while accepting.join_next().await.is_some() {}
    let grace = proxy.settings.shutdown_grace;
    tracing::info!(
        ?grace,
        "shutting down: no new connections; draining requests in flight"
    );
    // The accept loops are gone, so this is the last handle.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("accept loops ended"));
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            ?grace,
            "shutdown_grace elapsed with requests still in flight; closing them"
        ),
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, client) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(_) => continue,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let conn_info = Arc::new(ClientConn::new(
            client,
            local,
            &proxy.settings.trusted_proxies,
        ));
        let service_proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = service_proxy.clone();
            let conn_info = conn_info.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, &conn_info).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(proxy.settings.request_timeout)
            .max_buf_size(proxy.settings.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%client, error = %e, "client connection ended with an error");
            }
        });
    }
}

/// Runs the proxy until SIGTERM or SIGINT: the `tether proxy` command.
pub fn run(config: Config) -> ExitCode {
    init_tracing();
    let runtime = match config.proxy.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for addr in &config.proxy.listen {
            match TcpListener::bind(addr).await {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    eprintln!("error: cannot listen on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        tracing::info!(listen = ?config.proxy.listen, "tether proxy listening");
        match serve(listeners, config, crate::signal::shutdown()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Logs to stderr; `RUST_LOG` sets the level (default `info`, which includes the access log
/// under the target `tether::access`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
