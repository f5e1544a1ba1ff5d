//! Leadership transfer, asked for by PD, an operator (kvctl) or a shutdown. Raft drops
//! proposals while a transfer is under way, so a transfer goes only to a peer that can
//! take over at once (replicating, heard from lately, close behind). Raft sends the
//! transferee one TimeoutNow; if it is lost (say to a store that was stopping or had just
//! restarted) raft would drop writes for a whole election timeout, so the leader sends it
//! again each heartbeat interval and gives up after `raftstore.leader-transfer-timeout`.

use proto::metapb;
use slog::{info, warn};

use crate::{
    fsm::peer::{PeerFsm, PollContext},
    Error, Result,
};

impl PeerFsm {
    /// Hands leadership to this region's voter on `to`'s store (or, if `to` names no
    /// store, to the peer with `to`'s id).
    pub(crate) fn transfer_leader(&mut self, to: &metapb::Peer, ctx: &PollContext) -> Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let target = self
            .region()
            .get_peers()
            .iter()
            .find(|p| match to.get_store_id() {
                0 => p.get_id() == to.get_id(),
                store => p.get_store_id() == store,
            })
            .cloned()
            .ok_or_else(|| {
                Error::InvalidRequest(match to.get_store_id() {
                    0 => format!("region {} has no peer {}", self.region_id(), to.get_id()),
                    store => format!("region {} has no peer on store {store}", self.region_id()),
                })
            })?;
        if target.get_role() == metapb::PeerRole::Learner {
            return Err(Error::InvalidRequest(format!(
                "peer {} on store {} is a learner and cannot lead",
                target.get_id(),
                target.get_store_id()
            )));
        }
        if target.get_id() != self.peer.get_id() {
            self.check_transferee(&target, ctx)?;
            info!(self.logger, "transferring leadership"; "to" => target.get_id());
            self.raft.transfer_leader(target.get_id());
        }
        Ok(())
    }

    /// Refuses a transferee that could not take over at once.
    fn check_transferee(&self, target: &metapb::Peer, ctx: &PollContext) -> Result<()> {
        if self.transferee_ready(target.get_id(), ctx) {
            return Ok(());
        }
        Err(Error::Busy(format!(
            "peer {} on store {} is not caught up with the leader of region {} \
             (heard from within an election timeout, replicating, at most \
             raftstore.leader-transfer-max-log-lag entries behind); try again later",
            target.get_id(),
            target.get_store_id(),
            self.region_id()
        )))
    }

    /// Whether peer `id` could take over at once: heard from within an election
    /// timeout, replicating steadily, and at most `leader-transfer-max-log-lag` entries
    /// behind this leader's log.
    pub(crate) fn transferee_ready(&self, id: u64, ctx: &PollContext) -> bool {
        let cfg = &ctx.cfg;
        let recent = cfg.raft_base_tick_interval * cfg.raft_election_timeout_ticks as u32;
        let r = &self.raft.raft;
        let last = r.raft_log.last_index();
        self.peer_heartbeats
            .get(&id)
            .is_some_and(|t| t.elapsed() < recent)
            && r.prs().get(id).is_some_and(|pr| {
                pr.state == raft::ProgressState::Replicate
                    && last.saturating_sub(pr.matched) <= cfg.leader_transfer_max_log_lag
            })
    }

    /// Called on every leader tick: sends the transferee its TimeoutNow again every
    /// heartbeat interval (the first may have gone down a connection to a process that
    /// has since restarted), and abandons a transfer that has taken
    /// `raftstore.leader-transfer-timeout`, so that writes resume.
    pub(crate) fn expire_leader_transfer(&mut self, ctx: &PollContext) {
        let Some(to) = self.raft.raft.lead_transferee else {
            self.transfer = None;
            return;
        };
        let ticks = match self.transfer {
            Some((t, n)) if t == to => n + 1,
            _ => 1,
        };
        self.transfer = Some((to, ticks));
        if ticks >= ctx.cfg.ticks(ctx.cfg.leader_transfer_timeout) {
            warn!(self.logger, "leadership transfer did not finish in time; abandoned"; "to" => to);
            self.raft.raft.abort_leader_transfer();
            self.transfer = None;
        } else if ticks % ctx.cfg.raft_heartbeat_ticks as u64 == 0 {
            // Raft ignores a second request for the same transferee: end this one first.
            self.raft.raft.abort_leader_transfer();
            self.raft.transfer_leader(to);
        }
    }
}
