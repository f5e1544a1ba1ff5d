//! A client of PD: finds the PD leader, stamps every request with the cluster id, retries
//! unavailable calls with backoff inside a deadline, and keeps the region heartbeat
//! stream. Timestamps are fetched in batches (`tso`).
//!
//! Used by stores (bootstrap, heartbeats) and by smart clients (routing). Async; needs a
//! tokio runtime for its timers. Must not depend on the store or PD server crates.

mod tso;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use grpcio::{CallOption, ClientUnaryReceiver, Environment};
use parking_lot::RwLock;
use proto::authpb;
use proto::pd_memberpb;
use proto::{
    metapb,
    pdpb::{self, ErrorType},
};
use proto_grpc::{authpb_grpc, pd_memberpb_grpc, pdpb_grpc};
use slog::{info, warn, Logger};
use util::security::Credentials;

/// Errors of the PD client.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// No PD endpoint answered before the deadline.
    #[error("PD is unavailable at {endpoints}: {last}")]
    Unavailable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        last: String,
    },
    /// PD answered with an error.
    #[error("PD error {kind:?}: {message}")]
    Pd {
        /// What kind.
        kind: ErrorType,
        /// PD's words.
        message: String,
    },
    /// PD's auth service refused the call (bad password, no permission, bad input); the
    /// message says why.
    #[error("{message}")]
    Auth {
        /// The gRPC status code.
        code: grpcio::RpcStatusCode,
        /// PD's words.
        message: String,
    },
    /// The endpoint list is empty or malformed.
    #[error("invalid PD endpoints: {0}")]
    InvalidEndpoints(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether PD said this store was removed from the cluster.
    pub fn is_store_tombstone(&self) -> bool {
        matches!(
            self,
            Error::Pd {
                kind: ErrorType::STORE_TOMBSTONE,
                ..
            }
        )
    }

    /// Whether PD said the cluster already has its first region.
    pub fn is_already_bootstrapped(&self) -> bool {
        matches!(
            self,
            Error::Pd {
                kind: ErrorType::ALREADY_BOOTSTRAPPED,
                ..
            }
        )
    }
}

/// A region with the leader PD knows of.
#[derive(Clone, Debug, Default)]
pub struct RegionRoute {
    /// Range, epoch and peers.
    pub region: metapb::Region,
    /// The leader, if PD knows one.
    pub leader: Option<metapb::Peer>,
    /// From ScanRegions only: the highest location label every two replicas differ at
    /// ("none", or "" without location labels), and whether that breaks PD's isolation
    /// level.
    pub isolation: Option<(String, bool)>,
}

/// Requests that carry a `pdpb.RequestHeader`.
pub trait PdRequest: Clone + Send {
    /// Sets the header.
    fn set_request_header(&mut self, h: pdpb::RequestHeader);
}

/// Responses that carry a `pdpb.ResponseHeader`.
pub trait PdResponse {
    /// The header.
    fn response_header(&self) -> &pdpb::ResponseHeader;
}

macro_rules! requests {
    ($($t:ty),*) => {$(
        impl PdRequest for $t {
            fn set_request_header(&mut self, h: pdpb::RequestHeader) {
                self.set_header(h);
            }
        }
    )*};
}

macro_rules! responses {
    ($($t:ty),*) => {$(
        impl PdResponse for $t {
            fn response_header(&self) -> &pdpb::ResponseHeader {
                self.get_header()
            }
        }
    )*};
}

requests!(
    pdpb::GetMembersRequest,
    pdpb::AddOperatorRequest,
    pdpb::DeleteStoreRequest,
    pdpb::IsBootstrappedRequest,
    pdpb::BootstrapRequest,
    pdpb::AllocIDRequest,
    pdpb::GetStoreRequest,
    pdpb::PutStoreRequest,
    pdpb::GetAllStoresRequest,
    pdpb::StoreHeartbeatRequest,
    pdpb::GetRegionRequest,
    pdpb::GetRegionByIDRequest,
    pdpb::ScanRegionsRequest,
    pdpb::AskBatchSplitRequest,
    pdpb::ReportBatchSplitRequest,
    pdpb::GetOperatorsRequest,
    pdpb::GetClusterConfigRequest,
    pdpb::GetGCSafePointRequest,
    pdpb::UpdateGCSafePointRequest
);

