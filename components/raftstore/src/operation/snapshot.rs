//! Snapshots, both halves. A leader's snapshot is generated off the Raft thread (see
//! `crate::snap`); a follower accepts one only whole and only for a range no other
//! region here holds, persists it as its log's new base with the region marked
//! `Applying` (what a restart needs to redo the apply), and hands it to the apply side
//! once nothing else is in flight there. The apply side checks and ingests the files and
//! writes its apply state; the peer then marks the region live.

use std::path::PathBuf;

use engine::Cf;
use proto::{metapb, raft_serverpb::SnapshotData};
use protobuf::Message as _;
use raft::eraftpb::{Message, Snapshot};
use slog::{error, info, warn};

use crate::{
    fsm::{
        apply::{ApplyContext, ApplyFsm},
        peer::{PeerFsm, PollContext},
    },
    metrics,
    msg::{ApplyMsg, ExecResult},
    operation::session::SessionTable,
    snap::{self, parse_cf, snap_key, ReceivedFiles, SnapKey},
    storage::delete_region_data,
    Error, Result,
};

impl PeerFsm {
    /// Whether a snapshot message may be stepped: it must decode, be for this region,
    /// name only data column families (and `raft`, its sessions), have arrived whole with its files (a snapshot
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

    /// Writes a snapshot's new log base and the record that lets a restart redo its
    /// apply into the round's batch; takes its received files. Accepted snapshots came
    /// with their files and decode (see `accept_snapshot`), so a failure here is a bug.
    pub(crate) fn persist_snapshot(
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

    pub(crate) fn on_snapshot_persisted(
        &mut self,
        snap: &Snapshot,
        files: ReceivedFiles,
        ctx: &mut PollContext,
    ) {
        debug_assert!(
            !self.stopped,
            "a destroyed peer's apply side is not in the router"
        );
        let region = self.region().clone();
        let meta = snap.get_metadata();
        info!(self.logger, "applying snapshot"; "index" => meta.index, "term" => meta.term);
        // Proposals of a term this peer led whose entries the snapshot covers: applied
        // or overwritten, nobody here can tell, and a client must not resend them as
        // never applied.
        for p in self.proposals.take_covered(meta.index) {
            (p.cb)(Err(Error::Undetermined(
                "a snapshot replaced the log holding the entry",
            )));
        }
        {
            let mut meta = ctx.store_meta.lock();
            meta.set_region(region.clone());
            meta.set_snapshot_applying(region.get_id(), true);
        }
        self.applying_snapshot = true;
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

    /// The apply side has put a snapshot's data in place: the region is live.
    pub(crate) fn on_snapshot_applied(&mut self, region: metapb::Region, ctx: &mut PollContext) {
        // The data and the apply state are on disk; the region is still `Applying`.
        fail::fail_point!("raft_before_marking_a_snapshot_live");
        info!(self.logger, "snapshot applied");
        self.applying_snapshot = false;
        self.set_region(region.clone());
        let mut meta = ctx.store_meta.lock();
        meta.set_snapshot_applying(region.get_id(), false);
        meta.set_region(region);
    }
}

impl ApplyFsm {
    /// Applies a snapshot handed over by the peer; a failure stops the region.
    pub(crate) fn on_snapshot(
        &mut self,
        region: metapb::Region,
        index: u64,
        term: u64,
        files: &ReceivedFiles,
        ctx: &mut ApplyContext,
    ) {
        if let Err(e) = self.apply_snapshot(region, index, term, files, ctx) {
            // Going on would apply later entries on top of a half-replaced range and
            // diverge from the other replicas. Stop instead: the region stays marked
            // Applying on disk and a restart redoes the apply from the received files,
            // checked first.
            error!(self.logger, "applying snapshot failed; stopping"; "err" => %e);
            metrics::SNAPSHOTS
                .with_label_values(&["apply", "error"])
                .inc();
            panic!(
                "region {}: applying the snapshot at index {index} failed: {e}",
                self.region.get_id()
            );
        }
    }

    /// Replaces the region's data with a received snapshot's files (checked first, since
    /// after a restart they come from disk), then records the region as live and the
    /// snapshot's index as applied.
    pub(crate) fn apply_snapshot(
        &mut self,
        region: metapb::Region,
        index: u64,
        term: u64,
        files: &ReceivedFiles,
        ctx: &mut ApplyContext,
    ) -> Result<()> {
        ctx.write();
        let started = std::time::Instant::now();
        let mut by_cf = vec![];
        for (meta, path) in files {
            snap::verify_file(meta, path)?;
            by_cf.push((snap::parse_cf(meta.get_cf())?, path.clone()));
        }
        fail::fail_point!("apply_snapshot_before_ingest");
        let mut clear = ctx.engine.write_batch();
        delete_region_data(&mut clear, &region);
        ctx.engine.write(clear, false)?;
        for cf in Cf::DATA {
            let of_cf: Vec<PathBuf> = by_cf
                .iter()
                .filter(|(c, _)| *c == cf)
                .map(|(_, p)| p.clone())
                .collect();
            ctx.engine.ingest(cf, &of_cf)?;
        }
        fail::fail_point!("apply_snapshot_after_ingest");
        self.region = region.clone();
        self.apply_state.applied_index = index;
        self.apply_state.applied_term = term;
        // The peer marks the region live when it hears of this (a restart that finds it
        // still `Applying` with this apply state knows the data is in place).
        let mut done = ctx.engine.write_batch();
        let sessions = match by_cf.iter().find(|(cf, _)| *cf == Cf::Raft) {
            Some((_, path)) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| Error::Snapshot(format!("read {}: {e}", path.display())))?;
                SessionTable::decode(&bytes)?
            }
            None => SessionTable::default(),
        };
        sessions.copy_to(region.get_id(), &mut done);
        self.sessions = Some(sessions);
        done.put_msg(
            Cf::Raft,
            &keys::apply_state_key(region.get_id()),
            &self.apply_state,
        );
        ctx.engine.write(done, true)?;
        snap::remove_files(&by_cf);
        metrics::SNAPSHOTS.with_label_values(&["apply", "ok"]).inc();
        metrics::SNAPSHOT_SECONDS
            .with_label_values(&["apply"])
            .observe(started.elapsed().as_secs_f64());
        metrics::SNAPSHOT_BYTES
            .with_label_values(&["apply"])
            .inc_by(files.iter().map(|(m, _)| m.size).sum());
        self.results.push(ExecResult::SnapshotApplied { region });
        self.dirty = true;
        Ok(())
    }
}
