//! Region splits on the in-process cluster: by hand and by size, with every replica
//! applying them and every key still served.

use std::time::Duration;

use test_cluster::{test_config, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn replicated() -> Cluster {
    let (mut rs, pd) = test_config();
    rs.split_region_check_tick_interval = Duration::from_millis(100);
    let c = Cluster::with_config(3, rs, pd);
    c.wait_voters(b"", 3, T);
    c
}

#[test]
fn manual_split_creates_the_new_region_on_every_replica() {
    let c = replicated();
    for i in 0..100 {
        c.must_put(&key(i), b"v");
    }
    let regions = c.must_split(&key(50));
    assert_eq!(regions.len(), 2);
    let (left, right) = (&regions[0], &regions[1]);
    assert_eq!(left.get_end_key(), key(50).as_slice());
    assert_eq!(right.get_start_key(), key(50).as_slice());
    assert!(right.get_end_key().is_empty());
    assert_eq!(
        left.get_region_epoch().get_version(),
        right.get_region_epoch().get_version()
    );
    for store in c.store_ids() {
        wait_until("the new region on every store", T, || {
            c.local_region(store, &key(60))
                .is_some_and(|r| r.get_id() == right.get_id())
        });
    }
    wait_until("a leader for the new region", T, || {
        c.leader_of(right.get_id()).is_some()
    });
    for i in 0..100 {
        c.must_get_equal(&key(i), b"v");
    }
    c.must_put(&key(70), b"after");
    c.must_replicate(&key(70), b"after", T);
    wait_until("PD to route to the new region", T, || {
        c.runtime()
            .block_on(c.pd().get_region(&key(60)))
            .is_ok_and(|r| r.region.get_id() == right.get_id())
    });
}

#[test]
fn bad_split_keys_are_refused_and_change_nothing() {
    let c = replicated();
    c.must_put(b"m", b"v");
    let split = c.must_split(b"m");
    let version = split[0].get_region_epoch().get_version();
    wait_until(
        "every replica to apply the split, and both leaders",
        T,
        || {
            c.store_ids().iter().all(|s| {
                c.local_region(*s, b"a")
                    .is_some_and(|r| r.get_region_epoch().get_version() == version)
            }) && split.iter().all(|r| c.leader_of(r.get_id()).is_some())
        },
    );
    let before = c.regions();
    for (at, bad, why) in [
        (&b"a"[..], &b""[..], "must not be empty"),
        (b"m", b"m", "start key"),
        (b"a", b"z", "outside region"),
    ] {
        let err = c.split(at, bad).expect_err("a bad split key is refused");
        assert!(err.contains(why), "{err:?} should say {why:?}");
    }
    assert_eq!(c.regions(), before, "nothing changed");
}

#[test]
fn regions_split_by_size_and_keep_every_key() {
    let (mut rs, pd) = test_config();
    rs.split_region_check_tick_interval = Duration::from_millis(100);
    rs.region_split_size = bytesize::ByteSize::kib(4);
    rs.region_split_check_diff = bytesize::ByteSize::kib(1);
    let c = Cluster::with_config(3, rs, pd);
    c.wait_voters(b"", 3, T);
    let value = vec![b'x'; 100];
    for i in 0..600 {
        c.must_put(&key(i), &value);
    }
    // ~70 KiB at 4 KiB a region, cut in halves: well past 10 regions.
    wait_until("regions to split by size", T, || c.regions().len() >= 10);
    for i in 0..600 {
        c.must_get_equal(&key(i), &value);
    }
}
