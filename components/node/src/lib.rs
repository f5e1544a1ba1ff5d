//! A kv-server process as it is run: its config file, and the store with, when no PD
//! endpoints are given, an embedded PD beside it (a single-node cluster in one process).
//!
//! Owns: the kv-server config file and the order in which a node starts and stops its
//! parts. The one place where the store and the PD server meet, so that `server` need not
//! depend on `pd`. Must not depend on command-line crates (`cli`, clap), nor hold logic of
//! the store or PD.

use std::path::PathBuf;

use conf::Validate;
use serde::{Deserialize, Serialize};
use slog::Logger;

/// Parses `kv-server --labels zone=z1,rack=r1`.
pub use server::config::parse_labels;

/// Errors of starting a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] server::Error),
    /// The embedded PD failed.
    #[error("embedded pd: {0}")]
    EmbeddedPd(#[from] pd::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The kv-server config file: the store's sections (`server::Config`) and `[pd]`, the
/// embedded PD's, used only when `server.pd-endpoints` is empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Addresses, data directory, PD endpoints.
    pub server: server::config::ServerConfig,
    /// The database's memory.
    pub storage: server::config::StorageConfig,
    /// Raft settings.
    pub raftstore: raftstore::Config,
    /// Settings of the embedded PD (see [`embedded_pd_section`] for its one different default).
    #[serde(deserialize_with = "embedded_pd_section")]
    pub pd: pd::Config,
    /// How this store proves it belongs to the cluster.
    pub security: server::config::SecurityConfig,
    /// Logging.
    pub log: util::logger::LogConfig,
    /// Garbage collection of old transactional versions.
    pub gc: server::config::GcConfig,
    /// The bounds transactional requests are held to.
    pub txn: server::config::TxnConfig,
    /// Users and tokens, kept by the embedded PD (pd-server has its own `[auth]`).
    pub auth: pd::AuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: Default::default(),
            storage: Default::default(),
            raftstore: Default::default(),
            pd: pd::Config {
                max_replicas: EMBEDDED_MAX_REPLICAS,
                ..Default::default()
            },
            security: Default::default(),
            log: Default::default(),
            gc: Default::default(),
            txn: Default::default(),
            auth: Default::default(),
        }
    }
}

/// Voters per region the embedded PD keeps unless `[pd] max-replicas` says otherwise: a
/// single node holds one replica, so that it is healthy, not short of two replicas.
const EMBEDDED_MAX_REPLICAS: usize = 1;

/// `[pd]` as written, with `max-replicas` defaulting to [`EMBEDDED_MAX_REPLICAS`]
/// (pd-server's default, 3, would leave a single node degraded forever).
fn embedded_pd_section<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<pd::Config, D::Error> {
    let mut table = toml::Table::deserialize(d)?;
    table
        .entry("max-replicas")
        .or_insert(toml::Value::Integer(EMBEDDED_MAX_REPLICAS as i64));
    table.try_into().map_err(serde::de::Error::custom)
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
            self.auth.validate()?;
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
    /// Starts the store and, if the config names no PD, the embedded PD: the store's
    /// directory is locked, its secret read (created for a new directory) and its database
    /// opened before the PD starts, and the store joins once the PD serves. Must run
    /// inside a tokio runtime.
    pub async fn start(cfg: Config, logger: Logger) -> Result<Node> {
        if !cfg.embeds_pd() {
            let store = server::Node::start(cfg.store(), logger).await?;
            return Ok(Node { store, pd: None });
        }
        let open = server::Node::open(cfg.store(), true)?;
        let pd = embedded_pd(&cfg, open.secret_path(), &logger)?;
        match open.start(vec![pd.addr().to_string()], logger).await {
            Ok(store) => Ok(Node {
                store,
                pd: Some(pd),
            }),
            Err(e) => {
                pd.shutdown();
                Err(e.into())
            }
        }
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

/// Starts a PD in `<data-dir>/pd` that checks the store's cluster secret (`secret`).
fn embedded_pd(cfg: &Config, secret: PathBuf, logger: &Logger) -> Result<pd::PdServer> {
    let mut pd_cfg = cfg.pd.clone();
    pd_cfg.data_dir = cfg.server.data_dir.join("pd");
    pd_cfg.cluster_secret_file = secret;
    // The store's own certificates: it dials its PD as any store would.
    pd_cfg.security = cfg.security.clone();
    pd_cfg.auth = cfg.auth.clone();
    // A group of one: the store's single node needs no other member.
    pd_cfg.initial_cluster.clear();
    pd_cfg.join.clear();
    Ok(pd::PdServer::start(
        pd_cfg,
        logger.new(slog::o!("component" => "pd")),
    )?)
}
