//! Hibernation on the in-process cluster: idle regions stop ticking on every replica, a
//! write wakes its region and is served, and regions whose leader's store dies while
//! they sleep elect a new leader without any client asking.

use std::time::Duration;

use test_cluster::{test_config, wait_until, Cluster};

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

#[test]
fn idle_regions_sleep_wake_for_writes_and_survive_a_lost_leader() {
    let (rs, mut pd) = test_config();
    // Keep PD from repairing regions while the test watches the election.
    pd.max_store_down_time = Duration::from_secs(600);
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
