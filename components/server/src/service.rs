//! `tikvpb.Tikv` over gRPC: TiKV's raw key-value calls, and the store-to-store Raft
//! transport (BatchRaft, Snapshot).
//!
//! A request with a region in its context comes from a smart client and is answered here,
//! with a region error if this store cannot serve it. A request without one (a dumb
//! client) is routed by key: served here if this store leads the key's region, otherwise
//! forwarded to the leader's store; a routing error from either is retried a few times
//! (leadership may have moved meanwhile) before it reaches the client. Such a request
//! that spans regions is served region by region (`span.rs`).

use std::future::Future;

use futures::TryStreamExt;
use grpcio::{
    ClientStreamingSink, ClientUnaryReceiver, DuplexSink, RequestStream, RpcContext, RpcStatus,
    RpcStatusCode, UnarySink,
};
use proto::{
    errorpb,
    kvrpcpb::{self, Context},
    metapb,
    raft_serverpb::{
        BatchRaftMessage, ComputeHashRequest, ComputeHashResponse, Done, RegionHashRequest,
        RegionHashResponse, SnapshotChunk,
    },
    tikvpb::{BatchCommandsRequest, BatchCommandsResponse},
};
use proto_grpc::tikvpb_grpc::{Tikv, TikvClient};
use raftstore::{snap::SnapReceiver, RaftRouter, SnapManager};
use slog::{warn, Logger};
use util::{secret::ClusterSecret, security::Proof};

use crate::{
    authz::Guarded, metrics, resolver::Resolver, span::Span, storage::RawStorage, Error, Result,
};

/// The store's gRPC service.
#[derive(Clone)]
pub struct TikvService {
    pub(crate) store_id: u64,
    pub(crate) storage: RawStorage,
    /// The transactional API (the Kv* calls, in `txn_service`).
    pub(crate) txn: crate::txn_storage::TxnStorage,
    pub(crate) router: RaftRouter,
    pub(crate) snap_mgr: SnapManager,
    /// Snapshots this store may receive at once (`server.snap-max-concurrent-recv`).
    pub(crate) snap_recv: std::sync::Arc<tokio::sync::Semaphore>,
    /// Peer streams must carry it (see `util::secret`).
    pub(crate) secret: ClusterSecret,
    /// TLS: a cluster certificate proves a peer too.
    pub(crate) security: std::sync::Arc<util::security::Security>,
    pub(crate) resolver: Resolver,
    /// Users and roles: every request is checked against them first.
    pub(crate) auth: std::sync::Arc<crate::authz::AuthGate>,
    /// How many client requests it serves at once.
    pub(crate) limits: Limits,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) logger: Logger,
}

/// The bounds on client requests in flight (see `server.max-inflight-requests`).
#[derive(Clone)]
pub(crate) struct Limits {
    /// Places for requests being served, store-wide: with none free a request is
    /// answered server_is_busy at once.
    pub(crate) inflight: std::sync::Arc<tokio::sync::Semaphore>,
    pub(crate) max_inflight: usize,
    /// Requests one BatchCommands stream may hold (`server.stream-max-inflight`).
    pub(crate) stream_max_inflight: usize,
    /// How long an answer may wait to be written (`server.request-timeout`): past it
    /// the call ends, and its places are freed.
    pub(crate) write_timeout: std::time::Duration,
}

impl Limits {
    /// The limits `cfg` sets.
    pub(crate) fn new(cfg: &crate::config::ServerConfig) -> Limits {
        Limits {
            inflight: std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.max_inflight_requests)),
            max_inflight: cfg.max_inflight_requests,
            stream_max_inflight: cfg.stream_max_inflight,
            write_timeout: cfg.request_timeout,
        }
    }

    /// A place among the requests served at once; or server_is_busy.
    fn place(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.inflight.clone().try_acquire_owned().map_err(|_| {
            Error::Busy(format!(
                "{} requests in flight (server.max-inflight-requests)",
                self.max_inflight
            ))
        })
    }
}

/// Why a request is answered without being served.
pub(crate) enum Refusal {
    /// Its caller may not make it.
    Denied(Error),
    /// The store (or its stream) has no room for it now.
    Busy(Error),
}

impl Refusal {
    /// The outcome label of `flotilla_server_requests_total`, and the error to answer.
    pub(crate) fn into_parts(self) -> (&'static str, Error) {
        match self {
            Refusal::Denied(e) => ("denied", e),
            Refusal::Busy(e) => ("busy", e),
        }
    }
}

