//! Client commands, both halves: the leader checks a command (leadership, disk room,
//! apply lag, epoch, keys, size) and proposes it; every replica executes its writes on
//! the apply poller, into the round's batch.

use std::time::Instant;

use engine::Cf;
use proto::raft_cmdpb::{AdminCmdType, CmdType, RaftCmdRequest, Request};
use protobuf::Message as _;
use raft::RawNode;

use crate::{
    fsm::{
        apply::{ApplyContext, ApplyFsm},
        peer::{PeerFsm, PollContext},
    },
    metrics,
    msg::{Callback, CasResult, CmdResponse, Proposal},
    operation::session,
    storage::PeerStorage,
    util::{check_epoch, check_request_keys},
    Error, Result,
};

fn data_cf(name: &str) -> Result<Cf> {
    Cf::data_from_name(name)
        .ok_or_else(|| Error::InvalidRequest(format!("unknown column family {name:?}")))
}

impl PeerFsm {
    /// Checks that a command may be proposed by this peer now.
    pub(crate) fn check_command(&self, cmd: &RaftCmdRequest, ctx: &PollContext) -> Result<()> {
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
        check_epoch(region, header.get_region_epoch(), cmd.has_admin_request())?;
        for req in cmd.get_requests() {
            check_request_keys(region, req)?;
        }
        let session = cmd.get_header().get_session();
        session::check_header(session, ctx.cfg.session_window)?;
        let ttl_ms = ctx.cfg.session_ttl.as_millis() as u64;
        session::check_sent(session, session::now_ms(), ttl_ms)
    }

    pub(crate) fn propose_command(
        &mut self,
        mut cmd: RaftCmdRequest,
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
        session::stamp(&mut cmd, &ctx.cfg);
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
                    if let Err(e) = self.check_hash_interval() {
                        return cb(Err(e));
                    }
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
        // Test-only: raft-rs refuses a data command, as during a leader transfer.
        let dropped =
            !cmd.has_admin_request() && fail::eval("raft_drop_proposal", |_| ()).is_some();
        let propose = |raft: &mut RawNode<PeerStorage>| match dropped {
            true => Err(raft::Error::ProposalDropped),
            false => raft.propose(vec![], data),
        };
        self.propose("normal", propose, cb);
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
}

impl ApplyFsm {
    pub(crate) fn exec(
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
        self.exec_in_session(cmd, ctx, |fsm, ctx| {
            let mut resp = CmdResponse::default();
            for req in cmd.get_requests() {
                fsm.exec_request(req, &mut resp, ctx)?;
            }
            Ok(resp)
        })
    }

    pub(crate) fn exec_request(
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
                // The user's bytes of the stored value, if alive when the command was
                // proposed (expired values are absent to a compare-and-swap too).
                let previous = ctx
                    .engine
                    .get(cf, &key)?
                    .and_then(|v| keys::raw::live_value(&v, cas.get_now()).map(<[u8]>::to_vec));
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
}
