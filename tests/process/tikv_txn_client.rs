//! TiKV's own Rust client (tikv-client 0.4) and its `TransactionClient` against a
//! three-store Flotilla cluster split into several regions.

use crate::common;

use std::time::Duration;

use common::{wait_until, ProcCluster};
use proto::kvrpcpb;
use proto_grpc::tikvpb_grpc::TikvClient;
use tikv_client::{TimestampExt, TransactionClient, TransactionOptions};

const T: Duration = Duration::from_secs(60);

fn k(name: &str) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// Three stores, the transactional key space in three regions (split at `k3` and `k6`).
fn three_regions() -> (ProcCluster, tokio::runtime::Runtime, client::Client) {
    three_regions_with("")
}

/// Like [`three_regions`], with extra store settings (TOML after `[raftstore]`).
fn three_regions_with(extra: &str) -> (ProcCluster, tokio::runtime::Runtime, client::Client) {
    let (cluster, rt, ours) = common::three_voters(extra);
    let first = rt.block_on(ours.regions()).unwrap()[0].region.get_id();
    // One boundary where a raw split puts it (the plain bytes `k3`, no encoding: PD
    // shows the transactional client it rounded up), one where a transactional split
    // does (the encoding of `k6`).
    let bounds = vec![b"k3".to_vec(), keys::txn::encode_bytes(b"k6")];
    rt.block_on(ours.split_region(first, &bounds))
        .expect("split");
    wait_until("a leader for each of three regions", T, || {
        rt.block_on(ours.regions())
            .is_ok_and(|rs| rs.len() == 3 && rs.iter().all(|r| r.leader.is_some()))
    });
    (cluster, rt, ours)
}

#[test]
fn tikv_transaction_client_works_unchanged() {
    let (cluster, rt, _ours) = three_regions();
    rt.block_on(async {
        let c = TransactionClient::new(vec![cluster.pd_addr.clone()])
            .await
            .expect("tikv-client connects");

        // Optimistic, across the three regions.
        let mut t = c.begin_optimistic().await.unwrap();
        for key in ["k1", "k4", "k8"] {
            t.put(k(key), format!("v-{key}")).await.unwrap();
        }
        t.commit().await.expect("commit across regions");
        let before_update = c.current_timestamp().await.unwrap();
        let mut r = c.begin_optimistic().await.unwrap();
        for key in ["k1", "k4", "k8"] {
            assert_eq!(
                r.get(k(key)).await.unwrap(),
                Some(format!("v-{key}").into_bytes())
            );
        }
        r.rollback().await.unwrap();

        // The second committer of a key gets a write conflict.
        let mut a = c.begin_optimistic().await.unwrap();
        let mut b = c.begin_optimistic().await.unwrap();
        a.put(k("k1"), "from a").await.unwrap();
        b.put(k("k1"), "from b").await.unwrap();
        a.commit().await.expect("the first committer wins");
        let err = b.commit().await.expect_err("the second conflicts");
        assert!(
            format!("{err:?}").to_lowercase().contains("conflict"),
            "{err:?}"
        );

        // A snapshot at an old timestamp sees the old value.
        let mut snap = c.snapshot(before_update, TransactionOptions::new_optimistic());
        assert_eq!(snap.get(k("k1")).await.unwrap(), Some(b"v-k1".to_vec()));

        // Pessimistic: get_for_update locks, and a transaction that started before
        // the pessimistic one committed cannot write the key after it.
        let mut late = c.begin_optimistic().await.unwrap();
        let mut p = c.begin_pessimistic().await.unwrap();
        assert_eq!(
            p.get_for_update(k("k4")).await.unwrap(),
            Some(b"v-k4".to_vec())
        );
        p.lock_keys(vec![k("k8")]).await.unwrap();
        p.put(k("k4"), "pessimistic").await.unwrap();
        p.commit().await.expect("pessimistic commit");
        late.put(k("k4"), "late").await.unwrap();
        let err = late
            .commit()
            .await
            .expect_err("conflicts with the pessimistic commit");
        assert!(
            format!("{err:?}").to_lowercase().contains("conflict"),
            "{err:?}"
        );

        // Insert of an existing key fails.
        let mut i = c.begin_optimistic().await.unwrap();
        i.insert(k("k8"), "again").await.unwrap();
        let err = i.commit().await.expect_err("insert on an existing key");
        assert!(format!("{err:?}").contains("AlreadyExist"), "{err:?}");

        // Async commit across regions, then one-phase commit in one region.
        let mut ac = c
            .begin_with_options(TransactionOptions::new_optimistic().use_async_commit())
            .await
            .unwrap();
        ac.put(k("k2"), "async").await.unwrap();
        ac.put(k("k7"), "async").await.unwrap();
        ac.commit().await.expect("async commit");
        let mut one = c
            .begin_with_options(TransactionOptions::new_optimistic().try_one_pc())
            .await
            .unwrap();
        one.put(k("k5"), "1pc").await.unwrap();
        one.commit().await.expect("1PC");
        let mut r = c.begin_optimistic().await.unwrap();
        assert_eq!(r.get(k("k2")).await.unwrap(), Some(b"async".to_vec()));
        assert_eq!(r.get(k("k7")).await.unwrap(), Some(b"async".to_vec()));
        assert_eq!(r.get(k("k5")).await.unwrap(), Some(b"1pc".to_vec()));
        assert_eq!(r.get(k("k4")).await.unwrap(), Some(b"pessimistic".to_vec()));
        let all: Vec<Vec<u8>> = r
            .scan(k("k0")..k("k9"), 100)
            .await
            .unwrap()
            .map(|p| Vec::from(p.key().clone()))
            .collect();
        assert_eq!(all, ["k1", "k2", "k4", "k5", "k7", "k8"].map(k).to_vec());
        r.rollback().await.unwrap();
    });
}

