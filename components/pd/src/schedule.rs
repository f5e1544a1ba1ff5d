//! Operators and the replica checker.
//!
//! An operator is a list of steps for one region (add a learner, promote it, remove a
//! peer, move leadership). Each region heartbeat checks which steps the region already
//! shows as done and answers with the next one, so a lost response or a repeated
//! heartbeat is harmless. The replica checker makes operators: too few healthy voters ->
//! add a replica on the live store farthest from the others in failure domains (then the
//! least loaded); a voter on a down store -> replace it; two replicas in one failure
//! domain while another has room -> move one there.

use std::{collections::BTreeMap, time::Instant};

use proto::{metapb, pdpb};

use crate::{
    placement::{distinct_score, isolation, Location},
    region_tree::RegionInfo,
};

/// One step of an operator.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Add this peer as a learner.
    AddLearner(metapb::Peer),
    /// Make this learner a voter.
    Promote(metapb::Peer),
    /// Remove this peer.
    Remove(metapb::Peer),
    /// Move leadership to the peer on this store.
    TransferLeader(u64),
}

impl Step {
    fn is_done(&self, info: &RegionInfo) -> bool {
        let find = |id: u64| info.region.get_peers().iter().find(|p| p.get_id() == id);
        match self {
            Step::AddLearner(p) => find(p.get_id()).is_some(),
            Step::Promote(p) => {
                find(p.get_id()).is_some_and(|p| p.get_role() == metapb::PeerRole::Voter)
            }
            Step::Remove(p) => find(p.get_id()).is_none(),
            Step::TransferLeader(store) => info
                .leader
                .as_ref()
                .is_some_and(|l| l.get_store_id() == *store),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Step::AddLearner(p) => {
                format!("add learner {} on store {}", p.get_id(), p.get_store_id())
            }
            Step::Promote(p) => format!(
                "promote learner {} on store {}",
                p.get_id(),
                p.get_store_id()
            ),
            Step::Remove(p) => format!("remove peer {} on store {}", p.get_id(), p.get_store_id()),
            Step::TransferLeader(s) => format!("transfer leader to store {s}"),
        }
    }

    fn response(&self, info: &RegionInfo) -> pdpb::RegionHeartbeatResponse {
        let mut resp = pdpb::RegionHeartbeatResponse::default();
        resp.set_region_id(info.region.get_id());
        resp.set_region_epoch(info.region.get_region_epoch().clone());
        if let Some(l) = &info.leader {
            resp.set_target_peer(l.clone());
        }
        let change = |peer: &metapb::Peer, role, kind| {
            let mut p = peer.clone();
            p.set_role(role);
            let mut c = pdpb::ChangePeer::default();
            c.set_peer(p);
            c.set_change_type(kind);
            c
        };
        match self {
            Step::AddLearner(p) => resp.set_change_peer(change(
                p,
                metapb::PeerRole::Learner,
                pdpb::ConfChangeType::AddLearnerNode,
            )),
            Step::Promote(p) => resp.set_change_peer(change(
                p,
                metapb::PeerRole::Voter,
                pdpb::ConfChangeType::AddNode,
            )),
            Step::Remove(p) => {
                resp.set_change_peer(change(p, p.get_role(), pdpb::ConfChangeType::RemoveNode))
            }
            Step::TransferLeader(store) => {
                if let Some(p) = info
                    .region
                    .get_peers()
                    .iter()
                    .find(|p| p.get_store_id() == *store)
                {
                    let mut t = pdpb::TransferLeader::default();
                    t.set_peer(p.clone());
                    resp.set_transfer_leader(t);
                }
            }
        }
        resp
    }
}

/// A plan for one region.
#[derive(Clone, Debug)]
pub struct Operator {
    /// What it is for (shown by `kvctl operator list`).
    pub kind: &'static str,
    /// Its steps, in order.
    pub steps: Vec<Step>,
    /// When PD made it.
    pub created: Instant,
    /// What its unfinished steps will still change, as of the region's last heartbeat.
    pub influence: Vec<Influence>,
}

/// How much an operator will still change one store's counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Influence {
    /// The store.
    pub store: u64,
    /// Replicas it gains (negative: loses).
    pub regions: isize,
    /// Leaders it gains (negative: loses).
    pub leaders: isize,
}

impl Operator {
    /// A new operator for the region `info` describes.
    pub fn new(kind: &'static str, steps: Vec<Step>, info: &RegionInfo) -> Operator {
        let mut op = Operator {
            kind,
            steps,
            created: Instant::now(),
            influence: vec![],
        };
        op.refresh(info);
        op
    }

