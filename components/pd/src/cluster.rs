//! The cluster as PD sees it: stores, the routing table, running operators. Every
//! mutation is persisted before it is acknowledged.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use keys::pd::GC_SAFE_POINT_KEY;
use parking_lot::Mutex;
use proto::{metapb, pdpb};
use slog::{info, warn, Logger};

use crate::{
    balance::{balance_leader, balance_region},
    id::IdAllocator,
    metrics::{self, Summary},
    placement,
    region_tree::{RegionInfo, RegionTree},
    schedule::{check_replicas, replace_steps, Health, Load, Operator, Step, Stores},
    storage::Storage,
    tso::Tso,
    users::AuthCore,
    validate, Config, Error, Result,
};

/// What PD knows of one store.
#[derive(Clone, Debug)]
pub struct StoreInfo {
    /// Id, address, state.
    pub meta: metapb::Store,
    /// Its last reported statistics.
    pub stats: pdpb::StoreStats,
    /// When it last heartbeated (or registered) in this PD's lifetime.
    pub last_seen: Instant,
}

struct State {
    bootstrapped: bool,
    stores: HashMap<u64, StoreInfo>,
    regions: RegionTree,
    operators: HashMap<u64, Operator>,
    /// Regions moved by hand, with when the balancers may touch them again
    /// (`Config::manual_placement_hold`).
    held: HashMap<u64, Instant>,
    /// Whether balancing has started (see `Config::balance_warmup`).
    warmed_up: bool,
}

/// The placement driver's state and logic, independent of gRPC.
pub struct PdCore {
    cfg: Config,
    cluster_id: u64,
    storage: Storage,
    ids: IdAllocator,
    tso: Tso,
    state: Mutex<State>,
    /// Below it, old versions may be dropped; it only moves up. Saved before it is told.
    gc_safe_point: Mutex<u64>,
    /// Users, roles and tokens.
    auth: AuthCore,
    started: Instant,
    logger: Logger,
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl State {
    /// Whether the balancers must leave the region alone; forgets holds that ended.
    fn is_held(&mut self, region_id: u64) -> bool {
        match self.held.get(&region_id) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                self.held.remove(&region_id);
                false
            }
            None => false,
        }
    }

    /// A store's state; `None` if PD does not know it.
    fn store_state(&self, id: u64) -> Option<metapb::StoreState> {
        self.stores.get(&id).map(|s| s.meta.get_state())
    }

    fn with_counts(&self, store: &StoreInfo) -> StoreInfo {
        let mut s = store.clone();
        let id = s.meta.get_id();
        s.stats.region_count = self.regions.peer_count(id) as u32;
        s.stats.leader_count = self.regions.leader_count(id) as u32;
        s
    }

    /// The schedulers' view of the stores: health, and counts with running operators'
    /// unfinished steps included.
    fn loads(&self, cfg: &Config) -> Stores {
        let mut loads: BTreeMap<u64, Load> = self
            .stores
            .values()
            .filter_map(|s| {
                let health = match s.meta.get_state() {
                    metapb::StoreState::Tombstone => return None,
                    metapb::StoreState::Offline => Health::Offline,
                    metapb::StoreState::Up if s.last_seen.elapsed() >= cfg.max_store_down_time => {
                        Health::Down
                    }
                    metapb::StoreState::Up => Health::Up,
                };
                let id = s.meta.get_id();
                Some((
                    id,
                    Load {
                        health,
                        regions: self.regions.peer_count(id) as isize,
                        leaders: self.regions.leader_count(id) as isize,
                        size: self.regions.size_on(id),
                        operators: 0,
                        stopping: s.stats.stopping,
                        location: placement::location_of(&s.meta, &cfg.replication.location_labels),
                    },
                ))
            })
            .collect();
        for op in self.operators.values() {
            let mut touched: Vec<u64> = op.influence.iter().map(|i| i.store).collect();
            touched.sort_unstable();
            touched.dedup();
            for i in &op.influence {
                if let Some(l) = loads.get_mut(&i.store) {
                    l.regions += i.regions;
                    l.leaders += i.leaders;
                }
            }
            for s in touched {
                if let Some(l) = loads.get_mut(&s) {
                    l.operators += 1;
                }
            }
        }
        Stores {
            loads,
            limit: cfg.store_limit,
            levels: cfg.replication.location_labels.len(),
            isolation_level: cfg.replication.isolation_index(),
            leader_zones: cfg.replication.leader_zones.clone(),
        }
    }
}

