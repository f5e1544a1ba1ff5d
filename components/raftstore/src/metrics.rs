//! Raftstore metrics. Every stage of the write path has a histogram, so that a slow write
//! can be attributed to proposing, appending (fsync), committing or applying.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge,
};

fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.000_05, 2.0, 20).expect("valid buckets")
}

/// Time to persist one round's Raft write batch (the fsync).
pub static APPEND_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "flotilla_raftstore_append_seconds",
        "Time to write one round of Raft log entries and hard states",
        latency_buckets()
    )
    .expect("register metric")
});

/// Fsyncs of the Raft log (one per round that has something to persist).
pub static LOG_FSYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_raftstore_log_fsyncs_total",
        "Synced writes of the Raft log"
    )
    .expect("register metric")
});

/// Peers whose Ready was persisted per round.
pub static READY_PER_ROUND: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "flotilla_raftstore_ready_peers_per_round",
        "Peers persisted together in one Raft round",
        exponential_buckets(1.0, 2.0, 12).expect("valid buckets")
    )
    .expect("register metric")
});

/// Time from proposing a command to its callback, by stage.
pub static COMMAND_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "flotilla_raftstore_command_seconds",
        "Latency of a command from proposal, by stage reached (commit, apply)",
        &["stage"],
        latency_buckets()
    )
    .expect("register metric")
});

/// Time to write one round of applied entries.
pub static APPLY_WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "flotilla_raftstore_apply_write_seconds",
        "Time to write one round of applied entries",
        latency_buckets()
    )
    .expect("register metric")
});

/// Commands proposed, by kind and outcome.
pub static PROPOSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_proposals_total",
        "Proposals by kind (normal, admin, conf_change, read_index) and outcome",
        &["kind", "outcome"]
    )
    .expect("register metric")
});

/// Acknowledged write commands (the denominator of fsyncs per write).
pub static WRITES_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_raftstore_writes_applied_total",
        "Write commands applied on leaders and answered"
    )
    .expect("register metric")
});

/// Raft messages sent, by type.
pub static RAFT_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_raft_messages_total",
        "Raft messages sent to other stores, by direction",
        &["direction"]
    )
    .expect("register metric")
});

/// Snapshots, by stage and outcome.
pub static SNAPSHOTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_snapshots_total",
        "Region snapshots by stage (generate, accept, persist, apply) and outcome",
        &["stage", "outcome"]
    )
    .expect("register metric")
});

/// Peers that are hibernating (not ticking).
pub static HIBERNATING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "flotilla_raftstore_hibernating_peers",
        "Peers of idle regions that receive no ticks"
    )
    .expect("register metric")
});
