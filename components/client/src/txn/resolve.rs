//! Deciding the fate of locks a transaction meets (by the lock's primary key), looking a
//! transaction up, and garbage collection's lock sweep.

use std::fmt;

use proto::kvrpcpb::{self, LockInfo};

use super::{boundary_key, first_error, key_error, TxnClient, PHYSICAL_SHIFT};
use crate::{Backoff, Error, ReadMode, Result};

/// A transaction's state, as its primary key tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnState {
    /// Still running (or dead, with a lock not yet expired).
    Locked {
        /// The lock's time to live, from its start.
        ttl_ms: u64,
        /// The least commit timestamp it may take.
        min_commit_ts: u64,
        /// Whether it commits asynchronously (its secondaries decide).
        async_commit: bool,
        /// Its other keys, for async commit.
        secondaries: Vec<Vec<u8>>,
    },
    /// Committed at this timestamp.
    Committed(u64),
    /// Rolled back.
    RolledBack,
    /// No lock and no record of it on its primary key.
    NotFound,
    /// The key holds a lock of the transaction, but its primary is another key.
    NotPrimary {
        /// The transaction's primary, as the lock names it.
        primary: Vec<u8>,
    },
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnState::Locked {
                ttl_ms,
                min_commit_ts,
                ..
            } => write!(f, "locked (ttl {ttl_ms} ms, min commit ts {min_commit_ts})"),
            TxnState::Committed(ts) => write!(f, "committed at {ts}"),
            TxnState::RolledBack => f.write_str("rolled back"),
            TxnState::NotFound => f.write_str("not found"),
            TxnState::NotPrimary { primary } => write!(
                f,
                "not the primary key (the transaction's primary is {:?})",
                String::from_utf8_lossy(primary)
            ),
        }
    }
}

/// What resolving a lock achieved.
pub(super) enum Resolved {
    /// The lock is gone (committed forward or rolled back).
    Done,
    /// Its transaction now commits above the reader: the reader may skip it.
    Pushed,
    /// Its transaction is alive: wait for it.
    Alive,
}

/// What a lock sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Locks below the safe point that were resolved.
    pub locks_resolved: u64,
    /// The safe point PD holds now.
    pub safe_point: u64,
}

/// Locks asked for per ScanLock request.
const SCAN_LOCK_PAGE: u32 = 256;

impl TxnClient {
    /// The state of the transaction that started at `start_ts` with primary key
    /// `primary`. Changes nothing: an expired lock is reported, not rolled back.
    pub async fn status(&self, primary: &[u8], start_ts: u64) -> Result<TxnState> {
        if start_ts == 0 {
            return Err(Error::InvalidArgument("start ts must not be 0".into()));
        }
        self.check_txn_status(primary, start_ts, 0, 0, false, false)
            .await
    }

    /// CheckTxnStatus on the primary key.
    async fn check_txn_status(
        &self,
        primary: &[u8],
        lock_ts: u64,
        caller_start_ts: u64,
        current_ts: u64,
        rollback_if_not_exist: bool,
        force_sync_commit: bool,
    ) -> Result<TxnState> {
        let (mut resp, _) = self
            .on_key(primary, ReadMode::Leader, |c, ctx| {
                let mut req = kvrpcpb::CheckTxnStatusRequest::default();
                req.set_context(ctx);
                req.set_primary_key(primary.to_vec());
                req.lock_ts = lock_ts;
                req.caller_start_ts = caller_start_ts;
                req.current_ts = current_ts;
                req.rollback_if_not_exist = rollback_if_not_exist;
                req.force_sync_commit = force_sync_commit;
                async move {
                    let mut r = c.call(req).await?;
                    Ok((r.region_error.take(), r))
                }
            })
            .await?;
        if resp.get_error().has_txn_not_found() {
            return Ok(TxnState::NotFound);
        }
        if resp.get_error().has_primary_mismatch() {
            let lock = resp.get_error().get_primary_mismatch().get_lock_info();
            return Ok(TxnState::NotPrimary {
                primary: lock.get_primary_lock().to_vec(),
            });
        }
        if resp.has_error() {
            return Err(key_error(resp.take_error()));
        }
        Ok(if resp.lock_ttl > 0 {
            let lock = resp.get_lock_info();
            TxnState::Locked {
                ttl_ms: resp.lock_ttl,
                min_commit_ts: lock.min_commit_ts,
                async_commit: lock.use_async_commit,
                secondaries: lock.get_secondaries().to_vec(),
            }
        } else if resp.commit_version > 0 {
            TxnState::Committed(resp.commit_version)
        } else {
            TxnState::RolledBack
        })
    }

