//! The peer state machine: one region's Raft node on this store, and what the Raft
//! pollers share.
//!
//! The operations (`crate::operation`) are further `impl PeerFsm` blocks, each beside its
//! apply-side half; the fields are crate-visible for them. The store and the pollers use
//! only methods.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::Sender;
use engine::{Engine, WriteBatch};
use parking_lot::Mutex;
use proto::{metapb, raft_serverpb::RaftMessage};
use protobuf::Message as _;
use raft::{
    eraftpb::{Entry, Message, MessageType, Snapshot},
    RawNode, Ready, StateRole,
};
use slog::{debug, info, o, warn, Logger};

use crate::{
    batch::{Fsm, Mailbox, Router},
    disk::DiskSpace,
    fsm::apply::{ApplyFsm, ApplyRouter},
    metrics,
    msg::{
        ApplyRes, ExecResult, PdTask, PeerMsg, ReadFrom, ReadIndexCheck, SplitCheckTask, StoreMsg,
    },
    proposal::ProposalQueue,
    read_queue::ReadQueue,
    snap::{snap_key, ReceivedFiles, SnapManager},
    storage::PeerStorage,
    store_meta::StoreMeta,
    transport::Transport,
    Config, Error, Result,
};

/// What every peer handled by one Raft poller shares.
pub(crate) struct PollContext {
    pub cfg: Arc<Config>,
    pub engine: Engine,
    /// Every peer's mailbox (a destroyed peer takes itself out).
    pub peers: Router<PeerFsm>,
    /// The store's own mailbox.
    pub store_tx: Sender<StoreMsg>,
    /// Regions whose peer here hibernates: the store sends them no ticks.
    pub hibernating: Arc<Mutex<HashSet<u64>>>,
    pub apply_router: ApplyRouter,
    pub transport: Arc<dyn Transport>,
    pub pd_tx: Sender<PdTask>,
    pub store_meta: Arc<Mutex<StoreMeta>>,
    pub snap_mgr: SnapManager,
    pub split_check_tx: Sender<SplitCheckTask>,
    /// Whether the disk has room for client writes (measured by the store loop).
    pub disk: DiskSpace,
    /// This round's Raft writes, for every peer.
    pub raft_wb: WriteBatch,
    /// This round's write holds new log entries: fsynced unless `sync-log` is off.
    pub sync_log: bool,
    /// This round's write holds state that must be durable whatever `sync-log` says: a
    /// new term or vote (else a store that lost power could vote twice in one term), a
    /// snapshot's new log base, a region's new shape, a peer's removal.
    pub sync_state: bool,
    /// This round's outgoing messages, by destination store.
    pub outgoing: HashMap<u64, Vec<RaftMessage>>,
    /// Answers followers' read checks when this store leads (see `operation::read`).
    pub read_index_check: Option<ReadIndexCheck>,
}

/// A Ready taken from raft-rs, persisted by the round's write, finished after it.
pub(crate) struct PendingReady {
    pub ready: Ready,
    pub persisted_messages: Vec<Message>,
    pub committed: Vec<Entry>,
    pub snapshot: Option<(Snapshot, ReceivedFiles)>,
}

