//! Eight clients share a small key set on the in-process cluster while regions split (by
//! size and by hand), replicas move, leadership moves, the network partitions (one store
//! off, or a bridge), links lose, delay and reorder messages, and stores stop gracefully
//! or crash (their disk image taken mid-flight, as a killed process leaves it). The
//! nemesis is seeded (`FLOTILLA_CHAOS_SEED`, printed on failure). Every operation (get, put, delete, compare-and-swap, batch put) is one attempt,
//! recorded with its outcome, and the whole history is checked for linearizability per
//! key by a library checker. Every fault must have taken effect.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::{Mutex, RwLock};
use proto::metapb;
use rand::{rngs::StdRng, Rng, SeedableRng};
use server::storage::RawStorage;
use test_cluster::{
    history::{outcome_of, Op, Outcome, Recorder, Value},
    test_config, wait_until, Cluster, Network, Verdict,
};

const CLIENTS: usize = 8;
const KEYS: usize = 64;
/// Upper bounds: the test stops at whichever comes first.
const MAX_OPS_PER_CLIENT: usize = 20_000;
const NEMESIS_ROUNDS: usize = 20;
const KINDS: usize = 10;
const T: Duration = Duration::from_secs(30);
/// The process that reads every key at the end (clients' ids stay far below).
const FINAL_READER: usize = 1 << 40;

fn key(k: usize) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

/// A value that names its number and is large enough to trigger size splits.
fn value(n: Value) -> Vec<u8> {
    format!("{n:012}-{}", "x".repeat(200)).into_bytes()
}

