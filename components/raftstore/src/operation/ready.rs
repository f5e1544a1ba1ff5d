//! The ready loop, both halves. On a Raft poller, every peer handled in a round puts its
//! Ready (entries, hard state, snapshot, region state) into ONE WriteBatch, written with
//! ONE fsync; then each peer sends its messages and hands committed entries to its apply
//! state machine. On an apply poller, each region executes its committed entries into one
//! shared WriteBatch, written once at the end of the round; then peers hear what was
//! applied, and only then do clients get their answers.

use std::time::Instant;

use crossbeam_channel::Receiver;
use engine::Cf;
use proto::raft_cmdpb::RaftCmdRequest;
use proto::raft_serverpb::RaftMessage;
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::StateRole;
use slog::{debug, info};

use crate::{
    batch::{FsmGuard, PollHandler},
    fsm::{
        apply::{ApplyContext, ApplyFsm, Fence},
        peer::{PeerFsm, PendingReady, PollContext},
    },
    metrics,
    msg::{ApplyMsg, ApplyRes, CmdResponse, PeerMsg, Proposal},
    Error, RaftRouter,
};

impl PollContext {
    fn flush_messages(&mut self) {
        for (store_id, msgs) in self.outgoing.drain() {
            self.transport.send(store_id, msgs);
        }
    }

    fn write(&mut self) {
        if self.raft_wb.is_empty() {
            return;
        }
        let wb = std::mem::replace(&mut self.raft_wb, self.engine.write_batch());
        metrics::WRITE_BATCH_BYTES
            .with_label_values(&["raft"])
            .observe(wb.size_in_bytes() as f64);
        let sync = self.sync_state || (self.sync_log && self.cfg.sync_log);
        let started = Instant::now();
        self.engine
            .write(wb, sync)
            .expect("the Raft log must be writable; continuing could lose acknowledged writes");
        if sync {
            metrics::LOG_FSYNCS.inc();
        }
        metrics::APPEND_SECONDS.observe(started.elapsed().as_secs_f64());
        self.sync_log = false;
        self.sync_state = false;
    }
}

/// The handler of a Raft poller thread.
pub(crate) struct RaftPoller {
    pub ctx: PollContext,
}

impl PollHandler<PeerFsm> for RaftPoller {
    fn handle(&mut self, fsm: &mut PeerFsm, inbox: &Receiver<PeerMsg>) {
        metrics::MAILBOX_DEPTH.observe(inbox.len() as f64);
        for _ in 0..self.ctx.cfg.messages_per_round {
            match inbox.try_recv() {
                Ok(msg) => fsm.on_msg(msg, &mut self.ctx),
                Err(_) => break,
            }
        }
        fsm.collect_ready(&mut self.ctx);
    }

    fn end(&mut self, fsms: &mut [FsmGuard<PeerFsm>]) {
        // A leader's appends go out while its own write is in flight.
        self.ctx.flush_messages();
        fail::fail_point!("raft_before_persist");
        if fsms.iter().any(|f| f.destroy_due) {
            fail::fail_point!("raft_before_persisting_a_destroy");
        }
        self.ctx.write();
        fail::fail_point!("raft_after_persist");
        metrics::READY_PER_ROUND.observe(fsms.len() as f64);
        for fsm in fsms.iter_mut() {
            fsm.post_persist(&mut self.ctx);
        }
        // Log deletions queued by compaction after the write; they need no fsync.
        self.ctx.write();
        self.ctx.flush_messages();
    }
}

impl PeerFsm {
    /// Takes this round's Ready, if any, and writes what must be persisted into the
    /// round's batch.
    pub(crate) fn collect_ready(&mut self, ctx: &mut PollContext) {
        if self.stopped {
            return;
        }
        // A region's new shape goes with this round's write whether or not Raft has
        // anything to persist.
        ctx.sync_state |= self.raft.mut_store().write_region_state(&mut ctx.raft_wb);
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
        let confirmed = self.reads.on_read_states(
            read_states,
            store.applied_index(),
            store.region(),
            self.raft.raft.term,
        );
        if let Some(sent) = confirmed.filter(|_| self.is_leader()) {
            self.lease.renew(self.raft.raft.term, sent);
        }
        self.pending = Some(PendingReady {
            persisted_messages: ready.take_persisted_messages(),
            committed: ready.take_committed_entries(),
            ready,
            snapshot,
        });
    }

    /// Finishes this round's Ready after the round's write is durable.
    pub(crate) fn post_persist(&mut self, ctx: &mut PollContext) {
        self.finish_region_persist(ctx);
        self.finish_destroy(ctx);
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
        let raft = &self.raft.raft;
        self.progress.set(raft.term, raft.raft_log.committed);
        self.send(light.take_messages(), ctx);
        self.apply_committed(light.take_committed_entries(), ctx);
    }

