//! The peer state machine: one region's Raft node on this store.
//!
//! Operations live in the child modules as further `impl PeerFsm` blocks: reads in
//! `read`, membership and operators in `conf_change`, splits in `split`, log compaction
//! in `log_gc`, PD heartbeats in `heartbeat`, hibernation in `hibernate`, removal in
//! `destroy`. The peer's state is private to this module and its children; the store
//! and the pollers use its methods.

mod conf_change;
mod destroy;
mod evict;
mod heartbeat;
mod hibernate;
mod log_gc;
mod read;
mod split;
mod transfer;

use std::{collections::HashMap, time::Instant};

use proto::{
    metapb,
    raft_cmdpb::{AdminCmdType, CmdType, RaftCmdRequest},
    raft_serverpb::RaftMessage,
};
use protobuf::Message as _;
use raft::{
    eraftpb::{Entry, Message, MessageType, Snapshot},
    RawNode, Ready, StateRole,
};
use slog::{debug, info, o, warn, Logger};

use self::read::ReadQueue;
use crate::{
    batch::Fsm,
    metrics,
    msg::{ApplyMsg, ApplyRes, Callback, CmdResponse, ExecResult, PeerMsg, Proposal},
    poll::PollContext,
    proposal::ProposalQueue,
    snap::{snap_key, ReceivedFiles},
    storage::PeerStorage,
    Config, Error, Result,
};

/// Least time between two consistency checks of one region.
const HASH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A Ready taken from raft-rs, persisted by the round's write, finished after it.
struct PendingReady {
    ready: Ready,
    persisted_messages: Vec<Message>,
    committed: Vec<Entry>,
    snapshot: Option<(Snapshot, ReceivedFiles)>,
}

/// One region's Raft peer on this store.
pub struct PeerFsm {
    peer: metapb::Peer,
    raft: RawNode<PeerStorage>,
    logger: Logger,
    proposals: ProposalQueue,
    reads: ReadQueue,
    /// Peers heard from, so that a peer created by a message (whose region has no peers
    /// yet) can answer the leader.
    peer_cache: HashMap<u64, metapb::Peer>,
    /// Leader only: when each other peer was last heard from.
    peer_heartbeats: HashMap<u64, Instant>,
    ticks: u64,
    pending: Option<PendingReady>,
    /// Report to PD at the next opportunity (the region or its leader changed).
    heartbeat_due: bool,
    /// How many peers the last heartbeat reported as pending; a change is news for PD
    /// (a learner that caught up can be promoted).
    reported_pending: usize,
    stopped: bool,
    /// Bytes proposed since the split checker last measured the region.
    size_diff_hint: u64,
    /// Size and keys the split checker last measured.
    approximate: Option<(u64, u64)>,
    /// Hibernating: the store sends no ticks (see `hibernate`).
    quiet: bool,
    /// Ticks since the last proposal, read or admin request.
    idle_ticks: u64,
    /// The last entry handed to the apply state machine: a snapshot waits until the
    /// apply side has reported it applied, so that nothing is in flight there.
    last_sent_to_apply: u64,
    /// A snapshot is waiting for the apply queue to empty (counted once).
    snapshot_waits: bool,
    /// When this peer last proposed a ComputeHash: every replica scans the region for
    /// one, so they are spaced out.
    last_hash: Option<Instant>,
    /// Leader only: the peer leadership is being transferred to, and for how many ticks.
    transfer: Option<(u64, u64)>,
}

