//! Store server metrics.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
};

/// Client request latency by RPC.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "flotilla_server_request_seconds",
        "Latency of client requests, by RPC",
        &["rpc"],
        exponential_buckets(0.0001, 2.0, 20).expect("valid buckets")
    )
    .expect("register metric")
});

/// Client requests answered, by RPC and outcome (ok, error, region_error, key_error,
/// denied, busy).
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_server_requests_total",
        "Client requests answered, by RPC and outcome (ok; error: a raw request's error; key_error: a transactional key error; region_error: the client must re-route; denied: its caller may not make it; busy: refused server_is_busy at once)",
        &["rpc", "outcome"]
    )
    .expect("register metric")
});

/// Requests forwarded to another store's leader, by RPC.
pub static FORWARDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_server_forwarded_total",
        "Requests from clients without routing forwarded to the leader's store",
        &["rpc"]
    )
    .expect("register metric")
});

/// Batches of Raft messages sent to other stores.
pub static RAFT_BATCHES_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_server_raft_batches_sent_total",
        "BatchRaft messages sent (each carries every message of a round for one store)"
    )
    .expect("register metric")
});

/// Raft messages received from other stores.
pub static RAFT_MESSAGES_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_server_raft_messages_received_total",
        "Raft messages received from other stores"
    )
    .expect("register metric")
});

/// Raft messages dropped because the queue to their store was full.
pub static RAFT_MESSAGES_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_server_raft_messages_dropped_total",
        "Raft messages dropped because the queue to their store was full (server.raft-msg-queue-capacity)"
    )
    .expect("register metric")
});

/// Raft messages waiting to go to each other store.
pub static TRANSPORT_QUEUE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "flotilla_server_raft_queue_messages",
        "Raft messages queued for another store (bounded by server.raft-msg-queue-capacity)",
        &["to_store"]
    )
    .expect("register metric")
});

/// Peer streams refused for lacking the cluster secret.
pub static PEER_STREAMS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_server_peer_streams_refused_total",
        "Raft and snapshot streams refused because they carried no valid cluster secret"
    )
    .expect("register metric")
});

/// Registers every series of this crate and of raftstore, so that a scrape shows zeros
/// before the first event.
pub fn register_all() {
    raftstore::metrics::register_all();
    LazyLock::force(&RAFT_BATCHES_SENT);
    LazyLock::force(&RAFT_MESSAGES_RECEIVED);
    LazyLock::force(&RAFT_MESSAGES_DROPPED);
    LazyLock::force(&PEER_STREAMS_REFUSED);
    LazyLock::force(&TRANSPORT_QUEUE);
    LazyLock::force(&FORWARDED);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&GC_SAFE_POINT);
    LazyLock::force(&GC_VERSIONS_DROPPED);
    LazyLock::force(&GC_LOCKS_RESOLVED);
    LazyLock::force(&TXN_LATCH_WAIT_SECONDS);
    LazyLock::force(&TXN_KEY_ERRORS);
    LazyLock::force(&BUSY);
    LazyLock::force(&BATCH_STREAMS);
    LazyLock::force(&BATCH_REQUESTS_PER_MESSAGE);
}

/// The engine's statistics, read at each scrape (RocksDB keeps them; copying them into
/// gauges on a timer would only make them stale).
pub struct EngineCollector {
    /// Weak: the registry lives as long as the process, the database must not.
    engine: engine::WeakEngine,
    descs: Vec<prometheus::core::Desc>,
}

/// Name, help, and whether it is per column family.
const ENGINE_SERIES: [(&str, &str, bool); 14] = [
    (
        "flotilla_engine_block_cache_usage_bytes",
        "Block cache bytes in use",
        false,
    ),
    (
        "flotilla_engine_block_cache_capacity_bytes",
        "Block cache size (storage.block-cache-size)",
        false,
    ),
    (
        "flotilla_engine_block_cache_hits_total",
        "Block reads served by the block cache",
        false,
    ),
    (
        "flotilla_engine_block_cache_misses_total",
        "Block reads that missed the block cache",
        false,
    ),
    (
        "flotilla_engine_memtable_bytes",
        "Bytes of every memtable together",
        false,
    ),
    (
        "flotilla_engine_memtable_budget_bytes",
        "The memtable budget (storage.memtable-budget)",
        false,
    ),
    (
        "flotilla_engine_write_stall_seconds_total",
        "Time writers spent stalled by RocksDB",
        false,
    ),
    (
        "flotilla_engine_write_stopped",
        "1 while RocksDB stops writes (compaction debt, too many files)",
        false,
    ),
    (
        "flotilla_engine_disk_capacity_bytes",
        "Size of the filesystem holding the data directory",
        false,
    ),
    (
        "flotilla_engine_disk_available_bytes",
        "Free bytes on that filesystem",
        false,
    ),
    (
        "flotilla_engine_sst_files",
        "Live SST files, by column family",
        true,
    ),
    (
        "flotilla_engine_sst_bytes",
        "Bytes of live SST files, by column family",
        true,
    ),
    (
        "flotilla_engine_pending_compaction_bytes",
        "Bytes compaction still has to rewrite, by column family",
        true,
    ),
    (
        "flotilla_engine_keys",
        "Keys, as RocksDB estimates them, by column family",
        true,
    ),
];

