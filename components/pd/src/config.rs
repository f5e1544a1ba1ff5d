//! PD settings.

use std::{path::PathBuf, time::Duration};

use conf::{ensure, Validate};
use serde::{Deserialize, Serialize};

/// PD settings; every key has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC service listens on.
    pub addr: String,
    /// Address given to clients (GetMembers); defaults to `addr`.
    pub advertise_addr: String,
    /// Where PD keeps its metadata.
    pub data_dir: PathBuf,
    /// Voters every region should have.
    pub max_replicas: usize,
    /// A store silent this long is down and its peers are replaced.
    #[serde(with = "humantime_serde")]
    pub max_store_down_time: Duration,
    /// Ids reserved on disk at a time.
    pub id_batch: u64,
    /// An operator not finished after this long is abandoned.
    #[serde(with = "humantime_serde")]
    pub operator_timeout: Duration,
    /// Move replicas and leaders between stores to even out their counts.
    pub enable_balance: bool,
    /// Balance operators start on a store only while fewer than this many touch it.
    pub store_limit: usize,
    /// After a restart, balancing waits until every known region has reported its
    /// leader, or this long at most: until then leader counts are guesses.
    #[serde(with = "humantime_serde")]
    pub balance_warmup: Duration,
    /// Most new regions one split may ask ids for (AskBatchSplit's split count).
    pub max_batch_split: u32,
    /// The cluster secret stores must present (see `util::secret`); empty: created at
    /// first start as `<data-dir>/cluster-secret`, the file to give every store.
    pub cluster_secret_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:2379".into(),
            advertise_addr: String::new(),
            data_dir: PathBuf::from("./pd-data"),
            max_replicas: 3,
            max_store_down_time: Duration::from_secs(30),
            id_batch: 1000,
            operator_timeout: Duration::from_secs(600),
            enable_balance: true,
            store_limit: 4,
            balance_warmup: Duration::from_secs(120),
            max_batch_split: 256,
            cluster_secret_file: PathBuf::new(),
        }
    }
}

impl Config {
    /// The address clients should dial.
    pub fn client_addr(&self) -> &str {
        if self.advertise_addr.is_empty() {
            &self.addr
        } else {
            &self.advertise_addr
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> conf::Result<()> {
        ensure(
            self.addr.parse::<std::net::SocketAddr>().is_ok(),
            "pd.addr",
            "must be HOST:PORT with a numeric host",
        )?;
        ensure(
            self.max_replicas >= 1,
            "pd.max-replicas",
            "must be at least 1",
        )?;
        ensure(
            (1..=100_000).contains(&self.max_batch_split),
            "pd.max-batch-split",
            "must be between 1 and 100000",
        )?;
        ensure(
            !self.max_store_down_time.is_zero(),
            "pd.max-store-down-time",
            "must be positive",
        )?;
        ensure(self.id_batch >= 1, "pd.id-batch", "must be at least 1")?;
        ensure(
            self.store_limit >= 1,
            "pd.store-limit",
            "must be at least 1",
        )?;
        Ok(())
    }
}

/// The pd-server config file: `[pd]`, the status address, and `[log]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// PD settings.
    pub pd: Config,
    /// Status HTTP (`/metrics`, `/status`).
    pub status_addr: String,
    /// Logging.
    pub log: util::logger::LogConfig,
}

impl Validate for FileConfig {
    fn validate(&self) -> conf::Result<()> {
        self.pd.validate()?;
        ensure(
            self.status_addr.is_empty() || self.status_addr.parse::<std::net::SocketAddr>().is_ok(),
            "status-addr",
            "must be IP:PORT (or empty for none)",
        )
    }
}
