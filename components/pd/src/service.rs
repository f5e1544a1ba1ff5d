//! `pdpb.PD` over gRPC: decodes requests, calls [`PdCore`], encodes answers. Errors go in
//! the response header (as TiKV's clients expect), never as gRPC failures.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use futures::{
    channel::mpsc::{unbounded, UnboundedSender},
    FutureExt, SinkExt, StreamExt, TryStreamExt,
};
use grpcio::{
    DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, UnarySink, WriteFlags,
};
use proto::{metapb, pdpb};
use proto_grpc::pdpb_grpc::Pd;
use slog::{warn, Logger};
use util::secret::ClusterSecret;

use crate::{cluster::PdCore, metrics, region_tree::RegionInfo, server::Serving, Error, Result};

/// The region heartbeat streams, by store: an operator for an idle region (which
/// reports once a minute) goes to its leader's store at once, not in the answer to its
/// next heartbeat.
#[derive(Clone, Default)]
pub(crate) struct Pushers(Arc<parking_lot::Mutex<HashMap<u64, (u64, PushTx)>>>);

type PushTx = UnboundedSender<pdpb::RegionHeartbeatResponse>;

impl Pushers {
    /// Makes `tx` (the stream numbered `stream`) the way to `store`.
    fn register(&self, store: u64, stream: u64, tx: PushTx) {
        self.0.lock().insert(store, (stream, tx));
    }

    /// Forgets the stream numbered `stream` (not a newer one of the same store).
    fn unregister(&self, store: u64, stream: u64) {
        let mut m = self.0.lock();
        if m.get(&store).is_some_and(|(s, _)| *s == stream) {
            m.remove(&store);
        }
    }

    /// Whether `store` has a stream to push to.
    pub(crate) fn has(&self, store: u64) -> bool {
        self.0.lock().contains_key(&store)
    }

    /// Sends `steps` to their stores' streams; a store without one gets its step at its
    /// next heartbeat.
    pub(crate) fn push(&self, steps: Vec<(u64, pdpb::RegionHeartbeatResponse)>) {
        let m = self.0.lock();
        for (store, resp) in steps {
            if let Some((_, tx)) = m.get(&store) {
                let _ = tx.unbounded_send(resp);
            }
        }
    }
}

/// The gRPC face of PD.
#[derive(Clone)]
pub struct PdService {
    pub(crate) pd: Arc<Serving>,
    /// Where operators for idle regions go at once.
    pub(crate) pushers: Pushers,
    /// What stores prove they belong to this cluster with (see `util::secret`).
    pub(crate) secret: ClusterSecret,
    /// TLS: a cluster certificate proves a store or operator too.
    pub(crate) security: Arc<util::security::Security>,
    /// Where calls run: they may wait for the PD group, which must never hold up a gRPC
    /// thread (Raft messages between members arrive on the same ones).
    pub(crate) pool: tokio::runtime::Handle,
    pub(crate) logger: Logger,
}

/// Who may make a call.
#[derive(Clone, Copy, PartialEq)]
enum Access {
    /// Anyone: reads, timestamps, TiKV's clients' calls.
    Open,
    /// Only a store or operator of this cluster (the call carries the secret): calls that
    /// change metadata.
    Store,
    /// A store or operator of this cluster, or, with auth on, a user with `admin`:
    /// placement by hand.
    Admin,
    /// Anyone while auth is off; with it on, as `Admin` (the GC safe point).
    AdminWhenAuthOn,
}

/// Responses that carry a `pdpb.ResponseHeader`.
trait WithHeader: Default {
    fn header_mut(&mut self) -> &mut pdpb::ResponseHeader;
}

macro_rules! with_header {
    ($($t:ty),*) => {$(
        impl WithHeader for $t {
            fn header_mut(&mut self) -> &mut pdpb::ResponseHeader {
                self.mut_header()
            }
        }
    )*};
}