impl PdCore {
    /// Loads PD's state from `storage`, creating a new cluster id on first start.
    pub fn open(cfg: Config, storage: Storage, logger: Logger) -> Result<PdCore> {
        let cluster = match storage.cluster()? {
            Some(c) => c,
            None => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut c = metapb::Cluster::default();
                c.set_id((secs << 32) | u64::from(rand::random::<u32>()));
                storage.put_cluster(&c)?;
                info!(logger, "created cluster"; "cluster_id" => c.id);
                c
            }
        };
        let now = Instant::now();
        let stores = storage
            .stores()?
            .into_iter()
            .map(|s| {
                let info = StoreInfo {
                    stats: pdpb::StoreStats::default(),
                    last_seen: now,
                    meta: s,
                };
                (info.meta.get_id(), info)
            })
            .collect();
        let mut regions = RegionTree::default();
        for r in storage.regions()? {
            regions.update(RegionInfo {
                region: r,
                ..Default::default()
            });
        }
        let bootstrapped = cluster.max_peer_count > 0;
        info!(logger, "pd state loaded"; "cluster_id" => cluster.id, "bootstrapped" => bootstrapped,
              "regions" => regions.len());
        let gc_safe_point = Mutex::new(storage.get_u64(GC_SAFE_POINT_KEY)?.unwrap_or(0));
        Ok(PdCore {
            gc_safe_point,
            auth: AuthCore::open(
                cfg.auth.clone(),
                cfg.security.cluster_cn.clone(),
                storage.clone(),
            )?,
            ids: IdAllocator::new(storage.clone(), cfg.id_batch)?,
            tso: Tso::new(storage.clone())?,
            cluster_id: cluster.id,
            storage,
            state: Mutex::new(State {
                bootstrapped,
                stores,
                regions,
                operators: HashMap::new(),
                held: HashMap::new(),
                warmed_up: false,
            }),
            started: Instant::now(),
            cfg,
            logger,
        })
    }

    /// Users, roles and tokens.
    pub(crate) fn auth(&self) -> &AuthCore {
        &self.auth
    }

    /// This cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The cluster's id and the replica count PD keeps every region at.
    pub fn cluster_config(&self) -> metapb::Cluster {
        let mut c = metapb::Cluster::default();
        c.set_id(self.cluster_id);
        c.set_max_peer_count(self.cfg.max_replicas as u32);
        c
    }

    /// Rejects a request meant for another cluster (0 means "not known yet").
    pub fn check_cluster(&self, header: &pdpb::RequestHeader) -> Result<()> {
        let got = header.get_cluster_id();
        if got != 0 && got != self.cluster_id {
            return Err(Error::ClusterMismatch {
                expected: self.cluster_id,
                got,
            });
        }
        Ok(())
    }

    /// A fresh id.
    pub fn alloc_id(&self) -> Result<u64> {
        self.ids.alloc()
    }

    /// `count` timestamps; the last one.
    /// Handed out only once a quorum of PD members confirmed, after the timestamps were
    /// taken, that this member still leads: a deposed leader hands out none that a new
    /// leader may have passed.
    pub fn tso(&self, count: u32) -> Result<(i64, i64)> {
        let ts = self.tso.next(count)?;
        self.storage.confirm_leader()?;
        Ok(ts)
    }

    /// The GC safe point (0: none yet).
    pub fn gc_safe_point(&self) -> u64 {
        *self.gc_safe_point.lock()
    }

    /// Raises the GC safe point to `safe_point` if that is higher; returns the safe point
    /// now in force. A safe point ahead of the timestamp oracle is refused: it would let
    /// stores drop versions that transactions running now still read.
    pub fn update_gc_safe_point(&self, safe_point: u64) -> Result<u64> {
        let (physical, logical) = self.tso.next(1)?;
        let now = ((physical as u64) << crate::tso::LOGICAL_BITS) | logical as u64;
        if safe_point > now {
            return Err(Error::InvalidValue(format!(
                "GC safe point {safe_point} is ahead of the current timestamp {now}"
            )));
        }
        let mut current = self.gc_safe_point.lock();
        if safe_point > *current {
            self.storage.put_u64(GC_SAFE_POINT_KEY, safe_point)?;
            info!(self.logger, "gc safe point advanced"; "from" => *current, "to" => safe_point);
            *current = safe_point;
        }
        Ok(*current)
    }

    /// Whether the cluster has its first region.
    pub fn is_bootstrapped(&self) -> bool {
        self.state.lock().bootstrapped
    }

    /// Records the cluster's first store and region.
    pub fn bootstrap(&self, store: metapb::Store, region: metapb::Region) -> Result<()> {
        let mut st = self.state.lock();
        if st.bootstrapped {
            // A retry of the bootstrap that made this cluster (its answer was lost, say
            // in a PD failover) succeeds: the store must keep its first region.
            let ours = st.stores.contains_key(&store.get_id())
                && st.regions.get(region.get_id()).is_some_and(|r| {
                    r.region
                        .get_peers()
                        .iter()
                        .any(|p| p.get_store_id() == store.get_id())
                });
            return match ours {
                true => Ok(()),
                false => Err(Error::AlreadyBootstrapped),
            };
        }
        validate_store(&store)?;
        placement::check_labels(&store, &self.cfg.replication.location_labels)?;
        let peers = region.get_peers();
        if region.get_id() == 0
            || !region.get_start_key().is_empty()
            || !region.get_end_key().is_empty()
            || peers.len() != 1
            || peers[0].get_store_id() != store.get_id()
        {
            return Err(Error::InvalidValue(
                "the first region must cover the whole key space with one peer on the bootstrapping store".into(),
            ));
        }
        let mut cluster = metapb::Cluster::default();
        cluster.set_id(self.cluster_id);
        cluster.set_max_peer_count(self.cfg.max_replicas as u32);
        self.storage.bootstrap(&cluster, &store, &region)?;
        info!(self.logger, "cluster bootstrapped"; "store_id" => store.get_id(), "region_id" => region.get_id());
        let leader = peers[0].clone();
        st.stores.insert(
            store.get_id(),
            StoreInfo {
                meta: store,
                stats: pdpb::StoreStats::default(),
                last_seen: Instant::now(),
            },
        );
        st.regions.update(RegionInfo {
            region,
            leader: Some(leader),
            ..Default::default()
        });
        st.bootstrapped = true;
        Ok(())
    }

    /// Registers or updates a store.
    pub fn put_store(&self, mut store: metapb::Store) -> Result<()> {
        validate_store(&store)?;
        placement::check_labels(&store, &self.cfg.replication.location_labels)?;
        let mut st = self.state.lock();
        if !st.bootstrapped {
            return Err(Error::NotBootstrapped);
        }
        let id = store.get_id();
        if let Some(other) = st.stores.values().find(|s| {
            s.meta.get_id() != id
                && s.meta.get_address() == store.get_address()
                && s.meta.get_state() != metapb::StoreState::Tombstone
        }) {
            return Err(Error::InvalidValue(format!(
                "address {} is already used by store {}",
                store.get_address(),
                other.meta.get_id()
            )));
        }
        if let Some(old) = st.stores.get(&id) {
            if old.meta.get_state() == metapb::StoreState::Tombstone {
                return Err(Error::StoreTombstone(id));
            }
            store.set_state(old.meta.get_state());
        }
        // Registering is a sign of life, as a heartbeat is.
        store.last_heartbeat = unix_nanos();
        self.storage.put_store(&store)?;
        let mut stats = st
            .stores
            .get(&id)
            .map(|s| s.stats.clone())
            .unwrap_or_default();
        // A process registering is a new start: whatever shutdown the last one was in
        // is over.
        stats.stopping = false;
        st.stores.insert(
            id,
            StoreInfo {
                meta: store,
                stats,
                last_seen: Instant::now(),
            },
        );
        Ok(())
    }

    /// One store. Its region and leader counts are PD's (from the routing table), not
    /// the store's last report: they are what decommissioning and balancing go by.
    pub fn get_store(&self, id: u64) -> Result<StoreInfo> {
        let st = self.state.lock();
        st.stores
            .get(&id)
            .map(|s| st.with_counts(s))
            .ok_or(Error::StoreNotFound(id))
    }

    /// Every store, by id, with counts as in [`PdCore::get_store`].
    pub fn stores(&self, exclude_tombstone: bool) -> Vec<StoreInfo> {
        let st = self.state.lock();
        let mut all: Vec<StoreInfo> = st
            .stores
            .values()
            .filter(|s| !exclude_tombstone || s.meta.get_state() != metapb::StoreState::Tombstone)
            .map(|s| st.with_counts(s))
            .collect();
        all.sort_by_key(|s| s.meta.get_id());
        all
    }

    /// Records a store's heartbeat.
    pub fn store_heartbeat(&self, stats: pdpb::StoreStats) -> Result<()> {
        let mut st = self.state.lock();
        let id = stats.store_id;
        let store = st.stores.get_mut(&id).ok_or(Error::StoreNotFound(id))?;
        if store.meta.get_state() == metapb::StoreState::Tombstone {
            return Err(Error::StoreTombstone(id));
        }
        store.last_seen = Instant::now();
        store.meta.last_heartbeat = unix_nanos();
        // Where stores learn that another one restarted (see the store's pd worker).
        store.meta.start_timestamp = i64::from(stats.start_time);
        store.stats = stats;
        self.retire_empty_offline_stores(&mut st)
    }

    /// Starts decommissioning a store: it goes offline, every replica on it moves to
    /// another store, and once it holds none it becomes tombstone. Refused if fewer than
    /// max-replicas stores would be left to hold a region's voters.
    pub fn delete_store(&self, id: u64) -> Result<()> {
        let mut st = self.state.lock();
        let store = st.stores.get(&id).ok_or(Error::StoreNotFound(id))?;
        match store.meta.get_state() {
            metapb::StoreState::Tombstone => return Err(Error::StoreTombstone(id)),
            metapb::StoreState::Offline => return Ok(()),
            metapb::StoreState::Up => {}
        }
        let remaining = st
            .stores
            .values()
            .filter(|s| s.meta.get_id() != id && s.meta.get_state() == metapb::StoreState::Up)
            .count();
        if remaining < self.cfg.max_replicas {
            return Err(Error::InvalidValue(format!(
                "deleting store {id} would leave {remaining} stores, fewer than max-replicas ({})",
                self.cfg.max_replicas
            )));
        }
        let mut meta = store.meta.clone();
        meta.set_state(metapb::StoreState::Offline);
        self.storage.put_store(&meta)?;
        info!(self.logger, "store is being decommissioned"; "store_id" => id,
              "regions" => st.regions.peer_count(id));
        st.stores.get_mut(&id).expect("checked above").meta = meta;
        self.retire_empty_offline_stores(&mut st)
    }

    /// Marks offline stores that no region has a replica on any more as tombstone.
    fn retire_empty_offline_stores(&self, st: &mut State) -> Result<()> {
        let empty: Vec<u64> = st
            .stores
            .values()
            .filter(|s| {
                s.meta.get_state() == metapb::StoreState::Offline
                    && st.regions.peer_count(s.meta.get_id()) == 0
            })
            .map(|s| s.meta.get_id())
            .collect();
        for id in empty {
            let info = st.stores.get_mut(&id).expect("collected above");
            info.meta.set_state(metapb::StoreState::Tombstone);
            self.storage.put_store(&info.meta)?;
            info!(self.logger, "decommissioned store is now tombstone"; "store_id" => id);
        }
        Ok(())
    }

    /// Takes a leader's report of its region; returns the next operator step, if any.
    pub fn region_heartbeat(
        &self,
        req: &pdpb::RegionHeartbeatRequest,
    ) -> Result<Option<pdpb::RegionHeartbeatResponse>> {
        let region = req.get_region();
        if !req.has_leader() {
            return Err(Error::InvalidValue(
                "region heartbeat without a leader".into(),
            ));
        }
        let mut st = self.state.lock();
        validate::check_region(region, |id| st.store_state(id))?;
        validate::check_leader(region, req.get_leader())?;
        let info = RegionInfo {
            region: region.clone(),
            leader: Some(req.get_leader().clone()),
            down_peers: validate::peers_of(region, req.get_down_peers(), |d| d.get_peer()),
            pending_peers: validate::peers_of(region, req.get_pending_peers(), |p| p),
            approximate_size: req.approximate_size,
            term: req.term,
        };
        let persisted_epoch = st
            .regions
            .get(region.get_id())
            .map(|i| i.region.get_region_epoch().clone());
        let Some(replaced) = st.regions.update(info.clone()) else {
            return Ok(None);
        };
        if persisted_epoch.as_ref() != Some(region.get_region_epoch()) {
            self.storage.put_region(region)?;
        }
        for id in replaced {
            self.storage.delete_region(id)?;
            if let Some(op) = st.operators.remove(&id) {
                // The region split or merged away under it.
                metrics::OPERATORS
                    .with_label_values(&[op.kind, "cancelled"])
                    .inc();
            }
        }
        if persisted_epoch.as_ref() != Some(region.get_region_epoch()) {
            self.retire_empty_offline_stores(&mut st)?;
        }
        Ok(self.next_step(&mut st, &info, true))
    }

    /// The step to send for the region: its running operator's, or a new operator's
    /// (repairs first, then, if `balance` allows, balancing).
    fn next_step(
        &self,
        st: &mut State,
        info: &RegionInfo,
        balance: bool,
    ) -> Option<pdpb::RegionHeartbeatResponse> {
        let id = info.region.get_id();
        if let Some(op) = st.operators.get_mut(&id) {
            if op.created.elapsed() > self.cfg.operator_timeout {
                warn!(self.logger, "operator timed out"; "region_id" => id, "kind" => op.kind);
                metrics::OPERATORS
                    .with_label_values(&[op.kind, "timed_out"])
                    .inc();
                st.operators.remove(&id);
            } else if matches!(op.current(info), Some(Step::TransferLeader(to))
                if st.stores.get(to).is_some_and(|s| s.stats.stopping))
            {
                // Leadership sent to a store that is shutting down would come straight
                // back, or be lost with the store.
                info!(self.logger, "operator cancelled: it moves leadership to a stopping store";
                      "region_id" => id, "kind" => op.kind);
                metrics::OPERATORS
                    .with_label_values(&[op.kind, "cancelled"])
                    .inc();
                st.operators.remove(&id);
            } else if !op.is_finished(info) {
                op.refresh(info);
                return op.response(info);
            } else {
                info!(self.logger, "operator finished"; "region_id" => id, "kind" => op.kind);
                metrics::OPERATORS
                    .with_label_values(&[op.kind, "finished"])
                    .inc();
                st.operators.remove(&id);
            }
        }
        let balance = balance && self.cfg.enable_balance && !st.is_held(id) && self.warmed_up(st);
        let stores = st.loads(&self.cfg);
        let mut alloc = || self.ids.alloc().ok();
        let op =
            check_replicas(info, &stores, self.cfg.max_replicas, &mut alloc).or_else(|| {
                if !balance {
                    return None;
                }
                balance_region(info, &stores, &mut alloc).or_else(|| balance_leader(info, &stores))
            })?;
        info!(self.logger, "new operator"; "region_id" => id, "kind" => op.kind, "steps" => ?op.steps);
        metrics::OPERATORS
            .with_label_values(&[op.kind, "created"])
            .inc();
        let resp = op.response(info);
        st.operators.insert(id, op);
        resp
    }

    /// The running operator's step for `region_id`, with the store that leads the region:
    /// sent at once over that store's heartbeat stream, since an idle region reports only
    /// at its idle interval.
    pub fn step_to_push(&self, region_id: u64) -> Option<(u64, pdpb::RegionHeartbeatResponse)> {
        let st = self.state.lock();
        let info = st.regions.get(region_id)?;
        let leader = info.leader.as_ref()?.get_store_id();
        let resp = st.operators.get(&region_id)?.response(info)?;
        Some((leader, resp))
    }

    /// Repairs for regions with a replica on a down or offline store, at most `limit`,
    /// for regions led from a store `deliverable` says a step can be sent to now: the
    /// replica checker runs for them at once instead of at their next heartbeat (idle
    /// regions report once a minute). Each step comes with the store that leads the region.
    pub fn repairs_to_push(
        &self,
        limit: usize,
        deliverable: impl Fn(u64) -> bool,
    ) -> Vec<(u64, pdpb::RegionHeartbeatResponse)> {
        let mut st = self.state.lock();
        let loads = st.loads(&self.cfg);
        let unhealthy = |store: u64| {
            loads
                .loads
                .get(&store)
                .is_some_and(|l| matches!(l.health, Health::Down | Health::Offline))
        };
        let infos: Vec<RegionInfo> = st
            .regions
            .iter()
            .filter(|i| {
                // A region with a running operator is awake and reports each change.
                i.leader
                    .as_ref()
                    .is_some_and(|l| deliverable(l.get_store_id()))
                    && !st.operators.contains_key(&i.region.get_id())
                    && i.region
                        .get_peers()
                        .iter()
                        .any(|p| unhealthy(p.get_store_id()))
            })
            .cloned()
            .collect();
        let mut out = vec![];
        for info in infos {
            if out.len() >= limit {
                break;
            }
            let leader = info.leader.as_ref().expect("filtered").get_store_id();
            if let Some(resp) = self.next_step(&mut st, &info, false) {
                out.push((leader, resp));
            }
        }
        out
    }

    /// Whether balancing may run. A restarted PD knows its regions from disk but not their
    /// leaders, and quiet regions report only at their idle interval: balancing on zero
    /// leader counts would move leaders only to move them back.
    fn warmed_up(&self, st: &mut State) -> bool {
        if !st.warmed_up
            && (st.regions.all_led() || self.started.elapsed() >= self.cfg.balance_warmup)
        {
            st.warmed_up = true;
            info!(self.logger, "balancing starts"; "regions" => st.regions.len(),
                  "after" => ?self.started.elapsed());
        }
        st.warmed_up
    }

    /// The region holding `key`, with its leader.
    pub fn region_by_key(&self, key: &[u8]) -> Option<RegionInfo> {
        self.state.lock().regions.by_key(key).cloned()
    }

    /// The region before the one holding `key`.
    pub fn prev_region(&self, key: &[u8]) -> Option<RegionInfo> {
        self.state.lock().regions.prev(key).cloned()
    }

    /// A region by id.
    pub fn region_by_id(&self, id: u64) -> Option<RegionInfo> {
        self.state.lock().regions.get(id).cloned()
    }

    /// Regions overlapping `[start, end)` in key order.
    pub fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<RegionInfo> {
        self.state
            .lock()
            .regions
            .scan(start, end, limit)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Ids for splitting `region` into `count + 1` regions.
    pub fn ask_batch_split(
        &self,
        region: &metapb::Region,
        count: u32,
    ) -> Result<Vec<pdpb::SplitID>> {
        if count == 0 || count > self.cfg.max_batch_split {
            return Err(Error::InvalidValue(format!(
                "split count {count} must be between 1 and {} (pd.max-batch-split)",
                self.cfg.max_batch_split
            )));
        }
        {
            let st = self.state.lock();
            validate::check_region(region, |id| st.store_state(id))?;
            if st.regions.get(region.get_id()).is_none() {
                return Err(Error::RegionNotFound(format!(
                    "no region with id {}",
                    region.get_id()
                )));
            }
        }
        (0..count)
            .map(|_| {
                let mut id = pdpb::SplitID::default();
                id.set_new_region_id(self.ids.alloc()?);
                for _ in region.get_peers() {
                    id.mut_new_peer_ids().push(self.ids.alloc()?);
                }
                Ok(id)
            })
            .collect()
    }

    /// Records the regions a split produced.
    pub fn report_split(&self, regions: &[metapb::Region]) -> Result<()> {
        let mut st = self.state.lock();
        if regions.is_empty() || regions.len() as u64 > u64::from(self.cfg.max_batch_split) + 1 {
            return Err(Error::InvalidValue(format!(
                "a split reports 1 to {} regions (pd.max-batch-split + 1), not {}",
                u64::from(self.cfg.max_batch_split) + 1,
                regions.len()
            )));
        }
        for (i, r) in regions.iter().enumerate() {
            validate::check_region(r, |id| st.store_state(id))?;
            if i > 0 && regions[i - 1].get_end_key() != r.get_start_key() {
                return Err(Error::InvalidValue(format!(
                    "split regions {} and {} are not adjacent",
                    regions[i - 1].get_id(),
                    r.get_id()
                )));
            }
        }
        for r in regions {
            let leader = st.regions.get(r.get_id()).and_then(|i| i.leader.clone());
            if st
                .regions
                .update(RegionInfo {
                    region: r.clone(),
                    leader,
                    ..Default::default()
                })
                .is_some()
            {
                self.storage.put_region(r)?;
            }
        }
        Ok(())
    }

    /// Checks that a hand-made operator may start on `region_id` now; returns the region.
    fn manual_operator_target(&self, st: &mut State, region_id: u64) -> Result<RegionInfo> {
        let info = st
            .regions
            .get(region_id)
            .cloned()
            .ok_or_else(|| Error::RegionNotFound(format!("no region with id {region_id}")))?;
        // What an operator asks for by hand comes before evening out counts.
        if let Some(op) = st.operators.get(&region_id).filter(|op| !op.is_balance()) {
            return Err(Error::InvalidValue(format!(
                "region {region_id} already has a running operator ({})",
                op.kind
            )));
        }
        Ok(info)
    }

    fn check_live(&self, st: &State, store: u64) -> Result<()> {
        match st.loads(&self.cfg).health(store) {
            Some(Health::Up) => Ok(()),
            Some(_) => Err(Error::InvalidValue(format!(
                "store {store} is down or offline"
            ))),
            None if st.stores.contains_key(&store) => {
                Err(Error::InvalidValue(format!("store {store} is tombstone")))
            }
            None => Err(Error::InvalidValue(format!("store {store} does not exist"))),
        }
    }

    /// Schedules moving the leadership of `region_id` to its voter on `to_store`.
    pub fn add_transfer_leader(&self, region_id: u64, to_store: u64) -> Result<()> {
        let mut st = self.state.lock();
        let info = self.manual_operator_target(&mut st, region_id)?;
        let peer = info
            .region
            .get_peers()
            .iter()
            .find(|p| p.get_store_id() == to_store)
            .ok_or_else(|| {
                Error::InvalidValue(format!(
                    "region {region_id} has no peer on store {to_store}"
                ))
            })?;
        if peer.get_role() != metapb::PeerRole::Voter {
            return Err(Error::InvalidValue(format!(
                "peer {} of region {region_id} on store {to_store} is a learner and cannot lead",
                peer.get_id()
            )));
        }
        self.check_live(&st, to_store)?;
        if info
            .leader
            .as_ref()
            .is_some_and(|l| l.get_store_id() == to_store)
        {
            // Already there: keep it there, from a running balancer too.
            if st
                .operators
                .get(&region_id)
                .is_some_and(|op| op.is_balance())
            {
                st.operators.remove(&region_id);
            }
            st.held
                .insert(region_id, Instant::now() + self.cfg.manual_placement_hold);
            return Ok(());
        }
        self.start_manual(
            &mut st,
            region_id,
            Operator::new(
                "transfer-leader",
                vec![Step::TransferLeader(to_store)],
                &info,
            ),
        );
        Ok(())
    }

    /// Schedules moving the replica of `region_id` on `from_store` to `to_store`: a learner
    /// there, promoted once it has caught up, leadership moved off `from_store` if it led,
    /// then the old replica removed.
    pub fn add_move_peer(&self, region_id: u64, from_store: u64, to_store: u64) -> Result<()> {
        let mut st = self.state.lock();
        let info = self.manual_operator_target(&mut st, region_id)?;
        let peers = info.region.get_peers();
        let from = peers
            .iter()
            .find(|p| p.get_store_id() == from_store)
            .cloned()
            .ok_or_else(|| {
                Error::InvalidValue(format!(
                    "region {region_id} has no peer on store {from_store}"
                ))
            })?;
        if let Some(p) = peers.iter().find(|p| p.get_store_id() == to_store) {
            return Err(Error::InvalidValue(format!(
                "store {to_store} already has peer {} of region {region_id}",
                p.get_id()
            )));
        }
        self.check_live(&st, to_store)?;
        let loads = st.loads(&self.cfg);
        let rest: Vec<u64> = voter_stores(&info.region)
            .into_iter()
            .filter(|s| *s != from_store)
            .collect();
        if loads.score(to_store, &rest) < loads.score(from_store, &rest) {
            return Err(Error::InvalidValue(format!(
                "moving region {region_id} from store {from_store} to store {to_store} would bring its replicas into fewer failure domains (replication.location-labels); PD would move it back"
            )));
        }
        let mut new_peer = metapb::Peer::default();
        new_peer.set_id(self.ids.alloc()?);
        new_peer.set_store_id(to_store);
        new_peer.set_role(metapb::PeerRole::Learner);
        let steps = replace_steps(&info, &from, new_peer);
        self.start_manual(&mut st, region_id, Operator::new("move-peer", steps, &info));
        Ok(())
    }

    fn start_manual(&self, st: &mut State, region_id: u64, op: Operator) {
        info!(self.logger, "operator added by hand"; "region_id" => region_id, "kind" => op.kind, "steps" => ?op.steps);
        metrics::OPERATORS
            .with_label_values(&[op.kind, "created"])
            .inc();
        if let Some(old) = st.operators.insert(region_id, op) {
            info!(self.logger, "balance operator replaced by one added by hand"; "region_id" => region_id, "kind" => old.kind);
            metrics::OPERATORS
                .with_label_values(&[old.kind, "cancelled"])
                .inc();
        }
        st.held
            .insert(region_id, Instant::now() + self.cfg.manual_placement_hold);
    }

    /// What the cluster looks like now, for the metrics: stores by state (a store
    /// silent for `max-store-down-time` is down), regions, and regions that lack a leader
    /// or live voters.
    pub fn summary(&self) -> Summary {
        let st = self.state.lock();
        let loads = st.loads(&self.cfg);
        let mut out = Summary {
            regions: st.regions.len(),
            operators: st.operators.len(),
            ..Summary::default()
        };
        for s in st.stores.values() {
            let state = match (s.meta.get_state(), loads.health(s.meta.get_id())) {
                (metapb::StoreState::Tombstone, _) => "tombstone",
                (_, Some(Health::Down)) => "down",
                (metapb::StoreState::Offline, _) => "offline",
                _ => "up",
            };
            *out.stores.entry(state).or_default() += 1;
        }
        let live = |store: u64| loads.health(store).is_some_and(|h| h != Health::Down);
        for r in st.regions.iter() {
            if !r.leader.as_ref().is_some_and(|l| live(l.get_store_id())) {
                out.leaderless += 1;
            }
            let live_voters = r
                .region
                .get_peers()
                .iter()
                .filter(|p| p.get_role() == metapb::PeerRole::Voter && live(p.get_store_id()))
                .count();
            if live_voters < self.cfg.max_replicas {
                out.under_replicated += 1;
            }
            if loads.is_isolation_fault(&loads.known(&voter_stores(&r.region))) {
                out.not_isolated += 1;
            }
        }
        out
    }

    /// How far apart each region's replicas are: the name of the highest location label
    /// they all differ at ("none": two share every label; "" without location labels),
    /// and whether that breaks the isolation rule.
    pub fn isolation(&self, regions: &[&metapb::Region]) -> Vec<(String, bool)> {
        let loads = self.state.lock().loads(&self.cfg);
        let labels = &self.cfg.replication.location_labels;
        regions
            .iter()
            .map(|r| {
                let stores = loads.known(&voter_stores(r));
                let name = placement::isolation_name(labels, loads.isolation(&stores));
                (name, loads.is_isolation_fault(&stores))
            })
            .collect()
    }

    /// Operators in progress: (region id, kind, current step, age).
    pub fn operators(&self) -> Vec<(u64, &'static str, String, std::time::Duration)> {
        let st = self.state.lock();
        let ids: Vec<u64> = st.operators.keys().copied().collect();
        let mut out = vec![];
        for id in ids {
            let info = st.regions.get(id).cloned();
            let op = &st.operators[&id];
            out.push((
                id,
                op.kind,
                op.describe(info.as_ref()),
                op.created.elapsed(),
            ));
        }
        out.sort_by_key(|o| o.0);
        out
    }
}

