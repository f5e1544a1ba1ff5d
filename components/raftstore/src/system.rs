//! Starting and stopping a store's raftstore: pollers, apply pool, store loop, snapshot
//! generator.

use std::{sync::Arc, thread::JoinHandle};

use crossbeam_channel::{bounded, unbounded, Sender};
use engine::Engine;
use parking_lot::Mutex;
use slog::Logger;

use crate::{
    batch::{BatchSystem, Router},
    fsm::{
        apply::{ApplyContext, ApplyFsm, ApplyRouter},
        peer::{PeerFsm, PollContext},
        store::{unix_now, StoreFsm},
    },
    msg::{PdTask, PeerMsg, StoreMsg},
    operation::ready::{ApplyPoller, RaftPoller},
    snap::SnapManager,
    split_check,
    store_meta::StoreMeta,
    transport::Transport,
    Config, RaftRouter, Result,
};

/// What a raftstore needs from the process around it.
pub struct StoreDeps {
    /// This store's id, from PD.
    pub store_id: u64,
    /// Raftstore settings.
    pub cfg: Config,
    /// The store's database.
    pub engine: Engine,
    /// Delivers Raft messages to other stores.
    pub transport: Arc<dyn Transport>,
    /// Where heartbeats for PD go.
    pub pd_tx: Sender<PdTask>,
    /// Where snapshot files live.
    pub snap_mgr: SnapManager,
    /// The store's logger.
    pub logger: Logger,
    /// Answers the checks of followers' replica reads on regions this store leads.
    pub read_index_check: Option<crate::msg::ReadIndexCheck>,
}

/// A running raftstore.
pub struct RaftStore {
    store_id: u64,
    router: RaftRouter,
    apply_router: ApplyRouter,
    store_meta: Arc<Mutex<StoreMeta>>,
    raft_system: BatchSystem<PeerFsm>,
    apply_system: BatchSystem<ApplyFsm>,
    stop_store: Sender<()>,
    store_thread: Option<JoinHandle<()>>,
    gen_thread: Option<JoinHandle<()>>,
    split_check_thread: Option<JoinHandle<()>>,
}

impl RaftStore {
    /// Loads every peer on disk and starts serving them.
    pub fn start(deps: StoreDeps) -> Result<RaftStore> {
        let cfg = Arc::new(deps.cfg);
        let mut raft_system = BatchSystem::new(cfg.peer_mailbox_capacity);
        // Only peers send to apply state machines, bounded by `max-apply-lag`.
        let mut apply_system = BatchSystem::new(usize::MAX);
        let (store_tx, store_rx) = unbounded();
        let router = RaftRouter {
            peers: Router::default(),
            store: store_tx,
            hibernating: Arc::default(),
        };
        let apply_router = ApplyRouter::default();
        let store_meta = Arc::new(Mutex::new(StoreMeta::default()));
        let (gen_tx, gen_rx) = unbounded();
        let gen_thread =
            deps.snap_mgr
                .spawn_generator(deps.engine.clone(), gen_rx, deps.logger.clone());
        let disk = crate::disk::DiskSpace::new(cfg.reserve_space);
        let store = StoreFsm {
            store_id: deps.store_id,
            cfg: cfg.clone(),
            engine: deps.engine.clone(),
            router: router.clone(),
            apply_router: apply_router.clone(),
            peers: raft_system.registrar(),
            applies: apply_system.registrar(),
            store_meta: store_meta.clone(),
            pd_tx: deps.pd_tx.clone(),
            gen_tx,
            snap_mgr: deps.snap_mgr.clone(),
            logger: deps.logger.clone(),
            start_time: unix_now(),
            disk: disk.clone(),
        };
        let (split_check_tx, split_check_rx) = unbounded();
        let split_check_thread = split_check::spawn(
            deps.engine.clone(),
            router.clone(),
            split_check_rx,
            deps.logger.clone(),
        );
        store.load_peers()?;
        // Thread names carry the store: several stores share a process in tests, and fail
        // points tell them apart by it.
        let raft_threads = format!("raftstore-s{}", deps.store_id);
        raft_system.spawn(
            &raft_threads,
            cfg.store_pool_size,
            cfg.max_batch_size,
            || RaftPoller {
                ctx: PollContext {
                    cfg: cfg.clone(),
                    engine: deps.engine.clone(),
                    peers: router.peers.clone(),
                    store_tx: router.store.clone(),
                    hibernating: router.hibernating.clone(),
                    apply_router: apply_router.clone(),
                    transport: deps.transport.clone(),
                    pd_tx: deps.pd_tx.clone(),
                    store_meta: store_meta.clone(),
                    snap_mgr: deps.snap_mgr.clone(),
                    split_check_tx: split_check_tx.clone(),
                    disk: disk.clone(),
                    raft_wb: deps.engine.write_batch(),
                    sync_log: false,
                    sync_state: false,
                    outgoing: Default::default(),
                    read_index_check: deps.read_index_check.clone(),
                },
            },
        );
        let apply_threads = format!("apply-s{}", deps.store_id);
        apply_system.spawn(
            &apply_threads,
            cfg.apply_pool_size,
            cfg.max_batch_size,
            || ApplyPoller {
                ctx: ApplyContext::new(
                    deps.engine.clone(),
                    store_meta.clone(),
                    cfg.messages_per_round,
                ),
                router: router.clone(),
            },
        );
        // Only the pollers may hold the checker's sender, so that it stops with them.
        drop(split_check_tx);
        let (stop_store, stop_rx) = bounded(1);
        let store_thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || store.run(store_rx, stop_rx))
            .expect("spawn store thread");
        Ok(RaftStore {
            store_id: deps.store_id,
            router,
            apply_router,
            store_meta,
            raft_system,
            apply_system,
            stop_store,
            store_thread: Some(store_thread),
            gen_thread: Some(gen_thread),
            split_check_thread: Some(split_check_thread),
        })
    }

    /// Where requests and Raft messages for this store go.
    pub fn router(&self) -> RaftRouter {
        self.router.clone()
    }

    /// The store's view of its regions.
    pub fn store_meta(&self) -> Arc<Mutex<StoreMeta>> {
        self.store_meta.clone()
    }

    /// Starts handing every leader on this store to a caught-up voter elsewhere, tells PD
    /// to move no leader here, and makes this store's peers refuse leadership offered by
    /// transfer; for a shutdown that clients should not notice. Returns at once:
    /// [`RaftStore::movable_leader_count`] tells progress, and calling again retries
    /// regions whose transfer did not happen.
    pub fn evict_leaders(&self) {
        let first = !std::mem::replace(&mut self.store_meta.lock().stopping, true);
        if first {
            self.router.send_store(StoreMsg::Stopping);
        }
        self.router
            .peers
            .broadcast(|_| true, || PeerMsg::EvictLeader);
    }

    /// Regions this store leads now that another store could lead.
    pub fn movable_leader_count(&self) -> usize {
        self.store_meta.lock().movable_leader_count(self.store_id)
    }

    /// Stops every thread and releases the database, so that it can be opened again.
    pub fn shutdown(mut self) {
        let _ = self.stop_store.send(());
        if let Some(t) = self.store_thread.take() {
            let _ = t.join();
        }
        self.raft_system.shutdown();
        self.apply_system.shutdown();
        // Peers and apply state machines hold the engine and the generator's sender.
        self.router.peers.clear();
        self.apply_router.clear();
        for t in [self.gen_thread.take(), self.split_check_thread.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}