responses!(
    pdpb::GetMembersResponse,
    pdpb::AddOperatorResponse,
    pdpb::DeleteStoreResponse,
    pdpb::IsBootstrappedResponse,
    pdpb::BootstrapResponse,
    pdpb::AllocIDResponse,
    pdpb::GetStoreResponse,
    pdpb::PutStoreResponse,
    pdpb::GetAllStoresResponse,
    pdpb::StoreHeartbeatResponse,
    pdpb::GetRegionResponse,
    pdpb::ScanRegionsResponse,
    pdpb::AskBatchSplitResponse,
    pdpb::ReportBatchSplitResponse,
    pdpb::GetOperatorsResponse,
    pdpb::GetClusterConfigResponse,
    pdpb::GetGCSafePointResponse,
    pdpb::UpdateGCSafePointResponse
);

type Call<Req, Resp> =
    fn(&pdpb_grpc::PdClient, &Req, CallOption) -> grpcio::Result<ClientUnaryReceiver<Resp>>;

/// A call of PD's auth service.
pub type AuthCall<Req, Resp> =
    fn(&authpb_grpc::AuthClient, &Req, CallOption) -> grpcio::Result<ClientUnaryReceiver<Resp>>;

/// A connection to PD.
pub struct PdClient {
    env: Arc<Environment>,
    endpoints: Vec<String>,
    /// Members' client addresses, as the last GetMembers named them: tried after the
    /// given endpoints, so that a member added later is found too.
    members: RwLock<Vec<String>>,
    conn: RwLock<(String, pdpb_grpc::PdClient)>,
    cluster_id: AtomicU64,
    timeout: Duration,
    /// The TLS settings channels are opened with, and a store's or operator's proof
    /// that it belongs to the cluster (the cluster secret, sent with every call; clients
    /// have none and cannot make the calls that need it).
    creds: Credentials,
    logger: Logger,
    /// Callers waiting for timestamps, answered in batches.
    tso: tso::TsoBatcher,
}

fn strip_scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

impl PdClient {
    /// Connects to the PD among `endpoints` that answers, waiting up to `timeout`; later
    /// calls retry for up to `timeout` too.
    pub async fn connect(
        endpoints: &[String],
        timeout: Duration,
        logger: Logger,
    ) -> Result<Arc<PdClient>> {
        Self::connect_within(endpoints, timeout, timeout, Credentials::default(), logger).await
    }

    /// Like [`PdClient::connect`], for a store of the cluster: it dials with `creds`, and
    /// every call carries its secret (if any), which the calls that change the
    /// cluster's metadata require without a cluster certificate.
    pub async fn connect_as_store(
        endpoints: &[String],
        timeout: Duration,
        creds: Credentials,
        logger: Logger,
    ) -> Result<Arc<PdClient>> {
        Self::connect_within(endpoints, timeout, timeout, creds, logger).await
    }

