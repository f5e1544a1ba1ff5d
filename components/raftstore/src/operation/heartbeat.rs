//! Region heartbeats: a leader tells PD what its region looks like, on change and at a
//! slow interval otherwise.

use engine::Cf;
use proto::pdpb;

use crate::{
    fsm::peer::{PeerFsm, PollContext},
    msg::PdTask,
};

impl PeerFsm {
    /// Peers so far behind that they need the log the leader no longer has (a snapshot).
    pub(crate) fn pending_peers(&self) -> Vec<proto::metapb::Peer> {
        let truncated = self.raft.store().truncated_index();
        self.raft
            .raft
            .prs()
            .iter()
            .filter(|(_, p)| p.matched < truncated)
            .filter_map(|(id, _)| self.peer_by_id(*id))
            .collect()
    }

    pub(crate) fn heartbeat_pd(&mut self, ctx: &mut PollContext) {
        self.heartbeat_due = false;
        let region = self.region().clone();
        let mut req = pdpb::RegionHeartbeatRequest::default();
        req.set_leader(self.peer.clone());
        req.term = self.raft.raft.term;
        let down_after = ctx.cfg.max_peer_down_duration;
        for p in region.get_peers() {
            if p.get_id() == self.peer.get_id() {
                continue;
            }
            if let Some(seen) = self.peer_heartbeats.get(&p.get_id()) {
                let silent = seen.elapsed();
                if silent > down_after {
                    let mut stats = pdpb::PeerStats::default();
                    stats.set_peer(p.clone());
                    stats.down_seconds = silent.as_secs();
                    req.mut_down_peers().push(stats);
                }
            }
        }
        let pending = self.pending_peers();
        self.reported_pending = pending.len();
        req.set_pending_peers(pending.into());
        // The split checker's count is exact (or a lower bound past the limits); without
        // one, RocksDB's estimate from file metadata costs no read.
        (req.approximate_size, req.approximate_keys) = self.approximate.unwrap_or_else(|| {
            let size = ctx.engine.approximate_size(
                Cf::Default,
                &keys::data_key(region.get_start_key()),
                &keys::data_end_key(region.get_end_key()),
            );
            (size, 0)
        });
        req.set_region(region);
        let _ = ctx.pd_tx.send(PdTask::RegionHeartbeat(req));
    }
}
