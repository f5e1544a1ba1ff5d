//! The gRPC Raft transport: one long-lived `BatchRaft` stream per destination store, fed
//! by a queue, so that everything a round sends one store travels as one batch. Snapshots
//! go on their own `Snapshot` stream. Failures are reported to the sending peers.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use futures::SinkExt;
use grpcio::WriteFlags;
use parking_lot::Mutex;
use proto::raft_serverpb::{BatchRaftMessage, RaftMessage};
use raftstore::{msg::StoreMsg, snap, RaftRouter, SnapManager, Transport};
use slog::{debug, warn, Logger};
use tokio::sync::{
    mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender},
    Semaphore,
};
use util::secret::ClusterSecret;

use crate::{metrics, resolver::Resolver};

/// How much the transport lets wait.
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    /// Raft messages queued for one store (`server.raft-msg-queue-capacity`).
    pub queue_capacity: usize,
    /// Snapshots sent at once (`server.snap-max-concurrent-send`).
    pub concurrent_snapshots: usize,
}

/// The queue to one store, and how many messages wait in it.
struct Conn {
    tx: UnboundedSender<Vec<RaftMessage>>,
    queued: Arc<Depth>,
}

/// Messages waiting for one store, counted and shown in its gauge.
struct Depth {
    n: AtomicUsize,
    gauge: prometheus::IntGauge,
}

impl Depth {
    fn new(store_id: u64) -> Depth {
        Depth {
            n: AtomicUsize::new(0),
            gauge: metrics::TRANSPORT_QUEUE.with_label_values(&[&store_id.to_string()]),
        }
    }

    fn get(&self) -> usize {
        self.n.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.n.fetch_add(n, Ordering::Relaxed);
        self.gauge.add(n as i64);
    }

    fn sub(&self, n: usize) {
        self.n.fetch_sub(n, Ordering::Relaxed);
        self.gauge.sub(n as i64);
    }
}

struct Inner {
    store_id: u64,
    resolver: Resolver,
    router: OnceLock<RaftRouter>,
    snap_mgr: SnapManager,
    limits: TransportLimits,
    snap_permits: Arc<Semaphore>,
    /// Sent with every stream: other stores accept Raft traffic only with it.
    secret: ClusterSecret,
    rt: tokio::runtime::Handle,
    conns: Mutex<HashMap<u64, Conn>>,
    /// When each store was last reported unreachable to the raftstore.
    reported_down: Mutex<HashMap<u64, std::time::Instant>>,
    logger: Logger,
}

/// Sends Raft messages to other stores over gRPC.
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

impl GrpcTransport {
    /// A transport for store `store_id`; call [`GrpcTransport::set_router`] before use.
    pub fn new(
        store_id: u64,
        resolver: Resolver,
        snap_mgr: SnapManager,
        limits: TransportLimits,
        secret: ClusterSecret,
        rt: tokio::runtime::Handle,
        logger: Logger,
    ) -> Self {
        GrpcTransport {
            inner: Arc::new(Inner {
                store_id,
                resolver,
                router: OnceLock::new(),
                snap_mgr,
                limits,
                snap_permits: Arc::new(Semaphore::new(limits.concurrent_snapshots)),
                secret,
                rt,
                conns: Mutex::default(),
                reported_down: Mutex::default(),
                logger,
            }),
        }
    }

    /// Where delivery failures are reported.
    pub fn set_router(&self, router: RaftRouter) {
        let _ = self.inner.router.set(router);
    }
}

impl Inner {
    fn call_option(&self) -> grpcio::CallOption {
        grpcio::CallOption::default().headers(self.secret.headers())
    }

    /// Tells the raftstore that `store_id` cannot be reached (a dial failed, or a stream
    /// to it broke), at most once a second per store: hibernating regions with a peer
    /// there wake, and followers of a leader there campaign at once (see
    /// `raftstore::operation::hibernate`).
    fn report_store_down(&self, store_id: u64) {
        let now = std::time::Instant::now();
        {
            let mut last = self.reported_down.lock();
            if last
                .get(&store_id)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
            {
                return;
            }
            last.insert(store_id, now);
        }
        if let Some(router) = self.router.get() {
            router.send_store(StoreMsg::StoresDown(vec![store_id]));
        }
    }

    fn report_unreachable(&self, msgs: &[RaftMessage]) {
        if let Some(router) = self.router.get() {
            for m in msgs {
                router.report_unreachable(m.get_region_id(), m.get_to_peer().get_id());
            }
        }
    }