    /// Settles `lock` for a caller that started at `caller_start_ts` (0: a writer or GC):
    /// rolls its transaction forward or back when it is decided or expired.
    pub(super) async fn resolve(&self, lock: &LockInfo, caller_start_ts: u64) -> Result<Resolved> {
        let now = self.current_ts().await?;
        let expired = lock_expired(lock, now);
        // Before its TTL a missing primary lock may still be on its way (a secondary's
        // prewrite can land first): only an expired transaction is rolled back for it.
        let state = match self
            .check_txn_status(
                lock.get_primary_lock(),
                lock.lock_version,
                caller_start_ts,
                now,
                expired,
                false,
            )
            .await
        {
            Ok(state) => state,
            Err(e) if unaskable(&e) => TxnState::NotPrimary {
                primary: lock.get_primary_lock().to_vec(),
            },
            Err(e) => return Err(e),
        };
        let commit_ts = match state {
            TxnState::Committed(ts) => ts,
            TxnState::RolledBack => 0,
            // Nobody can decide this lock by its primary (a buggy client named one that
            // cannot be asked, or whose own lock names another): once expired, it goes.
            TxnState::NotFound | TxnState::NotPrimary { .. } if !expired => {
                return Ok(Resolved::Alive)
            }
            TxnState::NotFound | TxnState::NotPrimary { .. } => 0,
            // The primary's TTL (which heartbeats raise) says whether its client is gone.
            TxnState::Locked {
                async_commit: true,
                ttl_ms,
                secondaries,
                ..
            } if (now >> PHYSICAL_SHIFT)
                >= (lock.lock_version >> PHYSICAL_SHIFT).saturating_add(ttl_ms) =>
            {
                return self
                    .resolve_async(lock.get_primary_lock(), lock.lock_version, secondaries)
                    .await;
            }
            TxnState::Locked { min_commit_ts, .. } => {
                let pushed = caller_start_ts > 0 && min_commit_ts > caller_start_ts;
                return Ok(if pushed {
                    Resolved::Pushed
                } else {
                    Resolved::Alive
                });
            }
        };
        self.resolve_keys(vec![lock.get_key().to_vec()], lock.lock_version, commit_ts)
            .await?;
        Ok(Resolved::Done)
    }

    /// Decides an async-commit transaction whose client is gone by its keys: committed
    /// if every key is still locked (at the highest min_commit_ts) or one committed,
    /// rolled back if one has neither (the check leaves a rollback there); then
    /// settles every key that way.
    async fn resolve_async(
        &self,
        primary: &[u8],
        start_ts: u64,
        mut keys_: Vec<Vec<u8>>,
    ) -> Result<Resolved> {
        keys_.push(primary.to_vec());
        let items: Vec<(Vec<u8>, Vec<u8>)> = keys_.iter().map(|k| (k.clone(), k.clone())).collect();
        let answers = self
            .per_region(items, |c, ctx, group: Vec<Vec<u8>>| {
                let mut req = kvrpcpb::CheckSecondaryLocksRequest::default();
                req.set_context(ctx);
                req.start_version = start_ts;
                req.set_keys(group.clone().into());
                async move {
                    let mut r = c.call(req).await?;
                    Ok((r.region_error.take(), (group.len(), r)))
                }
            })
            .await?;
        let (mut committed, mut rolled_back, mut commit_ts) = (None, false, start_ts);
        let mut fell_back = false;
        for (asked, mut r) in answers {
            if r.has_error() {
                return Err(key_error(r.take_error()));
            }
            fell_back |= r.get_locks().iter().any(|l| !l.use_async_commit);
            if r.commit_ts > 0 {
                committed = Some(r.commit_ts);
            } else if r.get_locks().len() < asked {
                rolled_back = true;
            }
            for l in r.get_locks() {
                commit_ts = commit_ts.max(l.min_commit_ts);
            }
        }
        let decision = match committed {
            Some(ts) => ts,
            // A key prewritten for two-phase commit: only the primary's commit could
            // have committed it; the primary (expired) decides.
            None if fell_back => {
                let now = self.current_ts().await?;
                match self
                    .check_txn_status(primary, start_ts, 0, now, true, true)
                    .await?
                {
                    TxnState::Committed(ts) => ts,
                    TxnState::Locked { .. } => return Ok(Resolved::Alive),
                    TxnState::RolledBack | TxnState::NotFound | TxnState::NotPrimary { .. } => 0,
                }
            }
            None if rolled_back => 0,
            None => commit_ts,
        };
        self.resolve_keys(keys_, start_ts, decision).await?;
        Ok(Resolved::Done)
    }

