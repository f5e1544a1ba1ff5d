//! A store's config file: `[server]`, `[storage]` (RocksDB's memory), `[raftstore]`,
//! `[security]`, `[log]`, `[gc]` and `[txn]`. The file kv-server reads adds `[pd]` for
//! the embedded PD (`node::Config`).

use std::{collections::BTreeMap, path::PathBuf};

use bytesize::ByteSize;
use conf::{ensure, Validate};
use serde::{Deserialize, Serialize};
use util::logger::LogConfig;

/// The whole kv-server config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Addresses, data directory, PD.
    pub server: ServerConfig,
    /// The database's memory.
    pub storage: StorageConfig,
    /// Raft settings.
    pub raftstore: raftstore::Config,
    /// How this store proves it belongs to the cluster.
    pub security: SecurityConfig,
    /// Logging.
    pub log: LogConfig,
    /// Garbage collection of old transactional versions.
    pub gc: GcConfig,
    /// The bounds transactional requests are held to.
    pub txn: TxnConfig,
}

/// The `[txn]` section: what a transactional request may ask for. Past a limit the
/// request is refused with an error naming the field, and nothing is written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TxnConfig {
    /// Largest key, primary or secondary.
    pub max_key_size: ByteSize,
    /// Most keys (mutations, secondaries, transactions to resolve) in one request.
    pub max_keys_per_command: usize,
    /// Longest lock TTL a transaction may ask for: a dead client's locks block their
    /// keys this long.
    #[serde(with = "humantime_serde")]
    pub max_lock_ttl: std::time::Duration,
    /// How far a request's timestamp may run ahead of PD's clock as this store knows it.
    /// Timestamps raise the store's `max_ts` for good and commit records stay: one far
    /// in the future would push every later async commit past it, or wedge a key.
    #[serde(with = "humantime_serde")]
    pub max_ts_drift: std::time::Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        let limits = txn::Limits::default();
        TxnConfig {
            max_key_size: ByteSize::b(limits.max_key_size as u64),
            max_keys_per_command: limits.max_keys,
            max_lock_ttl: std::time::Duration::from_millis(limits.max_ttl_ms),
            max_ts_drift: std::time::Duration::from_secs(5),
        }
    }
}

impl TxnConfig {
    /// The limits the `txn` crate checks requests against.
    pub fn limits(&self) -> txn::Limits {
        txn::Limits {
            max_key_size: self.max_key_size.as_u64() as usize,
            max_keys: self.max_keys_per_command,
            max_ttl_ms: self.max_lock_ttl.as_millis() as u64,
        }
    }

    fn validate(&self, raft_entry_max_size: u64) -> conf::Result<()> {
        ensure(
            self.max_key_size.as_u64() > 0 && self.max_key_size.as_u64() * 4 < raft_entry_max_size,
            "txn.max-key-size",
            "must be positive and below a quarter of raftstore.raft-entry-max-size",
        )?;
        ensure(
            self.max_keys_per_command > 0,
            "txn.max-keys-per-command",
            "must be positive",
        )?;
        ensure(
            !self.max_lock_ttl.is_zero(),
            "txn.max-lock-ttl",
            "must be positive",
        )?;
        ensure(
            self.max_ts_drift >= std::time::Duration::from_secs(1),
            "txn.max-ts-drift",
            "must be at least 1s (PD's clock may jump ahead by its save interval)",
        )
    }
}

/// The `[gc]` section. The store leading the start of the key space advances the
/// cluster's GC safe point to now minus `life-time` every `run-interval` (after resolving
/// older locks); every store then drops, in the regions it leads, the versions below the
/// safe point that no read can see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct GcConfig {
    /// How long old versions stay readable: snapshot reads may go this far back.
    #[serde(with = "humantime_serde")]
    pub life_time: std::time::Duration,
    /// How often the safe point advances and stores collect.
    #[serde(with = "humantime_serde")]
    pub run_interval: std::time::Duration,
    /// Whether this store takes part (advancing the safe point when it leads the first
    /// region, and collecting).
    pub enable: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            life_time: std::time::Duration::from_secs(600),
            run_interval: std::time::Duration::from_secs(60),
            enable: true,
        }
    }
}