with_header!(
    pdpb::GetMembersResponse,
    pdpb::TsoResponse,
    pdpb::BootstrapResponse,
    pdpb::IsBootstrappedResponse,
    pdpb::AllocIDResponse,
    pdpb::GetStoreResponse,
    pdpb::PutStoreResponse,
    pdpb::GetAllStoresResponse,
    pdpb::StoreHeartbeatResponse,
    pdpb::RegionHeartbeatResponse,
    pdpb::GetRegionResponse,
    pdpb::ScanRegionsResponse,
    pdpb::AskBatchSplitResponse,
    pdpb::ReportBatchSplitResponse,
    pdpb::GetOperatorsResponse,
    pdpb::GetClusterConfigResponse,
    pdpb::AddOperatorResponse,
    pdpb::DeleteStoreResponse,
    pdpb::GetGCSafePointResponse,
    pdpb::UpdateGCSafePointResponse
);

/// The region before the one holding `key`, as [`view_for`] shows it to whoever asks with
/// `key`: regions holding no transactional key are skipped for such a client.
fn prev_in_view(core: &PdCore, key: &[u8]) -> Option<RegionInfo> {
    let mut at = key.to_vec();
    loop {
        let prev = core.prev_region(&at)?;
        at = prev.region.get_start_key().to_vec();
        if let Some(view) = view_for(key, prev) {
            return Some(view);
        }
    }
}

/// Regions the replica checker visits per pass outside heartbeats.
pub(crate) const REPAIRS_PER_PASS: usize = 16;

/// Runs the replica checker every second for regions with a replica on a down or offline
/// store, while this member serves, and pushes the steps: idle regions report once a
/// minute, and a decommission or a repair must not wait for that.
pub(crate) async fn push_repairs(pd: std::sync::Weak<Serving>, pushers: Pushers) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(pd) = pd.upgrade() else {
            return;
        };
        let Ok(core) = pd.core() else {
            continue;
        };
        drop(pd);
        let to = pushers.clone();
        let steps = tokio::task::spawn_blocking(move || {
            core.repairs_to_push(REPAIRS_PER_PASS, |s| to.has(s))
        })
        .await
        .unwrap_or_default();
        pushers.push(steps);
    }
}

/// The status a follower (or a leader that just lost its term) fails a call with: TiKV's
/// clients and Flotilla's ask the members for the leader again on any failed call.
fn not_leader_status(e: &Error) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, e.to_string())
}

impl PdService {
    /// Runs `f` on the current leader's core off the gRPC threads, then answers: with
    /// the response, or its error in the header; a member that does not lead fails the
    /// call (see [`not_leader_status`]).
    fn serve<R, F>(
        &self,
        ctx: &RpcContext,
        sink: UnarySink<R>,
        access: Access,
        header: pdpb::RequestHeader,
        f: F,
    ) where
        R: WithHeader + Send + 'static,
        F: FnOnce(&PdCore) -> Result<R> + Send + 'static,
    {
        let proof = self.security.proof(ctx, &self.secret);
        let pd = self.pd.clone();
        let task = self.pool.spawn_blocking(move || {
            let core = pd.core()?;
            let allowed = match access {
                Access::Open => Ok(()),
                Access::Store if proof.cluster => Ok(()),
                Access::Store => Err(Error::Unauthenticated),
                Access::Admin => core.auth().check_admin(&proof, false),
                Access::AdminWhenAuthOn => core.auth().check_admin(&proof, true),
            };
            if let Err(e) = allowed {
                return Ok((core.cluster_id(), Err(e)));
            }
            let res = core.check_cluster(&header).and_then(|_| f(&core));
            Ok((core.cluster_id(), res))
        });
        ctx.spawn(async move {
            let _ = match task.await {
                Ok(Ok((_, Err(e @ Error::NotLeader(_))))) | Ok(Err(e)) => {
                    sink.fail(not_leader_status(&e)).await
                }
                Ok(Ok((cluster_id, res))) => sink.success(finish(cluster_id, res)).await,
                Err(e) => {
                    sink.fail(RpcStatus::with_message(
                        RpcStatusCode::INTERNAL,
                        e.to_string(),
                    ))
                    .await
                }
            };
        });
    }

