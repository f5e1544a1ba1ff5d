//! ComputeHash on the apply poller.

use super::ApplyFsm;
use crate::apply_poll::ApplyContext;
use crate::{consistency::region_hash, msg::CmdResponse, Result};

impl ApplyFsm {
    /// Hashes the region as of the ComputeHash entry at `index`: everything applied
    /// before it is written out first, so the hash sees exactly that state.
    pub(crate) fn exec_compute_hash(
        &mut self,
        index: u64,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        ctx.write();
        let hash = region_hash(&ctx.engine, &self.region)?;
        ctx.store_meta
            .lock()
            .set_hash(self.region.get_id(), index, hash);
        Ok(CmdResponse {
            hash: Some((index, hash)),
            ..Default::default()
        })
    }
}