/// One region's Raft peer on this store.
pub struct PeerFsm {
    pub(crate) peer: metapb::Peer,
    pub(crate) raft: RawNode<PeerStorage>,
    pub(crate) logger: Logger,
    pub(crate) proposals: ProposalQueue,
    pub(crate) reads: ReadQueue,
    /// Peers heard from, so that a peer created by a message (whose region has no peers
    /// yet) can answer the leader.
    pub(crate) peer_cache: HashMap<u64, metapb::Peer>,
    /// Leader only: when each other peer was last heard from.
    pub(crate) peer_heartbeats: HashMap<u64, Instant>,
    /// Term and commit index as of the last Ready (published in `StoreMeta` while this
    /// peer leads).
    pub(crate) progress: std::sync::Arc<crate::store_meta::RaftProgress>,
    pub(crate) ticks: u64,
    pub(crate) pending: Option<PendingReady>,
    /// Report to PD at the next opportunity (the region or its leader changed).
    pub(crate) heartbeat_due: bool,
    /// How many peers the last heartbeat reported as pending; a change is news for PD
    /// (a learner that caught up can be promoted).
    pub(crate) reported_pending: usize,
    pub(crate) stopped: bool,
    /// Bytes proposed since the split checker last measured the region.
    pub(crate) size_diff_hint: u64,
    /// Size and keys the split checker last measured.
    pub(crate) approximate: Option<(u64, u64)>,
    /// Hibernating: the store sends no ticks (see `hibernate`).
    pub(crate) quiet: bool,
    /// Ticks since the last proposal, read or admin request.
    pub(crate) idle_ticks: u64,
    /// The last entry handed to the apply state machine: a snapshot waits until the
    /// apply side has reported it applied, so that nothing is in flight there.
    pub(crate) last_sent_to_apply: u64,
    /// A snapshot is waiting for the apply queue to empty (counted once).
    pub(crate) snapshot_waits: bool,
    /// The index of an applied split or membership change whose region state this
    /// round writes: the apply side waits for it before it goes past that entry.
    pub(crate) region_persist: Option<u64>,
    /// The new regions of an applied split whose peers the store creates once their
    /// initial states are written.
    pub(crate) split_peers: Vec<metapb::Region>,
    /// A destroyed peer's apply state machine, taken out of the router: it is told to
    /// delete the region's data once the tombstone is durable (`post_persist`).
    pub(crate) apply_to_destroy: Option<Mailbox<ApplyFsm>>,
    /// Destroyed this round: the apply side is told after the round's write.
    pub(crate) destroy_due: bool,
    /// When this peer last proposed a ComputeHash: every replica scans the region for
    /// one, so they are spaced out.
    pub(crate) last_hash: Option<Instant>,
    /// Leader only: the peer leadership is being transferred to, and for how many ticks.
    pub(crate) transfer: Option<(u64, u64)>,
    /// What this replica may serve without asking its leader.
    pub(crate) stale: crate::stale::StaleState,
    /// A snapshot is replacing the region's data on the apply side: the engine holds
    /// neither the old data nor the new, and no stale read may look at it.
    pub(crate) applying_snapshot: bool,
    /// Leader only: how long it may serve reads without a ReadIndex round.
    pub(crate) lease: crate::lease::Lease,
    /// Follower only: when it last heard from a leader.
    pub(crate) contact: crate::lease::Contact,
    /// Follower only: its leader's store is down; it stops waiting for the leader once
    /// the leader's lease is surely gone, unless it hears from the leader first.
    pub(crate) leader_down: bool,
    /// After a restart: vote requests are dropped until then (see `lease::refuses_vote`).
    pub(crate) votes_refused_until: Option<Instant>,
}

impl Fsm for PeerFsm {
    type Message = PeerMsg;
}

/// raft-rs settings for peer `id` of this store, resuming after `applied`.
fn raft_config(cfg: &Config, id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: cfg.raft_election_timeout_ticks,
        heartbeat_tick: cfg.raft_heartbeat_ticks,
        applied,
        max_size_per_msg: cfg.raft_max_size_per_msg.as_u64(),
        max_inflight_msgs: cfg.raft_max_inflight_msgs,
        check_quorum: true,
        pre_vote: true,
        // Off: raft-rs 0.7 merges new entries into a pending empty append (a probe)
        // without checking that they follow its index, so a follower could ack entries
        // it does not have, and the leader count it towards a quorum. A round's
        // messages to one store travel in one batch anyway.
        batch_append: false,
        ..Default::default()
    }
}

impl PeerFsm {
    /// Creates the peer `peer` of `region` over storage loaded from the engine.
    pub fn new(
        cfg: &Config,
        storage: PeerStorage,
        peer: metapb::Peer,
        logger: &Logger,
    ) -> Result<PeerFsm> {
        let region_id = storage.region().get_id();
        let logger = logger.new(o!("region_id" => region_id, "peer_id" => peer.get_id()));
        // A snapshot whose apply a restart interrupted is in flight to the apply side.
        let last_sent_to_apply = storage.raft_applied();
        let raft_cfg = raft_config(cfg, peer.get_id(), storage.raft_applied());
        raft_cfg.validate()?;
        let raft = RawNode::new(&raft_cfg, storage, &logger)?;
        Ok(PeerFsm {
            peer,
            raft,
            logger,
            proposals: ProposalQueue::default(),
            reads: ReadQueue::default(),
            peer_cache: HashMap::new(),
            peer_heartbeats: HashMap::new(),
            progress: Default::default(),
            ticks: 0,
            pending: None,
            heartbeat_due: true,
            reported_pending: 0,
            stopped: false,
            size_diff_hint: 0,
            approximate: None,
            quiet: false,
            idle_ticks: 0,
            last_sent_to_apply,
            snapshot_waits: false,
            apply_to_destroy: None,
            destroy_due: false,
            region_persist: None,
            split_peers: vec![],
            last_hash: None,
            transfer: None,
            stale: crate::stale::StaleState::new(cfg.stale_margin()),
            applying_snapshot: false,
            lease: crate::lease::Lease::new(cfg.leader_lease),
            contact: Default::default(),
            leader_down: false,
            votes_refused_until: None,
        })
    }

