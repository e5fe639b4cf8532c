//! Accepting client connections, serving each in a task of its own ([`conn`], in HTTP/1.1 as
//! [`h1`] parses and writes it), and draining them on shutdown.

pub mod conn;
pub mod h1;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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
    // `stop`: finish what is in flight, then close; `kill`: the grace period is over.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    // Every connection holds a sender; recv() answers None once the last one has ended.
    let (running_tx, mut running_rx) = mpsc::channel::<()>(1);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        let signals = Signals {
            stop: stop_rx.clone(),
            kill: kill_rx.clone(),
            running: running_tx.clone(),
        };
        accepting.spawn(accept_loop(listener, proxy.clone(), signals));
    }
    drop(running_tx);
    shutdown.await;
    // Stop accepting: each accept loop ends and drops its listener.
    let _ = stop_tx.send(true);
    while accepting.join_next().await.is_some() {}
    let grace = proxy.settings.shutdown_grace;
    tracing::info!(
        ?grace,
        "shutting down: no new connections; draining requests in flight"
    );
    match tokio::time::timeout(grace, running_rx.recv()).await {
        Ok(_) => tracing::info!("all connections drained"),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "shutdown_grace elapsed with requests still in flight; closing them"
            );
            let _ = kill_tx.send(true);
            // They end at their next poll; a moment is plenty.
            let _ = tokio::time::timeout(Duration::from_secs(1), running_rx.recv()).await;
        }
    }
    Ok(())
}

/// What each connection task is given to follow shutdown.
struct Signals {
    stop: watch::Receiver<bool>,
    kill: watch::Receiver<bool>,
    running: mpsc::Sender<()>,
}

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, signals: Signals) {
    // The connections' local address is the listener's (asked once, not with a getsockname
    // per connection); only its port is used, for `$WSSP`.
    let Ok(local) = listener.local_addr() else {
        return;
    };
    if let Err(e) = defer_accept(&listener, proxy.settings.defer_accept) {
        tracing::warn!(error = %e, %local, "cannot set TCP_DEFER_ACCEPT; accepting without it");
    }
    let mut stop = signals.stop.clone();
    let mut stopped = std::pin::pin!(stop.changed());
    loop {
        let (stream, client) = tokio::select! {
            // In this order, without select!'s random pick: a stop is seen at once.
            biased;
            _ = stopped.as_mut() => return,
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
        let info = ClientConn::new(client, local, &proxy.settings.trusted_proxies);
        // Spawned boxed: the task then holds a pointer, not the connection's whole state
        // (kilobytes), which tokio would copy several times as it starts and ends the task.
        let serve = Box::pin(conn::serve_client(
            stream,
            proxy.clone(),
            info,
            signals.stop.clone(),
            signals.kill.clone(),
            signals.running.clone(),
        ));
        tokio::spawn(serve);
    }
}

/// TCP_DEFER_ACCEPT, as nginx's `listen … deferred` and HAProxy's `defer-accept`: the kernel
/// hands a connection over once its first bytes have come (or `wait` has passed), so that
/// accepting it and reading the request take one wake-up instead of two, and the first read
/// finds the request. Zero turns it off.
#[cfg(target_os = "linux")]
fn defer_accept(listener: &TcpListener, wait: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = libc::c_int::try_from(wait.as_secs()).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the listener's and stays open across the call; the option's
    // value is a c_int that outlives the call, and its size is the length passed.
    let done = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere the listener accepts every connection as it comes.
#[cfg(not(target_os = "linux"))]
fn defer_accept(_: &TcpListener, _: Duration) -> std::io::Result<()> {
    Ok(())
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