/// A request let in: its place among those served at once, held until its answer is
/// written (so that answers waiting for a slow reader count too); or why it was not.
pub(crate) struct Admission {
    pub(crate) place: Option<tokio::sync::OwnedSemaphorePermit>,
    pub(crate) refusal: Option<Refusal>,
}

/// Hops a request without routing may take before its region error goes to the client.
const FORWARD_ATTEMPTS: u32 = 3;
/// Wait before asking PD again, times the attempt.
const FORWARD_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// A raw request: where it goes, and how to forward it.
pub trait RawRequest: Span<Resp: RawResponse> + Guarded + Send + Sync + 'static {
    /// The routing context.
    fn context(&self) -> &Context;
    /// Replaces the routing context.
    fn set_routing(&mut self, ctx: Context);
    /// The key that decides the region for a request without one.
    fn route_key(&self) -> &[u8];
    /// Sends the request to another store, with `opt`'s headers (this store's proof that
    /// it belongs to the cluster: it checked the caller itself).
    fn forward(
        &self,
        client: &TikvClient,
        opt: grpcio::CallOption,
    ) -> grpcio::Result<ClientUnaryReceiver<Self::Resp>>;
    /// The metric label.
    const NAME: &'static str;
    /// Whether it changes state: if it may have been applied, it is never retried.
    const WRITES: bool;
}

/// A raw response: where errors go.
pub trait RawResponse: Default + Send + Unpin + 'static {
    /// Sets the region error.
    fn set_region_err(&mut self, e: errorpb::Error);
    /// The region error, if any.
    fn region_err(&self) -> Option<&errorpb::Error>;
    /// Whether it carries an error of any kind.
    fn failed(&self) -> bool;
    /// The text of its error (empty if none).
    fn error_text(&self) -> String;
    /// Sets the key-level error string (responses without one fold it into a region
    /// error's message).
    fn set_error_str(&mut self, e: String);
}

macro_rules! raw_pair {
    (@req $req:ty, $resp:ty, $name:literal, $writes:literal, $fwd:ident, |$r:ident| $key:expr) => {
        impl RawRequest for $req {
            const NAME: &'static str = $name;
            const WRITES: bool = $writes;
            fn context(&self) -> &Context {
                self.get_context()
            }
            fn set_routing(&mut self, ctx: Context) {
                self.set_context(ctx);
            }
            fn route_key(&self) -> &[u8] {
                let $r = self;
                $key
            }
            fn forward(
                &self,
                client: &TikvClient,
                opt: grpcio::CallOption,
            ) -> grpcio::Result<ClientUnaryReceiver<$resp>> {
                client.$fwd(self, opt)
            }
        }
    };
    ($req:ty, $resp:ty, $name:literal, writes: $writes:literal, $fwd:ident, |$r:ident| $key:expr, has_error: true) => {
        raw_pair!(@req $req, $resp, $name, $writes, $fwd, |$r| $key);
        impl RawResponse for $resp {
            fn set_region_err(&mut self, e: errorpb::Error) {
                self.set_region_error(e);
            }
            fn region_err(&self) -> Option<&errorpb::Error> {
                self.region_error.as_ref()
            }
            fn set_error_str(&mut self, e: String) {
                self.set_error(e);
            }
            fn failed(&self) -> bool {
                self.region_error.is_some() || !self.get_error().is_empty()
            }
            fn error_text(&self) -> String {
                match self.region_err() {
                    Some(e) => e.get_message().to_string(),
                    None => self.get_error().to_string(),
                }
            }
        }
    };
    ($req:ty, $resp:ty, $name:literal, writes: $writes:literal, $fwd:ident, |$r:ident| $key:expr, has_error: false) => {
        raw_pair!(@req $req, $resp, $name, $writes, $fwd, |$r| $key);
        impl RawResponse for $resp {
            fn set_region_err(&mut self, e: errorpb::Error) {
                self.set_region_error(e);
            }
            fn region_err(&self) -> Option<&errorpb::Error> {
                self.region_error.as_ref()
            }
            fn set_error_str(&mut self, e: String) {
                let mut err = errorpb::Error::default();
                err.set_message(e);
                self.set_region_error(err);
            }
            fn failed(&self) -> bool {
                self.region_error.is_some()
            }
            fn error_text(&self) -> String {
                self.region_err().map(|e| e.get_message().to_string()).unwrap_or_default()
            }
        }
    };
}