/// The `[storage]` section: what bounds RocksDB's memory. A store's resident memory is
/// about `block-cache-size + memtable-budget` plus a fixed overhead (see the README).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageConfig {
    /// The block cache shared by every column family.
    pub block_cache_size: ByteSize,
    /// All memtables together; past it RocksDB flushes the largest, and stalls writers
    /// while flushes cannot keep up.
    pub memtable_budget: ByteSize,
    /// One memtable's size before it is flushed.
    pub write_buffer_size: ByteSize,
    /// The longest time to live a raw write may ask for (RawPut's `ttl`).
    #[serde(with = "humantime_serde")]
    pub raw_max_ttl: std::time::Duration,
    /// How long an expired raw value stays on disk before compaction drops it. Reads
    /// never see it after its expiry; the wait covers a replica that applies an old
    /// compare-and-swap late (after a restart) and must still find the value the leader
    /// saw alive, and clocks that disagree.
    #[serde(with = "humantime_serde")]
    pub raw_expired_retention: std::time::Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let e = engine::EngineOptions::default();
        StorageConfig {
            block_cache_size: ByteSize::b(e.block_cache_bytes as u64),
            memtable_budget: ByteSize::b(e.memtable_budget_bytes as u64),
            write_buffer_size: ByteSize::b(e.write_buffer_bytes as u64),
            raw_max_ttl: std::time::Duration::from_secs(10 * 365 * 86_400),
            raw_expired_retention: std::time::Duration::from_secs(86_400),
        }
    }
}

impl StorageConfig {
    /// The engine's options; compactions drop expired raw values once `armed`.
    pub fn engine_options(
        &self,
        armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> engine::EngineOptions {
        engine::EngineOptions {
            block_cache_bytes: self.block_cache_size.as_u64() as usize,
            memtable_budget_bytes: self.memtable_budget.as_u64() as usize,
            write_buffer_bytes: self.write_buffer_size.as_u64() as usize,
            default_cf_drop: Some(crate::storage::raw_expiry_filter(
                self.raw_expired_retention,
                armed,
            )),
            ..Default::default()
        }
    }

    fn validate(&self) -> conf::Result<()> {
        ensure(
            self.raw_max_ttl.as_secs() >= 1,
            "storage.raw-max-ttl",
            "must be at least 1s",
        )?;
        ensure(
            self.raw_expired_retention >= MIN_RAW_EXPIRED_RETENTION,
            "storage.raw-expired-retention",
            "must be at least 1h: a replica that applies a compare-and-swap later than this \
             after it was proposed may find the value compacted away and decide otherwise",
        )?;
        ensure(
            self.block_cache_size >= ByteSize::mib(8),
            "storage.block-cache-size",
            "must be at least 8MiB",
        )?;
        ensure(
            self.write_buffer_size >= ByteSize::mib(1),
            "storage.write-buffer-size",
            "must be at least 1MiB",
        )?;
        ensure(
            self.memtable_budget.as_u64() >= 2 * self.write_buffer_size.as_u64(),
            "storage.memtable-budget",
            "must be at least twice storage.write-buffer-size",
        )
    }
}

/// The shortest `storage.raw-expired-retention`: longer than clocks may disagree and a
/// replica's apply may lag in normal operation.
pub const MIN_RAW_EXPIRED_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// The `[security]` section: TLS and the cluster secret.
pub use util::security::SecurityConfig;

/// The `[server]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerConfig {
    /// Where clients and other stores reach this store's gRPC service.
    pub addr: String,
    /// Address announced to PD, if not `addr`.
    pub advertise_addr: String,
    /// Status HTTP (`/metrics`, `/status`).
    pub status_addr: String,
    /// Status address announced to PD (what `kvctl cluster stats` scrapes), if not
    /// `status_addr`.
    pub advertise_status_addr: String,
    /// Data directory (RocksDB, snapshots, embedded PD).
    pub data_dir: PathBuf,
    /// PD addresses; empty starts an embedded PD (a single-node cluster in one process).
    pub pd_endpoints: Vec<String>,
    /// gRPC completion queues.
    pub grpc_concurrency: usize,
    /// How long a client request may wait on Raft before it fails (a write then has an
    /// undetermined result).
    #[serde(with = "humantime_serde")]
    pub request_timeout: std::time::Duration,
    /// Largest gRPC message this store sends or receives.
    pub max_message_size: ByteSize,
    /// Largest answer a scan or batch get may build; past it the request fails and should
    /// ask for fewer keys.
    pub max_response_size: ByteSize,
    /// Client requests this store serves at once (unary calls and BatchCommands
    /// requests alike); past it a request is answered server_is_busy at once, and the
    /// client backs off, rather than queueing until it times out.
    pub max_inflight_requests: usize,
    /// Requests one BatchCommands stream may have served between being read and their
    /// answers being written; past it a request is answered server_is_busy at once, and
    /// once as many of those are unwritten too, the store stops reading the stream.
    pub stream_max_inflight: usize,
    /// Snapshots received at once; more are refused until one ends (the sender retries).
    pub snap_max_concurrent_recv: usize,
    /// Snapshots sent at once; more wait their turn.
    pub snap_max_concurrent_send: usize,
    /// Raft messages waiting to go to one other store; past it new ones are dropped
    /// (Raft sends them again).
    pub raft_msg_queue_capacity: usize,
    /// How often a connection between stores with calls in flight is pinged: a peer
    /// whose address went away (a container reconnected with a new IP, a host gone)
    /// is noticed within this plus `grpc-keepalive-timeout`, not at TCP's timeout.
    #[serde(with = "humantime_serde")]
    pub grpc_keepalive_time: std::time::Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    #[serde(with = "humantime_serde")]
    pub grpc_keepalive_timeout: std::time::Duration,
    /// On SIGTERM, how long the store may spend handing its leaders to other stores
    /// before it stops anyway.
    #[serde(with = "humantime_serde")]
    pub graceful_shutdown_timeout: std::time::Duration,
    /// Where this store sits (`{ zone = "z1", rack = "r1", host = "h1" }`), reported to
    /// PD, which spreads replicas over its `replication.location-labels`.
    pub labels: BTreeMap<String, String>,
    /// The most staleness a raw stale read may ask for.
    #[serde(with = "humantime_serde")]
    pub max_read_staleness: std::time::Duration,
    /// How often this store advances the safe timestamp of the regions it leads (what
    /// transactional stale reads on their replicas may read at).
    #[serde(with = "humantime_serde")]
    pub safe_ts_interval: std::time::Duration,
    /// How often this store asks PD whether users, roles or signing keys changed: a
    /// deleted user's token stops working here within about this long.
    #[serde(with = "humantime_serde")]
    pub auth_refresh_interval: std::time::Duration,
    /// With auth on, requests are refused (UNAVAILABLE-like, retryable) once the users
    /// this store knows are older than this: past it, a deleted user could still be
    /// served while PD is out of reach.
    #[serde(with = "humantime_serde")]
    pub auth_max_staleness: std::time::Duration,
}

