//! Membership changes, one peer at a time (so raft-rs never needs a joint configuration):
//! add a learner, promote it once it has caught up, remove a peer. Also the operators PD
//! sends back in heartbeat responses.
//!
//! This module holds the checks and the region edit both sides share; proposing runs on
//! the Raft poller (`fsm::peer::conf_change`), applying on the apply poller.

use proto::{
    metapb,
    raft_cmdpb::{ChangePeerRequest, ConfChangeType},
};
use raft::eraftpb::{self};

use crate::{Error, Result};

/// Checks that a membership change makes sense for `region`, led by `leader`. Returns
/// `Ok(false)` when the change is already in effect (PD repeats operators until done).
pub fn validate_change(
    region: &metapb::Region,
    leader: &metapb::Peer,
    change: &ChangePeerRequest,
) -> Result<bool> {
    let peer = change.get_peer();
    let on_store = region
        .get_peers()
        .iter()
        .find(|p| p.get_store_id() == peer.get_store_id());
    let invalid = |why: String| Err(Error::InvalidRequest(why));
    match change.get_change_type() {
        ConfChangeType::AddLearnerNode => match on_store {
            Some(p) if p.get_id() == peer.get_id() && p.get_role() == metapb::PeerRole::Learner => {
                Ok(false)
            }
            Some(p) => invalid(format!(
                "store {} already has peer {} of region {}",
                peer.get_store_id(),
                p.get_id(),
                region.get_id()
            )),
            None => Ok(true),
        },
        ConfChangeType::AddNode => match on_store {
            Some(p) if p.get_id() != peer.get_id() => invalid(format!(
                "store {} already has peer {} of region {}",
                peer.get_store_id(),
                p.get_id(),
                region.get_id()
            )),
            Some(p) if p.get_role() == metapb::PeerRole::Voter => Ok(false),
            _ => Ok(true),
        },
        ConfChangeType::RemoveNode => {
            let Some(p) = on_store.filter(|p| p.get_id() == peer.get_id()) else {
                return Ok(false);
            };
            if p.get_id() == leader.get_id() {
                return invalid(format!(
                    "peer {} is the leader of region {}; transfer leadership first",
                    p.get_id(),
                    region.get_id()
                ));
            }
            let voters = region
                .get_peers()
                .iter()
                .filter(|p| p.get_role() == metapb::PeerRole::Voter)
                .count();
            if p.get_role() == metapb::PeerRole::Voter && voters <= 1 {
                return invalid(format!(
                    "region {} would have no voter left",
                    region.get_id()
                ));
            }
            Ok(true)
        }
    }
}

/// The region after one applied change.
pub fn apply_change(region: &mut metapb::Region, change: &ChangePeerRequest) {
    let peer = change.get_peer();
    let peers = region.mut_peers();
    match change.get_change_type() {
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let role = if change.get_change_type() == ConfChangeType::AddNode {
                metapb::PeerRole::Voter
            } else {
                metapb::PeerRole::Learner
            };
            match peers.iter_mut().find(|p| p.get_id() == peer.get_id()) {
                Some(p) => p.set_role(role),
                None => {
                    let mut p = peer.clone();
                    p.set_role(role);
                    peers.push(p);
                }
            }
        }
        ConfChangeType::RemoveNode => peers.retain(|p| p.get_id() != peer.get_id()),
    }
    let epoch = region.mut_region_epoch();
    epoch.set_conf_ver(epoch.get_conf_ver() + 1);
}

