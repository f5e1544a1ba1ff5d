//! Requests an attacker who reaches the ports would send, against pd-server and three
//! kv-servers: forged Raft traffic (tombstones, snapshots) without the cluster secret,
//! absurd split counts, region reports with hostile contents (also from an insider with
//! the secret), unbounded scans and splits from a dumb client. Each gets a clear error,
//! and afterwards the cluster serves every key it had and takes writes.

use crate::common;

use std::time::Duration;

use common::{client, voters, wait_until, ProcCluster};
use futures::{SinkExt, StreamExt};
use grpcio::{ChannelBuilder, EnvBuilder, WriteFlags};
use pd_client::PdClient;
use proto::{
    kvrpcpb, metapb, pdpb,
    raft_serverpb::{BatchRaftMessage, RaftMessage, SnapshotChunk},
};
use proto_grpc::tikvpb_grpc::TikvClient;
use protobuf::Message as _;

const T: Duration = Duration::from_secs(60);
const N: usize = 200;
/// 200 values of 200 KB: 40 MB in two regions, each under a store's 32 MiB answer
/// budget, together over it.
const VALUE_SIZE: usize = 200_000;

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:06}").into_bytes();
    v.resize(VALUE_SIZE, b'v');
    v
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

fn store_client(addr: &str) -> TikvClient {
    let env = std::sync::Arc::new(EnvBuilder::new().cq_count(1).build());
    TikvClient::new(ChannelBuilder::new(env).connect(addr))
}

/// A tombstone for every peer of every region, as a peer that removed them would send.
fn forged_tombstones(regions: &[pd_client::RegionRoute]) -> BatchRaftMessage {
    let mut batch = BatchRaftMessage::default();
    for r in regions {
        for p in r.region.get_peers() {
            let mut m = RaftMessage::default();
            m.set_region_id(r.region.get_id());
            m.set_to_peer(p.clone());
            m.set_from_peer(p.clone());
            let mut epoch = r.region.get_region_epoch().clone();
            epoch.set_conf_ver(epoch.get_conf_ver() + 100);
            m.set_region_epoch(epoch);
            m.set_is_tombstone(true);
            m.set_message(raft::eraftpb::Message::default().write_to_bytes().unwrap());
            batch.mut_msgs().push(m);
        }
    }
    batch
}

fn expect_unauthenticated(res: grpcio::Result<impl std::fmt::Debug>, what: &str) {
    // The refusal ends the call, or the stream while it is still being written.
    match res {
        Err(grpcio::Error::RpcFailure(s)) | Err(grpcio::Error::RpcFinished(Some(s))) => {
            assert_eq!(
                s.code(),
                grpcio::RpcStatusCode::UNAUTHENTICATED,
                "{what}: {s:?}"
            )
        }
        other => panic!("{what} was not refused: {other:?}"),
    }
}

/// Sends forged Raft traffic to a store over its client port, without the secret.
fn forge_raft_traffic(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    regions: &[pd_client::RegionRoute],
) {
    forge_raft_traffic_with(rt, &store_client(addr), regions)
}

/// Sends forged Raft traffic (tombstones, a snapshot) to a store through `store` and
/// checks that it is refused as unauthenticated.
pub(crate) fn forge_raft_traffic_with(
    rt: &tokio::runtime::Runtime,
    store: &TikvClient,
    regions: &[pd_client::RegionRoute],
) {
    // The call's final status says why; writes into a refused stream may fail first.
    let res = rt.block_on(async {
        let (mut sink, done) = store.batch_raft()?;
        let _ = sink
            .send((forged_tombstones(regions), WriteFlags::default()))
            .await;
        let _ = sink.close().await;
        done.await
    });
    expect_unauthenticated(res, "forged tombstones");
    let res = rt.block_on(async {
        let (mut sink, done) = store.snapshot()?;
        let mut chunk = SnapshotChunk::default();
        chunk.set_message(
            forged_tombstones(regions)
                .take_msgs()
                .into_iter()
                .next()
                .unwrap(),
        );
        let _ = sink.send((chunk, WriteFlags::default())).await;
        let _ = sink.close().await;
        done.await
    });
    expect_unauthenticated(res, "a forged snapshot");
}