/// The most requests `server.max-inflight-requests` may allow (tokio's semaphores hold
/// fewer than `usize::MAX >> 3` permits; past a million, memory, not this, is the bound).
pub const MAX_INFLIGHT_REQUESTS: usize = 1 << 20;

/// Parses `--labels zone=z1,rack=r1`: every part KEY=VALUE, no key twice.
pub fn parse_labels(s: &str) -> conf::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            conf::Error::InvalidConfig(format!("server.labels: {part:?} is not KEY=VALUE"))
        })?;
        let (k, v) = (k.trim(), v.trim());
        ensure(
            !out.contains_key(k),
            "server.labels",
            &format!("label {k:?} is given twice"),
        )?;
        out.insert(k.to_string(), v.to_string());
    }
    check_labels(&out)?;
    Ok(out)
}

fn check_labels(labels: &BTreeMap<String, String>) -> conf::Result<()> {
    let pairs = labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    util::labels::check_all(pairs)
        .map_err(|why| conf::Error::InvalidConfig(format!("server.labels: {why}")))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: "127.0.0.1:20160".into(),
            advertise_addr: String::new(),
            status_addr: "127.0.0.1:20180".into(),
            advertise_status_addr: String::new(),
            data_dir: PathBuf::from("./flotilla-data"),
            pd_endpoints: vec![],
            grpc_concurrency: 2,
            request_timeout: std::time::Duration::from_secs(10),
            max_message_size: ByteSize::mib(64),
            max_response_size: ByteSize::mib(32),
            max_inflight_requests: 8192,
            stream_max_inflight: 1024,
            snap_max_concurrent_recv: 4,
            snap_max_concurrent_send: 4,
            raft_msg_queue_capacity: 16_384,
            grpc_keepalive_time: std::time::Duration::from_secs(10),
            grpc_keepalive_timeout: std::time::Duration::from_secs(3),
            graceful_shutdown_timeout: std::time::Duration::from_secs(10),
            labels: BTreeMap::new(),
            max_read_staleness: std::time::Duration::from_secs(600),
            safe_ts_interval: std::time::Duration::from_secs(1),
            auth_refresh_interval: std::time::Duration::from_secs(1),
            auth_max_staleness: std::time::Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// The address other stores and clients should dial.
    pub fn advertise(&self) -> &str {
        if self.advertise_addr.is_empty() {
            &self.addr
        } else {
            &self.advertise_addr
        }
    }
}

fn socket_addr(s: &str, key: &str) -> conf::Result<()> {
    ensure(
        s.parse::<std::net::SocketAddr>().is_ok(),
        key,
        "must be IP:PORT",
    )
}