raw_pair!(kvrpcpb::RawGetRequest, kvrpcpb::RawGetResponse, "raw_get", writes: false, raw_get_async_opt, |r| r.get_key(), has_error: true);
raw_pair!(kvrpcpb::RawBatchGetRequest, kvrpcpb::RawBatchGetResponse, "raw_batch_get", writes: false, raw_batch_get_async_opt,
          |r| r.get_keys().first().map_or(&[][..], |k| k.as_slice()), has_error: false);
raw_pair!(kvrpcpb::RawPutRequest, kvrpcpb::RawPutResponse, "raw_put", writes: true, raw_put_async_opt, |r| r.get_key(), has_error: true);
raw_pair!(kvrpcpb::RawBatchPutRequest, kvrpcpb::RawBatchPutResponse, "raw_batch_put", writes: true, raw_batch_put_async_opt,
          |r| r.get_pairs().first().map_or(&[][..], |p| p.get_key()), has_error: true);
raw_pair!(kvrpcpb::RawDeleteRequest, kvrpcpb::RawDeleteResponse, "raw_delete", writes: true, raw_delete_async_opt, |r| r.get_key(), has_error: true);
raw_pair!(kvrpcpb::RawBatchDeleteRequest, kvrpcpb::RawBatchDeleteResponse, "raw_batch_delete", writes: true, raw_batch_delete_async_opt,
          |r| r.get_keys().first().map_or(&[][..], |k| k.as_slice()), has_error: true);
raw_pair!(kvrpcpb::RawScanRequest, kvrpcpb::RawScanResponse, "raw_scan", writes: false, raw_scan_async_opt,
          |r| if r.get_reverse() { r.get_end_key() } else { r.get_start_key() }, has_error: false);
raw_pair!(kvrpcpb::RawDeleteRangeRequest, kvrpcpb::RawDeleteRangeResponse, "raw_delete_range", writes: true, raw_delete_range_async_opt,
          |r| r.get_start_key(), has_error: true);
raw_pair!(kvrpcpb::RawCASRequest, kvrpcpb::RawCASResponse, "raw_compare_and_swap", writes: true, raw_compare_and_swap_async_opt,
          |r| r.get_key(), has_error: true);
raw_pair!(kvrpcpb::RawGetKeyTTLRequest, kvrpcpb::RawGetKeyTTLResponse, "raw_get_key_ttl", writes: false, raw_get_key_ttl_async_opt,
          |r| r.get_key(), has_error: true);
raw_pair!(kvrpcpb::SplitRegionRequest, kvrpcpb::SplitRegionResponse, "split_region", writes: true, split_region_async_opt,
          |r| r.get_split_keys().first().map_or(r.get_split_key(), |k| k.as_slice()), has_error: false);

/// A dumb client's write whose part in the region of `key` failed (`why`) after the
/// parts in earlier regions were applied.
fn partly_applied(key: &[u8], why: &str) -> Error {
    let why = why.strip_prefix(util::wire::UNDETERMINED).unwrap_or(why);
    // The key is the client's and unbounded: its head names it well enough.
    let head = String::from_utf8_lossy(&key[..key.len().min(32)]);
    let more = if key.len() > 32 { "..." } else { "" };
    Error::Undetermined(format!(
        "the write's parts in earlier regions were applied; the part in the region of \
         key {head:?}{more} failed: {why}"
    ))
}

fn error_response<R: RawResponse>(e: Error) -> R {
    let mut resp = R::default();
    let (region_err, msg) = e.into_wire();
    if let Some(re) = region_err {
        resp.set_region_err(re);
    } else {
        resp.set_error_str(msg);
    }
    resp
}

fn routing(region: &metapb::Region, leader: &metapb::Peer) -> Context {
    let mut c = Context::default();
    c.set_region_id(region.get_id());
    c.set_region_epoch(region.get_region_epoch().clone());
    c.set_peer(leader.clone());
    c
}

enum Routed<Req: RawRequest> {
    Local(Req),
    Forwarded(Req::Resp),
}

