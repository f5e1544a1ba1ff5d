//! Transactional commands over one region: each checks its request, runs an action per
//! key over one snapshot, and returns its answer with the writes to apply as one batch
//! (nothing at all when it fails). The caller holds the keys' latches throughout.

use crate::{
    actions::{self, Prewrite, TxnProps},
    concurrency::ConcurrencyManager,
    limits::Limits,
    txn::Batches,
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

impl PrewriteRequest {
    /// Refuses a request no correct client sends, naming the field: nothing is read or
    /// written for it.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let p = &self.props;
        check_ts("start_version", p.start_ts)?;
        if p.start_ts == u64::MAX || p.for_update_ts == u64::MAX {
            return invalid("start_version and for_update_ts must be below the greatest timestamp");
        }
        limits.check_new_keys("mutations", self.mutations.iter().map(|m| &m.key[..]))?;
        // A lock whose primary or secondaries cannot be looked up can never be resolved:
        // it would block its key for good.
        limits.check_key("primary_lock", &p.primary)?;
        // tikv-client sends the whole transaction's secondaries even for two phases,
        // where nothing keeps them: only an async-commit primary's are bounded.
        if p.async_commit {
            limits.check_count("secondaries", p.secondaries.len())?;
            for s in &p.secondaries {
                limits.check_key("a secondary", s)?;
            }
            if p.secondaries.contains(&p.primary) {
                return invalid("secondaries must not include the primary");
            }
        }
        limits.check_ttl("lock_ttl", p.lock_ttl)?;
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
        if p.max_commit_ts != 0 && p.max_commit_ts <= p.start_ts {
            return invalid("max_commit_ts must be above start_version (or 0: no bound)");
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
    limits: &Limits,
) -> Result<(
    PrewriteOutcome,
    MvccTxn,
    Option<crate::concurrency::MemLockGuard>,
)> {
    req.validate(limits)?;
    match prewrite_as(reader, cm, req, &req.props) {
        // As TiKV: past the client's bound the transaction goes on in two phases; the
        // zero min_commit_ts and one_pc_commit_ts of the answer tell the client so.
        Err(Error::CommitTsTooLarge { .. }) => {
            let two_phase = TxnProps {
                async_commit: false,
                one_pc: false,
                ..req.props.clone()
            };
            prewrite_as(reader, cm, req, &two_phase)
        }
        other => other,
    }
}

/// Prewrites `req`'s keys as `p` says (its own props, or a fallback to two phases).
fn prewrite_as(
    reader: &MvccReader,
    cm: &ConcurrencyManager,
    req: &PrewriteRequest,
    p: &TxnProps,
) -> Result<(
    PrewriteOutcome,
    MvccTxn,
    Option<crate::concurrency::MemLockGuard>,
)> {
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

/// Commits every key at `commit_ts`, or none: every key is checked before anything is
/// written, and the writes come in batches of about `budget` bytes.
pub fn commit(
    reader: &MvccReader,
    keys: &[Vec<u8>],
    start_ts: u64,
    commit_ts: u64,
    limits: &Limits,
    budget: usize,
) -> Result<Vec<MvccTxn>> {
    check_ts("start_version", start_ts)?;
    check_ts("commit_version", commit_ts)?;
    if commit_ts <= start_ts {
        return invalid(format!(
            "commit_version {commit_ts} must be above start_version {start_ts}"
        ));
    }
    limits.check_keys("keys", keys.iter().map(|k| &k[..]))?;
    // Primaries first: should a later batch be lost, no secondary is committed while
    // its primary is not (a reader would then roll the transaction back).
    let mut ordered = Vec::with_capacity(keys.len());
    let mut secondaries = vec![];
    for k in keys {
        let primary = reader.load_lock(k)?.is_some_and(|l| l.primary == *k);
        if primary {
            ordered.push(k);
        } else {
            secondaries.push(k);
        }
    }
    ordered.extend(secondaries);
    let mut batches = Batches::new(budget);
    for k in ordered {
        actions::commit(batches.txn(), reader, k, start_ts, commit_ts)?;
        batches.key_done();
    }
    Ok(batches.finish())
}

/// Rolls back every key, or none (a committed key fails the whole request), in batches
/// of about `budget` bytes. Raises
/// `max_ts` to the transaction's start first, so that no async-commit or 1PC commit can
/// later land on its rollback record.
pub fn rollback(
    reader: &MvccReader,
    cm: &ConcurrencyManager,
    keys: &[Vec<u8>],
    start_ts: u64,
    limits: &Limits,
    budget: usize,
) -> Result<Vec<MvccTxn>> {
    check_ts("start_version", start_ts)?;
    limits.check_keys("keys", keys.iter().map(|k| &k[..]))?;
    cm.update_max_ts(start_ts);
    let mut batches = Batches::new(budget);
    for k in keys {
        actions::rollback(batches.txn(), reader, k, start_ts, false)?;
        batches.key_done();
    }
    Ok(batches.finish())
}

/// Resolves the locks of finished transactions: each `(start_ts, commit_ts)` commits
/// (or, with commit_ts 0, rolls back) that transaction's `locks` found in the region,
/// in batches of about `budget` bytes. The caller checked `txns` with
/// [`check_resolve`].
pub fn resolve_locks(
    reader: &MvccReader,
    cm: &ConcurrencyManager,
    txns: &[(u64, u64)],
    locks: &[(Vec<u8>, Lock)],
    budget: usize,
) -> Result<Vec<MvccTxn>> {
    for &(start_ts, _) in txns {
        cm.update_max_ts(start_ts);
    }
    let fate: std::collections::HashMap<u64, u64> = txns.iter().copied().collect();
    let mut batches = Batches::new(budget);
    for (key, lock) in locks {
        let Some(&commit_ts) = fate.get(&lock.start_ts) else {
            continue;
        };
        let (txn, start_ts) = (batches.txn(), lock.start_ts);
        if commit_ts == 0 {
            actions::rollback(txn, reader, key, start_ts, false)?;
        } else if lock.kind == crate::types::Kind::PESSIMISTIC {
            // Left by a committed transaction that never prewrote this key: it wrote
            // nothing here, so the lock just goes.
            txn.unlock(key);
        } else {
            actions::commit(txn, reader, key, start_ts, commit_ts)?;
        }
        batches.key_done();
    }
    Ok(batches.finish())
}

/// Refuses a resolve request no correct client sends: no transaction, too many, a
/// timestamp of 0, or a commit at or below the start.
pub fn check_resolve(txns: &[(u64, u64)], limits: &Limits) -> Result<()> {
    if txns.is_empty() {
        return invalid("no transaction to resolve");
    }
    limits.check_count("txn_infos", txns.len())?;
    for &(start_ts, commit_ts) in txns {
        check_ts("start_version", start_ts)?;
        if commit_ts != 0 && commit_ts <= start_ts {
            return invalid(format!(
                "commit_version {commit_ts} must be above start_version {start_ts} (or 0 to roll back)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