impl Validate for Config {
    fn validate(&self) -> conf::Result<()> {
        socket_addr(&self.server.addr, "server.addr")?;
        socket_addr(&self.server.status_addr, "server.status-addr")?;
        if let Some((key, why)) = self.security.server_problem() {
            ensure(false, key, &why)?;
        }
        ensure(
            !self.server.data_dir.as_os_str().is_empty(),
            "server.data-dir",
            "must not be empty",
        )?;
        ensure(
            self.server.grpc_concurrency > 0,
            "server.grpc-concurrency",
            "must be positive",
        )?;
        ensure(
            !self.server.request_timeout.is_zero(),
            "server.request-timeout",
            "must be positive",
        )?;
        let s = &self.server;
        ensure(
            s.max_message_size.as_u64() <= i32::MAX as u64
                && s.max_message_size.as_u64() > self.raftstore.raft_entry_max_size.as_u64(),
            "server.max-message-size",
            "must be larger than raftstore.raft-entry-max-size and below 2GiB",
        )?;
        ensure(
            s.max_response_size.as_u64() > 0 && s.max_response_size < s.max_message_size,
            "server.max-response-size",
            "must be positive and smaller than server.max-message-size",
        )?;
        ensure(
            s.max_inflight_requests > 0 && s.max_inflight_requests <= MAX_INFLIGHT_REQUESTS,
            "server.max-inflight-requests",
            &format!("must be between 1 and {MAX_INFLIGHT_REQUESTS}"),
        )?;
        ensure(
            s.stream_max_inflight > 0 && s.stream_max_inflight <= MAX_INFLIGHT_REQUESTS,
            "server.stream-max-inflight",
            &format!("must be between 1 and {MAX_INFLIGHT_REQUESTS}"),
        )?;
        ensure(
            s.snap_max_concurrent_recv > 0 && s.snap_max_concurrent_send > 0,
            "server.snap-max-concurrent-recv",
            "snapshot concurrency limits must be positive",
        )?;
        ensure(
            !s.grpc_keepalive_time.is_zero() && !s.grpc_keepalive_timeout.is_zero(),
            "server.grpc-keepalive-time",
            "keepalive time and timeout must be positive",
        )?;
        ensure(
            s.raft_msg_queue_capacity > 0,
            "server.raft-msg-queue-capacity",
            "must be positive",
        )?;
        check_labels(&s.labels)?;
        ensure(
            !s.max_read_staleness.is_zero() && !s.safe_ts_interval.is_zero(),
            "server.max-read-staleness",
            "max-read-staleness and safe-ts-interval must be positive",
        )?;
        ensure(
            !s.auth_refresh_interval.is_zero()
                && s.auth_max_staleness >= s.auth_refresh_interval * 3,
            "server.auth-max-staleness",
            "auth-refresh-interval must be positive and auth-max-staleness at least three times it",
        )?;
        ensure(
            !self.gc.run_interval.is_zero(),
            "gc.run-interval",
            "must be positive",
        )?;
        self.storage.validate()?;
        self.raftstore.validate()?;
        self.txn
            .validate(self.raftstore.raft_entry_max_size.as_u64())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_labels_stop_the_store_at_start() {
        let ok = parse_labels("zone=z1, host=h1").expect("labels");
        assert_eq!(ok.get("zone").map(String::as_str), Some("z1"));
        for (bad, why) in [
            ("zone", "KEY=VALUE"),
            ("=z1", "1 to 128"),
            ("zone=", "1 to 128"),
            ("zone=z1,zone=z2", "given twice"),
            ("zone=z 1", "letters, digits"),
        ] {
            let err = parse_labels(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let mut cfg = ServerConfig::default();
        cfg.labels.insert(String::new(), "z1".into());
        assert!(check_labels(&cfg.labels).is_err());
    }

    #[test]
    fn request_bounds_must_be_positive_and_bounded() {
        assert!(Config::default().validate().is_ok());
        for (inflight, stream, key) in [
            (0, 1, "server.max-inflight-requests"),
            (MAX_INFLIGHT_REQUESTS + 1, 1, "server.max-inflight-requests"),
            (8, 0, "server.stream-max-inflight"),
            (8, MAX_INFLIGHT_REQUESTS + 1, "server.stream-max-inflight"),
        ] {
            let mut cfg = Config::default();
            cfg.server.max_inflight_requests = inflight;
            cfg.server.stream_max_inflight = stream;
            let err = cfg.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{inflight}/{stream}: {err}");
        }
    }
}