impl TikvService {
    /// Answers a unary raw call (see [`TikvService::answer`]).
    fn serve<Req, F, Fut>(&self, ctx: &RpcContext, sink: UnarySink<Req::Resp>, req: Req, handle: F)
    where
        Req: RawRequest,
        F: Fn(RawStorage, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::Resp>> + Send + 'static,
    {
        let Admission { place, refusal } = self.admit(&self.proof(ctx), &req, false);
        reply(
            &self.rt,
            &self.limits,
            sink,
            place,
            self.answer(refusal, req, handle),
        );
    }

    /// Lets a request in: its caller (with `proof`) must be allowed to make it, and it
    /// takes a place among those served at once. `stream_full`: its BatchCommands stream
    /// has no room, so it is busy whatever the store has.
    pub(crate) fn admit<R: Guarded + ?Sized>(
        &self,
        proof: &Proof,
        req: &R,
        stream_full: bool,
    ) -> Admission {
        let refused = |refusal| Admission {
            place: None,
            refusal: Some(refusal),
        };
        if let Err(e) = self.auth.check(proof, req) {
            return refused(Refusal::Denied(e));
        }
        let place = match stream_full {
            true => Err(Error::Busy(format!(
                "its BatchCommands stream has {} requests unanswered (server.stream-max-inflight)",
                self.limits.stream_max_inflight
            ))),
            false => self.limits.place(),
        };
        match place {
            Ok(place) => Admission {
                place: Some(place),
                refusal: None,
            },
            Err(e) => {
                metrics::BUSY.inc();
                refused(Refusal::Busy(e))
            }
        }
    }

    /// The answer to a raw request: its `refusal`, or the request `handle`d here or
    /// forwarded (see the module doc).
    pub(crate) fn answer<Req, F, Fut>(
        &self,
        refusal: Option<Refusal>,
        req: Req,
        handle: F,
    ) -> impl Future<Output = Req::Resp> + Send + 'static
    where
        Req: RawRequest,
        F: Fn(RawStorage, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::Resp>> + Send + 'static,
    {
        let this = self.clone();
        async move {
            if let Some(refusal) = refusal {
                let (outcome, e) = refusal.into_parts();
                metrics::REQUESTS
                    .with_label_values(&[Req::NAME, outcome])
                    .inc();
                return error_response(e);
            }
            let timer = metrics::REQUEST_SECONDS
                .with_label_values(&[Req::NAME])
                .start_timer();
            let resp = if let Err(e) = crate::context::check(req.context()) {
                error_response(e)
            } else if req.context().get_region_id() != 0 {
                handle(this.storage.clone(), req)
                    .await
                    .unwrap_or_else(error_response)
            } else {
                this.serve_unrouted(req, handle).await
            };
            timer.observe_duration();
            let outcome = match (resp.region_err(), resp.failed()) {
                (Some(_), _) => "region_error",
                (None, true) => "error",
                (None, false) => "ok",
            };
            metrics::REQUESTS
                .with_label_values(&[Req::NAME, outcome])
                .inc();
            resp
        }
    }

    /// The answer to a transactional request (see `txn_service`): its `refusal`, or
    /// the request `handle`d.
    pub(crate) fn answer_txn<Req, Resp, F, Fut>(
        &self,
        refusal: Option<Refusal>,
        name: &'static str,
        req: Req,
        handle: F,
    ) -> impl Future<Output = Resp> + Send + 'static
    where
        Req: crate::context::HasContext + Send + 'static,
        Resp: crate::txn_service::TxnResponse,
        F: FnOnce(crate::txn_storage::TxnStorage, Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp>> + Send,
    {
        let storage = self.txn.clone();
        async move {
            match refusal {
                Some(refusal) => crate::txn_service::refused(name, refusal),
                None => crate::txn_service::answer(storage, name, req, handle).await,
            }
        }
    }

    /// Serves a request without routing (a dumb client's) one region at a time: the
    /// part in its route key's region, then what is left, merging the answers. The first
    /// error ends it; a write that fails after a part of it applied is undetermined.
    async fn serve_unrouted<Req, F, Fut>(&self, req: Req, handle: F) -> Req::Resp
    where
        Req: RawRequest,
        F: Fn(RawStorage, Req) -> Fut + Sync,
        Fut: Future<Output = Result<Req::Resp>>,
    {
        let (first, region) = self.serve_in_region(&req, &handle).await;
        let mut next = region.and_then(|r| req.after(&r, &first));
        // Each region's part is bounded on its own; so is their sum.
        let budget = self.storage.max_response_size();
        let mut bytes = Req::answer_bytes(&first);
        let mut so_far = first;
        while let Some(part) = next.take() {
            let (resp, region) = self.serve_in_region(&part, &handle).await;
            if Req::WRITES && resp.failed() {
                // The earlier regions' parts are applied: a region error would have the
                // client send the whole write again, landing them after writes since,
                // and any other error would say that nothing was written.
                return error_response(partly_applied(part.route_key(), &resp.error_text()));
            }
            if resp.failed() {
                return resp;
            }
            bytes += Req::answer_bytes(&resp);
            if bytes > budget {
                return error_response(Error::InvalidRequest(format!(
                    "the answer would be larger than server.max-response-size ({budget} bytes); ask for fewer keys"
                )));
            }
            next = region.and_then(|r| part.after(&r, &resp));
            part.merge(&mut so_far, resp);
        }
        so_far
    }

    /// Serves the part of `req` in its route key's region, here or at the leader's store;
    /// returns the answer and, if it succeeded, the region that gave it. Leadership may
    /// move between looking it up and serving (PD learns of a new leader a heartbeat
    /// late), so a routing error is retried a few times, following the leader hint it
    /// carries, before it goes back to the client. So is stale_command: every use of it
    /// means the command was never applied (raft-rs dropped the proposal during a leader
    /// transfer, a new leader overwrote its entry), so even a write is safe to resend.
    async fn serve_in_region<Req, F, Fut>(
        &self,
        req: &Req,
        handle: &F,
    ) -> (Req::Resp, Option<metapb::Region>)
    where
        Req: RawRequest,
        F: Fn(RawStorage, Req) -> Fut + Sync,
        Fut: Future<Output = Result<Req::Resp>>,
    {
        let mut hint = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (resp, region) = match self.route(req, hint.take()).await {
                Ok((Routed::Local(req), region)) => (
                    handle(self.storage.clone(), req)
                        .await
                        .unwrap_or_else(error_response),
                    Some(region),
                ),
                Ok((Routed::Forwarded(resp), region)) => (resp, Some(region)),
                Err(e) => (error_response(e), None),
            };
            if !resp.failed() {
                return (resp, region);
            }
            let Some(e) = resp.region_err() else {
                return (resp, None);
            };
            let routing = e.has_not_leader()
                || e.has_epoch_not_match()
                || e.has_region_not_found()
                || e.has_stale_command();
            if attempt >= FORWARD_ATTEMPTS || !routing {
                return (resp, None);
            }
            if e.get_not_leader().has_leader() {
                hint = Some(e.get_not_leader().get_leader().clone());
            } else {
                tokio::time::sleep(FORWARD_BACKOFF * attempt).await;
            }
        }
    }

    /// Where the part of a request without routing in its route key's region goes: this
    /// store if it leads that region, else `leader` (a hint from a previous attempt) or
    /// the leader PD knows. The region goes with it, so a stale one gets epoch_not_match.
    async fn route<Req: RawRequest>(
        &self,
        req: &Req,
        leader: Option<metapb::Peer>,
    ) -> Result<(Routed<Req>, metapb::Region)> {
        let key = req.route_key();
        let (region, leader) = match self.storage.local_leader_region(key) {
            Some(region) => {
                let me = region
                    .get_peers()
                    .iter()
                    .find(|p| p.get_store_id() == self.store_id)
                    .cloned()
                    .unwrap_or_default();
                (region, me)
            }
            None => {
                let (region, pd_leader) = self.pd_route(key).await?;
                (region, leader.unwrap_or(pd_leader))
            }
        };
        let mut part = req.within(&region);
        part.set_routing(routing(&region, &leader));
        if leader.get_store_id() == self.store_id {
            return Ok((Routed::Local(part), region));
        }
        metrics::FORWARDED.with_label_values(&[Req::NAME]).inc();
        let resp = self.forward(&part, leader.get_store_id()).await?;
        Ok((Routed::Forwarded(resp), region))
    }

    /// The region holding `key` and its leader, as PD knows them.
    async fn pd_route(&self, key: &[u8]) -> Result<(metapb::Region, metapb::Peer)> {
        let route = self.resolver.pd().get_region(key).await?;
        let leader = route.leader.ok_or_else(|| {
            Error::Raft(raftstore::Error::NotLeader {
                region_id: route.region.get_id(),
                leader: None,
            })
        })?;
        Ok((route.region, leader))
    }

    async fn forward<Req: RawRequest>(&self, req: &Req, store_id: u64) -> Result<Req::Resp> {
        let client = self.resolver.client(store_id).await?;
        // Bounded like the store's own wait: a peer that went silent must not hold the
        // request (and its place) until TCP gives up.
        let opt = grpcio::CallOption::default()
            .headers(self.secret.headers())
            .timeout(self.limits.write_timeout);
        let sent = req.forward(&client, opt);
        let res = match sent {
            Ok(rx) => rx.await.map_err(|e| match Req::WRITES {
                // The other store may have applied it before the answer was lost.
                true => Error::Undetermined(format!("forwarded to store {store_id}: {e}")),
                false => e.into(),
            }),
            Err(e) => Err(e.into()),
        };
        if res.is_err() {
            self.resolver.forget(store_id);
        }
        res
    }
}

/// The raw calls: each handed to its function in `raw_service`.
macro_rules! raw_calls {
    ($($method:ident: $req:ident => $resp:ident, $handler:ident;)*) => {
        $(
            fn $method(&mut self, ctx: RpcContext, req: kvrpcpb::$req, sink: UnarySink<kvrpcpb::$resp>) {
                self.serve(&ctx, sink, req, crate::raw_service::$handler)
            }
        )*
    };
}

/// The transactional calls: each handed to its function in `txn_service`.
macro_rules! txn_calls {
    ($($method:ident: $req:ident => $resp:ident, $handler:ident;)*) => {
        $(
            fn $method(&mut self, ctx: RpcContext, req: kvrpcpb::$req, sink: UnarySink<kvrpcpb::$resp>) {
                let Admission { place, refusal } = self.admit(&self.proof(&ctx), &req, false);
                let answer = self.answer_txn(refusal, stringify!($method), req, crate::txn_service::$handler);
                reply(&self.rt, &self.limits, sink, place, answer);
            }
        )*
    };
}

/// Sends the answer of a unary call once it is ready, holding the request's `place`
/// until it is written (or `limits.write_timeout` passed).
fn reply<R: Send + 'static>(
    rt: &tokio::runtime::Handle,
    limits: &Limits,
    sink: UnarySink<R>,
    place: Option<tokio::sync::OwnedSemaphorePermit>,
    answer: impl Future<Output = R> + Send + 'static,
) {
    let timeout = limits.write_timeout;
    rt.spawn(async move {
        let _ = tokio::time::timeout(timeout, sink.success(answer.await)).await;
        drop(place);
    });
}

impl Tikv for TikvService {
    txn_calls! {
        kv_get: GetRequest => GetResponse, get;
        kv_batch_get: BatchGetRequest => BatchGetResponse, batch_get;
        kv_scan: ScanRequest => ScanResponse, scan;
        kv_prewrite: PrewriteRequest => PrewriteResponse, prewrite;
        kv_commit: CommitRequest => CommitResponse, commit;
        kv_batch_rollback: BatchRollbackRequest => BatchRollbackResponse, batch_rollback;
        kv_cleanup: CleanupRequest => CleanupResponse, cleanup;
        kv_check_txn_status: CheckTxnStatusRequest => CheckTxnStatusResponse, check_txn_status;
        kv_check_secondary_locks: CheckSecondaryLocksRequest => CheckSecondaryLocksResponse, check_secondary_locks;
        kv_resolve_lock: ResolveLockRequest => ResolveLockResponse, resolve_lock;
        kv_txn_heart_beat: TxnHeartBeatRequest => TxnHeartBeatResponse, txn_heart_beat;
        kv_pessimistic_lock: PessimisticLockRequest => PessimisticLockResponse, pessimistic_lock;
        kv_pessimistic_rollback: PessimisticRollbackRequest => PessimisticRollbackResponse, pessimistic_rollback;
        kv_scan_lock: ScanLockRequest => ScanLockResponse, scan_lock;
    }