    /// Connects, giving up after `connect_timeout` (a command-line tool should say soon
    /// that no PD answers); later calls retry for up to `timeout`.
    pub async fn connect_within(
        endpoints: &[String],
        connect_timeout: Duration,
        timeout: Duration,
        creds: Credentials,
        logger: Logger,
    ) -> Result<Arc<PdClient>> {
        // `a,b,c` in one string counts as three endpoints (a flag's value, say).
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| strip_scheme(e.trim()).to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::InvalidEndpoints("no PD address given".into()));
        }
        let env = Arc::new(
            grpcio::EnvBuilder::new()
                .cq_count(1)
                .name_prefix("pd-client")
                .build(),
        );
        let first = endpoints[0].clone();
        let client = PdClient {
            conn: RwLock::new((first.clone(), Self::dial(&env, &creds, &first))),
            env,
            endpoints,
            members: RwLock::new(vec![]),
            cluster_id: AtomicU64::new(0),
            timeout,
            creds,
            logger,
            tso: Default::default(),
        };
        let mut retry = Self::retry(connect_timeout);
        loop {
            match client.reconnect().await {
                Ok(()) => return Ok(Arc::new(client)),
                Err(e) if !retry.wait().await => return Err(e),
                Err(_) => {}
            }
        }
    }

    fn dial(env: &Arc<Environment>, creds: &Credentials, addr: &str) -> pdpb_grpc::PdClient {
        let (ping, wait) = util::grpc::PD_KEEPALIVE;
        let builder = util::grpc::channel(env.clone())
            .max_receive_message_len(64 << 20)
            .keepalive_time(ping)
            .keepalive_timeout(wait);
        let ch = creds.connect(builder, addr);
        pdpb_grpc::PdClient::new(ch)
    }

    /// Asks each endpoint (then each member last heard of) for the members and switches
    /// to the leader.
    pub async fn reconnect(&self) -> Result<()> {
        let mut last = String::new();
        let mut candidates = self.endpoints.clone();
        for m in self.members.read().iter() {
            if !candidates.contains(m) {
                candidates.push(m.clone());
            }
        }
        // The leader as a follower named it: used if no endpoint turns out to lead.
        let mut named = None;
        for ep in &candidates {
            let client = Self::dial(&self.env, &self.creds, ep);
            let opt = CallOption::default().timeout(Duration::from_secs(2));
            let resp = match client.get_members_async_opt(&pdpb::GetMembersRequest::default(), opt)
            {
                Ok(rx) => rx.await,
                Err(e) => Err(e),
            };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{ep}: {e}");
                    continue;
                }
            };
            let Some(url) = resp.get_leader().get_client_urls().first() else {
                last = format!("{ep} reports no leader");
                continue;
            };
            // An endpoint that leads is dialed as given, however the leader advertises
            // itself: behind a published port or a NAT its advertised name may not
            // resolve here, while the endpoint that answered does.
            let alone = resp.get_members().len() <= 1;
            if alone || self.member_id_at(ep).await == Some(resp.get_leader().member_id) {
                self.use_leader(ep.clone(), client, &resp);
                return Ok(());
            }
            named.get_or_insert((strip_scheme(url).to_string(), resp));
        }
        if let Some((leader, resp)) = named {
            // Followers name the old leader for a moment after it died: switch only to a
            // member that answers as leader, or streams opened on it never start.
            let client = Self::dial(&self.env, &self.creds, &leader);
            let opt = CallOption::default().timeout(Duration::from_secs(2));
            let answered =
                match client.get_members_async_opt(&pdpb::GetMembersRequest::default(), opt) {
                    Ok(rx) => rx.await,
                    Err(e) => Err(e),
                };
            match answered {
                Ok(own) if own.get_leader().member_id == resp.get_leader().member_id => {
                    self.use_leader(leader, client, &own);
                    return Ok(());
                }
                Ok(_) => last = format!("{leader}, named leader, does not lead"),
                Err(e) => last = format!("{leader}, named leader: {e}"),
            }
        }
        Err(Error::Unavailable {
            endpoints: self.endpoints.join(","),
            last,
        })
    }

    /// The endpoints this client was given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Which member answers at `ep` (host:port), if it says.
    pub async fn member_id_at(&self, ep: &str) -> Option<u64> {
        let client = pd_memberpb_grpc::PdMemberClient::new(
            self.creds
                .connect(util::grpc::channel(self.env.clone()), ep),
        );
        let opt = CallOption::default().timeout(Duration::from_secs(2));
        let req = pd_memberpb::HelloRequest::default();
        match client.hello_async_opt(&req, opt) {
            Ok(rx) => rx.await.ok().map(|r| r.member_id),
            Err(_) => None,
        }
    }

    /// Sends calls to `leader` from now on, and remembers the members `resp` lists.
    fn use_leader(
        &self,
        leader: String,
        client: pdpb_grpc::PdClient,
        resp: &pdpb::GetMembersResponse,
    ) {
        *self.members.write() = resp
            .get_members()
            .iter()
            .filter_map(|m| m.get_client_urls().first())
            .map(|u| strip_scheme(u).to_string())
            .collect();
        let id = resp.get_header().cluster_id;
        let old = self.cluster_id.swap(id, Ordering::SeqCst);
        if old != 0 && old != id {
            warn!(self.logger, "PD cluster id changed"; "old" => old, "new" => id);
        }
        info!(self.logger, "connected to PD"; "leader" => &leader, "cluster_id" => id);
        *self.conn.write() = (leader, client);
    }

    /// The PD members and the leader, as the member in use sees them.
    pub async fn members(&self) -> Result<pdpb::GetMembersResponse> {
        self.unary(
            pdpb::GetMembersRequest::default(),
            pdpb_grpc::PdClient::get_members_async_opt,
        )
        .await
    }

    /// Asks the PD member at `addr` (host:port) directly who leads, within `timeout`:
    /// whether that member answers at all.
    pub async fn probe_member(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<pdpb::GetMembersResponse> {
        let client = Self::dial(&self.env, &self.creds, strip_scheme(addr));
        let opt = CallOption::default().timeout(timeout);
        let res = match client.get_members_async_opt(&pdpb::GetMembersRequest::default(), opt) {
            Ok(rx) => rx.await,
            Err(e) => Err(e),
        };
        res.map_err(|e| Error::Unavailable {
            endpoints: addr.to_string(),
            last: e.to_string(),
        })
    }

    /// Asks the PD leader to hand its leadership to the member named `name` (the call
    /// needs the cluster secret). Returns once asked; the move itself takes an election.
    pub async fn transfer_pd_leader(&self, name: &str) -> Result<()> {
        let mut req = pd_memberpb::TransferLeaderRequest::default();
        req.set_name(name.to_string());
        let mut retry = Self::retry(self.timeout);
        loop {
            let addr = self.leader_addr();
            let client = pd_memberpb_grpc::PdMemberClient::new(
                self.creds
                    .connect(util::grpc::channel(self.env.clone()), &addr),
            );
            let opt = self.call_option().timeout(Duration::from_secs(5));
            let res = match client.transfer_leader_async_opt(&req, opt) {
                Ok(rx) => rx.await,
                Err(e) => Err(e),
            };
            let last = match res {
                Ok(resp) if !resp.get_header().has_error() => return Ok(()),
                Ok(resp) => {
                    let e = resp.get_header().get_error();
                    if e.get_message().contains("not the leader") {
                        e.get_message().to_string()
                    } else {
                        return Err(Error::Pd {
                            kind: e.get_field_type(),
                            message: e.get_message().to_string(),
                        });
                    }
                }
                Err(e) => e.to_string(),
            };
            if !retry.wait().await {
                return Err(Error::Unavailable {
                    endpoints: self.endpoints.join(","),
                    last,
                });
            }
            let _ = self.reconnect().await;
        }
    }

    /// Calls PD's auth service on the leader, following a change of leader until the
    /// timeout; any other failure is the service's answer (`Error::Auth`).
    pub async fn auth_call<Req, Resp: Unpin>(
        &self,
        req: &Req,
        call: AuthCall<Req, Resp>,
    ) -> Result<Resp> {
        let mut retry = Self::retry(self.timeout);
        loop {
            let client = authpb_grpc::AuthClient::new(
                self.creds
                    .connect(util::grpc::channel(self.env.clone()), &self.leader_addr()),
            );
            let opt = self.call_option().timeout(Duration::from_secs(10));
            let res = match call(&client, req, opt) {
                Ok(rx) => rx.await,
                Err(e) => Err(e),
            };
            let last = match res {
                Ok(resp) => return Ok(resp),
                Err(grpcio::Error::RpcFailure(s))
                    if s.code() != grpcio::RpcStatusCode::UNAVAILABLE =>
                {
                    return Err(Error::Auth {
                        code: s.code(),
                        message: s.message().to_string(),
                    })
                }
                Err(e) => e.to_string(),
            };
            if !retry.wait().await {
                return Err(Error::Unavailable {
                    endpoints: self.endpoints.join(","),
                    last,
                });
            }
            let _ = self.reconnect().await;
        }
    }

    /// The auth state if its revision is not `known` (stores only: it holds the keys
    /// tokens are signed with).
    pub async fn auth_state(&self, known: u64) -> Result<Option<authpb::AuthState>> {
        let req = authpb::StateRequest {
            known_revision: known,
            ..Default::default()
        };
        let mut resp = self
            .auth_call(&req, authpb_grpc::AuthClient::state_async_opt)
            .await?;
        Ok(resp.changed.then(|| resp.take_state()))
    }

    /// The cluster this PD serves.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::SeqCst)
    }

    /// The address of the PD in use.
    pub fn leader_addr(&self) -> String {
        self.conn.read().0.clone()
    }

    fn header(&self) -> pdpb::RequestHeader {
        let mut h = pdpb::RequestHeader::default();
        h.set_cluster_id(self.cluster_id());
        h
    }

    /// Retry delays for PD calls: from 50 ms, doubling up to a second, jittered.
    fn retry(timeout: Duration) -> util::retry::Retry {
        util::retry::Retry::new(timeout, Duration::from_millis(50), Duration::from_secs(1))
    }

    async fn unary<Req: PdRequest, Resp: PdResponse + Unpin + Send>(
        &self,
        mut req: Req,
        call: Call<Req, Resp>,
    ) -> Result<Resp> {
        req.set_request_header(self.header());
        let mut retry = Self::retry(self.timeout);
        loop {
            let client = self.conn.read().1.clone();
            let left = self
                .timeout
                .saturating_sub(retry.elapsed())
                .max(Duration::from_millis(100));
            let opt = self.call_option().timeout(left.min(Duration::from_secs(5)));
            let res = match call(&client, &req, opt) {
                Ok(rx) => rx.await,
                Err(e) => Err(e),
            };
            match res {
                Ok(resp) => {
                    let h = resp.response_header();
                    if h.has_error() {
                        return Err(Error::Pd {
                            kind: h.get_error().get_field_type(),
                            message: h.get_error().get_message().to_string(),
                        });
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    if !retry.wait().await {
                        return Err(Error::Unavailable {
                            endpoints: self.endpoints.join(","),
                            last: e.to_string(),
                        });
                    }
                    let _ = self.reconnect().await;
                }
            }
        }
    }

    /// Whether the cluster has its first region.
    pub async fn is_bootstrapped(&self) -> Result<bool> {
        let resp = self
            .unary(
                pdpb::IsBootstrappedRequest::default(),
                pdpb_grpc::PdClient::is_bootstrapped_async_opt,
            )
            .await?;
        Ok(resp.bootstrapped)
    }

    /// Creates the cluster's first store and region.
    pub async fn bootstrap(&self, store: metapb::Store, region: metapb::Region) -> Result<()> {
        let mut req = pdpb::BootstrapRequest::default();
        req.set_store(store);
        req.set_region(region);
        self.unary(req, pdpb_grpc::PdClient::bootstrap_async_opt)
            .await?;
        Ok(())
    }

    /// A fresh id.
    pub async fn alloc_id(&self) -> Result<u64> {
        Ok(self
            .unary(
                pdpb::AllocIDRequest::default(),
                pdpb_grpc::PdClient::alloc_id_async_opt,
            )
            .await?
            .id)
    }

    /// Registers or updates a store.
    pub async fn put_store(&self, store: metapb::Store) -> Result<()> {
        let mut req = pdpb::PutStoreRequest::default();
        req.set_store(store);
        self.unary(req, pdpb_grpc::PdClient::put_store_async_opt)
            .await?;
        Ok(())
    }

    /// One store and its last statistics.
    pub async fn get_store(&self, store_id: u64) -> Result<(metapb::Store, pdpb::StoreStats)> {
        let mut req = pdpb::GetStoreRequest::default();
        req.set_store_id(store_id);
        let mut resp = self
            .unary(req, pdpb_grpc::PdClient::get_store_async_opt)
            .await?;
        Ok((resp.take_store(), resp.take_stats()))
    }

    /// Every store.
    pub async fn get_all_stores(&self, exclude_tombstone: bool) -> Result<Vec<metapb::Store>> {
        let mut req = pdpb::GetAllStoresRequest::default();
        req.set_exclude_tombstone_stores(exclude_tombstone);
        let mut resp = self
            .unary(req, pdpb_grpc::PdClient::get_all_stores_async_opt)
            .await?;
        Ok(resp.take_stores().into_vec())
    }

    /// Reports store statistics.
    pub async fn store_heartbeat(&self, stats: pdpb::StoreStats) -> Result<()> {
        let mut req = pdpb::StoreHeartbeatRequest::default();
        req.set_stats(stats);
        self.unary(req, pdpb_grpc::PdClient::store_heartbeat_async_opt)
            .await?;
        Ok(())
    }

    /// The region holding `key`.
    pub async fn get_region(&self, key: &[u8]) -> Result<RegionRoute> {
        let mut req = pdpb::GetRegionRequest::default();
        req.set_region_key(key.to_vec());
        route(
            self.unary(req, pdpb_grpc::PdClient::get_region_async_opt)
                .await?,
        )
    }

    /// A region by id.
    pub async fn get_region_by_id(&self, region_id: u64) -> Result<RegionRoute> {
        let mut req = pdpb::GetRegionByIDRequest::default();
        req.set_region_id(region_id);
        route(
            self.unary(req, pdpb_grpc::PdClient::get_region_by_id_async_opt)
                .await?,
        )
    }

    /// Regions overlapping `[start, end)`, at most `limit` (0: all).
    pub async fn scan_regions(
        &self,
        start: &[u8],
        end: &[u8],
        limit: i32,
    ) -> Result<Vec<RegionRoute>> {
        let mut req = pdpb::ScanRegionsRequest::default();
        req.set_start_key(start.to_vec());
        req.set_end_key(end.to_vec());
        req.limit = limit;
        let mut resp = self
            .unary(req, pdpb_grpc::PdClient::scan_regions_async_opt)
            .await?;
        Ok(resp
            .take_regions()
            .into_iter()
            .map(|mut r| RegionRoute {
                leader: Some(r.take_leader()).filter(|l| l.get_id() != 0),
                region: r.take_region(),
                isolation: Some((r.take_isolation(), r.not_isolated)),
            })
            .collect())
    }

    /// The GC safe point (0: none yet).
    pub async fn get_gc_safe_point(&self) -> Result<u64> {
        let resp = self
            .unary(
                pdpb::GetGCSafePointRequest::default(),
                pdpb_grpc::PdClient::get_gc_safe_point_async_opt,
            )
            .await?;
        Ok(resp.safe_point)
    }

    /// Asks PD to raise the GC safe point to `safe_point`; returns the one in force.
    pub async fn update_gc_safe_point(&self, safe_point: u64) -> Result<u64> {
        let mut req = pdpb::UpdateGCSafePointRequest::default();
        req.set_safe_point(safe_point);
        let resp = self
            .unary(req, pdpb_grpc::PdClient::update_gc_safe_point_async_opt)
            .await?;
        Ok(resp.new_safe_point)
    }

    /// Ids for splitting a region into `count + 1`.
    pub async fn ask_batch_split(
        &self,
        region: metapb::Region,
        count: u32,
    ) -> Result<Vec<pdpb::SplitID>> {
        let mut req = pdpb::AskBatchSplitRequest::default();
        req.set_region(region);
        req.split_count = count;
        let mut resp = self
            .unary(req, pdpb_grpc::PdClient::ask_batch_split_async_opt)
            .await?;
        Ok(resp.take_ids().into_vec())
    }

    /// Tells PD about the regions a split produced.
    pub async fn report_batch_split(&self, regions: Vec<metapb::Region>) -> Result<()> {
        let mut req = pdpb::ReportBatchSplitRequest::default();
        req.set_regions(regions.into());
        self.unary(req, pdpb_grpc::PdClient::report_batch_split_async_opt)
            .await?;
        Ok(())
    }

    /// The cluster's id and the replica count PD keeps every region at.
    pub async fn get_cluster_config(&self) -> Result<metapb::Cluster> {
        let mut resp = self
            .unary(
                pdpb::GetClusterConfigRequest::default(),
                pdpb_grpc::PdClient::get_cluster_config_async_opt,
            )
            .await?;
        Ok(resp.take_cluster())
    }

    /// What PD is doing now.
    pub async fn get_operators(&self) -> Result<Vec<pdpb::OperatorInfo>> {
        let mut resp = self
            .unary(
                pdpb::GetOperatorsRequest::default(),
                pdpb_grpc::PdClient::get_operators_async_opt,
            )
            .await?;
        Ok(resp.take_operators().into_vec())
    }

    /// Asks PD to move the leadership of a region to its voter on `to_store`.
    pub async fn transfer_leader(&self, region_id: u64, to_store: u64) -> Result<()> {
        let mut req = pdpb::AddOperatorRequest::default();
        req.set_region_id(region_id);
        req.mut_transfer_leader().to_store = to_store;
        self.unary(req, pdpb_grpc::PdClient::add_operator_async_opt)
            .await?;
        Ok(())
    }

    /// Asks PD to move a region's replica from one store to another.
    pub async fn move_peer(&self, region_id: u64, from_store: u64, to_store: u64) -> Result<()> {
        let mut req = pdpb::AddOperatorRequest::default();
        req.set_region_id(region_id);
        let m = req.mut_move_peer();
        m.from_store = from_store;
        m.to_store = to_store;
        self.unary(req, pdpb_grpc::PdClient::add_operator_async_opt)
            .await?;
        Ok(())
    }

    /// Asks PD to decommission a store: move every replica off it, then retire it.
    pub async fn delete_store(&self, store_id: u64) -> Result<()> {
        let mut req = pdpb::DeleteStoreRequest::default();
        req.set_store_id(store_id);
        self.unary(req, pdpb_grpc::PdClient::delete_store_async_opt)
            .await?;
        Ok(())
    }

    /// Opens the region heartbeat stream to the current PD.
    pub fn region_heartbeat_stream(
        &self,
    ) -> Result<(
        grpcio::ClientDuplexSender<pdpb::RegionHeartbeatRequest>,
        grpcio::ClientDuplexReceiver<pdpb::RegionHeartbeatResponse>,
    )> {
        let client = self.conn.read().1.clone();
        client
            .region_heartbeat_opt(self.call_option())
            .map_err(|e| Error::Unavailable {
                endpoints: self.endpoints.join(","),
                last: e.to_string(),
            })
    }

    /// Call options with the headers of this client's credentials.
    fn call_option(&self) -> CallOption {
        self.creds.call_option(CallOption::default())
    }

    /// The header every streamed request must carry.
    pub fn request_header(&self) -> pdpb::RequestHeader {
        self.header()
    }

    /// A fresh timestamp from PD's oracle: physical milliseconds << 18 | logical.
    /// Concurrent callers share one request (see `tso`).
    pub async fn get_ts(&self) -> Result<u64> {
        self.tso.get(|count| self.fetch_ts(count)).await
    }

    /// `count` timestamps from PD, retried until the client's timeout; returns the last.
    async fn fetch_ts(&self, count: u32) -> Result<u64> {
        let mut retry = Self::retry(self.timeout);
        loop {
            match self.tso_once(count).await {
                Ok(ts) => return Ok(ts),
                Err(e @ Error::Pd { .. }) => return Err(e),
                Err(e) => {
                    if !retry.wait().await {
                        return Err(e);
                    }
                    let _ = self.reconnect().await;
                }
            }
        }
    }

    async fn tso_once(&self, count: u32) -> Result<u64> {
        use futures::{SinkExt, TryStreamExt};
        let unavailable = |e: String| Error::Unavailable {
            endpoints: self.endpoints.join(","),
            last: e,
        };
        let client = self.conn.read().1.clone();
        let opt = self.call_option().timeout(Duration::from_secs(5));
        let (mut tx, mut rx) = client
            .tso_opt(opt)
            .map_err(|e| unavailable(e.to_string()))?;
        let mut req = pdpb::TsoRequest::default();
        req.set_header(self.header());
        req.count = count;
        tx.send((req, grpcio::WriteFlags::default()))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let resp = rx
            .try_next()
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable("the TSO stream ended without an answer".into()))?;
        let _ = tx.close().await;
        let h = resp.get_header();
        if h.has_error() {
            return Err(Error::Pd {
                kind: h.get_error().get_field_type(),
                message: h.get_error().get_message().to_string(),
            });
        }
        let ts = resp.get_timestamp();
        Ok(((ts.physical as u64) << 18) | ts.logical as u64)
    }
}

fn route(mut resp: pdpb::GetRegionResponse) -> Result<RegionRoute> {
    Ok(RegionRoute {
        leader: resp.has_leader().then(|| resp.take_leader()),
        region: resp.take_region(),
        isolation: None,
    })
}