    /// Whether a balancer made it (one added by hand may replace it).
    pub fn is_balance(&self) -> bool {
        self.kind.starts_with("balance-")
    }

    /// Recomputes what is left to do from a newer report of the region.
    pub fn refresh(&mut self, info: &RegionInfo) {
        let mut inf = vec![];
        let leader = info.leader.as_ref().map(|l| l.get_store_id());
        let mut add = |store, regions, leaders| {
            inf.push(Influence {
                store,
                regions,
                leaders,
            })
        };
        for step in self.steps.iter().filter(|s| !s.is_done(info)) {
            match step {
                Step::AddLearner(p) => add(p.get_store_id(), 1, 0),
                Step::Remove(p) => add(p.get_store_id(), -1, 0),
                Step::TransferLeader(to) => {
                    add(*to, 0, 1);
                    if let Some(l) = leader {
                        add(l, 0, -1);
                    }
                }
                Step::Promote(_) => {}
            }
        }
        self.influence = inf;
    }

    /// The first step the region does not show as done, or `None` if all are.
    pub fn current(&self, info: &RegionInfo) -> Option<&Step> {
        // Steps are done in order, so the first step not done is the current one.
        self.steps.iter().find(|s| !s.is_done(info))
    }

    /// The heartbeat response for the current step; `None` while a learner that is to be
    /// promoted is still catching up (promoting it early would stall the quorum).
    pub fn response(&self, info: &RegionInfo) -> Option<pdpb::RegionHeartbeatResponse> {
        let step = self.current(info)?;
        if let Step::Promote(p) = step {
            if info.pending_peers.iter().any(|q| q.get_id() == p.get_id()) {
                return None;
            }
        }
        Some(step.response(info))
    }

    /// Whether every step is done.
    pub fn is_finished(&self, info: &RegionInfo) -> bool {
        self.current(info).is_none()
    }

    /// A one-line description of the current step.
    pub fn describe(&self, info: Option<&RegionInfo>) -> String {
        match info.and_then(|i| self.current(i)) {
            Some(s) => s.describe(),
            None => "finishing".into(),
        }
    }
}

/// Whether a store can take replicas and leaders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Up and heartbeating.
    Up,
    /// Silent for longer than max-store-down-time.
    Down,
    /// Being decommissioned: everything moves off it.
    Offline,
}

/// One store as schedulers see it: counts include running operators' unfinished steps,
/// so two operators never both fill the same gap.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// Up, down or offline.
    pub health: Health,
    /// Replicas it holds or will hold.
    pub regions: isize,
    /// Regions it leads or will lead.
    pub leaders: isize,
    /// Bytes of the replicas it holds: between stores with equal counts, the fuller
    /// gives and the emptier takes.
    pub size: u64,
    /// Running operators that touch it.
    pub operators: usize,
    /// It is shutting down and handing its leaders away: it takes none.
    pub stopping: bool,
    /// Where it sits: its values of the location labels.
    pub location: Location,
}

/// The stores that are not tombstone, how busy they may get, and the failure domains.
#[derive(Clone, Debug, Default)]
pub struct Stores {
    /// Store id -> load.
    pub loads: BTreeMap<u64, Load>,
    /// Balance operators may start on a store only while fewer than this many touch it.
    pub limit: usize,
    /// How many location labels are configured (0: stores have no locations).
    pub levels: usize,
    /// Replicas sharing this label (index into the location labels) and all above it are
    /// a placement fault; `None`: only replicas sharing every label are.
    pub isolation_level: Option<usize>,
    /// Zones (values of the top label) leaders should be in; empty: anywhere.
    pub leader_zones: Vec<String>,
}

static NOWHERE: Location = Vec::new();

impl Stores {
    /// Whether the store is up and heartbeating.
    pub fn is_live(&self, store: u64) -> bool {
        self.health(store) == Some(Health::Up)
    }

    /// The store's health; `None` for an unknown or tombstone store.
    pub fn health(&self, store: u64) -> Option<Health> {
        self.loads.get(&store).map(|l| l.health)
    }

    /// Live stores, fewest replicas first.
    pub fn candidates(&self) -> Vec<u64> {
        let mut live: Vec<(&u64, &Load)> = self
            .loads
            .iter()
            .filter(|(_, l)| l.health == Health::Up)
            .collect();
        live.sort_by_key(|(id, l)| (l.regions, **id));
        live.into_iter().map(|(id, _)| *id).collect()
    }

