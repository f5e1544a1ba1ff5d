//! Balance schedulers: even out replica counts and leader counts across live stores.
//!
//! Both run on a region's heartbeat when the replica checker has nothing to do, and
//! consider only that region, so scheduling costs O(stores) per heartbeat no matter how
//! many regions there are. A move happens only when the source has at least two more
//! than the target (counting running operators), so counts settle within one of each
//! other instead of oscillating, and only while both stores have room under the
//! per-store operator limit.

use proto::metapb;

use crate::{
    region_tree::RegionInfo,
    schedule::{replace_steps, Operator, Step, Stores},
};

/// Whether every peer is a voter that keeps up: only such regions are moved.
fn is_settled(info: &RegionInfo) -> bool {
    info.pending_peers.is_empty()
        && info.down_peers.is_empty()
        && info
            .region
            .get_peers()
            .iter()
            .all(|p| p.get_role() == metapb::PeerRole::Voter)
}

/// Moves one replica of the region from the fullest store it is on to the emptiest
/// store it is not on, if their replica counts differ by more than one. Fullest and
/// emptiest go by count, then by bytes.
pub fn balance_region(
    info: &RegionInfo,
    stores: &Stores,
    alloc: &mut dyn FnMut() -> Option<u64>,
) -> Option<Operator> {
    if !is_settled(info) {
        return None;
    }
    let peers = info.region.get_peers();
    let source = peers
        .iter()
        .filter(|p| stores.has_room(p.get_store_id()))
        .max_by_key(|p| {
            let l = &stores.loads[&p.get_store_id()];
            (l.regions, l.size, p.get_store_id())
        })?;
    let (target, target_load) = stores
        .loads
        .iter()
        .filter(|(id, _)| stores.has_room(**id))
        .filter(|(id, _)| !peers.iter().any(|p| p.get_store_id() == **id))
        .min_by_key(|(id, l)| (l.regions, l.size, **id))?;
    if stores.loads[&source.get_store_id()].regions - target_load.regions <= 1 {
        return None;
    }
    let mut new = metapb::Peer::default();
    new.set_id(alloc()?);
    new.set_store_id(*target);
    new.set_role(metapb::PeerRole::Learner);
    Some(Operator::new(
        "balance-region",
        replace_steps(info, source, new),
        info,
    ))
}

/// Moves the region's leadership to the voter whose store leads the fewest regions, if
/// that is more than one fewer than the current leader's store.
pub fn balance_leader(info: &RegionInfo, stores: &Stores) -> Option<Operator> {
    if !is_settled(info) {
        return None;
    }
    let from = info.leader.as_ref()?.get_store_id();
    let from_load = stores.loads.get(&from)?;
    if !stores.has_room(from) {
        return None;
    }
    let to = info
        .region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .filter(|s| *s != from && stores.has_room(*s))
        .min_by_key(|s| (stores.loads[s].leaders, *s))?;
    if from_load.leaders - stores.loads[&to].leaders <= 1 {
        return None;
    }
    Some(Operator::new(
        "balance-leader",
        vec![Step::TransferLeader(to)],
        info,
    ))
}

#[cfg(test)]
mod tests {
    use metapb::PeerRole::Voter;

    use super::*;
    use crate::schedule::{
        tests::{region, stores},
        Health,
    };

    #[test]
    fn moves_a_replica_from_the_fullest_store_to_the_emptiest() {
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        let s = stores(&[
            (1, Health::Up, 10, 4),
            (2, Health::Up, 12, 3),
            (3, Health::Up, 11, 3),
            (4, Health::Up, 0, 0),
        ]);
        let op = balance_region(&info, &s, &mut || Some(50)).unwrap();
        let steps: Vec<String> = op.steps.iter().map(|s| s.describe()).collect();
        assert_eq!(
            steps,
            [
                "add learner 50 on store 4",
                "promote learner 50 on store 4",
                "remove peer 2 on store 2"
            ]
        );
        // Within one of each other: nothing to do.
        let even = stores(&[
            (1, Health::Up, 10, 4),
            (2, Health::Up, 10, 3),
            (3, Health::Up, 10, 3),
            (4, Health::Up, 9, 0),
        ]);
        assert!(balance_region(&info, &even, &mut || Some(50)).is_none());
        // A down or full-up store is never a target.
        let mut busy = s.clone();
        busy.loads.get_mut(&4).unwrap().operators = 4;
        assert!(balance_region(&info, &busy, &mut || Some(50)).is_none());
        let mut down = s;
        down.loads.get_mut(&4).unwrap().health = Health::Down;
        assert!(balance_region(&info, &down, &mut || Some(50)).is_none());
    }

    #[test]
    fn between_equal_counts_bytes_pick_source_and_target() {
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        let mut s = stores(&[
            (1, Health::Up, 12, 4),
            (2, Health::Up, 12, 3),
            (3, Health::Up, 12, 3),
            (4, Health::Up, 10, 0),
            (5, Health::Up, 10, 0),
        ]);
        for (id, size) in [(1, 300), (2, 900), (3, 500), (4, 200), (5, 100)] {
            s.loads.get_mut(&id).unwrap().size = size;
        }
        let op = balance_region(&info, &s, &mut || Some(50)).unwrap();
        let steps: Vec<String> = op.steps.iter().map(|s| s.describe()).collect();
        assert_eq!(steps[0], "add learner 50 on store 5");
        assert_eq!(steps[2], "remove peer 2 on store 2");
    }

    #[test]
    fn moves_leadership_to_the_store_leading_fewest() {
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        let s = stores(&[
            (1, Health::Up, 10, 6),
            (2, Health::Up, 10, 5),
            (3, Health::Up, 10, 4),
        ]);
        let op = balance_leader(&info, &s).unwrap();
        assert_eq!(op.steps, vec![Step::TransferLeader(3)]);
        let close = stores(&[
            (1, Health::Up, 10, 5),
            (2, Health::Up, 10, 5),
            (3, Health::Up, 10, 4),
        ]);
        assert!(balance_leader(&info, &close).is_none());
    }

    #[test]
    fn a_stopping_store_is_given_no_leadership() {
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        let mut s = stores(&[
            (1, Health::Up, 10, 6),
            (2, Health::Up, 10, 4),
            (3, Health::Up, 10, 0),
        ]);
        s.loads.get_mut(&3).unwrap().stopping = true;
        let op = balance_leader(&info, &s).unwrap();
        assert_eq!(
            op.steps,
            vec![Step::TransferLeader(2)],
            "not to the stopping store 3"
        );
    }
}
