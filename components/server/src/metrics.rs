//! Store server metrics.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, register_histogram_vec, register_int_counter, register_int_counter_vec,
    HistogramVec, IntCounter, IntCounterVec,
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

/// Peer streams refused for lacking the cluster secret.
pub static PEER_STREAMS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_server_peer_streams_refused_total",
        "Raft and snapshot streams refused because they carried no valid cluster secret"
    )
    .expect("register metric")
});
