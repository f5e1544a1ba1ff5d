//! The placement driver: cluster metadata, the routing table, id and timestamp
//! allocation, and scheduling (operators delivered in region heartbeat responses),
//! replicated by PD's own Raft group (`member`).
//!
//! Owns: PD's persisted metadata (its own RocksDB through `engine`), the PD group's Raft
//! log, users and roles, the `pdpb.PD`, `pd_memberpb.PdMember` and `authpb.Auth` services.
//! Must not depend on: raftstore or the store server; PD learns about regions only from
//! what stores report.

mod balance;
pub mod cluster;
mod config;
mod error;
#[cfg(test)]
mod heartbeat_properties;
mod id;
mod member;
pub mod metrics;
pub mod placement;
pub mod region_tree;
pub mod schedule;
mod server;
mod service;
mod storage;
mod tso;
mod users;
mod validate;

pub use cluster::{PdCore, StoreInfo};
pub use config::{AuthConfig, Config, FileConfig, Replication};
pub use error::{Error, Result};
pub use server::{PdServer, PdStatus};
pub use tso::LOGICAL_BITS;
