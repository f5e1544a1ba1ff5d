//! Checks on what stores report, before any of it reaches the routing table: a region
//! must be well formed (a non-empty range, an epoch, peers with ids), its peers must sit
//! on this cluster's live stores, one per store, and its leader must be one of them. A
//! report that fails is refused with an error that names the problem, and changes nothing.

use std::collections::HashSet;

use proto::metapb;

use crate::{Error, Result};

fn invalid(region: &metapb::Region, why: String) -> Error {
    Error::InvalidValue(format!("region {}: {why}", region.get_id()))
}

/// Checks a reported region against the stores PD knows (`store_state`: a store's state,
/// `None` for a store PD does not know).
pub fn check_region(
    region: &metapb::Region,
    store_state: impl Fn(u64) -> Option<metapb::StoreState>,
) -> Result<()> {
    if region.get_id() == 0 {
        return Err(Error::InvalidValue("region id 0".into()));
    }
    let (start, end) = (region.get_start_key(), region.get_end_key());
    if !end.is_empty() && start >= end {
        return Err(invalid(
            region,
            format!("start key {start:?} is not before end key {end:?}"),
        ));
    }
    let epoch = region.get_region_epoch();
    if epoch.get_version() == 0 || epoch.get_conf_ver() == 0 {
        return Err(invalid(region, "no epoch".into()));
    }
    if region.get_peers().is_empty() {
        return Err(invalid(region, "no peers".into()));
    }
    let (mut ids, mut on) = (HashSet::new(), HashSet::new());
    for p in region.get_peers() {
        if p.get_id() == 0 || !ids.insert(p.get_id()) {
            return Err(invalid(
                region,
                format!("peer id {} is 0 or repeated", p.get_id()),
            ));
        }
        if !on.insert(p.get_store_id()) {
            return Err(invalid(
                region,
                format!("two peers on store {}", p.get_store_id()),
            ));
        }
        match store_state(p.get_store_id()) {
            None => return Err(Error::StoreNotFound(p.get_store_id())),
            Some(metapb::StoreState::Tombstone) => {
                return Err(Error::StoreTombstone(p.get_store_id()))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks that `leader` is a voter of `region`, as the region lists it.
pub fn check_leader(region: &metapb::Region, leader: &metapb::Peer) -> Result<()> {
    let listed = region.get_peers().iter().any(|p| {
        p.get_id() == leader.get_id()
            && p.get_store_id() == leader.get_store_id()
            && p.get_role() == metapb::PeerRole::Voter
    });
    if !listed {
        return Err(invalid(
            region,
            format!(
                "leader {} on store {} is not a voter of the region",
                leader.get_id(),
                leader.get_store_id()
            ),
        ));
    }
    Ok(())
}

/// Keeps only the reported peers that belong to `region` (down and pending lists).
pub fn peers_of<T>(
    region: &metapb::Region,
    items: &[T],
    peer: impl Fn(&T) -> &metapb::Peer,
) -> Vec<T>
where
    T: Clone,
{
    items
        .iter()
        .filter(|i| {
            let p = peer(i);
            region.get_peers().iter().any(|r| r.get_id() == p.get_id())
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn stores(ids: &[u64]) -> HashMap<u64, metapb::StoreState> {
        ids.iter().map(|id| (*id, metapb::StoreState::Up)).collect()
    }

    fn check(r: &metapb::Region, stores: &HashMap<u64, metapb::StoreState>) -> Result<()> {
        check_region(r, |id| stores.get(&id).copied())
    }

    fn region(start: &[u8], end: &[u8], peers: &[(u64, u64)]) -> metapb::Region {
        let mut r = metapb::Region::default();
        r.set_id(9);
        r.set_start_key(start.to_vec());
        r.set_end_key(end.to_vec());
        r.mut_region_epoch().set_version(1);
        r.mut_region_epoch().set_conf_ver(1);
        for (id, store) in peers {
            let mut p = metapb::Peer::default();
            p.set_id(*id);
            p.set_store_id(*store);
            r.mut_peers().push(p);
        }
        r
    }

    #[test]
    fn malformed_regions_are_refused_by_name() {
        let s = stores(&[1, 2, 3]);
        assert!(check(&region(b"a", b"b", &[(1, 1), (2, 2)]), &s).is_ok());
        assert!(check(&region(b"", b"", &[(1, 1)]), &s).is_ok());
        let cases = [
            (region(b"b", b"a", &[(1, 1)]), "is not before"),
            (region(b"a", b"a", &[(1, 1)]), "is not before"),
            (region(b"a", b"b", &[]), "no peers"),
            (region(b"a", b"b", &[(1, 1), (1, 2)]), "repeated"),
            (region(b"a", b"b", &[(0, 1)]), "repeated"),
            (
                region(b"a", b"b", &[(1, 1), (2, 1)]),
                "two peers on store 1",
            ),
            (region(b"a", b"b", &[(1, 7)]), "store 7 not found"),
        ];
        for (r, why) in cases {
            let err = check(&r, &s).expect_err(why).to_string();
            assert!(err.contains(why), "{err} (expected {why})");
        }
        let mut no_epoch = region(b"a", b"b", &[(1, 1)]);
        no_epoch.clear_region_epoch();
        assert!(check(&no_epoch, &s).is_err());
    }

    #[test]
    fn the_leader_must_be_a_listed_voter() {
        let r = region(b"a", b"b", &[(1, 1), (2, 2)]);
        let mut leader = r.get_peers()[1].clone();
        assert!(check_leader(&r, &leader).is_ok());
        leader.set_store_id(3);
        assert!(check_leader(&r, &leader).is_err());
        leader.set_id(5);
        assert!(check_leader(&r, &leader).is_err());
    }
}
