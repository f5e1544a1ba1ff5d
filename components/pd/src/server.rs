//! Running PD: storage, core and the gRPC server.

use std::sync::{Arc, OnceLock};

use grpcio::{Environment, ServerBuilder, ServerCredentials};
use slog::{info, Logger};

use crate::{cluster::PdCore, service::PdService, storage::Storage, Config, Result};

/// A running placement driver.
pub struct PdServer {
    server: grpcio::Server,
    core: Arc<PdCore>,
    addr: String,
    /// Held until PD stops: no second PD opens this data directory.
    _dir_lock: util::dir_lock::DirLock,
}

impl PdServer {
    /// Opens PD's data and starts serving on `cfg.addr` (port 0 picks a free port).
    pub fn start(cfg: Config, logger: Logger) -> Result<PdServer> {
        let fresh = !cfg.data_dir.join("CURRENT").exists();
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| util::Error::DataDir(format!("create {}: {e}", cfg.data_dir.display())))?;
        let dir_lock = util::dir_lock::DirLock::acquire(&cfg.data_dir)?;
        let storage = Storage::open(&cfg.data_dir)?;
        let secret_path = util::secret::path_in(&cfg.cluster_secret_file, &cfg.data_dir);
        let secret = util::secret::ClusterSecret::load_or_create(&secret_path, fresh)?;
        let core = Arc::new(PdCore::open(cfg.clone(), storage, logger.clone())?);
        crate::metrics::register_all();
        let weak = Arc::downgrade(&core);
        status::register_latest(|| {
            // Weak: the registry lives as long as the process, PD's database must not.
            let weak = weak.clone();
            Box::new(crate::metrics::ClusterCollector::new(Box::new(move || {
                weak.upgrade().map(|core| core.summary())
            })))
        });
        let client_url = Arc::new(OnceLock::new());
        let service = PdService {
            core: core.clone(),
            client_url: client_url.clone(),
            secret,
            logger: logger.clone(),
        };
        let env = Arc::new(
            grpcio::EnvBuilder::new()
                .cq_count(1)
                .name_prefix("pd-grpc")
                .build(),
        );
        // Accepts the pings PD clients send to find a dead connection.
        let args = grpcio::ChannelBuilder::new(env.clone())
            .http2_min_recv_ping_interval_without_data(util::grpc::PD_KEEPALIVE.0 / 2)
            .build_args();
        let mut server = ServerBuilder::new(env as Arc<Environment>)
            .channel_args(args)
            .register_service(proto_grpc::pdpb_grpc::create_pd(service))
            .build()?;
        let port = server.add_listening_port(cfg.addr.clone(), ServerCredentials::insecure())?;
        let host = cfg.addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        let addr = if cfg.advertise_addr.is_empty() {
            format!("{host}:{port}")
        } else {
            cfg.advertise_addr.clone()
        };
        client_url
            .set(format!("http://{addr}"))
            .expect("set once, before serving");
        server.start();
        info!(logger, "pd serving"; "addr" => &addr, "cluster_id" => core.cluster_id());
        Ok(PdServer {
            server,
            core,
            addr,
            _dir_lock: dir_lock,
        })
    }

    /// The address clients reach this PD at (host:port).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// PD's state, for status pages and tests.
    pub fn core(&self) -> Arc<PdCore> {
        self.core.clone()
    }

    /// Stops serving; long-lived streams (heartbeats, TSO) are cancelled, not awaited.
    pub fn shutdown(mut self) {
        let done = self.server.shutdown();
        self.server.cancel_all_calls();
        let _ = futures::executor::block_on(done);
    }
}
