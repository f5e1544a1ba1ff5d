//! Splitting a region, both halves. On the Raft poller the leader checks the keys and
//! asks PD for ids (through a [`crate::PdTask::AskBatchSplit`]); the split is then
//! proposed like any admin command. On the apply poller every replica applies it: the
//! parent's range shrinks, and the apply side reports the new regions and waits (see
//! `crate::fsm::apply`). Back on the Raft poller the peer writes the parent's new shape
//! and the new regions' initial states in one fsynced batch; only then does the apply
//! side go past the split and the store create the new regions' peers. A crash before
//! that write applies the split again after the restart.
//!
//! The parent keeps its id and the leftmost range; each split key starts a new region.
//! A new region's peer that already exists on this store (created by a message from a
//! replica that split first, and possibly having voted since) is left alone: it catches
//! up by snapshot instead of being overwritten.

use engine::Cf;
use proto::{
    metapb, pdpb,
    raft_cmdpb::{AdminCmdType, AdminRequest, BatchSplitRequest, RaftCmdRequest, SplitRequest},
    raft_serverpb::RegionLocalState,
};
use slog::{debug, info, warn};

use crate::{
    bootstrap,
    fsm::{
        apply::{ApplyContext, ApplyFsm},
        peer::{PeerFsm, PollContext},
    },
    msg::{ApplyMsg, Callback, CmdResponse, ExecResult, PdTask, SplitCheckTask, StoreMsg},
    store_meta::StoreMeta,
    util::{check_epoch, key_in_region},
    Error, Result,
};

