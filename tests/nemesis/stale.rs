//! Stale reads from a follower whose network namespace is cut off from the other stores
//! (its gateway, and so PD and this test, still reach it): transactional reads at or
//! below its safe timestamp are served, each with the value committed at that
//! timestamp, and newer ones get `data_is_not_ready` naming the safe timestamp; a raw
//! read with a staleness bound is served while the follower's last word from its leader
//! is within the bound and refused past it. (`tests/integrations/stale_read.rs` covers
//! the same on the in-process cluster, through leader changes and splits.)

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use proto::{errorpb, kvrpcpb, metapb};
use proto_grpc::tikvpb_grpc::TikvClient;

use crate::{
    cluster::{NetCluster, PdSetup},
    common,
    net::Node,
};

const T: Duration = Duration::from_secs(60);
const KEY: &[u8] = b"stale";
/// The raw read's staleness bound: past the stores' margin for a deposed leader (two
/// election timeouts, 2 s by default), so that it can be served at all.
const BOUND: Duration = Duration::from_secs(5);

/// What a stale read on the cut-off follower answered.
#[derive(Debug)]
enum Answer {
    Value(Option<Vec<u8>>),
    NotReady(errorpb::Error),
    /// Any other answer, shown in the test's panics.
    #[allow(dead_code)]
    Other(String),
}

/// A gRPC client of the store at `addr` and the context that names its replica `peer`.
struct Replica {
    kv: TikvClient,
    ctx: kvrpcpb::Context,
}

impl Replica {
    fn new(
        env: &Arc<grpcio::Environment>,
        addr: &str,
        region: &metapb::Region,
        peer: &metapb::Peer,
    ) -> Replica {
        let kv = TikvClient::new(grpcio::ChannelBuilder::new(env.clone()).connect(addr));
        let mut ctx = kvrpcpb::Context::default();
        ctx.set_region_id(region.get_id());
        ctx.set_region_epoch(region.get_region_epoch().clone());
        ctx.set_peer(peer.clone());
        ctx.set_stale_read(true);
        Replica { kv, ctx }
    }

    fn opt() -> grpcio::CallOption {
        grpcio::CallOption::default().timeout(Duration::from_secs(5))
    }

    /// A transactional stale read of `KEY` at `at`.
    fn get_at(&self, at: u64) -> Answer {
        let mut req = kvrpcpb::GetRequest::default();
        req.set_context(self.ctx.clone());
        req.set_key(KEY.to_vec());
        req.version = at;
        match self.kv.kv_get_opt(&req, Self::opt()) {
            Err(e) => Answer::Other(e.to_string()),
            Ok(mut r) if r.has_region_error() => region_answer(r.take_region_error()),
            Ok(r) if r.has_error() => Answer::Other(format!("{:?}", r.get_error())),
            Ok(mut r) => Answer::Value((!r.not_found).then(|| r.take_value())),
        }
    }

    /// A raw read of `key` with staleness bound `bound`.
    fn raw_get(&self, key: &[u8], bound: Duration) -> Answer {
        let mut req = kvrpcpb::RawGetRequest::default();
        let mut ctx = self.ctx.clone();
        ctx.max_staleness_ms = bound.as_millis() as u64;
        req.set_context(ctx);
        req.set_key(key.to_vec());
        match self.kv.raw_get_opt(&req, Self::opt()) {
            Err(e) => Answer::Other(e.to_string()),
            Ok(mut r) if r.has_region_error() => region_answer(r.take_region_error()),
            Ok(r) if !r.get_error().is_empty() => Answer::Other(r.get_error().to_string()),
            Ok(mut r) => Answer::Value((!r.not_found).then(|| r.take_value())),
        }
    }
}

fn region_answer(e: errorpb::Error) -> Answer {
    if e.has_data_is_not_ready() {
        Answer::NotReady(e)
    } else {
        Answer::Other(format!("{e:?}"))
    }
}

/// Commits `value` to `KEY` in a transaction; returns its commit timestamp.
fn commit(rt: &tokio::runtime::Runtime, txn: &client::txn::TxnClient, value: &[u8]) -> u64 {
    let mut ts = None;
    common::wait_until("a commit", T, || {
        ts = rt
            .block_on(async {
                let mut t = txn.begin().await?;
                t.put(KEY, value).await?;
                t.commit().await
            })
            .ok();
        ts.is_some()
    });
    ts.expect("committed above")
}

/// The value committed at or below `at`, by the history of commits.
fn expected(history: &BTreeMap<u64, Vec<u8>>, at: u64) -> Option<Vec<u8>> {
    history.range(..=at).next_back().map(|(_, v)| v.clone())
}

/// The only region, and a follower's host, store address and replica.
fn follower(
    c: &NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
) -> (metapb::Region, usize, String, metapb::Peer) {
    let route = rt
        .block_on(cl.regions())
        .expect("regions")
        .into_iter()
        .find(|r| r.region.get_start_key().is_empty())
        .expect("the first region");
    let leader = route.leader.expect("a leader").get_store_id();
    let stores = rt.block_on(cl.stores()).expect("stores");
    let peer = route
        .region
        .get_peers()
        .iter()
        .find(|p| p.get_store_id() != leader)
        .expect("a follower")
        .clone();
    let (store, _) = stores
        .iter()
        .find(|(s, _)| s.get_id() == peer.get_store_id())
        .expect("the follower's store");
    let host = c.host_of(store.get_address()).expect("a host");
    (route.region, host, store.get_address().to_string(), peer)
}

