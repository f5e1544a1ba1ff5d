//! Follower reads (`Context.replica_read`) of raw data on the in-process cluster: served
//! by followers after a read index from the leader, linearizable through leader changes
//! (checked on a recorded history), refused by a follower cut off from its leader (at
//! once when it sees leadership change), and, with a test-only switch that skips the
//! read index, caught stale by the checker.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use proto::kvrpcpb::Context;
use test_cluster::{
    history::{outcome_of, Op, Outcome, Recorder},
    wait_until, Cluster,
};

const T: Duration = Duration::from_secs(30);

fn value(n: u64) -> Vec<u8> {
    format!("v{n}").into_bytes()
}

fn value_of(bytes: &[u8]) -> u64 {
    std::str::from_utf8(&bytes[1..]).unwrap().parse().unwrap()
}

/// A context asking `store`'s replica of the region of `key` for a replica read.
fn replica_ctx(c: &Cluster, store: u64, key: &[u8]) -> Option<Context> {
    let region = c.local_region(store, key)?;
    let mut ctx = Context::default();
    ctx.set_region_id(region.get_id());
    ctx.set_region_epoch(region.get_region_epoch().clone());
    ctx.set_replica_read(true);
    Some(ctx)
}

#[test]
fn follower_reads_stay_linearizable_through_leader_changes() {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    let stores = c.store_ids();
    let rec = Recorder::default();
    let next = AtomicU64::new(1);
    let stop = AtomicBool::new(false);
    let by_followers = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(4);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let inv = rec.invoke(0, Op::Put(b"k".to_vec(), n));
                let res = c.put_within(b"k", &value(n), Duration::from_secs(2));
                // put_within retries only routing errors (nothing applied); a timeout may
                // have applied.
                let outcome = if res.is_ok() {
                    Outcome::Written
                } else {
                    Outcome::Unknown
                };
                rec.complete(inv, outcome);
            }
        });
        for (i, store) in stores.iter().copied().enumerate() {
            let (rec, stop, by_followers, c) = (&rec, &stop, &by_followers, &c);
            s.spawn(move || {
                let storage = c.storage(store);
                while !stop.load(Ordering::Relaxed) {
                    let Some(ctx) = replica_ctx(c, store, b"k") else {
                        continue;
                    };
                    let leads = c.leader_of(ctx.region_id) == Some(store);
                    let inv = rec.invoke(1 + i, Op::Get(b"k".to_vec()));
                    let res = c.runtime().block_on(storage.get(&ctx, "", b"k"));
                    if res.is_ok() && !leads {
                        by_followers.fetch_add(1, Ordering::Relaxed);
                    }
                    let outcome = outcome_of(&res, |v| Outcome::Read(v.as_deref().map(value_of)));
                    rec.complete(inv, outcome);
                }
            });
        }
        // Leadership moves around while everything runs.
        let mut turn = 0;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(700));
            if let Some((leader, region)) = c.leader_of_key(b"k") {
                let to = stores[turn % stores.len()];
                turn += 1;
                if to != leader {
                    let _ = c.try_transfer_leader(region.get_id(), to);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (ok, failed, unknown) = rec.counts();
    let followers = by_followers.load(Ordering::Relaxed);
    eprintln!(
        "{ok} operations ok ({followers} reads by followers), {failed} failed, {unknown} unknown"
    );
    assert!(followers >= 50, "followers served only {followers} reads");
    let dir = tempfile::tempdir().unwrap();
    if let Err(v) = rec.check(dir.path()) {
        panic!("follower reads broke linearizability: {v}");
    }
}

/// A follower cut off from its leader cannot get a read index: its replica reads fail
/// instead of answering from what it has. With the test-only switch that skips the read
/// index, it answers its stale value, and the history checker catches that.
#[test]
fn a_cut_off_follower_refuses_and_the_checker_catches_one_that_skips_the_read_index() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    let rec = Recorder::default();
    let write = |n: u64| {
        let inv = rec.invoke(0, Op::Put(b"k".to_vec(), n));
        c.must_put(b"k", &value(n));
        rec.complete(inv, Outcome::Written);
    };
    write(1);
    let (leader, _) = c.leader_of_key(b"k").expect("a leader");
    let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.must_replicate_on(follower, b"k", &value(1), T);
    let storage = c.storage_with_timeout(follower, Duration::from_secs(2));
    let ctx = replica_ctx(&c, follower, b"k").expect("a replica");
    wait_until("a follower read of the first value", T, || {
        c.runtime().block_on(storage.get(&ctx, "", b"k")).ok() == Some(Some(value(1)))
    });

    let cut = c.network().isolate(follower);
    write(2);
    let refused = c.runtime().block_on(storage.get(&ctx, "", b"k"));
    assert!(refused.is_err(), "a cut-off follower answered {refused:?}");

    fail::cfg("read_without_read_index", "return").expect("configure fail point");
    let inv = rec.invoke(1, Op::Get(b"k".to_vec()));
    let got = c
        .runtime()
        .block_on(storage.get(&ctx, "", b"k"))
        .expect("served without a read index");
    rec.complete(inv, Outcome::Read(got.as_deref().map(value_of)));
    fail::remove("read_without_read_index");
    assert!(
        c.network().remove_filter(cut) > 0,
        "the cut dropped messages"
    );
    assert_eq!(got, Some(value(1)), "the follower served its stale value");
    let dir = tempfile::tempdir().unwrap();
    let violation = rec
        .check(dir.path())
        .expect_err("a stale follower read is not linearizable");
    assert!(
        format!("{:?}", violation.smallest).contains("Read(Some(1))"),
        "{violation}"
    );
}

/// A follower read waiting for a read index from a leader that was cut off fails as soon
/// as the follower sees leadership change (its queued reads would never get their read
/// index from the new leader), not only when the read index times out.
#[test]
fn a_read_waiting_on_a_cut_off_leader_fails_when_the_follower_sees_leadership_change() {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", &value(1));
    let (leader, _) = c.leader_of_key(b"k").expect("a leader");
    let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.must_replicate_on(follower, b"k", &value(1), T);
    let storage = c.storage_with_timeout(follower, T);
    let ctx = replica_ctx(&c, follower, b"k").expect("a replica");
    wait_until("a follower read", T, || {
        c.runtime().block_on(storage.get(&ctx, "", b"k")).ok() == Some(Some(value(1)))
    });

    let cut = c.network().isolate(leader);
    let err = c
        .runtime()
        .block_on(storage.get(&ctx, "", b"k"))
        .expect_err("no read index without the leader");
    // A read index that timed out would be `StaleCommand`.
    assert!(
        matches!(err, server::Error::Raft(raftstore::Error::NotLeader { .. })),
        "{err}"
    );
    assert!(
        c.network().remove_filter(cut) > 0,
        "the cut dropped messages"
    );
}

#[test]
fn a_replica_read_on_a_store_without_the_region_is_refused() {
    let mut c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    let outsider = c.add_store();
    let ctx = replica_ctx(&c, c.store_ids()[0], b"k").expect("a replica");
    let err = c
        .runtime()
        .block_on(c.storage(outsider).get(&ctx, "", b"k"))
        .expect_err("no replica here");
    let (region_err, _) = err.into_wire();
    assert!(
        region_err.is_some_and(|e| e.has_region_not_found()),
        "a store without the region answers region_not_found"
    );
}
