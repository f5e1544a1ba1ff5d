//! A store: the `tikvpb.Tikv` gRPC service (TiKV's raw and transactional key-value calls
//! plus the store-to-store Raft transport), forwarding for clients that do not route, the
//! gRPC Raft transport, the PD worker, the GC worker, and the store process around them
//! (start-up, bootstrap, status HTTP, shutdown), and the check of every request against
//! PD's users and roles (`authz`).
//!
//! Owns: every conversion between raftstore errors and wire errors (`error.rs`).
//! Must not depend on the PD server (`pd`; the embedded single-node PD is composed in
//! `node`) nor on command-line crates. Must not be depended on by raftstore, pd or
//! client.

pub mod authz;
mod batch_service;
pub mod config;
mod connections;
mod context;
mod error;
mod gc_worker;
pub mod metrics;
mod node;
mod pd_clock;
pub mod pd_worker;
mod raw_service;
mod resolver;
pub mod safe_ts;
pub mod service;
mod span;
pub mod storage;
pub mod transport;
pub mod txn_service;
pub mod txn_storage;

pub use config::Config;
pub use error::{Error, Result};
pub use node::{join_cluster, Node};
pub use resolver::Resolver;