    raw_calls! {
        raw_get: RawGetRequest => RawGetResponse, get;
        raw_batch_get: RawBatchGetRequest => RawBatchGetResponse, batch_get;
        raw_put: RawPutRequest => RawPutResponse, put;
        raw_batch_put: RawBatchPutRequest => RawBatchPutResponse, batch_put;
        raw_delete: RawDeleteRequest => RawDeleteResponse, delete;
        raw_batch_delete: RawBatchDeleteRequest => RawBatchDeleteResponse, batch_delete;
        raw_scan: RawScanRequest => RawScanResponse, scan;
        raw_delete_range: RawDeleteRangeRequest => RawDeleteRangeResponse, delete_range;
        raw_compare_and_swap: RawCASRequest => RawCASResponse, compare_and_swap;
        raw_get_key_ttl: RawGetKeyTTLRequest => RawGetKeyTTLResponse, get_key_ttl;
    }

    fn split_region(
        &mut self,
        ctx: RpcContext,
        req: kvrpcpb::SplitRegionRequest,
        sink: UnarySink<kvrpcpb::SplitRegionResponse>,
    ) {
        let count = req.get_split_keys().len().max(1);
        if let Err(e) = self.storage.check_split_keys(count) {
            self.rt.spawn(sink.success(error_response(e)));
            return;
        }
        self.serve(&ctx, sink, req, crate::raw_service::split_region);
    }

