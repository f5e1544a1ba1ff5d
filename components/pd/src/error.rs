use proto::pdpb::ErrorType;

/// Errors of the placement driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster has no first region yet.
    #[error("cluster is not bootstrapped")]
    NotBootstrapped,
    /// A second bootstrap was attempted.
    #[error("cluster is already bootstrapped")]
    AlreadyBootstrapped,
    /// No such store.
    #[error("store {0} not found")]
    StoreNotFound(u64),
    /// The store was removed from the cluster.
    #[error("store {0} is tombstone")]
    StoreTombstone(u64),
    /// No region holds the key or has the id.
    #[error("region not found: {0}")]
    RegionNotFound(String),
    /// A request field is missing or out of range.
    #[error("invalid request: {0}")]
    InvalidValue(String),
    /// The request names another cluster.
    #[error("request is for cluster {got}, this PD serves cluster {expected}")]
    ClusterMismatch {
        /// This PD's cluster.
        expected: u64,
        /// The request's.
        got: u64,
    },
    /// PD's own storage failed.
    #[error("pd storage: {0}")]
    Storage(#[from] engine::Error),
    /// Stored metadata does not decode.
    #[error("pd metadata is corrupted: {0}")]
    Corrupted(String),
    /// The gRPC server failed.
    #[error("grpc: {0}")]
    Grpc(#[from] grpcio::Error),
    /// A call only stores of this cluster may make came without the cluster secret.
    #[error("this call must come from a store or an operator of this cluster: it carries no valid cluster secret (kv-server and kvctl --cluster-secret-file)")]
    Unauthenticated,
    /// Auth: no such user or role, or no such grant.
    #[error("{0}")]
    NotFound(String),
    /// Auth: the user or role exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Auth: the state does not allow it (enabling without root, signup not allowed).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Auth: the caller proved nothing, or proved it badly (wrong password, dead token).
    #[error("{0}")]
    AuthFailed(String),
    /// Auth: the caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Auth: too many failed logins, or too many password checks at once.
    #[error("{0}")]
    RateLimited(String),
    /// This member does not lead the PD group (the leader's client URL, if known).
    #[error("this pd member is not the leader{}", .0.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_else(|| "; no leader is known yet".into()))]
    NotLeader(Option<String>),
    /// The PD group's Raft refused an operation.
    #[error("pd raft: {0}")]
    Raft(String),
    /// A write may or may not have been committed.
    #[error("undetermined: {0}")]
    Undetermined(String),
    /// Group membership: a member that disagrees with the others, cannot join, or is
    /// unknown.
    #[error("pd membership: {0}")]
    Member(String),
    /// A setting is invalid.
    #[error("{0}")]
    Config(#[from] conf::Error),
    /// Shared plumbing failed: the cluster secret could not be read or created, or the
    /// data directory is held by another process.
    #[error("{0}")]
    Util(#[from] util::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The wire error type clients branch on.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Error::NotBootstrapped => ErrorType::NOT_BOOTSTRAPPED,
            Error::AlreadyBootstrapped => ErrorType::ALREADY_BOOTSTRAPPED,
            Error::StoreTombstone(_) => ErrorType::STORE_TOMBSTONE,
            Error::RegionNotFound(_) => ErrorType::REGION_NOT_FOUND,
            Error::StoreNotFound(_) => ErrorType::ENTRY_NOT_FOUND,
            Error::InvalidValue(_) | Error::ClusterMismatch { .. } => ErrorType::INVALID_VALUE,
            _ => ErrorType::UNKNOWN,
        }
    }
}
