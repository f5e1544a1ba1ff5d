//! Operators and the replica checker.
//!
//! An operator is a list of steps for one region (add a learner, promote it, remove a
//! peer, move leadership). Each region heartbeat checks which steps the region already
//! shows as done and answers with the next one, so a lost response or a repeated
//! heartbeat is harmless. The replica checker makes operators: too few healthy voters ->
//! add a replica on the least-loaded live store; a voter on a down store -> replace it.

use std::time::Instant;

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

    fn describe(&self) -> String {
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
        resp.region_id = info.region.get_id();
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
}

impl Operator {
    /// A new operator.
    pub fn new(kind: &'static str, steps: Vec<Step>) -> Operator {
        Operator {
            kind,
            steps,
            created: Instant::now(),
        }
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

/// What the replica checker needs to know about stores.
pub trait StoreView {
    /// Whether the store is up and has heartbeated recently.
    fn is_live(&self, store_id: u64) -> bool;
    /// Live stores that may take a new replica, least loaded first.
    fn candidates(&self) -> Vec<u64>;
}

/// Decides whether a region needs a replica added, promoted, replaced or removed.
/// `alloc` hands out a peer id for a new replica.
pub fn check_replicas(
    info: &RegionInfo,
    stores: &dyn StoreView,
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
            ));
        }
        if !pending(l) {
            return Some(Operator::new(
                "promote-learner",
                vec![Step::Promote(l.clone())],
            ));
        }
        return None;
    }
    let voters: Vec<&metapb::Peer> = peers
        .iter()
        .filter(|p| p.get_role() == metapb::PeerRole::Voter)
        .collect();
    let down: Vec<&metapb::Peer> = voters
        .iter()
        .copied()
        .filter(|p| !stores.is_live(p.get_store_id()))
        .collect();
    let healthy = voters.len() - down.len();
    if healthy < max_replicas {
        let used: Vec<u64> = peers.iter().map(|p| p.get_store_id()).collect();
        let target = stores
            .candidates()
            .into_iter()
            .find(|s| !used.contains(s))?;
        let mut peer = metapb::Peer::default();
        peer.set_id(alloc()?);
        peer.set_store_id(target);
        peer.set_role(metapb::PeerRole::Learner);
        let mut steps = vec![Step::AddLearner(peer.clone()), Step::Promote(peer)];
        let kind = match down.first() {
            Some(d) if voters.len() + 1 > max_replicas => {
                steps.push(Step::Remove((*d).clone()));
                "replace-down-replica"
            }
            _ => "add-replica",
        };
        return Some(Operator::new(kind, steps));
    }
    if voters.len() > max_replicas {
        let leader_store = info.leader.as_ref().map(|l| l.get_store_id());
        let victim = down.first().copied().or_else(|| {
            voters
                .iter()
                .copied()
                .find(|p| Some(p.get_store_id()) != leader_store)
        })?;
        return Some(Operator::new(
            "remove-extra-replica",
            vec![Step::Remove(victim.clone())],
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stores {
        live: Vec<u64>,
    }
    impl StoreView for Stores {
        fn is_live(&self, s: u64) -> bool {
            self.live.contains(&s)
        }
        fn candidates(&self) -> Vec<u64> {
            self.live.clone()
        }
    }

    fn region(peers: &[(u64, u64, metapb::PeerRole)]) -> RegionInfo {
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
        let stores = Stores {
            live: vec![1, 2, 3],
        };
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
        let stores = Stores {
            live: vec![1, 2, 4],
        };
        let op = check_replicas(&full, &stores, 3, &mut alloc).unwrap();
        assert_eq!(op.kind, "replace-down-replica");
        assert!(matches!(op.steps.last(), Some(Step::Remove(p)) if p.get_store_id() == 3));
        // With no free store there is nothing to do.
        let stores = Stores { live: vec![1, 2] };
        assert!(check_replicas(&full, &stores, 3, &mut alloc).is_none());
    }
}
