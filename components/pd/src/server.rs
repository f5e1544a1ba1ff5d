//! Running a PD member: its data directory, its Raft group, the core it serves with while
//! it leads, and gRPC.

use std::{
    sync::{Arc, OnceLock},
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::Receiver;
use engine::Engine;
use grpcio::{Environment, ServerBuilder};
use parking_lot::RwLock;
use proto::pdpb;
use slog::{info, warn, Logger};
use util::security::Security;

use crate::{
    cluster::PdCore,
    member::{self, Group, MemberService},
    service::{push_repairs, PdService, Pushers},
    storage::Storage,
    users::service::AuthService,
    Config, Error, Result,
};

/// The core of the term this member leads in, if it leads.
pub(crate) struct Serving {
    group: Arc<Group>,
    core: RwLock<Option<(u64, Arc<PdCore>)>>,
    /// `http://host:port` this member is reached at, known once its port is bound.
    client_url: OnceLock<String>,
}

impl Serving {
    /// The core to serve with; an error naming the leader on a member that does not lead.
    pub(crate) fn core(&self) -> Result<Arc<PdCore>> {
        if let Some((_, core)) = &*self.core.read() {
            return Ok(core.clone());
        }
        Err(Error::NotLeader(
            self.leader()
                .and_then(|m| m.get_client_urls().first().cloned()),
        ))
    }

    /// The member that serves, as far as this member knows: itself once its core is
    /// open, another member it follows, or none.
    fn leader(&self) -> Option<pdpb::Member> {
        let view = self.group.view();
        let me = self.group.id();
        if self.core.read().is_some() {
            return Some(self.me(&view));
        }
        // A member that has not seen the cluster created names no leader: TiKV's clients
        // take the cluster id of whoever names one.
        (view.leader_id != me && view.cluster_id != 0)
            .then(|| view.members.get(&view.leader_id).cloned())
            .flatten()
    }

    /// This member's record, with the URL it is really reached at (a member started
    /// alone with port 0 learns its port only when it binds).
    fn me(&self, view: &member::View) -> pdpb::Member {
        let mut m = view
            .members
            .get(&self.group.id())
            .cloned()
            .unwrap_or_default();
        if let Some(url) = self.client_url.get() {
            if view.members.len() <= 1 {
                m.set_client_urls(vec![url.clone()].into());
                m.set_peer_urls(vec![url.clone()].into());
            }
        }
        m.set_name(self.group.name().to_string());
        m.member_id = self.group.id();
        m
    }

    fn status(&self) -> PdStatus {
        let view = self.group.view();
        let core = self.core().ok();
        PdStatus {
            name: self.group.name().to_string(),
            is_leader: core.is_some(),
            leader: self.leader().map(|m| m.get_name().to_string()),
            cluster_id: core.as_ref().map_or(view.cluster_id, |c| c.cluster_id()),
            term: view.term,
            bootstrapped: core.as_ref().map(|c| c.is_bootstrapped()),
            stores: core.as_ref().map(|c| c.stores(true).len()),
            voters: view.voters.clone(),
        }
    }

    /// What `GetMembers` answers: every member, and the leader only while one is known
    /// to serve (TiKV's clients dial whatever leader a member names).
    pub(crate) fn members(&self) -> pdpb::GetMembersResponse {
        let view = self.group.view();
        let mut resp = pdpb::GetMembersResponse::default();
        for (id, m) in &view.members {
            resp.mut_members().push(match *id == self.group.id() {
                true => self.me(&view),
                false => m.clone(),
            });
        }
        if let Some(l) = self.leader() {
            resp.set_etcd_leader(l.clone());
            resp.set_leader(l);
        }
        resp.mut_header().cluster_id = match &*self.core.read() {
            Some((_, core)) => core.cluster_id(),
            None => view.cluster_id,
        };
        resp
    }
}

/// A running PD member.
pub struct PdServer {
    server: grpcio::Server,
    serving: Arc<Serving>,
    addr: String,
    watcher: Option<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// PD's database, to see it closed at shutdown.
    engine: engine::WeakEngine,
    logger: Logger,
    /// Held until PD's database is closed: no second PD opens this data directory.
    dir_lock: Option<util::dir_lock::DirLock>,
}

/// A PD member's state, for status pages.
#[derive(Clone, Debug)]
pub struct PdStatus {
    /// This member's name.
    pub name: String,
    /// Whether it serves (leads its group).
    pub is_leader: bool,
    /// The serving member's name, if one is known.
    pub leader: Option<String>,
    /// The cluster id (0 until the first leader created it).
    pub cluster_id: u64,
    /// Raft term of the PD group.
    pub term: u64,
    /// Whether the cluster has its first region (known to the leader only).
    pub bootstrapped: Option<bool>,
    /// Stores that are not tombstones (known to the leader only).
    pub stores: Option<usize>,
    /// The ids of the group's voting members, as this member knows them.
    pub voters: Vec<u64>,
}

impl PdServer {
    /// Opens PD's data, starts its group and serves on `cfg.addr` (port 0 picks a free
    /// port for a member alone).
    pub fn start(cfg: Config, logger: Logger) -> Result<PdServer> {
        let fresh = !cfg.data_dir.join("CURRENT").exists();
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| util::Error::DataDir(format!("create {}: {e}", cfg.data_dir.display())))?;
        let dir_lock = util::dir_lock::DirLock::acquire(&cfg.data_dir)?;
        // PD's metadata is small; in a store with an embedded PD this database sits beside
        // the store's own, outside `[storage]`'s budget.
        let engine = Engine::open_with(&cfg.data_dir, &engine::EngineOptions::small())?;
        let security = Security::for_server(&cfg.security)?;
        let prepared = member::prepare(&cfg, security.clone(), &engine, fresh, &logger)?;
        let weak_engine = engine.downgrade();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(64)
            .thread_name("pd-worker")
            .enable_all()
            .build()
            .map_err(|e| Error::Raft(format!("start pd's runtime: {e}")))?;
        let (serving_tx, serving_rx) = crossbeam_channel::unbounded();
        let group = Arc::new(Group::start(
            &cfg,
            engine.clone(),
            &prepared,
            runtime.handle().clone(),
            serving_tx,
            &logger,
        )?);
        let serving = Arc::new(Serving {
            group: group.clone(),
            core: RwLock::new(None),
            client_url: OnceLock::new(),
        });
        register_metrics(&serving);
        let watcher = spawn_watcher(
            cfg.clone(),
            engine.clone(),
            serving.clone(),
            serving_rx,
            logger.clone(),
        )?;
        let pushers = Pushers::default();
        runtime.spawn(push_repairs(Arc::downgrade(&serving), pushers.clone()));
        let service = PdService {
            pd: serving.clone(),
            pushers,
            secret: prepared.secret.clone(),
            security: security.clone(),
            pool: runtime.handle().clone(),
            logger: logger.clone(),
        };
        let auth_service = AuthService {
            pd: serving.clone(),
            secret: prepared.secret.clone(),
            security: security.clone(),
            pool: runtime.handle().clone(),
        };
        let member_service = MemberService {
            group,
            identity: prepared.identity.clone(),
            secret: prepared.secret.clone(),
            security: security.clone(),
            engine,
            pool: runtime.handle().clone(),
            secret_window: cfg.join_timeout,
            join_lock: Arc::default(),
            logger: logger.clone(),
        };
        let env = Arc::new(
            grpcio::EnvBuilder::new()
                .cq_count(1)
                .name_prefix("pd-grpc")
                .build(),
        );
        // Accepts the pings PD clients send to find a dead connection.
        let args = grpcio::ChannelBuilder::new(env.clone())
            .http2_min_recv_ping_interval_without_data(util::grpc::PD_KEEPALIVE.0 / 2)
            .max_receive_message_len(cfg.raft_max_message_bytes as i32)
            .build_args();
        let mut server = ServerBuilder::new(env as Arc<Environment>)
            .channel_args(args)
            .register_service(proto_grpc::pdpb_grpc::create_pd(service))
            .register_service(proto_grpc::authpb_grpc::create_auth(auth_service))
            .register_service(proto_grpc::pd_memberpb_grpc::create_pd_member(
                member_service,
            ))
            .add_checker(security.checker())
            .build()?;
        let port = security.listen(&mut server, &cfg.addr)?;
        let host = cfg.addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        let addr = if cfg.advertise_addr.is_empty() {
            format!("{host}:{port}")
        } else {
            cfg.advertise_addr.clone()
        };
        serving
            .client_url
            .set(member::url(&addr))
            .expect("set once, before serving");
        server.start();
        info!(logger, "pd serving"; "addr" => &addr, "member" => &prepared.identity.name,
              "member_id" => prepared.identity.member_id);
        Ok(PdServer {
            server,
            serving,
            addr,
            watcher: Some(watcher),
            runtime: Some(runtime),
            engine: weak_engine,
            logger: logger.clone(),
            dir_lock: Some(dir_lock),
        })
    }

    /// The address clients reach this PD at (host:port).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The core this member serves with, if it leads.
    pub fn core(&self) -> Option<Arc<PdCore>> {
        self.serving.core().ok()
    }

    /// This member's state.
    pub fn status(&self) -> PdStatus {
        self.serving.status()
    }

    /// Reads this member's state for as long as it runs (for a status page).
    pub fn status_source(&self) -> impl Fn() -> Option<PdStatus> + Send + Sync + 'static {
        let weak = Arc::downgrade(&self.serving);
        move || weak.upgrade().map(|s| s.status())
    }

    /// Stops serving; long-lived streams (heartbeats, TSO) are cancelled, not awaited.
    /// Returns once PD's database is closed (within a few seconds), so that another PD
    /// may open the directory at once.
    pub fn shutdown(mut self) {
        let done = self.server.shutdown();
        self.server.cancel_all_calls();
        let _ = futures::executor::block_on(done);
        self.serving.core.write().take();
        self.stop_threads();
        let engine = self.engine.clone();
        let dir_lock = self.dir_lock.take();
        let logger = self.logger.clone();
        drop(self);
        // Calls still running on the blocking pool may hold the core a moment longer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.upgrade().is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if engine.upgrade().is_some() {
            warn!(logger, "pd's database is still open 10s after shutdown");
        }
        drop(dir_lock);
    }

    fn stop_threads(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Not a blocking drop: PD may be stopped from async code.
            rt.shutdown_background();
        }
        // The watcher ends once the group's thread (which the last `Group` handle stops)
        // is gone: the service held one, and so did the server.
        if let Some(w) = self.watcher.take() {
            drop(w);
        }
    }
}