    /// Whether a balance operator may start on `store` now.
    pub fn has_room(&self, store: u64) -> bool {
        self.loads
            .get(&store)
            .is_some_and(|l| l.health == Health::Up && !l.stopping && l.operators < self.limit)
    }

    /// Those of `stores` that are not tombstone (PD knows where they sit).
    pub fn known(&self, stores: &[u64]) -> Vec<u64> {
        stores
            .iter()
            .copied()
            .filter(|s| self.loads.contains_key(s))
            .collect()
    }

    /// Where the store sits (no labels for an unknown store).
    pub fn location(&self, store: u64) -> &Location {
        self.loads.get(&store).map_or(&NOWHERE, |l| &l.location)
    }

    /// How far `store` stands from `others` in failure domains (higher: farther).
    pub fn score(&self, store: u64, others: &[u64]) -> u64 {
        let locs: Vec<&Location> = others
            .iter()
            .filter(|o| **o != store)
            .map(|o| self.location(*o))
            .collect();
        distinct_score(self.location(store), &locs)
    }

    /// The highest location label at which every two of `stores` differ (see
    /// `placement::isolation`).
    pub fn isolation(&self, stores: &[u64]) -> Option<usize> {
        let locs: Vec<&Location> = stores.iter().map(|s| self.location(*s)).collect();
        isolation(&locs)
    }

    /// Whether replicas on `stores` break the isolation rule (never without labels).
    pub fn is_isolation_fault(&self, stores: &[u64]) -> bool {
        if self.levels == 0 {
            return false;
        }
        match (self.isolation(stores), self.isolation_level) {
            (None, _) => true,
            (Some(level), Some(required)) => level > required,
            (Some(_), None) => false,
        }
    }

    /// The store to put a new replica on, given the stores that keep theirs: the live
    /// one, not in `taken`, farthest from `keep` in failure domains, then with the fewest
    /// replicas. `usable` narrows the choice further.
    pub fn best_target(
        &self,
        keep: &[u64],
        taken: &[u64],
        usable: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        self.candidates()
            .into_iter()
            .filter(|s| !taken.contains(s) && usable(*s))
            .map(|s| (s, self.score(s, keep)))
            // candidates() is fewest replicas first; max_by_key keeps the last maximum.
            .rev()
            .max_by_key(|(_, score)| *score)
            .map(|(s, _)| s)
    }

    /// Whether the store is in one of the leader zones (every store is when none are set).
    pub fn in_leader_zone(&self, store: u64) -> bool {
        self.leader_zones.is_empty()
            || self
                .location(store)
                .first()
                .is_some_and(|z| self.leader_zones.contains(z))
    }
}

/// Whether every peer is a voter that keeps up: only such regions are moved.
pub(crate) fn is_settled(info: &RegionInfo) -> bool {
    info.pending_peers.is_empty()
        && info.down_peers.is_empty()
        && info
            .region
            .get_peers()
            .iter()
            .all(|p| p.get_role() == metapb::PeerRole::Voter)
}

fn store_ids(peers: &[&metapb::Peer]) -> Vec<u64> {
    peers.iter().map(|p| p.get_store_id()).collect()
}

/// The steps that replace `old` with `new` (a fresh peer on another store): a learner,
/// promoted if `old` votes, leadership moved off `old` if it leads, then `old` removed.
pub fn replace_steps(info: &RegionInfo, old: &metapb::Peer, new: metapb::Peer) -> Vec<Step> {
    let target = new.get_store_id();
    let mut steps = vec![Step::AddLearner(new.clone())];
    if old.get_role() == metapb::PeerRole::Voter {
        steps.push(Step::Promote(new));
        if is_leader(info, old) {
            steps.push(Step::TransferLeader(target));
        }
    }
    steps.push(Step::Remove(old.clone()));
    steps
}

fn is_leader(info: &RegionInfo, peer: &metapb::Peer) -> bool {
    info.leader
        .as_ref()
        .is_some_and(|l| l.get_id() == peer.get_id())
}

fn learner_on(store: u64, id: u64) -> metapb::Peer {
    let mut peer = metapb::Peer::default();
    peer.set_id(id);
    peer.set_store_id(store);
    peer.set_role(metapb::PeerRole::Learner);
    peer
}

