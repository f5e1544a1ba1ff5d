//! The store's own loop: drives ticks, reports store statistics to PD, loads peers at
//! start-up, and creates peers for regions other stores tell it about.

use std::{collections::HashSet, sync::Arc, time::SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use engine::{Cf, Engine};
use parking_lot::Mutex;
use proto::{
    metapb, pdpb,
    raft_serverpb::{PeerState, RaftApplyState, RaftMessage, RegionLocalState},
};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use slog::{debug, info, warn, Logger};

use crate::{
    batch::Registrar,
    fsm::{
        apply::{ApplyFsm, ApplyRouter},
        peer::PeerFsm,
    },
    metrics,
    msg::{ApplyMsg, PdTask, PeerMsg, StoreMsg},
    snap::{self, GenTask, SnapManager},
    storage::{delete_region_data, PeerStorage},
    store_meta::StoreMeta,
    Config, RaftRouter, Result,
};

pub(crate) struct StoreFsm {
    pub store_id: u64,
    pub cfg: Arc<Config>,
    pub engine: Engine,
    pub router: RaftRouter,
    pub apply_router: ApplyRouter,
    pub peers: Registrar<PeerFsm>,
    pub applies: Registrar<ApplyFsm>,
    pub store_meta: Arc<Mutex<StoreMeta>>,
    pub pd_tx: Sender<PdTask>,
    pub gen_tx: Sender<GenTask>,
    pub snap_mgr: SnapManager,
    pub logger: Logger,
    pub start_time: u32,
    pub disk: crate::disk::DiskSpace,
}

impl StoreFsm {
    pub fn run(self, inbox: Receiver<StoreMsg>, stop: Receiver<()>) {
        let ticker = crossbeam_channel::tick(self.cfg.raft_base_tick_interval);
        let heartbeat_every = self.cfg.ticks(self.cfg.pd_store_heartbeat_tick_interval);
        let idle_heartbeat_every = self.cfg.ticks(self.cfg.pd_heartbeat_idle_interval);
        self.heartbeat();
        let mut ticks = 0u64;
        loop {
            select! {
                recv(inbox) -> msg => match msg {
                    Ok(msg) => self.on_msg(msg),
                    Err(_) => return,
                },
                recv(ticker) -> _ => {
                    ticks += 1;
                    self.measure_disk();
                    self.tick_peers(ticks.is_multiple_of(idle_heartbeat_every));
                    if ticks.is_multiple_of(heartbeat_every) {
                        self.heartbeat();
                    }
                }
                recv(stop) -> _ => return,
            }
        }
    }

    /// Ticks every awake peer; hibernating ones only get a prompt to report to PD, when
    /// `idle_heartbeat` says it is time.
    fn tick_peers(&self, idle_heartbeat: bool) {
        // Held while sending: a peer that changes state meanwhile waits for this tick.
        let quiet = self.router.hibernating.lock();
        self.router
            .peers
            .broadcast(|id| !quiet.contains(&id), || PeerMsg::Tick);
        if idle_heartbeat {
            self.router
                .peers
                .broadcast(|id| quiet.contains(&id), || PeerMsg::HeartbeatPd);
        }
    }

    fn on_msg(&self, msg: StoreMsg) {
        match msg {
            StoreMsg::StoresDown(stores) => self.wake_regions_on(&stores),
            StoreMsg::StoresUp(stores) => {
                info!(self.logger, "stores joined: hibernating leaders report to PD";
                      "stores" => ?stores);
                let quiet = self.router.hibernating.lock();
                self.router
                    .peers
                    .broadcast(|id| quiet.contains(&id), || PeerMsg::HeartbeatPd);
            }
            StoreMsg::RaftMessage(msg) => {
                let region_id = msg.get_region_id();
                let snapshot = snap::snapshot_of(&msg);
                if let Err(e) = self.maybe_create_peer(*msg) {
                    warn!(self.logger, "cannot create peer"; "err" => %e);
                }
                // A snapshot no peer took: its received files are of no use.
                if let Some(key) = snapshot.filter(|_| !self.router.peers.contains(region_id)) {
                    self.snap_mgr.discard_received(key);
                }
            }
            StoreMsg::Stopping => self.heartbeat(),
            StoreMsg::PeerDestroyed { region_id } => {
                debug!(self.logger, "peer destroyed"; "region_id" => region_id);
                self.heartbeat();
            }
            StoreMsg::CreateSplitPeers { regions, campaign } => {
                self.create_split_peers(regions, campaign)
            }
        }
    }

    /// Tells every region with a peer on `stores` (which this store lost contact with):
    /// quiet ones wake, and followers of a leader there campaign at once.
    fn wake_regions_on(&self, stores: &[u64]) {
        let affected: Vec<u64> = self
            .store_meta
            .lock()
            .regions()
            .filter(|r| {
                r.get_peers()
                    .iter()
                    .any(|p| stores.contains(&p.get_store_id()))
            })
            .map(|r| r.get_id())
            .collect();
        info!(self.logger, "regions with a peer on an unreachable store told";
              "stores" => ?stores, "regions" => affected.len());
        let stores: std::sync::Arc<[u64]> = stores.into();
        for id in affected {
            let _ = self
                .router
                .force_send(id, PeerMsg::StoresDown(stores.clone()));
        }
    }

    /// Measures free space; says so in the log when writes stop or resume for it.
    fn measure_disk(&self) {
        let was_full = self.disk.full();
        let full = self.disk.measure(self.engine.path());
        if full != was_full {
            match self.disk.check() {
                Err(e) => warn!(self.logger, "refusing client writes"; "why" => %e),
                Ok(()) => info!(self.logger, "disk has room again: client writes resume"),
            }
        }
    }

    fn heartbeat(&self) {
        let mut stats = pdpb::StoreStats::default();
        stats.set_store_id(self.store_id);
        let dir = self.engine.path();
        stats.capacity = fs2::total_space(dir).unwrap_or(0);
        stats.available = fs2::available_space(dir).unwrap_or(0);
        stats.used_size = stats.capacity.saturating_sub(stats.available);
        stats.start_time = self.start_time;
        stats.stopping = self.store_meta.lock().stopping;
        {
            let meta = self.store_meta.lock();
            stats.region_count = meta.region_count() as u32;
            stats.leader_count = meta.leader_count() as u32;
            metrics::REGIONS.set(i64::from(stats.region_count));
            metrics::LEADERS.set(i64::from(stats.leader_count));
        }
        let _ = self.pd_tx.send(PdTask::StoreHeartbeat(stats));
    }

    /// Registers a peer and its apply state machine; `meta` is the store's view, locked
    /// by the caller so that checks made before creating the peer still hold.
    fn register(&self, mut peer: PeerFsm, apply: ApplyFsm, meta: &mut StoreMeta) {
        let region = peer.region().clone();
        let region_id = region.get_id();
        if peer.is_sole_voter() {
            peer.campaign();
        }
        if !region.get_peers().is_empty() {
            meta.set_region(region);
        }
        self.apply_router
            .register(region_id, self.applies.mailbox(apply));
        let mailbox = self.peers.mailbox(peer);
        // Wake the peer so that a campaign or a restart's Ready is processed at once.
        let _ = mailbox.send(PeerMsg::Tick);
        self.router.peers.register(region_id, mailbox);
    }

    /// A peer and apply state machine for an initialized region whose states are on disk
    /// (`applying`: with a snapshot apply to redo).
    fn load_peer(
        &self,
        region: &metapb::Region,
        applying: bool,
    ) -> Result<Option<(PeerFsm, ApplyFsm)>> {
        let Some(me) = region
            .get_peers()
            .iter()
            .find(|p| p.get_store_id() == self.store_id)
            .cloned()
        else {
            warn!(self.logger, "region on disk has no peer on this store"; "region_id" => region.get_id());
            return Ok(None);
        };
        let storage = PeerStorage::new(
            self.engine.clone(),
            region.clone(),
            applying,
            self.gen_tx.clone(),
        )?;
        let apply_state: RaftApplyState = self
            .engine
            .get_msg(Cf::Raft, &keys::apply_state_key(region.get_id()))?
            .unwrap_or_default();
        let apply = ApplyFsm::new(region.clone(), me.get_id(), apply_state, &self.logger);
        let peer = PeerFsm::new(&self.cfg, storage, me, &self.logger)?;
        Ok(Some((peer, apply)))
    }

    /// Creates the peers of every region on disk.
    pub fn load_peers(&self) -> Result<usize> {
        let range = keys::region_state_range();
        let mut states = vec![];
        self.engine
            .scan(Cf::Raft, &range.start, &range.end, |_, v| {
                let state = RegionLocalState::parse_from_bytes(v).map_err(|source| {
                    engine::Error::Corrupted {
                        key: range.start.to_vec(),
                        source,
                    }
                })?;
                states.push(state);
                Ok(true)
            })?;
        self.clear_destroyed_leftovers(&states)?;
        let mut loaded = 0;
        let mut keep = HashSet::new();
        for state in states {
            if state.get_state() == PeerState::Tombstone {
                continue;
            }
            let applying = state.get_state() == PeerState::Applying;
            let in_place = applying && self.snapshot_in_place(&state)?;
            let region = state.get_region().clone();
            let redo = if applying && !in_place {
                Some(self.interrupted_snapshot(&state)?)
            } else {
                None
            };
            let Some((mut peer, apply)) = self.load_peer(&region, redo.is_some())? else {
                continue;
            };
            peer.on_restart(self.cfg.lease_wait());
            if in_place {
                // Stopped after the apply side wrote the snapshot's apply state and
                // before the peer marked the region live: the peer does so now.
                info!(self.logger, "a snapshot applied before the restart; marking the region live";
                      "region_id" => region.get_id());
                peer.set_region(region.clone());
            }
            self.register(peer, apply, &mut self.store_meta.lock());
            if let Some(task) = redo {
                info!(self.logger, "redoing an interrupted snapshot apply"; "region_id" => region.get_id());
                keep.extend(
                    state
                        .get_pending_snapshot()
                        .get_file_names()
                        .iter()
                        .cloned(),
                );
                let _ = self.apply_router.send(region.get_id(), task);
            }
            loaded += 1;
        }
        self.snap_mgr.remove_received_except(&keep);
        info!(self.logger, "loaded peers"; "count" => loaded);
        Ok(loaded)
    }

    /// Deletes what removed peers left when the store stopped between writing their
    /// tombstone and their apply side deleting the data: the apply state, and the data
    /// unless a live region here overlaps the range (then all of it stays: the live
    /// region's part is its own, and the rest is left, a leak, not a loss).
    fn clear_destroyed_leftovers(&self, states: &[RegionLocalState]) -> Result<()> {
        let live: Vec<&metapb::Region> = states
            .iter()
            .filter(|s| s.get_state() != PeerState::Tombstone)
            .map(|s| s.get_region())
            .collect();
        let mut wb = self.engine.write_batch();
        for state in states
            .iter()
            .filter(|s| s.get_state() == PeerState::Tombstone)
        {
            let region = state.get_region();
            let key = keys::apply_state_key(region.get_id());
            if self.engine.get(Cf::Raft, &key)?.is_none() {
                continue;
            }
            wb.delete(Cf::Raft, &key);
            let taken = live.iter().any(|r| {
                keys::ranges_overlap(
                    r.get_start_key(),
                    r.get_end_key(),
                    region.get_start_key(),
                    region.get_end_key(),
                )
            });
            info!(self.logger, "deleting what a removed peer left"; "region_id" => region.get_id(), "data" => !taken);
            if !region.get_peers().is_empty() && !taken {
                delete_region_data(&mut wb, region);
            }
        }
        if !wb.is_empty() {
            self.engine.write(wb, true)?;
        }
        Ok(())
    }

    /// Whether the apply side finished a snapshot that the region is still marked
    /// `Applying` for: it writes its apply state at the snapshot's index once the data
    /// is in place, and the peer marks the region live after.
    fn snapshot_in_place(&self, state: &RegionLocalState) -> Result<bool> {
        let region_id = state.get_region().get_id();
        let applied = self
            .engine
            .get_msg::<RaftApplyState>(Cf::Raft, &keys::apply_state_key(region_id))?
            .map_or(0, |s| s.applied_index);
        let index = state.get_pending_snapshot().index;
        Ok(index > 0 && applied >= index)
    }

    /// The apply to redo for a region whose snapshot apply a restart interrupted. Its
    /// files must still be whole: if not, this replica cannot be rebuilt in place, and
    /// starting would serve a range with half its data.
    fn interrupted_snapshot(&self, state: &RegionLocalState) -> Result<ApplyMsg> {
        let region = state.get_region();
        let pending = state.get_pending_snapshot();
        let unusable = |why: String| {
            crate::Error::Snapshot(format!(
                "region {}: the snapshot at index {} that was being applied when the store \
                 stopped cannot be redone ({why}); this replica cannot be restored in place",
                region.get_id(),
                pending.index
            ))
        };
        if pending.get_files().len() != pending.get_file_names().len() {
            return Err(unusable("its record is damaged".into()));
        }
        let mut files = vec![];
        for (meta, name) in pending.get_files().iter().zip(pending.get_file_names()) {
            let path = self.snap_mgr.received_path(name);
            snap::verify_file(meta, &path).map_err(|e| unusable(e.to_string()))?;
            files.push((meta.clone(), path));
        }
        Ok(ApplyMsg::Snapshot {
            region: region.clone(),
            index: pending.index,
            term: pending.term,
            files,
        })
    }

    /// Creates this store's peers of regions a split just made (their states are on
    /// disk already).
    fn create_split_peers(&self, regions: Vec<metapb::Region>, campaign: bool) {
        for region in regions {
            let id = region.get_id();
            let created = match self.load_peer(&region, false) {
                Ok(Some((mut peer, apply))) => {
                    // Measure the new region once: it may be past a limit already.
                    peer.schedule_split_check(&self.cfg);
                    if campaign {
                        peer.campaign();
                    }
                    let mut meta = self.store_meta.lock();
                    meta.pending_split_peers.remove(&id);
                    self.register(peer, apply, &mut meta);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    warn!(self.logger, "cannot create a split region's peer"; "region_id" => id, "err" => %e);
                    false
                }
            };
            if !created {
                self.store_meta.lock().pending_split_peers.remove(&id);
            }
        }
    }

    /// Creates an empty peer for a region another store says this store belongs to.
    fn maybe_create_peer(&self, msg: RaftMessage) -> Result<()> {
        let region_id = msg.get_region_id();
        let to = msg.get_to_peer();
        // A hibernate notice is no reason to create a peer: the leader is going quiet.
        if msg.get_is_tombstone() || msg.get_hibernate() || to.get_store_id() != self.store_id {
            return Ok(());
        }
        let raft_msg = Message::parse_from_bytes(msg.get_message())?;
        let creates = matches!(
            raft_msg.get_msg_type(),
            MessageType::MsgAppend
                | MessageType::MsgHeartbeat
                | MessageType::MsgSnapshot
                | MessageType::MsgRequestVote
                | MessageType::MsgRequestPreVote
        );
        if !creates {
            return Ok(());
        }
        // Held until the peer is registered: a split being applied checks, under the same
        // lock, whether the new region's peer exists.
        let mut meta = self.store_meta.lock();
        if self.router.peers.contains(region_id) {
            // Created between the router miss and now.
            drop(meta);
            return self.router.send_raft_message(msg);
        }
        if meta.is_destroying(region_id) {
            // The removed peer's apply side has yet to delete its data and apply state.
            debug!(self.logger, "not creating a peer whose predecessor is being destroyed"; "region_id" => region_id);
            return Ok(());
        }
        if meta.pending_split_peers.contains(&region_id) {
            debug!(self.logger, "peer is being created by a split"; "region_id" => region_id);
            return Ok(());
        }
        if let Some(other) =
            meta.overlapping_range(region_id, msg.get_start_key(), msg.get_end_key())
        {
            // Most likely a region here has yet to apply the split that made this one;
            // applying it will create the peer.
            debug!(self.logger, "not creating a peer that overlaps a local region";
                   "region_id" => region_id, "local" => other);
            return Ok(());
        }
        if self.is_removed_peer(region_id, &msg)? {
            debug!(self.logger, "not recreating a removed peer"; "region_id" => region_id);
            return Ok(());
        }
        info!(self.logger, "creating peer from a message"; "region_id" => region_id,
              "peer_id" => to.get_id(), "from" => msg.get_from_peer().get_id());
        // An empty peer from before a restart (never initialized, so not loaded) may
        // have voted: its term and vote are read back, or this store could vote twice
        // in one term. It has no log; an apply state a removed peer left (its apply side
        // had not deleted it yet when the store stopped) is ignored (`PeerStorage::new`).
        let mut region = metapb::Region::default();
        region.set_id(region_id);
        let storage = PeerStorage::new(
            self.engine.clone(),
            region.clone(),
            false,
            self.gen_tx.clone(),
        )?;
        let mut peer = PeerFsm::new(&self.cfg, storage, to.clone(), &self.logger)?;
        if peer.raft.raft.term > 0 {
            // It took part before the restart: its acknowledgements may hold a lease up.
            peer.on_restart(self.cfg.lease_wait());
        }
        let apply = ApplyFsm::new(region, to.get_id(), RaftApplyState::default(), &self.logger);
        self.register(peer, apply, &mut meta);
        drop(meta);
        self.router.send_raft_message(msg)
    }

    /// Whether the message is for a peer this store already removed (or for an older
    /// one than the store had).
    fn is_removed_peer(&self, region_id: u64, msg: &RaftMessage) -> Result<bool> {
        let Some(state) = self
            .engine
            .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(region_id))?
        else {
            return Ok(false);
        };
        let local = state.get_region();
        let to = msg.get_to_peer();
        Ok(state.get_state() != PeerState::Tombstone
            || msg.get_region_epoch().get_conf_ver() <= local.get_region_epoch().get_conf_ver()
            || local
                .get_peers()
                .iter()
                .any(|p| p.get_id() >= to.get_id() && p.get_store_id() == self.store_id))
    }
}

/// Seconds since the Unix epoch, for the store's start time.
pub(crate) fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}
