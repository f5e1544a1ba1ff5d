//! Read latency from a remote zone on the in-process cluster: three stores in three zones,
//! every message between zones delayed (netem is not available here: the transport
//! delays them), the leader in z1 and the client in z3. A leader read pays the client's
//! round trip to z1 (the harness delays the call, as a proxy would) and the leader's
//! quorum round; a `closest` read is a follower read in z3, which pays one round from z3
//! to the leader and its quorum round (the same here, where all zones are equally far
//! apart: follower reads spread load, and save time only when the client is further from
//! the leader than its zone's replica is); a stale read pays no round trip at all. The
//! test prints all three.

use std::time::{Duration, Instant};

use proto::kvrpcpb::Context;
use test_cluster::{wait_until, Cluster, Verdict};

const T: Duration = Duration::from_secs(30);
/// One way between two zones.
const ONE_WAY: Duration = Duration::from_millis(20);
const READS: usize = 30;

fn ctx_for(c: &Cluster, store: u64, key: &[u8]) -> Context {
    let region = c.local_region(store, key).expect("a replica");
    let mut ctx = Context::default();
    ctx.set_region_id(region.get_id());
    ctx.set_region_epoch(region.get_region_epoch().clone());
    ctx
}

/// p50 and p99 of `READS` timings of `read`, which must return the value.
fn measure(mut read: impl FnMut() -> Option<Vec<u8>>) -> (Duration, Duration) {
    let mut took: Vec<Duration> = (0..READS)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(read(), Some(b"v".to_vec()));
            start.elapsed()
        })
        .collect();
    took.sort();
    (took[READS / 2], took[READS * 99 / 100])
}

#[test]
fn a_remote_zone_reads_stale_without_a_round_trip_and_closest_no_slower_than_the_leader() {
    let mut c = Cluster::with_config(0, test_cluster::test_config().0, {
        let (_, mut pd) = test_cluster::test_config();
        pd.enable_balance = false;
        pd
    });
    let z1 = c.add_labelled_store(&[("zone", "z1")]);
    let _z2 = c.add_labelled_store(&[("zone", "z2")]);
    let z3 = c.add_labelled_store(&[("zone", "z3")]);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", b"v");
    let (_, region) = c.leader_of_key(b"k").expect("a leader");
    c.transfer_leader(region.get_id(), z1).expect("z1 leads");
    c.must_replicate_on(z3, b"k", b"v", T);
    // Every store is in a zone of its own: every message between stores crosses zones.
    let wan = c
        .network()
        .add_filter(std::sync::Arc::new(|_, _, _| Verdict::Delay(ONE_WAY)));

    let leader = c.storage(z1);
    let leader_ctx = ctx_for(&c, z1, b"k");
    let through_leader = measure(|| {
        std::thread::sleep(ONE_WAY);
        let v = c.runtime().block_on(leader.get(&leader_ctx, "", b"k"));
        std::thread::sleep(ONE_WAY);
        v.expect("a leader read")
    });
    let local = c.storage(z3);
    let mut closest_ctx = ctx_for(&c, z3, b"k");
    closest_ctx.set_replica_read(true);
    let closest = measure(|| {
        c.runtime()
            .block_on(local.get(&closest_ctx, "", b"k"))
            .expect("a follower read")
    });
    let mut stale_ctx = ctx_for(&c, z3, b"k");
    stale_ctx.set_stale_read(true);
    stale_ctx.max_staleness_ms = 10_000;
    wait_until("z3's replica to serve stale reads", T, || {
        c.runtime()
            .block_on(local.get(&stale_ctx, "", b"k"))
            .is_ok()
    });
    let stale = measure(|| {
        c.runtime()
            .block_on(local.get(&stale_ctx, "", b"k"))
            .expect("a stale read")
    });
    assert!(c.network().remove_filter(wan) == 0, "delays drop nothing");
    eprintln!(
        "reads from z3, {:?} one way between zones, {READS} reads each (p50 / p99):\n  leader in z1: {:.1?} / {:.1?}\n  closest (z3 follower): {:.1?} / {:.1?}\n  stale (z3, 10 s bound): {:.1?} / {:.1?}",
        ONE_WAY, through_leader.0, through_leader.1, closest.0, closest.1, stale.0, stale.1
    );
    assert!(
        stale.0 * 4 < through_leader.0,
        "a stale read needs no round trip: {stale:?} vs {through_leader:?}"
    );
    assert!(
        closest.0 < through_leader.0 * 2,
        "a follower read costs at most what the leader read does: {closest:?} vs {through_leader:?}"
    );
}
