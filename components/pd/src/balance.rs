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
    schedule::{improve_isolation, is_settled, replace_steps, Operator, Step, Stores},
};

/// Moves one replica of the region from the fullest store it is on to the emptiest
/// store it is not on, if their replica counts differ by more than one. Fullest and
/// emptiest go by count, then by bytes. A move never brings the replica nearer the
/// region's other replicas in failure domains; first of all, a region whose replicas
/// could stand farther apart is spread wider.
pub fn balance_region(
    info: &RegionInfo,
    stores: &Stores,
    alloc: &mut dyn FnMut() -> Option<u64>,
) -> Option<Operator> {
    if !is_settled(info) {
        return None;
    }
    if let Some(op) = improve_isolation(info, stores, alloc, false) {
        return Some(op);
    }
    let peers = info.region.get_peers();
    let all: Vec<u64> = peers.iter().map(|p| p.get_store_id()).collect();
    let load = |s: u64| {
        let l = &stores.loads[&s];
        (l.regions, l.size)
    };
    let mut sources: Vec<&metapb::Peer> = peers
        .iter()
        .filter(|p| stores.has_room(p.get_store_id()))
        .collect();
    sources.sort_by_key(|p| std::cmp::Reverse((load(p.get_store_id()), p.get_store_id())));
    for source in sources {
        let from = source.get_store_id();
        let rest: Vec<u64> = all.iter().copied().filter(|s| *s != from).collect();
        let spread = stores.score(from, &rest);
        let target = stores
            .loads
            .keys()
            .copied()
            .filter(|id| stores.has_room(*id) && !all.contains(id))
            .filter(|id| stores.score(*id, &rest) >= spread)
            .min_by_key(|id| (load(*id), *id));
        let Some(target) = target else { continue };
        if load(from).0 - load(target).0 <= 1 {
            continue;
        }
        let mut new = metapb::Peer::default();
        new.set_id(alloc()?);
        new.set_store_id(target);
        new.set_role(metapb::PeerRole::Learner);
        return Some(Operator::new(
            "balance-region",
            replace_steps(info, source, new),
            info,
        ));
    }
    None
}

/// Moves the region's leadership into a leader zone if it is outside them and a voter is
/// inside; otherwise to the voter whose store leads the fewest regions, if that is more
/// than one fewer than the current leader's store, never out of a leader zone.
pub fn balance_leader(info: &RegionInfo, stores: &Stores) -> Option<Operator> {
    if !is_settled(info) {
        return None;
    }
    let from = info.leader.as_ref()?.get_store_id();
    let from_load = stores.loads.get(&from)?;
    if !stores.has_room(from) {
        return None;
    }
    let voters = || {
        info.region
            .get_peers()
            .iter()
            .map(|p| p.get_store_id())
            .filter(|s| *s != from && stores.has_room(*s))
    };
    let fewest = |c: &u64| (stores.loads[c].leaders, *c);
    if !stores.in_leader_zone(from) {
        if let Some(to) = voters()
            .filter(|s| stores.in_leader_zone(*s))
            .min_by_key(fewest)
        {
            return Some(Operator::new(
                "balance-leader-zone",
                vec![Step::TransferLeader(to)],
                info,
            ));
        }
    }
    let to = voters()
        .filter(|s| !stores.in_leader_zone(from) || stores.in_leader_zone(*s))
        .min_by_key(fewest)?;
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

    #[test]
    fn balancing_never_brings_a_replica_nearer_the_others() {
        use crate::schedule::tests::zoned;
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        // Store 2 (z2) is the fullest; the emptiest, store 4, sits in z1 beside store 1.
        // Store 5 in z2 is the only target that keeps three zones.
        let s = zoned(&[
            (1, "z1", 5),
            (2, "z2", 9),
            (3, "z3", 5),
            (4, "z1", 0),
            (5, "z2", 3),
        ]);
        let op = balance_region(&info, &s, &mut || Some(50)).unwrap();
        let steps: Vec<String> = op.steps.iter().map(|s| s.describe()).collect();
        assert_eq!(steps[0], "add learner 50 on store 5");
        assert_eq!(steps[2], "remove peer 2 on store 2");
        // Without store 5 nothing can leave store 2 without sharing a zone; store 1's
        // replica may move to store 4, its zone's emptier store.
        let mut no_room = s.clone();
        no_room.loads.remove(&5);
        let op = balance_region(&info, &no_room, &mut || Some(50)).unwrap();
        let steps: Vec<String> = op.steps.iter().map(|s| s.describe()).collect();
        assert_eq!(steps[0], "add learner 50 on store 4");
        assert_eq!(steps.last().unwrap(), "remove peer 1 on store 1");
    }

    #[test]
    fn leaders_move_into_the_leader_zones_and_stay_there() {
        use crate::schedule::tests::zoned;
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        let mut s = zoned(&[(1, "z1", 5), (2, "z2", 5), (3, "z3", 5)]);
        s.leader_zones = vec!["z3".into()];
        let op = balance_leader(&info, &s).unwrap();
        assert_eq!(op.steps, vec![Step::TransferLeader(3)]);
        assert!(op.is_balance(), "a hand-issued transfer may replace it");
        // A leader inside the zones is not balanced out of them, however many it leads.
        let led = region(&[(3, 3, Voter), (1, 1, Voter), (2, 2, Voter)]);
        s.loads.get_mut(&3).unwrap().leaders = 50;
        assert!(balance_leader(&led, &s).is_none());
    }
}