    /// Settles `lock` for a reader at `read_ts`, waiting out a live transaction; a lock
    /// the reader may now skip is added to `skip`.
    pub(super) async fn resolve_for_read(
        &self,
        lock: &LockInfo,
        read_ts: u64,
        skip: &mut Vec<u64>,
        backoff: &mut Backoff,
    ) -> Result<()> {
        // A test switch that breaks the rule every reader keeps: pass no lock of a
        // transaction that may still commit below the read. The nemesis must catch it.
        fail::fail_point!("txn_reader_passes_locks", |_| {
            skip.push(lock.lock_version);
            Ok(())
        });
        match self.resolve(lock, read_ts).await? {
            Resolved::Done => Ok(()),
            Resolved::Pushed => {
                skip.push(lock.lock_version);
                Ok(())
            }
            Resolved::Alive => backoff.wait(locked_by(lock)).await,
        }
    }

    /// Commits (`commit_ts` > 0) or rolls back the locks of transaction `start_ts` on
    /// `keys`.
    async fn resolve_keys(&self, keys_: Vec<Vec<u8>>, start_ts: u64, commit_ts: u64) -> Result<()> {
        let errors = self
            .key_errors(keys_, move |c, ctx, group| {
                let mut req = kvrpcpb::ResolveLockRequest::default();
                req.set_context(ctx);
                req.start_version = start_ts;
                req.commit_version = commit_ts;
                req.set_keys(group.into());
                async move {
                    let mut r = c.call(req).await?;
                    Ok((r.region_error.take(), r.take_error()))
                }
            })
            .await?;
        first_error(errors)
    }

    /// Resolves every lock of a transaction that started at or below `safe_point`, then
    /// asks PD to raise the GC safe point to it; stores then drop the versions below it
    /// that no read can see. Fails (and PD keeps its safe point) while a live transaction
    /// holds such a lock past the client's deadline.
    pub async fn gc(&self, safe_point: u64) -> Result<GcReport> {
        let locks_resolved = self.resolve_locks_below(safe_point).await?;
        Ok(GcReport {
            locks_resolved,
            safe_point: self.inner.pd.update_gc_safe_point(safe_point).await?,
        })
    }

    /// Resolves every lock, in every region, of a transaction that started at or below
    /// `safe_point`: what must hold before any store drops versions below it, since a
    /// lock's primary may be in another region. Returns how many were resolved; fails
    /// while a live transaction holds one past the client's deadline.
    pub async fn resolve_locks_below(&self, safe_point: u64) -> Result<u64> {
        let mut resolved = 0;
        let mut backoff = Backoff::new(self.inner.timeout);
        let mut cur: Vec<u8> = vec![];
        loop {
            let (locks, region_end) = self.scan_locks(&cur, safe_point).await?;
            let mut alive = None;
            for lock in &locks {
                match self.resolve(lock, 0).await? {
                    Resolved::Done | Resolved::Pushed => resolved += 1,
                    Resolved::Alive => alive = Some(locked_by(lock)),
                }
            }
            if let Some(why) = alive {
                backoff.wait(why).await?;
                continue;
            }
            // A store answers what fits in one message, however many were asked for:
            // only an empty page ends the region.
            if let Some(last) = locks.last() {
                cur = last.get_key().to_vec();
                cur.push(0);
                continue;
            }
            if region_end.is_empty() {
                return Ok(resolved);
            }
            cur = boundary_key(&region_end);
        }
    }

    /// Up to a page of locks at or below `max_ts` from `start` on, in the region holding
    /// `start`; and that region's end.
    async fn scan_locks(&self, start: &[u8], max_ts: u64) -> Result<(Vec<LockInfo>, Vec<u8>)> {
        let (mut resp, end) = self
            .on_encoded(
                &keys::txn::encode_bytes(start),
                ReadMode::Leader,
                |c, ctx| {
                    let mut req = kvrpcpb::ScanLockRequest::default();
                    req.set_context(ctx);
                    req.max_version = max_ts;
                    req.set_start_key(start.to_vec());
                    req.limit = SCAN_LOCK_PAGE;
                    async move {
                        let mut r = c.call(req).await?;
                        Ok((r.region_error.take(), r))
                    }
                },
            )
            .await?;
        if resp.has_error() {
            return Err(key_error(resp.take_error()));
        }
        Ok((resp.take_locks().into_vec(), end))
    }
}

/// Whether `lock`'s TTL, counted from its transaction's start, has passed at `now`.
fn lock_expired(lock: &LockInfo, now: u64) -> bool {
    (now >> PHYSICAL_SHIFT) >= (lock.lock_version >> PHYSICAL_SHIFT).saturating_add(lock.lock_ttl)
}

/// Whether a status check failed because the lock's primary cannot be asked at all: an
/// empty key, which no store can hold. (A store's refusal of a long key proves nothing:
/// it may only run with a lower limit than the one the lock was taken under.)
fn unaskable(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_))
}

pub(super) fn locked_by(lock: &LockInfo) -> String {
    format!(
        "key {} is locked by live transaction {}",
        String::from_utf8_lossy(lock.get_key()),
        lock.lock_version
    )
}
