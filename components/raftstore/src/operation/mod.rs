//! What a region does, one operation per file, each with its Raft-poller half (`impl
//! PeerFsm`) beside its apply-poller half (`impl ApplyFsm`).

pub(crate) mod command;
pub mod conf_change;
pub mod consistency;
pub(crate) mod destroy;
pub(crate) mod evict;
pub(crate) mod heartbeat;
pub(crate) mod hibernate;
pub(crate) mod log_gc;
pub(crate) mod read;
pub(crate) mod ready;
pub mod session;
pub(crate) mod snapshot;
pub mod split;
pub(crate) mod transfer;
