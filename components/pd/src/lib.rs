//! The placement driver: cluster metadata, the routing table, id and timestamp
//! allocation, and scheduling (operators delivered in region heartbeat responses).
//!
//! Owns: PD's persisted metadata (its own RocksDB through `engine`), `pdpb.PD` service.
//! Must not depend on: raftstore or the store server; PD learns about regions only from
//! what stores report.

mod balance;
pub mod cluster;
mod config;
mod error;
#[cfg(test)]
mod heartbeat_properties;
mod id;
pub mod metrics;
pub mod region_tree;
pub mod schedule;
mod server;
mod service;
mod storage;
mod tso;
mod validate;

pub use cluster::{PdCore, StoreInfo};
pub use config::{Config, FileConfig};
pub use error::{Error, Result};
pub use server::PdServer;
pub use storage::Storage;
pub use tso::LOGICAL_BITS;
