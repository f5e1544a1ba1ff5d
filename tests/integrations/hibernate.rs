//! Hibernation on the in-process cluster: idle regions stop ticking on every replica (and
//! neither the stores' safe-ts rounds nor stale reads on followers wake them), a write
//! wakes its region and is served, and regions whose leader's store dies while
//! they sleep elect a new leader without any client asking.

use std::time::{Duration, Instant};

use test_cluster::{test_config, wait_until, Cluster, SAFE_TS_INTERVAL};

const T: Duration = Duration::from_secs(30);
const REGIONS: usize = 20;

fn key(i: usize) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

fn all_quiet(c: &Cluster) -> bool {
    c.store_ids().iter().all(|s| {
        let (quiet, all) = c.hibernating(*s);
        all == REGIONS && quiet == all
    })
}

/// A raw read of `key` on `store`'s replica, with a loose staleness bound.
fn bounded_get(c: &Cluster, store: u64, key: &[u8]) -> server::Result<Option<Vec<u8>>> {
    let region = c.local_region(store, key).expect("a replica");
    let mut ctx = proto::kvrpcpb::Context::default();
    ctx.set_region_id(region.get_id());
    ctx.set_region_epoch(region.get_region_epoch().clone());
    ctx.set_stale_read(true);
    ctx.max_staleness_ms = 60_000;
    c.runtime().block_on(c.storage(store).get(&ctx, "", key))
}

#[test]
fn idle_regions_sleep_wake_for_writes_and_survive_a_lost_leader() {
    let (rs, mut pd) = test_config();
    // Keep PD from repairing regions while the test watches the election, and from
    // moving any (which would wake it) while the test watches them sleep.
    pd.max_store_down_time = Duration::from_secs(600);
    pd.enable_balance = false;
    let mut c = Cluster::with_config(3, rs, pd);
    c.wait_voters(b"", 3, T);
    let splits: Vec<Vec<u8>> = (1..REGIONS).map(key).collect();
    wait_until("the pre-split", T, || {
        c.split_at_keys(b"", splits.clone()).is_ok()
    });
    for i in 0..REGIONS {
        c.must_put(&key(i), b"v1");
    }
    wait_until("every peer on every store to hibernate", T, || {
        all_quiet(&c)
    });
    // The stores' safe-ts rounds (every `SAFE_TS_INTERVAL`) leave them asleep, and so do
    // stale reads their followers serve or refuse.
    let (leader, _) = c.leader_of_key(&key(3)).expect("a leader");
    let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    let until = Instant::now() + SAFE_TS_INTERVAL * 10;
    let mut served = 0;
    while Instant::now() < until {
        served += usize::from(bounded_get(&c, follower, &key(3)).is_ok());
        assert!(all_quiet(&c), "a sleeping region woke with no client");
        std::thread::sleep(SAFE_TS_INTERVAL / 4);
    }
    assert!(
        served > 0,
        "no stale read was served while the region slept"
    );

    // A write wakes its region and is served; the region goes back to sleep.
    c.must_put(&key(7), b"v2");
    c.must_get_equal(&key(7), b"v2");
    wait_until("the written region to hibernate again", T, || all_quiet(&c));

    // Stop the store leading most regions while they sleep: PD reports it silent and
    // its regions elect new leaders elsewhere, with no request to prompt them.
    let leaders = |s: u64| {
        (0..REGIONS)
            .filter(|i| c.leader_of_key(&key(*i)).is_some_and(|(l, _)| l == s))
            .count()
    };
    let victim = *c
        .store_ids()
        .iter()
        .max_by_key(|s| leaders(**s))
        .expect("three stores");
    assert!(leaders(victim) > 0);
    c.stop_store(victim);
    wait_until("every region to have a leader again", T, || {
        (0..REGIONS).all(|i| c.leader_of_key(&key(i)).is_some())
    });
    for i in 0..REGIONS {
        let want: &[u8] = if i == 7 { b"v2" } else { b"v1" };
        c.must_get_equal(&key(i), want);
    }
}
