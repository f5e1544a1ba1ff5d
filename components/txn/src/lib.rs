//! Transactions: Percolator over multi-version records, as TiKV keeps them.
//!
//! This crate owns what the lock, write and txn value records mean and the rules every
//! transactional command follows (who may lock a key, when a commit or a rollback is
//! allowed, what a read at a timestamp sees). A command reads one consistent
//! [`Snapshot`] of a region and returns the writes it wants as [`Modify`]s; the caller
//! serializes commands on the same keys, carries the writes through Raft as one batch,
//! and answers the client.
//!
//! It must not depend on raftstore, the server or the wire protocol: conversions to
//! and from TiKV's messages live in the server.

pub mod actions;
pub mod commands;
pub mod concurrency;
mod error;
pub mod latch;
pub mod limits;
pub mod reader;
mod snapshot;
#[cfg(test)]
mod test_util;
pub mod txn;
pub mod types;

pub use error::{ConflictReason, Error, Result};
pub use limits::Limits;
pub use reader::MvccReader;
pub use snapshot::Snapshot;
pub use txn::MvccTxn;
pub use types::{Modify, Mutation, MutationOp};
