//! The raw key-value API over the raftstore. Writes become Raft commands; reads wait for
//! a ReadIndex confirmation and then read the local engine within the region's bounds.

use std::{sync::Arc, time::Duration};

use engine::{Cf, Engine};
use futures::channel::oneshot;
use parking_lot::Mutex;
use proto::{
    kvrpcpb::Context,
    metapb,
    raft_cmdpb::{CmdType, RaftCmdRequest, Request},
};
use raftstore::{CasResult, CmdResponse, PeerMsg, RaftRouter, ReadFrom, StoreMeta};

use crate::{Error, Result};

/// Raw key-value operations on this store's regions.
#[derive(Clone)]
pub struct RawStorage {
    router: RaftRouter,
    engine: Engine,
    store_meta: Arc<Mutex<StoreMeta>>,
    limits: RawLimits,
}

/// A follower or stale read's check that its replica's data stayed in place while it read
/// the engine: no snapshot started replacing it, and the replica was not removed (its
/// data deleted) in between (see [`RawStorage::apply_guard`]).
pub(crate) struct ApplyGuard {
    meta: Arc<Mutex<StoreMeta>>,
    region_id: u64,
    /// The region's (snapshot applies started, one under way) when the read began;
    /// `None` for a leader's read (a leader is never removed nor sent a snapshot).
    before: Option<(u64, bool)>,
}

impl ApplyGuard {
    /// Fails the read if a snapshot apply was under way or started since it began, or if
    /// the replica is gone.
    pub(crate) fn check(&self) -> Result<()> {
        let Some(before) = self.before else {
            return Ok(());
        };
        let (now, present) = {
            let meta = self.meta.lock();
            let present = meta.region(self.region_id).is_some();
            (meta.snapshot_applies(self.region_id), present)
        };
        let why = if !present {
            "its replica was removed during the read"
        } else if now != before || now.1 {
            "a snapshot replaced its data during the read"
        } else {
            return Ok(());
        };
        Err(raftstore::Error::DataIsNotReady {
            region_id: self.region_id,
            peer_id: 0,
            safe_ts: 0,
            why: why.into(),
        }
        .into())
    }
}

/// The bounds every raw request is held to.
#[derive(Clone, Copy, Debug)]
pub struct RawLimits {
    /// Largest value (`raftstore.raft-entry-max-size`).
    pub max_value_size: u64,
    /// Largest answer a read may build (`server.max-response-size`).
    pub max_response_size: u64,
    /// How long a request may wait on Raft (`server.request-timeout`).
    pub timeout: Duration,
    /// Most keys one split may give (`raftstore.max-split-keys`).
    pub max_split_keys: usize,
    /// The largest staleness a raw stale read may ask for (`server.max-read-staleness`).
    pub max_read_staleness: Duration,
    /// The longest time to live a raw write may ask for (`storage.raw-max-ttl`).
    pub max_ttl: Duration,
}

impl RawLimits {
    /// The limits a store's config sets.
    pub fn of(cfg: &crate::Config) -> RawLimits {
        RawLimits {
            max_value_size: cfg.raftstore.raft_entry_max_size.as_u64(),
            max_response_size: cfg.server.max_response_size.as_u64(),
            timeout: cfg.server.request_timeout,
            max_split_keys: cfg.raftstore.max_split_keys,
            max_read_staleness: cfg.server.max_read_staleness,
            max_ttl: cfg.storage.raw_max_ttl,
        }
    }
}

/// Seconds since the Unix epoch by this store's clock: what raw expiry is measured in.
pub(crate) fn now_secs() -> u64 {
    util::clock::unix_ms() / 1000
}