    /// Registered apart (`batch_service::bounded_service`, see `services`), with a
    /// decoder that counts a message's requests first: reached only if that is not.
    fn batch_commands(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<BatchCommandsRequest>,
        sink: DuplexSink<BatchCommandsResponse>,
    ) {
        let status = RpcStatus::with_message(
            RpcStatusCode::UNIMPLEMENTED,
            "BatchCommands is served by batch_service::bounded_service".into(),
        );
        ctx.spawn(async move {
            let _ = sink.fail(status).await;
            drop(stream);
        });
    }

    fn compute_hash(
        &mut self,
        ctx: RpcContext,
        req: ComputeHashRequest,
        sink: UnarySink<ComputeHashResponse>,
    ) {
        if let Err(e) = self.auth.check(&self.proof(&ctx), &req) {
            let mut resp = ComputeHashResponse::default();
            resp.set_error(e.to_string());
            self.rt.spawn(sink.success(resp));
            return;
        }
        let storage = self.storage.clone();
        // On the runtime: waiting for the answer needs its timers.
        self.rt.spawn(async move {
            let mut resp = ComputeHashResponse::default();
            match storage
                .compute_hash(req.region_id, req.get_region_epoch().clone())
                .await
            {
                Ok((index, hash)) => (resp.index, resp.hash) = (index, hash),
                Err(e) => match e.into_wire() {
                    (Some(re), _) => resp.set_region_error(re),
                    (None, msg) => resp.set_error(msg),
                },
            }
            let _ = sink.success(resp).await;
        });
    }