pub(crate) fn show(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

/// Checks split keys against the region: each non-empty, inside it, not its start key,
/// not between the versions of a transactional key, strictly ascending.
pub fn validate_split_keys(region: &metapb::Region, keys: &[Vec<u8>]) -> Result<()> {
    let invalid = |why: String| Err(Error::InvalidRequest(why));
    if keys.is_empty() {
        return invalid("no split key given".into());
    }
    for (i, key) in keys.iter().enumerate() {
        if key.is_empty() {
            return invalid("a split key must not be empty".into());
        }
        if key.as_slice() == region.get_start_key() {
            return invalid(format!(
                "split key {} is the start key of region {}; it would leave an empty region",
                show(key),
                region.get_id()
            ));
        }
        if !key_in_region(key, region) {
            return invalid(format!(
                "split key {} is outside region {} [{}, {})",
                show(key),
                region.get_id(),
                show(region.get_start_key()),
                show(region.get_end_key())
            ));
        }
        let point = keys::txn::split_point(key);
        if point != key.as_slice() {
            return invalid(format!(
                "split key {} falls between the versions of the transactional key encoded as {}; split there instead",
                show(key),
                show(point)
            ));
        }
        if i > 0 && keys[i - 1] >= *key {
            return invalid("split keys must be strictly ascending".into());
        }
    }
    Ok(())
}

/// The BatchSplit command the leader `peer` proposes for `region`, with PD's ids.
pub fn split_command(
    region: &metapb::Region,
    peer: &metapb::Peer,
    keys: &[Vec<u8>],
    ids: Vec<pdpb::SplitID>,
) -> Result<RaftCmdRequest> {
    if ids.len() != keys.len() {
        return Err(Error::Pd(format!(
            "asked for {} split ids, got {}",
            keys.len(),
            ids.len()
        )));
    }
    let mut splits = BatchSplitRequest::default();
    for (key, mut id) in keys.iter().zip(ids) {
        let mut s = SplitRequest::default();
        s.set_split_key(key.clone());
        s.new_region_id = id.new_region_id;
        s.set_new_peer_ids(id.take_new_peer_ids());
        splits.mut_requests().push(s);
    }
    let mut admin = AdminRequest::default();
    admin.set_cmd_type(AdminCmdType::BatchSplit);
    admin.set_splits(splits);
    let mut cmd = RaftCmdRequest::default();
    let header = cmd.mut_header();
    header.set_region_id(region.get_id());
    header.set_peer(peer.clone());
    header.set_region_epoch(region.get_region_epoch().clone());
    cmd.set_admin_request(admin);
    Ok(cmd)
}

/// The regions splitting `region` by `req` produces, in key order: the parent shrunk to
/// the first range, then one new region per split key. All share the new epoch.
pub fn split_regions(
    region: &metapb::Region,
    req: &BatchSplitRequest,
) -> Result<Vec<metapb::Region>> {
    let keys: Vec<Vec<u8>> = req
        .get_requests()
        .iter()
        .map(|r| r.get_split_key().to_vec())
        .collect();
    validate_split_keys(region, &keys)?;
    let mut epoch = region.get_region_epoch().clone();
    epoch.set_version(epoch.get_version() + keys.len() as u64);
    let mut out = Vec::with_capacity(keys.len() + 1);
    let mut parent = region.clone();
    parent.set_end_key(keys[0].clone());
    parent.set_region_epoch(epoch.clone());
    out.push(parent);
    for (i, r) in req.get_requests().iter().enumerate() {
        if r.get_new_peer_ids().len() != region.get_peers().len() {
            return Err(Error::InvalidRequest(format!(
                "split of region {} brings {} peer ids for {} peers",
                region.get_id(),
                r.get_new_peer_ids().len(),
                region.get_peers().len()
            )));
        }
        let mut new = metapb::Region::default();
        new.set_id(r.new_region_id);
        new.set_start_key(keys[i].clone());
        new.set_end_key(
            keys.get(i + 1)
                .cloned()
                .unwrap_or_else(|| region.get_end_key().to_vec()),
        );
        new.set_region_epoch(epoch.clone());
        for (p, id) in region.get_peers().iter().zip(r.get_new_peer_ids()) {
            let mut np = p.clone();
            np.set_id(*id);
            new.mut_peers().push(np);
        }
        out.push(new);
    }
    Ok(out)
}

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

    /// Acts on an applied split: shrinks this peer's range and writes, with this round's
    /// batch, the parent's new shape and the new regions' initial states; the store
    /// creates their peers once that is durable (`finish_region_persist`).
    pub(crate) fn on_split_applied(
        &mut self,
        index: u64,
        regions: Vec<metapb::Region>,
        ctx: &mut PollContext,
    ) {
        // The apply side has applied the split; nothing of it is on disk yet.
        fail::fail_point!("raft_before_persisting_a_split");
        crate::metrics::SPLITS.inc();
        let parent = regions[0].clone();
        self.raft.mut_store().set_region(parent.clone(), index);
        {
            // Under the lock the store also holds while creating peers from messages, so
            // that a new region's peer is made by exactly one of the two.
            let mut meta = ctx.store_meta.lock();
            meta.set_region(parent);
            for new in &regions[1..] {
                match self.new_region_peer_exists(new.get_id(), &meta, ctx) {
                    Ok(false) => {}
                    Ok(true) => {
                        warn!(self.logger, "new region's peer already exists here; it will catch up by snapshot";
                              "new_region_id" => new.get_id());
                        continue;
                    }
                    Err(e) => panic!(
                        "region {}: cannot read the states of new region {}: {e}",
                        self.region_id(),
                        new.get_id()
                    ),
                }
                meta.pending_split_peers.insert(new.get_id());
                meta.set_region(new.clone());
                bootstrap::initial_region_states(&mut ctx.raft_wb, new);
                self.split_peers.push(new.clone());
            }
        }
        ctx.sync_state = true;
        self.region_persist = Some(index);
        // The shrunk region may still be past a limit; measure it again.
        self.size_diff_hint = ctx.cfg.region_split_check_diff.as_u64().max(1);
        self.approximate = None;
        self.heartbeat_due = true;
    }

    /// Whether this store already has a peer of a region a split makes: registered,
    /// being destroyed, or, from before a restart, a region or Raft state on disk (an empty peer that may have
    /// voted: the initial state must not overwrite its vote).
    fn new_region_peer_exists(&self, id: u64, meta: &StoreMeta, ctx: &PollContext) -> Result<bool> {
        // One being destroyed counts: its apply side has yet to delete what it held.
        Ok(ctx.peers.contains(id)
            || meta.is_destroying(id)
            || ctx
                .engine
                .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(id))?
                .is_some()
            || ctx
                .engine
                .get(Cf::Raft, &keys::raft_state_key(id))?
                .is_some())
    }

    /// After the round's write: a region change this peer wrote is durable, so the apply
    /// side may go past it and the store may create a split's new peers.
    pub(crate) fn finish_region_persist(&mut self, ctx: &mut PollContext) {
        let Some(index) = self.region_persist.take() else {
            return;
        };
        let regions = std::mem::take(&mut self.split_peers);
        if !regions.is_empty() {
            // The split is durable; the apply side waits and the new regions' peers
            // are not created yet.
            fail::fail_point!("raft_after_split_applied");
        }
        if !self.stopped {
            // A peer destroyed since wrote only its tombstone: what its apply side holds
            // back never applies.
            let _ = ctx
                .apply_router
                .send(self.region_id(), ApplyMsg::RegionPersisted { index });
        }
        if !regions.is_empty() {
            let campaign = self.is_leader();
            let _ = ctx
                .store_tx
                .send(StoreMsg::CreateSplitPeers { regions, campaign });
        }
    }
}

