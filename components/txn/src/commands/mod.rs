//! Transactional commands over one region: each checks its request, runs an action per
//! key over one snapshot, and returns its answer with the writes to apply as one batch
//! (nothing at all when it fails). The caller holds the keys' latches throughout.

use std::collections::HashSet;

use crate::{
    actions::{self, Prewrite, TxnProps},
    concurrency::ConcurrencyManager,
    types::{Lock, Mutation, Write},
    Error, MvccReader, MvccTxn, Result,
};

/// A prewrite: the keys with what to do to each, and the transaction.
#[derive(Debug, Clone, Default)]
pub struct PrewriteRequest {
    /// The keys and their mutations.
    pub mutations: Vec<Mutation>,
    /// For a pessimistic transaction, per mutation: whether the key holds its pessimistic
    /// lock (empty for an optimistic one).
    pub pessimistic: Vec<bool>,
    /// The transaction.
    pub props: TxnProps,
}

/// What a prewrite answers.
#[derive(Debug, Default)]
pub struct PrewriteOutcome {
    /// Locks of other transactions met (as errors); when any, nothing was written.
    pub locked: Vec<Error>,
    /// For async commit: the least commit timestamp of the keys prewritten here.
    pub min_commit_ts: u64,
    /// For 1PC: the timestamp the keys were committed at.
    pub one_pc_commit_ts: u64,
}

fn invalid<T>(why: impl Into<String>) -> Result<T> {
    Err(Error::InvalidRequest(why.into()))
}

/// Refuses a timestamp of 0 where one is required, naming the field.
pub fn check_ts(name: &str, ts: u64) -> Result<()> {
    if ts == 0 {
        return invalid(format!("{name} must not be 0"));
    }
    Ok(())
}

/// Refuses a key given twice in one request.
pub fn check_distinct<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
    let mut seen = HashSet::new();
    match keys.into_iter().find(|k| !seen.insert(*k)) {
        Some(k) => invalid(format!(
            "key {:?} is given twice",
            String::from_utf8_lossy(k)
        )),
        None => Ok(()),
    }
}

fn check_keys<'a>(keys: impl IntoIterator<Item = &'a [u8]> + Clone) -> Result<()> {
    let mut all = keys.clone().into_iter().peekable();
    if all.peek().is_none() {
        return invalid("no keys given");
    }
    if all.any(|k| k.is_empty()) {
        return invalid("a key must not be empty");
    }
    check_distinct(keys)
}

impl PrewriteRequest {
    fn validate(&self) -> Result<()> {
        let p = &self.props;
        check_ts("start_version", p.start_ts)?;
        if p.start_ts == u64::MAX || p.for_update_ts == u64::MAX {
            return invalid("start_version and for_update_ts must be below the greatest timestamp");
        }
        check_keys(self.mutations.iter().map(|m| &m.key[..]))?;
        if p.primary.is_empty() {
            return invalid("primary_lock must not be empty");
        }
        // tikv-client 0.4 sends the whole transaction's flags with each region's share
        // of the mutations (all alike); TiKV pairs them up in order and ignores the rest.
        // Fewer flags than mutations would leave keys unchecked: refused.
        if !self.pessimistic.is_empty() && self.pessimistic.len() < self.mutations.len() {
            return invalid(format!(
                "{} pessimistic flags for {} mutations",
                self.pessimistic.len(),
                self.mutations.len()
            ));
        }
        if self.pessimistic.iter().any(|p| *p) && p.for_update_ts == 0 {
            return invalid("a pessimistic prewrite needs for_update_ts");
        }
        if p.for_update_ts != 0 && p.for_update_ts < p.start_ts {
            return invalid("for_update_ts is below start_version");
        }
        Ok(())
    }
}

/// Prewrites every key, or none when one is locked by another transaction. For async
/// commit and 1PC, also returns the in-memory locks, to drop once the writes are
/// applied (see [`ConcurrencyManager`]).
pub fn prewrite(
    reader: &MvccReader,
    cm: &ConcurrencyManager,
    req: &PrewriteRequest,
) -> Result<(
    PrewriteOutcome,
    MvccTxn,
    Option<crate::concurrency::MemLockGuard>,
)> {
    req.validate()?;
    let p = &req.props;
    // Locks go in memory before max_ts is read: a read either raised max_ts first (and
    // the commit lands above it) or meets the lock.
    let mut guard = (p.async_commit || p.one_pc).then(|| {
        let mem = req
            .mutations
            .iter()
            .map(|m| (m.key.clone(), placeholder_lock(p)))
            .collect();
        cm.lock_in_memory(mem)
    });
    let max_ts = cm.max_ts();
    let mut txn = MvccTxn::new();
    let mut out = PrewriteOutcome::default();
    let mut locks: Vec<(Vec<u8>, Lock)> = vec![];
    for (i, m) in req.mutations.iter().enumerate() {
        let pessimistic = req.pessimistic.get(i).copied().unwrap_or(false);
        match actions::prewrite(&mut txn, reader, p, m, pessimistic, max_ts) {
            Ok(Prewrite::Locked(lock)) => {
                out.min_commit_ts = out.min_commit_ts.max(lock.min_commit_ts);
                locks.push((m.key.clone(), lock));
            }
            Ok(Prewrite::Done {
                min_commit_ts,
                committed_at,
            }) => {
                out.min_commit_ts = out.min_commit_ts.max(min_commit_ts);
                // A retried 1PC reports the timestamp it committed at.
                out.one_pc_commit_ts = out.one_pc_commit_ts.max(committed_at);
            }
            Err(e @ Error::KeyIsLocked { .. }) => out.locked.push(e),
            Err(e) => return Err(e),
        }
    }
    if !out.locked.is_empty() {
        return Ok((out, MvccTxn::new(), None));
    }
    if let Some(g) = &mut guard {
        g.set(&locks);
    }
    if p.one_pc {
        out.one_pc_commit_ts = out.one_pc_commit_ts.max(out.min_commit_ts);
        for (key, lock) in &locks {
            commit_one_pc(&mut txn, reader, key, lock, out.one_pc_commit_ts)?;
        }
    } else {
        for (key, lock) in &locks {
            txn.put_lock(key, lock);
        }
        if !p.async_commit {
            out.min_commit_ts = 0;
        }
    }
    Ok((out, txn, guard))
}