/// Checks that the voters left after removing `removed` can still commit: at least a
/// majority of them must be `healthy`. Removing a healthy voter while another is down
/// would otherwise leave a region that cannot elect a leader or take a write.
pub fn check_quorum_after_removal(
    region: &metapb::Region,
    removed: u64,
    healthy: impl Fn(u64) -> bool,
) -> Result<()> {
    let left: Vec<u64> = region
        .get_peers()
        .iter()
        .filter(|p| p.get_role() == metapb::PeerRole::Voter && p.get_id() != removed)
        .map(|p| p.get_id())
        .collect();
    let alive = left.iter().filter(|id| healthy(**id)).count();
    let quorum = left.len() / 2 + 1;
    if alive < quorum {
        return Err(Error::InvalidRequest(format!(
            "removing peer {removed} of region {} would leave {alive} healthy voters of {}, \
             fewer than the {quorum} needed to commit; replace the unhealthy voters first",
            region.get_id(),
            left.len()
        )));
    }
    Ok(())
}

pub(crate) fn raft_change_type(t: ConfChangeType) -> eraftpb::ConfChangeType {
    match t {
        ConfChangeType::AddNode => eraftpb::ConfChangeType::AddNode,
        ConfChangeType::RemoveNode => eraftpb::ConfChangeType::RemoveNode,
        ConfChangeType::AddLearnerNode => eraftpb::ConfChangeType::AddLearnerNode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, store: u64, role: metapb::PeerRole) -> metapb::Peer {
        let mut p = metapb::Peer::default();
        p.set_id(id);
        p.set_store_id(store);
        p.set_role(role);
        p
    }

    fn change(t: ConfChangeType, p: metapb::Peer) -> ChangePeerRequest {
        let mut c = ChangePeerRequest::default();
        c.set_change_type(t);
        c.set_peer(p);
        c
    }

    #[test]
    fn removal_must_leave_a_healthy_majority() {
        use metapb::PeerRole::*;
        let mut r = metapb::Region::default();
        for id in 1..=3 {
            r.mut_peers().push(peer(id, id, Voter));
        }
        r.mut_peers().push(peer(4, 4, Learner));
        // Peer 3 is down: removing healthy 2 leaves {1, 3} with one healthy of two.
        let healthy = |id| id != 3;
        assert!(check_quorum_after_removal(&r, 2, healthy).is_err());
        assert!(check_quorum_after_removal(&r, 3, healthy).is_ok());
        // Learners neither count nor matter.
        assert!(check_quorum_after_removal(&r, 4, |id| id != 4).is_ok());
        assert!(check_quorum_after_removal(&r, 2, |id| id == 1).is_err());
    }

    #[test]
    fn learner_then_promote_then_remove() {
        use metapb::PeerRole::*;
        let mut r = metapb::Region::default();
        r.set_id(1);
        r.mut_peers().push(peer(1, 1, Voter));
        let leader = peer(1, 1, Voter);
        let add = change(ConfChangeType::AddLearnerNode, peer(2, 2, Learner));
        assert!(validate_change(&r, &leader, &add).unwrap());
        apply_change(&mut r, &add);
        assert_eq!(r.get_region_epoch().get_conf_ver(), 1);
        assert!(
            !validate_change(&r, &leader, &add).unwrap(),
            "repeat is a no-op"
        );
        let other = change(ConfChangeType::AddLearnerNode, peer(9, 2, Learner));
        assert!(
            validate_change(&r, &leader, &other).is_err(),
            "one peer per store"
        );
        let promote = change(ConfChangeType::AddNode, peer(2, 2, Voter));
        assert!(validate_change(&r, &leader, &promote).unwrap());
        apply_change(&mut r, &promote);
        assert_eq!(r.get_peers()[1].get_role(), Voter);
        let remove_leader = change(ConfChangeType::RemoveNode, peer(1, 1, Voter));
        assert!(validate_change(&r, &leader, &remove_leader).is_err());
        let remove = change(ConfChangeType::RemoveNode, peer(2, 2, Voter));
        assert!(validate_change(&r, &leader, &remove).unwrap());
        apply_change(&mut r, &remove);
        assert_eq!(r.get_peers().len(), 1);
        assert_eq!(r.get_region_epoch().get_conf_ver(), 3);
    }
}