impl ApplyFsm {
    /// Applies a split: the parent shrinks in memory; the peer writes the new shapes.
    pub(crate) fn exec_batch_split(
        &mut self,
        cmd: &RaftCmdRequest,
        index: u64,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        fail::fail_point!("apply_before_split");
        check_epoch(&self.region, cmd.get_header().get_region_epoch(), true)?;
        let regions = split_regions(&self.region, cmd.get_admin_request().get_splits())?;
        info!(self.logger, "applied split"; "regions" => ?regions.iter().map(|r| r.get_id()).collect::<Vec<_>>(),
              "version" => regions[0].get_region_epoch().get_version());
        // Each new region remembers its parent's sessions: a resend after the split
        // finds its first answer whichever half now holds its keys.
        let engine = ctx.engine.clone();
        let sessions = self.session_table(&engine);
        for r in &regions[1..] {
            sessions.copy_to(r.get_id(), &mut ctx.wb);
        }
        self.fence(index, ctx);
        self.region = regions[0].clone();
        self.results.push(ExecResult::Split {
            index,
            regions: regions.clone(),
        });
        Ok(CmdResponse {
            region: Some(regions[0].clone()),
            split_regions: regions,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> metapb::Region {
        let mut r = metapb::Region::default();
        r.set_id(1);
        r.set_start_key(b"b".to_vec());
        r.set_end_key(b"y".to_vec());
        r.mut_region_epoch().set_version(3);
        r.mut_region_epoch().set_conf_ver(2);
        for (id, store) in [(10, 1), (11, 2)] {
            let mut p = metapb::Peer::default();
            p.set_id(id);
            p.set_store_id(store);
            r.mut_peers().push(p);
        }
        r
    }

    fn request(keys: &[&[u8]]) -> BatchSplitRequest {
        let mut b = BatchSplitRequest::default();
        for (i, k) in keys.iter().enumerate() {
            let mut s = SplitRequest::default();
            s.set_split_key(k.to_vec());
            s.new_region_id = 100 + i as u64;
            s.set_new_peer_ids(vec![200 + 2 * i as u64, 201 + 2 * i as u64]);
            b.mut_requests().push(s);
        }
        b
    }

    #[test]
    fn split_cuts_ranges_and_gives_new_peers_on_the_same_stores() {
        let out = split_regions(&region(), &request(&[b"f", b"m"])).unwrap();
        let ranges: Vec<(u64, &[u8], &[u8])> = out
            .iter()
            .map(|r| (r.get_id(), r.get_start_key(), r.get_end_key()))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (1, &b"b"[..], &b"f"[..]),
                (100, &b"f"[..], &b"m"[..]),
                (101, &b"m"[..], &b"y"[..])
            ]
        );
        for r in &out {
            assert_eq!(r.get_region_epoch().get_version(), 5);
            assert_eq!(r.get_region_epoch().get_conf_ver(), 2);
        }
        let stores: Vec<u64> = out[2]
            .get_peers()
            .iter()
            .map(|p| p.get_store_id())
            .collect();
        assert_eq!(stores, vec![1, 2]);
        assert_eq!(out[2].get_peers()[0].get_id(), 202);
    }

    #[test]
    fn bad_split_keys_are_refused_with_the_reason() {
        let r = region();
        let err = |keys: &[&[u8]]| {
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
            validate_split_keys(&r, &keys).unwrap_err().to_string()
        };
        assert!(err(&[]).contains("no split key"));
        assert!(err(&[b""]).contains("must not be empty"));
        assert!(err(&[b"b"]).contains("start key"));
        assert!(err(&[b"a"]).contains("outside region 1"));
        assert!(err(&[b"y"]).contains("outside region 1"));
        assert!(err(&[b"m", b"f"]).contains("ascending"));
        assert!(err(&[b"m", b"m"]).contains("ascending"));
        let version = keys::txn::write_key(b"k", 7);
        assert!(err(&[keys::origin_key(&version).unwrap()]).contains("between the versions"));
        assert!(validate_split_keys(&r, &[b"c".to_vec(), b"x".to_vec()]).is_ok());
    }
}