fn hostile_region(leader_store: u64) -> (metapb::Region, metapb::Peer) {
    let mut r = metapb::Region::default();
    r.set_id(1);
    r.mut_region_epoch().set_version(1_000_000);
    r.mut_region_epoch().set_conf_ver(1_000_000);
    let mut p = metapb::Peer::default();
    p.set_id(999_999);
    p.set_store_id(leader_store);
    r.mut_peers().push(p.clone());
    (r, p)
}

/// Sends one region heartbeat and returns PD's error for it.
async fn heartbeat_error(pd: &PdClient, region: metapb::Region, leader: metapb::Peer) -> String {
    let (mut tx, mut rx) = pd.region_heartbeat_stream().expect("heartbeat stream");
    let mut req = pdpb::RegionHeartbeatRequest::default();
    req.set_header(pd.request_header());
    req.set_region(region);
    req.set_leader(leader);
    req.approximate_size = u64::MAX;
    tx.send((req, WriteFlags::default()))
        .await
        .expect("send heartbeat");
    let resp = tokio::time::timeout(Duration::from_secs(10), rx.next())
        .await
        .expect("PD answers a bad heartbeat")
        .expect("a response")
        .expect("a response");
    let _ = tx.close().await;
    assert!(resp.get_header().has_error(), "accepted: {resp:?}");
    resp.get_header().get_error().get_message().to_string()
}

/// A store of the cluster other than `store`.
fn cluster_store_other_than(rt: &tokio::runtime::Runtime, pd: &PdClient, store: u64) -> u64 {
    rt.block_on(pd.get_all_stores(true))
        .unwrap()
        .iter()
        .map(|s| s.get_id())
        .find(|id| *id != store)
        .expect("another store")
}

