//! Tests on the in-process cluster (`components/test_cluster`): PD and stores in this
//! process, connected by a transport whose filters cut, delay and drop messages. One
//! binary, so RocksDB and gRPC are linked once for all of them.
//!
//! Tests run on parallel threads; a test that sets fail points (global to the process)
//! holds `test_cluster::gate::alone()`, and every cluster holds the shared side.

mod balance;
mod chaos;
mod config_templates;
mod failpoints;
mod follower_read;
mod hibernate;
mod pd_group;
mod raft_cluster;
mod raw_ttl;
mod safety;
mod sessions;
mod split;
mod stale_read;
mod txn_storage;
mod zone_latency;
mod zones;
