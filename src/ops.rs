//! The worker's ops endpoints on `ops.listen`: `/healthz` (the process is alive), `/readyz`
//! (connected and consuming) and `/metrics` (Prometheus text, see [`crate::metrics`]). The API
//! serves the same three on its own `ops.listen`. [`listener`] serves every listener of the
//! process within bounds on its connections.

pub mod listener;

use crate::config::OpsSettings;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Readiness, computed on each probe from the worker's live state.
#[derive(Clone)]
pub struct Health {
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Health {
    pub fn new(ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Health {
            ready: Arc::new(ready),
        }
    }
}

/// Binds `ops.listen` (port 0 picks a free port) and serves until `shutdown`; returns the address.
pub async fn serve(
    settings: &OpsSettings,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = listener::bind(settings.listen)?;
    let addr = listener.local_addr()?;
    // Installed before the first scrape so that every family is described from the start.
    crate::metrics::prometheus();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .with_state(health);
    let limits = settings.connections.clone();
    tokio::spawn(listener::serve("ops", listener, app, limits, shutdown));
    Ok(addr)
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if (health.ready)() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
