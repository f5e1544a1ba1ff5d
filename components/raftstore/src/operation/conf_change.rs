//! Membership changes, one peer at a time (so raft-rs never needs a joint configuration):
//! add a learner, promote it once it has caught up, remove a peer. Also the operators PD
//! sends back in heartbeat responses.
//!
//! Both halves: the leader checks and proposes a change on the Raft poller; every
//! replica applies it on the apply poller, which reports the new region and waits; the
//! peer then tells raft-rs, writes the region's new shape (fsynced) and lets the apply
//! side go on (see `crate::fsm::apply`). A crash before that write applies the change
//! again after the restart.

use proto::{
    metapb, pdpb,
    raft_cmdpb::{AdminCmdType, AdminRequest, ChangePeerRequest, ConfChangeType, RaftCmdRequest},
};
use protobuf::Message as _;
use raft::eraftpb::{self, ConfChangeSingle, ConfChangeV2, Entry};
use slog::{info, warn};

use crate::{
    fsm::{
        apply::{ApplyContext, ApplyFsm},
        peer::{PeerFsm, PollContext},
    },
    msg::{Callback, CmdResponse, ExecResult},
    util::check_epoch,
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

impl PeerFsm {
    /// Whether a voter can help commit now: this peer, or one heard from within an
    /// election timeout that does not need a snapshot.
    fn is_healthy_voter(&self, peer_id: u64, ctx: &PollContext) -> bool {
        if peer_id == self.peer.get_id() {
            return true;
        }
        let timeout = ctx.cfg.raft_base_tick_interval * ctx.cfg.raft_election_timeout_ticks as u32;
        let heard = self
            .peer_heartbeats
            .get(&peer_id)
            .is_some_and(|t| t.elapsed() <= timeout);
        let truncated = self.raft.store().truncated_index();
        let caught_up = self
            .raft
            .raft
            .prs()
            .get(peer_id)
            .is_some_and(|p| p.matched >= truncated);
        heard && caught_up
    }

    /// Proposes the membership change in `cmd`, checked for leadership; its header's
    /// epoch is checked again when it applies.
    pub(crate) fn propose_conf_change(
        &mut self,
        cmd: RaftCmdRequest,
        cb: Callback<CmdResponse>,
        ctx: &PollContext,
    ) {
        if let Err(e) = check_epoch(self.region(), cmd.get_header().get_region_epoch(), true) {
            return cb(Err(e));
        }
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
        if change.get_change_type() == ConfChangeType::RemoveNode {
            let removed = change.get_peer().get_id();
            if let Err(e) = check_quorum_after_removal(self.region(), removed, |id| {
                self.is_healthy_voter(id, ctx)
            }) {
                return cb(Err(e));
            }
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

    /// Acts on an applied membership change: raft-rs learns it, and this round's write
    /// holds the region's new shape.
    pub(crate) fn on_change_peer(
        &mut self,
        index: u64,
        cc: ConfChangeV2,
        region: metapb::Region,
        ctx: &mut PollContext,
    ) {
        if cc.get_changes().is_empty() {
            return;
        }
        // The apply side has applied the change; nothing of it is on disk yet.
        fail::fail_point!("raft_before_persisting_a_conf_change");
        if let Err(e) = self.raft.apply_conf_change(&cc) {
            panic!(
                "region {} cannot apply a committed membership change: {e}",
                self.region_id()
            );
        }
        info!(self.logger, "membership changed"; "peers" => ?region.get_peers(),
              "conf_ver" => region.get_region_epoch().get_conf_ver());
        self.raft.mut_store().set_region(region.clone(), index);
        ctx.store_meta.lock().set_region(region.clone());
        if !region
            .get_peers()
            .iter()
            .any(|p| p.get_id() == self.peer.get_id())
        {
            self.destroy(ctx, "removed from the region");
            return;
        }
        self.region_persist = Some(index);
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

    /// Carries out an operator from PD, if this peer still leads and the region is still
    /// as PD saw it: an operator decided for an older shape of the region (its epoch) is
    /// stale and is dropped; PD decides again from the next heartbeat.
    pub(crate) fn on_operator(&mut self, op: pdpb::RegionHeartbeatResponse, ctx: &PollContext) {
        if !self.is_leader() {
            return;
        }
        if let Err(e) = check_epoch(self.region(), op.get_region_epoch(), true) {
            warn!(self.logger, "dropping a stale operator from PD"; "err" => %e);
            return;
        }
        if op.has_transfer_leader() {
            if let Err(e) = self.transfer_leader(op.get_transfer_leader().get_peer(), ctx) {
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
            let mut cmd = self.change_peer_command(change);
            // The epoch PD decided on: if the region changes before this applies, the
            // apply-time check refuses it.
            cmd.mut_header()
                .set_region_epoch(op.get_region_epoch().clone());
            let logger = self.logger.clone();
            let cb: Callback<CmdResponse> = Box::new(move |res| {
                if let Err(e) = res {
                    warn!(logger, "PD's membership change failed"; "err" => %e);
                }
            });
            self.propose_conf_change(cmd, cb, ctx);
        }
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

impl ApplyFsm {
    /// Applies a membership change to the region in memory and reports it; an entry
    /// whose epoch is stale applies as a change of nothing.
    pub(crate) fn exec_conf_change(
        &mut self,
        entry: &Entry,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        fail::fail_point!("apply_conf_change");
        let cc = ConfChangeV2::parse_from_bytes(&entry.data)?;
        let cmd = RaftCmdRequest::parse_from_bytes(cc.get_context())?;
        if let Err(e) = check_epoch(&self.region, cmd.get_header().get_region_epoch(), true) {
            // Raft must still see the entry applied, as a change of nothing.
            self.results.push(ExecResult::ChangePeer {
                index: entry.index,
                cc: ConfChangeV2::default(),
                region: self.region.clone(),
            });
            return Err(e);
        }
        let mut region = self.region.clone();
        for change in cmd.get_admin_request().get_change_peer_v2().get_changes() {
            apply_change(&mut region, change);
        }
        info!(self.logger, "applied membership change"; "peers" => ?region.get_peers(), "index" => entry.index);
        // The peer writes a region that changed, and only then lets this side go on; it
        // ignores a change of nothing, so this side must not wait for one.
        if !cc.get_changes().is_empty() {
            self.fence(entry.index, ctx);
        }
        self.region = region.clone();
        self.results.push(ExecResult::ChangePeer {
            index: entry.index,
            cc,
            region: region.clone(),
        });
        Ok(CmdResponse {
            region: Some(region),
            ..Default::default()
        })
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
