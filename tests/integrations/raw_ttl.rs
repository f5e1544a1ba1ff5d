//! Raw TTL: a value written with a time to live is invisible to every read once it
//! expires, RawGetKeyTTL tells what is left, a compare-and-swap sees an expired key as
//! absent, replicas still agree, and compaction removes expired values from the disk.

use std::time::{Duration, Instant};

use engine::Cf;
use test_cluster::{wait_until, Cluster};

const T: Duration = Duration::from_secs(30);

fn pair(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[test]
fn expired_keys_vanish_from_every_read_and_then_from_the_disk() {
    let mut c = Cluster::new(0);
    // Compactions drop a value as soon as it expired (the default waits a day).
    c.raw_expired_retention = Duration::ZERO;
    for _ in 0..3 {
        c.add_store();
    }
    c.wait_voters(b"", 3, T);
    let (s, ctx) = c.leader_storage(b"a").expect("a leader");
    let rt = c.runtime();
    let pairs = [
        pair("a-short", "1"),
        pair("b-long", "2"),
        pair("c-forever", "3"),
    ];
    let written = Instant::now();
    rt.block_on(s.batch_put_ttl(&ctx, "", &pairs, &[2, 3600, 0]))
        .expect("batch put with ttls");
    rt.block_on(s.put(&ctx, "", b"d-plain", b"4")).expect("put");

    // What is left to live.
    let ttl = |k: &[u8]| rt.block_on(s.get_key_ttl(&ctx, "", k)).expect("ttl");
    let long = ttl(b"b-long").expect("b-long exists");
    assert!((3590..=3600).contains(&long), "{long}");
    assert_eq!(ttl(b"c-forever"), Some(0));
    assert_eq!(ttl(b"d-plain"), Some(0));
    assert_eq!(ttl(b"missing"), None);
    assert_eq!(
        rt.block_on(s.get(&ctx, "", b"a-short")).unwrap(),
        Some(b"1".to_vec()),
        "alive before its time"
    );

    wait_until("a-short expires", T, || {
        rt.block_on(s.get(&ctx, "", b"a-short")).unwrap().is_none()
    });
    assert!(
        written.elapsed() >= Duration::from_secs(1),
        "expired too soon"
    );
    assert_eq!(ttl(b"a-short"), None);
    let keys: Vec<Vec<u8>> = pairs.iter().map(|p| p.0.clone()).collect();
    let got = rt.block_on(s.batch_get(&ctx, "", &keys)).unwrap();
    assert_eq!(got, vec![pair("b-long", "2"), pair("c-forever", "3")]);
    // A scan passes expired keys over, and they do not count against its limit.
    let scanned = rt
        .block_on(s.scan(&ctx, "", b"", b"", 1, false, false))
        .unwrap();
    assert_eq!(scanned, vec![pair("b-long", "2")]);
    let reversed = rt
        .block_on(s.scan(&ctx, "", b"b", b"", 10, false, true))
        .unwrap();
    assert!(reversed.is_empty(), "{reversed:?}");

    // A compare-and-swap finds the expired key absent, and can set a time to live.
    let res = rt
        .block_on(s.compare_and_swap_ttl(&ctx, "", b"a-short", (b"new", 3600), None))
        .unwrap();
    assert!(res.succeed && res.previous.is_none(), "{res:?}");
    assert!(ttl(b"a-short").is_some_and(|t| t > 3500));
    rt.block_on(s.batch_put_ttl(&ctx, "", &[pair("e-gone", "5")], &[1]))
        .unwrap();

    // Replicas agree (values with an expiry are left out of the hash).
    let region = c.leader_of_key(b"a").expect("a leader").1.get_id();
    let hashes = c.region_hashes(region).expect("hashes");
    assert!(hashes.windows(2).all(|w| w[0].1 == w[1].1), "{hashes:?}");

    // On disk until a compaction drops it, on every replica.
    wait_until("e-gone expires", T, || {
        rt.block_on(s.get(&ctx, "", b"e-gone")).unwrap().is_none()
    });
    for store in c.store_ids() {
        c.must_replicate_on(store, b"e-gone", b"5", T);
        assert!(
            c.local_get_stored(store, b"e-gone").is_some(),
            "still on disk"
        );
        c.engine(store).compact(Cf::Default);
        assert_eq!(c.local_get_stored(store, b"e-gone"), None, "store {store}");
        assert_eq!(c.local_get(store, b"b-long"), Some(b"2".to_vec()));
        assert_eq!(c.local_get(store, b"c-forever"), Some(b"3".to_vec()));
    }
}

#[test]
fn a_ttl_over_the_limit_or_mismatched_ttls_write_nothing() {
    let c = Cluster::new(1);
    c.wait_voters(b"", 1, T);
    let (s, ctx) = c.leader_storage(b"k").expect("a leader");
    let rt = c.runtime();
    let over = s.limits().max_ttl.as_secs() + 1;
    let err = rt
        .block_on(s.batch_put_ttl(&ctx, "", &[pair("k", "v")], &[over]))
        .unwrap_err();
    assert!(err.to_string().contains("storage.raw-max-ttl"), "{err}");
    let err = rt
        .block_on(s.compare_and_swap_ttl(&ctx, "", b"k", (b"v", over), None))
        .unwrap_err();
    assert!(err.to_string().contains("storage.raw-max-ttl"), "{err}");
    let err = rt
        .block_on(s.batch_put_ttl(&ctx, "", &[pair("k", "v"), pair("l", "w")], &[5]))
        .unwrap_err();
    assert!(err.to_string().contains("one per pair"), "{err}");
    for k in [&b"k"[..], b"l"] {
        assert_eq!(rt.block_on(s.get(&ctx, "", k)).unwrap(), None);
    }
}