    /// Runs `f` on the leader's core off the gRPC threads (for one message of a stream).
    async fn on_core<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PdCore) -> Result<T> + Send + 'static,
    ) -> std::result::Result<(u64, Result<T>), Error> {
        let pd = self.pd.clone();
        self.pool
            .spawn_blocking(move || {
                let core = pd.core()?;
                let res = f(&core);
                Ok((core.cluster_id(), res))
            })
            .await
            .map_err(|e| Error::Raft(format!("pd worker: {e}")))?
    }
}

/// Ends a stream whose handler stopped with `res`: a member that lost its leadership
/// fails it with [`not_leader_status`]; a stream gRPC already ended is left alone (grpcio
/// refuses a second ending).
async fn end_stream<R>(
    logger: &Logger,
    what: &str,
    res: std::result::Result<(), Error>,
    sink: DuplexSink<R>,
) {
    match res {
        Ok(()) => {}
        Err(Error::Grpc(e)) => slog::debug!(logger, "stream ended"; "stream" => what, "err" => %e),
        Err(e) => {
            warn!(logger, "stream ended by this member"; "stream" => what, "err" => %e);
            let _ = sink.fail(not_leader_status(&e)).await;
        }
    }
}

/// Builds the response from `res` (a filled response, or the error for its header).
fn finish<R: WithHeader>(cluster_id: u64, res: Result<R>) -> R {
    let mut resp = match res {
        Ok(r) => r,
        Err(e) => {
            let mut r = R::default();
            let err = r.header_mut().mut_error();
            err.set_field_type(e.error_type());
            err.set_message(e.to_string());
            r
        }
    };
    resp.header_mut().cluster_id = cluster_id;
    resp
}

fn region_response(info: Option<RegionInfo>, what: String) -> Result<pdpb::GetRegionResponse> {
    let info = info.ok_or(Error::RegionNotFound(what))?;
    let mut resp = pdpb::GetRegionResponse::default();
    // Until the leader reports (a new PD leader knows regions from its metadata, and
    // leaders from heartbeats only), a voter is named: TiKV's clients need a leader, and
    // a voter that does not lead answers with the one that does.
    let leader = info.leader.or_else(|| {
        info.region
            .get_peers()
            .iter()
            .find(|p| p.get_role() == metapb::PeerRole::Voter)
            .cloned()
    });
    resp.set_region(info.region);
    if let Some(l) = leader {
        resp.set_leader(l);
    }
    resp.set_down_peers(info.down_peers.into());
    resp.set_pending_peers(info.pending_peers.into());
    Ok(resp)
}

/// The region as a transactional client must see it, if `key` is how such a client
/// asks (an encoded key; see `keys::txn`): its boundaries rounded up to encodings, so
/// that they decode and cover exactly the transactional keys it holds. `None` when it
/// holds none. A raw key that happens to be an encoding gets this view too; the store
/// then refuses a raw key outside the true range and the client asks again.
fn view_for(key: &[u8], mut info: RegionInfo) -> Option<RegionInfo> {
    if !keys::txn::is_encoded(key) {
        return Some(info);
    }
    let region = &mut info.region;
    let start = keys::txn::ceil_encoded(region.get_start_key());
    let end = match region.get_end_key() {
        [] => vec![],
        end => keys::txn::ceil_encoded(end),
    };
    if !end.is_empty() && start >= end {
        return None;
    }
    region.set_start_key(start);
    region.set_end_key(end);
    Some(info)
}

impl Pd for PdService {
    fn get_members(
        &mut self,
        ctx: RpcContext,
        _req: pdpb::GetMembersRequest,
        sink: UnarySink<pdpb::GetMembersResponse>,
    ) {
        let resp = self.pd.members();
        ctx.spawn(sink.success(resp).map(|_| ()));
    }

