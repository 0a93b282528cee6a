//! Running the service: lock the data dir, reap leftovers, bind, serve until
//! SIGTERM or Ctrl-C, then stop every kernel.

use crate::api::{router, AppState};
use crate::config::Config;
use crate::image::Image;
use crate::sandbox::{leftovers, Manager};
use std::fs::File;
use std::sync::Arc;

/// Errors that stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without an API key: set --api-key or CELLBLOCK_API_KEY, or listen on 127.0.0.1")]
    OpenWithoutKey(std::net::SocketAddr),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another cellblock is already using the data dir {0}")]
    DataDirBusy(String),
    #[error("the data dir path {0} is too long: kernel socket paths must stay under 108 bytes; use a shorter --data-dir")]
    PathTooLong(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Host(#[from] crate::isolation::preflight::Missing),
    #[error("opening the trace store: {0}")]
    Trace(#[source] crate::trace::TraceError),
}

/// Checks the settings, then takes an exclusive lock on the data dir that is
/// held for as long as the returned file lives.
pub fn prepare(cfg: &Config) -> Result<nix::fcntl::Flock<File>, ServeError> {
    if cfg.api_key.is_none() && !cfg.listen.ip().is_loopback() {
        return Err(ServeError::OpenWithoutKey(cfg.listen));
    }
    let dd = |source| ServeError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(cfg.run_dir()).map_err(dd)?;
    std::fs::create_dir_all(cfg.homes_dir()).map_err(dd)?;
    std::fs::create_dir_all(cfg.roots_dir()).map_err(dd)?;
    // run/<32 hex>/sock/k<gen>-<port>: keep well under sun_path's 108 bytes.
    let longest = cfg.run_dir().as_os_str().len() + 1 + 32 + "/sock/k999999-5".len();
    if longest >= 104 {
        return Err(ServeError::PathTooLong(cfg.data_dir.display().to_string()));
    }
    let lock = File::create(cfg.data_dir.join(".lock")).map_err(dd)?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| ServeError::DataDirBusy(cfg.data_dir.display().to_string()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Serves until a shutdown signal, then stops every kernel.
pub async fn run(cfg: Config, image: Image) -> Result<(), ServeError> {
    let group = format!("cellblock/{}", cfg.instance());
    let layout = crate::isolation::preflight::check(&cfg.cgroup_root, &group)?;
    tracing::info!(
        ?layout,
        landlock_abi = crate::isolation::preflight::landlock_abi(),
        "host supports isolation"
    );
    let _lock = prepare(&cfg)?;
    leftovers::reap(&cfg, &layout);
    if cfg.api_key.is_none() {
        tracing::warn!("no API key set: serving on loopback only, without authentication");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let cfg = Arc::new(cfg);
    let store = crate::trace::Store::open(&cfg.trace_db()).map_err(ServeError::Trace)?;
    match store.prune(cfg.trace_retention) {
        Ok(n) if n > 0 => tracing::info!(sandboxes = n, "pruned old traces"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning traces"),
    }
    let manager = Manager::new(cfg.clone(), image, layout, Arc::new(store));
    let state = AppState::new(manager.clone(), cfg.api_key.as_deref());
    let app = router(state, cfg.max_body_bytes);
    tokio::spawn(manager.clone().run_culler());
    if let Some(z) = manager.zygote() {
        tokio::spawn(z.clone().supervise());
    }
    tokio::spawn(manager.clone().run_pool());
    tracing::info!(%addr, "listening");
    // The one line a supervisor or test reads to learn the address.
    println!("cellblock listening on http://{addr}");

    let m = manager.clone();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let on_signal = async move {
        shutdown_signal().await;
        // Stop kernels first: executions in flight end, so in-flight requests
        // finish and graceful shutdown does not wait on long cells.
        m.shutdown().await;
        let _ = stopped_tx.send(());
    };
    // Small frames (a websocket's status, reply, idle; an SSE event) go out
    // at once: with Nagle's algorithm each waited for the client's delayed
    // ACK, about 40 ms per round trip.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app).with_graceful_shutdown(on_signal);
    // Connections get a bounded time to drain once the kernels are gone.
    let drain_deadline = async {
        if stopped_rx.await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        r = served => r.map_err(ServeError::Serve),
        _ = drain_deadline => {
            tracing::warn!("connections did not drain in 10 s; exiting anyway");
            Ok(())
        }
    };
    manager.shutdown().await;
    manager.layout().remove_parents();
    served
}