fn value_of(v: &[u8]) -> Value {
    std::str::from_utf8(&v[..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a value this test never writes: {v:?}"))
}

/// One attempt of `op` through the current leader of `routing_key`'s region.
fn attempt<T>(
    c: &RwLock<Cluster>,
    routing_key: &[u8],
    op: impl AsyncFnOnce(RawStorage, proto::kvrpcpb::Context) -> server::Result<T>,
) -> server::Result<T> {
    let c = c.read();
    let (storage, ctx) = c.leader_storage(routing_key).ok_or_else(|| {
        server::Error::Raft(raftstore::Error::NotLeader {
            region_id: 0,
            leader: None,
        })
    })?;
    c.runtime().block_on(op(storage, ctx))
}

/// Runs one random operation as `process` and records it.
fn one_op(
    c: &RwLock<Cluster>,
    rec: &Recorder,
    rng: &mut StdRng,
    process: usize,
    n: Value,
) -> Outcome {
    let k = key(rng.gen_range(0..KEYS));
    let roll = rng.gen_range(0..100);
    let (op, (outcome, error)) = if roll < 40 {
        let inv = rec.invoke(process, Op::Get(k.clone()));
        let res = attempt(c, &k, async |s, ctx| s.get(&ctx, "", &k).await);
        (
            inv,
            with_error(&res, |v| Outcome::Read(v.as_deref().map(value_of))),
        )
    } else if roll < 65 {
        let inv = rec.invoke(process, Op::Put(k.clone(), n));
        let res = attempt(c, &k, async |s, ctx| s.put(&ctx, "", &k, &value(n)).await);
        (inv, with_error(&res, |_| Outcome::Written))
    } else if roll < 75 {
        let inv = rec.invoke(process, Op::Delete(k.clone()));
        let keys = [k.clone()];
        let res = attempt(c, &k, async |s, ctx| s.batch_delete(&ctx, "", &keys).await);
        (inv, with_error(&res, |_| Outcome::Written))
    } else if roll < 90 {
        // Expect what was last written by anyone, often enough to succeed.
        let expected =
            (n > 1 && rng.gen_bool(0.8)).then(|| rng.gen_range(n.saturating_sub(200)..n));
        let inv = rec.invoke(process, Op::Cas(k.clone(), expected, n));
        let prev = expected.map(value);
        let res = attempt(c, &k, async |s, ctx| {
            s.compare_and_swap(&ctx, "", &k, &value(n), prev.as_deref())
                .await
        });
        (inv, with_error(&res, |r| Outcome::Swapped(r.succeed)))
    } else {
        // Two keys in one atomic batch: both in the first key's region or refused whole.
        let k2 = key(rng.gen_range(0..KEYS));
        let pairs = vec![(k.clone(), n), (k2, n)];
        let inv = rec.invoke(process, Op::BatchPut(pairs.clone()));
        let bytes: Vec<(Vec<u8>, Vec<u8>)> =
            pairs.iter().map(|(k, v)| (k.clone(), value(*v))).collect();
        let res = attempt(c, &k, async |s, ctx| s.batch_put(&ctx, "", &bytes).await);
        (inv, with_error(&res, |_| Outcome::Written))
    };
    rec.complete_with(op, outcome.clone(), error);
    outcome
}

fn with_error<T>(
    res: &server::Result<T>,
    ok: impl FnOnce(&T) -> Outcome,
) -> (Outcome, Option<String>) {
    (
        outcome_of(res, ok),
        res.as_ref().err().map(|e| e.to_string()),
    )
}

fn client(id: usize, c: &RwLock<Cluster>, rec: &Recorder, stop: &AtomicBool) {
    let mut rng = StdRng::seed_from_u64(id as u64);
    // A process whose operation ended unknown issues no more: the next one is new.
    let mut process = id;
    for op in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = (op as Value + 1) * CLIENTS as Value + id as Value;
        match one_op(c, rec, &mut rng, process, n) {
            Outcome::Unknown => process += CLIENTS,
            Outcome::Failed => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
}

/// Faults that took effect, by kind.
#[derive(Default, Debug)]
struct Effective {
    splits: usize,
    transfers: usize,
    moves: usize,
    partitions: usize,
    restarts: usize,
    isolations: usize,
    lossy: usize,
    reordered: usize,
    bridges: usize,
    crashes: usize,
}

fn seed() -> u64 {
    std::env::var("FLOTILLA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42)
}

/// Drops each message with probability `p` for a second; true if any was dropped.
fn lossy_links(net: &Network, seed: u64, p: f64) -> bool {
    let rng = Mutex::new(StdRng::seed_from_u64(seed));
    let f = net.add_filter(Arc::new(move |_, _, _| {
        if rng.lock().gen_bool(p) {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }));
    std::thread::sleep(Duration::from_secs(1));
    net.remove_filter(f) > 0
}

/// Delays each message by 0 to 40 ms for a second, so that messages overtake each other;
/// true if any was delayed.
fn reordering_links(net: &Network, seed: u64) -> bool {
    let rng = Mutex::new(StdRng::seed_from_u64(seed));
    let delayed = Arc::new(AtomicUsize::new(0));
    let d = delayed.clone();
    let f = net.add_filter(Arc::new(move |_, _, _| {
        d.fetch_add(1, Ordering::Relaxed);
        Verdict::Delay(Duration::from_millis(rng.lock().gen_range(0..40)))
    }));
    std::thread::sleep(Duration::from_secs(1));
    net.remove_filter(f);
    delayed.load(Ordering::Relaxed) > 0
}

/// Asks the leader of `r` to hand over to a voter on another store than `avoid`; true
/// if the leadership got there.
fn transfer_somewhere(c: &RwLock<Cluster>, r: &metapb::Region, avoid: u64) -> bool {
    // Without a known leader, an election could pass for a transfer.
    let Some(leader) = c.read().leader_of(r.get_id()) else {
        return false;
    };
    let Some(to) = r
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .find(|s| *s != leader && *s != avoid)
    else {
        return false;
    };
    let _ = c.read().transfer_leader(r.get_id(), to);
    (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        c.read().leader_of(r.get_id()) == Some(to)
    })
}

/// One disturbance per round, each undone (and checked) before the next.
fn nemesis(c: &RwLock<Cluster>, stop: &AtomicBool) -> Effective {
    let mut rng = StdRng::seed_from_u64(seed());
    let stores = c.read().store_ids();
    let net = c.read().network().clone();
    let mut done = Effective::default();
    for round in 0..NEMESIS_ROUNDS {
        let store = stores[rng.gen_range(0..stores.len())];
        let some_key = key(rng.gen_range(0..KEYS));
        // Draws that depend on how a round went come from the round's own generator, so
        // that a seed replays the same rounds.
        let mut round_rng = StdRng::seed_from_u64(rng.gen());
        let region = c.read().leader_of_key(&some_key).map(|(_, r)| r);
        match round % KINDS {
            0 => {
                if c.read().split(&some_key, &some_key).is_ok() {
                    done.splits += 1;
                }
            }
            1 => {
                // A transfer may be declined (the target is behind, just restarted, or
                // PD moves the leader back at once): try a few keys' regions.
                for attempt in 0..5 {
                    let k = if attempt == 0 {
                        some_key.clone()
                    } else {
                        key(round_rng.gen_range(0..KEYS))
                    };
                    let Some((_, r)) = c.read().leader_of_key(&k) else {
                        continue;
                    };
                    if transfer_somewhere(c, &r, store) {
                        done.transfers += 1;
                        break;
                    }
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
                        if g.runtime()
                            .block_on(g.pd().move_peer(r.get_id(), from, to))
                            .is_ok()
                        {
                            drop(g);
                            let moved = (0..250).any(|_| {
                                std::thread::sleep(Duration::from_millis(20));
                                c.read().local_region(to, &some_key).is_some_and(|now| {
                                    now.get_id() == r.get_id()
                                        && !now.get_peers().iter().any(|p| p.get_store_id() == from)
                                })
                            });
                            done.moves += moved as usize;
                        }
                    }
                }
            }
            3 => {
                let others: Vec<u64> = stores.iter().copied().filter(|s| *s != store).collect();
                let f = net.partition(&[store], &others);
                std::thread::sleep(Duration::from_millis(1500));
                done.partitions += (net.remove_filter(f) > 0) as usize;
            }
            4 => {
                c.write().stop_store(store);
                std::thread::sleep(Duration::from_secs(2));
                c.write().start_store(store);
                done.restarts += 1;
            }
            5 => {
                let f = net.isolate(store);
                std::thread::sleep(Duration::from_millis(800));
                done.isolations += (net.remove_filter(f) > 0) as usize;
            }
            6 => done.lossy += lossy_links(&net, rng.gen(), 0.3) as usize,
            7 => done.reordered += reordering_links(&net, rng.gen()) as usize,
            8 => {
                // A region's leader and one follower stop reaching each other; the other
                // follower reaches both and bridges them. (Followers never talk to each
                // other, so cutting two followers apart would cut nothing.)
                let leader = region.as_ref().and_then(|r| c.read().leader_of(r.get_id()));
                if let (Some(r), Some(leader)) = (&region, leader) {
                    let followers: Vec<u64> = r
                        .get_peers()
                        .iter()
                        .map(|p| p.get_store_id())
                        .filter(|s| *s != leader)
                        .collect();
                    if let [_bridge, cut_off, ..] = followers[..] {
                        let f = net.partition(&[leader], &[cut_off]);
                        std::thread::sleep(Duration::from_millis(1500));
                        done.bridges += (net.remove_filter(f) > 0) as usize;
                    }
                }
            }
            _ => {
                let image = c.read().crash_image(store);
                std::thread::sleep(Duration::from_millis(500));
                c.write()
                    .restart_from_image(store, &image)
                    .unwrap_or_else(|e| {
                        panic!("store {store} refused to restart after a crash: {e}")
                    });
                done.crashes += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    stop.store(true, Ordering::Relaxed);
    done
}

#[test]
fn histories_stay_linearizable_through_splits_moves_partitions_and_a_stopped_store() {
    let (mut rs, pd) = test_config();
    rs.split_region_check_tick_interval = Duration::from_millis(100);
    rs.region_split_size = bytesize::ByteSize::kib(2);
    rs.region_split_check_diff = bytesize::ByteSize::b(512);
    let c = Cluster::with_config(5, rs, pd);
    c.wait_voters(b"", 3, T);
    let c = RwLock::new(c);
    let rec = Recorder::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let effective = std::thread::scope(|s| {
        for id in 0..CLIENTS {
            let (c, rec, stop) = (&c, &rec, &stop);
            s.spawn(move || client(id, c, rec, stop));
        }
        nemesis(&c, &stop)
    });
    let c = c.into_inner();
    c.network().clear_filters();
    // A final read of every key, once the cluster has settled, closes each history.
    for k in 0..KEYS {
        let k = key(k);
        wait_until("a final read", T, || {
            let inv = rec.invoke(FINAL_READER, Op::Get(k.clone()));
            let res = c
                .leader_storage(&k)
                .map(|(s, ctx)| c.runtime().block_on(s.get(&ctx, "", &k)));
            let ok = matches!(res, Some(Ok(_)));
            let out = match res {
                Some(r) => outcome_of(&r, |v| Outcome::Read(v.as_deref().map(value_of))),
                None => Outcome::Failed,
            };
            rec.complete(inv, out);
            ok
        });
    }
    let (ok, failed, unknown) = rec.counts();
    eprintln!(
        "{ok} operations ok, {failed} failed, {unknown} unknown; {} regions; faults {effective:?}; in {:.0}s",
        c.regions().len(),
        started.elapsed().as_secs_f64()
    );
    assert!(ok > 500, "the cluster kept serving ({ok})");
    assert!(c.regions().len() > 5, "regions split");
    for (kind, n) in [
        ("split", effective.splits),
        ("leader transfer", effective.transfers),
        ("replica move", effective.moves),
        ("partition", effective.partitions),
        ("restart", effective.restarts),
        ("isolation", effective.isolations),
        ("lossy link", effective.lossy),
        ("reordering link", effective.reordered),
        ("bridge partition", effective.bridges),
        ("crash", effective.crashes),
    ] {
        assert!(n > 0, "no {kind} took effect: {effective:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let checking = Instant::now();
    let checked = rec.check(dir.path());
    eprintln!(
        "history checked in {:.1}s",
        checking.elapsed().as_secs_f64()
    );
    if let Err(v) = checked {
        let kept = std::env::temp_dir().join("flotilla-chaos-history.json");
        let _ = std::fs::copy(&v.file, &kept);
        panic!("seed {}: {v}(history kept in {})", seed(), kept.display());
    }
}