    /// The store (re)started with this peer on disk: it forgets its leader, so it refuses
    /// votes for `wait` (see `lease::refuses_vote`).
    pub(crate) fn on_restart(&mut self, wait: Duration) {
        self.votes_refused_until = Some(Instant::now() + wait);
    }

    /// The region id.
    pub fn region_id(&self) -> u64 {
        self.region().get_id()
    }

    /// The region as this peer knows it.
    pub fn region(&self) -> &metapb::Region {
        self.raft.store().region()
    }

    /// Replaces the region; the next round writes it as live.
    pub(crate) fn set_region(&mut self, region: metapb::Region) {
        self.raft.mut_store().set_region(region, 0);
    }

    /// Whether this peer leads its region.
    pub(crate) fn is_leader(&self) -> bool {
        self.raft.raft.state == StateRole::Leader
    }

    /// Whether this peer is its region's only voter (it need not wait out an election
    /// timeout to lead).
    pub(crate) fn is_sole_voter(&self) -> bool {
        let mut voters = self
            .region()
            .get_peers()
            .iter()
            .filter(|p| p.get_role() == metapb::PeerRole::Voter);
        voters.next().map(|p| p.get_id()) == Some(self.peer.get_id()) && voters.next().is_none()
    }

    /// Starts an election now.
    pub(crate) fn campaign(&mut self) {
        if let Err(e) = self.raft.campaign() {
            debug!(self.logger, "cannot campaign"; "err" => %e);
        }
    }

    /// Has the split checker measure this peer's region at its next pass.
    pub(crate) fn schedule_split_check(&mut self, cfg: &Config) {
        self.size_diff_hint = cfg.region_split_check_diff.as_u64().max(1);
    }

    /// The leader this peer knows of, if it is in the region.
    pub(crate) fn leader(&self) -> Option<metapb::Peer> {
        self.peer_by_id(self.raft.raft.leader_id)
    }

    pub(crate) fn peer_by_id(&self, id: u64) -> Option<metapb::Peer> {
        self.region()
            .get_peers()
            .iter()
            .find(|p| p.get_id() == id)
            .or_else(|| self.peer_cache.get(&id))
            .cloned()
    }

    pub(crate) fn not_leader(&self) -> Error {
        Error::NotLeader {
            region_id: self.region_id(),
            leader: self.leader(),
        }
    }

    /// Handles one piece of mail.
    pub(crate) fn on_msg(&mut self, msg: PeerMsg, ctx: &mut PollContext) {
        if self.stopped {
            return;
        }
        if self.wakes(&msg) {
            self.wake(ctx);
        }
        // The store's own leadership checks and safe timestamps are not client activity:
        // they must not keep an idle region from hibernating.
        if !matches!(
            msg,
            PeerMsg::Tick
                | PeerMsg::HeartbeatPd
                | PeerMsg::RaftMessage(_)
                | PeerMsg::ApplyRes(_)
                | PeerMsg::SafeTs { .. }
                | PeerMsg::Read {
                    from: ReadFrom::Confirm,
                    ..
                }
        ) {
            self.idle_ticks = 0;
        }
        match msg {
            PeerMsg::RaftMessage(m) if m.get_hibernate() => self.on_hibernate_message(&m, ctx),
            PeerMsg::RaftMessage(m) => self.on_raft_message(*m, ctx),
            PeerMsg::Command { cmd, cb } => self.propose_command(cmd, cb, ctx),
            PeerMsg::Read { epoch, from, cb } => self.on_read(epoch, from, cb),
            PeerMsg::SafeTs {
                term,
                safe_ts,
                index,
            } => self.on_safe_ts(term, safe_ts, index),
            PeerMsg::TransferLeader { to, cb } => cb(self.transfer_leader(&to, ctx)),
            PeerMsg::EvictLeader => self.evict_leader(ctx),
            PeerMsg::Tick if self.quiet => {}
            PeerMsg::Tick => self.on_tick(ctx),
            PeerMsg::HeartbeatPd if self.is_leader() => self.heartbeat_pd(ctx),
            PeerMsg::HeartbeatPd => {}
            PeerMsg::StoresDown(stores) => self.on_stores_down(&stores, ctx.cfg.lease_wait()),
            PeerMsg::ApplyRes(res) => self.on_apply_res(*res, ctx),
            PeerMsg::Unreachable { to_peer_id } => self.raft.report_unreachable(to_peer_id),
            PeerMsg::SnapshotStatus { to_peer_id, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raft.report_snapshot(to_peer_id, status);
            }
            PeerMsg::Operator(op) => self.on_operator(*op, ctx),
            PeerMsg::Split { epoch, keys, cb } => self.on_split_request(epoch, keys, cb, ctx),
            PeerMsg::SplitCheckResult {
                epoch,
                size,
                keys,
                split_keys,
            } => self.on_split_check_result(epoch, size, keys, split_keys, ctx),
        }
    }