    fn tso(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<pdpb::TsoRequest>,
        mut sink: DuplexSink<pdpb::TsoResponse>,
    ) {
        let this = self.clone();
        ctx.spawn(async move {
            let res: std::result::Result<(), Error> = async {
                let mut stream = stream;
                while let Some(req) = stream.try_next().await? {
                    metrics::TSO.with_label_values(&["requests"]).inc();
                    metrics::TSO
                        .with_label_values(&["timestamps"])
                        .inc_by(u64::from(req.count));
                    let count = req.count;
                    let header = req.get_header().clone();
                    let (cluster_id, res) = this
                        .on_core(move |core| {
                            core.check_cluster(&header)?;
                            core.tso(count)
                        })
                        .await?;
                    // A timestamp the leadership check did not confirm is never sent:
                    // the stream ends, and the client asks the members for the leader.
                    let (physical, logical) = match res {
                        Err(e @ (Error::NotLeader(_) | Error::Undetermined(_))) => return Err(e),
                        Err(e) => {
                            sink.send((finish(cluster_id, Err(e)), WriteFlags::default()))
                                .await?;
                            continue;
                        }
                        Ok(ts) => ts,
                    };
                    let mut resp = pdpb::TsoResponse::default();
                    resp.set_count(count);
                    let ts = resp.mut_timestamp();
                    ts.physical = physical;
                    ts.logical = logical;
                    sink.send((finish(cluster_id, Ok(resp)), WriteFlags::default()))
                        .await?;
                }
                sink.close().await?;
                Ok(())
            }
            .await;
            end_stream(&this.logger, "tso", res, sink).await;
        });
    }

