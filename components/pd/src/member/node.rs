//! The group's thread: owns this member's `RawNode` and its log, steps Raft messages,
//! proposes writes, confirms leadership for timestamp batches, persists, applies committed
//! entries to PD's metadata, and publishes a [`View`] of the group. Nothing else writes the
//! replicated metadata or the log.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use crossbeam_channel::{select, Receiver, Sender};
use engine::{Cf, WriteBatch};
use keys::pd as k;
use parking_lot::RwLock;
use proto::{
    metapb,
    pd_memberpb::{Command, KvOp},
    pdpb,
};
use protobuf::Message as _;
use raft::{
    eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message},
    RawNode, ReadState, StateRole,
};
use slog::{error, info, warn, Logger};

use super::{log::MemberLog, transport::Transport};
use crate::{metrics, Error, Result};

/// A request to the group's thread.
pub(crate) enum Msg {
    /// Messages from another member, and where that member is reached.
    Raft(Vec<Message>, String),
    /// Replicates `cmd` if this member still leads in `term`; answers once applied here.
    Propose {
        term: u64,
        cmd: Command,
        done: Sender<Result<()>>,
    },
    /// Changes membership (with `cmd` applied alongside) if this member leads in `term`.
    ConfChange {
        term: u64,
        change: ConfChange,
        cmd: Command,
        done: Sender<Result<()>>,
    },
    /// Answers once a quorum has confirmed that this member still leads in `term`, after
    /// the request arrived.
    Confirm { term: u64, done: Sender<Result<()>> },
    /// Hands leadership to member `to`.
    TransferLeader(u64),
    /// A member could not be reached.
    Unreachable(u64),
    /// A snapshot to a member was sent (`true`) or dropped.
    SnapshotStatus(u64, bool),
    /// Ends the thread.
    Stop,
}

/// The group as this member last saw it.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    /// This member's Raft term.
    pub term: u64,
    /// The leader this member follows (or is), 0 if none is known to be alive.
    pub leader_id: u64,
    /// `Some(term)` while this member leads and has applied every entry of earlier terms:
    /// it may serve.
    pub serving_term: Option<u64>,
    /// Every member, by id.
    pub members: BTreeMap<u64, pdpb::Member>,
    /// The cluster id, once the first leader created it.
    pub cluster_id: u64,
    /// The last applied index.
    pub applied: u64,
    /// This member was removed from the group.
    pub removed: bool,
    /// On the leader: how far each member's log matches its own.
    pub matched: BTreeMap<u64, u64>,
    /// The commit index.
    pub commit: u64,
    /// The voting members' ids, as of the last applied entry.
    pub voters: Vec<u64>,
}

/// Settings of the group's thread.
pub(crate) struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub log_gc_threshold: u64,
    /// Members to reach until the metadata holds the member table (a member that just
    /// joined).
    pub joined_members: Vec<pdpb::Member>,
}

/// Callers waiting for one answer.
type Waiters = Vec<Sender<Result<()>>>;

/// The thread's state.
pub(crate) struct Node {
    raw: RawNode<MemberLog>,
    rx: Receiver<Msg>,
    transport: Transport,
    view: Arc<RwLock<View>>,
    /// Told whenever `View::serving_term` changes.
    serving: Sender<Option<u64>>,
    /// Writes waiting for their entry to apply, by index: (term, answer).
    proposals: BTreeMap<u64, (u64, Sender<Result<()>>)>,
    /// Leadership confirmations asked for since the last read index was issued.
    confirms: Waiters,
    /// Read indexes in flight, by context, with the term they were issued in.
    reads: HashMap<u64, (u64, Waiters)>,
    next_read: u64,
    tick: Duration,
    /// Where members this one does not know yet (it has not applied their joining) said
    /// they are reached.
    learned_urls: HashMap<u64, String>,
    log_gc_threshold: u64,
    joined_members: Vec<pdpb::Member>,
    logger: Logger,
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| Error::Corrupted(format!("{what}: {e}")))
}

fn not_leader() -> Error {
    Error::NotLeader(None)
}

/// Stages `cmd`'s writes; whether any touched the member table or the cluster record.
fn stage(wb: &mut WriteBatch, cmd: &Command) -> Result<bool> {
    let mut meta = false;
    for op in cmd.get_ops() {
        let key = op.get_key();
        if !key.starts_with(k::REPLICATED_PREFIX) {
            return Err(Error::Corrupted(format!(
                "a log entry writes {key:?}, outside PD's metadata"
            )));
        }
        meta |= key.starts_with(k::MEMBER_PREFIX) || key == k::CLUSTER_KEY;
        if op.delete {
            wb.delete(Cf::Default, key);
        } else {
            wb.put(Cf::Default, key, op.get_value());
        }
    }
    Ok(meta)
}

