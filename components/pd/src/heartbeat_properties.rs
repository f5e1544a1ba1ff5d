//! Generated region heartbeats, most of them nonsense (backwards or empty ranges, stale
//! or absurd epochs, duplicate peers, peers on unknown stores, leaders that are not
//! voters): PD must answer each with a result, never panic, and keep its routing table
//! a set of non-overlapping, non-empty ranges.

use crate::{Config, PdCore};
use proptest::prelude::*;
use proto::{metapb, pdpb};

fn peer(id: u64, store: u64, voter: bool) -> metapb::Peer {
    let mut p = metapb::Peer::default();
    p.set_id(id);
    p.set_store_id(store);
    p.set_role(if voter {
        metapb::PeerRole::Voter
    } else {
        metapb::PeerRole::Learner
    });
    p
}

fn store(id: u64) -> metapb::Store {
    let mut s = metapb::Store::default();
    s.set_id(id);
    s.set_address(format!("store-{id}"));
    s
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'm'), Just(b'z')], 0..3)
}

prop_compose! {
    fn heartbeat()(
        id in 1u64..8,
        start in key(),
        end in key(),
        version in 0u64..6,
        conf_ver in 0u64..6,
        peers in proptest::collection::vec((1u64..12, 0u64..7, any::<bool>()), 0..5),
        leader in (1u64..12, 0u64..7, any::<bool>()),
        size in any::<u64>(),
    ) -> pdpb::RegionHeartbeatRequest {
        let mut r = metapb::Region::default();
        r.set_id(id);
        r.set_start_key(start);
        r.set_end_key(end);
        r.mut_region_epoch().set_version(version);
        r.mut_region_epoch().set_conf_ver(conf_ver);
        for (p, s, v) in peers {
            r.mut_peers().push(peer(p, s, v));
        }
        let mut hb = pdpb::RegionHeartbeatRequest::default();
        hb.set_region(r);
        hb.set_leader(peer(leader.0, leader.1, leader.2));
        hb.set_approximate_size(size);
        hb
    }
}

fn core() -> (tempfile::TempDir, PdCore) {
    let dir = tempfile::tempdir().unwrap();
    let core = PdCore::open(
        Config::default(),
        crate::storage::local::open(dir.path()),
        util::logger::discard(),
    )
    .unwrap();
    let mut region = metapb::Region::default();
    region.set_id(1);
    region.mut_region_epoch().set_version(1);
    region.mut_region_epoch().set_conf_ver(1);
    region.mut_peers().push(peer(1, 1, true));
    core.bootstrap(store(1), region).unwrap();
    for s in 2..=4 {
        core.put_store(store(s)).unwrap();
    }
    (dir, core)
}

/// Whether a report is malformed on its face (checked here independently of PD's own
/// validation): PD must refuse it and change nothing.
fn malformed(hb: &pdpb::RegionHeartbeatRequest) -> bool {
    let r = hb.get_region();
    let (start, end) = (r.get_start_key(), r.get_end_key());
    let epoch = r.get_region_epoch();
    let peers = r.get_peers();
    let dup = |f: fn(&metapb::Peer) -> u64| {
        let mut v: Vec<u64> = peers.iter().map(f).collect();
        v.sort_unstable();
        v.windows(2).any(|w| w[0] == w[1])
    };
    let l = hb.get_leader();
    let leader_is_voter = peers.iter().any(|p| {
        p.get_id() == l.get_id()
            && p.get_store_id() == l.get_store_id()
            && p.get_role() == metapb::PeerRole::Voter
    });
    (!end.is_empty() && start >= end)
        || epoch.get_version() == 0
        || epoch.get_conf_ver() == 0
        || peers.is_empty()
        || dup(|p| p.get_id())
        || dup(|p| p.get_store_id())
        || peers.iter().any(|p| !(1..=4).contains(&p.get_store_id()))
        || !leader_is_voter
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_heartbeats_never_break_the_routing_table(hbs in proptest::collection::vec(heartbeat(), 1..40)) {
        let (_dir, core) = core();
        for hb in &hbs {
            let table = |core: &PdCore| -> Vec<_> {
                core.scan_regions(b"", b"", usize::MAX)
                    .into_iter()
                    .map(|r| (r.region, r.leader))
                    .collect()
            };
            let before = table(&core);
            let res = core.region_heartbeat(hb);
            if malformed(hb) {
                prop_assert!(res.is_err(), "a malformed report was taken: {hb:?}");
                prop_assert_eq!(table(&core), before, "a refused report changed the routing table");
            }
            let regions = core.scan_regions(b"", b"", usize::MAX);
            for r in &regions {
                let (s, e) = (r.region.get_start_key(), r.region.get_end_key());
                prop_assert!(e.is_empty() || s < e, "an empty range was taken: {:?}", r.region);
            }
            for pair in regions.windows(2) {
                let (a, b) = (&pair[0].region, &pair[1].region);
                prop_assert!(!a.get_end_key().is_empty() && a.get_end_key() <= b.get_start_key(),
                    "overlapping regions: {a:?} and {b:?}");
            }
            for k in [&b""[..], b"a", b"m", b"mz", b"z", b"zz"] {
                if let Some(r) = core.region_by_key(k) {
                    let (s, e) = (r.region.get_start_key(), r.region.get_end_key());
                    prop_assert!(s <= k && (e.is_empty() || k < e), "{k:?} routed to {:?}", r.region);
                }
            }
        }
    }
}
