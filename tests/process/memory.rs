//! RocksDB's memory is bounded by configuration: a store under a sustained write load of
//! many times its memtable budget keeps its resident memory within the configured block
//! cache and memtable budget plus a documented overhead. It runs alone
//! (`test_cluster::gate::alone`), so that no other test's cluster shares the machine while
//! it measures.

use crate::common;

use std::time::{Duration, Instant};

use common::{client, voters, wait_until, ProcCluster};

const T: Duration = Duration::from_secs(60);

/// Budget given to RocksDB in the memory test, and what a store may use beyond it
/// (documented in the README: gRPC and Raft buffers, the Raft entry cache, allocator
/// slack, code).
const BLOCK_CACHE_MIB: u64 = 32;
const MEMTABLE_MIB: u64 = 32;
const OVERHEAD_MIB: u64 = 320;

#[test]
fn a_store_under_sustained_writes_stays_within_its_memory_budget() {
    let _alone = test_cluster::gate::alone();
    let storage = format!(
        "\n[storage]\nblock-cache-size = \"{BLOCK_CACHE_MIB}MiB\"\nmemtable-budget = \"{MEMTABLE_MIB}MiB\"\nwrite-buffer-size = \"8MiB\"\n"
    );
    let mut cluster = ProcCluster::start_with(1, &storage);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("one voter", T, || voters(&rt, &c) == 1);
    let pid = cluster.stores[0]
        .as_mut()
        .and_then(|p| p.pid())
        .expect("the store runs");
    let value = vec![b'v'; 16 << 10];
    let started = Instant::now();
    let mut peak = 0;
    let mut written = 0u64;
    // About 400 MiB through the store, 256 KiB per batch: many times the memtable
    // budget, so memtables fill, flush and compact throughout.
    for i in 0..1600u64 {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..16)
            .map(|j| (format!("mem-{:08}", i * 16 + j).into_bytes(), value.clone()))
            .collect();
        rt.block_on(c.batch_put(&pairs)).expect("a write");
        written += 16 * value.len() as u64;
        if i % 8 == 0 {
            peak = peak.max(common::rss_bytes(pid));
        }
    }
    let budget = (BLOCK_CACHE_MIB + MEMTABLE_MIB + OVERHEAD_MIB) << 20;
    eprintln!(
        "wrote {} MiB in {:.0}s; peak RSS {} MiB (budget {BLOCK_CACHE_MIB} + {MEMTABLE_MIB} MiB, allowed {} MiB)",
        written >> 20,
        started.elapsed().as_secs_f64(),
        peak >> 20,
        budget >> 20
    );
    assert!(
        peak < budget,
        "peak RSS {} MiB over {} MiB",
        peak >> 20,
        budget >> 20
    );
}
