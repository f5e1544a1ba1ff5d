//! Membership changes, one peer at a time (so raft-rs never needs a joint configuration):
//! add a learner, promote it once it has caught up, remove a peer. Also the operators PD
//! sends back in heartbeat responses.

use proto::{
    metapb, pdpb,
    raft_cmdpb::{AdminCmdType, AdminRequest, ChangePeerRequest, ConfChangeType, RaftCmdRequest},
};
use protobuf::Message as _;
use raft::eraftpb::{self, ConfChangeSingle, ConfChangeV2};
use slog::{info, warn};

use crate::{
    fsm::peer::PeerFsm,
    msg::{Callback, CmdResponse},
    poll::PollContext,
    Error, Result,
};

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

fn raft_change_type(t: ConfChangeType) -> eraftpb::ConfChangeType {
    match t {
        ConfChangeType::AddNode => eraftpb::ConfChangeType::AddNode,
        ConfChangeType::RemoveNode => eraftpb::ConfChangeType::RemoveNode,
        ConfChangeType::AddLearnerNode => eraftpb::ConfChangeType::AddLearnerNode,
    }
}

impl PeerFsm {
    /// Proposes the membership change in `cmd` (already checked for leadership and epoch).
    pub(crate) fn propose_conf_change(&mut self, cmd: RaftCmdRequest, cb: Callback<CmdResponse>) {
        let changes = cmd.get_admin_request().get_change_peer_v2().get_changes();
        let [change] = changes else {
            cb(Err(Error::InvalidRequest(format!(
                "membership changes go one peer at a time; got {}",
                changes.len()
            ))));
            return;
        };
        match validate_change(self.region(), &self.peer, change) {
            Err(e) => return cb(Err(e)),
            Ok(false) => {
                return cb(Ok(CmdResponse {
                    region: Some(self.region().clone()),
                    ..Default::default()
                }))
            }
            Ok(true) => {}
        }
        if self.raft.raft.has_pending_conf() {
            cb(Err(Error::InvalidRequest(format!(
                "another membership change of region {} is in progress",
                self.region_id()
            ))));
            return;
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(raft_change_type(change.get_change_type()));
        single.node_id = change.get_peer().get_id();
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        cc.set_context(
            cmd.write_to_bytes()
                .expect("encoding a command into memory cannot fail")
                .into(),
        );
        info!(self.logger, "proposing membership change";
              "change" => ?change.get_change_type(), "peer" => change.get_peer().get_id(),
              "store" => change.get_peer().get_store_id());
        self.propose(
            "conf_change",
            |raft| raft.propose_conf_change(vec![], cc),
            cb,
        );
    }

    /// Acts on an applied membership change.
    pub(crate) fn on_change_peer(
        &mut self,
        cc: ConfChangeV2,
        region: metapb::Region,
        ctx: &mut PollContext,
    ) {
        if cc.get_changes().is_empty() {
            return;
        }
        if let Err(e) = self.raft.apply_conf_change(&cc) {
            panic!(
                "region {} cannot apply a committed membership change: {e}",
                self.region_id()
            );
        }
        info!(self.logger, "membership changed"; "peers" => ?region.get_peers(),
              "conf_ver" => region.get_region_epoch().get_conf_ver());
        self.raft.mut_store().set_region(region.clone());
        ctx.store_meta.lock().set_region(region.clone());
        if !region
            .get_peers()
            .iter()
            .any(|p| p.get_id() == self.peer.get_id())
        {
            self.destroy(ctx, "removed from the region");
            return;
        }
        if let Some(me) = self.peer_by_id(self.peer.get_id()) {
            self.peer = me;
        }
        if self.is_leader() {
            let now = std::time::Instant::now();
            for p in region.get_peers() {
                self.peer_heartbeats.entry(p.get_id()).or_insert(now);
            }
            self.peer_heartbeats
                .retain(|id, _| region.get_peers().iter().any(|p| p.get_id() == *id));
            self.heartbeat_due = true;
        }
    }

    /// Carries out an operator from PD, if this peer still leads.
    pub(crate) fn on_operator(&mut self, op: pdpb::RegionHeartbeatResponse) {
        if !self.is_leader() {
            return;
        }
        if op.has_transfer_leader() {
            if let Err(e) = self.transfer_leader_to(op.get_transfer_leader().get_peer()) {
                warn!(self.logger, "cannot follow PD's leader transfer"; "err" => %e);
            }
        }
        if op.has_change_peer() {
            let ch = op.get_change_peer();
            let mut change = ChangePeerRequest::default();
            change.set_change_type(match ch.get_change_type() {
                pdpb::ConfChangeType::AddNode => ConfChangeType::AddNode,
                pdpb::ConfChangeType::RemoveNode => ConfChangeType::RemoveNode,
                pdpb::ConfChangeType::AddLearnerNode => ConfChangeType::AddLearnerNode,
            });
            change.set_peer(ch.get_peer().clone());
            let cmd = self.change_peer_command(change);
            let logger = self.logger.clone();
            let cb: Callback<CmdResponse> = Box::new(move |res| {
                if let Err(e) = res {
                    warn!(logger, "PD's membership change failed"; "err" => %e);
                }
            });
            self.propose_conf_change(cmd, cb);
        }
    }

    pub(crate) fn transfer_leader_to(&mut self, to: &metapb::Peer) -> Result<()> {
        let mut target = to.clone();
        if target.get_store_id() == 0 {
            if let Some(p) = self.peer_by_id(to.get_id()) {
                target = p;
            }
        }
        self.transfer_leader(&target)
    }

    /// A ChangePeerV2 admin command for this region at its current epoch.
    pub(crate) fn change_peer_command(&self, change: ChangePeerRequest) -> RaftCmdRequest {
        let mut admin = AdminRequest::default();
        admin.set_cmd_type(AdminCmdType::ChangePeerV2);
        admin.mut_change_peer_v2().mut_changes().push(change);
        self.admin_command(admin)
    }

    /// An admin command from this peer for its region at the current epoch.
    pub(crate) fn admin_command(&self, admin: AdminRequest) -> RaftCmdRequest {
        let mut cmd = RaftCmdRequest::default();
        let header = cmd.mut_header();
        header.set_region_id(self.region_id());
        header.set_peer(self.peer.clone());
        header.set_region_epoch(self.region().get_region_epoch().clone());
        cmd.set_admin_request(admin);
        cmd
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