    fn bootstrap(
        &mut self,
        ctx: RpcContext,
        req: pdpb::BootstrapRequest,
        sink: UnarySink<pdpb::BootstrapResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Store,
            req.get_header().clone(),
            move |core| {
                core.bootstrap(req.get_store().clone(), req.get_region().clone())?;
                Ok(pdpb::BootstrapResponse::default())
            },
        );
    }

    fn is_bootstrapped(
        &mut self,
        ctx: RpcContext,
        req: pdpb::IsBootstrappedRequest,
        sink: UnarySink<pdpb::IsBootstrappedResponse>,
    ) {
        self.serve(&ctx, sink, Access::Open, req.get_header().clone(), |core| {
            let mut resp = pdpb::IsBootstrappedResponse::default();
            resp.set_bootstrapped(core.is_bootstrapped());
            Ok(resp)
        });
    }

    fn alloc_id(
        &mut self,
        ctx: RpcContext,
        req: pdpb::AllocIDRequest,
        sink: UnarySink<pdpb::AllocIDResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Store,
            req.get_header().clone(),
            |core| {
                let mut resp = pdpb::AllocIDResponse::default();
                resp.set_id(core.alloc_id()?);
                Ok(resp)
            },
        );
    }

    fn get_store(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetStoreRequest,
        sink: UnarySink<pdpb::GetStoreResponse>,
    ) {
        let id = req.store_id;
        self.serve(
            &ctx,
            sink,
            Access::Open,
            req.get_header().clone(),
            move |core| {
                let info = core.get_store(id)?;
                let mut resp = pdpb::GetStoreResponse::default();
                resp.set_store(info.meta);
                resp.set_stats(info.stats);
                Ok(resp)
            },
        );
    }

    fn put_store(
        &mut self,
        ctx: RpcContext,
        req: pdpb::PutStoreRequest,
        sink: UnarySink<pdpb::PutStoreResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Store,
            req.get_header().clone(),
            move |core| {
                core.put_store(req.get_store().clone())?;
                Ok(pdpb::PutStoreResponse::default())
            },
        );
    }

    fn get_all_stores(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetAllStoresRequest,
        sink: UnarySink<pdpb::GetAllStoresResponse>,
    ) {
        let exclude = req.exclude_tombstone_stores;
        self.serve(
            &ctx,
            sink,
            Access::Open,
            req.get_header().clone(),
            move |core| {
                let mut resp = pdpb::GetAllStoresResponse::default();
                for s in core.stores(exclude) {
                    resp.mut_stores().push(s.meta);
                }
                Ok(resp)
            },
        );
    }

    fn store_heartbeat(
        &mut self,
        ctx: RpcContext,
        req: pdpb::StoreHeartbeatRequest,
        sink: UnarySink<pdpb::StoreHeartbeatResponse>,
    ) {
        metrics::STORE_HEARTBEATS.inc();
        self.serve(
            &ctx,
            sink,
            Access::Store,
            req.get_header().clone(),
            move |core| {
                let _timer = metrics::HEARTBEAT_SECONDS
                    .with_label_values(&["store"])
                    .start_timer();
                core.store_heartbeat(req.get_stats().clone())?;
                Ok(pdpb::StoreHeartbeatResponse::default())
            },
        );
    }

    fn region_heartbeat(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<pdpb::RegionHeartbeatRequest>,
        mut sink: DuplexSink<pdpb::RegionHeartbeatResponse>,
    ) {
        /// What arrives for the stream: a heartbeat, or a step PD pushes.
        enum In {
            Heartbeat(grpcio::Result<pdpb::RegionHeartbeatRequest>),
            Push(pdpb::RegionHeartbeatResponse),
            /// The store closed its side (the push channel never ends by itself).
            End,
        }
        static STREAMS: AtomicU64 = AtomicU64::new(0);
        let this = self.clone();
        let trusted = self.security.is_cluster_call(&ctx, &self.secret);
        let id = STREAMS.fetch_add(1, Ordering::Relaxed);
        let (push_tx, push_rx) = unbounded();
        ctx.spawn(async move {
            let mut store = None;
            let res: std::result::Result<(), Error> = async {
                let heartbeats = stream
                    .map(In::Heartbeat)
                    .chain(futures::stream::iter([In::End]));
                let mut incoming = futures::stream::select(heartbeats, push_rx.map(In::Push));
                while let Some(next) = incoming.next().await {
                    let req = match next {
                        In::End => break,
                        In::Push(op) => {
                            let cluster_id = this.pd.core().map_or(0, |c| c.cluster_id());
                            sink.send((finish(cluster_id, Ok(op)), WriteFlags::default()))
                                .await?;
                            continue;
                        }
                        In::Heartbeat(req) => req?,
                    };
                    metrics::REGION_HEARTBEATS.inc();
                    let region_id = req.get_region().get_id();
                    let leader_store = req.get_leader().get_store_id();
                    let (cluster_id, res) = this
                        .on_core(move |core| {
                            let _timer = metrics::HEARTBEAT_SECONDS
                                .with_label_values(&["region"])
                                .start_timer();
                            match trusted {
                                true => core
                                    .check_cluster(req.get_header())
                                    .and_then(|_| core.region_heartbeat(&req)),
                                false => Err(Error::Unauthenticated),
                            }
                        })
                        .await?;
                    // A stream is the way to the store whose leader it reports, once PD
                    // accepted a report (a known store, holding that leader).
                    if res.is_ok() && store.is_none() {
                        store = Some(leader_store);
                        this.pushers.register(leader_store, id, push_tx.clone());
                    }
                    match res {
                        Ok(Some(op)) => {
                            sink.send((finish(cluster_id, Ok(op)), WriteFlags::default()))
                                .await?
                        }
                        Ok(None) => {}
                        Err(e @ Error::NotLeader(_)) => return Err(e),
                        Err(e) => {
                            warn!(this.logger, "bad region heartbeat"; "region_id" => region_id, "err" => %e);
                            sink.send((finish(cluster_id, Err(e)), WriteFlags::default()))
                                .await?
                        }
                    }
                }
                sink.close().await?;
                Ok(())
            }
            .await;
            if let Some(store) = store {
                this.pushers.unregister(store, id);
            }
            end_stream(&this.logger, "region heartbeat", res, sink).await;
        });
    }

    fn get_region(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetRegionRequest,
        sink: UnarySink<pdpb::GetRegionResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Open,
            req.get_header().clone(),
            move |core| {
                let key = req.get_region_key();
                region_response(
                    core.region_by_key(key).and_then(|r| view_for(key, r)),
                    format!("no region holds key {key:?}"),
                )
            },
        );
    }

    fn get_prev_region(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetRegionRequest,
        sink: UnarySink<pdpb::GetRegionResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Open,
            req.get_header().clone(),
            move |core| {
                let key = req.get_region_key();
                region_response(
                    prev_in_view(core, key),
                    format!("no region before key {key:?}"),
                )
            },
        );
    }

    fn get_region_by_id(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetRegionByIDRequest,
        sink: UnarySink<pdpb::GetRegionResponse>,
    ) {
        let id = req.region_id;
        self.serve(
            &ctx,
            sink,
            Access::Open,
            req.get_header().clone(),
            move |core| region_response(core.region_by_id(id), format!("no region with id {id}")),
        );
    }

    fn scan_regions(
        &mut self,
        ctx: RpcContext,
        req: pdpb::ScanRegionsRequest,
        sink: UnarySink<pdpb::ScanRegionsResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Open,
            req.get_header().clone(),
            move |core| {
                let limit = req.limit.max(0) as usize;
                let mut resp = pdpb::ScanRegionsResponse::default();
                let start = req.get_start_key();
                let infos: Vec<_> = core
                    .scan_regions(start, req.get_end_key(), limit)
                    .into_iter()
                    .filter_map(|r| view_for(start, r))
                    .collect();
                let regions: Vec<&metapb::Region> = infos.iter().map(|i| &i.region).collect();
                let isolation = core.isolation(&regions);
                for (info, (level, fault)) in infos.into_iter().zip(isolation) {
                    let leader = info.leader.clone().unwrap_or_default();
                    resp.mut_region_metas().push(info.region.clone());
                    resp.mut_leaders().push(leader.clone());
                    let mut r = pdpb::Region::default();
                    r.set_region(info.region);
                    r.set_leader(leader);
                    r.set_down_peers(info.down_peers.into());
                    r.set_pending_peers(info.pending_peers.into());
                    r.set_isolation(level);
                    r.set_not_isolated(fault);
                    resp.mut_regions().push(r);
                }
                Ok(resp)
            },
        );
    }

    fn ask_batch_split(
        &mut self,
        ctx: RpcContext,
        req: pdpb::AskBatchSplitRequest,
        sink: UnarySink<pdpb::AskBatchSplitResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Store,
            req.get_header().clone(),
            move |core| {
                let mut resp = pdpb::AskBatchSplitResponse::default();
                resp.set_ids(
                    core.ask_batch_split(req.get_region(), req.split_count)?
                        .into(),
                );
                Ok(resp)
            },
        );
    }

    fn report_batch_split(
        &mut self,
        ctx: RpcContext,
        req: pdpb::ReportBatchSplitRequest,
        sink: UnarySink<pdpb::ReportBatchSplitResponse>,
    ) {
        self.serve(
            &ctx,
            sink,
            Access::Store,
            req.get_header().clone(),
            move |core| {
                core.report_split(req.get_regions())?;
                Ok(pdpb::ReportBatchSplitResponse::default())
            },
        );
    }

    fn add_operator(
        &mut self,
        ctx: RpcContext,
        req: pdpb::AddOperatorRequest,
        sink: UnarySink<pdpb::AddOperatorResponse>,
    ) {
        let pushers = self.pushers.clone();
        self.serve(
            &ctx,
            sink,
            Access::Admin,
            req.get_header().clone(),
            move |core| {
                match (req.has_transfer_leader(), req.has_move_peer()) {
                    (true, false) => {
                        core.add_transfer_leader(req.region_id, req.get_transfer_leader().to_store)?
                    }
                    (false, true) => {
                        let m = req.get_move_peer();
                        core.add_move_peer(req.region_id, m.from_store, m.to_store)?
                    }
                    _ => return Err(Error::InvalidValue("give exactly one operator".into())),
                }
                pushers.push(core.step_to_push(req.region_id).into_iter().collect());
                Ok(pdpb::AddOperatorResponse::default())
            },
        );
    }

    fn delete_store(
        &mut self,
        ctx: RpcContext,
        req: pdpb::DeleteStoreRequest,
        sink: UnarySink<pdpb::DeleteStoreResponse>,
    ) {
        let id = req.store_id;
        let pushers = self.pushers.clone();
        self.serve(
            &ctx,
            sink,
            Access::Admin,
            req.get_header().clone(),
            move |core| {
                core.delete_store(id)?;
                pushers.push(core.repairs_to_push(REPAIRS_PER_PASS, |s| pushers.has(s)));
                Ok(pdpb::DeleteStoreResponse::default())
            },
        );
    }

    fn get_gc_safe_point(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetGCSafePointRequest,
        sink: UnarySink<pdpb::GetGCSafePointResponse>,
    ) {
        self.serve(&ctx, sink, Access::Open, req.get_header().clone(), |core| {
            let mut resp = pdpb::GetGCSafePointResponse::default();
            resp.set_safe_point(core.gc_safe_point());
            Ok(resp)
        });
    }

    fn update_gc_safe_point(
        &mut self,
        ctx: RpcContext,
        req: pdpb::UpdateGCSafePointRequest,
        sink: UnarySink<pdpb::UpdateGCSafePointResponse>,
    ) {
        let safe_point = req.safe_point;
        self.serve(
            &ctx,
            sink,
            Access::AdminWhenAuthOn,
            req.get_header().clone(),
            move |core| {
                let mut resp = pdpb::UpdateGCSafePointResponse::default();
                resp.set_new_safe_point(core.update_gc_safe_point(safe_point)?);
                Ok(resp)
            },
        );
    }

    fn get_cluster_config(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetClusterConfigRequest,
        sink: UnarySink<pdpb::GetClusterConfigResponse>,
    ) {
        self.serve(&ctx, sink, Access::Open, req.get_header().clone(), |core| {
            let mut resp = pdpb::GetClusterConfigResponse::default();
            resp.set_cluster(core.cluster_config());
            Ok(resp)
        });
    }

    fn get_operators(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetOperatorsRequest,
        sink: UnarySink<pdpb::GetOperatorsResponse>,
    ) {
        self.serve(&ctx, sink, Access::Open, req.get_header().clone(), |core| {
            let mut resp = pdpb::GetOperatorsResponse::default();
            for (region_id, kind, step, age) in core.operators() {
                let mut o = pdpb::OperatorInfo::default();
                o.set_region_id(region_id);
                o.set_kind(kind.into());
                o.set_step(step);
                o.age_ms = age.as_millis() as u64;
                resp.mut_operators().push(o);
            }
            Ok(resp)
        });
    }
}

