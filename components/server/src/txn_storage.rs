//! The transactional API over the raftstore (Percolator; the rules are in the `txn`
//! crate). A command takes its keys' latches, waits for a ReadIndex, reads one snapshot,
//! and carries its writes through Raft as one command tagged with the leader term of
//! that snapshot, so that a leader that lost and regained leadership meanwhile (and so
//! may have missed another leader's writes) cannot apply it.
//!
//! Transactional keys are compared with region boundaries in their memcomparable
//! encoding (see `keys::txn`).

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use proto::{
    kvrpcpb::Context,
    metapb,
    raft_cmdpb::{CmdType, Request},
};
use txn::{
    actions::{self, CheckTxnStatus, PessimisticLock, SecondaryStatus, TxnStatus},
    commands::{self, check_distinct, check_ts, PrewriteOutcome, PrewriteRequest},
    concurrency::{ConcurrencyManager, MemLockGuard},
    latch::Latches,
    reader::Bypass,
    types::Lock,
    Modify, MvccReader, MvccTxn,
};

use crate::{
    storage::{cf_name, RawStorage, ResponseBudget},
    Error, Result,
};

/// Latch slots per store (TiKV: 2048000 by default; this is plenty for a small store).
const LATCH_SLOTS: usize = 1 << 16;
/// Locks one resolve round handles before it scans again.
const RESOLVE_BATCH: usize = 256;
/// Keys one GC command looks at.
const GC_BATCH: usize = 256;
/// Most records one GC command drops (a key with more versions takes several).
const GC_MAX_RECORDS: usize = 4096;
/// Most locks one ScanLock answer carries (its client asks again from the last one).
const SCAN_LOCK_MAX: usize = 1024;
/// How far ahead of PD's clock a request's timestamp may be. Timestamps raise `max_ts`,
/// which never comes down: one absurd timestamp would push every later async commit
/// past any client's bound.
const MAX_TS_AHEAD_MS: u64 = 60 * 60 * 1000;

/// Transactional operations on this store's regions.
#[derive(Clone)]
pub struct TxnStorage {
    kv: RawStorage,
    latches: Arc<Latches>,
    cm: ConcurrencyManager,
    pd: Arc<pd_client::PdClient>,
    /// The leader term in which each region last raised `max_ts` from PD.
    synced: Arc<Mutex<HashMap<u64, u64>>>,
    /// The latest timestamp fetched from PD, to judge requests' timestamps by.
    pd_ts: Arc<std::sync::atomic::AtomicU64>,
    /// The GC safe point this store knows of: reads below it are refused, since the
    /// versions they need may be gone.
    gc_safe_point: Arc<std::sync::atomic::AtomicU64>,
}

/// What one command leaves for the caller: its answer, its writes, and in-memory locks
/// to keep until the writes are applied.
type Outcome<T> = (T, MvccTxn, Option<MemLockGuard>);

impl TxnStorage {
    /// Transactions over `kv`'s Raft and engine, with timestamps from `pd`.
    pub fn new(kv: RawStorage, pd: Arc<pd_client::PdClient>) -> Self {
        TxnStorage {
            kv,
            latches: Arc::new(Latches::new(LATCH_SLOTS)),
            cm: ConcurrencyManager::default(),
            pd,
            synced: Arc::default(),
            pd_ts: Arc::default(),
            gc_safe_point: Arc::default(),
        }
    }

    /// Learns the GC safe point (before any version below it is dropped).
    pub fn set_gc_safe_point(&self, safe_point: u64) {
        self.gc_safe_point
            .fetch_max(safe_point, std::sync::atomic::Ordering::Relaxed);
    }

    /// Admits a read at `ts`: not far ahead of PD, not below the GC safe point.
    async fn admit_read(&self, ts: u64) -> Result<()> {
        self.above_safe_point("a read", ts)?;
        self.admit_ts(&[ts]).await
    }

