use proto::mvccpb::Lock;

/// Why a write conflict happened (TiKV's `WriteConflict.Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    /// An optimistic prewrite met a newer committed version.
    Optimistic,
    /// A pessimistic lock met a version committed after its `for_update_ts`.
    PessimisticRetry,
    /// The transaction meets its own rollback record.
    SelfRolledBack,
}

/// What can go wrong in a transactional command. Each variant but the last three is an
/// answer the client acts on (a key error on the wire).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another transaction holds a lock the command cannot pass.
    #[error("key {} is locked by transaction {} (primary {})", show(key), lock.start_ts, show(&lock.primary))]
    KeyIsLocked {
        /// The locked key.
        key: Vec<u8>,
        /// The lock found on it.
        lock: Box<Lock>,
    },
    /// A version of the key was committed after the transaction's snapshot.
    #[error("write conflict on key {}: transaction {start_ts} meets a version committed at {conflict_commit_ts} by transaction {conflict_start_ts} ({reason:?})", show(key))]
    WriteConflict {
        /// The key in conflict.
        key: Vec<u8>,
        /// The transaction's primary key.
        primary: Vec<u8>,
        /// The transaction that met the conflict.
        start_ts: u64,
        /// The start timestamp of the version it met.
        conflict_start_ts: u64,
        /// The commit timestamp of the version it met.
        conflict_commit_ts: u64,
        /// Why.
        reason: ConflictReason,
    },
    /// An insert (or a check that a key does not exist) met a live value.
    #[error("key {} already exists", show(key))]
    AlreadyExist {
        /// The key.
        key: Vec<u8>,
    },
    /// The transaction left no lock and no record on its primary key.
    #[error("transaction {start_ts} is not found on its primary key {}", show(key))]
    TxnNotFound {
        /// The transaction.
        start_ts: u64,
        /// Its primary key.
        key: Vec<u8>,
    },
    /// A commit for a key that holds no lock of the transaction and no commit record.
    #[error("commit of transaction {start_ts} at {commit_ts}: key {} holds no lock of it (rolled back or never prewritten)", show(key))]
    TxnLockNotFound {
        /// The transaction.
        start_ts: u64,
        /// The commit timestamp asked for.
        commit_ts: u64,
        /// The key.
        key: Vec<u8>,
    },
    /// A commit below the lock's `min_commit_ts`.
    #[error("commit of transaction {start_ts} at {commit_ts} is below key {}'s min_commit_ts {min_commit_ts}", show(key))]
    CommitTsExpired {
        /// The transaction.
        start_ts: u64,
        /// The commit timestamp asked for.
        commit_ts: u64,
        /// The key.
        key: Vec<u8>,
        /// The least commit timestamp the lock allows.
        min_commit_ts: u64,
    },
    /// A rollback of a transaction that committed.
    #[error(
        "transaction {start_ts} is already committed at {commit_ts} on key {}",
        show(key)
    )]
    Committed {
        /// The transaction.
        start_ts: u64,
        /// Its commit timestamp.
        commit_ts: u64,
        /// The key.
        key: Vec<u8>,
    },
    /// An async-commit or 1PC prewrite whose commit timestamp would pass the client's
    /// bound: the client falls back to two phases.
    #[error("transaction {start_ts} would commit at {min_commit_ts}, above its max_commit_ts {max_commit_ts}")]
    CommitTsTooLarge {
        /// The transaction.
        start_ts: u64,
        /// The least commit timestamp this store allows.
        min_commit_ts: u64,
        /// The client's bound.
        max_commit_ts: u64,
    },
    /// A pessimistic prewrite or commit whose pessimistic lock is gone.
    #[error(
        "transaction {start_ts} holds no pessimistic lock on key {}",
        show(key)
    )]
    PessimisticLockNotFound {
        /// The transaction.
        start_ts: u64,
        /// The key.
        key: Vec<u8>,
    },
    /// A commit of a key that holds only a pessimistic lock (never prewritten).
    #[error(
        "transaction {start_ts} only holds a pessimistic lock on key {}: prewrite it first",
        show(key)
    )]
    LockTypeNotMatch {
        /// The transaction.
        start_ts: u64,
        /// The key.
        key: Vec<u8>,
    },
    /// A status check named a key that holds a lock of the transaction whose primary is
    /// another key: deciding the transaction there could split it.
    #[error("key {} is not the primary of transaction {} (its primary is {})", show(key), lock.start_ts, show(&lock.primary))]
    PrimaryMismatch {
        /// The key the check named.
        key: Vec<u8>,
        /// The lock found on it.
        lock: Box<Lock>,
    },
    /// A read or transaction below the safe point a key was garbage-collected at: the
    /// versions it must see may be gone.
    #[error("key {} was garbage-collected below {safe_point}: {what} at {ts} cannot see the versions it must", show(key))]
    BelowSafePoint {
        /// The key.
        key: Vec<u8>,
        /// What was refused ("a read", "a transaction").
        what: &'static str,
        /// The timestamp refused.
        ts: u64,
        /// The safe point the key was collected at.
        safe_point: u64,
    },
    /// A request that breaks a rule no correct client breaks.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The storage failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// A stored record does not decode.
    #[error("corrupted record: {0}")]
    Corrupted(String),
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, Error>;

impl From<keys::Error> for Error {
    fn from(e: keys::Error) -> Self {
        Error::Corrupted(e.to_string())
    }
}

impl From<protobuf::ProtobufError> for Error {
    fn from(e: protobuf::ProtobufError) -> Self {
        Error::Corrupted(e.to_string())
    }
}

/// A key as a person reads it in an error message.
pub(crate) fn show(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}