#[cfg(test)]
mod tests {
    use proto::metapb;

    use super::*;

    fn info(start: &[u8], end: &[u8]) -> RegionInfo {
        let mut region = metapb::Region::default();
        region.set_start_key(start.to_vec());
        region.set_end_key(end.to_vec());
        RegionInfo {
            region,
            ..Default::default()
        }
    }

    #[test]
    fn a_transactional_lookup_sees_boundaries_rounded_to_encodings() {
        let enc = keys::txn::encode_bytes;
        let raw = view_for(b"k5", info(b"k3", b"k6")).unwrap().region;
        assert_eq!(
            (raw.get_start_key(), raw.get_end_key()),
            (&b"k3"[..], &b"k6"[..])
        );
        let txn = view_for(&enc(b"k5"), info(b"k3", b"")).unwrap().region;
        assert_eq!(txn.get_start_key(), enc(b"k3").as_slice());
        assert_eq!(txn.get_end_key(), b"");
        let txn = view_for(&enc(b"k5"), info(b"", &enc(b"k6")))
            .unwrap()
            .region;
        assert_eq!(txn.get_start_key(), enc(b"").as_slice());
        assert_eq!(txn.get_end_key(), enc(b"k6").as_slice());
        assert!(
            view_for(&enc(b"a"), info(b"k3", b"k3\x00")).is_none(),
            "a region between two encodings holds no transactional key"
        );
    }
}