    /// Refuses `what` at `ts` below the GC safe point: the versions a read there needs,
    /// and the records a transaction that old must meet (deletes, rollbacks), may be gone.
    fn above_safe_point(&self, what: &str, ts: u64) -> Result<()> {
        let safe_point = self
            .gc_safe_point
            .load(std::sync::atomic::Ordering::Relaxed);
        if ts < safe_point {
            return Err(Error::InvalidRequest(format!(
                "{what} at {ts} is below the GC safe point {safe_point}: versions it must see may be gone"
            )));
        }
        Ok(())
    }

    /// Refuses timestamps (other than read-latest) far ahead of PD's clock.
    async fn admit_ts(&self, ts: &[u64]) -> Result<()> {
        use std::sync::atomic::Ordering;
        use txn::types::physical_ms;
        let Some(max) = ts.iter().copied().filter(|t| *t != u64::MAX).max() else {
            return Ok(());
        };
        let ahead = |pd: u64| physical_ms(max) > physical_ms(pd).saturating_add(MAX_TS_AHEAD_MS);
        if !ahead(self.pd_ts.load(Ordering::Relaxed)) {
            return Ok(());
        }
        let now = self.pd.get_ts().await?;
        self.pd_ts.fetch_max(now, Ordering::Relaxed);
        if ahead(now) {
            return Err(Error::InvalidRequest(format!(
                "timestamp {max} is more than an hour ahead of PD's clock ({now})"
            )));
        }
        Ok(())
    }

