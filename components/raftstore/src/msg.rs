//! What flows between the parts of the raftstore: mail for peers, for the apply pool, for
//! the store, and tasks for PD.

use std::time::Instant;

use proto::{metapb, pdpb, raft_cmdpb::RaftCmdRequest, raft_serverpb::RaftMessage};
use raft::eraftpb::{ConfChangeV2, Entry};

use crate::Result;

/// Called once with the outcome of a request.
pub type Callback<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// What a linearizable read learns when it may run.
#[derive(Debug, Clone)]
pub struct ReadReady {
    /// The region as it is then.
    pub region: metapb::Region,
    /// The leader's term then: a command computed from what the read sees carries it, and
    /// is refused if leadership changed since (another leader may have written).
    pub term: u64,
    /// For a replica read with a check: the leader's answer to it (empty: none).
    pub answer: Vec<u8>,
    /// The read index the read waited for (0 for a stale read, which waits for none).
    pub index: u64,
}

/// Who serves a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The leader, after a ReadIndex round.
    Leader,
    /// As `Leader`, for the store itself (confirming its leadership), not a client: it
    /// does not count as activity that keeps the region awake.
    Confirm,
    /// This replica, leader or follower (TiKV's `replica_read`): a follower asks the
    /// leader for a read index and reads once it has applied up to it. The check (opaque
    /// here; empty for none) travels to the leader with the request, and the leader's
    /// answer comes back in [`ReadReady::answer`] (see [`ReadIndexCheck`]).
    Replica(Vec<u8>),
    /// This replica, without contacting the leader, if its safe timestamp is at least
    /// this (a transactional stale read, TiKV's `stale_read`); else `DataIsNotReady`.
    Stale(u64),
    /// This replica, without contacting the leader, if its applied state is at most this
    /// old (a raw read with bounded staleness); else `DataIsNotReady`. A leader reads as
    /// for `Leader`.
    Bounded(std::time::Duration),
}

/// Run by a leader on each check a follower's ReadIndex request carries, for the region:
/// returns the answer to send back (empty: nothing to report). The transaction layer
/// raises its max timestamp there and reports in-memory locks.
pub type ReadIndexCheck = std::sync::Arc<dyn Fn(u64, &[u8]) -> Vec<u8> + Send + Sync>;

/// The outcome of a compare-and-swap, decided at apply time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the new value was written.
    pub succeed: bool,
    /// The value before the command (`None`: the key did not exist).
    pub previous: Option<Vec<u8>>,
}

/// What an applied command produced.
#[derive(Debug, Default)]
pub struct CmdResponse {
    /// One result per compare-and-swap request, in request order.
    pub cas: Vec<CasResult>,
    /// The region after an admin command.
    pub region: Option<metapb::Region>,
    /// Every region a split produced, in key order (the first keeps the old id).
    pub split_regions: Vec<metapb::Region>,
    /// A ComputeHash's entry index and this replica's hash of the region at it.
    pub hash: Option<(u64, u64)>,
}

/// A proposal waiting for its entry to be applied.
pub struct Proposal {
    /// Log index of the entry.
    pub index: u64,
    /// Term the entry was proposed in; a different term at that index means it was lost.
    pub term: u64,
    /// Who waits.
    pub cb: Callback<CmdResponse>,
    /// When it was proposed (for the latency histograms).
    pub proposed_at: Instant,
}

/// Mail for a peer.
pub enum PeerMsg {
    /// A Raft message from another store.
    RaftMessage(Box<RaftMessage>),
    /// A write or admin command to propose.
    Command {
        /// The command.
        cmd: RaftCmdRequest,
        /// Called once it is applied or rejected.
        cb: Callback<CmdResponse>,
    },
    /// A linearizable read: the callback is called once the local state may be read, with
    /// the region as it is then.
    Read {
        /// The epoch the reader expects.
        epoch: metapb::RegionEpoch,
        /// Who may serve it.
        from: ReadFrom,
        /// Called when the read may run.
        cb: Callback<ReadReady>,
    },
    /// The store confirmed, by a read index at `index` in `term`, that every transaction
    /// committing in this region at or below `safe_ts` has its commit, or a lock a reader
    /// meets, at or below `index`: a leader of that term serves stale reads by it and
    /// ships it to its followers.
    SafeTs {
        /// The term the read index confirmed.
        term: u64,
        /// The resolved timestamp.
        safe_ts: u64,
        /// The read index.
        index: u64,
    },
    /// The store is stopping: a leader hands leadership to its most caught-up voter on
    /// another store.
    EvictLeader,
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to hand it to.
        to: metapb::Peer,
        /// Called once the transfer has started (not finished).
        cb: Callback<()>,
    },
    /// One Raft tick.
    Tick,
    /// Report the region to PD (sent by the store to hibernating leaders, which get no
    /// ticks); does not wake the peer.
    HeartbeatPd,
    /// This store lost contact with these stores (PD reports them silent, or a
    /// connection to them failed): leave hibernation, and if the leader is on one of
    /// them, campaign at the next tick instead of waiting out its lease.
    StoresDown(std::sync::Arc<[u64]>),
    /// Entries were applied.
    ApplyRes(Box<ApplyRes>),
    /// A message to this peer could not be delivered.
    Unreachable {
        /// The peer that could not be reached.
        to_peer_id: u64,
    },
    /// A snapshot this peer sent was delivered or failed.
    SnapshotStatus {
        /// The receiver.
        to_peer_id: u64,
        /// Whether it arrived.
        ok: bool,
    },
    /// An operator from PD.
    Operator(Box<pdpb::RegionHeartbeatResponse>),
    /// Split the region at these keys (asked by hand or by the split checker).
    Split {
        /// The epoch the asker saw; `None` for the split checker (it saw the current one).
        epoch: Option<metapb::RegionEpoch>,
        /// Split keys, ascending.
        keys: Vec<Vec<u8>>,
        /// Called with every resulting region once the split is applied.
        cb: Callback<Vec<metapb::Region>>,
    },
    /// What the split checker measured.
    SplitCheckResult {
        /// The epoch the measurement is for.
        epoch: metapb::RegionEpoch,
        /// Bytes of keys and values (a lower bound once the scan stopped early).
        size: u64,
        /// Keys (likewise).
        keys: u64,
        /// Where to split (ascending); empty if the region is within its limits.
        split_keys: Vec<Vec<u8>>,
    },
}

