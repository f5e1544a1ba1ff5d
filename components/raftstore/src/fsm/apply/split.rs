//! Applying a split (apply poller): every replica writes the new regions' initial states
//! in the same batch as the parent's shrunk range.

use engine::Cf;
use proto::raft_cmdpb::RaftCmdRequest;
use proto::raft_serverpb::{PeerState, RegionLocalState};
use slog::{info, warn};

use super::ApplyFsm;
use crate::apply_poll::ApplyContext;
use crate::{
    bootstrap,
    msg::{CmdResponse, ExecResult},
    split::split_regions,
    storage::put_region_state,
    util::check_epoch,
    Result,
};

impl ApplyFsm {
    pub(crate) fn exec_batch_split(
        &mut self,
        cmd: &RaftCmdRequest,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        fail::fail_point!("apply_before_split");
        check_epoch(&self.region, cmd.get_header().get_region_epoch(), true)?;
        let regions = split_regions(&self.region, cmd.get_admin_request().get_splits())?;
        let mut create = vec![];
        {
            // Under the lock the store also holds while creating peers from messages, so
            // that a new region's peer is made by exactly one of the two.
            let mut meta = ctx.store_meta.lock();
            for new in &regions[1..] {
                let id = new.get_id();
                // A Raft state alone is an empty peer from before a restart that may
                // have voted: the initial state must not overwrite its vote.
                let known = ctx.router.peers.contains(id)
                    || ctx
                        .engine
                        .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(id))?
                        .is_some()
                    || ctx
                        .engine
                        .get(Cf::Raft, &keys::raft_state_key(id))?
                        .is_some();
                if known {
                    warn!(self.logger, "new region's peer already exists here; it will catch up by snapshot";
                          "new_region_id" => id);
                    continue;
                }
                meta.pending_split_peers.insert(id);
                bootstrap::initial_region_states(&mut ctx.wb, new);
                create.push(new.clone());
            }
        }
        put_region_state(&mut ctx.wb, &regions[0], PeerState::Normal);
        ctx.sync = true;
        info!(self.logger, "applied split"; "regions" => ?regions.iter().map(|r| r.get_id()).collect::<Vec<_>>(),
              "version" => regions[0].get_region_epoch().get_version());
        self.region = regions[0].clone();
        self.results.push(ExecResult::Split {
            regions: regions.clone(),
            create,
        });
        Ok(CmdResponse {
            region: Some(regions[0].clone()),
            split_regions: regions,
            ..Default::default()
        })
    }
}
