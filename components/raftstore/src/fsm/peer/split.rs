//! Splits on the Raft poller: the leader checks the keys and asks PD for ids, proposes the
//! split, and the store creates the new regions' peers once it is applied.

use proto::metapb;
use slog::{debug, info, warn};

use super::PeerFsm;
use crate::{
    msg::{Callback, PdTask, StoreMsg},
    poll::PollContext,
    split::{show, validate_split_keys},
    split_check::SplitCheckTask,
    util::check_epoch,
    Error,
};

impl PeerFsm {
    /// A request to split at `keys`: checked here, then PD is asked for ids.
    pub(crate) fn on_split_request(
        &mut self,
        epoch: Option<metapb::RegionEpoch>,
        keys: Vec<Vec<u8>>,
        cb: Callback<Vec<metapb::Region>>,
        ctx: &mut PollContext,
    ) {
        let limit = ctx.cfg.max_split_keys;
        let checked = if keys.len() > limit {
            Err(Error::InvalidRequest(format!(
                "{} split keys, more than raftstore.max-split-keys ({limit})",
                keys.len()
            )))
        } else if !self.is_leader() {
            Err(self.not_leader())
        } else {
            epoch
                .map_or(Ok(()), |e| check_epoch(self.region(), &e, false))
                .and_then(|()| validate_split_keys(self.region(), &keys))
        };
        if let Err(e) = checked {
            return cb(Err(e));
        }
        // The keys are user data: only at debug level.
        info!(self.logger, "asking PD to split"; "split_keys" => keys.len());
        debug!(self.logger, "split keys"; "keys" => ?keys.iter().map(|k| show(k)).collect::<Vec<_>>());
        let task = PdTask::AskBatchSplit {
            region: self.region().clone(),
            peer: self.peer.clone(),
            keys,
            cb,
        };
        if let Err(e) = ctx.pd_tx.send(task) {
            if let PdTask::AskBatchSplit { cb, .. } = e.into_inner() {
                cb(Err(Error::Stopped));
            }
        }
    }

    /// Sends the region to the split checker if enough was written since the last check.
    pub(crate) fn maybe_check_split(&mut self, ctx: &mut PollContext) {
        let diff = ctx.cfg.region_split_check_diff.as_u64();
        if self.size_diff_hint == 0 || self.size_diff_hint < diff {
            return;
        }
        // The hint is cleared by the result, not here: a split that fails (a membership
        // change bumped the epoch meanwhile) is then measured and tried again.
        let _ = ctx.split_check_tx.send(SplitCheckTask {
            region: self.region().clone(),
            split_size: ctx.cfg.region_split_size.as_u64(),
            split_keys: ctx.cfg.region_split_keys,
        });
    }

    /// What the split checker measured; splits if it found a split key.
    pub(crate) fn on_split_check_result(
        &mut self,
        epoch: metapb::RegionEpoch,
        size: u64,
        keys: u64,
        split_keys: Vec<Vec<u8>>,
        ctx: &mut PollContext,
    ) {
        if epoch.get_version() != self.region().get_region_epoch().get_version() {
            return;
        }
        self.approximate = Some((size, keys));
        if split_keys.is_empty() {
            self.size_diff_hint = 0;
            return;
        }
        let logger = self.logger.clone();
        let cb: Callback<Vec<metapb::Region>> = Box::new(move |res| {
            if let Err(e) = res {
                warn!(logger, "automatic split failed"; "err" => %e);
            }
        });
        self.on_split_request(Some(epoch), split_keys, cb, ctx);
    }

    /// Acts on an applied split: shrink this peer's range, have the store create the new
    /// regions' peers.
    pub(crate) fn on_split_applied(
        &mut self,
        regions: Vec<metapb::Region>,
        create: Vec<metapb::Region>,
        ctx: &mut PollContext,
    ) {
        // The split is durable; the new regions' peers are not created yet.
        fail::fail_point!("raft_after_split_applied");
        crate::metrics::SPLITS.inc();
        let parent = regions[0].clone();
        self.raft.mut_store().set_region(parent.clone());
        {
            let mut meta = ctx.store_meta.lock();
            meta.set_region(parent);
            for r in &create {
                meta.set_region(r.clone());
            }
        }
        // The shrunk region may still be past a limit; measure it again.
        self.size_diff_hint = ctx.cfg.region_split_check_diff.as_u64().max(1);
        self.approximate = None;
        self.heartbeat_due = true;
        let campaign = self.is_leader();
        let _ = ctx.router.store.send(StoreMsg::CreateSplitPeers {
            regions: create,
            campaign,
        });
    }
}
