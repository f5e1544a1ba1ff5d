//! Placement by failure domain on the in-process cluster: stores labelled with a zone and
//! a host, PD with `location-labels = ["zone", "host"]` and `isolation-level = "zone"`.
//! Every region ends with its replicas in three zones through splits, a store joining and
//! one leaving; a region that had to put two replicas in one zone is repaired once a third
//! zone has room.

use std::time::Duration;

use pd_client::RegionRoute;
use proto::metapb;
use test_cluster::{poll_until, test_config, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(180);

fn zoned_config() -> (raftstore::Config, pd::Config) {
    let (rs, mut pd) = test_config();
    pd.store_limit = 16;
    pd.replication = pd::Replication {
        location_labels: vec!["zone".into(), "host".into()],
        isolation_level: "zone".into(),
        ..Default::default()
    };
    (rs, pd)
}

fn add_in_zone(c: &mut Cluster, zone: &str) -> u64 {
    let host = format!("h{}", c.store_ids().len() + 1);
    c.add_labelled_store(&[("zone", zone), ("host", &host)])
}

fn routes(c: &Cluster) -> Vec<RegionRoute> {
    c.runtime()
        .block_on(c.pd().scan_regions(b"", b"", 0))
        .unwrap_or_default()
}

/// PD's routing table once every region has `n` voters, a leader, and no operator runs.
fn settled(c: &Cluster, n: usize) -> Option<Vec<RegionRoute>> {
    let idle = c
        .runtime()
        .block_on(c.pd().get_operators())
        .is_ok_and(|ops| ops.is_empty());
    let all = routes(c);
    let full = all.iter().all(|r| {
        r.leader.is_some()
            && r.region.get_peers().len() == n
            && r.region
                .get_peers()
                .iter()
                .all(|p| p.get_role() == metapb::PeerRole::Voter)
    });
    (idle && full).then_some(all)
}

fn zone_of(c: &Cluster, store: u64) -> String {
    let (s, _) = c
        .runtime()
        .block_on(c.pd().get_store(store))
        .expect("get store");
    let zone = s.get_labels().iter().find(|l| l.get_key() == "zone");
    zone.expect("every store has a zone")
        .get_value()
        .to_string()
}

/// The regions whose replicas do not sit in as many zones as they have replicas, by the
/// stores' own labels (not PD's verdict, which the test also checks).
fn sharing_a_zone(c: &Cluster, routes: &[RegionRoute]) -> Vec<u64> {
    routes
        .iter()
        .filter(|r| {
            let mut zones: Vec<String> = r
                .region
                .get_peers()
                .iter()
                .map(|p| zone_of(c, p.get_store_id()))
                .collect();
            zones.sort();
            zones.dedup();
            zones.len() < r.region.get_peers().len()
        })
        .map(|r| r.region.get_id())
        .collect()
}

fn key(i: usize) -> Vec<u8> {
    format!("z{i:03}").into_bytes()
}

#[test]
fn replicas_stay_in_three_zones_through_splits_a_new_store_and_a_decommission() {
    const REGIONS: usize = 48;
    let (rs, pd) = zoned_config();
    let mut c = Cluster::with_config(0, rs, pd);
    for zone in ["z1", "z1", "z2", "z2", "z3", "z3"] {
        add_in_zone(&mut c, zone);
    }
    c.wait_voters(b"", 3, T);
    let keys: Vec<Vec<u8>> = (1..REGIONS).map(key).collect();
    wait_until("the split into 48 regions", T, || {
        c.split_at_keys(b"", keys.clone()).is_ok()
    });
    // Waits for the cluster to settle again rather than asking once: a balancing
    // operator may start between a wait and this look.
    let check = |c: &Cluster, when: &str| {
        let all = poll_until(SETTLE, || settled(c, 3).filter(|r| r.len() == REGIONS))
            .unwrap_or_else(|| panic!("{when}: {REGIONS} regions settled within the deadline"));
        assert_eq!(sharing_a_zone(c, &all), Vec::<u64>::new(), "{when}");
        for r in &all {
            assert_eq!(
                r.isolation,
                Some(("zone".to_string(), false)),
                "{when}: PD's verdict on region {}",
                r.region.get_id()
            );
        }
    };
    check(&c, "after the splits");
    for i in 0..REGIONS {
        c.must_put(&key(i), b"v");
    }

    let new = add_in_zone(&mut c, "z1");
    wait_until("the new store to take replicas", SETTLE, || {
        let (_, stats) = c
            .runtime()
            .block_on(c.pd().get_store(new))
            .expect("get store");
        stats.region_count >= 10 && settled(&c, 3).is_some()
    });
    check(&c, "after a store joined z1");

    // Moving a replica by hand into a zone the region already uses is refused: z1 now has
    // a store without a replica of each region.
    let r = routes(&c)[0].region.clone();
    let on = |s: u64| r.get_peers().iter().any(|p| p.get_store_id() == s);
    let stores = c.store_ids();
    let from = *stores
        .iter()
        .find(|s| on(**s) && zone_of(&c, **s) == "z2")
        .unwrap();
    let to = *stores
        .iter()
        .find(|s| !on(**s) && zone_of(&c, **s) == "z1")
        .unwrap();
    let err = c
        .runtime()
        .block_on(c.pd().move_peer(r.get_id(), from, to))
        .expect_err("a move that puts two replicas in z1 is refused")
        .to_string();
    assert!(err.contains("fewer failure domains"), "{err}");

    let stores = c.store_ids();
    let victim = *stores
        .iter()
        .find(|s| zone_of(&c, **s) == "z2")
        .expect("a store in z2");
    c.runtime()
        .block_on(c.pd().delete_store(victim))
        .expect("decommission");
    wait_until(
        "the decommissioned store to become tombstone",
        SETTLE,
        || {
            let (s, _) = c
                .runtime()
                .block_on(c.pd().get_store(victim))
                .expect("get store");
            s.get_state() == metapb::StoreState::Tombstone && settled(&c, 3).is_some()
        },
    );
    check(&c, "after a store left z2");
    for i in 0..REGIONS {
        c.must_get_equal(&key(i), b"v");
    }
}

#[test]
fn two_replicas_in_one_zone_are_repaired_once_a_third_zone_has_room() {
    const REGIONS: usize = 12;
    let (rs, pd) = zoned_config();
    let mut c = Cluster::with_config(0, rs, pd);
    for zone in ["z1", "z1", "z2", "z2"] {
        add_in_zone(&mut c, zone);
    }
    c.wait_voters(b"", 3, T);
    let keys: Vec<Vec<u8>> = (1..REGIONS).map(key).collect();
    wait_until("the split into 12 regions", T, || {
        c.split_at_keys(b"", keys.clone()).is_ok()
    });
    // The routes the wait saw: a second look may catch a balancing operator running.
    let all = poll_until(SETTLE, || settled(&c, 3).filter(|r| r.len() == REGIONS))
        .expect("12 regions with 3 voters each within the deadline");
    // Two zones for three replicas: every region has two in one zone, and PD says so.
    assert_eq!(sharing_a_zone(&c, &all).len(), REGIONS);
    assert!(all
        .iter()
        .all(|r| r.isolation == Some(("host".to_string(), true))));

    for i in 0..REGIONS {
        c.must_put(&key(i), b"v");
    }
    let started = std::time::Instant::now();
    add_in_zone(&mut c, "z3");
    wait_until("every region to have a replica in z3", SETTLE, || {
        settled(&c, 3).is_some_and(|all| {
            sharing_a_zone(&c, &all).is_empty()
                && all
                    .iter()
                    .all(|r| r.isolation == Some(("zone".to_string(), false)))
        })
    });
    eprintln!(
        "{REGIONS} regions repaired into three zones in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for i in 0..REGIONS {
        c.must_get_equal(&key(i), b"v");
    }
}

#[test]
fn a_store_without_the_location_labels_is_refused() {
    let (rs, pd) = zoned_config();
    let mut c = Cluster::with_config(0, rs, pd);
    add_in_zone(&mut c, "z1");
    let mut store = metapb::Store::default();
    store.set_id(c.runtime().block_on(c.pd().alloc_id()).expect("id"));
    store.set_address("sim://unlabelled".into());
    let mut label = metapb::StoreLabel::default();
    label.set_key("zone".into());
    label.set_value("z2".into());
    store.mut_labels().push(label);
    let err = c
        .runtime()
        .block_on(c.pd().put_store(store))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("labels lack host"), "{err}");
    assert_eq!(
        c.runtime()
            .block_on(c.pd().get_all_stores(false))
            .unwrap()
            .len(),
        1
    );
}
