//! Writing a store's identity and the cluster's first region.

use engine::{Cf, Engine, WriteBatch};
use proto::{
    metapb,
    raft_serverpb::{PeerState, RaftApplyState, RaftLocalState, StoreIdent},
};

use crate::{
    storage::{put_region_state, RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM},
    Error, Result,
};

/// The identity written when the store joined a cluster, if it has joined one. Refuses a
/// directory whose raw values are laid out as an older build wrote them (no expiry):
/// reading them as this build does would cut 8 bytes off every value.
pub fn store_ident(engine: &Engine) -> Result<Option<StoreIdent>> {
    let ident: Option<StoreIdent> = engine.get_msg(Cf::Raft, keys::STORE_IDENT_KEY)?;
    if ident.is_some()
        && engine.get(Cf::Raft, keys::RAW_FORMAT_KEY)?.as_deref()
            != Some(keys::RAW_FORMAT_WITH_EXPIRY)
    {
        return Err(Error::InvalidRequest(
            "this data directory was written by an older Flotilla whose raw values carry no \
             expiry; this build cannot read it (start it with the build that wrote it)"
                .into(),
        ));
    }
    Ok(ident)
}

/// Records that this data directory belongs to store `store_id` of cluster `cluster_id`.
/// Refuses a directory that already belongs to a store.
pub fn write_store_ident(engine: &Engine, cluster_id: u64, store_id: u64) -> Result<()> {
    if let Some(ident) = store_ident(engine)? {
        return Err(Error::InvalidRequest(format!(
            "data directory already belongs to store {} of cluster {}",
            ident.store_id, ident.cluster_id
        )));
    }
    let mut ident = StoreIdent::default();
    ident.set_cluster_id(cluster_id);
    ident.set_store_id(store_id);
    let mut wb = engine.write_batch();
    wb.put_msg(Cf::Raft, keys::STORE_IDENT_KEY, &ident);
    wb.put(Cf::Raft, keys::RAW_FORMAT_KEY, keys::RAW_FORMAT_WITH_EXPIRY);
    engine.write(wb, true)?;
    Ok(())
}

/// The first region of a cluster: the whole key space, one voter.
pub fn first_region(region_id: u64, peer_id: u64, store_id: u64) -> metapb::Region {
    let mut region = metapb::Region::default();
    region.set_id(region_id);
    let epoch = region.mut_region_epoch();
    epoch.set_conf_ver(1);
    epoch.set_version(1);
    let mut peer = metapb::Peer::default();
    peer.set_id(peer_id);
    peer.set_store_id(store_id);
    region.mut_peers().push(peer);
    region
}

/// Writes the states of a new region whose log starts at the initial index.
pub fn write_initial_region(engine: &Engine, region: &metapb::Region) -> Result<()> {
    let mut wb = engine.write_batch();
    initial_region_states(&mut wb, region);
    engine.write(wb, true)?;
    Ok(())
}

/// Adds to `wb` the states of a new region (bootstrapped, or made by a split) whose log
/// starts at the initial index.
pub fn initial_region_states(wb: &mut WriteBatch, region: &metapb::Region) {
    let id = region.get_id();
    let mut raft_state = RaftLocalState::default();
    raft_state.set_term(RAFT_INIT_LOG_TERM);
    raft_state.set_commit(RAFT_INIT_LOG_INDEX);
    raft_state.set_last_index(RAFT_INIT_LOG_INDEX);
    let t = raft_state.mut_truncated_state();
    t.index = RAFT_INIT_LOG_INDEX;
    t.term = RAFT_INIT_LOG_TERM;
    let mut apply_state = RaftApplyState::default();
    apply_state.set_applied_index(RAFT_INIT_LOG_INDEX);
    apply_state.set_applied_term(RAFT_INIT_LOG_TERM);
    wb.put_msg(Cf::Raft, &keys::raft_state_key(id), &raft_state);
    wb.put_msg(Cf::Raft, &keys::apply_state_key(id), &apply_state);
    put_region_state(wb, region, PeerState::Normal);
}

/// Removes a region written by [`write_initial_region`] that PD did not accept.
pub fn clear_region(engine: &Engine, region_id: u64) -> Result<()> {
    let raft = keys::region_raft_range(region_id);
    let mut wb = engine.write_batch();
    wb.delete_range(Cf::Raft, &raft.start, &raft.end);
    wb.delete(Cf::Raft, &keys::region_state_key(region_id));
    engine.write(wb, true)?;
    Ok(())
}