impl EngineCollector {
    /// A collector for `engine`, reporting nothing once it is closed.
    pub fn new(engine: engine::WeakEngine) -> EngineCollector {
        let descs = ENGINE_SERIES
            .iter()
            .map(|(name, help, per_cf)| {
                let labels = if *per_cf {
                    vec!["cf".to_string()]
                } else {
                    vec![]
                };
                prometheus::core::Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
                .expect("valid metric description")
            })
            .collect();
        EngineCollector { engine, descs }
    }
}

impl prometheus::core::Collector for EngineCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Some(engine) = self.engine.upgrade() else {
            return vec![];
        };
        let s = engine.stats();
        let dir = engine.path();
        let one = |name: &str, help: &str, v: f64| -> prometheus::proto::MetricFamily {
            let g = prometheus::Gauge::new(name, help).expect("valid gauge");
            g.set(v);
            g.collect().remove(0)
        };
        // A fresh counter per scrape, raised to RocksDB's running total.
        let counter = |name: &str, help: &str, v: f64| {
            let c = prometheus::Counter::new(name, help).expect("valid counter");
            c.inc_by(v);
            c.collect().remove(0)
        };
        let per_cf = |name: &str, help: &str, f: &dyn Fn(&engine::CfStats) -> u64| {
            let g = prometheus::GaugeVec::new(prometheus::Opts::new(name, help), &["cf"])
                .expect("valid gauge");
            for c in &s.cfs {
                g.with_label_values(&[c.cf]).set(f(c) as f64);
            }
            g.collect().remove(0)
        };
        let h = |i: usize| (ENGINE_SERIES[i].0, ENGINE_SERIES[i].1);
        vec![
            one(h(0).0, h(0).1, s.block_cache_usage as f64),
            one(h(1).0, h(1).1, s.block_cache_capacity as f64),
            counter(h(2).0, h(2).1, s.block_cache_hits as f64),
            counter(h(3).0, h(3).1, s.block_cache_misses as f64),
            one(h(4).0, h(4).1, s.memtable_bytes as f64),
            one(h(5).0, h(5).1, s.memtable_budget as f64),
            counter(h(6).0, h(6).1, s.stall_micros as f64 / 1e6),
            one(h(7).0, h(7).1, f64::from(u8::from(s.write_stopped))),
            one(h(8).0, h(8).1, fs2::total_space(dir).unwrap_or(0) as f64),
            one(
                h(9).0,
                h(9).1,
                fs2::available_space(dir).unwrap_or(0) as f64,
            ),
            per_cf(h(10).0, h(10).1, &|c| c.sst_files),
            per_cf(h(11).0, h(11).1, &|c| c.sst_bytes),
            per_cf(h(12).0, h(12).1, &|c| c.pending_compaction_bytes),
            per_cf(h(13).0, h(13).1, &|c| c.estimated_keys),
        ]
    }
}

/// The GC safe point this store last collected at.
pub static GC_SAFE_POINT: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "flotilla_gc_safe_point",
        "The GC safe point (a timestamp) this store last collected at"
    )
    .expect("register metric")
});

/// Old versions (commit and rollback records) dropped by GC.
pub static GC_VERSIONS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_gc_versions_dropped_total",
        "Commit and rollback records below the GC safe point dropped by this store"
    )
    .expect("register metric")
});

/// Locks below the safe point resolved by this store while it advanced the safe point.
pub static GC_LOCKS_RESOLVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_gc_locks_resolved_total",
        "Locks of old transactions resolved before the GC safe point advanced"
    )
    .expect("register metric")
});

/// Time transactional commands waited for their keys' latches.
pub static TXN_LATCH_WAIT_SECONDS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    prometheus::register_histogram!(
        "flotilla_txn_latch_wait_seconds",
        "Time transactional commands waited for the latches of their keys",
        exponential_buckets(0.00001, 2.0, 20).expect("valid buckets")
    )
    .expect("register metric")
});

/// Key errors answered to transactional commands, by kind.
pub static TXN_KEY_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_txn_key_errors_total",
        "Key errors answered to transactional commands, by kind (locked, conflict, already_exist, txn_not_found, commit_ts_expired, other)",
        &["kind"]
    )
    .expect("register metric")
});

/// Reads by how the client asked them to be served and how that ended.
pub static READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_server_reads_total",
        "Reads by mode (leader; replica: after a read index from the leader, follower reads; stale: from the local replica alone) and outcome (served, not_ready: a stale read refused with data_is_not_ready, error)",
        &["mode", "outcome"]
    )
    .expect("register metric")
});

/// How far behind PD's clock the oldest resolved timestamp of this store's led regions
/// was in the last round.
pub static RESOLVED_TS_LAG: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    prometheus::register_gauge!(
        "flotilla_server_resolved_ts_lag_seconds",
        "Seconds between PD's time and the oldest safe timestamp this store gave the regions it leads in its last round (what stale reads on their replicas lag by)"
    )
    .expect("register metric")
});

/// Client requests answered server_is_busy because too many were in flight.
pub static BUSY: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_server_busy_total",
        "Client requests refused with server_is_busy at once: server.max-inflight-requests were being served, or their BatchCommands stream had server.stream-max-inflight unanswered"
    )
    .expect("register metric")
});

/// BatchCommands streams open now.
pub static BATCH_STREAMS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "flotilla_server_batch_streams",
        "BatchCommands streams open now"
    )
    .expect("register metric")
});

/// Requests per BatchCommands message received.
pub static BATCH_REQUESTS_PER_MESSAGE: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    prometheus::register_histogram!(
        "flotilla_server_batch_requests_per_message",
        "Requests in each BatchCommands message received",
        exponential_buckets(1.0, 2.0, 13).expect("valid buckets")
    )
    .expect("register metric")
});