    fn apply_committed(&mut self, entries: Vec<Entry>, ctx: &mut PollContext) {
        let Some(last) = entries.last() else {
            return;
        };
        let last_index = last.index;
        let (mut proposals, mut lost) = (vec![], vec![]);
        let term = self.raft.raft.term;
        for e in &entries {
            if let Some(p) = self.proposals.take(e.term, e.index, &mut lost) {
                // A quorum stored an entry this leader sent after proposing it.
                if p.term == term && self.is_leader() {
                    self.lease.renew(term, p.proposed_at);
                }
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
        debug_assert!(
            !self.stopped,
            "a destroyed peer's apply side is not in the router"
        );
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
        {
            let mut meta = ctx.store_meta.lock();
            meta.set_role(self.region_id(), is_leader, role == StateRole::Candidate);
            let progress = is_leader.then(|| self.progress.clone());
            meta.set_leader_progress(self.region_id(), progress);
        }
        self.stale.on_term_changed();
        self.lease.on_term(self.raft.raft.term);
        self.leader_down = false;
        if is_leader {
            let now = Instant::now();
            self.peer_heartbeats = self
                .region()
                .get_peers()
                .iter()
                .map(|p| (p.get_id(), now))
                .collect();
            self.heartbeat_due = true;
        }
        // Reads queued in the old role wait for read indexes the new one will not get (a
        // follower's request to a leader that is gone, a leader's own batches).
        let (region_id, leader) = (self.region_id(), self.leader());
        self.reads.fail_all(|| Error::NotLeader {
            region_id,
            leader: leader.clone(),
        });
    }

    /// Queues Raft messages for their stores (sent at the end of the round).
    pub(crate) fn send(&mut self, msgs: Vec<Message>, ctx: &mut PollContext) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgTimeoutNow {
                // The transferee campaigns at once and the voters grant it their votes in
                // spite of this leader's lease.
                self.lease.revoke();
            }
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
        if let Some(ls) = self.leader_state() {
            out.set_leader_state(ls);
        }
        Some((store_id, out))
    }
}

impl ApplyContext {
    /// Writes the round so far (an entry that reads the engine must see it).
    pub(crate) fn write(&mut self) {
        if self.wb.is_empty() {
            return;
        }
        let wb = std::mem::replace(&mut self.wb, self.engine.write_batch());
        metrics::WRITE_BATCH_BYTES
            .with_label_values(&["apply"])
            .observe(wb.size_in_bytes() as f64);
        let started = Instant::now();
        self.engine
            .write(wb, self.sync)
            .expect("applied data must be writable; continuing would diverge replicas");
        metrics::APPLY_WRITE_SECONDS.observe(started.elapsed().as_secs_f64());
        self.sync = false;
    }
}

/// The handler of an apply poller thread.
pub(crate) struct ApplyPoller {
    pub ctx: ApplyContext,
    /// Where reports for peers go.
    pub router: RaftRouter,
}

impl PollHandler<ApplyFsm> for ApplyPoller {
    fn handle(&mut self, fsm: &mut ApplyFsm, inbox: &Receiver<ApplyMsg>) {
        fsm.handle_inbox(inbox, &mut self.ctx);
        fsm.finish_round(&mut self.ctx);
    }

    fn end(&mut self, _fsms: &mut [FsmGuard<ApplyFsm>]) {
        fail::fail_point!("apply_before_write");
        self.ctx.write();
        // Peers hear first: a client that acts on an answer (say, sends to a region a
        // split just made) finds its request queued behind the news.
        for (region_id, res) in self.ctx.res.drain(..) {
            let _ = self
                .router
                .force_send(region_id, PeerMsg::ApplyRes(Box::new(res)));
        }
        for (p, res) in self.ctx.cbs.drain(..) {
            metrics::COMMAND_SECONDS
                .with_label_values(&["apply"])
                .observe(p.proposed_at.elapsed().as_secs_f64());
            (p.cb)(res);
        }
        if !self.ctx.destroyed.is_empty() {
            let mut meta = self.ctx.store_meta.lock();
            for region_id in self.ctx.destroyed.drain(..) {
                meta.end_destroy(region_id);
            }
        }
    }
}

impl ApplyFsm {
    /// Handles up to a round's worth of messages from `inbox`.
    pub(crate) fn handle_inbox(&mut self, inbox: &Receiver<ApplyMsg>, ctx: &mut ApplyContext) {
        for _ in 0..ctx.messages_per_round {
            if self.stopped {
                return;
            }
            match inbox.try_recv() {
                Ok(msg) => self.on_msg(msg, ctx),
                Err(_) => break,
            }
        }
    }

