//! The status HTTP server every long-running process serves: `/metrics` in Prometheus
//! text format and `/status` as JSON.
//!
//! Its own crate so that the HTTP stack (axum, hyper) reaches only the servers, not the
//! client library or raftstore. Depends on `util` (for the shutdown signal) only.

use std::{net::SocketAddr, sync::Arc};

use axum::{routing::get, Router};
use prometheus::{Encoder, TextEncoder};

use util::shutdown::Shutdown;

/// The status server could not start.
#[derive(Debug, thiserror::Error)]
#[error("status server on {addr}: {source}")]
pub struct Error {
    /// The address it tried to bind.
    addr: String,
    /// Why.
    source: hyper::Error,
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Produces the JSON document served at `/status`.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Serves `/metrics` and `/status` on `addr` until `shutdown` fires. Returns the bound
/// address (useful when `addr` asks for port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    status: StatusFn,
    shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new().route("/metrics", get(metrics)).route(
        "/status",
        get(move || {
            let status = status.clone();
            async move { axum::Json(status()) }
        }),
    );
    let server = axum::Server::try_bind(&addr)
        .map_err(|source| Error {
            addr: addr.to_string(),
            source,
        })?
        .serve(app.into_make_service());
    let bound = server.local_addr();
    let handle = tokio::spawn(async move {
        let _ = server
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
    });
    Ok((bound, handle))
}

async fn metrics() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut buf)
        .expect("encoding metrics into memory cannot fail");
    String::from_utf8(buf).expect("the Prometheus text format is UTF-8")
}

/// Registers a collector in the default registry (what `/metrics` serves), replacing one
/// with the same series: a process that restarts a component in place (tests do) serves
/// the newest one. `make` builds the collector; it is called again to unregister.
pub fn register_latest(make: impl Fn() -> Box<dyn prometheus::core::Collector>) {
    if prometheus::register(make()).is_err() {
        let _ = prometheus::unregister(make());
        let _ = prometheus::register(make());
    }
}
