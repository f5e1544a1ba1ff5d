//! How Raft messages leave the store. The raftstore only queues messages per destination
//! store; a [`Transport`] (gRPC in the server, a filtered in-memory one in the test
//! harness) delivers them, streams snapshots, and reports failures through the router.

use proto::raft_serverpb::RaftMessage;

/// Delivers Raft messages to other stores.
pub trait Transport: Send + Sync + 'static {
    /// Sends one round's messages for `store_id`. Must not block on the network; failures
    /// are reported with [`crate::RaftRouter::report_unreachable`] and
    /// [`crate::RaftRouter::report_snapshot_status`].
    fn send(&self, store_id: u64, msgs: Vec<RaftMessage>);
}