/// The stores of a region's voters: learners on their way in or out do not count.
fn voter_stores(region: &metapb::Region) -> Vec<u64> {
    region
        .get_peers()
        .iter()
        .filter(|p| p.get_role() == metapb::PeerRole::Voter)
        .map(|p| p.get_store_id())
        .collect()
}

fn validate_store(store: &metapb::Store) -> Result<()> {
    if store.get_id() == 0 {
        return Err(Error::InvalidValue("store id must not be 0".into()));
    }
    if store.get_address().is_empty() {
        return Err(Error::InvalidValue(
            "store address must not be empty".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, store: u64, role: metapb::PeerRole) -> metapb::Peer {
        let mut p = metapb::Peer::default();
        p.set_id(id);
        p.set_store_id(store);
        p.set_role(role);
        p
    }

    fn store(id: u64) -> metapb::Store {
        let mut s = metapb::Store::default();
        s.set_id(id);
        s.set_address(format!("store-{id}"));
        s
    }

    /// A PD in `dir` bootstrapped with store 1 and region 2 (one voter, peer 3).
    fn bootstrapped(dir: &tempfile::TempDir) -> (PdCore, metapb::Region) {
        let core = PdCore::open(
            Config::default(),
            crate::storage::local::open(dir.path()),
            util::logger::discard(),
        )
        .unwrap();
        let mut region = metapb::Region::default();
        region.set_id(2);
        region.mut_region_epoch().set_version(1);
        region.mut_peers().push(peer(3, 1, metapb::PeerRole::Voter));
        core.bootstrap(store(1), region.clone()).unwrap();
        (core, region)
    }

    #[test]
    fn manual_leader_transfers_are_checked_before_they_are_scheduled() {
        use metapb::PeerRole::*;
        let dir = tempfile::tempdir().unwrap();
        let (core, mut region) = bootstrapped(&dir);
        core.put_store(store(4)).unwrap();
        core.put_store(store(5)).unwrap();
        region.mut_peers().push(peer(6, 4, Voter));
        region.mut_peers().push(peer(7, 5, Learner));
        region.mut_region_epoch().set_conf_ver(3);
        let mut hb = pdpb::RegionHeartbeatRequest::default();
        hb.set_region(region.clone());
        hb.set_leader(peer(3, 1, Voter));
        // The learner is still catching up, so the replica checker waits.
        hb.mut_pending_peers().push(peer(7, 5, Learner));
        assert!(core.region_heartbeat(&hb).unwrap().is_none());

        let err = |r: Result<()>| r.unwrap_err().to_string();
        assert!(err(core.add_transfer_leader(2, 5)).contains("is a learner and cannot lead"));
        assert!(err(core.add_transfer_leader(2, 9)).contains("has no peer on store 9"));
        assert!(err(core.add_transfer_leader(99, 4)).contains("no region with id 99"));
        core.add_transfer_leader(2, 4).unwrap();
        assert!(err(core.add_transfer_leader(2, 4)).contains("already has a running operator"));
        let resp = core
            .region_heartbeat(&hb)
            .unwrap()
            .expect("the operator's step");
        assert_eq!(resp.get_transfer_leader().get_peer().get_store_id(), 4);
        // Once store 4 leads, the operator is done.
        hb.set_leader(peer(6, 4, Voter));
        assert!(core.region_heartbeat(&hb).unwrap().is_none());
        assert!(core.operators().is_empty());
    }

    #[test]
    fn a_leader_transfer_to_a_store_that_is_stopping_is_cancelled() {
        use metapb::PeerRole::*;
        let dir = tempfile::tempdir().unwrap();
        let (core, mut region) = bootstrapped(&dir);
        core.put_store(store(4)).unwrap();
        region.mut_peers().push(peer(6, 4, Voter));
        region.mut_region_epoch().set_conf_ver(2);
        let mut hb = pdpb::RegionHeartbeatRequest::default();
        hb.set_region(region);
        hb.set_leader(peer(3, 1, Voter));
        core.region_heartbeat(&hb).unwrap();
        core.add_transfer_leader(2, 4).unwrap();
        let mut stats = pdpb::StoreStats::default();
        stats.set_store_id(4);
        stats.set_stopping(true);
        core.store_heartbeat(stats).unwrap();
        assert!(
            core.region_heartbeat(&hb).unwrap().is_none(),
            "no leadership sent to a stopping store"
        );
        assert!(core.operators().is_empty());
    }

    #[test]
    fn moves_to_unusable_stores_and_deletes_below_max_replicas_are_refused() {
        use metapb::PeerRole::*;
        let dir = tempfile::tempdir().unwrap();
        let (core, mut region) = bootstrapped(&dir);
        for s in [4, 5, 6, 7] {
            core.put_store(store(s)).unwrap();
        }
        region.mut_peers().push(peer(8, 4, Voter));
        region.mut_peers().push(peer(9, 5, Voter));
        region.mut_region_epoch().set_conf_ver(3);
        let mut hb = pdpb::RegionHeartbeatRequest::default();
        hb.set_region(region);
        hb.set_leader(peer(3, 1, Voter));
        assert!(core.region_heartbeat(&hb).unwrap().is_none());

        let err = |r: Result<()>| r.unwrap_err().to_string();
        // Store 6 holds nothing: deleting it retires it at once.
        core.delete_store(6).unwrap();
        assert_eq!(
            core.get_store(6).unwrap().meta.get_state(),
            metapb::StoreState::Tombstone
        );
        assert!(err(core.add_move_peer(2, 4, 6)).contains("store 6 is tombstone"));
        assert!(err(core.delete_store(6)).contains("tombstone"));
        // Store 5 holds a replica: it goes offline and takes no new ones.
        core.delete_store(5).unwrap();
        assert_eq!(
            core.get_store(5).unwrap().meta.get_state(),
            metapb::StoreState::Offline
        );
        assert!(err(core.add_transfer_leader(2, 5)).contains("store 5 is down or offline"));
        // The next heartbeat starts moving its replica to the one store left, 7.
        let resp = core.region_heartbeat(&hb).unwrap().expect("a step");
        assert_eq!(resp.get_change_peer().get_peer().get_store_id(), 7);
        assert!(err(core.add_move_peer(2, 4, 7)).contains("already has a running operator"));
        // Three stores are left up (1, 4, 7): no more deletes.
        assert!(err(core.delete_store(7)).contains("fewer than max-replicas (3)"));
        assert_eq!(
            core.get_store(7).unwrap().meta.get_state(),
            metapb::StoreState::Up
        );
        assert!(err(core.delete_store(42)).contains("not found"));
    }

    /// Regions 2, 10 and 11, cut at "b" and "c", each with voters on stores 1, 4 and 5.
    fn three_regions() -> Vec<metapb::Region> {
        use metapb::PeerRole::Voter;
        [(2, "", "b"), (10, "b", "c"), (11, "c", "")]
            .iter()
            .map(|&(id, start, end)| {
                let mut r = metapb::Region::default();
                r.set_id(id);
                r.set_start_key(start.into());
                r.set_end_key(end.into());
                r.mut_region_epoch().set_version(2);
                r.mut_region_epoch().set_conf_ver(3);
                for (i, s) in [1, 4, 5].into_iter().enumerate() {
                    r.mut_peers().push(peer(id * 100 + i as u64, s, Voter));
                }
                r
            })
            .collect()
    }

    /// Bootstraps `core` with the first of `regions` on store 1, adds stores 4 and 5, and
    /// reports the split into `regions`.
    fn split_into(core: &PdCore, regions: &[metapb::Region]) {
        let mut first = regions[0].clone();
        first.set_end_key(vec![]);
        first.mut_peers().truncate(1);
        core.bootstrap(store(1), first).unwrap();
        core.put_store(store(4)).unwrap();
        core.put_store(store(5)).unwrap();
        core.report_split(regions).unwrap();
    }

    fn led_from(r: &metapb::Region, store: u64) -> pdpb::RegionHeartbeatRequest {
        let mut hb = pdpb::RegionHeartbeatRequest::default();
        hb.set_region(r.clone());
        let leader = r.get_peers().iter().find(|p| p.get_store_id() == store);
        hb.set_leader(leader.expect("a peer on the store").clone());
        hb
    }

    #[test]
    fn a_restarted_pd_balances_only_once_every_region_reported_its_leader() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let cfg = Config {
                balance_warmup: std::time::Duration::from_secs(3600),
                ..Config::default()
            };
            let storage = crate::storage::local::open(dir.path());
            PdCore::open(cfg, storage, util::logger::discard()).unwrap()
        };
        let regions = three_regions();
        {
            let core = open();
            split_into(&core, &regions);
        }
        let core = open();
        for s in [1, 4, 5] {
            core.put_store(store(s)).unwrap();
        }
        // Store 1 reports leading two regions; the third has not reported. Balancing
        // now would move a leader to store 4 or 5, which may already lead the third.
        assert!(core
            .region_heartbeat(&led_from(&regions[0], 1))
            .unwrap()
            .is_none());
        assert!(core
            .region_heartbeat(&led_from(&regions[1], 1))
            .unwrap()
            .is_none());
        assert!(core.operators().is_empty());
        // Every region has reported: store 1 leads two, store 4 one, store 5 none.
        assert!(core
            .region_heartbeat(&led_from(&regions[2], 4))
            .unwrap()
            .is_none());
        let resp = core.region_heartbeat(&led_from(&regions[0], 1)).unwrap();
        let to = resp
            .expect("a leader transfer")
            .get_transfer_leader()
            .get_peer()
            .get_store_id();
        assert_eq!(to, 5);
    }

    #[test]
    fn a_hand_issued_move_replaces_a_balancer_and_the_balancers_leave_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            balance_warmup: std::time::Duration::ZERO,
            ..Config::default()
        };
        let core = PdCore::open(
            cfg,
            crate::storage::local::open(dir.path()),
            util::logger::discard(),
        )
        .unwrap();
        let regions = three_regions();
        split_into(&core, &regions);
        // Store 1 leads the two that reported: the balancer moves one's leadership away.
        for r in &regions[1..] {
            core.region_heartbeat(&led_from(r, 1)).unwrap();
        }
        let kinds = |core: &PdCore| -> Vec<(u64, &str)> {
            core.operators().iter().map(|o| (o.0, o.1)).collect()
        };
        core.operators()
            .iter()
            .for_each(|o| assert_eq!(o.1, "balance-leader"));
        let balanced = kinds(&core).first().expect("a balance operator").0;
        // A hand-issued transfer of that region takes the balancer's place.
        core.add_transfer_leader(balanced, 4).unwrap();
        assert!(kinds(&core).contains(&(balanced, "transfer-leader")));
        // Once done, store 4 leads it; make store 4 lead everything else too. The
        // balancer moves the others' leadership away, never the held region's.
        let r = regions.iter().find(|r| r.get_id() == balanced).unwrap();
        assert!(core.region_heartbeat(&led_from(r, 4)).unwrap().is_none());
        let balanced_now: Vec<u64> = regions
            .iter()
            .filter(|r| core.region_heartbeat(&led_from(r, 4)).unwrap().is_some())
            .map(|r| r.get_id())
            .collect();
        assert!(
            !balanced_now.is_empty(),
            "store 4 leading all three is balanced"
        );
        assert!(
            !balanced_now.contains(&balanced),
            "the region moved by hand is left alone: {balanced_now:?}"
        );
    }
}