/// Decides whether a region needs a replica added, promoted, replaced or removed.
/// `alloc` hands out a peer id for a new replica.
pub fn check_replicas(
    info: &RegionInfo,
    stores: &Stores,
    max_replicas: usize,
    alloc: &mut dyn FnMut() -> Option<u64>,
) -> Option<Operator> {
    let peers = info.region.get_peers();
    let pending = |p: &metapb::Peer| info.pending_peers.iter().any(|q| q.get_id() == p.get_id());
    if let Some(l) = peers
        .iter()
        .find(|p| p.get_role() == metapb::PeerRole::Learner)
    {
        if !stores.is_live(l.get_store_id()) {
            return Some(Operator::new(
                "remove-down-learner",
                vec![Step::Remove(l.clone())],
                info,
            ));
        }
        if !pending(l) {
            return Some(Operator::new(
                "promote-learner",
                vec![Step::Promote(l.clone())],
                info,
            ));
        }
        return None;
    }
    let voters: Vec<&metapb::Peer> = peers
        .iter()
        .filter(|p| p.get_role() == metapb::PeerRole::Voter)
        .collect();
    // Voters to get rid of: down ones first, then those on stores being decommissioned.
    let mut leaving: Vec<&metapb::Peer> = voters
        .iter()
        .copied()
        .filter(|p| !stores.is_live(p.get_store_id()))
        .collect();
    leaving.sort_by_key(|p| stores.health(p.get_store_id()) == Some(Health::Offline));
    let healthy = voters.len() - leaving.len();
    if healthy < max_replicas {
        let used: Vec<u64> = peers.iter().map(|p| p.get_store_id()).collect();
        let keep: Vec<u64> = voters
            .iter()
            .filter(|p| stores.is_live(p.get_store_id()))
            .map(|p| p.get_store_id())
            .collect();
        let target = stores.best_target(&keep, &used, |_| true)?;
        let new = learner_on(target, alloc()?);
        return Some(match leaving.first() {
            Some(old) if voters.len() + 1 > max_replicas => {
                let kind = match stores.health(old.get_store_id()) {
                    Some(Health::Offline) => "move-off-offline-store",
                    _ => "replace-down-replica",
                };
                Operator::new(kind, replace_steps(info, old, new), info)
            }
            _ => {
                let steps = vec![Step::AddLearner(new.clone()), Step::Promote(new)];
                Operator::new("add-replica", steps, info)
            }
        });
    }
    if voters.len() > max_replicas {
        // The most redundant voter goes: the one nearest the others in failure domains,
        // a follower before the leader.
        let all = store_ids(&voters);
        let victim = leaving.first().copied().or_else(|| {
            voters
                .iter()
                .copied()
                .min_by_key(|p| (stores.score(p.get_store_id(), &all), is_leader(info, p)))
        })?;
        let mut steps = vec![];
        if is_leader(info, victim) {
            let heir = voters
                .iter()
                .find(|p| p.get_id() != victim.get_id() && stores.is_live(p.get_store_id()))?;
            steps.push(Step::TransferLeader(heir.get_store_id()));
        }
        steps.push(Step::Remove(victim.clone()));
        return Some(Operator::new("remove-extra-replica", steps, info));
    }
    improve_isolation(info, stores, alloc, true)
}

