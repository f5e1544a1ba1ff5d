//! Hibernation: an idle region stops ticking, so that a store can hold thousands of
//! regions and stay idle.
//!
//! A leader goes quiet once nothing is in flight, every peer has its whole log and has
//! been heard from recently, and it has been idle long enough for a log GC pass. It
//! tells its peers (a `hibernate` RaftMessage carrying its term, last index and commit);
//! a peer whose log matches goes quiet too. A peer that does not agree keeps ticking:
//! its election timer then sends a pre-vote, which wakes the leader, which heartbeats
//! again and tries later. Nothing is lost by a wrong guess, only a few messages.
//!
//! Any mail wakes a quiet peer except its own heartbeat-to-PD prompt, the store's safe-ts
//! rounds, and stale reads a replica serves or refuses from what it has: a proposal, a
//! read, a Raft message, an operator. A quiet leader whose store died wakes no one, so
//! the store wakes every quiet region with a peer on a store that it lost contact with
//! (`StoreMsg::StoresDown`: a connection to that store failed or broke, or PD reports it
//! silent). A follower whose leader is on such a store campaigns at its next tick
//! (`on_stores_down`) instead of waiting out an election timeout; pre-vote keeps a
//! leader that is in fact alive in place.

use std::time::{Duration, Instant};

use proto::raft_serverpb::RaftMessage;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use slog::debug;

use crate::{
    fsm::peer::{PeerFsm, PollContext},
    metrics,
    msg::PeerMsg,
};

impl PeerFsm {
    /// Whether `msg` should wake this peer if it is quiet.
    pub(crate) fn wakes(&self, msg: &PeerMsg) -> bool {
        use crate::msg::ReadFrom;
        match msg {
            // Only leaders act on an eviction, and they wake themselves for it.
            PeerMsg::Tick | PeerMsg::HeartbeatPd | PeerMsg::EvictLeader => false,
            // The store's safe-ts rounds leave idle regions asleep (see `on_read`).
            PeerMsg::SafeTs { .. }
            | PeerMsg::Read {
                from: ReadFrom::Confirm,
                ..
            } => false,
            // Served or refused from what this replica has, at once; a leader reads a
            // bounded read through a read index.
            PeerMsg::Read {
                from: ReadFrom::Stale(_),
                ..
            } => false,
            PeerMsg::Read {
                from: ReadFrom::Bounded(_),
                ..
            } => self.is_leader(),
            PeerMsg::RaftMessage(m) => !m.get_hibernate(),
            _ => true,
        }
    }

    /// Leaves hibernation: ticks resume.
    pub(crate) fn wake(&mut self, ctx: &mut PollContext) {
        if !self.quiet {
            return;
        }
        self.quiet = false;
        self.idle_ticks = 0;
        if self.is_leader() {
            // Heard-from flags date from before the sleep; a heartbeat round refreshes
            // them before the next check-quorum could make the leader step down.
            self.raft.ping();
        }
        ctx.hibernating.lock().remove(&self.region_id());
        metrics::HIBERNATING.dec();
        debug!(self.logger, "woke up");
    }

    /// The store lost contact with `stores` (the message itself woke this peer): a
    /// follower whose leader is on one of them stops waiting for it, so that it campaigns
    /// at its next tick and grants other followers' votes at once; but not before the
    /// leader's read lease is surely gone (a lease since it last heard from it), since
    /// the store may have lost contact with a leader that still serves clients.
    pub(crate) fn on_stores_down(&mut self, stores: &[u64], wait: Duration) {
        if self.is_leader() {
            return;
        }
        let leader = self.raft.raft.leader_id;
        let on_down_store = self
            .region()
            .get_peers()
            .iter()
            .any(|p| p.get_id() == leader && stores.contains(&p.get_store_id()));
        if on_down_store {
            self.leader_down = true;
            debug!(self.logger, "leader's store unreachable: campaigning once its lease is gone";
                   "leader_id" => leader);
            self.maybe_stop_waiting_for_leader(wait);
        }
    }

    /// A follower whose leader's store is down treats the leader's election timeout as
    /// passed once `wait` has passed since it last heard from the leader (checked again
    /// at every tick; hearing from the leader clears it).
    pub(crate) fn maybe_stop_waiting_for_leader(&mut self, wait: Duration) {
        if !self.leader_down {
            return;
        }
        if self.is_leader() {
            self.leader_down = false;
            return;
        }
        let now = Instant::now();
        if self.contact.lease_gone_at(wait).is_none_or(|t| now >= t) {
            self.leader_down = false;
            let r = &mut self.raft.raft;
            // Past any randomized timeout (which is below twice the base one).
            r.election_elapsed = 2 * r.election_timeout();
        }
    }

    fn go_quiet(&mut self, ctx: &mut PollContext) {
        self.quiet = true;
        ctx.hibernating.lock().insert(self.region_id());
        metrics::HIBERNATING.inc();
        debug!(self.logger, "hibernating");
    }

    /// Called on every tick of a leader: goes quiet if the region is idle and settled.
    pub(crate) fn maybe_hibernate_leader(&mut self, ctx: &mut PollContext) {
        if !ctx.cfg.hibernate_regions || !self.is_idle_leader(ctx) {
            return;
        }
        let r = &self.raft.raft;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.term = r.term;
        m.index = r.raft_log.last_index();
        m.commit = r.raft_log.committed;
        m.from = self.peer.get_id();
        let to: Vec<u64> = r.prs().iter().map(|(id, _)| *id).collect();
        for id in to.into_iter().filter(|id| *id != m.from) {
            let mut m = m.clone();
            m.to = id;
            if let Some((store_id, mut out)) = self.wrap(m) {
                out.set_hibernate(true);
                ctx.outgoing.entry(store_id).or_default().push(out);
            }
        }
        self.go_quiet(ctx);
    }

    fn is_idle_leader(&self, ctx: &PollContext) -> bool {
        let cfg = &ctx.cfg;
        let idle_for = (cfg.raft_election_timeout_ticks as u64)
            .max(cfg.ticks(cfg.raft_log_gc_tick_interval))
            + 1;
        let r = &self.raft.raft;
        let last = r.raft_log.last_index();
        let recent = cfg.raft_base_tick_interval * cfg.raft_election_timeout_ticks as u32;
        self.idle_ticks >= idle_for
            && !self.has_work_in_flight()
            && !self.heartbeat_due
            && self.size_diff_hint < cfg.region_split_check_diff.as_u64()
            && r.lead_transferee.is_none()
            && !r.has_pending_conf()
            && r.raft_log.committed == last
            && self.raft.store().applied_index() == last
            && r.prs().iter().all(|(id, p)| {
                *id == self.peer.get_id()
                    || (p.matched == last
                        && self
                            .peer_heartbeats
                            .get(id)
                            .is_some_and(|t| t.elapsed() < recent))
            })
    }

    /// A follower or learner takes a leader's hibernate message: goes quiet if its log
    /// is the leader's.
    pub(crate) fn on_hibernate_message(&mut self, msg: &RaftMessage, ctx: &mut PollContext) {
        let Ok(m) = Message::parse_from_bytes(msg.get_message()) else {
            return;
        };
        let r = &self.raft.raft;
        let agrees = ctx.cfg.hibernate_regions
            && !self.quiet
            && m.from == r.leader_id
            && m.term == r.term
            && m.index == r.raft_log.last_index()
            && m.commit == r.raft_log.committed
            && self.raft.store().applied_index() == m.commit
            && !self.has_work_in_flight();
        if agrees {
            self.go_quiet(ctx);
        }
    }
}