    fn region_hash(
        &mut self,
        ctx: RpcContext,
        req: RegionHashRequest,
        sink: UnarySink<RegionHashResponse>,
    ) {
        let mut resp = RegionHashResponse::default();
        if self.auth.check(&self.proof(&ctx), &req).is_err() {
            // Answers "not found", as for a hash this store does not have: the checker
            // then reports the region unverified.
            ctx.spawn(async move {
                let _ = sink.success(resp).await;
            });
            return;
        }
        if let Some(hash) = self.storage.region_hash(req.region_id, req.index) {
            resp.found = true;
            resp.hash = hash;
        }
        ctx.spawn(async move {
            let _ = sink.success(resp).await;
        });
    }

    fn batch_raft(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<BatchRaftMessage>,
        sink: ClientStreamingSink<Done>,
    ) {
        if !self.peer_authenticated(&ctx, "raft messages") {
            return refuse_peer(&ctx, stream, sink);
        }
        let router = self.router.clone();
        let logger = self.logger.clone();
        ctx.spawn(async move {
            let mut stream = stream;
            let res: grpcio::Result<()> = async {
                while let Some(mut batch) = stream.try_next().await? {
                    metrics::RAFT_MESSAGES_RECEIVED.inc_by(batch.get_msgs().len() as u64);
                    for msg in batch.take_msgs() {
                        if let Err(e) = router.send_raft_message(msg) {
                            warn!(logger, "dropping raft message"; "err" => %e);
                        }
                    }
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) => {
                    let _ = sink.success(Done::default()).await;
                }
                Err(e) => {
                    let _ = sink
                        .fail(RpcStatus::with_message(
                            RpcStatusCode::UNKNOWN,
                            e.to_string(),
                        ))
                        .await;
                }
            }
        });
    }

