//! Membership changes on the Raft poller: proposing them, and the operators PD sends back
//! in heartbeat responses.

use proto::{
    metapb, pdpb,
    raft_cmdpb::{AdminCmdType, AdminRequest, ChangePeerRequest, ConfChangeType, RaftCmdRequest},
};
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeV2};
use slog::{info, warn};

use super::PeerFsm;
use crate::{
    conf_change::{check_quorum_after_removal, raft_change_type, validate_change},
    msg::{Callback, CmdResponse},
    poll::PollContext,
    Error,
};

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
        if let Err(e) =
            crate::util::check_epoch(self.region(), cmd.get_header().get_region_epoch(), true)
        {
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

    /// Carries out an operator from PD, if this peer still leads and the region is still
    /// as PD saw it: an operator decided for an older shape of the region (its epoch) is
    /// stale and is dropped; PD decides again from the next heartbeat.
    pub(crate) fn on_operator(&mut self, op: pdpb::RegionHeartbeatResponse, ctx: &PollContext) {
        if !self.is_leader() {
            return;
        }
        if let Err(e) = crate::util::check_epoch(self.region(), op.get_region_epoch(), true) {
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
