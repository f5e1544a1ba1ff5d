//! Raft log compaction, both halves. A leader proposes compacting up to what every peer
//! has, or, past the count or size limit, up to what it has applied (a follower that
//! lags that far gets a snapshot). The apply side reports it; the peer, the log's owner,
//! deletes the entries.

use proto::raft_cmdpb::{AdminCmdType, AdminRequest, CompactLogRequest};
use protobuf::Message as _;
use slog::{debug, warn};

use crate::{
    fsm::{
        apply::ApplyFsm,
        peer::{PeerFsm, PollContext},
    },
    metrics,
    msg::{CmdResponse, ExecResult},
    Result,
};

impl PeerFsm {
    pub(crate) fn maybe_compact_log(&mut self, ctx: &mut PollContext) {
        let store = self.raft.store();
        let applied = store.applied_index();
        let first = store.truncated_index() + 1;
        let last = store.last_index();
        if applied < first {
            return;
        }
        let replicated = self
            .raft
            .raft
            .prs()
            .iter()
            .map(|(_, p)| p.matched)
            .min()
            .unwrap_or(applied);
        let over_limit = last + 1 - first > ctx.cfg.raft_log_gc_count_limit
            || store.approximate_log_bytes() > ctx.cfg.raft_log_gc_size_limit.as_u64();
        let compact_to = if over_limit {
            applied
        } else {
            replicated.min(applied)
        };
        if compact_to < first
            || (!over_limit && compact_to + 1 - first < ctx.cfg.raft_log_gc_threshold)
        {
            return;
        }
        let term = match self.raft.raft.raft_log.term(compact_to) {
            Ok(t) => t,
            Err(e) => {
                warn!(self.logger, "cannot compact log"; "index" => compact_to, "err" => %e);
                return;
            }
        };
        debug!(self.logger, "compacting raft log"; "to" => compact_to, "forced" => over_limit);
        let mut admin = AdminRequest::default();
        admin.set_cmd_type(AdminCmdType::CompactLog);
        admin.mut_compact_log().compact_index = compact_to;
        admin.mut_compact_log().compact_term = term;
        let data = self
            .admin_command(admin)
            .write_to_bytes()
            .expect("encoding a command into memory cannot fail");
        self.propose(
            "compact_log",
            |raft| raft.propose(vec![], data),
            Box::new(|_| {}),
        );
    }

    /// Deletes the compacted entries once the compaction is applied.
    pub(crate) fn on_compact_log(&mut self, index: u64, term: u64, ctx: &mut PollContext) {
        let first = self.raft.store().truncated_index() + 1;
        metrics::LOG_GC_ENTRIES.inc_by((index + 1).saturating_sub(first));
        self.raft
            .mut_store()
            .compact_to(index, term, &mut ctx.raft_wb);
    }
}

impl ApplyFsm {
    /// Reports an applied compaction to the peer, skipping what is gone already.
    pub(crate) fn exec_compact_log(&mut self, req: &CompactLogRequest) -> Result<CmdResponse> {
        if req.compact_index <= self.apply_state.applied_index {
            self.results.push(ExecResult::CompactLog {
                index: req.compact_index,
                term: req.compact_term,
            });
        }
        Ok(CmdResponse::default())
    }
}