impl Drop for PdServer {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn register_metrics(serving: &Arc<Serving>) {
    crate::metrics::register_all();
    let weak = Arc::downgrade(serving);
    status::register_latest(|| {
        // Weak: the registry lives as long as the process, PD's database must not.
        let weak = weak.clone();
        Box::new(crate::metrics::ClusterCollector::new(Box::new(move || {
            weak.upgrade()
                .and_then(|s| s.core().ok())
                .map(|core| core.summary())
        })))
    });
}

/// Opens a core whenever this member starts serving a term, and drops it when it stops.
fn spawn_watcher(
    cfg: Config,
    engine: Engine,
    serving: Arc<Serving>,
    rx: Receiver<Option<u64>>,
    logger: Logger,
) -> Result<JoinHandle<()>> {
    let weak = Arc::downgrade(&serving);
    drop(serving);
    std::thread::Builder::new()
        .name("pd-leader".into())
        .spawn(move || {
            while let Ok(term) = rx.recv() {
                let Some(serving) = weak.upgrade() else {
                    return;
                };
                serving.core.write().take();
                let Some(term) = term else {
                    info!(logger, "pd stopped serving");
                    continue;
                };
                // Keeps trying while the term lasts: a failed open (a write not committed
                // in time) must not leave a leader that never serves.
                let mut pause = Duration::from_millis(100);
                while serving.group.view().serving_term == Some(term) && rx.is_empty() {
                    let storage = Storage::new(engine.clone(), serving.group.replicate(term));
                    match PdCore::open(cfg.clone(), storage, logger.clone()) {
                        Ok(core) => {
                            info!(logger, "pd serving as leader"; "term" => term, "cluster_id" => core.cluster_id());
                            *serving.core.write() = Some((term, Arc::new(core)));
                            break;
                        }
                        Err(e) => {
                            warn!(logger, "pd leader could not load its state"; "term" => term, "err" => %e);
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            // The group's thread ended: nothing is served from here any more.
            if let Some(serving) = weak.upgrade() {
                serving.core.write().take();
            }
        })
        .map_err(|e| Error::Raft(format!("start the pd leader thread: {e}")))
}