/// What compactions of the default column family drop: raw values expired more than
/// `retention` ago (see `storage.raw-expired-retention`), once `armed`. The store arms it
/// only after it has checked that its raw values carry an expiry: on a directory of an
/// older layout the filter would read the last 8 bytes of a value as one.
pub fn raw_expiry_filter(
    retention: Duration,
    armed: Arc<std::sync::atomic::AtomicBool>,
) -> engine::DropFilter {
    let retention = retention.as_secs();
    engine::DropFilter(Arc::new(move |key: &[u8], value: &[u8]| {
        armed.load(std::sync::atomic::Ordering::Acquire)
            && key.first() == Some(&keys::DATA_PREFIX)
            && keys::raw::decode(value).is_some_and(|(_, at)| {
                at != keys::raw::NO_EXPIRY && at.saturating_add(retention) <= now_secs()
            })
    }))
}

/// The user's bytes of a stored raw value that is alive at `now`.
fn live(stored: Vec<u8>, now: u64) -> Option<Vec<u8>> {
    keys::raw::live_value(&stored, now).map(<[u8]>::to_vec)
}

/// Counts the bytes of an answer being built and fails once they pass the limit, so that
/// a read asking for everything cannot exhaust memory.
pub(crate) struct ResponseBudget {
    left: u64,
    limit: u64,
}

impl ResponseBudget {
    pub(crate) fn new(limit: u64) -> Self {
        ResponseBudget { left: limit, limit }
    }

    pub(crate) fn take(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let cost = key.len() as u64 + value.len() as u64 + 8;
        self.left = self.left.checked_sub(cost).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "the answer would be larger than server.max-response-size ({} bytes); ask for fewer keys",
                self.limit
            ))
        })?;
        Ok(())
    }
}

/// The column family of a raw request: only `default` (spelled "" or "default").
pub fn raw_cf(name: &str) -> Result<Cf> {
    match Cf::data_from_name(name) {
        Some(Cf::Default) => Ok(Cf::Default),
        _ => Err(Error::InvalidRequest(format!(
            "column family {name:?} is not available to the raw API (use \"default\")"
        ))),
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidRequest("key must not be empty".into()));
    }
    Ok(())
}

/// `requests` as one command for the region and peer `ctx` names; a non-zero `term`
/// refuses it if leadership changed since.
fn command(ctx: &Context, term: u64, requests: Vec<Request>) -> RaftCmdRequest {
    let mut cmd = RaftCmdRequest::default();
    let header = cmd.mut_header();
    header.set_region_id(ctx.get_region_id());
    header.set_peer(ctx.get_peer().clone());
    header.set_region_epoch(ctx.get_region_epoch().clone());
    header.set_term(term);
    cmd.set_requests(requests.into());
    cmd
}

pub(crate) fn cf_name(cf: Cf) -> String {
    cf.name().to_string()
}

impl RawStorage {
    /// Raw operations through `router`, reading `engine`.
    pub fn new(
        router: RaftRouter,
        engine: Engine,
        store_meta: Arc<Mutex<StoreMeta>>,
        limits: RawLimits,
    ) -> Self {
        RawStorage {
            router,
            engine,
            store_meta,
            limits,
        }
    }

    /// The most bytes of data one answer may carry.
    pub fn max_response_size(&self) -> u64 {
        self.limits.max_response_size
    }

