//! Many regions on real processes (pd-server and three kv-servers on 127.0.0.1): splits
//! by size while a client writes, scans and batches across regions, dumb requests to any
//! store, and splits by hand through kvctl.

use crate::common;

use std::time::{Duration, Instant};

use crate::batch_commands::store_client;
use common::{client, kvctl, voters, wait_until, ProcCluster};
use grpcio::{ChannelBuilder, EnvBuilder};
use proto::kvrpcpb;
use proto_grpc::tikvpb_grpc::TikvClient;

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
    dumb_requests_span_regions(&stores, &rt, &c, &expected[N / 2..]);
}

fn pairs(kvs: &[kvrpcpb::KvPair]) -> Vec<(Vec<u8>, Vec<u8>)> {
    kvs.iter()
        .map(|p| (p.get_key().to_vec(), p.get_value().to_vec()))
        .collect()
}

/// Requests without a region that cover many regions are served whole, by any store:
/// `live` holds the pairs of keys N/2..N, the others were deleted.
fn dumb_requests_span_regions(
    stores: &[TikvClient],
    rt: &tokio::runtime::Runtime,
    c: &client::Client,
    live: &[(Vec<u8>, Vec<u8>)],
) {
    let n = live.len();
    let mut scan = kvrpcpb::RawScanRequest::default();
    scan.set_limit(10 * n as u32);
    let resp = stores[0].raw_scan(&scan).expect("scan");
    assert!(!resp.has_region_error(), "{:?}", resp.get_region_error());
    assert!(
        pairs(resp.get_kvs()) == live,
        "a dumb scan returns every key once, in order"
    );

    scan.set_start_key(live[10].0.clone());
    scan.set_limit(700);
    let resp = stores[1].raw_scan(&scan).expect("limited scan");
    assert!(
        pairs(resp.get_kvs()) == live[10..710],
        "the limit holds across regions"
    );

    let mut reverse = kvrpcpb::RawScanRequest::default();
    reverse.set_reverse(true);
    reverse.set_start_key(live[n - 100].0.clone());
    reverse.set_end_key(live[0].0.clone());
    reverse.set_limit(500);
    let resp = stores[2].raw_scan(&reverse).expect("reverse scan");
    let want: Vec<_> = live[n - 600..n - 100].iter().rev().cloned().collect();
    assert!(
        pairs(resp.get_kvs()) == want,
        "a reverse scan starts at the top"
    );

    let mut get = kvrpcpb::RawBatchGetRequest::default();
    get.set_keys(live.iter().step_by(7).map(|(k, _)| k.clone()).collect());
    let resp = stores[1].raw_batch_get(&get).expect("batch get");
    let want: Vec<_> = live.iter().step_by(7).cloned().collect();
    assert!(
        pairs(resp.get_pairs()) == want,
        "a dumb batch get spans regions"
    );

    // Rewrite every third live key with a new value, then delete those keys.
    let mut put = kvrpcpb::RawBatchPutRequest::default();
    let rewritten: Vec<_> = live
        .iter()
        .step_by(3)
        .map(|(k, _)| (k.clone(), b"new".to_vec()))
        .collect();
    put.set_pairs(
        rewritten
            .iter()
            .map(|(k, v)| {
                let mut p = kvrpcpb::KvPair::default();
                p.set_key(k.clone());
                p.set_value(v.clone());
                p
            })
            .collect(),
    );
    let resp = stores[2].raw_batch_put(&put).expect("batch put");
    assert!(
        !resp.has_region_error() && resp.get_error().is_empty(),
        "{resp:?}"
    );
    let keys: Vec<_> = rewritten.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(rt.block_on(c.batch_get(&keys)).unwrap(), rewritten);
    let mut del = kvrpcpb::RawBatchDeleteRequest::default();
    del.set_keys(keys.clone().into());
    let resp = stores[0].raw_batch_delete(&del).expect("batch delete");
    assert!(
        !resp.has_region_error() && resp.get_error().is_empty(),
        "{resp:?}"
    );
    assert!(rt.block_on(c.batch_get(&keys)).unwrap().is_empty());

    let mut range = kvrpcpb::RawDeleteRangeRequest::default();
    range.set_start_key(live[0].0.clone());
    range.set_end_key(live[n / 2].0.clone());
    let resp = stores[1].raw_delete_range(&range).expect("delete range");
    assert!(
        !resp.has_region_error() && resp.get_error().is_empty(),
        "{resp:?}"
    );
    let left = rt.block_on(c.scan(b"", b"", 10 * n)).unwrap();
    let want: Vec<_> = live[n / 2..]
        .iter()
        .enumerate()
        .filter(|(i, _)| !(n / 2 + i).is_multiple_of(3))
        .map(|(_, kv)| kv.clone())
        .collect();
    assert!(left == want, "a dumb range delete spans regions");
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

/// A write raft-rs refused to propose (as it does during a leader transfer) was never
/// appended, so the store that routes a dumb client's request sends it again instead of
/// handing the client a stale_command: with many regions and leaders moving, a dumb batch
/// put used to fail that way. The store's first data command is dropped (fail point
/// `raft_drop_proposal`); the dumb put must still succeed, once.
#[test]
fn a_dumb_write_whose_proposal_raft_dropped_is_proposed_again() {
    let (cluster, rt, c, store) = one_leading_store("raft_drop_proposal=1*return");
    let mut put = kvrpcpb::RawPutRequest::default();
    put.set_key(b"k".to_vec());
    put.set_value(b"v".to_vec());
    // PD may list the store's region before the store listens.
    let opt = grpcio::CallOption::default()
        .wait_for_ready(true)
        .timeout(T);
    let resp = store.raw_put_opt(&put, opt).expect("raw put");
    assert!(
        !resp.has_region_error() && resp.get_error().is_empty(),
        "{resp:?}"
    );
    assert_eq!(
        dropped_proposals(&cluster),
        1.0,
        "the fail point dropped the first proposal"
    );
    assert_eq!(rt.block_on(c.get(b"k")).expect("get"), Some(b"v".to_vec()));
}

/// A dumb client's write across two regions whose second part fails after the first was
/// applied: the answer says the write is undetermined, not a region error, which would
/// have the client send all of it again (landing the first part again after writes made
/// since). Fail point `raft_drop_proposal` lets the first data command through and drops
/// the next three: every attempt the store makes at the second part.
#[test]
fn a_dumb_write_failing_after_a_region_applied_is_undetermined() {
    let (cluster, rt, c, store) = one_leading_store("raft_drop_proposal=1*off->3*return");
    let first = rt.block_on(c.regions()).expect("regions")[0]
        .region
        .get_id();
    rt.block_on(c.split_region(first, &[b"m".to_vec()]))
        .expect("split at m");
    wait_until("both regions led", T, || {
        rt.block_on(c.regions())
            .is_ok_and(|rs| rs.len() == 2 && rs.iter().all(|r| r.leader.is_some()))
    });
    let mut put = kvrpcpb::RawBatchPutRequest::default();
    for k in [b"a", b"z"] {
        let mut pair = kvrpcpb::KvPair::default();
        pair.set_key(k.to_vec());
        pair.set_value(b"v".to_vec());
        put.mut_pairs().push(pair);
    }
    let opt = grpcio::CallOption::default().timeout(T);
    let resp = store.raw_batch_put_opt(&put, opt).expect("raw batch put");
    assert!(!resp.has_region_error(), "{resp:?}");
    assert!(
        resp.get_error().starts_with(util::wire::UNDETERMINED),
        "{resp:?}"
    );
    assert_eq!(
        dropped_proposals(&cluster),
        3.0,
        "every attempt at z was dropped"
    );
    assert_eq!(rt.block_on(c.get(b"a")).expect("get"), Some(b"v".to_vec()));
    assert_eq!(rt.block_on(c.get(b"z")).expect("get"), None);

    // Any failure after a part applied, not only a region error: here the second
    // region's value is over the size limit, and the first region's part is applied.
    let mut put = kvrpcpb::RawBatchPutRequest::default();
    for (k, len) in [(&b"y"[..], 1), (&b"b"[..], 9 << 20)] {
        let mut pair = kvrpcpb::KvPair::default();
        pair.set_key(k.to_vec());
        pair.set_value(vec![b'v'; len]);
        put.mut_pairs().push(pair);
    }
    let opt = grpcio::CallOption::default().timeout(T);
    let resp = store.raw_batch_put_opt(&put, opt).expect("raw batch put");
    assert!(
        resp.get_error().starts_with(util::wire::UNDETERMINED)
            && resp.get_error().contains("larger than the limit"),
        "{resp:?}"
    );
    assert_eq!(rt.block_on(c.get(b"y")).expect("get"), Some(b"v".to_vec()));
    assert_eq!(rt.block_on(c.get(b"b")).expect("get"), None);
}

/// One store started with fail points `spec`, once it leads its region: the cluster, a
/// runtime, a smart client, and a raw client of the store (a dumb client's calls).
fn one_leading_store(
    spec: &str,
) -> (
    ProcCluster,
    tokio::runtime::Runtime,
    client::Client,
    TikvClient,
) {
    let cluster = ProcCluster::one_store_with_failpoints(spec);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("the store to lead its region", T, || voters(&rt, &c) == 1);
    let store = store_client(&format!("127.0.0.1:{}", cluster.store_addrs[0].0));
    (cluster, rt, c, store)
}

/// Data commands the first store's raft-rs refused, from its metrics.
fn dropped_proposals(cluster: &ProcCluster) -> f64 {
    common::http_get(&cluster.status_addr(0), "/metrics")
        .expect("metrics")
        .lines()
        .filter(|l| l.starts_with("flotilla_raftstore_proposals_total"))
        .filter(|l| l.contains("kind=\"normal\"") && l.contains("outcome=\"dropped\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
