//! Scheduling on the in-process cluster: a new store receives its share of replicas and
//! leaders; a decommissioned store is emptied and retired while every region keeps its
//! voters and every key stays readable.

use std::time::Duration;

use proto::metapb;
use test_cluster::{test_config, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);
/// Moving some 150 replicas on two cores.
const SETTLE: Duration = Duration::from_secs(180);
const REGIONS: usize = 200;

fn split_key(i: usize) -> Vec<u8> {
    format!("r{i:03}").into_bytes()
}

fn data_key(i: usize) -> Vec<u8> {
    format!("r{i:03}-data").into_bytes()
}

fn voters(r: &metapb::Region) -> Vec<u64> {
    r.get_peers()
        .iter()
        .filter(|p| p.get_role() == metapb::PeerRole::Voter)
        .map(|p| p.get_store_id())
        .collect()
}

/// PD's routing table, if every region in it has `n` voters and a leader.
fn settled_regions(c: &Cluster, n: usize) -> Option<Vec<metapb::Region>> {
    let routes = c
        .runtime()
        .block_on(c.pd().scan_regions(b"", b"", 0))
        .ok()?;
    routes
        .into_iter()
        .map(|r| (r.leader.is_some() && voters(&r.region).len() == n).then_some(r.region))
        .collect()
}

/// PD's (replica, leader) counts of each store.
fn counts(c: &Cluster, stores: &[u64]) -> Vec<(u32, u32)> {
    stores
        .iter()
        .map(|s| {
            let (_, stats) = c
                .runtime()
                .block_on(c.pd().get_store(*s))
                .expect("get store");
            (stats.region_count, stats.leader_count)
        })
        .collect()
}

fn within_one(xs: impl Iterator<Item = u32> + Clone) -> bool {
    let max = xs.clone().max().unwrap_or(0);
    let min = xs.min().unwrap_or(0);
    max - min <= 1
}

fn store_state(c: &Cluster, id: u64) -> metapb::StoreState {
    let (store, _) = c
        .runtime()
        .block_on(c.pd().get_store(id))
        .expect("get store");
    store.get_state()
}

#[test]
fn a_new_store_gets_its_share_and_a_deleted_store_ends_empty() {
    let (rs, mut pd) = test_config();
    pd.store_limit = 16;
    let mut c = Cluster::with_config(3, rs, pd);
    c.wait_voters(b"", 3, T);
    let keys: Vec<Vec<u8>> = (1..REGIONS).map(split_key).collect();
    wait_until("the pre-split into 200 regions", T, || {
        c.split_at_keys(b"", keys.clone()).is_ok()
    });
    wait_until("PD to know 200 regions with 3 voters each", SETTLE, || {
        settled_regions(&c, 3).is_some_and(|r| r.len() == REGIONS)
    });
    for i in 0..REGIONS {
        c.must_put(&data_key(i), &split_key(i));
    }

    let joined = std::time::Instant::now();
    let new = c.add_store();
    let stores = c.store_ids();
    wait_until(
        "no operator running and counts within one of each other",
        SETTLE,
        || {
            let n = counts(&c, &stores);
            let idle = c
                .runtime()
                .block_on(c.pd().get_operators())
                .is_ok_and(|ops| ops.is_empty());
            idle && n.iter().map(|x| x.0).sum::<u32>() == 3 * REGIONS as u32
                && within_one(n.iter().map(|x| x.0))
                && within_one(n.iter().map(|x| x.1))
        },
    );
    let n = counts(&c, &stores);
    eprintln!(
        "balanced in {:.1}s: (replicas, leaders) per store {n:?}",
        joined.elapsed().as_secs_f64()
    );
    assert!(n[stores.iter().position(|s| *s == new).unwrap()].0 >= 149);
    for i in 0..REGIONS {
        c.must_get_equal(&data_key(i), &split_key(i));
    }

    let victim = stores[1];
    c.runtime()
        .block_on(c.pd().delete_store(victim))
        .expect("decommission");
    wait_until("the deleted store to become tombstone", SETTLE, || {
        store_state(&c, victim) == metapb::StoreState::Tombstone
    });
    let regions = settled_regions(&c, 3).expect("every region keeps 3 voters and a leader");
    assert_eq!(regions.len(), REGIONS);
    assert!(regions.iter().all(|r| !voters(r).contains(&victim)));
    wait_until("the deleted store to drop its last replica", T, || {
        (0..REGIONS).all(|i| c.local_region(victim, &data_key(i)).is_none())
    });
    for i in 0..REGIONS {
        c.must_get_equal(&data_key(i), &split_key(i));
    }

    let err = |id: u64| {
        c.runtime()
            .block_on(c.pd().delete_store(id))
            .expect_err("refused")
            .to_string()
    };
    let three_left = err(stores[0]);
    assert!(
        three_left.contains("fewer than max-replicas"),
        "{three_left}"
    );
    assert_eq!(store_state(&c, stores[0]), metapb::StoreState::Up);
    assert!(err(victim).contains("tombstone"));
    assert!(err(999).contains("not found"));
}
