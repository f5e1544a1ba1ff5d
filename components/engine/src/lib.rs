//! The storage engine seam: one RocksDB per store, with column families for user data
//! (`default`, `lock`, `write`) and for Raft state (`raft`).
//!
//! Owns: opening the database within a memory budget, atomic write batches, point reads,
//! range scans, consistent snapshots, SST export/ingest for region snapshots, and the
//! database's own statistics.
//! Must not depend on: Raft, gRPC, or any key layout (those live in `keys`); callers pass
//! fully encoded keys.

mod cf;
mod db;
mod error;
mod options;
mod sst;
mod stats;
mod write_batch;

pub use cf::Cf;
pub use db::{Engine, Pair, Snapshot, WeakEngine};
pub use error::{Error, Result};
pub use options::{DropFilter, EngineOptions};
pub use sst::{file_checksum, SstMeta};
pub use stats::{CfStats, EngineStats};
pub use write_batch::WriteBatch;

#[cfg(test)]
mod tests;
