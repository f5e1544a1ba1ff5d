//! Leadership transfer, asked for by PD, an operator (kvctl) or a shutdown. Raft drops
//! proposals while a transfer is under way, so a transfer goes only to a peer that can
//! take over at once (replicating, heard from lately, close behind). Raft sends the
//! transferee one TimeoutNow; if it is lost (say to a store that was stopping or had just
//! restarted) raft would drop writes for a whole election timeout, so the leader sends it
//! again each heartbeat interval and gives up after `raftstore.leader-transfer-timeout`.

use proto::metapb;
use slog::{info, warn};

use super::PeerFsm;
use crate::{poll::PollContext, Error, Result};

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
                Error::InvalidRequest(format!(
                    "region {} has no peer on store {}",
                    self.region_id(),
                    to.get_store_id()
                ))
            })?;
        if target.get_role() == metapb::PeerRole::Learner {
            return Err(Error::InvalidRequest(format!(
                "peer {} on store {} is a learner and cannot lead",
                target.get_id(),
                target.get_store_id()
            )));
        }
        if target.get_id() != self.peer.get_id() {
            self.check_transferee(&target, ctx.cfg.leader_transfer_max_log_lag)?;
            info!(self.logger, "transferring leadership"; "to" => target.get_id());
            self.raft.transfer_leader(target.get_id());
        }
        Ok(())
    }

    /// Refuses a transferee that is not replicating steadily and close behind.
    fn check_transferee(&self, target: &metapb::Peer, max_lag: u64) -> Result<()> {
        let r = &self.raft.raft;
        let last = r.raft_log.last_index();
        let ready = r.prs().get(target.get_id()).is_some_and(|pr| {
            pr.recent_active
                && pr.state == raft::ProgressState::Replicate
                && last.saturating_sub(pr.matched) <= max_lag
        });
        if ready {
            return Ok(());
        }
        Err(Error::Busy(format!(
            "peer {} on store {} is not caught up with the leader of region {} \
             (raftstore.leader-transfer-max-log-lag); try again later",
            target.get_id(),
            target.get_store_id(),
            self.region_id()
        )))
    }

    /// Called on every leader tick: sends the transferee its TimeoutNow again every
    /// heartbeat interval (the first may have gone down a connection to a process that
    /// has since restarted), and abandons a transfer that has taken longer than
    /// `raftstore.leader-transfer-timeout`, so that writes resume.
    pub(crate) fn expire_leader_transfer(&mut self, ctx: &PollContext) {
        let Some(to) = self.raft.raft.lead_transferee else {
            self.transfer_ticks = 0;
            return;
        };
        self.transfer_ticks += 1;
        let abandon = self.transfer_ticks > ctx.cfg.ticks(ctx.cfg.leader_transfer_timeout);
        let resend = self.transfer_ticks % ctx.cfg.raft_heartbeat_ticks as u64 == 0;
        if abandon || resend {
            // Raft ignores a second request for the same transferee: end this one first.
            self.raft.raft.abort_leader_transfer();
        }
        if abandon {
            warn!(self.logger, "leadership transfer did not finish in time; abandoned"; "to" => to);
            self.transfer_ticks = 0;
        } else if resend {
            let ticks = self.transfer_ticks;
            self.raft.transfer_leader(to);
            self.transfer_ticks = ticks;
        }
    }
}
