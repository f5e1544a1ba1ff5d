//! Tests on the real binaries: pd-server and kv-servers as processes on 127.0.0.1, kvctl
//! driven as an operator drives it, the Docker compose cluster, and TiKV's own clients
//! (tikv-client) against Flotilla. One binary, so RocksDB and gRPC are linked once.
//!
//! Tests run on parallel threads; one that measures a process's CPU, memory or time, or
//! takes fixed ports, holds `test_cluster::gate::alone()`, and every `ProcCluster` holds
//! the shared side.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod batch_commands;
mod bench;
mod connections;
mod core_log;
mod disk_full;
mod docker;
mod durability;
mod hostile;
mod idle_failover;
mod kvctl_txn;
mod lifecycle;
mod malformed;
mod memory;
mod metrics;
mod moves;
mod operations;
mod pd_failover;
mod raw_ttl;
mod scale;
mod sessions;
mod sharding;
mod single_node;
mod tikv_client_compat;
mod tikv_txn_client;
mod tls;
mod txn_client;
mod txn_hostile;
mod zones;
