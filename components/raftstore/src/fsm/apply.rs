//! The apply state machine: executes a region's committed entries against the engine;
//! and what the apply pollers share.
//!
//! Data and the apply state that covers it go into the same WriteBatch, so a restart
//! resumes exactly after the last applied entry. The apply state is this state machine's
//! alone; the region's shape (`RegionLocalState`) is its peer's, which writes it when the
//! apply side reports a split, a membership change or a snapshot in place. Until the peer
//! has written it, the apply side goes no further than the entry that changed it (see
//! `Fence`), so that a restart never finds applied entries past a region change that is
//! not on disk: it applies that entry again instead.

use std::{collections::VecDeque, sync::Arc};

use engine::{Engine, WriteBatch};
use parking_lot::Mutex;
use proto::{
    metapb,
    raft_cmdpb::{AdminCmdType, RaftCmdRequest},
    raft_serverpb::RaftApplyState,
};
use slog::{o, Logger};

use crate::{
    batch::{Fsm, Router},
    msg::{ApplyMsg, ApplyRes, CmdResponse, ExecResult, Proposal},
    store_meta::StoreMeta,
    Error, Result,
};

/// Routes mail to apply state machines.
pub type ApplyRouter = Router<ApplyFsm>;

/// What every region handled by one apply poller shares in a round.
pub(crate) struct ApplyContext {
    pub engine: Engine,
    pub store_meta: Arc<Mutex<StoreMeta>>,
    pub messages_per_round: usize,
    pub wb: WriteBatch,
    pub sync: bool,
    /// Proposals to answer once the round is written.
    pub cbs: Vec<(Proposal, Result<CmdResponse>)>,
    /// Reports for peers, sent once the round is written.
    pub res: Vec<(u64, ApplyRes)>,
    /// Regions whose data this round deletes (their peers were destroyed).
    pub destroyed: Vec<u64>,
}

impl ApplyContext {
    /// A context for one apply poller.
    pub fn new(
        engine: Engine,
        store_meta: Arc<Mutex<StoreMeta>>,
        messages_per_round: usize,
    ) -> Self {
        ApplyContext {
            wb: engine.write_batch(),
            engine,
            store_meta,
            messages_per_round,
            sync: false,
            cbs: vec![],
            res: vec![],
            destroyed: vec![],
        }
    }

    /// Answers a proposal once the round is written.
    pub(crate) fn respond(&mut self, p: Proposal, res: Result<CmdResponse>) {
        self.cbs.push((p, res));
    }

    /// Tells a region's peer what was applied, once the round is written.
    pub(crate) fn report(&mut self, region_id: u64, res: ApplyRes) {
        self.res.push((region_id, res));
    }
}

/// An applied entry that changed the region, waiting for the peer to write the region's
/// new shape. The apply state on disk stays just before it; later mail waits.
pub(crate) struct Fence {
    /// The entry that changed the region.
    pub index: u64,
    /// The applied index written before it: where a restart resumes.
    pub before: u64,
    /// The entry's proposal and answer, given once the change is durable.
    pub answer: Option<(Proposal, Result<CmdResponse>)>,
}

/// One region's apply state machine.
pub struct ApplyFsm {
    pub(crate) region: metapb::Region,
    pub(crate) apply_state: RaftApplyState,
    pub(crate) logger: Logger,
    pub(crate) stopped: bool,
    pub(crate) results: Vec<ExecResult>,
    pub(crate) dirty: bool,
    pub(crate) fence: Option<Fence>,
    /// Mail that arrived while fenced, in order.
    pub(crate) stash: VecDeque<ApplyMsg>,
    /// The region's client sessions, read on first use (`None`: not read yet).
    pub(crate) sessions: Option<crate::operation::session::SessionTable>,
}

impl Fsm for ApplyFsm {
    type Message = ApplyMsg;
}

impl ApplyFsm {
    /// An apply state machine resuming from the state on disk.
    pub fn new(
        region: metapb::Region,
        peer_id: u64,
        apply_state: RaftApplyState,
        logger: &Logger,
    ) -> ApplyFsm {
        let logger =
            logger.new(o!("region_id" => region.get_id(), "peer_id" => peer_id, "apply" => true));
        ApplyFsm {
            region,
            apply_state,
            logger,
            stopped: false,
            results: vec![],
            dirty: false,
            fence: None,
            stash: VecDeque::new(),
            sessions: None,
        }
    }

    /// Handles one piece of mail, or keeps it for later while fenced.
    pub(crate) fn on_msg(&mut self, msg: ApplyMsg, ctx: &mut ApplyContext) {
        match msg {
            ApplyMsg::Destroy { region } => self.destroy(&region, ctx),
            ApplyMsg::RegionPersisted { index } => self.on_region_persisted(index, ctx),
            msg if self.fence.is_some() => self.stash.push_back(msg),
            ApplyMsg::Entries { entries, proposals } => self.apply_entries(entries, proposals, ctx),
            ApplyMsg::Snapshot {
                region,
                index,
                term,
                files,
            } => self.on_snapshot(region, index, term, &files, ctx),
        }
    }

    pub(crate) fn exec_admin(
        &mut self,
        cmd: &RaftCmdRequest,
        index: u64,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        let admin = cmd.get_admin_request();
        match admin.get_cmd_type() {
            AdminCmdType::BatchSplit => self.exec_batch_split(cmd, index, ctx),
            AdminCmdType::ComputeHash => self.exec_compute_hash(index, ctx),
            AdminCmdType::CompactLog => self.exec_compact_log(admin.get_compact_log()),
            other => Err(Error::InvalidRequest(format!(
                "admin command {other:?} cannot be applied as a normal entry"
            ))),
        }
    }
}
