//! The Rust client of Flotilla: caches regions from PD, sends each request to the leader
//! of the region that holds its keys, and on a region error updates the cache and retries
//! with backoff inside a deadline. Scans and range deletes walk regions in key order;
//! batches are split by region.
//!
//! A library only: kvctl and kv-bench are in `cli`. Must not depend on the store or PD
//! server crates (it speaks only the wire protocol), nor on command-line, terminal or
//! HTTP crates (every user of the library would link them; `scripts/check-deps.sh`
//! holds this).

mod batch;
pub mod check;
mod read_mode;
mod region_cache;
mod session;
pub mod txn;

pub use read_mode::ReadMode;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        atomic::{AtomicU32, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use grpcio::Environment;
use parking_lot::Mutex;
use pd_client::{PdClient, RegionRoute};
use proto::{errorpb, kvrpcpb, metapb, pdpb};
use proto_grpc::tikvpb_grpc::TikvClient;

mod store_client;
use region_cache::RegionCache;
pub(crate) use store_client::StoreClient;
use util::security::Credentials;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PD could not be reached or refused.
    #[error(transparent)]
    Pd(#[from] pd_client::Error),
    /// The store rejected the request (not a routing problem: retrying will not help).
    #[error("store error: {0}")]
    Store(String),
    /// The request kept failing until the deadline.
    #[error("gave up after {elapsed:?}: {last}")]
    Timeout {
        /// How long it tried.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
    /// An argument makes no sense.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A write's outcome is unknown: it may or may not have been applied (the store did
    /// not answer in time, or the connection failed after the request was sent). In the
    /// client's session such a write is sent again (the store applies it once and answers
    /// a resend with the first answer); this is returned only when the deadline passed
    /// after such a try, or the store forgot the session. Without a session it is never
    /// retried, since applying it twice could be wrong (a compare-and-swap that succeeded
    /// would then report failure).
    #[error("undetermined: {0}")]
    Undetermined(String),
    /// Another transaction wrote a key after this one started: nothing was written;
    /// the transaction may be retried.
    #[error("write conflict on key {}: committed at {conflict_commit_ts}, after this transaction started at {start_ts}", String::from_utf8_lossy(key))]
    Conflict {
        /// The key both wrote.
        key: Vec<u8>,
        /// This transaction's start.
        start_ts: u64,
        /// When the other committed.
        conflict_commit_ts: u64,
    },
    /// An insert found the key present.
    #[error("key {} already exists", String::from_utf8_lossy(.0))]
    AlreadyExists(Vec<u8>),
    /// The transaction can no longer commit (another rolled it back, or a store refused
    /// it, saying why).
    #[error("transaction aborted: {0}")]
    Aborted(String),
}

impl Error {
    /// A key-level error from a store, which may say that a write's outcome is unknown.
    fn from_store(msg: String) -> Error {
        match msg.strip_prefix(util::wire::UNDETERMINED) {
            Some(why) => Error::Undetermined(why.to_string()),
            None => Error::Store(msg),
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A key-value pair.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Most split keys sent in one request.
pub const SPLIT_KEYS_PER_REQUEST: usize = 256;

/// Most pairs one scan request asks a store for at first; longer scans page. A page a
/// store finds too large (past its `server.max-response-size`) is asked again in halves.
pub const SCAN_PAGE: usize = 1024;

/// Whether a store refused an answer for its size (the name of the limit is the contract).
fn too_large(e: &Error) -> bool {
    matches!(e, Error::Store(msg) if msg.contains("server.max-response-size"))
}

/// What a compare-and-swap found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the new value was written.
    pub succeed: bool,
    /// The value before (`None`: the key did not exist).
    pub previous: Option<Vec<u8>>,
}

/// Waits between tries inside the client's deadline: from 20 ms, doubling up to 500 ms,
/// jittered. Also counts the tries no store answered in time: each such try doubles the
/// next one's wait for an answer, so that a store slower than the try timeout (but alive)
/// still answers within the deadline.
struct Backoff {
    retry: util::retry::Retry,
    /// Tries left unanswered so far.
    unanswered: AtomicU32,
}

impl Backoff {
    fn new(timeout: Duration) -> Self {
        Backoff {
            retry: util::retry::Retry::new(
                timeout,
                Duration::from_millis(20),
                Duration::from_millis(500),
            ),
            unanswered: AtomicU32::new(0),
        }
    }

    /// Waits before the next try, or gives up with `last` if the deadline would pass.
    async fn wait(&mut self, last: String) -> Result<()> {
        if self.retry.wait().await {
            return Ok(());
        }
        Err(Error::Timeout {
            elapsed: self.retry.elapsed(),
            last,
        })
    }

    /// How long the next try may wait for an answer.
    fn remaining(&self) -> Duration {
        self.retry.remaining()
    }

    /// How long the next try waits for an answer, from `base` for the first: doubled for
    /// each earlier try that got none, within the deadline. Whether it is the try timeout
    /// (not the deadline) that bounds it.
    fn try_wait(&self, base: Duration) -> (Duration, bool) {
        let doublings = self.unanswered.load(Relaxed).min(16);
        let t = base.saturating_mul(1 << doublings);
        let left = self.remaining();
        (t.min(left), t < left)
    }

    /// A try got no answer within its wait.
    fn went_unanswered(&self) {
        self.unanswered.fetch_add(1, Relaxed);
    }
}

enum Attempt<T> {
    Done(T),
    Retry(String),
    /// A replica refused a stale read (data_is_not_ready): the leader serves it next.
    NotReady(String),
}

/// A write that some regions applied and one refused or did not answer is neither done
/// nor undone: the caller must learn that its outcome is undetermined. So is a session
/// write whose deadline passed after a try that may have applied.
fn partly_written(kind: Kind<'_>, some_applied: bool, e: Error) -> Error {
    match e {
        Error::Undetermined(_) => e,
        e if kind.is_write() && some_applied => {
            Error::Undetermined(format!("applied in some regions only: {e}"))
        }
        e => settled(kind, e),
    }
}

/// A session write that ends in any error after a try that may have applied is
/// undetermined: that try may still apply.
fn settled(kind: Kind<'_>, e: Error) -> Error {
    match (kind, e) {
        (_, e @ Error::Undetermined(_)) => e,
        (Kind::Write(Some(t)), Error::Timeout { last, .. }) if t.maybe_applied() => {
            Error::Undetermined(format!("resent until the deadline: {last}"))
        }
        (Kind::Write(Some(t)), e) if t.maybe_applied() => {
            Error::Undetermined(format!("{e}, after a try whose outcome is unknown"))
        }
        (_, e) => e,
    }
}

/// Whether a request changes state. A write that may have been applied is resent only
/// in a session (the store then answers it once); without one it is never retried.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// Changes nothing, or changes it the same way however often it is sent (every
    /// Percolator command), served as the mode says (commands: by the leader).
    Read(ReadMode),
    /// A read the store answers only after work that grows with the region (a
    /// consistency hash): one try waits out the deadline, since a resend repeats the work.
    Slow,
    Write(Option<&'a session::Ticket>),
}

impl Kind<'_> {
    fn is_write(&self) -> bool {
        matches!(self, Kind::Write(_))
    }

    /// Whether one try may take what is left of the deadline: a write outside a session
    /// (a second try could apply it twice) and a slow read.
    fn waits_out_the_deadline(&self) -> bool {
        matches!(self, Kind::Write(None) | Kind::Slow)
    }

    /// What to send after a try that failed: a read that went to a replica goes to the
    /// leader (the same replica, picked again, may fail the same way until the deadline:
    /// one cut off from its leader, or silent).
    fn after_failed_try(self) -> Self {
        match self {
            Kind::Read(_) => Kind::Read(ReadMode::Leader),
            other => other,
        }
    }
}

/// Whether a failed call certainly never reached the store (gRPC could not connect, or
/// it was still queued when its batch stream failed), so that even a write may be
/// retried.
fn never_sent(e: &grpcio::Error) -> bool {
    could_not_connect(e)
        || matches!(e, grpcio::Error::RpcFailure(s) if s.message().starts_with(batch::NOT_SENT))
}

/// Whether a failed call could not reach the store at all: the store is passed over for
/// a while.
fn could_not_connect(e: &grpcio::Error) -> bool {
    match e {
        grpcio::Error::RpcFailure(s) => {
            s.code() == grpcio::RpcStatusCode::UNAVAILABLE
                && (s.message().contains("failed to connect")
                    || s.message().contains("DNS resolution failed"))
        }
        _ => false,
    }
}

/// Whether a failed call was refused for what it is (too large, not understood, not
/// allowed), so that sending it again, anywhere, fails the same way.
fn refused_as_sent(e: &grpcio::Error) -> bool {
    use grpcio::RpcStatusCode as C;
    matches!(e, grpcio::Error::RpcFailure(s) if [
        C::INVALID_ARGUMENT,
        C::UNIMPLEMENTED,
        C::RESOURCE_EXHAUSTED,
        C::PERMISSION_DENIED,
        C::UNAUTHENTICATED,
    ]
    .contains(&s.code()))
}

/// How long a store that could not be dialed, or did not answer a try, is passed over
/// for a region's other peers.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

/// How long the first try of a read, a transactional command or a session write waits
/// for the store's answer before the request goes elsewhere: a store cut off by a
/// partition, or paused, resets nothing, and its region elects a new leader within
/// seconds, so waiting out the whole deadline on it would turn a short failover into a
/// failed request. Each try left unanswered doubles the next one's wait, so a store that
/// is slow but alive still answers. Sending these again is safe: reads and Percolator
/// commands change nothing twice, and a region answers a session write's resend from
/// its session. A write outside a session, and a consistency hash, wait out the
/// deadline on one try.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a store is passed over (for every region it leads, by this client).
#[derive(Clone, Copy)]
struct Unreachable {
    since: Instant,
    /// It took the request and gave no answer (rather than refusing the connection): a
    /// replica still naming it leader has not noticed yet, so that does not clear the
    /// mark.
    silent: bool,
}

/// A connection to a Flotilla cluster.
pub struct Client {
    pd: Arc<PdClient>,
    env: Arc<Environment>,
    /// What the channels to stores are opened with.
    creds: Credentials,
    cache: Mutex<RegionCache>,
    stores: Mutex<HashMap<u64, StoreClient>>,
    /// Stores that could not be dialed or did not answer lately: a request for a region
    /// led from one goes to another replica, which answers with the new leader (and
    /// wakes the region if it hibernates).
    unreachable: Mutex<HashMap<u64, Unreachable>>,
    timeout: Duration,
    /// How long one try waits for an answer (see [`TRY_TIMEOUT`]).
    try_timeout: Duration,
    /// Numbers raw writes so a resend applies once; `None`: TiKV's behaviour.
    session: Option<Arc<session::Session>>,
    /// Where reads go unless a request says otherwise.
    read_mode: ReadMode,
    /// The zone this client runs in (for `ReadMode::Closest` and stale reads).
    zone: Option<String>,
    /// Each store's zone (its `zone` label), learnt from PD.
    zones: Mutex<HashMap<u64, String>>,
    /// Spreads follower and stale reads over the replicas.
    next_replica: std::sync::atomic::AtomicUsize,
}

fn context(route: &RegionRoute, leader: &metapb::Peer) -> kvrpcpb::Context {
    let mut c = kvrpcpb::Context::default();
    c.set_region_id(route.region.get_id());
    c.set_region_epoch(route.region.get_region_epoch().clone());
    c.set_peer(leader.clone());
    c
}

/// Whether a region error means "ask again elsewhere or later" (as opposed to a refusal
/// carried in a region error because the response has no other error field).
fn is_routing_error(e: &errorpb::Error) -> bool {
    e.has_not_leader()
        || e.has_epoch_not_match()
        || e.has_region_not_found()
        || e.has_key_not_in_region()
        || e.has_stale_command()
        || e.has_server_is_busy()
}

/// Whether a store refused a request only because it serves as many as it may at once
/// (`server.max-inflight-requests`, `server.stream-max-inflight`): it still leads, and
/// asking PD again would only move the load there. (A read that timed out is busy too,
/// but its store may have lost the lead.)
fn refused_for_load(e: &errorpb::Error) -> bool {
    e.has_server_is_busy() && e.get_server_is_busy().get_reason().contains("-inflight")
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key must not be empty".into()));
    }
    Ok(())
}

impl Client {
    /// Connects through PD; every operation retries for up to `timeout`.
    pub async fn connect(pd_endpoints: &[String], timeout: Duration) -> Result<Client> {
        Self::connect_with(pd_endpoints, timeout, Credentials::default()).await
    }

    /// Like [`Client::connect`], dialing with `creds`: TLS certificates, and for an
    /// operator the cluster secret, which the calls that change placement (moves,
    /// leader transfers, store deletion) require.
    pub async fn connect_with(
        pd_endpoints: &[String],
        timeout: Duration,
        creds: Credentials,
    ) -> Result<Client> {
        Self::connect_within(pd_endpoints, timeout, timeout, creds).await
    }

    /// Like [`Client::connect_with`], giving up after `connect_timeout` if no PD
    /// answers.
    pub async fn connect_within(
        pd_endpoints: &[String],
        connect_timeout: Duration,
        timeout: Duration,
        creds: Credentials,
    ) -> Result<Client> {
        let logger = util::logger::discard();
        let pd = PdClient::connect_within(
            pd_endpoints,
            connect_timeout,
            timeout,
            creds.clone(),
            logger,
        )
        .await?;
        Ok(Client {
            pd,
            creds,
            env: Arc::new(
                grpcio::EnvBuilder::new()
                    .cq_count(1)
                    .name_prefix("client")
                    .build(),
            ),
            cache: Mutex::default(),
            stores: Mutex::default(),
            unreachable: Mutex::default(),
            timeout,
            try_timeout: TRY_TIMEOUT,
            session: Some(session::Session::new()),
            read_mode: ReadMode::Leader,
            zone: None,
            zones: Mutex::default(),
            next_replica: Default::default(),
        })
    }

    /// This client without a session: a raw write whose outcome is unknown is reported
    /// undetermined instead of sent again (TiKV's behaviour; for comparisons).
    pub fn without_session(mut self) -> Client {
        self.session = None;
        self
    }

    /// This client with the first try of a read, a transactional command or a session
    /// write waiting `d` for an answer before the request goes to another replica (see
    /// [`TRY_TIMEOUT`]).
    pub fn with_try_timeout(mut self, d: Duration) -> Client {
        self.try_timeout = d;
        self
    }

    /// This client with reads served as `mode` unless a request says otherwise.
    pub fn with_read_mode(mut self, mode: ReadMode) -> Client {
        self.read_mode = mode;
        self
    }

    /// This client in `zone` (the `zone` label of the stores next to it): `closest` and
    /// stale reads go to a replica there when the region has one.
    pub fn with_zone(mut self, zone: Option<String>) -> Client {
        self.zone = zone.filter(|z| !z.is_empty());
        self
    }

    /// Where reads go by default.
    pub fn read_mode(&self) -> ReadMode {
        self.read_mode
    }

    /// A number for the next raw write, if this client has a session.
    fn ticket(&self) -> Option<session::Ticket> {
        self.session.as_ref().map(|s| s.number())
    }

    /// A client on the same PD connection with a region cache of its own.
    fn with_own_routes(&self) -> Client {
        Client {
            pd: self.pd.clone(),
            env: self.env.clone(),
            creds: self.creds.clone(),
            cache: Mutex::default(),
            stores: Mutex::default(),
            unreachable: Mutex::default(),
            timeout: self.timeout,
            try_timeout: self.try_timeout,
            session: self.session.clone(),
            read_mode: self.read_mode,
            zone: self.zone.clone(),
            zones: Mutex::default(),
            next_replica: Default::default(),
        }
    }

    /// A client of the same cluster whose calls carry `token` (a user's, from a login)
    /// instead of this one's: a new PD connection and new store channels.
    pub async fn with_token(&self, token: Option<String>) -> Result<Client> {
        let creds = Credentials {
            token,
            ..self.creds.clone()
        };
        let c = Self::connect_with(self.pd.endpoints(), self.timeout, creds).await?;
        Ok(c.with_read_mode(self.read_mode)
            .with_zone(self.zone.clone()))
    }

    /// How long an operation may retry.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The PD client, for admin look-ups.
    pub fn pd(&self) -> &PdClient {
        &self.pd
    }

    async fn locate(&self, key: &[u8]) -> Result<RegionRoute> {
        if let Some(r) = self.cache.lock().get(key).filter(|r| r.leader.is_some()) {
            return Ok(r);
        }
        let mut route = self.pd.get_region(key).await?;
        if keys::txn::is_encoded(key) {
            // PD shows a lookup by an encoded key the region rounded to encodings (what
            // TiKV's transactional clients need); routing raw keys and walking regions
            // need its true boundaries.
            route = self.pd.get_region_by_id(route.region.get_id()).await?;
        }
        self.cache.lock().insert(route.clone());
        Ok(route)
    }

    /// Like `locate`, but retries PD failures (a cluster still starting has no region yet)
    /// until `backoff`'s deadline.
    async fn locate_retrying(&self, key: &[u8], backoff: &mut Backoff) -> Result<RegionRoute> {
        loop {
            match self.locate(key).await {
                Err(Error::Pd(e)) => backoff.wait(e.to_string()).await?,
                other => return other,
            }
        }
    }

    async fn store(&self, store_id: u64) -> Result<StoreClient> {
        if let Some(c) = self.stores.lock().get(&store_id) {
            return Ok(c.clone());
        }
        let (store, _) = self.pd.get_store(store_id).await?;
        self.learn_zone(&store);
        let builder = util::grpc::channel(self.env.clone())
            .max_receive_message_len(64 << 20)
            .max_send_message_len(64 << 20);
        let ch = self.creds.connect(builder, store.get_address());
        let client = StoreClient::new(TikvClient::new(ch), &self.creds);
        self.stores.lock().insert(store_id, client.clone());
        Ok(client)
    }

    /// Learns from a region error; says why the request will be retried.
    fn on_region_error(
        &self,
        route: &RegionRoute,
        leader: &metapb::Peer,
        e: &errorpb::Error,
    ) -> String {
        let mut cache = self.cache.lock();
        let id = route.region.get_id();
        if e.has_not_leader() && e.get_not_leader().get_leader().get_id() != 0 {
            let named = e.get_not_leader().get_leader();
            // A replica names a leader on a store this client could not dial: that store
            // may be back (restarted); dial it again rather than asking replicas in a
            // loop until the mark expires. If it is still gone, the dial fails at once and
            // marks it again. A store that took a try and went silent costs a whole try
            // to find out again, so its mark stands until it expires.
            let mut down = self.unreachable.lock();
            if down.get(&named.get_store_id()).is_some_and(|u| !u.silent) {
                down.remove(&named.get_store_id());
            }
            cache.set_leader(id, named.clone());
        } else if e.has_epoch_not_match()
            && !e.get_epoch_not_match().get_current_regions().is_empty()
            // A follower or learner may lag behind the leader's view of the region (or
            // know nothing of it yet): only the leader's regions go into the cache.
            && route.leader.as_ref().is_some_and(|l| l.get_id() == leader.get_id())
        {
            cache.invalidate(id);
            for r in e.get_epoch_not_match().get_current_regions() {
                // The store that answered holds these regions; its peer is the best guess
                // for their leader.
                let leader = r
                    .get_peers()
                    .iter()
                    .find(|p| p.get_store_id() == leader.get_store_id())
                    .cloned();
                cache.insert(RegionRoute {
                    region: r.clone(),
                    leader,
                    isolation: None,
                });
            }
        } else if !refused_for_load(e) {
            cache.invalidate(id);
        }
        e.get_message().to_string()
    }

    /// Runs `call` against the leader of the region holding `key`, retrying on routing
    /// failures until the deadline. Returns the result and the route that served it.
    async fn on_region<T, F, Fut>(
        &self,
        kind: Kind<'_>,
        key: &[u8],
        call: F,
    ) -> Result<(T, RegionRoute)>
    where
        F: Fn(StoreClient, kvrpcpb::Context, RegionRoute) -> Fut,
        Fut: Future<
            Output = std::result::Result<(Option<errorpb::Error>, String, T), grpcio::Error>,
        >,
    {
        let mut backoff = Backoff::new(self.timeout);
        let mut kind = kind;
        loop {
            let tried = self.attempt(kind, key, &backoff, &call).await;
            match tried.map_err(|e| settled(kind, e))? {
                (Attempt::Done(t), route) => return Ok((t, route)),
                (Attempt::NotReady(_), _) => kind = Kind::Read(ReadMode::Leader),
                (Attempt::Retry(last), _) => {
                    kind = kind.after_failed_try();
                    backoff.wait(last).await.map_err(|e| settled(kind, e))?
                }
            }
        }
    }

    async fn attempt<T, F, Fut>(
        &self,
        kind: Kind<'_>,
        key: &[u8],
        backoff: &Backoff,
        call: &F,
    ) -> Result<(Attempt<T>, RegionRoute)>
    where
        F: Fn(StoreClient, kvrpcpb::Context, RegionRoute) -> Fut,
        Fut: Future<
            Output = std::result::Result<(Option<errorpb::Error>, String, T), grpcio::Error>,
        >,
    {
        let route = match self.locate(key).await {
            Ok(r) => r,
            Err(Error::Pd(e)) => {
                return Ok((Attempt::Retry(e.to_string()), RegionRoute::default()))
            }
            Err(e) => return Err(e),
        };
        let res = self.attempt_at(kind, route.clone(), backoff, call).await?;
        Ok((res, route))
    }

    /// One try of `call` against the leader of `route`, within what is left of `backoff`'s
    /// deadline.
    async fn attempt_at<T, F, Fut>(
        &self,
        kind: Kind<'_>,
        route: RegionRoute,
        backoff: &Backoff,
        call: F,
    ) -> Result<Attempt<T>>
    where
        F: FnOnce(StoreClient, kvrpcpb::Context, RegionRoute) -> Fut,
        Fut: Future<
            Output = std::result::Result<(Option<errorpb::Error>, String, T), grpcio::Error>,
        >,
    {
        let mode = match kind {
            Kind::Read(mode) => mode,
            _ => ReadMode::Leader,
        };
        let target = match (route.leader.clone(), mode) {
            (Some(leader), ReadMode::Leader) => Some(self.reachable_peer(&route.region, leader)),
            // Any replica serves a stale read: it needs no leader.
            (leader, ReadMode::Stale(_)) => self.read_target(&route.region, leader, mode).await,
            (Some(leader), mode) => self.read_target(&route.region, Some(leader), mode).await,
            (None, _) => None,
        };
        let Some(leader) = target else {
            // PD knows the region but not its leader yet (it restarted, or an election is
            // under way): ask again after a backoff.
            self.cache.lock().invalidate(route.region.get_id());
            let why = format!("no leader known for region {}", route.region.get_id());
            return Ok(Attempt::Retry(why));
        };
        let client = match self.store(leader.get_store_id()).await {
            Ok(c) => c,
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
        };
        // A store that accepted the connection and then stopped answering (paused, or cut
        // off mid-request) must not hold the caller past its deadline.
        let mut ctx = context(&route, &leader);
        mode.stamp(&mut ctx);
        if let Kind::Write(Some(ticket)) = kind {
            ticket.stamp(&mut ctx);
        }
        let (wait, bounded) = match kind.waits_out_the_deadline() {
            true => (backoff.remaining(), false),
            false => backoff.try_wait(self.try_timeout),
        };
        let answer = tokio::time::timeout(wait, call(client, ctx, route.clone())).await;
        // Silent: the try timeout ran out, not the deadline.
        let silent = answer.is_err() && bounded;
        if silent {
            backoff.went_unanswered();
        }
        let answer = answer.unwrap_or_else(|_| {
            Err(grpcio::Error::RpcFailure(grpcio::RpcStatus::with_message(
                grpcio::RpcStatusCode::DEADLINE_EXCEEDED,
                format!("no answer within {wait:?}"),
            )))
        });
        match answer {
            Ok((Some(re), _, _)) if re.has_data_is_not_ready() => {
                Ok(Attempt::NotReady(re.get_message().to_string()))
            }
            Ok((Some(re), _, _)) if !is_routing_error(&re) => {
                Err(Error::from_store(re.get_message().to_string()))
            }
            Ok((Some(re), _, _)) => Ok(Attempt::Retry(self.on_region_error(&route, &leader, &re))),
            Ok((None, err, _)) if !err.is_empty() => match (kind, Error::from_store(err)) {
                (Kind::Write(Some(t)), Error::Undetermined(why)) if t.resend_after(&why) => {
                    Ok(Attempt::Retry(why))
                }
                (Kind::Write(Some(_)), Error::Store(why))
                    if session::Ticket::refused_for_its_age(&why) =>
                {
                    Ok(Attempt::Retry(why))
                }
                (_, e) => Err(e),
            },
            Ok((None, _, t)) => Ok(Attempt::Done(t)),
            Err(e) if !kind.is_write() && refused_as_sent(&e) => Err(Error::Store(format!(
                "store {} refused the request: {e}",
                leader.get_store_id()
            ))),
            // The client's own queue to the store is full: back off, on the same stream.
            // Or the store does not serve the stream: its client goes unary, keep it.
            Err(e) if batch::queue_full(&e) || batch::stream_unserved(&e) => {
                Ok(Attempt::Retry(e.to_string()))
            }
            Err(e) => {
                self.cache.lock().invalidate(route.region.get_id());
                self.stores.lock().remove(&leader.get_store_id());
                let why = format!("store {}: {e}", leader.get_store_id());
                let never_sent = never_sent(&e);
                if !never_sent {
                    match kind {
                        Kind::Write(Some(t)) if t.resend_after(&why) => {}
                        Kind::Write(_) => return Err(Error::Undetermined(why)),
                        Kind::Read(_) | Kind::Slow => {}
                    }
                }
                // A follower slow to catch up with its read index is not a dead store.
                if could_not_connect(&e) || (silent && mode == ReadMode::Leader) {
                    let since = Instant::now();
                    let mark = Unreachable { since, silent };
                    self.unreachable.lock().insert(leader.get_store_id(), mark);
                }
                Ok(Attempt::Retry(why))
            }
        }
    }

    /// Whether the store at `address` answers a request within `timeout` (a read with no
    /// region, which it refuses at once): a process that stopped answering shows here at
    /// once, long before PD's heartbeat threshold.
    pub async fn probe_store(
        &self,
        address: &str,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let ch = self
            .creds
            .connect(util::grpc::channel(self.env.clone()), address);
        let client = TikvClient::new(ch);
        let req = kvrpcpb::RawGetRequest::default();
        let opt = grpcio::CallOption::default().timeout(timeout);
        match client.raw_get_async_opt(&req, opt) {
            Ok(rx) => rx.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `leader`, or, if its store could not be dialed lately, a voter on a store that
    /// could: it does not serve the request, but answers with the leader it knows (a new
    /// one once elected), and a message to it wakes a hibernating region.
    fn reachable_peer(&self, region: &metapb::Region, leader: metapb::Peer) -> metapb::Peer {
        let down = self.unreachable_stores();
        if !down.contains(&leader.get_store_id()) {
            return leader;
        }
        region
            .get_peers()
            .iter()
            .find(|p| p.get_role() == metapb::PeerRole::Voter && !down.contains(&p.get_store_id()))
            .cloned()
            .unwrap_or(leader)
    }

    /// The stores marked unreachable within the last `UNREACHABLE_FOR` (older marks go).
    fn unreachable_stores(&self) -> Vec<u64> {
        let mut down = self.unreachable.lock();
        down.retain(|_, u| u.since.elapsed() < UNREACHABLE_FOR);
        down.keys().copied().collect()
    }

    /// Records the store's zone (its `zone` label; none is remembered as "", so that
    /// PD is asked once per store).
    fn learn_zone(&self, store: &metapb::Store) {
        let zone = store.get_labels().iter().find(|l| l.get_key() == "zone");
        let zone = zone.map_or(String::new(), |z| z.get_value().to_string());
        self.zones.lock().insert(store.get_id(), zone);
    }

    /// The zone of a store, asked of PD the first time.
    async fn zone_of(&self, store_id: u64) -> Option<String> {
        if let Some(z) = self.zones.lock().get(&store_id) {
            return Some(z.clone());
        }
        let Ok((store, _)) = self.pd.get_store(store_id).await else {
            // Unknown, and not asked again on every read while PD cannot answer (dialing
            // the store later records its zone).
            self.zones.lock().insert(store_id, String::new());
            return None;
        };
        self.learn_zone(&store);
        self.zones.lock().get(&store_id).cloned()
    }

    /// The replica to send a read in `mode` to: for `closest`, one in this client's
    /// zone (else the leader); for `follower`, the followers in turn; for a stale read,
    /// one in this client's zone, else any replica in turn. Stores that could not be
    /// reached lately are passed over.
    async fn read_target(
        &self,
        region: &metapb::Region,
        leader: Option<metapb::Peer>,
        mode: ReadMode,
    ) -> Option<metapb::Peer> {
        let leader_id = leader.as_ref().map(metapb::Peer::get_id);
        let down = self.unreachable_stores();
        // Voters only: a learner may not have the region's data yet.
        let usable: Vec<&metapb::Peer> = region
            .get_peers()
            .iter()
            .filter(|p| p.get_role() == metapb::PeerRole::Voter)
            .filter(|p| !down.contains(&p.get_store_id()))
            .collect();
        let stale = matches!(mode, ReadMode::Stale(_));
        if let (Some(zone), ReadMode::Closest | ReadMode::Stale(_)) = (&self.zone, mode) {
            // A local leader first: it reads without a round trip to another zone.
            let mut local = None;
            for p in &usable {
                if self.zone_of(p.get_store_id()).await.as_ref() == Some(zone)
                    && (local.is_none() || Some(p.get_id()) == leader_id)
                {
                    local = Some((*p).clone());
                }
            }
            if local.is_some() {
                return local;
            }
        }
        let pool: Vec<&&metapb::Peer> = match mode {
            ReadMode::Follower => usable
                .iter()
                .filter(|p| Some(p.get_id()) != leader_id)
                .collect(),
            _ if stale => usable.iter().collect(),
            _ => vec![],
        };
        if pool.is_empty() {
            return leader.map(|l| self.reachable_peer(region, l));
        }
        let turn = self
            .next_replica
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((*pool[turn % pool.len()]).clone())
    }

    /// The value of `key`, or `None`, read as the client's read mode says.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, self.read_mode).await
    }

    /// The value of `key`, or `None`, read as `mode` says.
    pub async fn get_with(&self, key: &[u8], mode: ReadMode) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let (v, _) = self
            .on_region(Kind::Read(mode), key, |c, ctx, _| {
                let mut req = kvrpcpb::RawGetRequest::default();
                req.set_context(ctx);
                req.set_key(key.to_vec());
                async move {
                    let mut resp = c.call(req).await?;
                    let v = (!resp.not_found).then(|| resp.take_value());
                    Ok((resp.region_error.take(), resp.take_error(), v))
                }
            })
            .await?;
        Ok(v)
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.batch_put(&[(key.to_vec(), value.to_vec())]).await
    }

    /// Sets `key` to `value` for `ttl` (whole seconds; zero: forever): after that every
    /// read finds nothing.
    pub async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.batch_put_with_ttl(&[(key.to_vec(), value.to_vec())], ttl)
            .await
    }

    /// The time to live left to `key` (zero: it never expires), or `None` if it does not
    /// exist.
    pub async fn get_key_ttl(&self, key: &[u8]) -> Result<Option<Duration>> {
        check_key(key)?;
        let (ttl, _) = self
            .on_region(Kind::Read(ReadMode::Leader), key, |c, ctx, _| {
                let mut req = kvrpcpb::RawGetKeyTTLRequest::default();
                req.set_context(ctx);
                req.set_key(key.to_vec());
                async move {
                    let mut resp = c.raw_get_key_ttl_async_opt(&req, c.opt())?.await?;
                    let ttl = (!resp.not_found).then(|| Duration::from_secs(resp.ttl));
                    Ok((resp.region_error.take(), resp.take_error(), ttl))
                }
            })
            .await?;
        Ok(ttl)
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &[u8]) -> Result<()> {
        self.batch_delete(&[key.to_vec()]).await
    }

    /// Groups items by the region that holds their keys, in key order, within `backoff`'s
    /// deadline.
    async fn group<T: Clone>(
        &self,
        items: &[T],
        key_of: impl Fn(&T) -> &[u8],
        backoff: &mut Backoff,
    ) -> Result<Vec<(RegionRoute, Vec<T>)>> {
        let mut groups: BTreeMap<Vec<u8>, (RegionRoute, Vec<T>)> = BTreeMap::new();
        for item in items {
            let route = self.locate_retrying(key_of(item), backoff).await?;
            groups
                .entry(keys::data_key(route.region.get_start_key()))
                .or_insert_with(|| (route, vec![]))
                .1
                .push(item.clone());
        }
        Ok(groups.into_values().collect())
    }

    /// Sends each region's share of `items` to its leader, all regions at once. Items
    /// whose region answered with a region error (it split, moved, or changed leader) are
    /// grouped again and retried with backoff until the deadline. Returns each region's
    /// result, in no particular order.
    async fn per_region<T, R, F, Fut>(
        &self,
        kind: Kind<'_>,
        items: &[T],
        key_of: impl Fn(&T) -> &[u8] + Copy,
        call: F,
    ) -> Result<Vec<R>>
    where
        T: Clone,
        F: Fn(StoreClient, kvrpcpb::Context, &[T]) -> Fut,
        Fut: Future<
            Output = std::result::Result<(Option<errorpb::Error>, String, R), grpcio::Error>,
        >,
    {
        for item in items {
            check_key(key_of(item))?;
        }
        let mut backoff = Backoff::new(self.timeout);
        let mut pending = items.to_vec();
        let mut out = vec![];
        let mut kind = kind;
        while !pending.is_empty() {
            let groups = match self.group(&pending, key_of, &mut backoff).await {
                Ok(g) => g,
                Err(e) => return Err(partly_written(kind, !out.is_empty(), e)),
            };
            let attempts =
                futures::future::join_all(groups.into_iter().map(|(route, items)| async {
                    let res = self
                        .attempt_at(kind, route, &backoff, |c, ctx, _| call(c, ctx, &items))
                        .await;
                    (items, res)
                }))
                .await;
            pending.clear();
            let mut last = String::new();
            let mut failure = None;
            for (items, res) in attempts {
                match res {
                    Ok(Attempt::Done(r)) => out.push(r),
                    Ok(Attempt::Retry(why)) => {
                        pending.extend(items);
                        kind = kind.after_failed_try();
                        last = why;
                    }
                    Ok(Attempt::NotReady(why)) => {
                        pending.extend(items);
                        kind = Kind::Read(ReadMode::Leader);
                        last = why;
                    }
                    // An undetermined failure says more than a definite one.
                    Err(e) => {
                        failure = match failure {
                            Some(Error::Undetermined(w)) => Some(Error::Undetermined(w)),
                            _ => Some(e),
                        }
                    }
                }
            }
            let failure = match failure {
                Some(e) => Some(e),
                None if pending.is_empty() => None,
                None => backoff.wait(last).await.err(),
            };
            if let Some(e) = failure {
                return Err(partly_written(kind, !out.is_empty(), e));
            }
        }
        Ok(out)
    }

    /// Sets every pair (atomically within each region).
    pub async fn batch_put(&self, pairs: &[KvPair]) -> Result<()> {
        self.batch_put_with_ttl(pairs, Duration::ZERO).await
    }

    /// [`Client::batch_put`], every pair living `ttl` (whole seconds; zero: forever).
    pub async fn batch_put_with_ttl(&self, pairs: &[KvPair], ttl: Duration) -> Result<()> {
        if ttl.subsec_nanos() != 0 {
            return Err(Error::InvalidArgument(format!(
                "a time to live is whole seconds, not {ttl:?}"
            )));
        }
        let ticket = self.ticket();
        self.per_region(
            Kind::Write(ticket.as_ref()),
            pairs,
            |p| &p.0,
            |c, ctx, group| {
                let mut req = kvrpcpb::RawBatchPutRequest::default();
                req.set_context(ctx);
                for (k, v) in group {
                    let mut p = kvrpcpb::KvPair::default();
                    p.set_key(k.clone());
                    p.set_value(v.clone());
                    req.mut_pairs().push(p);
                    if !ttl.is_zero() {
                        req.mut_ttls().push(ttl.as_secs());
                    }
                }
                async move {
                    let mut resp = c.call(req).await?;
                    Ok((resp.region_error.take(), resp.take_error(), ()))
                }
            },
        )
        .await?;
        Ok(())
    }

    /// The pairs of the keys that exist, in key order.
    pub async fn batch_get(&self, keys_: &[Vec<u8>]) -> Result<Vec<KvPair>> {
        self.batch_get_with(keys_, self.read_mode).await
    }

    /// [`Client::batch_get`], read as `mode` says.
    pub async fn batch_get_with(&self, keys_: &[Vec<u8>], mode: ReadMode) -> Result<Vec<KvPair>> {
        let found = self
            .per_region(
                Kind::Read(mode),
                keys_,
                |k| k,
                |c, ctx, group| {
                    let mut req = kvrpcpb::RawBatchGetRequest::default();
                    req.set_context(ctx);
                    req.set_keys(group.to_vec().into());
                    async move {
                        let mut resp = c.call(req).await?;
                        let pairs: Vec<KvPair> = resp
                            .take_pairs()
                            .into_iter()
                            .map(|mut p| (p.take_key(), p.take_value()))
                            .collect();
                        Ok((resp.region_error.take(), String::new(), pairs))
                    }
                },
            )
            .await?;
        let mut out: Vec<KvPair> = found.into_iter().flatten().collect();
        out.sort();
        Ok(out)
    }

    /// Removes every key (atomically within each region).
    pub async fn batch_delete(&self, keys_: &[Vec<u8>]) -> Result<()> {
        let ticket = self.ticket();
        self.per_region(
            Kind::Write(ticket.as_ref()),
            keys_,
            |k| k,
            |c, ctx, group| {
                let mut req = kvrpcpb::RawBatchDeleteRequest::default();
                req.set_context(ctx);
                req.set_keys(group.to_vec().into());
                async move {
                    let mut resp = c.call(req).await?;
                    Ok((resp.region_error.take(), resp.take_error(), ()))
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if it does not exist).
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<CasOutcome> {
        check_key(key)?;
        let ticket = self.ticket();
        let (out, _) = self
            .on_region(Kind::Write(ticket.as_ref()), key, |c, ctx, _| {
                let mut req = kvrpcpb::RawCASRequest::default();
                req.set_context(ctx);
                req.set_key(key.to_vec());
                req.set_value(new.to_vec());
                match expected {
                    Some(v) => req.set_previous_value(v.to_vec()),
                    None => req.previous_not_exist = true,
                }
                async move {
                    let mut resp = c.raw_compare_and_swap_async_opt(&req, c.opt())?.await?;
                    let out = CasOutcome {
                        succeed: resp.succeed,
                        previous: (!resp.previous_not_exist).then(|| resp.take_previous_value()),
                    };
                    Ok((resp.region_error.take(), resp.take_error(), out))
                }
            })
            .await?;
        Ok(out)
    }

    /// Pairs in `[start, end)` (an empty end: to the end of the key space) in key order,
    /// at most `limit`, across as many regions as it takes.
    pub async fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>> {
        self.scan_with(start, end, limit, self.read_mode).await
    }

    /// [`Client::scan`], read as `mode` says.
    pub async fn scan_with(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        mode: ReadMode,
    ) -> Result<Vec<KvPair>> {
        let mut out = vec![];
        let mut cur = start.to_vec();
        let mut page = SCAN_PAGE;
        while out.len() < limit {
            let left = (limit - out.len()).min(page);
            let res = self
                .on_region(Kind::Read(mode), &cur, |c, ctx, _| {
                    let mut req = kvrpcpb::RawScanRequest::default();
                    req.set_context(ctx);
                    req.set_start_key(cur.clone());
                    req.set_end_key(end.to_vec());
                    req.limit = left.min(u32::MAX as usize) as u32;
                    async move {
                        let mut resp = c.call(req).await?;
                        let pairs: Vec<KvPair> = resp
                            .take_kvs()
                            .into_iter()
                            .map(|mut p| (p.take_key(), p.take_value()))
                            .collect();
                        Ok((resp.region_error.take(), String::new(), pairs))
                    }
                })
                .await;
            let (pairs, route) = match res {
                Err(e) if too_large(&e) && page > 1 => {
                    page /= 2;
                    continue;
                }
                other => other?,
            };
            let full_page = pairs.len() == left;
            let next = pairs.last().map(|(k, _)| {
                let mut after = k.clone();
                after.push(0);
                after
            });
            out.extend(pairs);
            if full_page {
                // The region may hold more: go on right after the last key.
                cur = next.expect("a full page is not empty");
                continue;
            }
            let region_end = route.region.get_end_key();
            if region_end.is_empty() || (!end.is_empty() && region_end >= end) {
                break;
            }
            cur = region_end.to_vec();
        }
        Ok(out)
    }

    /// Removes every key in `[start, end)` (an empty end: to the end of the key space).
    pub async fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<()> {
        if !end.is_empty() && start >= end {
            return Err(Error::InvalidArgument(format!(
                "start {start:?} must be before end {end:?}"
            )));
        }
        let mut cur = start.to_vec();
        loop {
            let ticket = self.ticket();
            let (_, route) = self
                .on_region(Kind::Write(ticket.as_ref()), &cur, |c, ctx, route| {
                    let region_end = route.region.get_end_key().to_vec();
                    let stop = if region_end.is_empty()
                        || (!end.is_empty() && end < region_end.as_slice())
                    {
                        end.to_vec()
                    } else {
                        region_end
                    };
                    let mut req = kvrpcpb::RawDeleteRangeRequest::default();
                    req.set_context(ctx);
                    req.set_start_key(cur.clone());
                    req.set_end_key(stop);
                    async move {
                        let mut resp = c.call(req).await?;
                        Ok((resp.region_error.take(), resp.take_error(), ()))
                    }
                })
                .await?;
            let region_end = route.region.get_end_key();
            if region_end.is_empty() || (!end.is_empty() && region_end >= end) {
                return Ok(());
            }
            cur = region_end.to_vec();
        }
    }

    /// Splits region `region_id` at `split_keys`; returns every resulting region in key
    /// order, and routes to them from now on. Many keys go in several requests of at most
    /// [`SPLIT_KEYS_PER_REQUEST`] (a store's default `raftstore.max-split-keys`), each
    /// splitting the last region the one before made.
    pub async fn split_region(
        &self,
        region_id: u64,
        split_keys: &[Vec<u8>],
    ) -> Result<Vec<metapb::Region>> {
        let mut out: Vec<metapb::Region> = vec![];
        let mut target = region_id;
        for chunk in split_keys.chunks(SPLIT_KEYS_PER_REQUEST) {
            let regions = self.split_once(target, chunk).await?;
            out.pop();
            target = regions
                .last()
                .ok_or_else(|| Error::Store("a split returned no region".into()))?
                .get_id();
            out.extend(regions);
        }
        if split_keys.is_empty() {
            return self.split_once(region_id, split_keys).await;
        }
        Ok(out)
    }

    /// A region by id from PD, asking again within `backoff`'s deadline: PD may not have
    /// heard yet of a region a split just made.
    async fn region_by_id(&self, region_id: u64, backoff: &mut Backoff) -> Result<RegionRoute> {
        loop {
            match self.pd.get_region_by_id(region_id).await {
                Ok(r) => return Ok(r),
                Err(e) => backoff.wait(e.to_string()).await?,
            }
        }
    }

    async fn split_once(
        &self,
        region_id: u64,
        split_keys: &[Vec<u8>],
    ) -> Result<Vec<metapb::Region>> {
        let mut backoff = Backoff::new(self.timeout);
        loop {
            let route = self.region_by_id(region_id, &mut backoff).await?;
            let leader = route.leader.clone();
            let attempt = self
                .attempt_at(Kind::Write(None), route, &backoff, |c, ctx, _| {
                    let mut req = kvrpcpb::SplitRegionRequest::default();
                    req.set_context(ctx);
                    req.set_split_keys(split_keys.to_vec().into());
                    req.is_raw_kv = true;
                    async move {
                        let mut resp = c.split_region_async_opt(&req, c.opt())?.await?;
                        let regions = resp.take_regions().into_vec();
                        Ok((resp.region_error.take(), String::new(), regions))
                    }
                })
                .await?;
            match attempt {
                Attempt::Done(regions) => {
                    let mut cache = self.cache.lock();
                    for r in &regions {
                        // The new regions' peers on the old leader's store campaign first.
                        let leader = leader.as_ref().and_then(|l| {
                            r.get_peers()
                                .iter()
                                .find(|p| p.get_store_id() == l.get_store_id())
                                .cloned()
                        });
                        cache.insert(RegionRoute {
                            region: r.clone(),
                            leader,
                            isolation: None,
                        });
                    }
                    return Ok(regions);
                }
                Attempt::Retry(last) | Attempt::NotReady(last) => backoff.wait(last).await?,
            }
        }
    }

    /// Every region with its leader, in key order.
    pub async fn regions(&self) -> Result<Vec<RegionRoute>> {
        Ok(self.pd.scan_regions(b"", b"", 0).await?)
    }

    /// Every store with its last statistics.
    pub async fn stores(&self) -> Result<Vec<(metapb::Store, pdpb::StoreStats)>> {
        let mut out = vec![];
        for s in self.pd.get_all_stores(false).await? {
            let (store, stats) = self.pd.get_store(s.get_id()).await?;
            out.push((store, stats));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_failed_at_a_replica_goes_to_the_leader_next() {
        let modes = [
            ReadMode::Follower,
            ReadMode::Closest,
            ReadMode::Stale(Duration::from_secs(5)),
        ];
        for mode in modes {
            let next = Kind::Read(mode).after_failed_try();
            assert!(matches!(next, Kind::Read(ReadMode::Leader)), "{mode}");
        }
        assert!(matches!(Kind::Slow.after_failed_try(), Kind::Slow));
        assert!(matches!(
            Kind::Write(None).after_failed_try(),
            Kind::Write(None)
        ));
    }

    #[test]
    fn each_unanswered_try_doubles_the_next_ones_wait_within_the_deadline() {
        let s = Duration::from_secs;
        let b = Backoff::new(s(60));
        assert_eq!(b.try_wait(s(2)), (s(2), true));
        b.went_unanswered();
        assert_eq!(b.try_wait(s(2)), (s(4), true));
        b.went_unanswered();
        assert_eq!(b.try_wait(s(2)), (s(8), true));
        // Past the deadline the deadline bounds it, and an expiry is no silence.
        let short = Backoff::new(s(3));
        short.went_unanswered();
        let (wait, bounded) = short.try_wait(s(2));
        assert!(wait <= s(3) && !bounded, "{wait:?}");
    }

    #[test]
    fn an_undetermined_store_error_is_not_a_plain_refusal() {
        let e = Error::from_store(format!("{}no answer within 5s", util::wire::UNDETERMINED));
        assert!(matches!(e, Error::Undetermined(ref why) if why == "no answer within 5s"));
        assert!(matches!(
            Error::from_store("key must not be empty".into()),
            Error::Store(_)
        ));
    }

    #[test]
    fn a_batch_write_refused_in_one_region_after_another_applied_is_undetermined() {
        let refused = || Error::Store("disk full".into());
        assert!(matches!(
            partly_written(Kind::Write(None), true, refused()),
            Error::Undetermined(ref why) if why.contains("some regions only") && why.contains("disk full")
        ));
        assert!(matches!(
            partly_written(Kind::Write(None), false, refused()),
            Error::Store(_)
        ));
        assert!(matches!(
            partly_written(Kind::Read(ReadMode::Leader), true, refused()),
            Error::Store(_)
        ));
    }

    #[test]
    fn only_a_failed_connect_or_a_queued_batch_request_was_never_sent() {
        let status = |code, msg: &str| {
            grpcio::Error::RpcFailure(grpcio::RpcStatus::with_message(code, msg.to_string()))
        };
        use grpcio::RpcStatusCode as C;
        assert!(never_sent(&status(
            C::UNAVAILABLE,
            "failed to connect to all addresses"
        )));
        assert!(!never_sent(&status(C::UNAVAILABLE, "Socket closed")));
        assert!(!never_sent(&status(
            C::DEADLINE_EXCEEDED,
            "Deadline Exceeded"
        )));
        assert!(!never_sent(&grpcio::Error::RemoteStopped));
        // Queued on a batch stream that failed: never sent, but the store may be up.
        let queued = status(
            C::UNAVAILABLE,
            &format!("{} the batch stream failed (GOAWAY)", batch::NOT_SENT),
        );
        assert!(never_sent(&queued) && !could_not_connect(&queued));
    }
}
