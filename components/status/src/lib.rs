//! The status HTTP server every long-running process serves: `/metrics` in Prometheus
//! text format and `/status` as JSON.
//!
//! Its own crate so that the HTTP stack (axum, hyper, rustls) reaches only the servers
//! and kvctl, not the client library or raftstore. Depends on `util` (for the shutdown
//! signal and the TLS files) only. With TLS on, the port speaks HTTPS with the
//! certificates of the gRPC ports, and asks peers for theirs the same way.

pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{routing::get, Router};
use prometheus::{Encoder, TextEncoder};
use slog::{warn, Logger};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use util::{security::Security, shutdown::Shutdown};

/// The status server could not start.
#[derive(Debug, thiserror::Error)]
#[error("status server on {addr}: {source}")]
pub struct Error {
    /// The address it tried to bind.
    addr: String,
    /// Why.
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Produces the JSON document served at `/status`.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// How long a TLS handshake on the status port may take, and then a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections the TLS status port serves at once.
const MAX_CONNECTIONS: usize = 256;
/// The longest one connection is kept (scrapers reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Serves `/metrics` and `/status` on `addr` until `shutdown` fires, over TLS when
/// `security` says so. Returns the bound address (useful when `addr` asks for port 0)
/// once listening.
pub async fn serve(
    addr: SocketAddr,
    status: StatusFn,
    security: Arc<Security>,
    shutdown: Shutdown,
    logger: Logger,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new().route("/metrics", get(metrics)).route(
        "/status",
        get(move || {
            let status = status.clone();
            async move { axum::Json(status()) }
        }),
    );
    let bind_err = |source: Box<dyn std::error::Error + Send + Sync>| Error {
        addr: addr.to_string(),
        source,
    };
    if security.tls() {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| bind_err(e.into()))?;
        let bound = listener.local_addr().map_err(|e| bind_err(e.into()))?;
        let acceptor = Acceptor::new(security).map_err(|e| bind_err(e.into()))?;
        let handle = tokio::spawn(serve_tls(listener, app, acceptor, shutdown, logger));
        return Ok((bound, handle));
    }
    let server = axum::Server::try_bind(&addr)
        .map_err(|e| bind_err(e.into()))?
        .serve(app.into_make_service());
    let bound = server.local_addr();
    let handle = tokio::spawn(async move {
        let _ = server
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
    });
    Ok((bound, handle))
}

/// The TLS settings of the status port, rebuilt when the certificate files change.
struct Acceptor {
    security: Arc<Security>,
    pem: Arc<util::security::Pem>,
    acceptor: TlsAcceptor,
}

impl Acceptor {
    fn new(security: Arc<Security>) -> std::result::Result<Acceptor, String> {
        let pem = security.pem().map_err(|e| e.to_string())?;
        let require = security.config().require_client_cert;
        let acceptor = TlsAcceptor::from(tls::server_config(&pem, require)?);
        Ok(Acceptor {
            security,
            pem,
            acceptor,
        })
    }

    /// The acceptor for the next connection: rebuilt if the files changed and the new
    /// ones make a valid configuration, the last good one otherwise.
    fn current(&mut self, logger: &Logger) -> TlsAcceptor {
        if let Ok(pem) = self.security.pem() {
            if !Arc::ptr_eq(&pem, &self.pem) {
                let require = self.security.config().require_client_cert;
                match tls::server_config(&pem, require) {
                    Ok(cfg) => self.acceptor = TlsAcceptor::from(cfg),
                    Err(e) => warn!(logger, "status port keeps its old certificate"; "error" => e),
                }
                self.pem = pem;
            }
        }
        self.acceptor.clone()
    }
}

async fn serve_tls(
    listener: TcpListener,
    app: Router,
    mut acceptor: Acceptor,
    shutdown: Shutdown,
    logger: Logger,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let tcp = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                // Out of descriptors, say: wait a moment rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Past the cap a new connection is closed at once: a flood of them cannot take
        // the descriptors RocksDB and gRPC need.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let tls = acceptor.current(&logger);
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // A peer that does not finish the handshake (plaintext, a foreign CA) is
            // dropped; it holds nothing but its own connection.
            let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await
            else {
                return;
            };
            let served = hyper::server::conn::Http::new()
                .http1_only(true)
                .http1_header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(stream, app);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
        });
    }
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