/// Mail for a region's apply state machine.
pub enum ApplyMsg {
    /// Committed entries, with the proposals that wait for some of them.
    Entries {
        /// The entries, in log order.
        entries: Vec<Entry>,
        /// Proposals, in index order.
        proposals: Vec<Proposal>,
    },
    /// Replace the region's data with a received snapshot.
    Snapshot {
        /// The region the snapshot describes.
        region: metapb::Region,
        /// Its last included index and term.
        index: u64,
        /// Term of `index`.
        term: u64,
        /// The SST files to ingest, with what each must hold.
        files: crate::snap::ReceivedFiles,
    },
    /// The peer is gone (its tombstone is durable): delete the region's data and apply
    /// state, stop. Done here, after every message queued before it, so a late apply
    /// cannot write data back; entries held back by a fence never apply.
    Destroy {
        /// The region as the peer tombstoned it (its range is the data to delete).
        region: metapb::Region,
    },
    /// The peer has written the region's new shape after the split or membership change
    /// at `index`: the apply side may go past that entry.
    RegionPersisted {
        /// The entry that changed the region.
        index: u64,
    },
}

/// What a region's apply state machine reports back to its peer.
#[derive(Debug)]
pub struct ApplyRes {
    /// How far the region has applied, as written.
    pub applied_index: u64,
    /// Side effects the peer must act on.
    pub results: Vec<ExecResult>,
}

/// A side effect of an applied admin command.
#[derive(Debug)]
pub enum ExecResult {
    /// Membership changed (or, with `cc` empty, a change was rejected at apply time).
    ChangePeer {
        /// The entry's index.
        index: u64,
        /// What raft-rs must apply.
        cc: ConfChangeV2,
        /// The region after the change.
        region: metapb::Region,
    },
    /// The log may be truncated up to `index`.
    CompactLog {
        /// New truncated index.
        index: u64,
        /// Its term.
        term: u64,
    },
    /// A snapshot's data is in place.
    SnapshotApplied {
        /// The region it described.
        region: metapb::Region,
    },
    /// The region was split.
    Split {
        /// The entry's index.
        index: u64,
        /// Every region, in key order; the first is this peer's own, shrunk.
        regions: Vec<metapb::Region>,
    },
}

/// Mail for the store itself.
pub enum StoreMsg {
    /// A Raft message for a region this store has no peer of (yet).
    RaftMessage(Box<RaftMessage>),
    /// These stores stopped heartbeating to PD: wake hibernating regions with a peer
    /// there, so that they notice a lost leader and elect another.
    StoresDown(Vec<u64>),
    /// These stores joined or came back: hibernating leaders report to PD now rather
    /// than at their slow idle interval, so that PD can place replicas or leaders there.
    StoresUp(Vec<u64>),
    /// The store is shutting down: tell PD at once, so that it moves no leader here.
    Stopping,
    /// A peer was destroyed and unregistered.
    PeerDestroyed {
        /// Its region.
        region_id: u64,
    },
    /// A split was applied: create this store's peers of the new regions.
    CreateSplitPeers {
        /// The new regions, their states already on disk.
        regions: Vec<metapb::Region>,
        /// Whether the parent led: the new peers campaign at once instead of waiting out
        /// an election timeout.
        campaign: bool,
    },
}

/// Work for the PD client, done outside the Raft threads.
pub enum PdTask {
    /// A leader reports its region.
    RegionHeartbeat(pdpb::RegionHeartbeatRequest),
    /// The store reports its statistics.
    StoreHeartbeat(pdpb::StoreStats),
    /// Ask PD for ids, then propose splitting `region` at `keys` through its leader.
    AskBatchSplit {
        /// The region as its leader sees it.
        region: metapb::Region,
        /// The leader (the proposal's sender).
        peer: metapb::Peer,
        /// Split keys, ascending, checked against the region.
        keys: Vec<Vec<u8>>,
        /// Called with every resulting region once the split is applied.
        cb: Callback<Vec<metapb::Region>>,
    },
}

/// Measure one region (for the split checker).
pub struct SplitCheckTask {
    /// The region as its leader saw it.
    pub region: metapb::Region,
    /// Split past this many bytes of keys and values.
    pub split_size: u64,
    /// Split past this many keys.
    pub split_keys: u64,
}
