//! Snapshot reads: get, batch get, scan, and the lock scan GC and resolvers use. Each
//! raises `max_ts` and checks the in-memory locks of async commits before it takes its
//! snapshot, so that a lock applied after the snapshot was met here.

use proto::kvrpcpb::Context;
use raftstore::{ReadFrom, ReadReady};
use txn::{reader::Bypass, types::Lock, MvccReader};

use super::{clip, replica, TxnStorage};
use crate::{
    storage::{ApplyGuard, ResponseBudget},
    Result,
};

/// Most locks one ScanLock answer carries (its client asks again from the last one).
const SCAN_LOCK_MAX: usize = 1024;

/// A read's pairs, each key with its value or the lock it met.
pub type ReadPairs = Vec<(Vec<u8>, txn::Result<Vec<u8>>)>;

impl TxnStorage {
    /// Admits a read at `ts`: not far ahead of PD, not below the GC safe point.
    async fn admit_read(&self, ts: u64) -> Result<()> {
        self.above_safe_point(ts, false)?;
        self.clock.admit(&[("version", ts)]).await
    }

    /// Waits until the region may be read at `ts`: on the leader; on this replica if the
    /// client asked for a replica read, with the in-memory locks the leader reported
    /// against `check` (a [`replica`] check, built only for a replica read); or, for a
    /// stale read, on this replica at once if its safe timestamp covers `ts`.
    async fn ready_for(
        &self,
        ctx: &Context,
        ts: u64,
        check: impl FnOnce() -> Vec<u8>,
    ) -> Result<(ReadReady, replica::Reported, ApplyGuard)> {
        // The lists travel in a replica read's check, to the leader and back.
        self.limits
            .check_count("context.resolved_locks", ctx.get_resolved_locks().len())?;
        self.limits
            .check_count("context.committed_locks", ctx.get_committed_locks().len())?;
        if ctx.stale_read {
            if ts == 0 || ts == u64::MAX {
                return Err(crate::Error::InvalidRequest(format!(
                    "a stale read needs a read timestamp (start_ts/version), not {ts}"
                )));
            }
            let ready = self.kv.client_read_ready(ctx, ReadFrom::Stale(ts)).await?;
            return Ok((ready, replica::Reported::none(), self.kv.apply_guard(ctx)));
        }
        if !ctx.replica_read {
            let ready = self.kv.client_read_ready(ctx, ReadFrom::Leader).await?;
            return Ok((ready, replica::Reported::none(), self.kv.apply_guard(ctx)));
        }
        let ready = self
            .kv
            .client_read_ready(ctx, ReadFrom::Replica(check()))
            .await?;
        // A leader serving the read itself answers no check.
        let reported = match ready.answer.is_empty() {
            true => replica::Reported::none(),
            false => replica::Reported::decode(&ready.answer)?,
        };
        Ok((ready, reported, self.kv.apply_guard(ctx)))
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
        let (ready, reported, guard) = self
            .ready_for(ctx, ts, || replica::keys_check(ts, &[key.to_vec()], bypass))
            .await?;
        self.check_in(&ready.region, key)?;
        reported.check(ctx.get_region_id(), &|_| true)?;
        self.cm.read_key(key, ts, bypass)?;
        let snap = self.kv.engine().snapshot();
        // Whole, unless a snapshot began replacing the region's data or the replica was
        // removed (follower and stale reads).
        guard.check()?;
        Ok(MvccReader::new(&snap).get(key, ts, bypass)?)
    }

