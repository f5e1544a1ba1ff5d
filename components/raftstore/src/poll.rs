//! One round of the Raft pollers: handle each peer's mail, gather every peer's Ready into
//! one WriteBatch, write it with one fsync, then finish each Ready (send messages, hand
//! committed entries to the apply pool).

use std::{collections::HashMap, sync::Arc, time::Instant};

use crossbeam_channel::{Receiver, Sender};
use engine::{Engine, WriteBatch};
use parking_lot::Mutex;
use proto::raft_serverpb::RaftMessage;

use crate::{
    batch::{FsmGuard, PollHandler},
    fsm::peer::PeerFsm,
    metrics,
    msg::{PdTask, PeerMsg},
    router::ApplyRouter,
    snap::SnapManager,
    split_check::SplitCheckTask,
    store_meta::StoreMeta,
    transport::Transport,
    Config, RaftRouter,
};

/// What every peer handled by one poller shares.
pub(crate) struct PollContext {
    pub cfg: Arc<Config>,
    pub engine: Engine,
    pub router: RaftRouter,
    pub apply_router: ApplyRouter,
    pub transport: Arc<dyn Transport>,
    pub pd_tx: Sender<PdTask>,
    pub store_meta: Arc<Mutex<StoreMeta>>,
    pub snap_mgr: SnapManager,
    pub split_check_tx: Sender<SplitCheckTask>,
    /// Whether the disk has room for client writes (measured by the store loop).
    pub disk: crate::disk::DiskSpace,
    /// This round's Raft writes, for every peer.
    pub raft_wb: WriteBatch,
    /// This round's write holds new log entries: fsynced unless `sync-log` is off.
    pub sync_log: bool,
    /// This round's write holds state that must be durable whatever `sync-log` says: a
    /// new term or vote (else a store that lost power could vote twice in one term), a
    /// snapshot's new log base, a peer's removal.
    pub sync_state: bool,
    /// This round's outgoing messages, by destination store.
    pub outgoing: HashMap<u64, Vec<RaftMessage>>,
}

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
