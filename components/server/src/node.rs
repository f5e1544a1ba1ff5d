//! A store process: opens the engine, joins (or bootstraps) the cluster through PD, and
//! runs the raftstore, the gRPC service, the PD worker and the status server.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use engine::{Cf, Engine};
use grpcio::ServerBuilder;
use pd_client::PdClient;
use proto::{metapb, raft_serverpb::RegionLocalState};
use protobuf::Message as _;
use raftstore::{bootstrap, RaftStore, SnapManager, StoreDeps};
use slog::{info, warn, Logger};
use util::secret::ClusterSecret;
use util::security::{Credentials, Security};
use util::shutdown::Shutdown;

use crate::{
    config::Config,
    pd_worker,
    resolver::Resolver,
    service::TikvService,
    storage::{RawLimits, RawStorage},
    transport::{GrpcTransport, TransportLimits},
    Error, Result,
};

/// A running store.
pub struct Node {
    raftstore: Option<RaftStore>,
    grpc: grpcio::Server,
    pd_worker: Option<std::thread::JoinHandle<()>>,
    shutdown: Shutdown,
    /// Fires when PD says this store is tombstone.
    retired: Shutdown,
    logger: Logger,
    /// Flushed once the raftstore has stopped, so that a restart replays no log.
    engine: Engine,
    /// How long a shutdown may wait for leaders to move away.
    graceful_shutdown_timeout: Duration,
    /// Held until the process ends: no second server opens this data directory.
    _dir_lock: util::dir_lock::DirLock,
}

