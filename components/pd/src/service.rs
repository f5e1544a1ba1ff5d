//! `pdpb.PD` over gRPC: decodes requests, calls [`PdCore`], encodes answers. Errors go in
//! the response header (as TiKV's clients expect), never as gRPC failures.

use std::sync::{Arc, OnceLock};

use futures::{FutureExt, SinkExt, TryStreamExt};
use grpcio::{DuplexSink, RequestStream, RpcContext, UnarySink, WriteFlags};
use proto::pdpb;
use proto_grpc::pdpb_grpc::Pd;
use slog::{warn, Logger};
use util::secret::ClusterSecret;

use crate::{cluster::PdCore, metrics, region_tree::RegionInfo, Error, Result};

/// The gRPC face of PD.
#[derive(Clone)]
pub struct PdService {
    pub(crate) core: Arc<PdCore>,
    /// `http://host:port` clients use; known once the server has bound its port.
    pub(crate) client_url: Arc<OnceLock<String>>,
    /// What stores prove they belong to this cluster with (see `util::secret`).
    pub(crate) secret: ClusterSecret,
    pub(crate) logger: Logger,
}

/// Whether a call carries the cluster secret.
fn authenticated(ctx: &RpcContext, secret: &ClusterSecret) -> bool {
    secret.carried_by(ctx.request_headers().iter())
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

impl PdService {
    /// The region before the one holding `key`, as [`view_for`] shows it to whoever asks
    /// with `key`: regions holding no transactional key are skipped for such a client.
    fn prev_in_view(&self, key: &[u8]) -> Option<RegionInfo> {
        let mut at = key.to_vec();
        loop {
            let prev = self.core.prev_region(&at)?;
            at = prev.region.get_start_key().to_vec();
            if let Some(view) = view_for(key, prev) {
                return Some(view);
            }
        }
    }

    /// Builds the response from `res` (a filled response, or the error for its header)
    /// and sends it.
    fn reply<R: WithHeader + Send + 'static>(
        &self,
        ctx: &RpcContext,
        sink: UnarySink<R>,
        res: Result<R>,
    ) {
        let resp = self.finish(res);
        ctx.spawn(sink.success(resp).map(|_| ()));
    }

    fn finish<R: WithHeader>(&self, res: Result<R>) -> R {
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
        resp.header_mut().cluster_id = self.core.cluster_id();
        resp
    }

    fn checked<T>(&self, header: &pdpb::RequestHeader, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.core.check_cluster(header)?;
        f()
    }

    /// Like `checked`, for the calls only a store of this cluster may make (they change
    /// the cluster's metadata): the call must carry the cluster secret.
    fn checked_store_call<T>(
        &self,
        ctx: &RpcContext,
        header: &pdpb::RequestHeader,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !authenticated(ctx, &self.secret) {
            return Err(Error::Unauthenticated);
        }
        self.checked(header, f)
    }
}