    fn on_raft_message(&mut self, msg: RaftMessage, ctx: &mut PollContext) {
        if msg.get_is_tombstone() {
            self.on_tombstone_message(&msg, ctx);
            return;
        }
        if self.is_stale_sender(&msg, ctx) {
            return;
        }
        let mut raft_msg = match Message::parse_from_bytes(msg.get_message()) {
            Ok(m) => {
                metrics::count_message(false, m.get_msg_type());
                m
            }
            Err(e) => {
                warn!(self.logger, "dropping undecodable raft message"; "err" => %e);
                return;
            }
        };
        let snap = (raft_msg.get_msg_type() == MessageType::MsgSnapshot)
            .then(|| snap_key(self.region_id(), raft_msg.get_snapshot()));
        if snap.is_some() && !self.accept_snapshot(&raft_msg, ctx) {
            return;
        }
        if raft_msg.get_msg_type() == MessageType::MsgTimeoutNow && ctx.store_meta.lock().stopping {
            // The leader resends it, then gives up on this store and writes go on.
            info!(self.logger, "refusing leadership: the store is stopping");
            return;
        }
        self.answer_read_checks(&mut raft_msg, ctx);
        let from = msg.get_from_peer();
        self.peer_cache.insert(from.get_id(), from.clone());
        if self.is_leader() {
            self.peer_heartbeats.insert(from.get_id(), Instant::now());
        }
        let from_id = from.get_id();
        let now = Instant::now();
        if raft_msg.term >= self.raft.raft.term
            && matches!(
                raft_msg.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
            )
        {
            self.contact.heard(now);
            if from_id == self.raft.raft.leader_id {
                self.leader_down = false;
            }
        }
        let leader_known = self.raft.raft.leader_id != raft::INVALID_ID;
        if crate::lease::refuses_vote(&raft_msg, leader_known, self.votes_refused_until, now) {
            debug!(self.logger, "refusing a vote: restarted less than a lease ago"; "from" => from_id);
            return;
        }
        let stepped = if raft_msg.get_msg_type() == MessageType::MsgReadIndex {
            self.step_read_index(raft_msg)
        } else {
            self.raft.step(raft_msg)
        };
        if let Err(e) = stepped {
            debug!(self.logger, "raft rejected a message"; "from" => from_id, "err" => %e);
        }
        if msg.has_leader_state() {
            self.on_leader_state(from_id, msg.get_leader_state());
        }
        if let Some(key) = snap {
            self.release_unused_snapshot(key, ctx);
        }
    }

    /// Whether a proposal, read or Ready is still being worked on.
    pub(crate) fn has_work_in_flight(&self) -> bool {
        !self.proposals.is_empty()
            || !self.reads.is_empty()
            || self.pending.is_some()
            || self.raft.has_ready()
    }

    fn on_tick(&mut self, ctx: &mut PollContext) {
        self.ticks += 1;
        self.idle_ticks += 1;
        self.maybe_stop_waiting_for_leader(ctx.cfg.lease_wait());
        // Test only: a leader whose clock stalls stops ticking, so check-quorum cannot
        // depose it (its lease is stretched as well: see `lease`).
        if !(self.is_leader() && fail::eval("leader_clock_slow", |_| ()).is_some()) {
            self.raft.tick();
        }
        self.reads
            .expire(ctx.cfg.raft_election_timeout_ticks as u64 * 2, &self.logger);
        if self.is_leader() {
            self.expire_leader_transfer(ctx);
            if self
                .ticks
                .is_multiple_of(ctx.cfg.ticks(ctx.cfg.raft_log_gc_tick_interval))
            {
                self.maybe_compact_log(ctx);
            }
            if self
                .ticks
                .is_multiple_of(ctx.cfg.ticks(ctx.cfg.split_region_check_tick_interval))
            {
                self.maybe_check_split(ctx);
            }
            if self.heartbeat_due
                || self.pending_peers().len() != self.reported_pending
                || self
                    .ticks
                    .is_multiple_of(ctx.cfg.ticks(ctx.cfg.pd_heartbeat_tick_interval))
            {
                self.heartbeat_pd(ctx);
            }
            self.maybe_hibernate_leader(ctx);
        }
    }