/// Regions whose state is on disk (a first region prepared before a crash, say).
fn regions_on_disk(engine: &Engine) -> Result<Vec<metapb::Region>> {
    let range = keys::region_state_range();
    let mut out = vec![];
    engine.scan(Cf::Raft, &range.start, &range.end, |_, v| {
        if let Ok(s) = RegionLocalState::parse_from_bytes(v) {
            out.push(s.get_region().clone());
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Makes `engine` a store of PD's cluster: checks or writes the store identity, and
/// bootstraps the cluster with a first region if nobody has. Sets `store`'s id.
pub async fn join_cluster(
    engine: &Engine,
    pd: &PdClient,
    store: &mut metapb::Store,
    dir: &str,
    logger: &Logger,
) -> Result<()> {
    let cluster_id = pd.cluster_id();
    match bootstrap::store_ident(engine)? {
        Some(ident) if ident.cluster_id != cluster_id => {
            return Err(Error::ClusterMismatch {
                dir: dir.to_string(),
                local: ident.cluster_id,
                pd: cluster_id,
            })
        }
        Some(ident) => store.set_id(ident.store_id),
        None => {
            let id = pd.alloc_id().await?;
            bootstrap::write_store_ident(engine, cluster_id, id)?;
            info!(logger, "joined cluster"; "store_id" => id, "cluster_id" => cluster_id);
            store.set_id(id);
        }
    }
    if pd.is_bootstrapped().await? {
        return Ok(());
    }
    let region = match regions_on_disk(engine)?.into_iter().next() {
        Some(r) => r,
        None => {
            let region =
                bootstrap::first_region(pd.alloc_id().await?, pd.alloc_id().await?, store.get_id());
            bootstrap::write_initial_region(engine, &region)?;
            region
        }
    };
    match pd.bootstrap(store.clone(), region.clone()).await {
        Ok(()) => {
            info!(logger, "bootstrapped the cluster"; "region_id" => region.get_id(),
                  "peer_id" => region.get_peers().first().map_or(0, |p| p.get_id()));
            Ok(())
        }
        Err(e) if e.is_already_bootstrapped() => {
            // Another store won the race; its region is the first one, not ours.
            bootstrap::clear_region(engine, region.get_id())?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Fails at once, naming the addresses, when no PD endpoint resolves: retrying a name
/// that does not exist would only hide a typo behind a timeout.
fn check_resolvable(endpoints: &[String]) -> Result<()> {
    use std::net::ToSocketAddrs;
    if endpoints.is_empty() {
        return Err(Error::Startup(
            "no PD endpoints: set --pd / server.pd-endpoints (kv-server without them runs an \
             embedded PD)"
                .into(),
        ));
    }
    let mut why = vec![];
    for e in endpoints {
        // As the PD client takes them: an optional scheme, surrounding blanks.
        let e = e.trim();
        let e = e.split_once("://").map_or(e, |(_, rest)| rest);
        match e.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => why.push(format!("{e}: no addresses")),
            Err(err) => why.push(format!("{e}: {err}")),
        }
    }
    Err(Error::Startup(format!(
        "no PD address resolves ({}); check --pd / server.pd-endpoints",
        why.join("; ")
    )))
}

fn secret_path(cfg: &Config) -> PathBuf {
    util::secret::path_in(&cfg.security.cluster_secret_file, &cfg.server.data_dir)
}

/// This store's proof that it belongs to the cluster: the configured file; for a cluster
/// of this process's own (`own_cluster`: the embedded PD), one created in the data
/// directory.
fn cluster_secret(cfg: &Config, own_cluster: bool) -> Result<ClusterSecret> {
    let no_file = cfg.security.cluster_secret_file.as_os_str().is_empty();
    if !own_cluster && no_file && cfg.security.tls() {
        // Cluster certificates prove this store's calls.
        return Ok(ClusterSecret::none());
    }
    if !own_cluster && no_file {
        return Err(Error::Startup(
            "no cluster secret: set security.cluster-secret-file (--cluster-secret-file) to the \
             file pd-server created, <pd data-dir>/cluster-secret, or use TLS (security.ca-path)"
                .into(),
        ));
    }
    let path = secret_path(cfg);
    let fresh = !cfg.server.data_dir.join("db").join("CURRENT").exists();
    let secret = match own_cluster {
        true => ClusterSecret::load_or_create(&path, fresh),
        false => ClusterSecret::load(&path),
    };
    secret.map_err(|e| Error::Startup(e.to_string()))
}

/// What this store tells PD about itself (the id comes from joining the cluster).
fn announced_store(cfg: &Config) -> metapb::Store {
    let mut store = metapb::Store::default();
    store.set_address(cfg.server.advertise().to_string());
    let status = match cfg.server.advertise_status_addr.as_str() {
        "" => &cfg.server.status_addr,
        a => a,
    };
    store.set_status_address(status.to_string());
    store.set_version(env!("CARGO_PKG_VERSION").into());
    for (k, v) in &cfg.server.labels {
        let mut label = metapb::StoreLabel::default();
        label.set_key(k.clone());
        label.set_value(v.clone());
        store.mut_labels().push(label);
    }
    store
}

fn serve_grpc(
    cfg: &Config,
    env: Arc<grpcio::Environment>,
    security: &Security,
    service: TikvService,
) -> Result<(grpcio::Server, u16)> {
    let max = cfg.server.max_message_size.as_u64() as i32;
    // Pings both ways: the server drops a peer stream whose sender's address went away,
    // and accepts the other stores' pings as often as they send them.
    let s = &cfg.server;
    let args = grpcio::ChannelBuilder::new(env.clone())
        .max_receive_message_len(max)
        .max_send_message_len(max)
        .keepalive_time(s.grpc_keepalive_time)
        .keepalive_timeout(s.grpc_keepalive_timeout)
        .http2_min_recv_ping_interval_without_data(s.grpc_keepalive_time / 2)
        .build_args();
    let mut builder = ServerBuilder::new(env).channel_args(args);
    for s in crate::service::services(service) {
        builder = builder.register_service(s);
    }
    let mut grpc = builder.add_checker(security.checker()).build()?;
    let port = security
        .listen(&mut grpc, &cfg.server.addr)
        .map_err(|e| Error::Startup(format!("cannot listen on {}: {e}", cfg.server.addr)))?;
    grpc.start();
    Ok((grpc, port))
}

/// Regions (the first by id) whose Raft term and commit index `/status` lists.
const STATUS_LEADING: usize = 64;

async fn serve_status(
    cfg: &Config,
    store: &metapb::Store,
    cluster_id: u64,
    (meta, grpc_port): (Arc<parking_lot::Mutex<raftstore::StoreMeta>>, u16),
    security: &Arc<Security>,
    shutdown: &Shutdown,
    logger: &Logger,
) -> Result<SocketAddr> {
    let addr: SocketAddr = cfg
        .server
        .status_addr
        .parse()
        .map_err(|e| Error::Startup(format!("server.status-addr: {e}")))?;
    let (store_id, address) = (store.get_id(), store.get_address().to_string());
    let status: status::StatusFn = Arc::new(move || {
        // Read outside the lock the Raft threads take: the kernel's socket table may be
        // long.
        let open_connections = crate::connections::established_on(grpc_port);
        let (regions, leaders, progress) = {
            let m = meta.lock();
            (m.region_count(), m.leader_count(), m.leader_progress())
        };
        let leading: Vec<_> = progress
            .into_iter()
            .take(STATUS_LEADING)
            .map(|(region_id, term, commit_index)| {
                serde_json::json!({"region_id": region_id, "term": term, "commit_index": commit_index})
            })
            .collect();
        serde_json::json!({
            "store_id": store_id,
            "cluster_id": cluster_id,
            "address": address,
            "regions": regions,
            "leaders": leaders,
            "leading": leading,
            "open_connections": open_connections,
            "version": env!("CARGO_PKG_VERSION"),
        })
    });
    let (bound, _) = status::serve(
        addr,
        status,
        security.clone(),
        shutdown.clone(),
        logger.clone(),
    )
    .await
    .map_err(|e| Error::Startup(e.to_string()))?;
    Ok(bound)
}

/// A store's data directory locked, its cluster secret read and its database open: the
/// part of start-up that needs no PD.
pub struct OpenStore {
    cfg: Config,
    secret: ClusterSecret,
    security: Arc<Security>,
    engine: Engine,
    snap_mgr: SnapManager,
    dir_lock: util::dir_lock::DirLock,
}

impl Node {
    /// Starts a store of the cluster whose PD `cfg` names. Must run inside a tokio
    /// runtime.
    pub async fn start(cfg: Config, logger: Logger) -> Result<Node> {
        let endpoints = cfg.server.pd_endpoints.clone();
        Node::open(cfg, false)?.start(endpoints, logger).await
    }

    /// Creates and locks the data directory, reads the cluster secret and opens the
    /// database. With `own_cluster` (a PD in this process) a new data directory gets a
    /// new secret.
    pub fn open(cfg: Config, own_cluster: bool) -> Result<OpenStore> {
        let data_dir = cfg.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            Error::Startup(format!("create data directory {}: {e}", data_dir.display()))
        })?;
        let dir_lock = util::dir_lock::DirLock::acquire(&data_dir)
            .map_err(|e| Error::Startup(e.to_string()))?;
        // Before the database opens: a secret is created only for a new data directory.
        let secret = cluster_secret(&cfg, own_cluster)?;
        let security =
            Security::for_server(&cfg.security).map_err(|e| Error::Startup(e.to_string()))?;
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let engine = Engine::open_with(
            &data_dir.join("db"),
            &cfg.storage.engine_options(armed.clone()),
        )?;
        // Refuses a directory of the older raw layout before anything reads or compacts
        // it, then lets compactions drop expired values.
        bootstrap::store_ident(&engine)?;
        armed.store(true, std::sync::atomic::Ordering::Release);
        crate::metrics::register_all();
        let weak = engine.downgrade();
        status::register_latest(|| Box::new(crate::metrics::EngineCollector::new(weak.clone())));
        let snap_mgr =
            SnapManager::new(data_dir.join("snap"), cfg.raftstore.snap_max_size.as_u64())?;
        Ok(OpenStore {
            cfg,
            secret,
            security,
            engine,
            snap_mgr,
            dir_lock,
        })
    }
}

impl OpenStore {
    /// The file holding the cluster secret this store presents.
    pub fn secret_path(&self) -> PathBuf {
        secret_path(&self.cfg)
    }

    /// Joins the cluster whose PD is at `endpoints` and starts serving.
    pub async fn start(self, endpoints: Vec<String>, logger: Logger) -> Result<Node> {
        let OpenStore {
            cfg,
            secret,
            security,
            engine,
            snap_mgr,
            dir_lock,
        } = self;
        let data_dir = cfg.server.data_dir.clone();
        check_resolvable(&endpoints)?;
        let creds = Credentials {
            security: security.clone(),
            secret: Some(secret.clone()),
            token: None,
        };
        let pd = PdClient::connect_as_store(
            &endpoints,
            Duration::from_secs(30),
            creds.clone(),
            logger.clone(),
        )
        .await?;
        let addr = cfg.server.advertise().to_string();
        let mut store = announced_store(&cfg);
        join_cluster(
            &engine,
            &pd,
            &mut store,
            &data_dir.display().to_string(),
            &logger,
        )
        .await?;
        let store_id = store.get_id();
        let logger = logger.new(slog::o!("store_id" => store_id));

        let env = Arc::new(
            grpcio::EnvBuilder::new()
                .cq_count(cfg.server.grpc_concurrency)
                .name_prefix("grpc")
                .build(),
        );
        let rt = tokio::runtime::Handle::current();
        let resolver = Resolver::new(
            pd.clone(),
            env.clone(),
            security.clone(),
            cfg.server.max_message_size.as_u64() as i32,
            (
                cfg.server.grpc_keepalive_time,
                cfg.server.grpc_keepalive_timeout,
            ),
        );
        let transport = GrpcTransport::new(
            store_id,
            resolver.clone(),
            snap_mgr.clone(),
            TransportLimits {
                queue_capacity: cfg.server.raft_msg_queue_capacity,
                concurrent_snapshots: cfg.server.snap_max_concurrent_send,
            },
            secret.clone(),
            rt.clone(),
            logger.clone(),
        );
        let (pd_tx, pd_rx) = crossbeam_channel::unbounded();
        let cm = txn::concurrency::ConcurrencyManager::default();
        let raftstore = RaftStore::start(StoreDeps {
            store_id,
            cfg: cfg.raftstore.clone(),
            engine: engine.clone(),
            transport: Arc::new(transport.clone()),
            pd_tx,
            snap_mgr: snap_mgr.clone(),
            logger: logger.clone(),
            read_index_check: Some(crate::txn_storage::read_index_check(cm.clone())),
        })?;
        let router = raftstore.router();
        transport.set_router(router.clone());
        let retired = Shutdown::default();
        let pd_worker = pd_worker::spawn(
            pd.clone(),
            pd_rx,
            router.clone(),
            rt.clone(),
            cfg.raftstore.store_silent_after(),
            retired.clone(),
            logger.clone(),
        );

        let storage = RawStorage::new(
            router.clone(),
            engine.clone(),
            raftstore.store_meta(),
            RawLimits::of(&cfg),
        );
        let txn = crate::txn_storage::TxnStorage::new(storage.clone(), pd.clone(), &cfg.txn, cm);
        let auth = crate::authz::AuthGate::new(cfg.server.auth_max_staleness);
        auth.start(
            pd.clone(),
            cfg.server.auth_refresh_interval,
            &rt,
            logger.clone(),
        )
        .await;
        let service = TikvService {
            store_id,
            txn: txn.clone(),
            storage,
            router,
            snap_mgr,
            snap_recv: Arc::new(tokio::sync::Semaphore::new(
                cfg.server.snap_max_concurrent_recv,
            )),
            secret: secret.clone(),
            security: security.clone(),
            resolver,
            auth,
            limits: crate::service::Limits::new(&cfg.server),
            rt,
            logger: logger.clone(),
        };
        let (grpc, port) = serve_grpc(&cfg, env, &security, service)?;
        pd.put_store(store.clone()).await?;

        let shutdown = Shutdown::default();
        let status_addr = serve_status(
            &cfg,
            &store,
            pd.cluster_id(),
            (raftstore.store_meta(), port),
            &security,
            &shutdown,
            &logger,
        )
        .await?;
        tokio::spawn(crate::safe_ts::run(
            txn.clone(),
            pd.clone(),
            cfg.server.safe_ts_interval,
            shutdown.clone(),
            logger.new(slog::o!("component" => "safe-ts")),
        ));
        if cfg.gc.enable {
            tokio::spawn(
                crate::gc_worker::GcWorker {
                    cfg: cfg.gc.clone(),
                    store_id,
                    pd: pd.clone(),
                    pd_endpoints: endpoints.clone(),
                    creds,
                    txn,
                    meta: raftstore.store_meta(),
                    shutdown: shutdown.clone(),
                    logger: logger.new(slog::o!("component" => "gc")),
                }
                .run(),
            );
        }
        info!(logger, "store serving"; "addr" => &addr, "status" => %status_addr,
              "pd" => pd.leader_addr());
        Ok(Node {
            raftstore: Some(raftstore),
            grpc,
            pd_worker: Some(pd_worker),
            shutdown,
            retired,
            logger,
            engine,
            graceful_shutdown_timeout: cfg.server.graceful_shutdown_timeout,
            _dir_lock: dir_lock,
        })
    }
}

impl Node {
    /// Moves every leader that another store can take to that store, and waits (within
    /// `server.graceful-shutdown-timeout`) until none is left here, while still serving:
    /// clients are redirected to the new leaders instead of waiting out an election.
    async fn hand_off_leaders(&self) {
        let Some(rs) = &self.raftstore else { return };
        let started = std::time::Instant::now();
        let mut asked = None::<std::time::Instant>;
        loop {
            let left = rs.movable_leader_count();
            if left == 0 {
                info!(self.logger, "no leaders left to hand over";
                      "took_ms" => started.elapsed().as_millis() as u64);
                return;
            }
            if started.elapsed() >= self.graceful_shutdown_timeout {
                warn!(self.logger, "stopping with leaders still here (server.graceful-shutdown-timeout)";
                      "leaders" => left);
                return;
            }
            // Asked again now and then: a transfer can be refused or lost.
            if asked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                info!(self.logger, "handing leaders to other stores"; "leaders" => left);
                rs.evict_leaders();
                asked = Some(std::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until PD says this store was decommissioned (tombstone).
    pub async fn retired(&self) {
        self.retired.wait().await
    }

    /// Stops serving, stops the raftstore, and releases the data directory.
    pub async fn stop(mut self) {
        self.hand_off_leaders().await;
        info!(self.logger, "store stopping");
        self.shutdown.trigger();
        // Raft streams from other stores never end by themselves: cancel them.
        let done = self.grpc.shutdown();
        self.grpc.cancel_all_calls();
        let _ = done.await;
        if let Some(rs) = self.raftstore.take() {
            tokio::task::spawn_blocking(move || rs.shutdown())
                .await
                .unwrap_or_else(|e| warn!(self.logger, "raftstore shutdown panicked"; "err" => %e));
        }
        if let Some(w) = self.pd_worker.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        // Only saves the next start a log replay (the WAL has everything): bounded, so
        // that a flush stuck behind compaction cannot outlast the operator's patience.
        let engine = self.engine.clone();
        let flush = tokio::task::spawn_blocking(move || engine.flush());
        match tokio::time::timeout(Duration::from_secs(10), flush).await {
            Ok(Ok(Ok(()))) => info!(self.logger, "memtables flushed"),
            Ok(Ok(Err(e))) => warn!(self.logger, "flushing memtables failed"; "err" => %e),
            Ok(Err(e)) => warn!(self.logger, "flushing memtables panicked"; "err" => %e),
            Err(_) => warn!(
                self.logger,
                "flushing memtables took over 10s; the log replays at the next start"
            ),
        }
    }
}
