//! Removing a peer from this store, both halves: after its own removal is applied, or
//! when another peer tells it that it was removed (a tombstone message). The peer
//! deletes its log and Raft state and writes the tombstone (fsynced); only then is the
//! apply side told, and it deletes the region's data and its own apply state after every
//! message queued before. Entries it holds back behind a fence (see `crate::fsm::apply`)
//! never apply: their proposals are answered `Undetermined`. Until the apply side's write,
//! the store keeps the region's id and range taken (`StoreMeta::begin_destroy`): no new
//! peer of it and no overlapping snapshot, whose data the deletion would hit. A store that
//! stops in between deletes the leftovers when it starts (`clear_destroyed_leftovers`).

use engine::Cf;
use proto::{
    metapb,
    raft_serverpb::{PeerState, RaftMessage},
};
use protobuf::Message as _;
use raft::eraftpb::Message;
use slog::info;

use crate::{
    fsm::{
        apply::{ApplyContext, ApplyFsm},
        peer::{PeerFsm, PollContext},
    },
    msg::{ApplyMsg, StoreMsg},
    storage::{delete_region_data, put_region_state},
    Error,
};

/// Why a command of a removed peer has no known outcome.
const REMOVED_IN_FLIGHT: &str = "the peer was removed while the command was in flight";

impl PeerFsm {
    /// Deletes this peer's log, states and data, leaving a tombstone so that late
    /// messages cannot bring it back.
    pub(crate) fn destroy(&mut self, ctx: &mut PollContext, reason: &str) {
        let region = self.region().clone();
        let id = region.get_id();
        info!(self.logger, "destroying peer"; "reason" => reason);
        if let Some(kept) = self.kept_snapshot() {
            ctx.snap_mgr.discard_received(kept);
        }
        self.wake(ctx);
        self.stopped = true;
        self.fail_all(
            || Error::Undetermined(REMOVED_IN_FLIGHT),
            || Error::RegionNotFound(id),
        );
        let wb = &mut ctx.raft_wb;
        let log = keys::raft_log_all_range(id);
        wb.delete_range(Cf::Raft, &log.start, &log.end);
        wb.delete(Cf::Raft, &keys::raft_state_key(id));
        // The tombstone goes with the log's deletion so that a restart never finds a live
        // region without a log.
        put_region_state(wb, &region, PeerState::Tombstone);
        ctx.sync_state = true;
        // The apply side deletes the data only once the tombstone is durable
        // (`finish_destroy`): a crash in between must not find a live region without it.
        // Under the lock the store holds while creating peers, so that no new peer of
        // the region finds it neither registered nor being destroyed.
        {
            let mut meta = ctx.store_meta.lock();
            meta.begin_destroy(&region);
            self.apply_to_destroy = ctx.apply_router.unregister(id);
            ctx.peers.unregister(id);
        }
        self.destroy_due = true;
        let _ = ctx.store_tx.send(StoreMsg::PeerDestroyed { region_id: id });
    }

    /// After the round's write (the tombstone is durable): the apply side deletes the
    /// region's data and its apply state, after everything queued before.
    pub(crate) fn finish_destroy(&mut self, ctx: &PollContext) {
        if !std::mem::take(&mut self.destroy_due) {
            return;
        }
        match self.apply_to_destroy.take() {
            // What the tombstone covers: the apply side may have shrunk its region by a
            // split this peer never heard of.
            Some(mailbox) => {
                let _ = mailbox.send(ApplyMsg::Destroy {
                    region: self.region().clone(),
                });
            }
            // No apply side was registered: nothing to wait for.
            None => ctx.store_meta.lock().end_destroy(self.region_id()),
        }
    }

    /// A peer that knows this one was removed says so.
    pub(crate) fn on_tombstone_message(&mut self, msg: &RaftMessage, ctx: &mut PollContext) {
        let ours = self.region().get_region_epoch().get_conf_ver();
        if msg.get_to_peer().get_id() == self.peer.get_id()
            && (msg.get_region_epoch().get_conf_ver() > ours || !self.raft.store().is_initialized())
        {
            self.destroy(ctx, "told by a newer peer that it was removed");
        }
    }

    /// Whether a message comes from a peer that is no longer in the region; if so, tells
    /// it so.
    pub(crate) fn is_stale_sender(&mut self, msg: &RaftMessage, ctx: &mut PollContext) -> bool {
        let from = msg.get_from_peer();
        let region = self.region();
        let known = region
            .get_peers()
            .iter()
            .any(|p| p.get_id() == from.get_id());
        let older =
            msg.get_region_epoch().get_conf_ver() < region.get_region_epoch().get_conf_ver();
        if known || !older || !self.raft.store().is_initialized() {
            return false;
        }
        let mut reply = RaftMessage::default();
        reply.set_region_id(region.get_id());
        reply.set_from_peer(self.peer.clone());
        reply.set_to_peer(from.clone());
        reply.set_region_epoch(region.get_region_epoch().clone());
        reply.set_is_tombstone(true);
        reply.set_message(
            Message::default()
                .write_to_bytes()
                .expect("encode empty message"),
        );
        ctx.outgoing
            .entry(from.get_store_id())
            .or_default()
            .push(reply);
        true
    }
}

impl ApplyFsm {
    /// The peer is gone (its tombstone and its log's deletion are durable): the data and
    /// the apply state go now. What waited on a fence never applies.
    pub(crate) fn destroy(&mut self, region: &metapb::Region, ctx: &mut ApplyContext) {
        fail::fail_point!("apply_destroy");
        // A peer created by a message has no range yet (an empty region means "all").
        if !region.get_peers().is_empty() {
            delete_region_data(&mut ctx.wb, region);
        }
        ctx.wb
            .delete(Cf::Raft, &keys::apply_state_key(self.region.get_id()));
        ctx.sync = true;
        ctx.destroyed.push(self.region.get_id());
        self.stopped = true;
        let gone = || Err(Error::Undetermined(REMOVED_IN_FLIGHT));
        if let Some((p, _)) = self.fence.take().and_then(|f| f.answer) {
            ctx.respond(p, gone());
        }
        for msg in self.stash.drain(..) {
            if let ApplyMsg::Entries { proposals, .. } = msg {
                for p in proposals {
                    ctx.respond(p, gone());
                }
            }
        }
    }
}