    async fn run_connection(
        self: Arc<Self>,
        store_id: u64,
        mut rx: UnboundedReceiver<Vec<RaftMessage>>,
        queued: Arc<Depth>,
    ) {
        let take = |b: Vec<RaftMessage>| {
            queued.sub(b.len());
            b
        };
        loop {
            let first = match rx.recv().await {
                Some(b) => take(b),
                None => return,
            };
            let stream = match self.resolver.client(store_id).await {
                Ok(client) => client
                    .batch_raft_opt(self.call_option())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let (mut sink, mut done) = match stream {
                Ok(s) => s,
                Err(e) => {
                    debug!(self.logger, "cannot reach store"; "to_store" => store_id, "err" => e);
                    self.report_store_down(store_id);
                    self.report_unreachable(&first);
                    self.resolver.forget(store_id);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut batch = first;
            loop {
                while let Ok(more) = rx.try_recv() {
                    batch.extend(take(more));
                }
                let ids: Vec<(u64, u64)> = batch
                    .iter()
                    .map(|m| (m.get_region_id(), m.get_to_peer().get_id()))
                    .collect();
                let mut b = BatchRaftMessage::default();
                b.set_msgs(std::mem::take(&mut batch).into());
                if let Err(e) = sink
                    .send((b, WriteFlags::default().buffer_hint(false)))
                    .await
                {
                    debug!(self.logger, "raft stream broke"; "to_store" => store_id, "err" => %e);
                    self.report_store_down(store_id);
                    if let Some(router) = self.router.get() {
                        for (region, peer) in ids {
                            router.report_unreachable(region, peer);
                        }
                    }
                    self.resolver.forget(store_id);
                    break;
                }
                metrics::RAFT_BATCHES_SENT.inc();
                // While idle (its regions may all be hibernating) the stream is watched:
                // the other store dying (a reset) or going silent (keepalive) ends it.
                let next = tokio::select! {
                    next = rx.recv() => next,
                    ended = &mut done => {
                        debug!(self.logger, "raft stream ended"; "to_store" => store_id,
                               "err" => ?ended.err());
                        self.report_store_down(store_id);
                        self.resolver.forget(store_id);
                        break;
                    }
                };
                match next {
                    Some(b) => batch = take(b),
                    None => {
                        let _ = sink.close().await;
                        return;
                    }
                }
            }
        }
    }

    async fn send_snapshot(self: Arc<Self>, store_id: u64, msg: RaftMessage) {
        let region_id = msg.get_region_id();
        let to_peer = msg.get_to_peer().get_id();
        let res: Result<(), String> = async {
            let _permit = self
                .snap_permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let client = self
                .resolver
                .client(store_id)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sink, done) = client
                .snapshot_opt(self.call_option())
                .map_err(|e| e.to_string())?;
            let (tx, mut chunks) = tokio::sync::mpsc::channel(4);
            let mgr = self.snap_mgr.clone();
            // File reads block: produce chunks on a blocking thread.
            let producer = tokio::task::spawn_blocking(move || {
                snap::send_snapshot(&mgr, msg, |chunk| {
                    tx.blocking_send(chunk)
                        .map_err(|_| raftstore::Error::Snapshot("stream closed".into()))
                })
            });
            while let Some(chunk) = chunks.recv().await {
                sink.send((chunk, WriteFlags::default()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            producer
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            sink.close().await.map_err(|e| e.to_string())?;
            done.await.map_err(|e| e.to_string())?;
            Ok(())
        }
        .await;
        if let Err(e) = &res {
            warn!(self.logger, "sending snapshot failed"; "region_id" => region_id, "to_store" => store_id, "err" => e);
        }
        if let Some(router) = self.router.get() {
            router.report_snapshot_status(region_id, to_peer, res.is_ok());
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, store_id: u64, msgs: Vec<RaftMessage>) {
        if store_id == self.inner.store_id {
            warn!(
                self.inner.logger,
                "dropping raft messages addressed to this store"
            );
            return;
        }
        let (snaps, msgs): (Vec<_>, Vec<_>) = msgs.into_iter().partition(snap::is_snapshot);
        for s in snaps {
            self.inner
                .rt
                .spawn(self.inner.clone().send_snapshot(store_id, s));
        }
        if msgs.is_empty() {
            return;
        }
        let mut conns = self.inner.conns.lock();
        let conn = conns.entry(store_id).or_insert_with(|| {
            let (tx, rx) = unbounded_channel();
            let queued = Arc::new(Depth::new(store_id));
            self.inner.rt.spawn(
                self.inner
                    .clone()
                    .run_connection(store_id, rx, queued.clone()),
            );
            Conn { tx, queued }
        });
        let n = msgs.len();
        if conn.queued.get() + n > self.inner.limits.queue_capacity {
            // The store is slow or gone: drop rather than queue without bound; Raft
            // sends again once the peers hear it did not arrive.
            metrics::RAFT_MESSAGES_DROPPED.inc_by(n as u64);
            self.inner.report_unreachable(&msgs);
            return;
        }
        conn.queued.add(n);
        if let Err(e) = conn.tx.send(msgs) {
            // The connection task is gone (runtime shutting down).
            conns.remove(&store_id);
            self.inner.report_unreachable(&e.0);
        }
    }
}
