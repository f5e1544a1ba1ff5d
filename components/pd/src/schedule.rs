//! Operators and the replica checker.
//!
//! An operator is a list of steps for one region (add a learner, promote it, remove a
//! peer, move leadership). Each region heartbeat checks which steps the region already
//! shows as done and answers with the next one, so a lost response or a repeated
//! heartbeat is harmless. The replica checker makes operators: too few healthy voters ->
//! add a replica on the least-loaded live store; a voter on a down store -> replace it.

use std::{collections::BTreeMap, time::Instant};

use proto::{metapb, pdpb};

use crate::region_tree::RegionInfo;

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
#[derive(Clone, Copy, Debug, PartialEq)]
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
}

/// The stores that are not tombstone, and how busy they may get.
#[derive(Clone, Debug, Default)]
pub struct Stores {
    /// Store id -> load.
    pub loads: BTreeMap<u64, Load>,
    /// Balance operators may start on a store only while fewer than this many touch it.
    pub limit: usize,
}

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
        let target = stores
            .candidates()
            .into_iter()
            .find(|s| !used.contains(s))?;
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
        let victim = leaving
            .first()
            .copied()
            .or_else(|| voters.iter().copied().find(|p| !is_leader(info, p)))?;
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
    None
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
                        },
                    )
                })
                .collect(),
            limit: 4,
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
}
