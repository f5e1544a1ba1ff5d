//! Removing a peer from this store: after its own removal is applied, or when another
//! peer tells it that it was removed (a tombstone message).

use engine::Cf;
use proto::raft_serverpb::{PeerState, RaftMessage, SnapshotData};
use protobuf::Message as _;
use raft::eraftpb::Message;
use slog::{info, warn};

use super::PeerFsm;
use crate::{
    metrics,
    msg::{ApplyMsg, StoreMsg},
    poll::PollContext,
    snap::{parse_cf, snap_key, SnapKey},
    storage::put_region_state,
    Error,
};

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
            || Error::Undetermined("the peer was removed while the command was in flight"),
            || Error::RegionNotFound(id),
        );
        let wb = &mut ctx.raft_wb;
        let raft = keys::region_raft_range(id);
        wb.delete_range(Cf::Raft, &raft.start, &raft.end);
        // The tombstone goes with the log's deletion so that a restart never finds a live
        // region without a log. The apply side writes it again, after its last entry,
        // and deletes the data (see `ApplyMsg::Destroy`).
        put_region_state(wb, &region, PeerState::Tombstone);
        ctx.sync_state = true;
        let _ = ctx.apply_router.send(id, ApplyMsg::Destroy);
        ctx.apply_router.unregister(id);
        ctx.router.peers.unregister(id);
        ctx.store_meta.lock().remove_region(id);
        let _ = ctx
            .router
            .store
            .send(StoreMsg::PeerDestroyed { region_id: id });
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

    /// Whether a snapshot message may be stepped: it must decode, be for this region,
    /// name only data column families, have arrived whole with its files (a snapshot
    /// message sent on the plain Raft stream has none), and its range must not overlap
    /// another region here, live or with a snapshot of its own accepted. The range is
    /// claimed under the same lock, so two peers can never accept overlapping snapshots
    /// in one round.
    pub(crate) fn accept_snapshot(&self, msg: &Message, ctx: &PollContext) -> bool {
        let snap = msg.get_snapshot();
        let key = snap_key(self.region_id(), snap);
        match self.kept_snapshot() {
            // The same snapshot again: its claim and files stand; stepping it is harmless.
            Some(kept) if kept == key => return true,
            // One snapshot at a time: the kept one is persisted first (the leader sends
            // again if this one is still needed after).
            Some(_) => {
                ctx.snap_mgr.discard_received(key);
                return false;
            }
            None => {}
        }
        let refuse = |why: &str| {
            warn!(self.logger, "refusing snapshot"; "why" => why, "index" => key.2);
            metrics::SNAPSHOTS
                .with_label_values(&["accept", "refused"])
                .inc();
            ctx.snap_mgr.discard_received(key);
            false
        };
        let Ok(data) = SnapshotData::parse_from_bytes(snap.get_data()) else {
            return refuse("snapshot data does not decode");
        };
        let region = data.get_region();
        if region.get_id() != self.region_id() || region.get_peers().is_empty() {
            return refuse("snapshot describes another or an empty region");
        }
        if data
            .get_files()
            .iter()
            .any(|f| parse_cf(f.get_cf()).is_err())
        {
            return refuse("snapshot names an unknown column family");
        }
        if !ctx.snap_mgr.has_received(key) {
            return refuse("snapshot arrived without its files");
        }
        let mut meta = ctx.store_meta.lock();
        if let Some(other) = meta.overlapping(region) {
            info!(self.logger, "rejecting snapshot that overlaps another region"; "other" => other);
            drop(meta);
            return refuse("overlaps another region");
        }
        meta.claim_snapshot_range(region.clone());
        true
    }

    /// The snapshot raft-rs holds to be persisted, if any.
    pub(crate) fn kept_snapshot(&self) -> Option<SnapKey> {
        let region_id = self.region_id();
        self.raft
            .raft
            .raft_log
            .unstable
            .snapshot
            .as_ref()
            .map(|s| snap_key(region_id, s))
    }

    /// After stepping a snapshot message: if raft-rs did not keep the snapshot (stale),
    /// its files and range claim go.
    pub(crate) fn release_unused_snapshot(&mut self, key: SnapKey, ctx: &PollContext) {
        match self.kept_snapshot() {
            Some(kept) if kept == key => {}
            Some(_) => ctx.snap_mgr.discard_received(key),
            None => {
                ctx.snap_mgr.discard_received(key);
                ctx.store_meta
                    .lock()
                    .release_snapshot_range(self.region_id());
            }
        }
    }
}