    /// Applies committed entries in order; stops at one that changes the region and
    /// keeps the rest until the peer has written the change.
    pub(crate) fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        proposals: Vec<Proposal>,
        ctx: &mut ApplyContext,
    ) {
        // Reported even if every entry was applied already: the peer waits for the
        // report before it takes a snapshot.
        self.dirty = true;
        let mut entries = entries.into_iter();
        let mut proposals = proposals.into_iter().peekable();
        for e in entries.by_ref() {
            let p = proposals.next_if(|p| p.index == e.index);
            self.apply_entry(e, p, ctx);
            if self.fence.is_some() {
                break;
            }
        }
        let (entries, proposals): (Vec<Entry>, Vec<Proposal>) =
            (entries.collect(), proposals.collect());
        if !entries.is_empty() {
            self.stash
                .push_front(ApplyMsg::Entries { entries, proposals });
        }
    }

    fn apply_entry(&mut self, entry: Entry, proposal: Option<Proposal>, ctx: &mut ApplyContext) {
        if entry.index <= self.apply_state.applied_index {
            // Already applied (before a restart, or inside a snapshot): its result is
            // not known here.
            if let Some(p) = proposal {
                ctx.respond(
                    p,
                    Err(Error::Undetermined("the entry was applied by a snapshot")),
                );
            }
            return;
        }
        let (res, is_write) = match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => (Ok(CmdResponse::default()), false),
            EntryType::EntryNormal => match RaftCmdRequest::parse_from_bytes(&entry.data) {
                Ok(cmd) => (self.exec(&cmd, entry.index, ctx), !cmd.has_admin_request()),
                Err(e) => (Err(e.into()), false),
            },
            EntryType::EntryConfChangeV2 => (self.exec_conf_change(&entry, ctx), false),
            EntryType::EntryConfChange => (
                Err(Error::InvalidRequest(
                    "membership changes must use ConfChangeV2".into(),
                )),
                false,
            ),
        };
        self.apply_state.applied_index = entry.index;
        self.apply_state.applied_term = entry.term;
        self.dirty = true;
        let Some(p) = proposal else {
            return;
        };
        if is_write && res.is_ok() {
            metrics::WRITES_APPLIED.inc();
        }
        match &mut self.fence {
            // Answered once the change is durable.
            Some(fence) if fence.index == entry.index => fence.answer = Some((p, res)),
            _ => ctx.respond(p, res),
        }
    }

    /// Stops at the entry being applied, which changes the region: the apply state as
    /// of the entry before it goes into this round's write, and nothing later is
    /// applied or written until the peer has written the region's new shape.
    pub(crate) fn fence(&mut self, index: u64, ctx: &mut ApplyContext) {
        ctx.wb.put_msg(
            Cf::Raft,
            &keys::apply_state_key(self.region.get_id()),
            &self.apply_state,
        );
        self.fence = Some(Fence {
            index,
            before: self.apply_state.applied_index,
            answer: None,
        });
    }

    /// The peer has written the region's new shape: the entry that changed it counts
    /// as applied on disk too, and the mail kept meanwhile is handled.
    pub(crate) fn on_region_persisted(&mut self, index: u64, ctx: &mut ApplyContext) {
        let Some(fence) = self.fence.take_if(|f| f.index == index) else {
            debug!(self.logger, "region persisted for an entry not waited on"; "index" => index);
            return;
        };
        self.dirty = true;
        if let Some((p, res)) = fence.answer {
            ctx.respond(p, res);
        }
        while self.fence.is_none() && !self.stopped {
            let Some(msg) = self.stash.pop_front() else {
                break;
            };
            self.on_msg(msg, ctx);
        }
    }

    /// Adds this round's apply state to the batch and queues the report to the peer.
    /// While fenced, the state before the fence stands (written by `fence`).
    pub(crate) fn finish_round(&mut self, ctx: &mut ApplyContext) {
        if !self.dirty || self.stopped {
            return;
        }
        self.dirty = false;
        let region_id = self.region.get_id();
        let applied_index = match &self.fence {
            Some(fence) => fence.before,
            None => {
                ctx.wb.put_msg(
                    Cf::Raft,
                    &keys::apply_state_key(region_id),
                    &self.apply_state,
                );
                self.apply_state.applied_index
            }
        };
        ctx.report(
            region_id,
            ApplyRes {
                applied_index,
                results: std::mem::take(&mut self.results),
            },
        );
    }
}
