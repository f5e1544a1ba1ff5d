//! The apply state machine: executes a region's committed entries against the engine.
//!
//! Data and the apply state that covers it go into the same WriteBatch, so a restart
//! resumes exactly after the last applied entry. Data writes are not fsynced (the Raft log
//! is, and replay is deterministic); admin commands are.

mod consistency;
mod split;

use std::path::PathBuf;

use engine::Cf;
use proto::{
    metapb,
    raft_cmdpb::{AdminCmdType, CmdType, RaftCmdRequest, Request},
    raft_serverpb::{PeerState, RaftApplyState},
};
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType};
use slog::{error, info, o, Logger};

use crate::apply_poll::ApplyContext;
use crate::{
    batch::Fsm,
    conf_change::apply_change,
    metrics,
    msg::{ApplyMsg, ApplyRes, CasResult, CmdResponse, ExecResult, Proposal},
    snap::{self, ReceivedFiles},
    storage::put_region_state,
    util::{check_epoch, check_request_keys},
    Error, Result,
};

/// One region's apply state machine.
pub struct ApplyFsm {
    region: metapb::Region,
    apply_state: RaftApplyState,
    logger: Logger,
    stopped: bool,
    results: Vec<ExecResult>,
    dirty: bool,
}

impl Fsm for ApplyFsm {
    type Message = ApplyMsg;
}

