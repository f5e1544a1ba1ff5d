//! An in-process cluster for tests: a real PD (gRPC on loopback) and N stores in one
//! process, the stores talking Raft through a simulated network whose filters can drop,
//! delay, partition or isolate. Stores can be stopped and started again on the same data.
//!
//! Tests wait on conditions with deadlines ([`wait_until`]); nothing here sleeps blindly.
//! Used only by tests.

pub mod elle;
pub mod gate;
pub mod history;
mod network;
pub mod pd_group;
mod watchdog;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use engine::{Cf, Engine};
use parking_lot::Mutex;
use pd_client::PdClient;
use proto::{kvrpcpb::Context, metapb, raft_cmdpb};
use raftstore::{RaftStore, SnapManager, StoreDeps, StoreMeta};
use server::storage::{RawLimits, RawStorage};

pub use network::{Filter, Network, Verdict};
pub use watchdog::Watchdog;

/// Polls `cond` until it holds or `timeout` passes; panics naming `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A free port on 127.0.0.1 for a server a test starts. Taken below the kernel's
/// ephemeral range (32768 and up): a port from that range, released and handed to a
/// server, can meanwhile become the local port of some outgoing connection, and the
/// server then fails to bind. Each test process walks its own stretch of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let base = std::process::id() * 997;
    for _ in 0..SPAN {
        let port = (LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}

/// The first `Some` that `f` returns within `timeout`, or `None`.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Where the cluster's stores and PD log: nowhere, unless `FLOTILLA_TEST_LOG` names a
/// level (error, warn, info, debug) to debug a failing test with.
pub(crate) fn test_logger() -> util::logger::Logger {
    match std::env::var("FLOTILLA_TEST_LOG").map(|l| l.parse()) {
        Ok(Ok(level)) => util::logger::new(&util::logger::LogConfig {
            level,
            ..Default::default()
        }),
        _ => util::logger::discard(),
    }
}

/// How often each store advances its led regions' safe timestamps.
pub const SAFE_TS_INTERVAL: Duration = Duration::from_millis(200);

/// Settings for a test cluster: fast ticks and heartbeats so that tests finish quickly.
pub fn test_config() -> (raftstore::Config, pd::Config) {
    let rs = raftstore::Config {
        raft_base_tick_interval: Duration::from_millis(50),
        raft_election_timeout_ticks: 10,
        raft_heartbeat_ticks: 2,
        leader_lease: Duration::from_millis(400),
        leader_transfer_timeout: Duration::from_millis(250),
        raft_log_gc_tick_interval: Duration::from_millis(200),
        pd_heartbeat_tick_interval: Duration::from_millis(200),
        pd_heartbeat_idle_interval: Duration::from_millis(500),
        pd_store_heartbeat_tick_interval: Duration::from_millis(200),
        max_peer_down_duration: Duration::from_secs(2),
        store_pool_size: 1,
        apply_pool_size: 1,
        ..Default::default()
    };
    let pd = pd::Config {
        addr: "127.0.0.1:0".into(),
        max_store_down_time: Duration::from_secs(3),
        ..Default::default()
    };
    (rs, pd)
}

struct Running {
    raftstore: RaftStore,
    /// Stops the store's safe timestamp worker.
    stop_safe_ts: util::shutdown::Shutdown,
    storage: RawStorage,
    txn: server::txn_storage::TxnStorage,
    meta: Arc<Mutex<StoreMeta>>,
    engine: Engine,
    pd_worker: std::thread::JoinHandle<()>,
}

/// N stores and a PD in one process.
pub struct Cluster {
    /// Raftstore settings every store starts with.
    pub raft_cfg: raftstore::Config,
    /// How long compactions keep expired raw values (`storage.raw-expired-retention`)
    /// on stores started from now on.
    pub raw_expired_retention: Duration,
    rt: tokio::runtime::Runtime,
    /// In a mutex only so that a `Cluster` can be shared by test threads (the gRPC
    /// server is not `Sync`).
    pd_server: Option<Mutex<pd::PdServer>>,
    pd: Arc<PdClient>,
    network: Network,
    dirs: BTreeMap<u64, PathBuf>,
    running: HashMap<u64, Running>,
    _tmp: tempfile::TempDir,
    next_index: usize,
    /// Stores crashed by [`Cluster::crash_image`]: the filter that cuts each off.
    crashed: Mutex<HashMap<u64, u64>>,
    /// The labels each store's directory registers with (see [`Cluster::add_labelled_store`]).
    labels: HashMap<PathBuf, Vec<(String, String)>>,
    _watchdog: Watchdog,
    /// Last, so that it is dropped after everything else has stopped.
    _gate: gate::Shared,
}

impl Cluster {
    /// Starts PD and `n` stores with [`test_config`].
    pub fn new(n: usize) -> Cluster {
        let (rs, pd) = test_config();
        Cluster::with_config(n, rs, pd)
    }

    /// Starts PD and `n` stores with the given settings.
    pub fn with_config(n: usize, raft_cfg: raftstore::Config, mut pd_cfg: pd::Config) -> Cluster {
        let gate = gate::shared();
        let watchdog = Watchdog::arm(Watchdog::TEST_LIMIT);
        let tmp = tempfile::tempdir().expect("temp dir");
        pd_cfg.data_dir = tmp.path().join("pd");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let secret_file = pd_cfg.data_dir.join(util::secret::FILE_NAME);
        let pd_server = pd::PdServer::start(pd_cfg, test_logger()).expect("start pd");
        let secret = util::secret::ClusterSecret::load(&secret_file).expect("pd's secret");
        let pd = rt
            .block_on(PdClient::connect_as_store(
                &[pd_server.addr().to_string()],
                Duration::from_secs(10),
                util::security::Credentials::with_secret(Some(secret)),
                test_logger(),
            ))
            .expect("connect to pd");
        let mut c = Cluster {
            raft_cfg,
            raw_expired_retention: server::config::StorageConfig::default().raw_expired_retention,
            rt,
            pd_server: Some(Mutex::new(pd_server)),
            pd,
            network: Network::default(),
            dirs: BTreeMap::new(),
            running: HashMap::new(),
            _tmp: tmp,
            next_index: 0,
            crashed: Mutex::default(),
            labels: HashMap::new(),
            _watchdog: watchdog,
            _gate: gate,
        };
        for _ in 0..n {
            c.add_store();
        }
        c
    }

    /// Adds and starts a new, empty store; returns its id.
    pub fn add_store(&mut self) -> u64 {
        self.add_labelled_store(&[])
    }

    /// Adds and starts a new, empty store that registers with these labels (as
    /// `kv-server --labels`), also after restarts; returns its id.
    pub fn add_labelled_store(&mut self, labels: &[(&str, &str)]) -> u64 {
        let dir = self._tmp.path().join(format!("store-{}", self.next_index));
        self.next_index += 1;
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.labels.insert(dir.clone(), labels);
        let id = self.start_at(dir.clone()).expect("start a new store");
        self.dirs.insert(id, dir);
        id
    }

    fn start_at(&mut self, dir: PathBuf) -> Result<u64, String> {
        let opts = engine::EngineOptions {
            default_cf_drop: Some(server::storage::raw_expiry_filter(
                self.raw_expired_retention,
                Arc::new(std::sync::atomic::AtomicBool::new(true)),
            )),
            ..Default::default()
        };
        let engine = Engine::open_with(&dir.join("db"), &opts).expect("open engine");
        let snap_mgr = SnapManager::new(dir.join("snap"), self.raft_cfg.snap_max_size.as_u64())
            .expect("snap dir");
        let mut store = metapb::Store::default();
        store.set_address(format!("sim://{}", dir.display()));
        for (k, v) in self.labels.get(&dir).into_iter().flatten() {
            let mut label = metapb::StoreLabel::default();
            label.set_key(k.clone());
            label.set_value(v.clone());
            store.mut_labels().push(label);
        }
        self.rt
            .block_on(server::join_cluster(
                &engine,
                &self.pd,
                &mut store,
                &dir.display().to_string(),
                &test_logger(),
            ))
            .expect("join cluster");
        let store_id = store.get_id();
        let (pd_tx, pd_rx) = crossbeam_channel::unbounded();
        let cm = server::txn_storage::ConcurrencyManager::default();
        let raftstore = RaftStore::start(StoreDeps {
            store_id,
            cfg: self.raft_cfg.clone(),
            engine: engine.clone(),
            transport: Arc::new(self.network.transport(store_id)),
            pd_tx,
            snap_mgr: snap_mgr.clone(),
            logger: test_logger(),
            read_index_check: Some(server::txn_storage::read_index_check(cm.clone())),
        })
        .map_err(|e| e.to_string())?;
        let router = raftstore.router();
        self.network.attach(store_id, router.clone(), snap_mgr);
        let pd_worker = server::pd_worker::spawn(
            self.pd.clone(),
            pd_rx,
            router.clone(),
            self.rt.handle().clone(),
            self.raft_cfg.store_silent_after(),
            util::shutdown::Shutdown::default(),
            test_logger(),
        );
        self.rt
            .block_on(self.pd.put_store(store))
            .expect("register store");
        let meta = raftstore.store_meta();
        let storage = RawStorage::new(
            router,
            engine.clone(),
            meta.clone(),
            self.limits(Duration::from_secs(5)),
        );
        let txn = server::txn_storage::TxnStorage::new(
            storage.clone(),
            self.pd.clone(),
            &server::config::TxnConfig::default(),
            cm,
        );
        let stop_safe_ts = util::shutdown::Shutdown::default();
        self.rt.spawn(server::safe_ts::run(
            txn.clone(),
            self.pd.clone(),
            SAFE_TS_INTERVAL,
            stop_safe_ts.clone(),
            test_logger(),
        ));
        self.running.insert(
            store_id,
            Running {
                stop_safe_ts,
                raftstore,
                txn,
                storage,
                meta,
                engine,
                pd_worker,
            },
        );
        Ok(store_id)
    }

    /// Ids of every store ever added, running or not.
    pub fn store_ids(&self) -> Vec<u64> {
        self.dirs.keys().copied().collect()
    }

    /// Stops a store (its data stays).
    pub fn stop_store(&mut self, store_id: u64) {
        let r = self.running.remove(&store_id).expect("store is running");
        r.stop_safe_ts.trigger();
        self.network.detach(store_id);
        r.raftstore.shutdown();
        drop(r.storage);
        drop(r.meta);
        let engine = r.engine.downgrade();
        drop(r.engine);
        let _ = r.pd_worker.join();
        // Tasks of the store's runtime may still hold the engine for a moment after
        // their stop; a restart before they let go would find the database locked. (A
        // test that keeps a handle of its own keeps it open: no wait is forever.)
        poll_until(Duration::from_secs(2), || {
            engine.upgrade().is_none().then_some(())
        });
    }

    /// Starts a stopped store on its data.
    pub fn start_store(&mut self, store_id: u64) {
        if let Err(e) = self.try_start_store(store_id) {
            panic!("store {store_id} does not start: {e}");
        }
    }

    /// Starts a stopped store on its data; says why if it refuses.
    pub fn try_start_store(&mut self, store_id: u64) -> Result<(), String> {
        let dir = self.dirs[&store_id].clone();
        let id = self.start_at(dir)?;
        assert_eq!(id, store_id, "a restarted store keeps its id");
        Ok(())
    }

    /// Crashes a store, as far as the others can tell: returns what it would find on disk
    /// if it died now keeping the page cache (as a killed process does): its database as
    /// of this instant, every write in it fsynced or not, and its snapshot files. From now
    /// on it is cut off the network, so nothing it does later (it runs on until
    /// [`Cluster::restart_from_image`]) is seen. Take it while the store's threads are held
    /// at a fail point to crash the store exactly there.
    pub fn crash_image(&self, store_id: u64) -> PathBuf {
        let cut = self.network.isolate(store_id);
        self.crashed.lock().insert(store_id, cut);
        let image = self
            ._tmp
            .path()
            .join(format!("image-{store_id}-{}", self.next_index));
        std::fs::create_dir_all(&image).expect("image dir");
        let engine = &self.running[&store_id].engine;
        engine
            .checkpoint(&image.join("db"))
            .expect("checkpoint the database");
        let snap = self.dirs[&store_id].join("snap");
        std::fs::create_dir_all(image.join("snap")).expect("image snap dir");
        for entry in std::fs::read_dir(&snap).expect("read snap dir").flatten() {
            let _ = std::fs::copy(entry.path(), image.join("snap").join(entry.file_name()));
        }
        image
    }

    /// Stops a store, puts a crash image taken earlier in place of its data, and starts
    /// it on that; says why if it refuses to start.
    pub fn restart_from_image(
        &mut self,
        store_id: u64,
        image: &std::path::Path,
    ) -> Result<(), String> {
        self.stop_store(store_id);
        if let Some(cut) = self.crashed.lock().remove(&store_id) {
            self.network.remove_filter(cut);
        }
        let dir = self.dirs[&store_id].clone();
        for part in ["db", "snap"] {
            std::fs::remove_dir_all(dir.join(part)).expect("remove old data");
            std::fs::rename(image.join(part), dir.join(part)).expect("put the image in place");
        }
        self.try_start_store(store_id)
    }

    /// The simulated network, for filters.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The PD client.
    pub fn pd(&self) -> &Arc<PdClient> {
        &self.pd
    }

    /// The tokio runtime the cluster runs on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The store whose peer leads the region holding `key`, with that region.
    pub fn leader_of_key(&self, key: &[u8]) -> Option<(u64, metapb::Region)> {
        self.running.iter().find_map(|(id, r)| {
            let meta = r.meta.lock();
            meta.region_for_key(key)
                .filter(|reg| meta.is_leader(reg.get_id()))
                .map(|reg| (*id, reg.clone()))
        })
    }

    /// (hibernating peers, all peers) of a running store.
    pub fn hibernating(&self, store_id: u64) -> (usize, usize) {
        let router = self.running[&store_id].raftstore.router();
        (router.hibernating_count(), router.region_count())
    }

    /// The store leading `region_id` and the region as that leader has it.
    fn led_region(&self, region_id: u64) -> Result<(u64, metapb::Region), String> {
        let leader = self.leader_of(region_id).ok_or("no leader")?;
        let region = self.running[&leader].meta.lock().region(region_id).cloned();
        Ok((leader, region.ok_or("leader has no such region")?))
    }

    /// The store leading `region_id`, if a running store leads it.
    pub fn leader_of(&self, region_id: u64) -> Option<u64> {
        self.running
            .iter()
            .find(|(_, r)| r.meta.lock().is_leader(region_id))
            .map(|(id, _)| *id)
    }

    /// The routing context a smart client sends `store_id` for `region`.
    pub fn context(region: &metapb::Region, store_id: u64) -> Context {
        let mut c = Context::default();
        c.set_region_id(region.get_id());
        c.set_region_epoch(region.get_region_epoch().clone());
        if let Some(p) = region
            .get_peers()
            .iter()
            .find(|p| p.get_store_id() == store_id)
        {
            c.set_peer(p.clone());
        }
        c
    }

    /// The raw API of the store leading the region of `key`, with the routing context a
    /// smart client would send it.
    pub fn leader_storage(&self, key: &[u8]) -> Option<(RawStorage, Context)> {
        let (store, region) = self.leader_of_key(key)?;
        Some((self.storage(store), Self::context(&region, store)))
    }

    /// The transactional API of the store leading the region of the transactional key
    /// `key` (regions hold such keys by their encoding), with a smart client's context.
    pub fn leader_txn(&self, key: &[u8]) -> Option<(server::txn_storage::TxnStorage, Context)> {
        let (store, region) = self.leader_of_key(&keys::txn::encode_bytes(key))?;
        Some((
            self.running[&store].txn.clone(),
            Self::context(&region, store),
        ))
    }

    /// The transactional API of `store_id` with a context for its replica of the region
    /// holding the transactional key `key`, asking for a replica read (TiKV's
    /// `replica_read`); `None` if the store has no replica there.
    pub fn replica_txn(
        &self,
        store_id: u64,
        key: &[u8],
    ) -> Option<(server::txn_storage::TxnStorage, Context)> {
        let region = self.local_region(store_id, &keys::txn::encode_bytes(key))?;
        let mut ctx = Self::context(&region, store_id);
        ctx.set_replica_read(true);
        Some((self.running[&store_id].txn.clone(), ctx))
    }

    /// Writes through the current leader, retrying routing failures for up to `timeout`.
    pub fn put_within(&self, key: &[u8], value: &[u8], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            if let Some((store, region)) = self.leader_of_key(key) {
                let storage = self.running[&store].storage.clone();
                let ctx = Self::context(&region, store);
                match self.rt.block_on(storage.put(&ctx, "", key, value)) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last)
    }

    /// Writes through the current leader; panics if no write succeeds within 10 s.
    pub fn must_put(&self, key: &[u8], value: &[u8]) {
        if let Err(e) = self.put_within(key, value, Duration::from_secs(10)) {
            panic!("put {key:?} failed: {e}");
        }
    }

    /// A linearizable read through the current leader.
    pub fn get_within(&self, key: &[u8], timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            if let Some((store, region)) = self.leader_of_key(key) {
                let storage = self.running[&store].storage.clone();
                match self
                    .rt
                    .block_on(storage.get(&Self::context(&region, store), "", key))
                {
                    Ok(v) => return Ok(v),
                    Err(e) => last = e.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last)
    }

    /// Panics unless a linearizable read of `key` returns `value`.
    pub fn must_get_equal(&self, key: &[u8], value: &[u8]) {
        let got = self.get_within(key, Duration::from_secs(10)).expect("read");
        assert_eq!(
            got.as_deref(),
            Some(value),
            "key {:?}",
            String::from_utf8_lossy(key)
        );
    }

    /// The value in one store's engine, read directly (not linearizable: for checking
    /// replication), without its expiry.
    pub fn local_get(&self, store_id: u64, key: &[u8]) -> Option<Vec<u8>> {
        self.local_get_stored(store_id, key).map(|v| {
            let (value, _) = keys::raw::decode(&v).expect("a raw value with its expiry");
            value.to_vec()
        })
    }

    /// The bytes one store's engine holds for `key`, expiry included.
    pub fn local_get_stored(&self, store_id: u64, key: &[u8]) -> Option<Vec<u8>> {
        self.running[&store_id]
            .engine
            .get(Cf::Default, &keys::data_key(key))
            .expect("engine read")
    }

    /// The consistency check between replicas, as `kvctl region check` runs it: every
    /// replica of `region_id` hashes its data at one applied index; returns the
    /// (store, hash) pairs, or why not all replicas answered.
    pub fn region_hashes(&self, region_id: u64) -> Result<Vec<(u64, u64)>, String> {
        let (store, region) = self.led_region(region_id)?;
        let (index, _) = self
            .rt
            .block_on(
                self.storage(store)
                    .compute_hash(region_id, region.get_region_epoch().clone()),
            )
            .map_err(|e| e.to_string())?;
        let mut hashes = vec![];
        for p in region.get_peers() {
            let s = p.get_store_id();
            let meta = &self
                .running
                .get(&s)
                .ok_or("a replica's store is down")?
                .meta;
            let mut hash = None;
            wait_until("every replica's hash", Duration::from_secs(10), || {
                hash = meta.lock().hash_at(region_id, index);
                hash.is_some()
            });
            hashes.push((s, hash.expect("waited for")));
        }
        Ok(hashes)
    }

    /// Writes `key` straight into one store's engine, behind Raft's back: a replica that
    /// diverges, for tests of the consistency check.
    pub fn corrupt(&self, store_id: u64, key: &[u8], value: &[u8]) {
        let engine = &self.running[&store_id].engine;
        let mut wb = engine.write_batch();
        wb.put(
            Cf::Default,
            &keys::data_key(key),
            &keys::raw::encode(value, keys::raw::NO_EXPIRY),
        );
        engine.write(wb, true).expect("engine write");
    }

    /// Every pair in `region`'s range in one store's engine, read directly.
    pub fn local_scan(&self, store_id: u64, region: &metapb::Region) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = vec![];
        let start = keys::data_key(region.get_start_key());
        let end = keys::data_end_key(region.get_end_key());
        self.running[&store_id]
            .engine
            .scan(Cf::Default, &start, &end, |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(true)
            })
            .expect("engine scan");
        out
    }

    /// Waits until every running store holds `value` for `key`.
    pub fn must_replicate(&self, key: &[u8], value: &[u8], timeout: Duration) {
        wait_until(
            &format!("{:?} on every store", String::from_utf8_lossy(key)),
            timeout,
            || {
                self.running
                    .keys()
                    .all(|s| self.local_get(*s, key).as_deref() == Some(value))
            },
        );
    }

    /// Waits until one store holds `value` for `key`.
    pub fn must_replicate_on(&self, store_id: u64, key: &[u8], value: &[u8], timeout: Duration) {
        wait_until(
            &format!("{:?} on store {store_id}", String::from_utf8_lossy(key)),
            timeout,
            || self.local_get(store_id, key).as_deref() == Some(value),
        );
    }

    /// The region holding `key` as one store sees it.
    pub fn local_region(&self, store_id: u64, key: &[u8]) -> Option<metapb::Region> {
        self.running
            .get(&store_id)?
            .meta
            .lock()
            .region_for_key(key)
            .cloned()
    }

    /// Waits until the region holding `key` has `n` voters on running stores, as its
    /// leader sees it.
    pub fn wait_voters(&self, key: &[u8], n: usize, timeout: Duration) {
        wait_until(&format!("{n} voters"), timeout, || {
            self.leader_of_key(key).is_some_and(|(_, r)| {
                r.get_peers()
                    .iter()
                    .filter(|p| p.get_role() == metapb::PeerRole::Voter)
                    .count()
                    == n
            })
        });
    }

    /// One running store's database.
    pub fn engine(&self, store_id: u64) -> Engine {
        self.running[&store_id].engine.clone()
    }

    /// Where a region's log starts on one running store (its truncated index), and its
    /// last index.
    pub fn log_bounds(&self, store_id: u64, region_id: u64) -> (u64, u64) {
        let state: proto::raft_serverpb::RaftLocalState = self
            .engine(store_id)
            .get_msg(Cf::Raft, &keys::raft_state_key(region_id))
            .expect("read raft state")
            .expect("raft state");
        (state.get_truncated_state().index, state.last_index)
    }

    /// One running store's router, for mail sent straight to its peers.
    pub fn router(&self, store_id: u64) -> raftstore::RaftRouter {
        self.running[&store_id].raftstore.router()
    }

    /// The raw key-value API of one running store (for requests with explicit routing).
    pub fn storage(&self, store_id: u64) -> RawStorage {
        self.running[&store_id].storage.clone()
    }

    /// Like [`Cluster::storage`], with requests that give up after `timeout`.
    pub fn storage_with_timeout(&self, store_id: u64, timeout: Duration) -> RawStorage {
        let r = &self.running[&store_id];
        RawStorage::new(
            r.raftstore.router(),
            r.engine.clone(),
            r.meta.clone(),
            self.limits(timeout),
        )
    }

    /// The request limits of a store's raw API: the store server's defaults, with this
    /// cluster's entry size and `timeout`.
    fn limits(&self, timeout: Duration) -> RawLimits {
        let mut cfg = server::Config {
            raftstore: self.raft_cfg.clone(),
            ..Default::default()
        };
        cfg.server.request_timeout = timeout;
        RawLimits::of(&cfg)
    }

    /// Asks the leader of `region_id` to hand leadership to its peer on `to_store`, again
    /// for a while if that peer is still catching up (the leader refuses it until then).
    pub fn transfer_leader(&self, region_id: u64, to_store: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_transfer_leader(region_id, to_store) {
                Err(e) if e.contains("not caught up") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                res => return res,
            }
        }
    }

    /// One request to hand leadership over, as `transfer_leader`, not repeated.
    pub fn try_transfer_leader(&self, region_id: u64, to_store: u64) -> Result<(), String> {
        let leader = self.leader_of(region_id).ok_or("no leader")?;
        let router = self.running[&leader].raftstore.router();
        let mut to = metapb::Peer::default();
        to.set_store_id(to_store);
        let (tx, rx) = crossbeam_channel::bounded(1);
        router
            .send(
                region_id,
                raftstore::PeerMsg::TransferLeader {
                    to,
                    cb: Box::new(move |r| {
                        let _ = tx.send(r.map_err(|e| e.to_string()));
                    }),
                },
            )
            .map_err(|e| e.to_string())?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())?
    }

    /// Proposes one membership change of `region_id` through its leader, at the epoch the
    /// leader has; returns the region after it applied, or why it was refused.
    pub fn change_peer(
        &self,
        region_id: u64,
        change_type: raft_cmdpb::ConfChangeType,
        peer: metapb::Peer,
    ) -> Result<metapb::Region, String> {
        let (leader, region) = self.led_region(region_id)?;
        let mut change = raft_cmdpb::ChangePeerRequest::default();
        change.set_change_type(change_type);
        change.set_peer(peer);
        let mut cmd = raft_cmdpb::RaftCmdRequest::default();
        let header = cmd.mut_header();
        header.set_region_id(region_id);
        header.set_region_epoch(region.get_region_epoch().clone());
        let admin = cmd.mut_admin_request();
        admin.set_cmd_type(raft_cmdpb::AdminCmdType::ChangePeerV2);
        admin.mut_change_peer_v2().mut_changes().push(change);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cb = Box::new(move |r: raftstore::Result<raftstore::CmdResponse>| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        self.router(leader)
            .send(region_id, raftstore::PeerMsg::Command { cmd, cb })
            .map_err(|e| e.to_string())?;
        let resp = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())??;
        Ok(resp.region.unwrap_or(region))
    }

    /// Asks the leader of the region holding `key` to split at `split_key`, as a client's
    /// SplitRegion request would; returns the resulting regions.
    pub fn split(&self, key: &[u8], split_key: &[u8]) -> Result<Vec<metapb::Region>, String> {
        self.split_at_keys(key, vec![split_key.to_vec()])
    }

    /// Splits the region holding `key` at every one of `split_keys` in one command.
    pub fn split_at_keys(
        &self,
        key: &[u8],
        split_keys: Vec<Vec<u8>>,
    ) -> Result<Vec<metapb::Region>, String> {
        let (store, region) = self.leader_of_key(key).ok_or("no leader")?;
        let ctx = Self::context(&region, store);
        self.rt
            .block_on(self.running[&store].storage.split_region(&ctx, split_keys))
            .map_err(|e| e.to_string())
    }

    /// Splits at `split_key`, retrying while leadership moves, for up to 10 s.
    pub fn must_split(&self, split_key: &[u8]) -> Vec<metapb::Region> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.split(split_key, split_key) {
                Ok(regions) => return regions,
                Err(e) if Instant::now() > deadline => panic!("split at {split_key:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Every region (by id) that some running store has, as the store with the highest
    /// epoch version sees it.
    pub fn regions(&self) -> BTreeMap<u64, metapb::Region> {
        let mut out: BTreeMap<u64, metapb::Region> = BTreeMap::new();
        for r in self.running.values() {
            for region in r.meta.lock().regions() {
                let newer = out.get(&region.get_id()).is_none_or(|o| {
                    o.get_region_epoch().get_version() < region.get_region_epoch().get_version()
                });
                if newer {
                    out.insert(region.get_id(), region.clone());
                }
            }
        }
        out
    }

    /// Stops PD; stores keep running and retry.
    pub fn stop_pd(&mut self) {
        if let Some(pd) = self.pd_server.take() {
            pd.into_inner().shutdown();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.stop_store(id);
        }
        if let Some(pd) = self.pd_server.take() {
            pd.into_inner().shutdown();
        }
    }
}
