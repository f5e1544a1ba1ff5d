//! A kv-server process as it is run: its config file, and the store with, when no PD
//! endpoints are given, an embedded PD beside it (a single-node cluster in one process).
//!
//! The one place where the store and the PD server meet, so that `server` need not
//! depend on `pd`. Holds no logic of either: it composes them.

use conf::Validate;
use serde::{Deserialize, Serialize};
use slog::Logger;

/// Errors of starting a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] server::Error),
    /// The embedded PD failed.
    #[error("embedded pd: {0}")]
    EmbeddedPd(#[from] pd::Error),
    /// The cluster secret of a single-node cluster could not be read or created.
    #[error(transparent)]
    Secret(#[from] util::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The kv-server config file: the store's sections (`server::Config`) and `[pd]`, the
/// embedded PD's, used only when `server.pd-endpoints` is empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Addresses, data directory, PD endpoints.
    pub server: server::config::ServerConfig,
    /// The database's memory.
    pub storage: server::config::StorageConfig,
    /// Raft settings.
    pub raftstore: raftstore::Config,
    /// Settings of the embedded PD.
    pub pd: pd::Config,
    /// How this store proves it belongs to the cluster.
    pub security: server::config::SecurityConfig,
    /// Logging.
    pub log: util::logger::LogConfig,
    /// Garbage collection of old transactional versions.
    pub gc: server::config::GcConfig,
    /// The bounds transactional requests are held to.
    pub txn: server::config::TxnConfig,
}

impl Config {
    /// The store's part of the file.
    pub fn store(&self) -> server::Config {
        server::Config {
            server: self.server.clone(),
            storage: self.storage.clone(),
            raftstore: self.raftstore.clone(),
            security: self.security.clone(),
            log: self.log.clone(),
            gc: self.gc.clone(),
            txn: self.txn.clone(),
        }
    }

    /// Whether this node runs its own PD.
    pub fn embeds_pd(&self) -> bool {
        self.server.pd_endpoints.is_empty()
    }
}

impl Validate for Config {
    fn validate(&self) -> conf::Result<()> {
        self.store().validate()?;
        if self.embeds_pd() {
            self.pd.validate()?;
        }
        Ok(())
    }
}

/// A running kv-server: the store and, in a single-node cluster, its PD.
pub struct Node {
    store: server::Node,
    pd: Option<pd::PdServer>,
}

impl Node {
    /// Starts the embedded PD if the config names no PD, then the store. Must run
    /// inside a tokio runtime.
    pub async fn start(cfg: Config, logger: Logger) -> Result<Node> {
        let mut store_cfg = cfg.store();
        let pd = match cfg.embeds_pd() {
            true => Some(embedded_pd(&cfg, &mut store_cfg, &logger)?),
            false => None,
        };
        let store = server::Node::start(store_cfg, logger).await?;
        Ok(Node { store, pd })
    }

    /// Waits until PD says this store was decommissioned (tombstone).
    pub async fn retired(&self) {
        self.store.retired().await
    }

    /// Stops the store (handing its leaders away first), then the embedded PD.
    pub async fn stop(self) {
        self.store.stop().await;
        if let Some(pd) = self.pd {
            pd.shutdown();
        }
    }
}

/// Starts a PD in `<data-dir>/pd` and points the store at it. The cluster secret is
/// created in the data directory (or the configured file) at the first start, before
/// either opens its data: a secret missing beside old data is an error, since a new one
/// would not match what the store or PD was started with.
fn embedded_pd(cfg: &Config, store: &mut server::Config, logger: &Logger) -> Result<pd::PdServer> {
    let data_dir = &cfg.server.data_dir;
    let secret = util::secret::path_in(&cfg.security.cluster_secret_file, data_dir);
    let fresh = !data_dir.join("db").join("CURRENT").exists();
    util::secret::ClusterSecret::load_or_create(&secret, fresh)?;
    let mut pd_cfg = cfg.pd.clone();
    pd_cfg.data_dir = data_dir.join("pd");
    pd_cfg.cluster_secret_file = secret.clone();
    let pd = pd::PdServer::start(pd_cfg, logger.new(slog::o!("component" => "pd")))?;
    store.server.pd_endpoints = vec![pd.addr().to_string()];
    store.security.cluster_secret_file = secret;
    Ok(pd)
}