    fn check_in(region: &metapb::Region, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidRequest("key must not be empty".into()));
        }
        let enc = keys::txn::encode_bytes(key);
        if raftstore::util::key_in_region(&enc, region) {
            return Ok(());
        }
        Err(raftstore::Error::KeyNotInRegion {
            key: key.to_vec(),
            region: region.clone(),
        }
        .into())
    }

    /// Runs `f` over a snapshot with `keys` latched, then applies its writes; the
    /// latches (and any in-memory locks) are held until Raft answers, even if the
    /// client stopped waiting. `sync`: raise `max_ts` from PD first if this leader term
    /// has not (async commit and 1PC).
    async fn run<T>(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        sync: bool,
        f: impl FnOnce(&MvccReader, &metapb::Region, u64) -> Result<Outcome<T>>,
    ) -> Result<T> {
        let bytes: usize = keys.iter().map(Vec::len).sum();
        let limit = self.kv.limits().max_value_size;
        if bytes as u64 > limit {
            return Err(Error::InvalidRequest(format!(
                "the keys come to {bytes} bytes, more than raftstore.raft-entry-max-size ({limit})"
            )));
        }
        // Bounded: a command stuck in Raft holds its latches until Raft answers it.
        let timeout = self.kv.limits().timeout;
        let waited = std::time::Instant::now();
        let latched =
            tokio::time::timeout(timeout, self.latches.acquire(keys.iter().map(|k| &k[..])))
                .await
                .map_err(|_| Error::Timeout(timeout))?;
        crate::metrics::TXN_LATCH_WAIT_SECONDS.observe(waited.elapsed().as_secs_f64());
        let ready = self.kv.read_ready(ctx).await?;
        for k in keys {
            Self::check_in(&ready.region, k)?;
        }
        if sync {
            self.sync_max_ts(ready.region.get_id(), ready.term).await?;
        }
        let (out, txn, mem_locks) = {
            let snap = self.kv.engine().snapshot();
            let reader = MvccReader::new(&snap);
            f(&reader, &ready.region, ready.term)?
        };
        if !txn.is_empty() {
            let size = txn.size() as u64;
            let limit = self.kv.limits().max_value_size;
            if size > limit {
                return Err(Error::InvalidRequest(format!(
                    "the command writes {size} bytes, more than raftstore.raft-entry-max-size ({limit})"
                )));
            }
            self.kv
                .propose_keeping(
                    ctx,
                    ready.term,
                    to_requests(txn.into_modifies()),
                    (latched, mem_locks),
                )
                .await?;
        }
        Ok(out)
    }

    /// Raises `max_ts` from PD once per region and leader term: a new leader knows
    /// nothing of the reads its predecessor served, and async commit must land above
    /// them.
    async fn sync_max_ts(&self, region_id: u64, term: u64) -> Result<()> {
        if self.synced.lock().get(&region_id) == Some(&term) {
            return Ok(());
        }
        let ts = self.pd.get_ts().await?;
        self.pd_ts
            .fetch_max(ts, std::sync::atomic::Ordering::Relaxed);
        self.cm.update_max_ts(ts);
        self.synced.lock().insert(region_id, term);
        Ok(())
    }

    /// Prewrites the mutations (see `txn::commands::prewrite`).
    pub async fn prewrite(&self, ctx: &Context, req: PrewriteRequest) -> Result<PrewriteOutcome> {
        self.above_safe_point("a transaction", req.props.start_ts)?;
        self.admit_ts(&[req.props.start_ts, req.props.for_update_ts])
            .await?;
        let keys: Vec<Vec<u8>> = req.mutations.iter().map(|m| m.key.clone()).collect();
        let size: usize = req
            .mutations
            .iter()
            .map(|m| m.key.len() + m.value().map_or(0, <[u8]>::len))
            .sum();
        let limit = self.kv.limits().max_value_size;
        if size as u64 > limit {
            return Err(Error::InvalidRequest(format!(
                "the mutations come to {size} bytes, more than raftstore.raft-entry-max-size ({limit})"
            )));
        }
        let sync = req.props.async_commit || req.props.one_pc;
        self.run(ctx, &keys, sync, |reader, _, _| {
            let (out, txn, guard) = commands::prewrite(reader, &self.cm, &req)?;
            Ok((out, txn, guard))
        })
        .await
    }

    /// Commits the keys of the transaction `start_ts` at `commit_ts`.
    pub async fn commit(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<()> {
        self.run(ctx, keys, false, |reader, _, _| {
            Ok((
                (),
                commands::commit(reader, keys, start_ts, commit_ts)?,
                None,
            ))
        })
        .await
    }

    /// Rolls back the keys of the transaction `start_ts`.
    pub async fn rollback(&self, ctx: &Context, keys: &[Vec<u8>], start_ts: u64) -> Result<()> {
        self.admit_ts(&[start_ts]).await?;
        self.run(ctx, keys, false, |reader, _, _| {
            Ok((
                (),
                commands::rollback(reader, &self.cm, keys, start_ts)?,
                None,
            ))
        })
        .await
    }

    /// Commits (`commit_ts` > 0) or rolls back each listed transaction's locks: on
    /// `keys`, or, with none given, every one of its locks in the region.
    pub async fn resolve_locks(
        &self,
        ctx: &Context,
        txns: &[(u64, u64)],
        keys: &[Vec<u8>],
    ) -> Result<()> {
        if txns.is_empty() {
            return Err(Error::InvalidRequest("no transaction to resolve".into()));
        }
        let starts: Vec<u64> = txns.iter().map(|(s, _)| *s).collect();
        self.admit_ts(&starts).await?;
        if !keys.is_empty() {
            return self.resolve_keys(ctx, txns, keys).await;
        }
        // Scan without latches, then resolve what was found under them; a lock taken
        // meanwhile by another transaction is not one of these.
        loop {
            let ready = self.kv.read_ready(ctx).await?;
            let (lower, upper) = region_bounds(&ready.region);
            let found: Vec<Vec<u8>> = {
                let snap = self.kv.engine().snapshot();
                let reader = MvccReader::new(&snap);
                let keep = |l: &Lock| txns.iter().any(|(s, _)| *s == l.start_ts);
                reader
                    .scan_locks(&lower, &upper, &keep, RESOLVE_BATCH)
                    .map_err(Error::from)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect()
            };
            if found.is_empty() {
                return Ok(());
            }
            self.resolve_keys(ctx, txns, &found).await?;
        }
    }

    async fn resolve_keys(
        &self,
        ctx: &Context,
        txns: &[(u64, u64)],
        keys: &[Vec<u8>],
    ) -> Result<()> {
        self.run(ctx, keys, false, |reader, _, _| {
            let mut locks = vec![];
            for k in keys {
                if let Some(l) = reader.load_lock(k)? {
                    locks.push((k.clone(), l));
                }
            }
            Ok((
                (),
                commands::resolve_locks(reader, &self.cm, txns, &locks)?,
                None,
            ))
        })
        .await
    }

    /// Drops the versions below `safe_point` that no read can see, in the region of
    /// `ctx`, a batch of keys per command; returns how many records went.
    pub async fn gc(&self, ctx: &Context, safe_point: u64) -> Result<u64> {
        let mut from: Vec<u8> = vec![];
        let mut dropped = 0u64;
        loop {
            let ready = self.kv.read_ready(ctx).await?;
            let (lower, upper) = region_bounds(&ready.region);
            let from_key = from.clone().max(lower);
            let found = {
                let snap = self.kv.engine().snapshot();
                MvccReader::new(&snap)
                    .written_keys(&from_key, &upper, GC_BATCH)
                    .map_err(Error::from)?
            };
            if found.is_empty() {
                return Ok(dropped);
            }
            let (n, finished) = self
                .run(ctx, &found, false, |reader, _, _| {
                    let mut txn = MvccTxn::new();
                    let (mut n, mut finished) = (0, None);
                    for k in &found {
                        let left = GC_MAX_RECORDS - n;
                        let m = actions::gc(&mut txn, reader, k, safe_point, left)?;
                        n += m;
                        if m == left {
                            break;
                        }
                        finished = Some(k.clone());
                    }
                    Ok(((n, finished), txn, None))
                })
                .await?;
            dropped += n as u64;
            // Past the last key done; a key cut short is looked at again.
            if let Some(k) = finished {
                from = keys::txn::after_versions(&k);
            }
        }
    }

    /// Rolls back the primary `key` of the transaction `start_ts` if its lock expired at
    /// `current_ts` (0: at once); `Committed` says it committed instead.
    pub async fn cleanup(
        &self,
        ctx: &Context,
        key: &[u8],
        start_ts: u64,
        current_ts: u64,
    ) -> Result<()> {
        check_ts("start_version", start_ts)?;
        self.admit_ts(&[start_ts]).await?;
        self.cm.update_max_ts(start_ts);
        self.run(ctx, &[key.to_vec()], false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            actions::cleanup(&mut txn, reader, key, start_ts, current_ts)?;
            Ok(((), txn, None))
        })
        .await
    }

    /// The state of a transaction by its primary key (see `txn::actions::check_txn_status`).
    pub async fn check_txn_status(&self, ctx: &Context, c: CheckTxnStatus) -> Result<TxnStatus> {
        check_ts("lock_ts", c.lock_ts)?;
        self.admit_ts(&[c.lock_ts, c.caller_start_ts]).await?;
        // No async-commit or 1PC transaction may land at or below what this decides.
        self.cm.update_max_ts(c.lock_ts);
        self.cm.update_max_ts(c.caller_start_ts);
        self.run(ctx, &[c.primary.clone()], false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            let st = actions::check_txn_status(&mut txn, reader, &c)?;
            Ok((st, txn, None))
        })
        .await
    }

    /// The state of an async-commit transaction on each of `keys`.
    pub async fn check_secondary_locks(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        start_ts: u64,
    ) -> Result<Vec<SecondaryStatus>> {
        check_ts("start_version", start_ts)?;
        self.admit_ts(&[start_ts]).await?;
        self.cm.update_max_ts(start_ts);
        self.run(ctx, keys, false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(actions::check_secondary_lock(
                    &mut txn, reader, k, start_ts,
                )?);
            }
            Ok((out, txn, None))
        })
        .await
    }

    /// Raises the TTL of the transaction's primary lock; returns the TTL in force.
    pub async fn heartbeat(
        &self,
        ctx: &Context,
        primary: &[u8],
        start_ts: u64,
        advise_ttl: u64,
    ) -> Result<u64> {
        check_ts("start_version", start_ts)?;
        self.run(ctx, &[primary.to_vec()], false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            let ttl = actions::heartbeat(&mut txn, reader, primary, start_ts, advise_ttl)?;
            Ok((ttl, txn, None))
        })
        .await
    }

    /// Takes pessimistic locks on every key (or none: a lock met or a conflict fails
    /// the request); returns each key's value when asked.
    pub async fn pessimistic_lock(
        &self,
        ctx: &Context,
        locks: &[PessimisticLock],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = locks.iter().map(|l| l.key.clone()).collect();
        for l in locks {
            check_ts("start_version", l.start_ts)?;
            check_ts("for_update_ts", l.for_update_ts)?;
            self.above_safe_point("a transaction", l.start_ts)?;
            if l.for_update_ts < l.start_ts {
                return Err(Error::InvalidRequest(
                    "for_update_ts is below start_version".into(),
                ));
            }
        }
        check_distinct(keys.iter().map(|k| &k[..]))?;
        let ts: Vec<u64> = locks.iter().map(|l| l.for_update_ts).collect();
        self.admit_ts(&ts).await?;
        self.run(ctx, &keys, false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            let mut values = Vec::with_capacity(locks.len());
            for l in locks {
                self.cm.update_max_ts(l.for_update_ts);
                values.push(actions::acquire_pessimistic_lock(&mut txn, reader, l)?);
            }
            Ok((values, txn, None))
        })
        .await
    }

    /// Removes the transaction's pessimistic locks on `keys` taken at or before
    /// `for_update_ts`.
    pub async fn pessimistic_rollback(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        start_ts: u64,
        for_update_ts: u64,
    ) -> Result<()> {
        check_ts("start_version", start_ts)?;
        check_ts("for_update_ts", for_update_ts)?;
        check_distinct(keys.iter().map(|k| &k[..]))?;
        self.run(ctx, keys, false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            for k in keys {
                actions::pessimistic_rollback(&mut txn, reader, k, start_ts, for_update_ts)?;
            }
            Ok(((), txn, None))
        })
        .await
    }

    /// Locks in `[start, end)` of the region (empty end: to its end) of transactions
    /// that started at or before `max_version`, at most `limit` (0: no limit).
    pub async fn scan_locks(
        &self,
        ctx: &Context,
        max_version: u64,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Lock)>> {
        let ready = self.kv.read_ready(ctx).await?;
        let (lower, upper) = clip(&ready.region, start, end);
        if lower >= upper {
            return Ok(vec![]);
        }
        let limit = if limit == 0 {
            SCAN_LOCK_MAX
        } else {
            limit.min(SCAN_LOCK_MAX)
        };
        let snap = self.kv.engine().snapshot();
        let keep = |l: &Lock| l.start_ts <= max_version;
        let mut locks = MvccReader::new(&snap).scan_locks(&lower, &upper, &keep, limit)?;
        // What fits in the answer (at least one lock); the client goes on from the last.
        let mut budget = ResponseBudget::new(self.kv.max_response_size());
        let fits = locks
            .iter()
            .position(|(k, l)| budget.take(k, &l.short_value).is_err())
            .map_or(locks.len(), |over| over.max(1));
        locks.truncate(fits);
        Ok(locks)
    }

    /// The values of `keys` a snapshot read at `ts` sees (absent keys left out), each
    /// key met locked with its error.
    pub async fn batch_get(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        ts: u64,
        bypass: &Bypass,
    ) -> Result<Vec<(Vec<u8>, txn::Result<Vec<u8>>)>> {
        self.admit_read(ts).await?;
        let ready = self.kv.read_ready(ctx).await?;
        for k in keys {
            Self::check_in(&ready.region, k)?;
        }
        // Memory locks are checked (and max_ts raised) before the snapshot is taken: a
        // lock applied after the snapshot must have been met here.
        let in_memory: Vec<txn::Result<()>> = keys
            .iter()
            .map(|k| self.cm.read_key(k, ts, bypass))
            .collect();
        let snap = self.kv.engine().snapshot();
        let reader = MvccReader::new(&snap);
        let mut budget = ResponseBudget::new(self.kv.max_response_size());
        let mut out = vec![];
        for (k, mem) in keys.iter().zip(in_memory) {
            let got = mem.and_then(|()| reader.get(k, ts, bypass));
            match got {
                Ok(None) => {}
                Ok(Some(v)) => {
                    budget.take(k, &v)?;
                    out.push((k.clone(), Ok(v)));
                }
                Err(e @ txn::Error::KeyIsLocked { .. }) => out.push((k.clone(), Err(e))),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// The value of `key` a snapshot read at `ts` sees.
    pub async fn get(
        &self,
        ctx: &Context,
        key: &[u8],
        ts: u64,
        bypass: &Bypass,
    ) -> Result<Option<Vec<u8>>> {
        self.admit_read(ts).await?;
        let ready = self.kv.read_ready(ctx).await?;
        Self::check_in(&ready.region, key)?;
        self.cm.read_key(key, ts, bypass)?;
        let snap = self.kv.engine().snapshot();
        Ok(MvccReader::new(&snap).get(key, ts, bypass)?)
    }

    /// Keys in `[start, end)` (empty end: the region's end) with their values at `ts`,
    /// in order (descending from `end` if `reverse`), at most `limit`; a key locked by a
    /// transaction the read must wait for comes with that error instead.
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        ctx: &Context,
        start: &[u8],
        end: &[u8],
        limit: usize,
        ts: u64,
        key_only: bool,
        reverse: bool,
        bypass: &Bypass,
    ) -> Result<Vec<(Vec<u8>, txn::Result<Vec<u8>>)>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        self.admit_read(ts).await?;
        let ready = self.kv.read_ready(ctx).await?;
        let (lower, upper) = clip(&ready.region, start, end);
        let in_range = |k: &[u8]| {
            let enc = keys::txn::lock_key(k);
            enc >= lower && enc < upper
        };
        self.cm.read_range(&in_range, ts, bypass)?;
        let mut out = vec![];
        if lower >= upper {
            return Ok(out);
        }
        let snap = self.kv.engine().snapshot();
        let reader = MvccReader::new(&snap);
        let mut budget = ResponseBudget::new(self.kv.max_response_size());
        let mut over = None;
        reader.keys_in(&lower, &upper, reverse, &mut |key| {
            match reader.get(&key, ts, bypass) {
                Ok(None) => {}
                Ok(Some(v)) => {
                    let v = if key_only { vec![] } else { v };
                    if let Err(e) = budget.take(&key, &v) {
                        over = Some(e);
                        return Ok(false);
                    }
                    out.push((key, Ok(v)));
                }
                Err(e @ txn::Error::KeyIsLocked { .. }) => out.push((key, Err(e))),
                Err(e) => return Err(e),
            }
            Ok(out.len() < limit)
        })?;
        match over {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// The lock-CF key range of the user keys `[start, end)` (empty end: unbounded) within
/// the region.
fn clip(region: &metapb::Region, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (region_lo, region_hi) = region_bounds(region);
    let lower = keys::txn::lock_key(start).max(region_lo);
    let upper = if end.is_empty() {
        region_hi
    } else {
        keys::txn::lock_key(end).min(region_hi)
    };
    (lower, upper)
}

/// The lock-CF key range of a region (its boundaries are encoded keys).
fn region_bounds(region: &metapb::Region) -> (Vec<u8>, Vec<u8>) {
    (
        keys::data_key(region.get_start_key()),
        keys::data_end_key(region.get_end_key()),
    )
}

/// A command's writes as Raft requests (keys without the data prefix, as the apply
/// side adds it).
fn to_requests(modifies: Vec<Modify>) -> Vec<Request> {
    let origin = |k: &[u8]| {
        keys::origin_key(k)
            .expect("transaction keys carry the data prefix")
            .to_vec()
    };
    modifies
        .into_iter()
        .map(|m| {
            let mut r = Request::default();
            match m {
                Modify::Put { cf, key, value } => {
                    r.set_cmd_type(CmdType::Put);
                    let p = r.mut_put();
                    p.set_cf(cf_name(cf));
                    p.set_key(origin(&key));
                    p.set_value(value);
                }
                Modify::Delete { cf, key } => {
                    r.set_cmd_type(CmdType::Delete);
                    let d = r.mut_delete();
                    d.set_cf(cf_name(cf));
                    d.set_key(origin(&key));
                }
            }
            r
        })
        .collect()
}