#[test]
fn a_follower_cut_off_by_the_network_serves_stale_reads_below_its_safe_ts_and_refuses_newer() {
    let _turn = crate::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut c = NetCluster::start_full(3, PdSetup::Gateway, "");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cl = crate::connect(&rt, &c);
    let txn = client::txn::TxnClient::new(&cl);
    common::wait_until("three voters", T, || common::voters(&rt, &cl) == 3);
    let mut history = BTreeMap::new();
    for i in 0..5 {
        let v = format!("v{i}").into_bytes();
        history.insert(commit(&rt, &txn, &v), v);
    }
    common::wait_until("a raw write", T, || {
        rt.block_on(cl.put(b"raw", b"1")).is_ok()
    });
    let (region, host, addr, peer) = follower(&c, &rt, &cl);
    let env = Arc::new(grpcio::Environment::new(1));
    let replica = Replica::new(&env, &addr, &region, &peer);
    let last = *history.keys().next_back().expect("commits");
    common::wait_until("the follower to serve the last commit", T, || {
        matches!(replica.get_at(last), Answer::Value(_))
            && matches!(replica.raw_get(b"raw", BOUND), Answer::Value(Some(_)))
    });

    let others: Vec<Node> = (0..3).filter(|h| *h != host).map(Node::Host).collect();
    for n in &others {
        c.net.cut(Node::Host(host), *n);
    }
    let cut = Instant::now();
    for n in &others {
        assert!(!c.net.reaches(host, *n), "host {host} still reaches {n:?}");
    }
    assert!(
        c.net.reaches(host, Node::Gateway),
        "the test reaches host {host}"
    );

    // Within the bound the raw read is served from what the follower has.
    let within = replica.raw_get(b"raw", BOUND);
    // The stores run the default config: this is their margin for a deposed leader.
    let margin = raftstore::Config::default().stale_margin();
    assert!(
        matches!(within, Answer::Value(Some(_))) || cut.elapsed() + margin >= BOUND,
        "{within:?} {:?} after the cut",
        cut.elapsed()
    );

    // Its safe timestamp as of the cut: the first refusal names it.
    let now = rt.block_on(txn.current_ts()).expect("a timestamp");
    let safe = match replica.get_at(now) {
        Answer::NotReady(e) => e.get_data_is_not_ready().safe_ts,
        other => panic!("a read at now on the cut-off follower: {other:?}"),
    };
    assert!(
        safe >= last && safe < now,
        "safe ts {safe} in [{last}, {now})"
    );
    for i in 5..8 {
        let v = format!("v{i}").into_bytes();
        history.insert(commit(&rt, &txn, &v), v);
    }
    rt.block_on(cl.put(b"raw", b"2"))
        .expect("a raw write without the follower");
    let first = *history.keys().next().expect("commits");
    for at in [first - 1, first, (first + last) / 2, last, safe] {
        match replica.get_at(at) {
            Answer::Value(got) => assert_eq!(got, expected(&history, at), "at {at}"),
            other => panic!("a read at {at}, below the safe ts {safe}: {other:?}"),
        }
    }
    let newest = *history.keys().next_back().expect("commits");
    match replica.get_at(newest) {
        Answer::NotReady(e) => assert_eq!(e.get_data_is_not_ready().safe_ts, safe, "{e:?}"),
        other => panic!("a read of the newest commit on the cut-off follower: {other:?}"),
    }

    // Past the bound (less the margin) the raw read is refused.
    let mut refused = None;
    common::wait_until("the raw read to be refused past its bound", T, || {
        refused = match replica.raw_get(b"raw", BOUND) {
            Answer::NotReady(e) => Some((cut.elapsed(), e)),
            Answer::Value(v) => {
                assert_eq!(
                    v.as_deref(),
                    Some(&b"1"[..]),
                    "the follower has not heard of 2"
                );
                None
            }
            other => panic!("a raw read on the cut-off follower: {other:?}"),
        };
        refused.is_some()
    });
    let (after, e) = refused.expect("refused above");
    assert!(e.get_message().contains("ms old"), "{e:?}");
    assert!(
        after + margin + Duration::from_millis(300) >= BOUND,
        "refused {after:?} after the cut, before the {BOUND:?} bound less the margin"
    );
    println!("a follower cut off by its namespace: a raw read with a {BOUND:?} bound refused {after:?} after the cut; safe ts {safe} held below the {} commits since", history.len() - 5);

    c.net.heal();
    common::wait_until("the healed follower to serve the newest commit", T, || {
        matches!(replica.get_at(newest), Answer::Value(_))
    });
    match replica.get_at(newest) {
        Answer::Value(got) => assert_eq!(got, expected(&history, newest)),
        other => panic!("{other:?}"),
    }
    common::wait_until(
        "the healed follower to serve the raw write",
        T,
        || matches!(replica.raw_get(b"raw", BOUND), Answer::Value(Some(v)) if v == b"2"),
    );
}
