//! TiKV's own Rust client (tikv-client 0.4) and its `TransactionClient` against a
//! three-store Flotilla cluster split into several regions at encoded boundaries.

mod common;

use std::time::Duration;

use common::{wait_until, ProcCluster};
use tikv_client::{TransactionClient, TransactionOptions};

const T: Duration = Duration::from_secs(60);

fn k(name: &str) -> Vec<u8> {
    name.as_bytes().to_vec()
}

#[test]
fn tikv_transaction_client_works_unchanged() {
    let cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ours = rt
        .block_on(client::Client::connect(&[cluster.pd_addr.clone()], T))
        .unwrap();
    wait_until("three voters", T, || {
        rt.block_on(ours.regions())
            .is_ok_and(|rs| rs.first().is_some_and(|r| r.region.get_peers().len() == 3))
    });
    let first = rt.block_on(ours.regions()).unwrap()[0].region.get_id();
    // Where a transactional client expects region boundaries: at encoded keys.
    let bounds = vec![
        keys::txn::split_boundary(b"k3"),
        keys::txn::split_boundary(b"k6"),
    ];
    rt.block_on(ours.split_region(first, &bounds))
        .expect("split");
    wait_until("a leader for each of three regions", T, || {
        rt.block_on(ours.regions())
            .is_ok_and(|rs| rs.len() == 3 && rs.iter().all(|r| r.leader.is_some()))
    });
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
