//! Eight writers against the in-process cluster while regions split (by size and by
//! hand), replicas move, leadership moves, the network partitions and a store stops:
//! no acknowledged write is lost and no read returns a value that was never written or
//! is older than a write acknowledged before the read began.
//!
//! Each writer owns its keys and writes them one at a time with rising sequence numbers,
//! so for every key the set of values that may be seen is known exactly.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use parking_lot::{Mutex, RwLock};
use rand::{rngs::StdRng, Rng, SeedableRng};
use test_cluster::{test_config, wait_until, Cluster};

const WRITERS: usize = 8;
const KEYS_PER_WRITER: usize = 64;
/// Upper bounds: the test stops at whichever comes first.
const MAX_OPS_PER_WRITER: usize = 50_000;
const NEMESIS_ROUNDS: usize = 14;
const T: Duration = Duration::from_secs(30);

fn key(writer: usize, k: usize) -> Vec<u8> {
    format!("w{writer}-k{k:02}").into_bytes()
}

/// A value that names its sequence number and is large enough to trigger size splits.
fn value(seq: u64) -> Vec<u8> {
    format!("{seq:08}-{}", "x".repeat(200)).into_bytes()
}

fn seq_of(v: &[u8]) -> u64 {
    std::str::from_utf8(&v[..8])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a value this test never writes: {v:?}"))
}

/// What one key may hold: every sequence number ever sent, and the last acknowledged.
#[derive(Default)]
struct History {
    attempted: Vec<u64>,
    acked: Option<u64>,
}

impl History {
    /// Checks a read that began when `acked_before` was the last acknowledged write.
    fn check(&self, k: &[u8], got: Option<&[u8]>, acked_before: Option<u64>) {
        let name = String::from_utf8_lossy(k);
        match (got, acked_before) {
            (None, None) => {}
            (None, Some(a)) => panic!("{name}: acknowledged write {a} lost"),
            (Some(v), _) => {
                let seq = seq_of(v);
                assert!(
                    self.attempted.contains(&seq),
                    "{name}: read {seq}, which was never written"
                );
                assert!(
                    acked_before.is_none_or(|a| seq >= a),
                    "{name}: read {seq}, older than acknowledged {acked_before:?}"
                );
            }
        }
    }
}

fn writer(
    id: usize,
    c: &RwLock<Cluster>,
    histories: &Mutex<HashMap<Vec<u8>, History>>,
    stop: &AtomicBool,
) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(id as u64);
    let (mut acked, mut reads) = (0, 0);
    for op in 0..MAX_OPS_PER_WRITER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let k = key(id, rng.gen_range(0..KEYS_PER_WRITER));
        if op % 4 == 3 {
            let before = histories.lock().entry(k.clone()).or_default().acked;
            if let Ok(got) = c.read().get_within(&k, Duration::from_secs(1)) {
                histories.lock()[&k].check(&k, got.as_deref(), before);
                reads += 1;
            }
            continue;
        }
        let seq = (op as u64 + 1) * 100 + id as u64;
        histories
            .lock()
            .entry(k.clone())
            .or_default()
            .attempted
            .push(seq);
        if c.read()
            .put_within(&k, &value(seq), Duration::from_secs(1))
            .is_ok()
        {
            histories.lock().get_mut(&k).expect("recorded").acked = Some(seq);
            acked += 1;
        }
    }
    (acked, reads)
}

/// One disturbance per round, each undone before the next.
fn nemesis(c: &RwLock<Cluster>, stop: &AtomicBool) {
    let mut rng = StdRng::seed_from_u64(42);
    let stores = c.read().store_ids();
    let net = c.read().network().clone();
    for round in 0..NEMESIS_ROUNDS {
        let store = stores[rng.gen_range(0..stores.len())];
        let some_key = key(rng.gen_range(0..WRITERS), rng.gen_range(0..KEYS_PER_WRITER));
        let region = c.read().leader_of_key(&some_key).map(|(_, r)| r);
        match round % 6 {
            0 => {
                let _ = c.read().split(&some_key, &some_key);
            }
            1 => {
                if let Some(r) = &region {
                    let to = r.get_peers()[rng.gen_range(0..r.get_peers().len())].get_store_id();
                    let _ = c.read().transfer_leader(r.get_id(), to);
                }
            }
            2 => {
                if let Some(r) = &region {
                    let from = r.get_peers()[0].get_store_id();
                    let to = stores
                        .iter()
                        .copied()
                        .find(|s| !r.get_peers().iter().any(|p| p.get_store_id() == *s));
                    if let Some(to) = to {
                        let g = c.read();
                        let _ = g.runtime().block_on(g.pd().move_peer(r.get_id(), from, to));
                    }
                }
            }
            3 => {
                let others: Vec<u64> = stores.iter().copied().filter(|s| *s != store).collect();
                let f = net.partition(&[store], &others);
                std::thread::sleep(Duration::from_millis(1500));
                net.remove_filter(f);
            }
            4 => {
                c.write().stop_store(store);
                std::thread::sleep(Duration::from_secs(2));
                c.write().start_store(store);
            }
            _ => {
                let f = net.isolate(store);
                std::thread::sleep(Duration::from_millis(800));
                net.remove_filter(f);
            }
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn no_acknowledged_write_is_lost_through_splits_moves_partitions_and_a_stopped_store() {
    let (mut rs, pd) = test_config();
    rs.split_region_check_tick_interval = Duration::from_millis(100);
    rs.region_split_size = bytesize::ByteSize::kib(8);
    rs.region_split_check_diff = bytesize::ByteSize::kib(2);
    let c = Cluster::with_config(5, rs, pd);
    c.wait_voters(b"", 3, T);
    let c = RwLock::new(c);
    let histories = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                let (c, h, stop) = (&c, &histories, &stop);
                s.spawn(move || writer(id, c, h, stop))
            })
            .collect();
        nemesis(&c, &stop);
        writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect()
    });
    let c = c.into_inner();
    c.network().clear_filters();
    let acked: usize = results.iter().map(|r| r.0).sum();
    let reads: usize = results.iter().map(|r| r.1).sum();
    eprintln!(
        "{acked} writes acknowledged, {reads} reads checked, {} regions, in {:.0}s",
        c.regions().len(),
        started.elapsed().as_secs_f64()
    );
    assert!(acked > 100, "the cluster kept taking writes ({acked})");
    assert!(c.regions().len() > 5, "regions split");
    let histories = histories.into_inner();
    for (k, h) in &histories {
        let mut got = Err(String::new());
        wait_until("a final read", T, || {
            got = c.get_within(k, Duration::from_secs(2));
            got.is_ok()
        });
        h.check(k, got.expect("read").as_deref(), h.acked);
    }
}