impl Node {
    /// A node over `log` for member `cfg.id`.
    pub(crate) fn new(
        cfg: &NodeConfig,
        log: MemberLog,
        rx: Receiver<Msg>,
        transport: Transport,
        view: Arc<RwLock<View>>,
        serving: Sender<Option<u64>>,
        logger: Logger,
    ) -> Result<Node> {
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: log.applied().0,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| Error::Raft(e.to_string()))?;
        let single = log.conf_state().get_voters() == [cfg.id];
        let raw = RawNode::new(&raft_cfg, log, &logger).map_err(|e| Error::Raft(e.to_string()))?;
        let mut node = Node {
            raw,
            rx,
            transport,
            view,
            serving,
            proposals: BTreeMap::new(),
            confirms: vec![],
            reads: HashMap::new(),
            next_read: 0,
            tick: cfg.tick,
            learned_urls: HashMap::new(),
            joined_members: cfg.joined_members.clone(),
            log_gc_threshold: cfg.log_gc_threshold,
            logger,
        };
        node.reload_meta()?;
        if single {
            // Alone in its group: no one to wait for.
            node.raw
                .campaign()
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        Ok(node)
    }

    /// Runs until told to stop.
    pub(crate) fn run(mut self) {
        // However the thread ends (a panic included), this member stops serving.
        let _guard = StopServing {
            view: self.view.clone(),
            serving: self.serving.clone(),
        };
        let ticker = crossbeam_channel::tick(self.tick);
        'run: loop {
            select! {
                recv(self.rx) -> m => match m {
                    Ok(Msg::Stop) | Err(_) => break,
                    Ok(m) => self.on_msg(m),
                },
                recv(ticker) -> _ => {
                    self.raw.tick();
                }
            }
            for _ in 0..1024 {
                match self.rx.try_recv() {
                    Ok(Msg::Stop) => break 'run,
                    Ok(m) => self.on_msg(m),
                    Err(_) => break,
                }
            }
            self.fail_reads_if_deposed();
            self.issue_read();
            if let Err(e) = self.on_ready() {
                // PD's metadata cannot be written: serving on would risk handing out
                // what is not durable.
                error!(self.logger, "pd raft storage failed; stopping the group"; "err" => %e);
                self.view.write().serving_term = None;
                let _ = self.serving.send(None);
                break;
            }
            self.promote_caught_up_learner();
            self.publish();
        }
        self.fail_waiters();
    }

    fn leads(&self, term: u64) -> bool {
        self.raw.raft.state == StateRole::Leader && self.raw.raft.term == term
    }

    /// Whether a message from the network may be stepped: only what members send each
    /// other, to this member, from a member. A proposal or read index from outside would
    /// let any holder of the cluster secret write PD's metadata.
    fn acceptable(&self, m: &Message) -> bool {
        use raft::eraftpb::MessageType::*;
        let peer_to_peer = matches!(
            m.get_msg_type(),
            MsgAppend
                | MsgAppendResponse
                | MsgRequestVote
                | MsgRequestVoteResponse
                | MsgRequestPreVote
                | MsgRequestPreVoteResponse
                | MsgSnapshot
                | MsgHeartbeat
                | MsgHeartbeatResponse
                | MsgTransferLeader
                | MsgTimeoutNow
        );
        // The sender need not be known yet: a member behind the others may not have
        // applied the joining of a member that leads now.
        peer_to_peer && m.to == self.raw.raft.id
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Raft(msgs, from_url) => {
                if let Some(from) = msgs.first().map(|m| m.from) {
                    if !from_url.is_empty() && !self.view.read().members.contains_key(&from) {
                        self.learned_urls.insert(from, from_url);
                    }
                }
                for m in msgs {
                    if !self.acceptable(&m) {
                        warn!(self.logger, "raft message refused"; "type" => ?m.get_msg_type(),
                              "from" => m.from, "to" => m.to);
                        continue;
                    }
                    if let Err(e) = self.raw.step(m) {
                        slog::debug!(self.logger, "raft message dropped"; "err" => %e);
                    }
                }
            }
            Msg::Propose { term, cmd, done } => {
                let data = cmd
                    .write_to_bytes()
                    .expect("encoding a protobuf message into memory cannot fail");
                let res = self
                    .check_term(term)
                    .and_then(|_| self.raw.propose(vec![], data).map_err(proposal_error));
                self.track(term, res, done);
            }
            Msg::ConfChange {
                term,
                mut change,
                cmd,
                done,
            } => {
                let res = self.check_term(term).and_then(|_| {
                    if self.raw.raft.has_pending_conf() {
                        return Err(Error::Member(
                            "another membership change is still being applied".into(),
                        ));
                    }
                    change.set_context(
                        cmd.write_to_bytes()
                            .expect("encoding a protobuf message into memory cannot fail")
                            .into(),
                    );
                    self.raw
                        .propose_conf_change(vec![], change)
                        .map_err(proposal_error)
                });
                self.track(term, res, done);
            }
            Msg::Confirm { term, done } => match self.check_term(term) {
                Ok(()) => self.confirms.push(done),
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            },
            Msg::TransferLeader(to) => self.raw.transfer_leader(to),
            Msg::Unreachable(id) => self.raw.report_unreachable(id),
            Msg::SnapshotStatus(id, sent) => self.raw.report_snapshot(
                id,
                match sent {
                    true => raft::SnapshotStatus::Finish,
                    false => raft::SnapshotStatus::Failure,
                },
            ),
            Msg::Stop => unreachable!("handled by run"),
        }
    }

    /// On the leader: makes a learner (a member that joined) a voter once its log has
    /// caught up with the commit index, one membership change at a time.
    fn promote_caught_up_learner(&mut self) {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader || r.has_pending_conf() {
            return;
        }
        let committed = r.raft_log.committed;
        let ready = self
            .raw
            .store()
            .conf_state()
            .get_learners()
            .iter()
            .copied()
            .find(|id| r.prs().get(*id).is_some_and(|p| p.matched >= committed));
        if let Some(id) = ready {
            info!(self.logger, "promoting a caught-up pd member to voter"; "member_id" => id);
            if let Err(e) = self.raw.propose_conf_change(vec![], add_voter(id)) {
                warn!(self.logger, "could not promote a pd member"; "member_id" => id, "err" => %e);
            }
        }
    }

    fn check_term(&self, term: u64) -> Result<()> {
        match self.leads(term) {
            true => Ok(()),
            false => Err(not_leader()),
        }
    }

    /// Remembers a proposal's entry (the last one in the log) so that its applying answers.
    fn track(&mut self, term: u64, proposed: Result<()>, done: Sender<Result<()>>) {
        match proposed {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                // An entry of an earlier term at this index was replaced by this one.
                if let Some((_, old)) = self.proposals.insert(index, (term, done)) {
                    let _ = old.send(Err(not_leader()));
                }
            }
            Err(e) => {
                let _ = done.send(Err(e));
            }
        }
    }

    fn issue_read(&mut self) {
        if self.confirms.is_empty() {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            for done in self.confirms.drain(..) {
                let _ = done.send(Err(not_leader()));
            }
            return;
        }
        self.next_read += 1;
        let ctx = self.next_read;
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        let term = self.raw.raft.term;
        self.reads
            .insert(ctx, (term, std::mem::take(&mut self.confirms)));
    }

    /// Fails the reads issued in a term this member no longer leads in: raft-rs dropped
    /// them when it stepped down.
    fn fail_reads_if_deposed(&mut self) {
        let leading = (self.raw.raft.state == StateRole::Leader).then_some(self.raw.raft.term);
        self.reads.retain(|_, (term, waiters)| {
            if Some(*term) == leading {
                return true;
            }
            for done in waiters.drain(..) {
                let _ = done.send(Err(not_leader()));
            }
            false
        });
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let waiters = self.reads.remove(&u64::from_be_bytes(bytes));
            for done in waiters.map(|(_, w)| w).unwrap_or_default() {
                let _ = done.send(Ok(()));
            }
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.raw.mut_store().apply_snapshot(rd.snapshot())?;
            metrics::PD_RAFT_EVENTS
                .with_label_values(&["snapshot_applied"])
                .inc();
            self.fail_stale_proposals(rd.snapshot().get_metadata().index);
            self.reload_meta()?;
        }
        self.apply(rd.take_committed_entries())?;
        self.raw.mut_store().persist(rd.entries(), rd.hs())?;
        self.send(rd.take_persisted_messages());
        self.on_read_states(rd.take_read_states());
        // The commit index a light ready reports is not written on its own: the apply
        // write below records one at least as far as what it applies (which is all
        // raft-rs needs at a restart), and the leader tells followers the rest.
        let mut light = self.raw.advance(rd);
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.fail_reads_if_deposed();
        self.compact_log()
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let view = self.view.read();
        for m in msgs {
            let url = view
                .members
                .get(&m.to)
                .and_then(|mem| mem.get_peer_urls().first().cloned())
                .or_else(|| self.learned_urls.get(&m.to).cloned());
            match url {
                Some(url) => self.transport.send(m.to, &url, m),
                None => {
                    warn!(self.logger, "raft message to an unknown pd member"; "member_id" => m.to)
                }
            }
        }
    }

    /// Applies committed entries to the metadata in one synced write, then answers their
    /// proposals.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let (last_index, last_term) = (last.index, last.term);
        let mut wb = self.raw.store().engine().write_batch();
        let mut meta = false;
        let mut conf_state = None;
        // The membership as of each entry of this batch, so that the outcome does not
        // depend on how entries are batched.
        let mut cs_now = self.raw.store().conf_state().clone();
        for e in &entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => {
                    meta |= stage(&mut wb, &decode("log entry", &e.data)?)?;
                }
                EntryType::EntryConfChange => {
                    let cc: ConfChange = decode("conf change", &e.data)?;
                    let present = cs_now.get_voters().contains(&cc.node_id)
                        || cs_now.get_learners().contains(&cc.node_id);
                    // Adding a member that already is one writes no record (two joins
                    // must not share an id); promoting a learner carries none.
                    let adds = matches!(
                        cc.get_change_type(),
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
                    );
                    if !(adds && present) {
                        let cmd = decode("conf change context", cc.get_context())?;
                        meta |= stage(&mut wb, &cmd)?;
                    }
                    let cs = self
                        .raw
                        .apply_conf_change(&cc)
                        .map_err(|e| Error::Raft(e.to_string()))?;
                    info!(self.logger, "pd membership changed"; "change" => ?cc.get_change_type(),
                          "member_id" => cc.node_id, "voters" => ?cs.get_voters());
                    cs_now = cs.clone();
                    conf_state = Some(cs);
                }
                EntryType::EntryConfChangeV2 => {
                    return Err(Error::Corrupted(
                        "a joint membership change in PD's log (never proposed)".into(),
                    ))
                }
            }
        }
        let store = self.raw.store();
        let apply = store.stage_applied(&mut wb, last_index, last_term, conf_state.as_ref());
        // Not synced: the entries are durable in the log, and applying them again after
        // a power loss writes the same values. A later synced write (the next log write,
        // a compaction) makes this one durable too, as RocksDB's log is written in order.
        store.engine().write(wb, false)?;
        self.raw.mut_store().applied_written(apply)?;
        for e in &entries {
            self.answer(e.index, e.term);
        }
        if meta {
            self.reload_meta()?;
        }
        Ok(())
    }

    /// Answers the proposal at `index`: it succeeded if its entry is the one applied
    /// (same term); otherwise another leader's entry replaced it.
    fn answer(&mut self, index: u64, term: u64) {
        if let Some((t, done)) = self.proposals.remove(&index) {
            let _ = done.send(match t == term {
                true => Ok(()),
                false => Err(not_leader()),
            });
        }
    }

    fn fail_stale_proposals(&mut self, up_to: u64) {
        let later = self.proposals.split_off(&(up_to + 1));
        for (_, (_, done)) in std::mem::replace(&mut self.proposals, later) {
            let _ = done.send(Err(Error::Undetermined(
                "a snapshot replaced this member's log before the write applied here".into(),
            )));
        }
    }

    fn compact_log(&mut self) -> Result<()> {
        let store = self.raw.store();
        if store.log_len() <= self.log_gc_threshold {
            return Ok(());
        }
        let to = store.applied().0.saturating_sub(self.log_gc_threshold / 2);
        self.raw.mut_store().compact(to)
    }

    /// Reads the member table and the cluster id from the applied metadata.
    fn reload_meta(&mut self) -> Result<()> {
        let engine = self.raw.store().engine().clone();
        let mut members = BTreeMap::new();
        let mut bad = None;
        engine.scan(
            Cf::Default,
            k::MEMBER_PREFIX,
            &k::prefix_end(k::MEMBER_PREFIX),
            |_, v| {
                match decode::<pdpb::Member>("member", v) {
                    Ok(m) => {
                        members.insert(m.member_id, m);
                    }
                    Err(e) => bad = Some(e),
                }
                Ok(bad.is_none())
            },
        )?;
        if let Some(e) = bad {
            return Err(e);
        }
        if members.is_empty() {
            members = self
                .joined_members
                .iter()
                .map(|m| (m.member_id, m.clone()))
                .collect();
        }
        let cluster: Option<metapb::Cluster> = engine.get_msg(Cf::Default, k::CLUSTER_KEY)?;
        let id = self.raw.raft.id;
        self.transport.retain(|m| members.contains_key(&m));
        let mut view = self.view.write();
        view.removed = self.raw.store().is_initialized()
            && !self.raw.store().conf_state().get_voters().contains(&id)
            && !self.raw.store().conf_state().get_learners().contains(&id);
        view.members = members;
        view.cluster_id = cluster.map_or(0, |c| c.id);
        Ok(())
    }

    fn publish(&mut self) {
        let r = &self.raw.raft;
        let (applied, applied_term) = self.raw.store().applied();
        let serving = (r.state == StateRole::Leader && applied_term == r.term).then_some(r.term);
        // A follower that has not heard from its leader for an election timeout does not
        // send clients there.
        let leader_id = match r.state {
            StateRole::Leader => r.id,
            _ if r.election_elapsed < r.election_timeout() => r.leader_id,
            _ => 0,
        };
        let matched = match r.state {
            StateRole::Leader => r.prs().iter().map(|(id, p)| (*id, p.matched)).collect(),
            _ => BTreeMap::new(),
        };
        let commit = r.raft_log.committed;
        let mut view = self.view.write();
        view.matched = matched;
        view.commit = commit;
        view.voters = self.raw.store().conf_state().get_voters().to_vec();
        if view.serving_term != serving {
            info!(self.logger, "pd leadership"; "serving" => serving.is_some(), "term" => r.term);
            metrics::PD_IS_LEADER.set(i64::from(serving.is_some()));
            if serving.is_some() {
                metrics::PD_RAFT_EVENTS
                    .with_label_values(&["became_leader"])
                    .inc();
            }
            let _ = self.serving.send(serving);
        }
        view.serving_term = serving;
        view.term = r.term;
        view.leader_id = leader_id;
        view.applied = applied;
        metrics::PD_RAFT_TERM.set(r.term as i64);
    }

    fn fail_waiters(&mut self) {
        for (_, (_, done)) in std::mem::take(&mut self.proposals) {
            let _ = done.send(Err(Error::Undetermined("pd member stopped".into())));
        }
        for done in self.confirms.drain(..) {
            let _ = done.send(Err(not_leader()));
        }
        for (_, (_, waiters)) in self.reads.drain() {
            for done in waiters {
                let _ = done.send(Err(not_leader()));
            }
        }
    }
}