fn region_response(info: Option<RegionInfo>, what: String) -> Result<pdpb::GetRegionResponse> {
    let info = info.ok_or(Error::RegionNotFound(what))?;
    let mut resp = pdpb::GetRegionResponse::default();
    resp.set_region(info.region);
    if let Some(l) = info.leader {
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

fn member(url: &str) -> pdpb::Member {
    let mut m = pdpb::Member::default();
    m.set_name("pd".into());
    m.member_id = 1;
    m.mut_client_urls().push(url.to_string());
    m.mut_peer_urls().push(url.to_string());
    m
}

impl Pd for PdService {
    fn get_members(
        &mut self,
        ctx: RpcContext,
        _req: pdpb::GetMembersRequest,
        sink: UnarySink<pdpb::GetMembersResponse>,
    ) {
        let url = self.client_url.get().cloned().unwrap_or_default();
        let mut resp = pdpb::GetMembersResponse::default();
        resp.mut_members().push(member(&url));
        resp.set_leader(member(&url));
        resp.set_etcd_leader(member(&url));
        self.reply(&ctx, sink, Ok(resp));
    }

    fn tso(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<pdpb::TsoRequest>,
        mut sink: DuplexSink<pdpb::TsoResponse>,
    ) {
        let this = self.clone();
        ctx.spawn(async move {
            let res: std::result::Result<(), grpcio::Error> = async {
                let mut stream = stream;
                while let Some(req) = stream.try_next().await? {
                    metrics::TSO.with_label_values(&["requests"]).inc();
                    metrics::TSO
                        .with_label_values(&["timestamps"])
                        .inc_by(u64::from(req.count));
                    let res = this
                        .checked(req.get_header(), || this.core.tso(req.count))
                        .map(|(physical, logical)| {
                            let mut resp = pdpb::TsoResponse::default();
                            resp.set_count(req.count);
                            let ts = resp.mut_timestamp();
                            ts.physical = physical;
                            ts.logical = logical;
                            resp
                        });
                    sink.send((this.finish(res), WriteFlags::default())).await?;
                }
                sink.close().await
            }
            .await;
            if let Err(e) = res {
                warn!(this.logger, "tso stream ended"; "err" => %e);
            }
        });
    }

    fn bootstrap(
        &mut self,
        ctx: RpcContext,
        req: pdpb::BootstrapRequest,
        sink: UnarySink<pdpb::BootstrapResponse>,
    ) {
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            self.core
                .bootstrap(req.get_store().clone(), req.get_region().clone())?;
            Ok(pdpb::BootstrapResponse::default())
        });
        self.reply(&ctx, sink, res);
    }

    fn is_bootstrapped(
        &mut self,
        ctx: RpcContext,
        req: pdpb::IsBootstrappedRequest,
        sink: UnarySink<pdpb::IsBootstrappedResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let mut resp = pdpb::IsBootstrappedResponse::default();
            resp.set_bootstrapped(self.core.is_bootstrapped());
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn alloc_id(
        &mut self,
        ctx: RpcContext,
        req: pdpb::AllocIDRequest,
        sink: UnarySink<pdpb::AllocIDResponse>,
    ) {
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            let mut resp = pdpb::AllocIDResponse::default();
            resp.set_id(self.core.alloc_id()?);
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn get_store(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetStoreRequest,
        sink: UnarySink<pdpb::GetStoreResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let info = self.core.get_store(req.store_id)?;
            let mut resp = pdpb::GetStoreResponse::default();
            resp.set_store(info.meta);
            resp.set_stats(info.stats);
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn put_store(
        &mut self,
        ctx: RpcContext,
        req: pdpb::PutStoreRequest,
        sink: UnarySink<pdpb::PutStoreResponse>,
    ) {
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            self.core.put_store(req.get_store().clone())?;
            Ok(pdpb::PutStoreResponse::default())
        });
        self.reply(&ctx, sink, res);
    }

    fn get_all_stores(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetAllStoresRequest,
        sink: UnarySink<pdpb::GetAllStoresResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let mut resp = pdpb::GetAllStoresResponse::default();
            for s in self.core.stores(req.exclude_tombstone_stores) {
                resp.mut_stores().push(s.meta);
            }
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn store_heartbeat(
        &mut self,
        ctx: RpcContext,
        req: pdpb::StoreHeartbeatRequest,
        sink: UnarySink<pdpb::StoreHeartbeatResponse>,
    ) {
        metrics::STORE_HEARTBEATS.inc();
        let _timer = metrics::HEARTBEAT_SECONDS
            .with_label_values(&["store"])
            .start_timer();
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            self.core.store_heartbeat(req.get_stats().clone())?;
            Ok(pdpb::StoreHeartbeatResponse::default())
        });
        self.reply(&ctx, sink, res);
    }

    fn region_heartbeat(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<pdpb::RegionHeartbeatRequest>,
        mut sink: DuplexSink<pdpb::RegionHeartbeatResponse>,
    ) {
        let this = self.clone();
        let trusted = authenticated(&ctx, &self.secret);
        ctx.spawn(async move {
            let res: std::result::Result<(), grpcio::Error> = async {
                let mut stream = stream;
                while let Some(req) = stream.try_next().await? {
                    metrics::REGION_HEARTBEATS.inc();
                    let timer = metrics::HEARTBEAT_SECONDS
                        .with_label_values(&["region"])
                        .start_timer();
                    let res = match trusted {
                        true => this.checked(req.get_header(), || this.core.region_heartbeat(&req)),
                        false => Err(Error::Unauthenticated),
                    };
                    timer.observe_duration();
                    match res {
                        Ok(Some(op)) => sink.send((this.finish(Ok(op)), WriteFlags::default())).await?,
                        Ok(None) => {}
                        Err(e) => {
                            warn!(this.logger, "bad region heartbeat"; "region_id" => req.get_region().get_id(), "err" => %e);
                            sink.send((this.finish(Err(e)), WriteFlags::default())).await?
                        }
                    }
                }
                sink.close().await
            }
            .await;
            if let Err(e) = res {
                warn!(this.logger, "region heartbeat stream ended"; "err" => %e);
            }
        });
    }

    fn get_region(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetRegionRequest,
        sink: UnarySink<pdpb::GetRegionResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let key = req.get_region_key();
            region_response(
                self.core.region_by_key(key).and_then(|r| view_for(key, r)),
                format!("no region holds key {key:?}"),
            )
        });
        self.reply(&ctx, sink, res);
    }

    fn get_prev_region(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetRegionRequest,
        sink: UnarySink<pdpb::GetRegionResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let key = req.get_region_key();
            region_response(
                self.prev_in_view(key),
                format!("no region before key {key:?}"),
            )
        });
        self.reply(&ctx, sink, res);
    }

    fn get_region_by_id(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetRegionByIDRequest,
        sink: UnarySink<pdpb::GetRegionResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            region_response(
                self.core.region_by_id(req.region_id),
                format!("no region with id {}", req.region_id),
            )
        });
        self.reply(&ctx, sink, res);
    }

    fn scan_regions(
        &mut self,
        ctx: RpcContext,
        req: pdpb::ScanRegionsRequest,
        sink: UnarySink<pdpb::ScanRegionsResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let limit = req.limit.max(0) as usize;
            let mut resp = pdpb::ScanRegionsResponse::default();
            let start = req.get_start_key();
            for info in self
                .core
                .scan_regions(start, req.get_end_key(), limit)
                .into_iter()
                .filter_map(|r| view_for(start, r))
            {
                let leader = info.leader.clone().unwrap_or_default();
                resp.mut_region_metas().push(info.region.clone());
                resp.mut_leaders().push(leader.clone());
                let mut r = pdpb::Region::default();
                r.set_region(info.region);
                r.set_leader(leader);
                r.set_down_peers(info.down_peers.into());
                r.set_pending_peers(info.pending_peers.into());
                resp.mut_regions().push(r);
            }
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn ask_batch_split(
        &mut self,
        ctx: RpcContext,
        req: pdpb::AskBatchSplitRequest,
        sink: UnarySink<pdpb::AskBatchSplitResponse>,
    ) {
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            let mut resp = pdpb::AskBatchSplitResponse::default();
            resp.set_ids(
                self.core
                    .ask_batch_split(req.get_region(), req.split_count)?
                    .into(),
            );
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn report_batch_split(
        &mut self,
        ctx: RpcContext,
        req: pdpb::ReportBatchSplitRequest,
        sink: UnarySink<pdpb::ReportBatchSplitResponse>,
    ) {
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            self.core.report_split(req.get_regions())?;
            Ok(pdpb::ReportBatchSplitResponse::default())
        });
        self.reply(&ctx, sink, res);
    }

    fn add_operator(
        &mut self,
        ctx: RpcContext,
        req: pdpb::AddOperatorRequest,
        sink: UnarySink<pdpb::AddOperatorResponse>,
    ) {
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            match (req.has_transfer_leader(), req.has_move_peer()) {
                (true, false) => self
                    .core
                    .add_transfer_leader(req.region_id, req.get_transfer_leader().to_store)?,
                (false, true) => {
                    let m = req.get_move_peer();
                    self.core
                        .add_move_peer(req.region_id, m.from_store, m.to_store)?
                }
                _ => return Err(Error::InvalidValue("give exactly one operator".into())),
            }
            Ok(pdpb::AddOperatorResponse::default())
        });
        self.reply(&ctx, sink, res);
    }

    fn delete_store(
        &mut self,
        ctx: RpcContext,
        req: pdpb::DeleteStoreRequest,
        sink: UnarySink<pdpb::DeleteStoreResponse>,
    ) {
        let res = self.checked_store_call(&ctx, req.get_header(), || {
            self.core.delete_store(req.store_id)?;
            Ok(pdpb::DeleteStoreResponse::default())
        });
        self.reply(&ctx, sink, res);
    }

    fn get_gc_safe_point(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetGCSafePointRequest,
        sink: UnarySink<pdpb::GetGCSafePointResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let mut resp = pdpb::GetGCSafePointResponse::default();
            resp.set_safe_point(self.core.gc_safe_point());
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn update_gc_safe_point(
        &mut self,
        ctx: RpcContext,
        req: pdpb::UpdateGCSafePointRequest,
        sink: UnarySink<pdpb::UpdateGCSafePointResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let mut resp = pdpb::UpdateGCSafePointResponse::default();
            resp.set_new_safe_point(self.core.update_gc_safe_point(req.safe_point)?);
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn get_cluster_config(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetClusterConfigRequest,
        sink: UnarySink<pdpb::GetClusterConfigResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let mut resp = pdpb::GetClusterConfigResponse::default();
            resp.set_cluster(self.core.cluster_config());
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
    }

    fn get_operators(
        &mut self,
        ctx: RpcContext,
        req: pdpb::GetOperatorsRequest,
        sink: UnarySink<pdpb::GetOperatorsResponse>,
    ) {
        let res = self.checked(req.get_header(), || {
            let mut resp = pdpb::GetOperatorsResponse::default();
            for (region_id, kind, step, age) in self.core.operators() {
                let mut o = pdpb::OperatorInfo::default();
                o.set_region_id(region_id);
                o.set_kind(kind.into());
                o.set_step(step);
                o.age_ms = age.as_millis() as u64;
                resp.mut_operators().push(o);
            }
            Ok(resp)
        });
        self.reply(&ctx, sink, res);
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