/// Moves the region's most redundant voter (the one nearest the others in failure
/// domains) to the store that stands farthest from the rest, if that spreads the region
/// wider. With `faults_only`, only when the region breaks the isolation rule (a repair);
/// otherwise whenever it helps (a balancer). Each such move raises the sum over all pairs
/// of replicas of how far apart they are, so moves never undo each other.
pub fn improve_isolation(
    info: &RegionInfo,
    stores: &Stores,
    alloc: &mut dyn FnMut() -> Option<u64>,
    faults_only: bool,
) -> Option<Operator> {
    if stores.levels == 0 || !is_settled(info) {
        return None;
    }
    let voters: Vec<&metapb::Peer> = info.region.get_peers().iter().collect();
    let all = store_ids(&voters);
    if !all.iter().all(|s| stores.is_live(*s)) || (faults_only && !stores.is_isolation_fault(&all))
    {
        return None;
    }
    let worst = voters
        .iter()
        .copied()
        .min_by_key(|p| (stores.score(p.get_store_id(), &all), is_leader(info, p)))?;
    let rest: Vec<u64> = all
        .iter()
        .copied()
        .filter(|s| *s != worst.get_store_id())
        .collect();
    let target = stores.best_target(&rest, &all, |s| stores.has_room(s))?;
    if stores.score(target, &rest) <= stores.score(worst.get_store_id(), &rest)
        || !stores.has_room(worst.get_store_id())
    {
        return None;
    }
    let new = learner_on(target, alloc()?);
    Some(Operator::new(
        "improve-isolation",
        replace_steps(info, worst, new),
        info,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Stores with the given health and replica counts, limit 4.
    pub(crate) fn stores(loads: &[(u64, Health, isize, isize)]) -> Stores {
        Stores {
            loads: loads
                .iter()
                .map(|&(id, health, regions, leaders)| {
                    (
                        id,
                        Load {
                            health,
                            regions,
                            leaders,
                            size: 0,
                            operators: 0,
                            stopping: false,
                            location: vec![],
                        },
                    )
                })
                .collect(),
            limit: 4,
            ..Default::default()
        }
    }

    fn live(ids: &[u64]) -> Stores {
        let loads: Vec<_> = ids.iter().map(|&i| (i, Health::Up, 0, 0)).collect();
        stores(&loads)
    }

    /// A region with id 1 led by its first peer.
    pub(crate) fn region(peers: &[(u64, u64, metapb::PeerRole)]) -> RegionInfo {
        let mut r = metapb::Region::default();
        r.set_id(1);
        for (id, store, role) in peers {
            let mut p = metapb::Peer::default();
            p.set_id(*id);
            p.set_store_id(*store);
            p.set_role(*role);
            r.mut_peers().push(p);
        }
        let leader = r.get_peers()[0].clone();
        RegionInfo {
            region: r,
            leader: Some(leader),
            ..Default::default()
        }
    }

    #[test]
    fn adds_replicas_until_max_then_replaces_down_ones() {
        use metapb::PeerRole::*;
        let stores = live(&[1, 2, 3]);
        let mut next = 100;
        let mut alloc = || {
            next += 1;
            Some(next)
        };
        let one = region(&[(1, 1, Voter)]);
        let op = check_replicas(&one, &stores, 3, &mut alloc).unwrap();
        assert_eq!(op.kind, "add-replica");
        match op.current(&one) {
            Some(Step::AddLearner(p)) => assert_eq!(p.get_store_id(), 2),
            other => panic!("{other:?}"),
        }
        // The learner is promoted once it is no longer pending.
        let mut with_learner = region(&[(1, 1, Voter), (101, 2, Learner)]);
        with_learner
            .pending_peers
            .push(with_learner.region.get_peers()[1].clone());
        assert!(check_replicas(&with_learner, &stores, 3, &mut alloc).is_none());
        with_learner.pending_peers.clear();
        assert_eq!(
            check_replicas(&with_learner, &stores, 3, &mut alloc)
                .unwrap()
                .kind,
            "promote-learner"
        );
        // Full and healthy: nothing to do.
        let full = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        assert!(check_replicas(&full, &stores, 3, &mut alloc).is_none());
        // Store 3 is down and store 4 is free: replace.
        let stores = live(&[1, 2, 4]);
        let op = check_replicas(&full, &stores, 3, &mut alloc).unwrap();
        assert_eq!(op.kind, "replace-down-replica");
        assert!(matches!(op.steps.last(), Some(Step::Remove(p)) if p.get_store_id() == 3));
        // With no free store there is nothing to do.
        let stores = live(&[1, 2]);
        assert!(check_replicas(&full, &stores, 3, &mut alloc).is_none());
    }

    #[test]
    fn a_leader_on_an_offline_store_hands_over_before_it_is_removed() {
        use metapb::PeerRole::*;
        let full = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        let stores = stores(&[
            (1, Health::Offline, 5, 5),
            (2, Health::Up, 5, 0),
            (3, Health::Up, 5, 0),
            (4, Health::Up, 0, 0),
        ]);
        let op = check_replicas(&full, &stores, 3, &mut || Some(9)).unwrap();
        assert_eq!(op.kind, "move-off-offline-store");
        let kinds: Vec<String> = op.steps.iter().map(|s| s.describe()).collect();
        assert_eq!(
            kinds,
            [
                "add learner 9 on store 4",
                "promote learner 9 on store 4",
                "transfer leader to store 4",
                "remove peer 1 on store 1"
            ]
        );
        // Until the learner exists, store 4 counts it as coming and store 1 as going.
        assert!(op.influence.contains(&Influence {
            store: 4,
            regions: 1,
            leaders: 0
        }));
        assert!(op.influence.contains(&Influence {
            store: 1,
            regions: -1,
            leaders: 0
        }));
        assert!(op.influence.contains(&Influence {
            store: 1,
            regions: 0,
            leaders: -1
        }));
    }

    /// Stores each in a zone (on its own host), with replica counts; isolation at zone.
    pub(crate) fn zoned(loads: &[(u64, &str, isize)]) -> Stores {
        let mut s = stores(
            &loads
                .iter()
                .map(|&(id, _, regions)| (id, Health::Up, regions, 0))
                .collect::<Vec<_>>(),
        );
        for &(id, zone, _) in loads {
            s.loads.get_mut(&id).unwrap().location = vec![zone.to_string(), format!("h{id}")];
        }
        s.levels = 2;
        s.isolation_level = Some(0);
        s
    }

    fn stores_of(op: &Operator) -> Vec<String> {
        op.steps.iter().map(|s| s.describe()).collect()
    }

    #[test]
    fn a_new_replica_goes_to_a_zone_the_region_lacks_before_the_emptiest_store() {
        use metapb::PeerRole::*;
        let s = zoned(&[
            (1, "z1", 9),
            (2, "z1", 0),
            (3, "z2", 5),
            (4, "z2", 4),
            (5, "z3", 7),
        ]);
        let one = region(&[(1, 1, Voter)]);
        let op = check_replicas(&one, &s, 3, &mut || Some(9)).unwrap();
        assert_eq!(
            stores_of(&op)[0],
            "add learner 9 on store 4",
            "z2's emptier store"
        );
        let two = region(&[(1, 1, Voter), (4, 4, Voter)]);
        let op = check_replicas(&two, &s, 3, &mut || Some(9)).unwrap();
        assert_eq!(
            stores_of(&op)[0],
            "add learner 9 on store 5",
            "the only store in z3"
        );
        // A down store in z2 is replaced in z2 (store 3), keeping the spread.
        let mut down = s.clone();
        down.loads.get_mut(&4).unwrap().health = Health::Down;
        let full = region(&[(1, 1, Voter), (4, 4, Voter), (5, 5, Voter)]);
        let op = check_replicas(&full, &down, 3, &mut || Some(9)).unwrap();
        assert_eq!(op.kind, "replace-down-replica");
        assert_eq!(stores_of(&op)[0], "add learner 9 on store 3");
    }

    #[test]
    fn two_replicas_in_one_zone_are_repaired_once_another_zone_has_room() {
        use metapb::PeerRole::*;
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter)]);
        let two_zones = zoned(&[(1, "z1", 1), (2, "z1", 1), (3, "z2", 1), (4, "z2", 0)]);
        assert!(two_zones.is_isolation_fault(&[1, 2, 3]));
        assert!(
            check_replicas(&info, &two_zones, 3, &mut || Some(9)).is_none(),
            "no zone has room: nothing better to do"
        );
        let mut three = two_zones.clone();
        three.loads.insert(5, three.loads[&4].clone());
        three.loads.get_mut(&5).unwrap().location = vec!["z3".into(), "h5".into()];
        let op = check_replicas(&info, &three, 3, &mut || Some(9)).unwrap();
        assert_eq!(op.kind, "improve-isolation");
        // The follower in z1 moves (store 2), not the leader on store 1.
        assert_eq!(
            stores_of(&op),
            [
                "add learner 9 on store 5",
                "promote learner 9 on store 5",
                "remove peer 2 on store 2"
            ]
        );
        // Spread over three zones: no fault, nothing to repair.
        let spread = region(&[(1, 1, Voter), (3, 3, Voter), (5, 5, Voter)]);
        assert!(!three.is_isolation_fault(&[1, 3, 5]));
        assert!(check_replicas(&spread, &three, 3, &mut || Some(9)).is_none());
    }

    #[test]
    fn the_extra_voter_removed_is_the_one_sharing_a_zone() {
        use metapb::PeerRole::*;
        let s = zoned(&[(1, "z1", 1), (2, "z2", 1), (3, "z3", 1), (4, "z2", 1)]);
        let info = region(&[(1, 1, Voter), (2, 2, Voter), (3, 3, Voter), (4, 4, Voter)]);
        let op = check_replicas(&info, &s, 3, &mut || Some(9)).unwrap();
        assert_eq!(op.kind, "remove-extra-replica");
        assert!(
            matches!(op.steps.last(), Some(Step::Remove(p)) if [2, 4].contains(&p.get_store_id())),
            "{:?}",
            op.steps
        );
    }
}
