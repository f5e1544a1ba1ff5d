//! Errors of the store server, and their one conversion into wire errors.

use proto::{errorpb, metapb};

/// Errors of the store server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (empty key, unknown column family, oversize value...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The raftstore refused or failed.
    #[error(transparent)]
    Raft(#[from] raftstore::Error),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// A transactional command failed (a key error for the client, mostly).
    #[error(transparent)]
    Txn(#[from] txn::Error),
    /// PD could not be reached or refused.
    #[error(transparent)]
    Pd(#[from] pd_client::Error),
    /// gRPC failed.
    #[error("grpc: {0}")]
    Grpc(#[from] grpcio::Error),
    /// A read did not finish in time (safe to retry).
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A write's outcome is unknown: it may or may not have been applied.
    #[error("{0}; the write may or may not have been applied")]
    Undetermined(String),
    /// The data directory belongs to another cluster.
    #[error("data directory {dir} belongs to cluster {local}, but PD serves cluster {pd}; use an empty data directory or the right PD")]
    ClusterMismatch {
        /// The data directory.
        dir: String,
        /// Its cluster.
        local: u64,
        /// PD's cluster.
        pd: u64,
    },
    /// Start-up failed.
    #[error("{0}")]
    Startup(String),
    /// Auth is on and the caller proved nothing, proved it badly, or may not do this.
    #[error("{0}")]
    Denied(#[from] auth::view::Denied),
    /// The store has no room for the request now (retried with backoff).
    #[error("store is busy: {0}")]
    Busy(String),
    /// Auth may be on and this store cannot check callers now (it has not heard from PD
    /// lately): retried like a busy server.
    #[error("{0}")]
    AuthUnavailable(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn region_error(e: &raftstore::Error) -> Option<errorpb::Error> {
    use raftstore::Error as R;
    let mut err = errorpb::Error::default();
    err.set_message(e.to_string());
    match e {
        R::NotLeader { region_id, leader } => {
            let nl = err.mut_not_leader();
            nl.region_id = *region_id;
            if let Some(l) = leader {
                nl.set_leader(l.clone());
            }
        }
        R::RegionNotFound(id) => err.mut_region_not_found().region_id = *id,
        R::EpochNotMatch { current, .. } => {
            err.mut_epoch_not_match()
                .set_current_regions(current.clone().into());
        }
        R::KeyNotInRegion { key, region } => {
            let k = err.mut_key_not_in_region();
            k.set_key(key.clone());
            k.region_id = region.get_id();
            k.set_start_key(region.get_start_key().to_vec());
            k.set_end_key(region.get_end_key().to_vec());
        }
        R::Busy(reason) => {
            err.mut_server_is_busy().set_reason(reason.clone());
        }
        R::DataIsNotReady {
            region_id,
            peer_id,
            safe_ts,
            ..
        } => {
            let d = err.mut_data_is_not_ready();
            d.region_id = *region_id;
            d.peer_id = *peer_id;
            d.safe_ts = *safe_ts;
        }
        R::StaleCommand(_) | R::Stopped => {
            err.mut_stale_command();
        }
        R::EntryTooLarge {
            region_id, size, ..
        } => {
            let t = err.mut_raft_entry_too_large();
            t.region_id = *region_id;
            t.entry_size = *size;
        }
        _ => return None,
    }
    Some(err)
}

impl Error {
    /// Splits an error into what TiKV's clients expect: a region error (they retry or
    /// re-route) or a plain message (returned to the caller).
    pub fn into_wire(self) -> (Option<errorpb::Error>, String) {
        match &self {
            Error::Undetermined(_)
            | Error::Raft(
                raftstore::Error::Undetermined(_)
                | raftstore::Error::SessionExpired { .. }
                | raftstore::Error::SessionMismatch { .. },
            ) => (None, format!("{}{self}", util::wire::UNDETERMINED)),
            Error::Raft(r) => match region_error(r) {
                Some(re) => (Some(re), String::new()),
                None => (None, self.to_string()),
            },
            Error::Timeout(_) | Error::AuthUnavailable(_) | Error::Busy(_) => {
                let mut err = errorpb::Error::default();
                err.set_message(self.to_string());
                err.mut_server_is_busy().set_reason(self.to_string());
                (Some(err), String::new())
            }
            _ => (None, self.to_string()),
        }
    }

    /// The leader a not-leader error names, if it names one.
    pub fn leader_hint(&self) -> Option<&metapb::Peer> {
        match self {
            Error::Raft(raftstore::Error::NotLeader {
                leader: Some(l), ..
            }) => Some(l),
            _ => None,
        }
    }
}