impl Fsm for PeerFsm {
    type Message = PeerMsg;
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
        let raft_cfg = raft::Config {
            id: peer.get_id(),
            election_tick: cfg.raft_election_timeout_ticks,
            heartbeat_tick: cfg.raft_heartbeat_ticks,
            applied: storage.raft_applied(),
            max_size_per_msg: cfg.raft_max_size_per_msg.as_u64(),
            max_inflight_msgs: cfg.raft_max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            ..Default::default()
        };
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
            last_hash: None,
            transfer: None,
        })
    }

    /// The region id.
    pub fn region_id(&self) -> u64 {
        self.region().get_id()
    }

    /// The region as this peer knows it.
    pub fn region(&self) -> &metapb::Region {
        self.raft.store().region()
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
        if Self::wakes(&msg) {
            self.wake(ctx);
        }
        if !matches!(
            msg,
            PeerMsg::Tick | PeerMsg::HeartbeatPd | PeerMsg::RaftMessage(_) | PeerMsg::ApplyRes(_)
        ) {
            self.idle_ticks = 0;
        }
        match msg {
            PeerMsg::RaftMessage(m) if m.get_hibernate() => self.on_hibernate_message(&m, ctx),
            PeerMsg::RaftMessage(m) => self.on_raft_message(*m, ctx),
            PeerMsg::Command { cmd, cb } => self.propose_command(cmd, cb, ctx),
            PeerMsg::Read { epoch, cb } => self.on_read(epoch, cb),
            PeerMsg::TransferLeader { to, cb } => cb(self.transfer_leader(&to, ctx)),
            PeerMsg::EvictLeader => self.evict_leader(ctx),
            PeerMsg::Tick if self.quiet => {}
            PeerMsg::Tick => self.on_tick(ctx),
            PeerMsg::HeartbeatPd if self.is_leader() => self.heartbeat_pd(ctx),
            PeerMsg::HeartbeatPd | PeerMsg::Wake => {}
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
        let raft_msg = match Message::parse_from_bytes(msg.get_message()) {
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
        let from = msg.get_from_peer();
        self.peer_cache.insert(from.get_id(), from.clone());
        if self.is_leader() {
            self.peer_heartbeats.insert(from.get_id(), Instant::now());
        }
        if let Err(e) = self.raft.step(raft_msg) {
            debug!(self.logger, "raft rejected a message"; "from" => from.get_id(), "err" => %e);
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
        self.raft.tick();
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

    /// Checks that a command may be proposed by this peer now.
    fn check_command(&self, cmd: &RaftCmdRequest, ctx: &PollContext) -> Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        // Every client command writes (reads never become commands). Admin commands
        // (splits, membership, hashes) stay allowed, the reserve is for them; so do
        // deletes, which write a small tombstone and are how an operator makes room.
        let only_deletes = cmd
            .get_requests()
            .iter()
            .all(|r| matches!(r.get_cmd_type(), CmdType::Delete | CmdType::DeleteRange));
        if !only_deletes {
            ctx.disk.admit_write(u64::from(cmd.compute_size()))?;
        }
        let max_apply_lag = ctx.cfg.max_apply_lag;
        let lag = self
            .last_sent_to_apply
            .saturating_sub(self.raft.store().applied_index());
        if lag > max_apply_lag && !cmd.has_admin_request() {
            return Err(Error::Busy(format!(
                "region {} has {lag} committed entries waiting to apply (raftstore.max-apply-lag)",
                self.region_id()
            )));
        }
        let region = self.region();
        let header = cmd.get_header();
        if header.get_term() != 0 && header.get_term() != self.raft.raft.term {
            return Err(Error::StaleCommand(
                "leadership changed since the snapshot the command was computed from",
            ));
        }
        if header.get_region_id() != region.get_id() {
            return Err(Error::RegionNotFound(header.get_region_id()));
        }
        crate::util::check_epoch(region, header.get_region_epoch(), cmd.has_admin_request())?;
        for req in cmd.get_requests() {
            crate::util::check_request_keys(region, req)?;
        }
        Ok(())
    }

    pub(crate) fn propose_command(
        &mut self,
        cmd: RaftCmdRequest,
        cb: Callback<CmdResponse>,
        ctx: &mut PollContext,
    ) {
        if let Err(e) = self.check_command(&cmd, ctx) {
            metrics::PROPOSALS
                .with_label_values(&["normal", "rejected"])
                .inc();
            cb(Err(e));
            return;
        }
        let data = cmd
            .write_to_bytes()
            .expect("encoding a command into memory cannot fail");
        let limit = ctx.cfg.raft_entry_max_size.as_u64();
        if data.len() as u64 > limit {
            cb(Err(Error::EntryTooLarge {
                region_id: self.region_id(),
                size: data.len() as u64,
                limit,
            }));
            return;
        }
        if cmd.has_admin_request() {
            match cmd.get_admin_request().get_cmd_type() {
                AdminCmdType::ChangePeerV2 => return self.propose_conf_change(cmd, cb, ctx),
                AdminCmdType::ComputeHash => {
                    if self.last_hash.is_some_and(|t| t.elapsed() < HASH_INTERVAL) {
                        return cb(Err(Error::Busy(format!(
                            "region {} was hashed less than {HASH_INTERVAL:?} ago",
                            self.region_id()
                        ))));
                    }
                    self.last_hash = Some(Instant::now());
                }
                AdminCmdType::CompactLog | AdminCmdType::BatchSplit => {}
                other => {
                    return cb(Err(Error::InvalidRequest(format!(
                        "unsupported admin command {other:?}"
                    ))))
                }
            }
        }
        if !cmd.has_admin_request() {
            self.size_diff_hint += data.len() as u64;
        }
        self.propose("normal", |raft| raft.propose(vec![], data), cb);
    }

    /// Proposes through `f` and tracks the entry it appends, if any.
    pub(crate) fn propose(
        &mut self,
        kind: &str,
        f: impl FnOnce(&mut RawNode<PeerStorage>) -> raft::Result<()>,
        cb: Callback<CmdResponse>,
    ) {
        let last = self.raft.raft.raft_log.last_index();
        let res = f(&mut self.raft);
        let index = self.raft.raft.raft_log.last_index();
        if res.is_err() || index == last {
            // raft-rs drops proposals while a leader transfer is in progress.
            metrics::PROPOSALS
                .with_label_values(&[kind, "dropped"])
                .inc();
            cb(Err(Error::StaleCommand("proposal dropped by raft")));
            return;
        }
        metrics::PROPOSALS.with_label_values(&[kind, "ok"]).inc();
        self.proposals.push(Proposal {
            index,
            term: self.raft.raft.term,
            cb,
            proposed_at: Instant::now(),
        });
    }

    fn on_apply_res(&mut self, res: ApplyRes, ctx: &mut PollContext) {
        for r in res.results {
            match r {
                ExecResult::ChangePeer { cc, region } => self.on_change_peer(cc, region, ctx),
                ExecResult::CompactLog { index, term } => self.on_compact_log(index, term, ctx),
                ExecResult::SnapshotApplied { region } => {
                    info!(self.logger, "snapshot applied"; "index" => res.applied_index);
                    ctx.store_meta.lock().set_region(region);
                }
                ExecResult::Split { regions, create } => {
                    self.on_split_applied(regions, create, ctx)
                }
            }
            if self.stopped {
                return;
            }
        }
        self.raft
            .mut_store()
            .on_applied(res.applied_index, res.applied_term);
        self.raft.advance_apply_to(res.applied_index);
        self.reads.on_applied(
            res.applied_index,
            self.raft.store().region(),
            self.raft.raft.term,
        );
        self.reads.retry_pending(&mut self.raft);
    }

    /// Takes this round's Ready, if any, and writes what must be persisted into the
    /// round's batch.
    pub(crate) fn collect_ready(&mut self, ctx: &mut PollContext) {
        if self.stopped {
            return;
        }
        let is_leader = self.is_leader();
        self.reads.flush(&mut self.raft, is_leader);
        if !self.raft.has_ready() {
            return;
        }
        if self.raft.raft.raft_log.unstable.snapshot.is_some()
            && self.raft.store().applied_index() < self.last_sent_to_apply
        {
            // A snapshot replaces what the apply side works on: wait until its queue is
            // empty (its report brings this peer back here).
            if !std::mem::replace(&mut self.snapshot_waits, true) {
                metrics::SNAPSHOTS
                    .with_label_values(&["persist", "waited_for_apply"])
                    .inc();
            }
            return;
        }
        self.snapshot_waits = false;
        let mut ready = self.raft.ready();
        if let Some(ss) = ready.ss() {
            let role = ss.raft_state;
            let leader = ss.leader_id;
            self.on_role_changed(role, leader, ctx);
        }
        // A leader's messages may go out before its own write (the Raft thesis, 10.2.1).
        let msgs = ready.take_messages();
        self.send(msgs, ctx);
        // New entries, a new term or a vote must be durable before anyone hears of them; a
        // commit index that only advanced need not be (it is recovered from the log).
        // `sync-log = false` may skip the fsync for entries only (see `PollContext`).
        ctx.sync_log |= ready.must_sync();
        let mut snapshot = None;
        if !ready.snapshot().is_empty() {
            snapshot = Some(self.persist_snapshot(ready.snapshot(), ctx));
        }
        let wb = &mut ctx.raft_wb;
        if !ready.entries().is_empty() {
            self.raft.mut_store().append(ready.take_entries(), wb);
        }
        if let Some(hs) = ready.hs() {
            ctx.sync_state |= self.raft.mut_store().set_hard_state(hs);
        }
        self.raft.mut_store().write_raft_state(wb);
        let read_states = ready.take_read_states();
        let store = self.raft.store();
        self.reads.on_read_states(
            read_states,
            store.applied_index(),
            store.region(),
            self.raft.raft.term,
        );
        self.pending = Some(PendingReady {
            persisted_messages: ready.take_persisted_messages(),
            committed: ready.take_committed_entries(),
            ready,
            snapshot,
        });
    }

    /// Finishes this round's Ready after the round's write is durable.
    pub(crate) fn post_persist(&mut self, ctx: &mut PollContext) {
        let Some(p) = self.pending.take() else {
            return;
        };
        self.send(p.persisted_messages, ctx);
        if let Some((snap, files)) = p.snapshot {
            self.on_snapshot_persisted(&snap, files, ctx);
        }
        self.apply_committed(p.committed, ctx);
        let mut light = self.raft.advance_append(p.ready);
        if let Some(commit) = light.commit_index() {
            self.raft.mut_store().set_commit(commit);
        }
        self.send(light.take_messages(), ctx);
        self.apply_committed(light.take_committed_entries(), ctx);
    }

    /// Writes a snapshot's new log base and the record that lets a restart redo its
    /// apply into the round's batch; takes its received files. Accepted snapshots came
    /// with their files and decode (see `accept_snapshot`), so a failure here is a bug.
    fn persist_snapshot(
        &mut self,
        snap: &Snapshot,
        ctx: &mut PollContext,
    ) -> (Snapshot, ReceivedFiles) {
        let region_id = self.region_id();
        let files = ctx
            .snap_mgr
            .take_received(snap_key(region_id, snap))
            .unwrap_or_else(|| panic!("region {region_id}: an accepted snapshot's files are gone"));
        let pending = crate::snap::pending_snapshot(snap, &files);
        if let Err(e) = self
            .raft
            .mut_store()
            .apply_snapshot(snap, pending, &mut ctx.raft_wb)
        {
            panic!("region {region_id} cannot take a snapshot it accepted: {e}");
        }
        ctx.sync_state = true;
        // The snapshot is the apply side's work now: another waits until it is done.
        self.last_sent_to_apply = snap.get_metadata().index;
        (snap.clone(), files)
    }

    fn on_snapshot_persisted(
        &mut self,
        snap: &Snapshot,
        files: ReceivedFiles,
        ctx: &mut PollContext,
    ) {
        let region = self.region().clone();
        let meta = snap.get_metadata();
        info!(self.logger, "applying snapshot"; "index" => meta.index, "term" => meta.term);
        ctx.store_meta.lock().set_region(region.clone());
        let task = ApplyMsg::Snapshot {
            region,
            index: meta.index,
            term: meta.term,
            files,
        };
        if ctx.apply_router.send(self.region_id(), task).is_err() {
            warn!(
                self.logger,
                "apply state machine is gone; snapshot not applied"
            );
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>, ctx: &mut PollContext) {
        let Some(last) = entries.last() else {
            return;
        };
        let last_index = last.index;
        let (mut proposals, mut lost) = (vec![], vec![]);
        for e in &entries {
            if let Some(p) = self.proposals.take(e.term, e.index, &mut lost) {
                metrics::COMMAND_SECONDS
                    .with_label_values(&["commit"])
                    .observe(p.proposed_at.elapsed().as_secs_f64());
                proposals.push(p);
            }
        }
        for p in lost {
            // Another leader's entry took its place: it never applies.
            (p.cb)(Err(Error::StaleCommand(
                "entry overwritten by a new leader",
            )));
        }
        debug!(self.logger, "handing entries to apply"; "count" => entries.len(), "last" => last_index);
        let msg = ApplyMsg::Entries { entries, proposals };
        let sent = ctx.apply_router.send(self.region_id(), msg);
        if sent.is_ok() {
            self.last_sent_to_apply = last_index;
        }
        if let Err(ApplyMsg::Entries { proposals, .. }) = sent {
            for p in proposals {
                (p.cb)(Err(Error::Undetermined(
                    "committed but the region's apply state machine is gone",
                )));
            }
        }
    }

    fn on_role_changed(&mut self, role: StateRole, leader_id: u64, ctx: &mut PollContext) {
        info!(self.logger, "role changed"; "role" => ?role, "leader_id" => leader_id,
              "term" => self.raft.raft.term);
        let is_leader = role == StateRole::Leader;
        match role {
            StateRole::Leader => metrics::ROLE_CHANGES.with_label_values(&["leader"]).inc(),
            StateRole::Candidate => metrics::ROLE_CHANGES
                .with_label_values(&["candidate"])
                .inc(),
            _ => {}
        }
        ctx.store_meta
            .lock()
            .set_role(self.region_id(), is_leader, role == StateRole::Candidate);
        if is_leader {
            let now = Instant::now();
            self.peer_heartbeats = self
                .region()
                .get_peers()
                .iter()
                .map(|p| (p.get_id(), now))
                .collect();
            self.heartbeat_due = true;
        } else {
            let (region_id, leader) = (self.region_id(), self.leader());
            self.reads.fail_all(|| Error::NotLeader {
                region_id,
                leader: leader.clone(),
            });
        }
    }

    /// Queues Raft messages for their stores (sent at the end of the round).
    pub(crate) fn send(&mut self, msgs: Vec<Message>, ctx: &mut PollContext) {
        for m in msgs {
            if let Some((store_id, out)) = self.wrap(m) {
                ctx.outgoing.entry(store_id).or_default().push(out);
            }
        }
    }

    /// A Raft message in its store-to-store envelope, with the receiver's store id.
    pub(crate) fn wrap(&self, m: Message) -> Option<(u64, RaftMessage)> {
        let Some(to) = self.peer_by_id(m.to) else {
            debug!(self.logger, "dropping message to a peer not in the region"; "to" => m.to);
            return None;
        };
        metrics::count_message(true, m.get_msg_type());
        let region = self.region();
        let mut out = RaftMessage::default();
        out.set_region_id(region.get_id());
        out.set_from_peer(self.peer.clone());
        out.set_region_epoch(region.get_region_epoch().clone());
        out.set_start_key(region.get_start_key().to_vec());
        out.set_end_key(region.get_end_key().to_vec());
        out.set_message(
            m.write_to_bytes()
                .expect("encoding a raft message into memory cannot fail"),
        );
        let store_id = to.get_store_id();
        out.set_to_peer(to);
        Some((store_id, out))
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
