//! Pessimistic locks: taken while the transaction runs (SELECT ... FOR UPDATE), turned
//! into ordinary locks by its prewrite.

use crate::{
    reader::CommitRecord,
    types::{Kind, Lock},
    ConflictReason, Error, MvccReader, MvccTxn, Result,
};

/// What a pessimistic lock request asks for one key.
#[derive(Debug, Clone, Default)]
pub struct PessimisticLock {
    /// The key.
    pub key: Vec<u8>,
    /// The transaction's primary key.
    pub primary: Vec<u8>,
    /// The transaction.
    pub start_ts: u64,
    /// The timestamp the lock reads at: nobody may have committed the key after it.
    pub for_update_ts: u64,
    /// How long the lock lives without a heartbeat, in milliseconds.
    pub ttl: u64,
    /// Fail if the key exists (an insert).
    pub should_not_exist: bool,
    /// Return the key's value as of `for_update_ts`.
    pub need_value: bool,
}

/// Locks one key for the transaction; returns its value when asked (`None` if absent).
pub fn acquire_pessimistic_lock(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    p: &PessimisticLock,
) -> Result<Option<Vec<u8>>> {
    let key = &p.key;
    let value = |r: &MvccReader| -> Result<Option<Vec<u8>>> {
        if p.need_value {
            r.committed_value(key, p.for_update_ts)
        } else {
            Ok(None)
        }
    };
    if let Some(mut lock) = reader.load_lock(key)? {
        if lock.start_ts != p.start_ts {
            return Err(Error::KeyIsLocked {
                key: key.clone(),
                lock: Box::new(lock),
            });
        }
        if lock.kind == Kind::PESSIMISTIC && p.for_update_ts > lock.for_update_ts {
            lock.for_update_ts = p.for_update_ts;
            lock.ttl = lock.ttl.max(p.ttl);
            txn.put_lock(key, &lock);
        }
        return value(reader);
    }
    reader.check_gc_fence(key, "a transaction", p.start_ts)?;
    if let Some((commit_ts, w)) = reader.seek_write(key, u64::MAX)? {
        if commit_ts > p.for_update_ts {
            return Err(conflict(
                p,
                w.start_ts,
                commit_ts,
                ConflictReason::PessimisticRetry,
            ));
        }
    }
    match reader.commit_record(key, p.start_ts)? {
        CommitRecord::RolledBack => {
            return Err(conflict(
                p,
                p.start_ts,
                p.start_ts,
                ConflictReason::SelfRolledBack,
            ))
        }
        CommitRecord::Committed(commit_ts) => {
            return Err(Error::Committed {
                start_ts: p.start_ts,
                commit_ts,
                key: key.clone(),
            })
        }
        CommitRecord::None => {}
    }
    if p.should_not_exist && reader.exists(key)? {
        return Err(Error::AlreadyExist { key: key.clone() });
    }
    let lock = Lock {
        kind: Kind::PESSIMISTIC,
        primary: p.primary.clone(),
        start_ts: p.start_ts,
        ttl: p.ttl,
        for_update_ts: p.for_update_ts,
        ..Default::default()
    };
    txn.put_lock(key, &lock);
    value(reader)
}

fn conflict(p: &PessimisticLock, start_ts: u64, commit_ts: u64, reason: ConflictReason) -> Error {
    Error::WriteConflict {
        key: p.key.clone(),
        primary: p.primary.clone(),
        start_ts: p.start_ts,
        conflict_start_ts: start_ts,
        conflict_commit_ts: commit_ts,
        reason,
    }
}

/// Removes the transaction's pessimistic lock on `key` if it was taken at or before
/// `for_update_ts`; an ordinary lock (already prewritten) stays.
pub fn pessimistic_rollback(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    start_ts: u64,
    for_update_ts: u64,
) -> Result<()> {
    if let Some(lock) = reader.load_lock(key)? {
        if lock.start_ts == start_ts
            && lock.kind == Kind::PESSIMISTIC
            && lock.for_update_ts <= for_update_ts
        {
            txn.unlock(key);
        }
    }
    Ok(())
}