    /// The values of `keys` a snapshot read at `ts` sees (absent keys left out), each
    /// key met locked with its error.
    pub async fn batch_get(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        ts: u64,
        bypass: &Bypass,
    ) -> Result<ReadPairs> {
        self.limits.check_count("keys", keys.len())?;
        self.admit_read(ts).await?;
        let (ready, reported, guard) = self
            .ready_for(ctx, ts, || replica::keys_check(ts, keys, bypass))
            .await?;
        for k in keys {
            self.check_in(&ready.region, k)?;
        }
        // The leader reports the first locks only: any of them fails the whole read.
        reported.check(ctx.get_region_id(), &|r| keys.iter().any(|k| k == r))?;
        let in_memory: Vec<txn::Result<()>> = keys
            .iter()
            .map(|k| self.cm.read_key(k, ts, bypass))
            .collect();
        let snap = self.kv.engine().snapshot();
        // Whole, unless a snapshot began replacing the region's data or the replica was
        // removed (follower and stale reads).
        guard.check()?;
        let reader = MvccReader::new(&snap);
        let mut budget = ResponseBudget::new(self.kv.max_response_size());
        let mut out = vec![];
        for (k, mem) in keys.iter().zip(in_memory) {
            match mem.and_then(|()| reader.get(k, ts, bypass)) {
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
    ) -> Result<ReadPairs> {
        self.check_bounds(start, end)?;
        if limit == 0 {
            return Ok(vec![]);
        }
        self.admit_read(ts).await?;
        let (ready, reported, guard) = self
            .ready_for(ctx, ts, || {
                // Within the region: the leader reports only the first locks it meets.
                let (lower, upper) = match self.kv.local_region(ctx.get_region_id()) {
                    Some(region) => clip(&region, start, end),
                    None => (vec![], vec![]),
                };
                replica::range_check(ts, &lower, &upper, bypass)
            })
            .await?;
        let (lower, upper) = clip(&ready.region, start, end);
        let in_range = |k: &[u8]| {
            let enc = keys::txn::lock_key(k);
            enc >= lower && enc < upper
        };
        reported.check(ctx.get_region_id(), &in_range)?;
        self.cm.read_range(&in_range, ts, bypass)?;
        let mut out = vec![];
        if lower >= upper {
            return Ok(out);
        }
        let snap = self.kv.engine().snapshot();
        // Whole, unless a snapshot began replacing the region's data or the replica was
        // removed (follower and stale reads).
        guard.check()?;
        let reader = MvccReader::new(&snap);
        let mut budget = ResponseBudget::new(self.kv.max_response_size());
        let mut over = None;
        reader.keys_in(&lower, &upper, reverse, &mut |key| {
            let got = match reader.get(&key, ts, bypass) {
                Ok(None) => return Ok(true),
                Ok(Some(v)) => Ok(if key_only { vec![] } else { v }),
                Err(e @ txn::Error::KeyIsLocked { .. }) => Err(e),
                Err(e) => return Err(e),
            };
            // Locked keys count too, with what their lock info carries: a range of locks
            // must not build an endless answer.
            let taken = match &got {
                Ok(v) => budget.take(&key, v),
                Err(txn::Error::KeyIsLocked { lock, .. }) => {
                    budget.take(&key, &lock.primary).and_then(|()| {
                        lock.secondaries
                            .iter()
                            .try_for_each(|s| budget.take(&[], s))
                    })
                }
                Err(_) => unreachable!("other errors returned above"),
            };
            if let Err(e) = taken {
                over = Some(e);
                return Ok(false);
            }
            out.push((key, got));
            Ok(out.len() < limit)
        })?;
        match over {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Locks in `[start, end)` of the region (empty end: to its end) of transactions
    /// that started at or before `max_version`, at most `limit` (0: the most one answer
    /// carries) and what fits in one answer (at least one lock): the client goes on from
    /// the last key returned.
    pub async fn scan_locks(
        &self,
        ctx: &Context,
        max_version: u64,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Lock)>> {
        self.check_bounds(start, end)?;
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
        // What fits in one answer (at least one lock): the client goes on from the last.
        let budget = self.kv.max_response_size() as usize;
        let locks = MvccReader::new(&snap).scan_locks(&lower, &upper, &keep, limit, budget)?;
        Ok(locks)
    }

    /// Refuses scan bounds past a Raft entry (empty is unbounded): no stored key is
    /// longer.
    fn check_bounds(&self, start: &[u8], end: &[u8]) -> Result<()> {
        let limit = self.kv.limits().max_value_size;
        for (field, k) in [("start_key", start), ("end_key", end)] {
            if k.len() as u64 > limit {
                return Err(crate::Error::InvalidRequest(format!(
                    "{field} is {} bytes, more than raftstore.raft-entry-max-size ({limit})",
                    k.len()
                )));
            }
        }
        Ok(())
    }
}