/// Writes a 1PC key's commit record in place of its lock, keeping a rollback of another
/// transaction at that timestamp (as a commit does), and removes the key's pessimistic
/// lock if it held one.
fn commit_one_pc(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    lock: &Lock,
    commit_ts: u64,
) -> Result<()> {
    let overlapped = reader
        .write_at(key, commit_ts)?
        .is_some_and(|w| w.kind == crate::types::Kind::ROLLBACK);
    let w = Write {
        kind: lock.kind,
        start_ts: lock.start_ts,
        has_short_value: lock.has_short_value,
        short_value: lock.short_value.clone(),
        has_overlapped_rollback: overlapped,
        ..Default::default()
    };
    txn.put_write(key, commit_ts, &w);
    txn.unlock(key);
    Ok(())
}

/// The in-memory lock of an async-commit or 1PC key while its commit timestamp is being
/// chosen: every read at or above the start meets it.
fn placeholder_lock(p: &TxnProps) -> Lock {
    Lock {
        kind: crate::types::Kind::PUT,
        primary: p.primary.clone(),
        start_ts: p.start_ts,
        ttl: p.lock_ttl,
        use_async_commit: p.async_commit,
        ..Default::default()
    }
}

/// Commits every key at `commit_ts`, or none.
pub fn commit(
    reader: &MvccReader,
    keys: &[Vec<u8>],
    start_ts: u64,
    commit_ts: u64,
) -> Result<MvccTxn> {
    check_ts("start_version", start_ts)?;
    check_ts("commit_version", commit_ts)?;
    if commit_ts <= start_ts {
        return invalid(format!(
            "commit_version {commit_ts} must be above start_version {start_ts}"
        ));
    }
    check_keys(keys.iter().map(|k| &k[..]))?;
    let mut txn = MvccTxn::new();
    for k in keys {
        actions::commit(&mut txn, reader, k, start_ts, commit_ts)?;
    }
    Ok(txn)
}

/// Rolls back every key, or none (a committed key fails the whole request). Raises
/// `max_ts` to the transaction's start first, so that no async-commit or 1PC commit can
/// later land on its rollback record.
pub fn rollback(
    reader: &MvccReader,
    cm: &ConcurrencyManager,
    keys: &[Vec<u8>],
    start_ts: u64,
) -> Result<MvccTxn> {
    check_ts("start_version", start_ts)?;
    cm.update_max_ts(start_ts);
    check_keys(keys.iter().map(|k| &k[..]))?;
    let mut txn = MvccTxn::new();
    for k in keys {
        actions::rollback(&mut txn, reader, k, start_ts, false)?;
    }
    Ok(txn)
}

/// Resolves the locks of finished transactions: each `(start_ts, commit_ts)` commits
/// (or, with commit_ts 0, rolls back) that transaction's `locks` found in the region.
pub fn resolve_locks(
    reader: &MvccReader,
    cm: &ConcurrencyManager,
    txns: &[(u64, u64)],
    locks: &[(Vec<u8>, Lock)],
) -> Result<MvccTxn> {
    for &(start_ts, commit_ts) in txns {
        check_ts("start_version", start_ts)?;
        if commit_ts != 0 && commit_ts <= start_ts {
            return invalid(format!(
                "commit_version {commit_ts} must be above start_version {start_ts} (or 0 to roll back)"
            ));
        }
        cm.update_max_ts(start_ts);
    }
    let fate: std::collections::HashMap<u64, u64> = txns.iter().copied().collect();
    let mut txn = MvccTxn::new();
    for (key, lock) in locks {
        let Some(&commit_ts) = fate.get(&lock.start_ts) else {
            continue;
        };
        let start_ts = lock.start_ts;
        if commit_ts == 0 {
            actions::rollback(&mut txn, reader, key, start_ts, false)?;
        } else if lock.kind == crate::types::Kind::PESSIMISTIC {
            // Left by a committed transaction that never prewrote this key: it wrote
            // nothing here, so the lock just goes.
            txn.unlock(key);
        } else {
            actions::commit(&mut txn, reader, key, start_ts, commit_ts)?;
        }
    }
    Ok(txn)
}

#[cfg(test)]
mod tests;
