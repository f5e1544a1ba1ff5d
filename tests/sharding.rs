//! Many regions on real processes (pd-server and three kv-servers on 127.0.0.1): splits
//! by size while a client writes, scans and batches across regions, dumb requests to any
//! store, and splits by hand through kvctl.

mod common;

use std::time::{Duration, Instant};

use common::{client, kvctl, voters, wait_until, ProcCluster};
use grpcio::{ChannelBuilder, EnvBuilder};
use proto::{kvrpcpb, tikvpb_grpc::TikvClient};

const T: Duration = Duration::from_secs(60);

/// Regions past 4 KiB split, measured 5 times a second once 1 KiB was written.
const SMALL_REGIONS: &str = "region-split-size = \"4KiB\"\nregion-split-check-diff = \"1KiB\"\nsplit-region-check-tick-interval = \"200ms\"";

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("{i:0100}").into_bytes()
}

#[test]
fn many_regions_serve_every_key_to_smart_and_dumb_clients() {
    let cluster = ProcCluster::start_with(3, SMALL_REGIONS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    const N: usize = 2000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let pairs: Vec<_> = chunk.iter().map(|i| (key(*i), value(*i))).collect();
        rt.block_on(c.batch_put(&pairs)).expect("batch put");
    }
    wait_until("50 regions", T, || {
        rt.block_on(c.regions()).is_ok_and(|r| r.len() >= 50)
    });
    let regions = rt.block_on(c.regions()).unwrap().len();
    eprintln!("{N} keys in {regions} regions");

    let all = rt.block_on(c.scan(b"", b"", 10 * N)).expect("scan");
    let expected: Vec<_> = (0..N).map(|i| (key(i), value(i))).collect();
    assert_eq!(all.len(), N, "every key once");
    assert!(all == expected, "in key order, with their values");
    let limited = rt.block_on(c.scan(&key(100), &key(1500), 700)).unwrap();
    assert_eq!(
        limited,
        expected[100..800].to_vec(),
        "the limit holds across regions"
    );

    let keys: Vec<_> = (0..N).map(key).collect();
    assert_eq!(rt.block_on(c.batch_get(&keys)).unwrap(), expected);
    rt.block_on(c.batch_delete(&keys[..N / 2])).unwrap();
    assert_eq!(
        rt.block_on(c.scan(b"", b"", 10 * N)).unwrap(),
        expected[N / 2..].to_vec()
    );

    // Dumb requests: no region in the context. Every key is asked of one store in turn,
    // so each store serves or forwards a third of them.
    let env = std::sync::Arc::new(EnvBuilder::new().build());
    let stores: Vec<_> = cluster
        .store_addrs
        .iter()
        .map(|(port, _)| {
            TikvClient::new(ChannelBuilder::new(env.clone()).connect(&format!("127.0.0.1:{port}")))
        })
        .collect();
    for i in 0..N {
        let mut req = kvrpcpb::RawGetRequest::default();
        req.set_key(key(i));
        let resp = stores[i % stores.len()].raw_get(&req).expect("raw get");
        assert!(!resp.has_region_error(), "{:?}", resp.get_region_error());
        let want = if i < N / 2 { Vec::new() } else { value(i) };
        assert_eq!(resp.get_value(), want.as_slice(), "key {i}");
        assert_eq!(resp.get_not_found(), i < N / 2, "key {i}");
    }
}

/// `kvctl region list` without the leaders (they may move while a test looks).
fn region_list(pd: &str) -> Vec<serde_json::Value> {
    let out = kvctl(pd, &["--output", "json", "region", "list"]);
    let mut list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    for r in &mut list {
        r.as_object_mut()
            .expect("a region object")
            .remove("leader_store");
    }
    list
}

#[test]
fn kvctl_splits_by_hand_and_clients_route_at_once() {
    let cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", T, || voters(&rt, &c) == 3);
    for i in 0..10 {
        rt.block_on(c.put(&key(i), &value(i))).unwrap();
    }
    let pd = cluster.pd_addr.as_str();
    let out = kvctl(pd, &["split", "key-00005"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"key-00005\""),
        "prints both regions: {text}"
    );
    let regions = region_list(pd);
    assert_eq!(regions.len(), 2, "PD routes to both at once");

    let right = rt.block_on(c.pd().get_region(&key(7))).unwrap().region;
    let id = right.get_id().to_string();
    for (args, why) in [
        (
            vec!["region", "split", &id, "--key", "key-00005"],
            "start key",
        ),
        (
            vec!["region", "split", &id, "--key", "key-00001"],
            "outside region",
        ),
        (
            vec!["region", "split", &id, "--key", ""],
            "must not be empty",
        ),
        (vec!["region", "split", "999999", "--key", "x"], "999999"),
    ] {
        let out = kvctl(pd, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?} fails");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err:?} should say {why:?}");
    }
    assert_eq!(region_list(pd), regions, "refused splits change nothing");

    // The figure for the issue: from a split's answer to a write served by the new region.
    let started = Instant::now();
    let split = rt
        .block_on(c.split_region(right.get_id(), &[key(8)]))
        .expect("split");
    rt.block_on(c.put(&key(9), b"routed")).unwrap();
    let routed = started.elapsed();
    wait_until("PD to know the new region", T, || {
        rt.block_on(c.pd().get_region(&key(9)))
            .is_ok_and(|r| r.region.get_id() == split[1].get_id())
    });
    eprintln!(
        "split -> write served by the new region: {routed:?}; PD routing after {:?}",
        started.elapsed()
    );
    assert_eq!(
        rt.block_on(c.get(&key(9))).unwrap().as_deref(),
        Some(&b"routed"[..])
    );
}