/// A transaction client that died half way, as the store sees it: requests sent straight
/// to the leader of each key's region.
struct DeadClient {
    raw: common::RawKv,
}

impl DeadClient {
    fn new(ours: client::Client) -> DeadClient {
        DeadClient {
            raw: common::RawKv::new(ours, T),
        }
    }

    fn send<R>(
        &self,
        key: &[u8],
        call: impl Fn(&TikvClient, kvrpcpb::Context) -> R,
        region_error: impl Fn(&R) -> Option<&proto::errorpb::Error>,
    ) -> R {
        self.raw.send(key, call, region_error)
    }

    fn prewrite(&self, key: &[u8], value: &[u8], primary: &[u8], start_ts: u64, ttl_ms: u64) {
        self.prewrite_with(key, value, primary, start_ts, ttl_ms, None);
    }

    /// A prewrite; with `secondaries`, for async commit (the primary's carries them).
    fn prewrite_with(
        &self,
        key: &[u8],
        value: &[u8],
        primary: &[u8],
        start_ts: u64,
        ttl_ms: u64,
        secondaries: Option<&[&[u8]]>,
    ) {
        let resp = self.send(
            key,
            |c, ctx| {
                let mut req = kvrpcpb::PrewriteRequest::default();
                req.set_context(ctx);
                let mut m = kvrpcpb::Mutation::default();
                m.set_op(kvrpcpb::Op::Put);
                m.set_key(key.to_vec());
                m.set_value(value.to_vec());
                req.mut_mutations().push(m);
                req.set_primary_lock(primary.to_vec());
                req.start_version = start_ts;
                req.lock_ttl = ttl_ms;
                if let Some(secondaries) = secondaries {
                    req.use_async_commit = true;
                    if key == primary {
                        req.set_secondaries(secondaries.iter().map(|s| s.to_vec()).collect());
                    }
                }
                c.kv_prewrite(&req).expect("prewrite sent")
            },
            |r| r.region_error.as_ref(),
        );
        assert!(
            !resp.has_region_error() && resp.get_errors().is_empty(),
            "{resp:?}"
        );
    }

    fn commit(&self, key: &[u8], start_ts: u64, commit_ts: u64) -> kvrpcpb::CommitResponse {
        self.send(
            key,
            |c, ctx| {
                let mut req = kvrpcpb::CommitRequest::default();
                req.set_context(ctx);
                req.mut_keys().push(key.to_vec());
                req.start_version = start_ts;
                req.commit_version = commit_ts;
                c.kv_commit(&req).expect("commit sent")
            },
            |r| r.region_error.as_ref(),
        )
    }
}

/// A client that dies after its prewrite leaves its locks: a reader rolls the transaction
/// back once the primary's TTL has passed. One that dies after committing only its
/// primary: a reader rolls the secondaries forward and sees the whole transaction.
#[test]
fn readers_finish_the_transactions_of_clients_that_died() {
    let (cluster, rt, ours) = three_regions();
    let dead = DeadClient::new(ours);
    let c = rt
        .block_on(TransactionClient::new(vec![cluster.pd_addr.clone()]))
        .expect("tikv-client connects");
    let ts = || rt.block_on(c.current_timestamp()).unwrap().version();
    let read = |key: &str| {
        rt.block_on(async {
            let mut r = c.begin_optimistic().await.unwrap();
            let v = r.get(k(key)).await.expect("the reader resolves the lock");
            r.rollback().await.unwrap();
            v
        })
    };
    rt.block_on(async {
        let mut t = c.begin_optimistic().await.unwrap();
        t.put(k("k1"), "old").await.unwrap();
        t.put(k("k5"), "old").await.unwrap();
        t.commit().await.unwrap();
    });

    // Died after prewrite: a 300 ms TTL, then only locks.
    let start = ts();
    dead.prewrite(b"k1", b"new", b"k1", start, 300);
    dead.prewrite(b"k5", b"new", b"k1", start, 300);
    assert_eq!(read("k5"), Some(b"old".to_vec()), "rolled back");
    assert_eq!(read("k1"), Some(b"old".to_vec()));
    let late = dead.commit(b"k1", start, ts());
    assert!(
        late.has_error(),
        "the dead transaction cannot commit any more: {late:?}"
    );

    // Died after committing the primary only.
    let start = ts();
    dead.prewrite(b"k1", b"newer", b"k1", start, 60_000);
    dead.prewrite(b"k8", b"newer", b"k1", start, 60_000);
    let resp = dead.commit(b"k1", start, ts());
    assert!(!resp.has_error() && !resp.has_region_error(), "{resp:?}");
    assert_eq!(read("k8"), Some(b"newer".to_vec()), "rolled forward");
    assert_eq!(read("k1"), Some(b"newer".to_vec()));
}