/// A proposal raft-rs refused: dropped while a leadership transfer runs, or by a
/// member that is no longer leader; the caller should find the leader again.
fn proposal_error(e: raft::Error) -> Error {
    match e {
        raft::Error::ProposalDropped => Error::NotLeader(None),
        e => Error::Raft(e.to_string()),
    }
}

/// Stops this member serving when the group's thread ends, however it ends.
struct StopServing {
    view: Arc<RwLock<View>>,
    serving: Sender<Option<u64>>,
}

impl Drop for StopServing {
    fn drop(&mut self) {
        let mut view = self.view.write();
        if view.serving_term.take().is_some() {
            metrics::PD_IS_LEADER.set(0);
        }
        view.leader_id = 0;
        let _ = self.serving.send(None);
    }
}

/// A conf change adding voter `id`.
pub(crate) fn add_voter(id: u64) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = id;
    cc
}

/// A conf change adding learner `id` (a joining member, until it caught up).
pub(crate) fn add_learner(id: u64) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddLearnerNode);
    cc.node_id = id;
    cc
}

/// A conf change removing member `id`.
pub(crate) fn remove_member(id: u64) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::RemoveNode);
    cc.node_id = id;
    cc
}

/// A write of `value` under `key`.
pub(crate) fn put(key: &[u8], value: Vec<u8>) -> KvOp {
    let mut op = KvOp::default();
    op.set_key(key.to_vec());
    op.set_value(value);
    op
}

/// A delete of `key`.
pub(crate) fn delete(key: &[u8]) -> KvOp {
    let mut op = KvOp::default();
    op.set_delete(true);
    op.set_key(key.to_vec());
    op
}
