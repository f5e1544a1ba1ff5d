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

/// A leader's linearizable reads by how they were confirmed: from its lease, or by a
/// ReadIndex round (no lease, or it could not be used).
pub static LEASE_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_leader_reads_total",
        "Linearizable reads on leaders, by how leadership was confirmed (lease, read_index)",
        &["via"]
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

/// Client-session writes by outcome: applied, or answered again without applying.
pub static SESSION_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_session_writes_total",
        "Client-session writes: applied, or deduplicated (a resend answered with its first answer)",
        &["outcome"]
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

/// Raft messages, by direction and type.
pub static RAFT_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_raft_messages_total",
        "Raft messages sent to and received from other stores, by direction and type",
        &["direction", "type"]
    )
    .expect("register metric")
});

/// The label values of Raft message types; `message_type_index` maps a type to one.
const MESSAGE_TYPES: [&str; 11] = [
    "append",
    "append_response",
    "heartbeat",
    "heartbeat_response",
    "vote",
    "vote_response",
    "snapshot",
    "timeout_now",
    "read_index",
    "transfer_leader",
    "other",
];

fn message_type_index(t: raft::eraftpb::MessageType) -> usize {
    use raft::eraftpb::MessageType as M;
    match t {
        M::MsgAppend => 0,
        M::MsgAppendResponse => 1,
        M::MsgHeartbeat => 2,
        M::MsgHeartbeatResponse => 3,
        M::MsgRequestVote | M::MsgRequestPreVote => 4,
        M::MsgRequestVoteResponse | M::MsgRequestPreVoteResponse => 5,
        M::MsgSnapshot => 6,
        M::MsgTimeoutNow => 7,
        M::MsgReadIndex | M::MsgReadIndexResp => 8,
        M::MsgTransferLeader => 9,
        _ => 10,
    }
}

/// Counters resolved once per (direction, type): a label lookup per message would cost
/// a hash and a lock on the raft thread.
static MESSAGE_COUNTERS: LazyLock<[Vec<IntCounter>; 2]> = LazyLock::new(|| {
    ["sent", "received"].map(|d| {
        MESSAGE_TYPES
            .iter()
            .map(|t| RAFT_MESSAGES.with_label_values(&[d, t]))
            .collect()
    })
});

/// Counts one Raft message sent to, or received from, another store.
pub fn count_message(sent: bool, t: raft::eraftpb::MessageType) {
    MESSAGE_COUNTERS[usize::from(!sent)][message_type_index(t)].inc();
}

/// Regions with a peer on this store.
pub static REGIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "flotilla_raftstore_regions",
        "Regions with a peer on this store"
    )
    .expect("register metric")
});

/// Regions this store leads.
pub static LEADERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "flotilla_raftstore_leaders",
        "Regions whose leader is on this store"
    )
    .expect("register metric")
});

/// Elections this store's peers started, and leaderships they won.
pub static ROLE_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_role_changes_total",
        "Role changes of this store's peers: to candidate (an election started) or to leader",
        &["to"]
    )
    .expect("register metric")
});

/// Bytes of the write batches that persist Raft state and apply entries.
pub static WRITE_BATCH_BYTES: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "flotilla_raftstore_write_batch_bytes",
        "Size of each write batch, by thread (raft: log and hard state; apply: applied data)",
        &["thread"],
        exponential_buckets(256.0, 4.0, 12).expect("valid buckets")
    )
    .expect("register metric")
});

/// Raft log entries removed by log GC.
pub static LOG_GC_ENTRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_raftstore_log_gc_entries_total",
        "Raft log entries deleted by log compaction"
    )
    .expect("register metric")
});

/// Split checks, by outcome.
pub static SPLIT_CHECKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_split_checks_total",
        "Region size checks, by outcome (split: keys found to split at, small, error)",
        &["outcome"]
    )
    .expect("register metric")
});

/// Splits applied on this store.
pub static SPLITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_raftstore_splits_total",
        "Region splits applied by this store's peers"
    )
    .expect("register metric")
});

/// Snapshot bytes, by stage.
pub static SNAPSHOT_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_raftstore_snapshot_bytes_total",
        "Bytes of region snapshots, by stage (generate, apply)",
        &["stage"]
    )
    .expect("register metric")
});

/// Snapshot durations, by stage.
pub static SNAPSHOT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "flotilla_raftstore_snapshot_seconds",
        "Time to generate or apply a region snapshot",
        &["stage"],
        exponential_buckets(0.001, 2.0, 18).expect("valid buckets")
    )
    .expect("register metric")
});

/// Messages waiting in peer mailboxes, sampled as each round starts.
pub static MAILBOX_DEPTH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "flotilla_raftstore_mailbox_depth",
        "Messages waiting in a peer's mailbox when the poller takes it up",
        exponential_buckets(1.0, 2.0, 14).expect("valid buckets")
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

/// Registers every series, with the label values known up front, so that a scrape shows
/// zeros instead of nothing before the first event (dashboards and alerts need the
/// series to exist).
pub fn register_all() {
    LazyLock::force(&APPEND_SECONDS);
    LazyLock::force(&LOG_FSYNCS);
    LazyLock::force(&READY_PER_ROUND);
    LazyLock::force(&APPLY_WRITE_SECONDS);
    LazyLock::force(&WRITES_APPLIED);
    LazyLock::force(&SESSION_WRITES);
    LazyLock::force(&HIBERNATING);
    LazyLock::force(&REGIONS);
    LazyLock::force(&LEADERS);
    LazyLock::force(&LOG_GC_ENTRIES);
    LazyLock::force(&SPLITS);
    LazyLock::force(&MAILBOX_DEPTH);
    for stage in ["commit", "apply"] {
        COMMAND_SECONDS.with_label_values(&[stage]);
    }
    for to in ["candidate", "leader"] {
        ROLE_CHANGES.with_label_values(&[to]);
    }
    for thread in ["raft", "apply"] {
        WRITE_BATCH_BYTES.with_label_values(&[thread]);
    }
    for outcome in ["split", "small", "error"] {
        SPLIT_CHECKS.with_label_values(&[outcome]);
    }
    for stage in ["generate", "apply"] {
        SNAPSHOT_BYTES.with_label_values(&[stage]);
        SNAPSHOT_SECONDS.with_label_values(&[stage]);
        SNAPSHOTS.with_label_values(&[stage, "ok"]);
    }
    LazyLock::force(&MESSAGE_COUNTERS);
}