/// Flotilla's own client meets the locks of async-commit transactions whose client
/// died: one that prewrote every key committed (the reader rolls it forward), one that
/// did not (the reader rolls it back), each once its TTL passed.
#[test]
fn flotilla_client_finishes_dead_async_commit_transactions() {
    let (cluster, rt, ours) = three_regions();
    let dead = DeadClient::new(ours);
    let c = rt
        .block_on(client::txn::TxnClient::connect(
            std::slice::from_ref(&cluster.pd_addr),
            T,
        ))
        .unwrap();
    let ts = || rt.block_on(c.current_ts()).unwrap();
    let read = |key: &str| {
        rt.block_on(async { c.begin().await.unwrap().get(key.as_bytes()).await.unwrap() })
    };

    // Every key prewritten: committed, whatever the client did next.
    let start = ts();
    let secondaries: &[&[u8]] = &[b"k7"];
    dead.prewrite_with(b"k2", b"all", b"k2", start, 300, Some(secondaries));
    dead.prewrite_with(b"k7", b"all", b"k2", start, 300, Some(secondaries));
    assert_eq!(read("k7"), Some(b"all".to_vec()), "rolled forward");
    assert_eq!(read("k2"), Some(b"all".to_vec()));
    assert!(matches!(
        rt.block_on(c.status(b"k2", start)).unwrap(),
        client::txn::TxnState::Committed(_)
    ));

    // A secondary never prewritten: the transaction never committed.
    let start = ts();
    let secondaries: &[&[u8]] = &[b"k4"];
    dead.prewrite_with(b"k2", b"partial", b"k2", start, 300, Some(secondaries));
    assert_eq!(read("k2"), Some(b"all".to_vec()), "rolled back");
    assert_eq!(read("k4"), None);
    assert_eq!(
        rt.block_on(c.status(b"k2", start)).unwrap(),
        client::txn::TxnState::RolledBack
    );
}

#[test]
fn gc_through_the_client_drops_versions_below_the_safe_point_and_keeps_the_newest() {
    let (cluster, rt, _ours) = three_regions_with("[gc]\nrun-interval = \"1s\"");
    rt.block_on(async {
        let c = TransactionClient::new(vec![cluster.pd_addr.clone()])
            .await
            .expect("tikv-client connects");
        let mut marks = vec![];
        for v in ["v1", "v2", "v3"] {
            let mut t = c.begin_optimistic().await.unwrap();
            t.put(k("k2"), v).await.unwrap();
            t.commit().await.unwrap();
            marks.push(c.current_timestamp().await.unwrap());
        }
        // Below the safe point: v1 (superseded by v2). At it: v2, the newest kept.
        let safe_point = marks[1].clone();
        assert!(
            c.gc(safe_point.clone()).await.expect("gc"),
            "PD took the safe point"
        );
        let dropped = || {
            (0..3)
                .filter_map(|i| common::http_get(&cluster.status_addr(i), "/metrics"))
                .map(|m| common::metric(&m, "flotilla_gc_versions_dropped_total"))
                .sum::<f64>()
        };
        wait_until("a store dropped the old version", T, || dropped() >= 1.0);
        let mut at_sp = c.snapshot(safe_point, TransactionOptions::new_optimistic());
        assert_eq!(at_sp.get(k("k2")).await.unwrap(), Some(b"v2".to_vec()));
        let mut now = c.begin_optimistic().await.unwrap();
        assert_eq!(now.get(k("k2")).await.unwrap(), Some(b"v3".to_vec()));
        now.rollback().await.unwrap();
        let mut below = c.snapshot(marks[0].clone(), TransactionOptions::new_optimistic());
        let err = below.get(k("k2")).await.expect_err("below the safe point");
        assert!(format!("{err:?}").contains("safe point"), "{err:?}");
    });
}
