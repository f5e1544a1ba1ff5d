//! Leaving before a shutdown: a leader on a stopping store hands leadership to a voter on
//! another store that can take over at once, the one with the most of its log, so that
//! clients meet a leader change (a redirect) instead of an election timeout. PD, told by
//! the store's heartbeat, moves no leader back, and the store's peers refuse leadership
//! offered by transfer; one that comes back by election is handed away again when the
//! store asks its peers once more.

use proto::metapb;
use slog::{debug, info};

use crate::fsm::peer::{PeerFsm, PollContext};

impl PeerFsm {
    /// Hands leadership away if this peer leads; a follower has nothing to do.
    pub(crate) fn evict_leader(&mut self, ctx: &mut PollContext) {
        if !self.is_leader() {
            return;
        }
        if self.quiet {
            // Who is alive dates from before the sleep: wake, let a heartbeat round
            // refresh it, and pick a successor when the store asks again.
            self.wake(ctx);
            return;
        }
        let Some(to) = self.best_successor(ctx) else {
            debug!(self.logger, "no voter elsewhere can take leadership now");
            return;
        };
        info!(self.logger, "handing leadership away before shutdown"; "to_peer" => to.get_id(),
              "to_store" => to.get_store_id());
        if let Err(e) = self.transfer_leader(&to, ctx) {
            debug!(self.logger, "leadership hand-off refused"; "err" => %e);
        }
    }

    /// The voter on another store that could take over at once (see
    /// `transferee_ready`) and has matched the most of the log.
    fn best_successor(&self, ctx: &PollContext) -> Option<metapb::Peer> {
        let prs = self.raft.raft.prs();
        self.region()
            .get_peers()
            .iter()
            .filter(|p| p.get_store_id() != self.peer.get_store_id())
            .filter(|p| p.get_role() == metapb::PeerRole::Voter)
            .filter(|p| self.transferee_ready(p.get_id(), ctx))
            .filter_map(|p| prs.get(p.get_id()).map(|pr| (pr.matched, p)))
            .max_by_key(|(matched, p)| (*matched, std::cmp::Reverse(p.get_id())))
            .map(|(_, p)| p.clone())
    }
}
