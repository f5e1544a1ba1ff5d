//! One round of an apply poller: each region's state machine executes its committed
//! entries into one shared WriteBatch, written once at the end of the round; then peers
//! hear what was applied, and only then do clients get their answers.

use std::{sync::Arc, time::Instant};

use engine::{Engine, WriteBatch};
use parking_lot::Mutex;

use crate::{
    batch::{FsmGuard, PollHandler},
    fsm::apply::ApplyFsm,
    metrics,
    msg::{ApplyMsg, ApplyRes, CmdResponse, PeerMsg, Proposal},
    store_meta::StoreMeta,
    RaftRouter, Result,
};

/// What every region handled by one apply poller shares in a round.
pub(crate) struct ApplyContext {
    pub engine: Engine,
    pub router: RaftRouter,
    pub store_meta: Arc<Mutex<StoreMeta>>,
    pub messages_per_round: usize,
    pub wb: WriteBatch,
    pub sync: bool,
    cbs: Vec<(Proposal, Result<CmdResponse>)>,
    res: Vec<(u64, ApplyRes)>,
}

impl ApplyContext {
    pub fn new(
        engine: Engine,
        router: RaftRouter,
        store_meta: Arc<Mutex<StoreMeta>>,
        messages_per_round: usize,
    ) -> Self {
        ApplyContext {
            wb: engine.write_batch(),
            engine,
            router,
            store_meta,
            messages_per_round,
            sync: false,
            cbs: vec![],
            res: vec![],
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
}

impl PollHandler<ApplyFsm> for ApplyPoller {
    fn handle(&mut self, fsm: &mut ApplyFsm, inbox: &crossbeam_channel::Receiver<ApplyMsg>) {
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
                .ctx
                .router
                .force_send(region_id, PeerMsg::ApplyRes(Box::new(res)));
        }
        for (p, res) in self.ctx.cbs.drain(..) {
            metrics::COMMAND_SECONDS
                .with_label_values(&["apply"])
                .observe(p.proposed_at.elapsed().as_secs_f64());
            (p.cb)(res);
        }
    }
}