fn data_cf(name: &str) -> Result<Cf> {
    Cf::data_from_name(name)
        .ok_or_else(|| Error::InvalidRequest(format!("unknown column family {name:?}")))
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
        }
    }

    fn on_msg(&mut self, msg: ApplyMsg, ctx: &mut ApplyContext) {
        match msg {
            ApplyMsg::Entries { entries, proposals } => {
                // Reported even if every entry was applied already: the peer waits for
                // the report before it takes a snapshot.
                self.dirty = true;
                let mut proposals = proposals.into_iter().peekable();
                for e in entries {
                    let p = proposals.next_if(|p| p.index == e.index);
                    self.apply_entry(e, p, ctx);
                }
            }
            ApplyMsg::Snapshot {
                region,
                index,
                term,
                files,
            } => {
                if let Err(e) = self.apply_snapshot(region, index, term, &files, ctx) {
                    // Going on would apply later entries on top of a half-replaced range
                    // and diverge from the other replicas. Stop instead: the region stays
                    // marked Applying on disk and a restart redoes the apply from the
                    // received files, checked first.
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
            ApplyMsg::Destroy => self.destroy(ctx),
        }
    }

    fn destroy(&mut self, ctx: &mut ApplyContext) {
        // The Raft side has written the tombstone and deleted the log; the data goes now.
        fail::fail_point!("apply_destroy");
        // A peer created by a message has no range yet (an empty region means "all").
        if !self.region.get_peers().is_empty() {
            let start = keys::data_key(self.region.get_start_key());
            let end = keys::data_end_key(self.region.get_end_key());
            for cf in Cf::DATA {
                ctx.wb.delete_range(cf, &start, &end);
            }
        }
        put_region_state(&mut ctx.wb, &self.region, PeerState::Tombstone);
        ctx.sync = true;
        self.stopped = true;
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
        if let Some(p) = proposal {
            if is_write && res.is_ok() {
                metrics::WRITES_APPLIED.inc();
            }
            ctx.respond(p, res);
        }
    }

    fn exec(
        &mut self,
        cmd: &RaftCmdRequest,
        index: u64,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        if cmd.has_admin_request() {
            return self.exec_admin(cmd, index, ctx);
        }
        check_epoch(&self.region, cmd.get_header().get_region_epoch(), false)?;
        for req in cmd.get_requests() {
            check_request_keys(&self.region, req)?;
            match req.get_cmd_type() {
                CmdType::Put => data_cf(req.get_put().get_cf())?,
                CmdType::Delete => data_cf(req.get_delete().get_cf())?,
                CmdType::DeleteRange => data_cf(req.get_delete_range().get_cf())?,
                CmdType::CompareAndSwap => data_cf(req.get_cas().get_cf())?,
                CmdType::Invalid => unreachable!("rejected by check_request_keys"),
            };
        }
        let mut resp = CmdResponse::default();
        for req in cmd.get_requests() {
            self.exec_request(req, &mut resp, ctx)?;
        }
        Ok(resp)
    }

    fn exec_request(
        &mut self,
        req: &Request,
        resp: &mut CmdResponse,
        ctx: &mut ApplyContext,
    ) -> Result<()> {
        match req.get_cmd_type() {
            CmdType::Put => {
                let put = req.get_put();
                ctx.wb.put(
                    data_cf(put.get_cf())?,
                    &keys::data_key(put.get_key()),
                    put.get_value(),
                );
            }
            CmdType::Delete => {
                let del = req.get_delete();
                ctx.wb
                    .delete(data_cf(del.get_cf())?, &keys::data_key(del.get_key()));
            }
            CmdType::DeleteRange => {
                let dr = req.get_delete_range();
                let end = if dr.get_end_key().is_empty() {
                    keys::data_end_key(self.region.get_end_key())
                } else {
                    keys::data_key(dr.get_end_key())
                };
                ctx.wb.delete_range(
                    data_cf(dr.get_cf())?,
                    &keys::data_key(dr.get_start_key()),
                    &end,
                );
            }
            CmdType::CompareAndSwap => {
                let cas = req.get_cas();
                let cf = data_cf(cas.get_cf())?;
                let key = keys::data_key(cas.get_key());
                // The decision must see every earlier write of this round, and a replay
                // after a crash must see the same state: write both out first.
                ctx.wb.put_msg(
                    Cf::Raft,
                    &keys::apply_state_key(self.region.get_id()),
                    &self.apply_state,
                );
                ctx.write();
                let previous = ctx.engine.get(cf, &key)?;
                let succeed = if cas.get_previous_not_exist() {
                    previous.is_none()
                } else {
                    previous.as_deref() == Some(cas.get_previous_value())
                };
                if succeed {
                    ctx.wb.put(cf, &key, cas.get_value());
                }
                resp.cas.push(CasResult { succeed, previous });
            }
            CmdType::Invalid => unreachable!("rejected by check_request_keys"),
        }
        Ok(())
    }

    fn exec_admin(
        &mut self,
        cmd: &RaftCmdRequest,
        index: u64,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        let admin = cmd.get_admin_request();
        match admin.get_cmd_type() {
            AdminCmdType::BatchSplit => self.exec_batch_split(cmd, ctx),
            AdminCmdType::ComputeHash => self.exec_compute_hash(index, ctx),
            AdminCmdType::CompactLog => {
                // The log's owner (the Raft side) truncates, skipping what is gone already.
                let req = admin.get_compact_log();
                if req.compact_index > self.apply_state.applied_index {
                    return Ok(CmdResponse::default());
                }
                self.results.push(ExecResult::CompactLog {
                    index: req.compact_index,
                    term: req.compact_term,
                });
                Ok(CmdResponse::default())
            }
            other => Err(Error::InvalidRequest(format!(
                "admin command {other:?} cannot be applied as a normal entry"
            ))),
        }
    }

    fn exec_conf_change(&mut self, entry: &Entry, ctx: &mut ApplyContext) -> Result<CmdResponse> {
        fail::fail_point!("apply_conf_change");
        let cc = ConfChangeV2::parse_from_bytes(&entry.data)?;
        let cmd = RaftCmdRequest::parse_from_bytes(cc.get_context())?;
        if let Err(e) = check_epoch(&self.region, cmd.get_header().get_region_epoch(), true) {
            // Raft must still see the entry applied, as a change of nothing.
            self.results.push(ExecResult::ChangePeer {
                cc: ConfChangeV2::default(),
                region: self.region.clone(),
            });
            return Err(e);
        }
        let mut region = self.region.clone();
        for change in cmd.get_admin_request().get_change_peer_v2().get_changes() {
            apply_change(&mut region, change);
        }
        put_region_state(&mut ctx.wb, &region, PeerState::Normal);
        ctx.sync = true;
        info!(self.logger, "applied membership change"; "peers" => ?region.get_peers(), "index" => entry.index);
        self.region = region.clone();
        self.results.push(ExecResult::ChangePeer {
            cc,
            region: region.clone(),
        });
        Ok(CmdResponse {
            region: Some(region),
            ..Default::default()
        })
    }

    /// Replaces the region's data with a received snapshot's files (checked first, since
    /// after a restart they come from disk), then records the region as live and the
    /// snapshot's index as applied.
    fn apply_snapshot(
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
        let start = keys::data_key(region.get_start_key());
        let end = keys::data_end_key(region.get_end_key());
        let mut clear = ctx.engine.write_batch();
        for cf in Cf::DATA {
            clear.delete_range(cf, &start, &end);
        }
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
        let mut done = ctx.engine.write_batch();
        put_region_state(&mut done, &region, PeerState::Normal);
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

    /// Handles up to a round's worth of messages from `inbox`.
    pub(crate) fn handle_inbox(
        &mut self,
        inbox: &crossbeam_channel::Receiver<ApplyMsg>,
        ctx: &mut ApplyContext,
    ) {
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

    /// Adds this round's apply state to the batch and queues the report to the peer.
    pub(crate) fn finish_round(&mut self, ctx: &mut ApplyContext) {
        if !self.dirty || self.stopped {
            return;
        }
        self.dirty = false;
        let region_id = self.region.get_id();
        ctx.wb.put_msg(
            Cf::Raft,
            &keys::apply_state_key(region_id),
            &self.apply_state,
        );
        ctx.report(
            region_id,
            ApplyRes {
                applied_index: self.apply_state.applied_index,
                applied_term: self.apply_state.applied_term,
                results: std::mem::take(&mut self.results),
            },
        );
    }
}