    /// Checks a split's key count before it is routed anywhere.
    pub fn check_split_keys(&self, count: usize) -> Result<()> {
        let limit = self.limits.max_split_keys;
        if count > limit {
            return Err(Error::InvalidRequest(format!(
                "{count} split keys, more than raftstore.max-split-keys ({limit})"
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() as u64 > self.limits.max_value_size {
            return Err(Error::InvalidRequest(format!(
                "value of {} bytes is larger than the limit of {} bytes (raftstore.raft-entry-max-size)",
                value.len(),
                self.limits.max_value_size
            )));
        }
        Ok(())
    }

    /// The expiry of a value written at `now` to live `ttl` seconds; refuses a `ttl` over
    /// `storage.raw-max-ttl`.
    fn expire_at(&self, ttl: u64, now: u64) -> Result<u64> {
        let max = self.limits.max_ttl.as_secs();
        if ttl > max {
            return Err(Error::InvalidRequest(format!(
                "ttl {ttl}s is over storage.raw-max-ttl ({max}s)"
            )));
        }
        Ok(keys::raw::expire_at(now, ttl))
    }

    /// Sends the mail `make` builds and waits for its answer. For a command that changes
    /// state (`writes`), no answer means an unknown outcome: it may have been applied.
    async fn wait<T: Send + 'static>(
        &self,
        region_id: u64,
        writes: bool,
        make: impl FnOnce(raftstore::msg::Callback<T>) -> PeerMsg,
    ) -> Result<T> {
        self.wait_keeping(region_id, writes, (), make).await
    }

    /// Like [`Self::wait`]; `keep` is held until the command is answered (it goes with
    /// the callback), even after the caller stopped waiting: a command still in flight
    /// keeps its latches.
    async fn wait_keeping<T: Send + 'static, K: Send + 'static>(
        &self,
        region_id: u64,
        writes: bool,
        keep: K,
        make: impl FnOnce(raftstore::msg::Callback<T>) -> PeerMsg,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let cb: raftstore::msg::Callback<T> = Box::new(move |res| {
            let _ = tx.send(res);
            drop(keep);
        });
        self.router.send(region_id, make(cb))?;
        let timeout = self.limits.timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(res)) => res.map_err(|e| self.with_split_regions(e).into()),
            Ok(Err(_)) if writes => Err(Error::Undetermined(
                "the store dropped the command before answering".into(),
            )),
            Ok(Err(_)) => Err(raftstore::Error::Stopped.into()),
            Err(_) if writes => Err(Error::Undetermined(format!("no answer within {timeout:?}"))),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// An epoch mismatch after a split names the regions the old range became (as far
    /// as this store has them), so that a client can route without asking PD.
    fn with_split_regions(&self, e: raftstore::Error) -> raftstore::Error {
        match e {
            raftstore::Error::EpochNotMatch {
                reason,
                mut current,
            } => {
                if let Some(first) = current.first().cloned() {
                    current.extend(self.store_meta.lock().following(&first, 64));
                }
                raftstore::Error::EpochNotMatch { reason, current }
            }
            other => other,
        }
    }

    /// Has every replica of region `region_id` hash its data at one log index (see
    /// `raftstore::operation::consistency`); returns that index and this leader's hash.
    pub async fn compute_hash(
        &self,
        region_id: u64,
        epoch: metapb::RegionEpoch,
    ) -> Result<(u64, u64)> {
        let mut cmd = RaftCmdRequest::default();
        cmd.mut_header().set_region_id(region_id);
        cmd.mut_header().set_region_epoch(epoch);
        cmd.mut_admin_request()
            .set_cmd_type(proto::raft_cmdpb::AdminCmdType::ComputeHash);
        let resp = self
            .wait(region_id, false, |cb| PeerMsg::Command { cmd, cb })
            .await?;
        resp.hash
            .ok_or_else(|| Error::InvalidRequest("ComputeHash produced no hash".into()))
    }

    /// Whether this store still has a peer of `region_id`.
    pub(crate) fn hosts_region(&self, region_id: u64) -> bool {
        self.store_meta.lock().region(region_id).is_some()
    }

    /// This store's hash of a region at the ComputeHash entry `index`, once applied.
    pub fn region_hash(&self, region_id: u64, index: u64) -> Option<u64> {
        self.store_meta.lock().hash_at(region_id, index)
    }

    /// Splits the region of `ctx` at `keys`; returns every resulting region in key order.
    pub async fn split_region(
        &self,
        ctx: &Context,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<metapb::Region>> {
        let epoch = ctx.get_region_epoch().clone();
        self.wait(ctx.get_region_id(), true, |cb| PeerMsg::Split {
            epoch: Some(epoch),
            keys,
            cb,
        })
        .await
    }

    /// A raw write: carried through Raft as one command, in the client's session if it
    /// names one (a resend then gets the first answer instead of applying again).
    async fn write(&self, ctx: &Context, requests: Vec<Request>) -> Result<CmdResponse> {
        let mut cmd = command(ctx, 0, requests);
        if ctx.session_client_id != 0 {
            let s = cmd.mut_header().mut_session();
            s.client_id = ctx.session_client_id;
            s.seq = ctx.session_seq;
            s.acked_below = ctx.session_acked_below;
            s.retry = ctx.session_retry;
            s.sent_ms = ctx.session_sent_ms;
            s.first_sent_ms = ctx.session_first_sent_ms;
        }
        self.wait(ctx.get_region_id(), true, |cb| PeerMsg::Command { cmd, cb })
            .await
    }

    /// Carries `requests` through Raft as one command (the transaction layer's way to
    /// Raft); a non-zero `term` refuses it if leadership changed since the snapshot it
    /// was computed from. `keep` is held until the command is answered.
    pub(crate) async fn propose_keeping<K: Send + 'static>(
        &self,
        ctx: &Context,
        term: u64,
        requests: Vec<Request>,
        keep: K,
    ) -> Result<CmdResponse> {
        let cmd = command(ctx, term, requests);
        self.wait_keeping(ctx.get_region_id(), true, keep, |cb| PeerMsg::Command {
            cmd,
            cb,
        })
        .await
    }

    /// Waits until the region's state may be read linearizably on its leader; returns
    /// the region and the leader's term. Commands read so, whatever the client asked.
    pub(crate) async fn read_ready(&self, ctx: &Context) -> Result<raftstore::ReadReady> {
        self.read_ready_from(ctx, ReadFrom::Leader).await
    }

    /// Confirms by a read index that this store still leads the region, without counting
    /// as activity that keeps the region awake.
    pub(crate) async fn confirm_leadership(&self, ctx: &Context) -> Result<raftstore::ReadReady> {
        self.read_ready_from(ctx, ReadFrom::Confirm).await
    }

    /// Waits until this replica's state may be read linearizably: on the leader, or, for
    /// `ReadFrom::Replica`, on whichever replica this is, after a read index from the
    /// leader.
    async fn read_ready_from(&self, ctx: &Context, from: ReadFrom) -> Result<raftstore::ReadReady> {
        let epoch = ctx.get_region_epoch().clone();
        self.wait(ctx.get_region_id(), false, |cb| PeerMsg::Read {
            epoch,
            from,
            cb,
        })
        .await
    }

    /// [`Self::read_ready_from`] for a client's read, counted by mode and outcome.
    pub(crate) async fn client_read_ready(
        &self,
        ctx: &Context,
        from: ReadFrom,
    ) -> Result<raftstore::ReadReady> {
        let mode = match from {
            ReadFrom::Leader | ReadFrom::Confirm => "leader",
            ReadFrom::Replica(_) => "replica",
            ReadFrom::Stale(_) | ReadFrom::Bounded(_) => "stale",
        };
        let res = self.read_ready_from(ctx, from).await;
        let outcome = match &res {
            Ok(_) => "served",
            Err(Error::Raft(raftstore::Error::DataIsNotReady { .. })) => "not_ready",
            Err(_) => "error",
        };
        crate::metrics::READS
            .with_label_values(&[mode, outcome])
            .inc();
        res
    }

    /// A raw read: by the leader; by this replica after a read index if the client
    /// asked (TiKV's `replica_read`); or by this replica alone if its applied state is
    /// fresh enough for a stale read (`stale_read` with `max_staleness_ms`).
    async fn read(&self, ctx: &Context) -> Result<(metapb::Region, ApplyGuard)> {
        let from = if ctx.stale_read {
            ReadFrom::Bounded(self.staleness(ctx)?)
        } else if ctx.replica_read {
            ReadFrom::Replica(vec![])
        } else {
            ReadFrom::Leader
        };
        let region = self.client_read_ready(ctx, from).await?.region;
        Ok((region, self.apply_guard(ctx)))
    }

    /// For a follower or stale read, taken once the replica admitted it: the region's
    /// snapshot applies then, to check once the engine was read (a snapshot may start
    /// replacing the data in between, or the replica be removed).
    pub(crate) fn apply_guard(&self, ctx: &Context) -> ApplyGuard {
        let before = (ctx.stale_read || ctx.replica_read)
            .then(|| self.store_meta.lock().snapshot_applies(ctx.get_region_id()));
        ApplyGuard {
            meta: self.store_meta.clone(),
            region_id: ctx.get_region_id(),
            before,
        }
    }

    /// The staleness bound of a raw stale read, checked.
    fn staleness(&self, ctx: &Context) -> Result<Duration> {
        let max = self.limits.max_read_staleness;
        let asked = Duration::from_millis(ctx.max_staleness_ms);
        if asked.is_zero() || asked > max {
            return Err(Error::InvalidRequest(format!(
                "a raw stale read needs Context.max_staleness_ms from 1 to {} (server.max-read-staleness); it is {}",
                max.as_millis(),
                ctx.max_staleness_ms
            )));
        }
        Ok(asked)
    }

    /// The store's engine, for reads after [`Self::read_ready`].
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits requests are held to.
    pub fn limits(&self) -> &RawLimits {
        &self.limits
    }

    fn check_in(region: &metapb::Region, key: &[u8]) -> Result<()> {
        if raftstore::util::key_in_region(key, region) {
            Ok(())
        } else {
            Err(raftstore::Error::KeyNotInRegion {
                key: key.to_vec(),
                region: Box::new(region.clone()),
            }
            .into())
        }
    }

    /// One value, or `None`.
    pub async fn get(&self, ctx: &Context, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = raw_cf(cf)?;
        check_key(key)?;
        let (region, guard) = self.read(ctx).await?;
        Self::check_in(&region, key)?;
        let value = self.engine.get(cf, &keys::data_key(key))?;
        guard.check()?;
        Ok(value.and_then(|v| live(v, now_secs())))
    }

    /// The time to live left to `key` in seconds (0: it never expires), or `None` if it
    /// does not exist or expired (RawGetKeyTTL).
    pub async fn get_key_ttl(&self, ctx: &Context, cf: &str, key: &[u8]) -> Result<Option<u64>> {
        let cf = raw_cf(cf)?;
        check_key(key)?;
        let (region, guard) = self.read(ctx).await?;
        Self::check_in(&region, key)?;
        let stored = self.engine.get(cf, &keys::data_key(key))?;
        guard.check()?;
        let now = now_secs();
        Ok(stored
            .as_deref()
            .and_then(keys::raw::decode)
            .filter(|(_, at)| keys::raw::is_live(*at, now))
            .map(|(_, at)| match at {
                keys::raw::NO_EXPIRY => 0,
                at => at - now,
            }))
    }

    /// The pairs of the keys that exist.
    pub async fn batch_get(
        &self,
        ctx: &Context,
        cf: &str,
        keys_: &[Vec<u8>],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = raw_cf(cf)?;
        keys_.iter().try_for_each(|k| check_key(k))?;
        let (region, guard) = self.read(ctx).await?;
        keys_.iter().try_for_each(|k| Self::check_in(&region, k))?;
        // One view for every key: an atomic batch put is seen whole or not at all.
        let snap = self.engine.snapshot();
        let mut budget = ResponseBudget::new(self.limits.max_response_size);
        let mut out = vec![];
        let now = now_secs();
        for k in keys_ {
            if let Some(v) = snap.get(cf, &keys::data_key(k))?.and_then(|v| live(v, now)) {
                budget.take(k, &v)?;
                out.push((k.clone(), v));
            }
            fail::fail_point!("raw_batch_get_between_keys");
        }
        guard.check()?;
        Ok(out)
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, ctx: &Context, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.batch_put(ctx, cf, &[(key.to_vec(), value.to_vec())])
            .await
    }

    /// Sets every pair, atomically.
    pub async fn batch_put(
        &self,
        ctx: &Context,
        cf: &str,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        self.batch_put_ttl(ctx, cf, pairs, &[]).await
    }

    /// Sets every pair, atomically, each living `ttls[i]` seconds (0: forever; `ttls`
    /// empty: every pair forever).
    pub async fn batch_put_ttl(
        &self,
        ctx: &Context,
        cf: &str,
        pairs: &[(Vec<u8>, Vec<u8>)],
        ttls: &[u64],
    ) -> Result<()> {
        let cf = raw_cf(cf)?;
        if !ttls.is_empty() && ttls.len() != pairs.len() {
            return Err(Error::InvalidRequest(format!(
                "ttls has {} entries for {} pairs: give one per pair, or none",
                ttls.len(),
                pairs.len()
            )));
        }
        let now = now_secs();
        let mut reqs = Vec::with_capacity(pairs.len());
        for (i, (k, v)) in pairs.iter().enumerate() {
            check_key(k)?;
            self.check_value(v)?;
            let expire_at = self.expire_at(ttls.get(i).copied().unwrap_or(0), now)?;
            let mut r = Request::default();
            r.set_cmd_type(CmdType::Put);
            let put = r.mut_put();
            put.set_cf(cf_name(cf));
            put.set_key(k.clone());
            put.set_value(keys::raw::encode(v, expire_at));
            reqs.push(r);
        }
        self.write(ctx, reqs).await?;
        Ok(())
    }

    /// Removes every key, atomically.
    pub async fn batch_delete(&self, ctx: &Context, cf: &str, keys_: &[Vec<u8>]) -> Result<()> {
        let cf = raw_cf(cf)?;
        let mut reqs = Vec::with_capacity(keys_.len());
        for k in keys_ {
            check_key(k)?;
            let mut r = Request::default();
            r.set_cmd_type(CmdType::Delete);
            let del = r.mut_delete();
            del.set_cf(cf_name(cf));
            del.set_key(k.clone());
            reqs.push(r);
        }
        self.write(ctx, reqs).await?;
        Ok(())
    }

    /// Removes every key in `[start, end)` (an empty end: to the region's end).
    pub async fn delete_range(
        &self,
        ctx: &Context,
        cf: &str,
        start: &[u8],
        end: &[u8],
    ) -> Result<()> {
        let cf = raw_cf(cf)?;
        if !end.is_empty() && start >= end {
            return Err(Error::InvalidRequest(format!(
                "delete range start {start:?} must be before end {end:?}"
            )));
        }
        let mut r = Request::default();
        r.set_cmd_type(CmdType::DeleteRange);
        let dr = r.mut_delete_range();
        dr.set_cf(cf_name(cf));
        dr.set_start_key(start.to_vec());
        dr.set_end_key(end.to_vec());
        self.write(ctx, vec![r]).await?;
        Ok(())
    }

    /// Sets `key` to `value` if it holds `previous` (`None`: if it does not exist).
    pub async fn compare_and_swap(
        &self,
        ctx: &Context,
        cf: &str,
        key: &[u8],
        value: &[u8],
        previous: Option<&[u8]>,
    ) -> Result<CasResult> {
        self.compare_and_swap_ttl(ctx, cf, key, (value, 0), previous)
            .await
    }

    /// Like [`RawStorage::compare_and_swap`], the new value living `ttl` seconds (0:
    /// forever). Every replica judges the old value's expiry at this store's time,
    /// carried in the command, so that they decide alike.
    pub async fn compare_and_swap_ttl(
        &self,
        ctx: &Context,
        cf: &str,
        key: &[u8],
        (value, ttl): (&[u8], u64),
        previous: Option<&[u8]>,
    ) -> Result<CasResult> {
        let cf = raw_cf(cf)?;
        check_key(key)?;
        self.check_value(value)?;
        let now = now_secs();
        let expire_at = self.expire_at(ttl, now)?;
        let mut r = Request::default();
        r.set_cmd_type(CmdType::CompareAndSwap);
        let cas = r.mut_cas();
        cas.set_cf(cf_name(cf));
        cas.set_key(key.to_vec());
        cas.set_value(keys::raw::encode(value, expire_at));
        cas.set_now(now);
        match previous {
            Some(p) => cas.set_previous_value(p.to_vec()),
            None => cas.set_previous_not_exist(true),
        }
        let mut resp = self.write(ctx, vec![r]).await?;
        // Tests lose the answer of an applied compare-and-swap here, after holding it for
        // the fail point's argument (milliseconds), as a broken connection would.
        let lost_after: Option<u64> = (|| {
            fail::fail_point!("raw_cas_answer_lost", |ms| Some(
                ms.and_then(|m| m.parse().ok()).unwrap_or(0)
            ));
            None
        })();
        if let Some(ms) = lost_after {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            return Err(Error::Undetermined(
                "the answer was lost (fail point raw_cas_answer_lost)".into(),
            ));
        }
        resp.cas
            .pop()
            .ok_or_else(|| Error::Startup("compare-and-swap produced no result".into()))
    }

    /// Pairs in the region within `[start, end)` in key order (or, with `reverse`, within
    /// `[end, start)` from the top down), at most `limit`.
    #[allow(clippy::too_many_arguments)] // RawScanRequest's fields, as the service passes them
    pub async fn scan(
        &self,
        ctx: &Context,
        cf: &str,
        start: &[u8],
        end: &[u8],
        limit: usize,
        key_only: bool,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = raw_cf(cf)?;
        if limit == 0 {
            return Ok(vec![]);
        }
        let (region, guard) = self.read(ctx).await?;
        let (lower, upper) = if reverse { (end, start) } else { (start, end) };
        let lo = keys::data_key(lower.max(region.get_start_key()));
        let region_hi = keys::data_end_key(region.get_end_key());
        let hi = if upper.is_empty() {
            region_hi
        } else {
            keys::data_key(upper).min(region_hi)
        };
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        let mut budget = ResponseBudget::new(self.limits.max_response_size);
        let mut over = None;
        let now = now_secs();
        let mut take = |k: &[u8], v: &[u8]| -> engine::Result<bool> {
            // Expired pairs are passed over and do not count against the limit.
            let Some(v) = keys::raw::live_value(v, now) else {
                return Ok(true);
            };
            let key = keys::origin_key(k)
                .expect("data keys carry the data prefix")
                .to_vec();
            let value = if key_only { vec![] } else { v.to_vec() };
            if let Err(e) = budget.take(&key, &value) {
                over = Some(e);
                return Ok(false);
            }
            out.push((key, value));
            Ok(out.len() < limit)
        };
        if reverse {
            self.engine.scan_reverse(cf, &lo, &hi, &mut take)?;
        } else {
            self.engine.scan(cf, &lo, &hi, &mut take)?;
        }
        guard.check()?;
        match over {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// This store's replica of the region, as it is now.
    pub(crate) fn local_region(&self, region_id: u64) -> Option<metapb::Region> {
        self.store_meta.lock().region(region_id).cloned()
    }

    /// The regions this store leads, each with a context to address its leader here,
    /// leaving out those whose peer hibernates (nothing to wake them for).
    pub fn led_regions(&self) -> Vec<Context> {
        let meta = self.store_meta.lock();
        meta.regions()
            .filter(|r| meta.is_leader(r.get_id()) && !self.router.is_hibernating(r.get_id()))
            .map(|r| {
                let mut ctx = Context::default();
                ctx.set_region_id(r.get_id());
                ctx.set_region_epoch(r.get_region_epoch().clone());
                ctx
            })
            .collect()
    }

    /// Mail for a region's peer on this store.
    pub(crate) fn send(&self, region_id: u64, msg: PeerMsg) -> Result<()> {
        Ok(self.router.send(region_id, msg)?)
    }

    /// The region of `key` if this store leads it.
    pub fn local_leader_region(&self, key: &[u8]) -> Option<metapb::Region> {
        let meta = self.store_meta.lock();
        meta.region_for_key(key)
            .filter(|r| meta.is_leader(r.get_id()))
            .cloned()
    }
}
