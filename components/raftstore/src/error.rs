use proto::metapb;

/// Errors of the raftstore. The region-level ones map one to one onto `errorpb.Error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This store has no peer of the region.
    #[error("region {0} not found on this store")]
    RegionNotFound(u64),
    /// The local peer is not the leader; `leader` is the one it knows of, if any.
    #[error("peer of region {region_id} on this store is not the leader")]
    NotLeader {
        /// The region.
        region_id: u64,
        /// The leader as far as this peer knows.
        leader: Option<metapb::Peer>,
    },
    /// A stale read this replica cannot serve: its safe timestamp is below the read's,
    /// or its applied state is older than the read allows (`why` says which).
    #[error("region {region_id} peer {peer_id} cannot serve the stale read: {why}")]
    DataIsNotReady {
        /// The region.
        region_id: u64,
        /// This replica.
        peer_id: u64,
        /// Its safe timestamp.
        safe_ts: u64,
        /// What is not ready.
        why: String,
    },
    /// The request was meant for an older shape of the region.
    #[error("region epoch does not match: {reason}")]
    EpochNotMatch {
        /// What differs.
        reason: String,
        /// The regions that now cover the range.
        current: Vec<metapb::Region>,
    },
    /// A key of the request lies outside the region.
    #[error("key {key:?} is not in region {}", region.id)]
    KeyNotInRegion {
        /// The key.
        key: Vec<u8>,
        /// The region as it is now (boxed: it would make every `Result` of this crate
        /// larger).
        region: Box<metapb::Region>,
    },
    /// The proposal was dropped (leadership changed before it committed).
    #[error("command is stale: {0}")]
    StaleCommand(&'static str),
    /// The command is larger than a Raft entry may be.
    #[error("raft entry of {size} bytes is larger than the limit of {limit} bytes (raftstore.raft-entry-max-size)")]
    EntryTooLarge {
        /// The region.
        region_id: u64,
        /// The command's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The request is not valid (for example, a membership change that makes no sense).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too much is waiting; nothing was done (the request may be retried later).
    #[error("server is busy: {0}")]
    Busy(String),
    /// Free disk space is below the reserve; nothing was written.
    #[error("disk full: {0}; writes are refused until space is freed")]
    DiskFull(String),
    /// The store is stopping.
    #[error("the store is shutting down")]
    Stopped,
    /// A proposed command's outcome is unknown: it may or may not have been applied (its
    /// peer went away while it was in flight). Never retried as if it had not happened.
    #[error("{0}; the command may or may not have been applied")]
    Undetermined(&'static str),
    /// A session write the region cannot decide on: the client resent it after saying
    /// it would not, or numbered it out of its window. Nothing was applied.
    #[error("client session: {0}")]
    Session(String),
    /// A resent session write whose session the region has forgotten (idle past
    /// `raftstore.session-ttl`, or pushed out by newer ones): whether the first try was
    /// applied cannot be told. Nothing was applied now.
    #[error("region {region_id} no longer remembers client session {client_id:#x} (raftstore.session-ttl, raftstore.max-sessions-per-region); the earlier try may or may not have been applied")]
    SessionExpired {
        /// The region.
        region_id: u64,
        /// The client session.
        client_id: u64,
    },
    /// A resent session write whose number the region answered for other requests (a
    /// batch regrouped by region after a split): what applied cannot be told.
    #[error("region {region_id} answered write {seq} of client session {client_id:#x} for other requests; the write may or may not have been applied")]
    SessionMismatch {
        /// The region.
        region_id: u64,
        /// The client session.
        client_id: u64,
        /// The write's number.
        seq: u64,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// Raft refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Bytes that should decode do not.
    #[error("decode: {0}")]
    Codec(#[from] protobuf::ProtobufError),
    /// PD could not be asked (for split ids).
    #[error("placement driver: {0}")]
    Pd(String),
    /// A snapshot could not be generated, sent, received or applied.
    #[error("snapshot: {0}")]
    Snapshot(String),

    /// The region's shape on disk is ahead of its apply state for a moment (after a split
    /// or membership change): a snapshot now would pair them wrongly.
    #[error("snapshot of region {region_id} not ready: its shape changed at index {changed_at}, applied only up to {applied}")]
    SnapshotNotReady {
        /// The region.
        region_id: u64,
        /// The entry that changed its shape.
        changed_at: u64,
        /// What its apply state says.
        applied: u64,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