    fn snapshot(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<SnapshotChunk>,
        sink: ClientStreamingSink<Done>,
    ) {
        if !self.peer_authenticated(&ctx, "a snapshot") {
            return refuse_peer(&ctx, stream, sink);
        }
        let router = self.router.clone();
        let mgr = self.snap_mgr.clone();
        let snap_files = self.snap_mgr.clone();
        let logger = self.logger.clone();
        let Ok(permit) = self.snap_recv.clone().try_acquire_owned() else {
            let why = "too many snapshots being received (server.snap-max-concurrent-recv)";
            self.rt.spawn(async move {
                let status = RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, why.into());
                let _ = sink.fail(status).await;
            });
            return;
        };
        self.rt.spawn(async move {
            let res = receive_snapshot(mgr, stream).await.and_then(|msg| {
                let key = raftstore::snap::snapshot_of(&msg);
                router.send_raft_message(msg).map_err(|e| {
                    // Undelivered, its files would wait for a peer that never asks.
                    if let Some(key) = key {
                        snap_files.discard_received(key);
                    }
                    e.to_string()
                })
            });
            drop(permit);
            match res {
                Ok(()) => {
                    let _ = sink.success(Done::default()).await;
                }
                Err(e) => {
                    warn!(logger, "snapshot receive failed"; "err" => &e);
                    let _ = sink
                        .fail(RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, e))
                        .await;
                }
            }
        });
    }
}

impl TikvService {
    /// What a call offers as proof of its caller.
    pub(crate) fn proof(&self, ctx: &RpcContext) -> Proof {
        self.security.proof(ctx, &self.secret)
    }

    /// Whether a peer stream comes from a store of this cluster (it carries the cluster
    /// secret, or a cluster certificate); logs the refusal if not.
    fn peer_authenticated(&self, ctx: &RpcContext, what: &str) -> bool {
        let ok = self.security.is_cluster_call(ctx, &self.secret);
        if !ok {
            metrics::PEER_STREAMS_REFUSED.inc();
            warn!(self.logger, "refusing a peer stream without the cluster secret or certificate";
                  "what" => what, "from" => ctx.peer());
        }
        ok
    }
}

/// Fails a peer stream that did not prove it comes from a store of this cluster. The
/// request stream lives until the status is sent: dropping it first cancels the call, and
/// the sender would see that instead of why.
fn refuse_peer<T: Send + 'static>(
    ctx: &RpcContext,
    stream: RequestStream<T>,
    sink: ClientStreamingSink<Done>,
) {
    let status = RpcStatus::with_message(
        RpcStatusCode::UNAUTHENTICATED,
        "store-to-store traffic must carry this cluster's secret or a cluster certificate \
         (security.cluster-cn)"
            .into(),
    );
    ctx.spawn(async move {
        let _ = sink.fail(status).await;
        drop(stream);
    });
}

/// Receives a snapshot stream into files. The file writes block, so they run on a
/// blocking thread fed chunk by chunk, never on the runtime's workers.
async fn receive_snapshot(
    mgr: SnapManager,
    mut stream: RequestStream<SnapshotChunk>,
) -> std::result::Result<proto::raft_serverpb::RaftMessage, String> {
    // `None` marks the stream's clean end: a stream cut short never finishes a snapshot,
    // even if the files so far looked whole.
    let (tx, mut chunks) = tokio::sync::mpsc::channel::<Option<SnapshotChunk>>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let cut = || "snapshot stream broke off".to_string();
        let first = chunks
            .blocking_recv()
            .flatten()
            .ok_or("empty snapshot stream")?;
        let mut rx = SnapReceiver::new(&mgr, first).map_err(|e| e.to_string())?;
        loop {
            match chunks.blocking_recv().ok_or_else(cut)? {
                Some(chunk) => rx.write(chunk.get_data()).map_err(|e| e.to_string())?,
                None => return rx.finish().map_err(|e| e.to_string()),
            }
        }
    });
    let mut read_err = None;
    loop {
        let next = match stream.try_next().await {
            Ok(chunk) => chunk,
            Err(e) => {
                read_err = Some(e.to_string());
                break;
            }
        };
        let end = next.is_none();
        // A send fails only if the writer gave up; its error says why.
        if tx.send(next).await.is_err() || end {
            break;
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| e.to_string())?;
    match read_err {
        Some(e) => Err(e),
        None => written,
    }
}

/// The services a store registers, in order: the second replaces the first's
/// BatchCommands with one whose messages are counted before they are decoded
/// (grpcio's server keeps the last handler registered for a method).
pub fn services(svc: TikvService) -> Vec<grpcio::Service> {
    vec![
        proto_grpc::tikvpb_grpc::create_tikv(svc.clone()),
        crate::batch_service::bounded_service(svc),
    ]
}