    /// Acts on what the apply side reports: its results first (each may change the
    /// region), then its progress.
    fn on_apply_res(&mut self, res: ApplyRes, ctx: &mut PollContext) {
        for r in res.results {
            match r {
                ExecResult::ChangePeer { index, cc, region } => {
                    self.on_change_peer(index, cc, region, ctx)
                }
                ExecResult::CompactLog { index, term } => self.on_compact_log(index, term, ctx),
                ExecResult::SnapshotApplied { region } => self.on_snapshot_applied(region, ctx),
                ExecResult::Split { index, regions } => self.on_split_applied(index, regions, ctx),
            }
            if self.stopped {
                return;
            }
        }
        self.raft.mut_store().on_applied(res.applied_index);
        self.raft.advance_apply_to(res.applied_index);
        self.reads.on_applied(
            res.applied_index,
            self.raft.store().region(),
            self.raft.raft.term,
        );
        self.reads.retry_pending(&mut self.raft);
        self.stale.on_applied(res.applied_index);
    }

    /// Answers every waiting proposal with `proposal_err` (it may have committed, so its
    /// outcome is unknown) and every read with `read_err`, for a peer that is going away.
    pub(crate) fn fail_all(
        &mut self,
        proposal_err: impl Fn() -> Error,
        read_err: impl Fn() -> Error,
    ) {
        for p in self.proposals.drain() {
            (p.cb)(Err(proposal_err()));
        }
        self.reads.fail_all(read_err);
    }
}

#[cfg(test)]
mod tests {
    use raft::{
        eraftpb::{ConfState, Entry, Message, MessageType},
        storage::MemStorage,
        RawNode,
    };

    use super::*;

    fn message(t: MessageType, from: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = 1;
        m.term = term;
        m
    }

    /// Persists and finishes every Ready; returns the messages they held.
    fn drain(node: &mut RawNode<MemStorage>) -> Vec<Message> {
        let mut out = vec![];
        while node.has_ready() {
            let mut rd = node.ready();
            out.extend(rd.take_messages());
            out.extend(rd.take_persisted_messages());
            let mut store = node.mut_store().wl();
            store.append(rd.entries()).unwrap();
            if let Some(hs) = rd.hs() {
                store.set_hardstate(hs.clone());
            }
            drop(store);
            let mut light = node.advance(rd);
            out.extend(light.take_messages());
            node.advance_apply();
        }
        out
    }

    /// A follower that rejects an append gets entries from where it can take them, in
    /// a message whose index they follow, even while an empty append to it is pending.
    /// (With raft-rs's `batch_append`, the entries were merged into the pending empty
    /// append whatever its index: the follower then acked entries it did not have.)
    #[test]
    fn appends_after_a_rejection_follow_their_index() {
        let cfg = Config::default();
        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&raft_config(&cfg, 1, 0), storage, &logger).unwrap();
        node.raft.become_candidate();
        node.raft.become_leader();
        let term = node.raft.term;
        for _ in 0..10 {
            node.propose(vec![], b"x".to_vec()).unwrap();
        }
        drain(&mut node);
        let last = node.raft.raft_log.last_index();
        // Peer 3 answered nothing so far. A heartbeat response has the leader probe it
        // with an empty append at its last index; then, before those go out, peer 3
        // rejects an earlier append: it has only the first entry.
        let mut ack = message(MessageType::MsgAppendResponse, 2, term);
        ack.index = last;
        node.step(ack).unwrap();
        drain(&mut node);
        node.raft.mut_prs().get_mut(3).unwrap().next_idx = last + 1;
        node.raft.mut_prs().get_mut(3).unwrap().resume();
        node.step(message(MessageType::MsgHeartbeatResponse, 3, term))
            .unwrap();
        let mut reject = message(MessageType::MsgAppendResponse, 3, term);
        reject.index = last;
        reject.reject = true;
        reject.reject_hint = 1;
        node.step(reject).unwrap();
        let appends: Vec<Message> = drain(&mut node)
            .into_iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgAppend && m.to == 3)
            .collect();
        assert!(
            appends.iter().any(|m| !m.get_entries().is_empty()),
            "{appends:?}"
        );
        for m in &appends {
            let indexes: Vec<u64> = m.get_entries().iter().map(|e: &Entry| e.index).collect();
            let expected: Vec<u64> = (m.index + 1..=m.index + indexes.len() as u64).collect();
            assert_eq!(
                indexes, expected,
                "entries must follow the append's index {}",
                m.index
            );
        }
    }
}