/// Region reports and split requests PD must refuse, from a client without the secret
/// and from one with it.
fn attack_pd(rt: &tokio::runtime::Runtime, cluster: &ProcCluster) {
    let endpoints = [cluster.pd_addr.clone()];
    let logger = util::logger::discard();
    let outsider = rt
        .block_on(PdClient::connect(&endpoints, T, logger.clone()))
        .unwrap();
    let secret = util::secret::ClusterSecret::load(&cluster.secret_file()).unwrap();
    let insider = rt
        .block_on(PdClient::connect_as_store(
            &endpoints,
            T,
            util::security::Credentials::with_secret(Some(secret)),
            logger,
        ))
        .unwrap();
    let first = rt.block_on(insider.get_region(b"")).unwrap().region;
    let store = first.get_peers()[0].get_store_id();

    let err = rt
        .block_on(outsider.ask_batch_split(first.clone(), 1_000_000_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster secret"), "{err}");
    // Placement changes and id allocation are for stores and operators only.
    let other = cluster_store_other_than(rt, &insider, store);
    for err in [
        rt.block_on(outsider.move_peer(first.get_id(), store, other))
            .unwrap_err(),
        rt.block_on(outsider.transfer_leader(first.get_id(), other))
            .unwrap_err(),
        rt.block_on(outsider.delete_store(store)).unwrap_err(),
        rt.block_on(outsider.alloc_id()).map(|_| ()).unwrap_err(),
    ] {
        assert!(err.to_string().contains("cluster secret"), "{err}");
    }
    let (region, leader) = hostile_region(store);
    let err = rt.block_on(heartbeat_error(&outsider, region.clone(), leader.clone()));
    assert!(err.contains("cluster secret"), "{err}");

    let err = rt
        .block_on(insider.ask_batch_split(first.clone(), 1_000_000_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pd.max-batch-split"), "{err}");
    let mut backwards = region.clone();
    backwards.set_start_key(b"z".to_vec());
    backwards.set_end_key(b"a".to_vec());
    let mut stranger = leader.clone();
    stranger.set_id(7);
    let mut nowhere = region.clone();
    nowhere.mut_peers()[0].set_store_id(424_242);
    let mut nowhere_leader = leader.clone();
    nowhere_leader.set_store_id(424_242);
    for (r, l, why) in [
        (backwards, leader.clone(), "is not before end key"),
        (region.clone(), stranger, "is not a voter of the region"),
        (nowhere, nowhere_leader, "store 424242 not found"),
    ] {
        let err = rt.block_on(heartbeat_error(&insider, r, l));
        assert!(err.contains(why), "{err} (expected {why})");
    }
    let err = rt
        .block_on(insider.report_batch_split(vec![first.clone(), first]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not adjacent"), "{err}");
}

/// A dumb client's requests without bounds.
fn attack_store_api(rt: &tokio::runtime::Runtime, addr: &str) {
    let store = store_client(addr);
    let mut split = kvrpcpb::SplitRegionRequest::default();
    split.set_split_keys(
        (0..10_000)
            .map(|i| format!("s{i:05}").into_bytes())
            .collect(),
    );
    let resp = rt
        .block_on(async { store.split_region_async(&split)?.await })
        .unwrap();
    let msg = resp.get_region_error().get_message().to_string();
    assert!(msg.contains("raftstore.max-split-keys"), "{msg}");
    // A scan without a bound across both regions: each region's part fits the budget,
    // their sum does not.
    let mut scan = kvrpcpb::RawScanRequest::default();
    scan.set_limit(u32::MAX);
    let resp = rt
        .block_on(async { store.raw_scan_async(&scan)?.await })
        .unwrap();
    let msg = resp.get_region_error().get_message();
    assert!(
        msg.contains("server.max-response-size"),
        "{msg} ({} pairs)",
        resp.get_kvs().len()
    );
    let mut keys = kvrpcpb::RawBatchGetRequest::default();
    keys.set_keys((0..N).map(key).collect());
    let resp = rt
        .block_on(async { store.raw_batch_get_async(&keys)?.await })
        .unwrap();
    let msg = resp.get_region_error().get_message();
    assert!(msg.contains("server.max-response-size"), "{msg}");
}

#[test]
fn hostile_requests_get_clear_errors_and_change_nothing() {
    let mut cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("3 voters", T, || voters(&rt, &c) == 3);
    for i in 0..N {
        rt.block_on(c.put(&key(i), &value(i))).expect("put");
    }
    rt.block_on(c.split_region(
        rt.block_on(c.pd().get_region(b"")).unwrap().region.get_id(),
        &[key(N / 2)],
    ))
    .expect("split");
    wait_until("both regions led, as PD knows", T, || {
        rt.block_on(c.regions())
            .is_ok_and(|r| r.len() == 2 && r.iter().all(|r| r.leader.is_some()))
    });
    let regions = rt.block_on(c.regions()).unwrap();

    for i in 0..3 {
        let addr = format!("127.0.0.1:{}", cluster.store_addrs[i].0);
        forge_raft_traffic(&rt, &addr, &regions);
    }
    attack_pd(&rt, &cluster);
    attack_store_api(&rt, &format!("127.0.0.1:{}", cluster.store_addrs[0].0));

    // Every replica is still there, PD's routing is intact, and the data is whole.
    let after = rt.block_on(c.regions()).unwrap();
    assert_eq!(after.len(), 2, "{after:?}");
    for r in &after {
        assert_eq!(r.region.get_peers().len(), 3);
    }
    for i in 0..N {
        assert_eq!(rt.block_on(c.get(&key(i))).unwrap(), Some(value(i)));
    }
    // A read too large for gRPC (65 keys of 1 MiB, past `server.max-message-size` and
    // the client's own bound) is refused as sent: the client says so at once instead of
    // retrying it until its deadline (20 s).
    let huge: Vec<Vec<u8>> = (0..65u8).map(|i| [b'z', i].repeat(1 << 19)).collect();
    let asked = std::time::Instant::now();
    let refused = rt.block_on(c.batch_get(&huge)).unwrap_err();
    assert!(
        matches!(&refused, client::Error::Store(m) if m.contains("refused")),
        "{refused:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    // The client pages a scan in halves until each page fits.
    let all = rt.block_on(c.scan(b"", b"", 10 * N)).expect("a paged scan");
    assert_eq!(all.len(), N);
    rt.block_on(c.put(b"after", b"ok"))
        .expect("writes still work");
    for r in &after {
        let id = r.region.get_id().to_string();
        let out = common::kvctl(&cluster.pd_addr, &["region", "check", &id]);
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("3 replicas agree"),
            "{text}{err}"
        );
    }
    for (i, s) in cluster.stores.iter_mut().enumerate() {
        assert!(
            s.as_mut().is_some_and(|p| p.is_running()),
            "store {i} is still running"
        );
    }
}
