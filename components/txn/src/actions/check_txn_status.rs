//! Deciding the fate of a transaction whose lock a reader or writer met: by its primary
//! key (or, for async commit, by every secondary).

use super::rollback::{rollback_lock, rollback_missing};
use crate::{
    reader::CommitRecord,
    types::{lock_expired, Kind, Lock},
    Error, MvccReader, MvccTxn, Result,
};

/// A transaction's state as its primary key tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnStatus {
    /// Still running: its lock, after any push of its min_commit_ts.
    Locked {
        /// The primary lock.
        lock: Lock,
        /// Whether the caller may read past the transaction's locks: it cannot commit at
        /// or below the caller's start (TiKV's `MinCommitTsPushed`).
        pushed: bool,
    },
    /// Committed at this timestamp.
    Committed(u64),
    /// Rolled back; `how` says what this check did (TiKV's `Action`).
    RolledBack {
        /// What this check did.
        how: RollbackAction,
    },
    /// No lock and no record, and the caller asked not to roll back.
    LockNotExistDoNothing,
}

/// What a status check did to roll a transaction back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackAction {
    /// It was rolled back before.
    None,
    /// Its lock had expired: rolled back now.
    TtlExpired,
    /// Its pessimistic lock had expired: removed now.
    TtlExpiredPessimistic,
    /// It left nothing: a rollback record now keeps it from landing.
    LockNotExist,
}

/// The arguments of a status check.
#[derive(Debug, Clone, Default)]
pub struct CheckTxnStatus {
    /// The transaction's primary key.
    pub primary: Vec<u8>,
    /// Its start timestamp.
    pub lock_ts: u64,
    /// The reader's start timestamp: the lock's min_commit_ts is pushed above it.
    pub caller_start_ts: u64,
    /// Now, for the TTL.
    pub current_ts: u64,
    /// Write a rollback record if the transaction left nothing.
    pub rollback_if_not_exist: bool,
    /// Treat an async-commit lock like any other (roll it back when expired).
    pub force_sync_commit: bool,
    /// The caller resolves a pessimistic lock: remove it when expired, write nothing else.
    pub resolving_pessimistic_lock: bool,
}

/// Checks (and, if its lock expired, rolls back) the transaction on its primary key.
pub fn check_txn_status(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    c: &CheckTxnStatus,
) -> Result<TxnStatus> {
    let key = &c.primary;
    let Some(mut lock) = reader.load_lock(key)?.filter(|l| l.start_ts == c.lock_ts) else {
        return missing_primary(txn, reader, c);
    };
    // A secondary's lock says nothing about the transaction's fate: rolling it back here
    // could split a transaction whose primary committed.
    if lock.primary != *key {
        return Err(Error::PrimaryMismatch {
            key: key.clone(),
            lock: Box::new(lock),
        });
    }
    // An async-commit transaction may have committed through its secondaries: only they
    // can tell, so its primary is never rolled back here.
    if lock.use_async_commit && !c.force_sync_commit {
        return Ok(TxnStatus::Locked {
            lock,
            pushed: false,
        });
    }
    if lock_expired(&lock, c.current_ts) {
        if lock.kind == Kind::PESSIMISTIC && c.resolving_pessimistic_lock {
            txn.unlock(key);
            return Ok(TxnStatus::RolledBack {
                how: RollbackAction::TtlExpiredPessimistic,
            });
        }
        rollback_lock(txn, reader, key, &lock, true)?;
        return Ok(TxnStatus::RolledBack {
            how: RollbackAction::TtlExpired,
        });
    }
    // A caller of 0 only asks (a status query, or GC): it reads nothing the
    // transaction must commit above, so nothing is written for it.
    let reader_ts = c.caller_start_ts != 0 && c.caller_start_ts != u64::MAX;
    if lock.kind != Kind::PESSIMISTIC && reader_ts && c.caller_start_ts >= lock.min_commit_ts {
        lock.min_commit_ts = c.caller_start_ts + 1;
        txn.put_lock(key, &lock);
    }
    // As TiKV: whenever the transaction cannot commit at or below the caller's read, the
    // caller may read past its locks (a read-latest caller always may).
    let pushed = (c.caller_start_ts != 0 && lock.min_commit_ts > c.caller_start_ts)
        || c.caller_start_ts == u64::MAX;
    Ok(TxnStatus::Locked { lock, pushed })
}

fn missing_primary(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    c: &CheckTxnStatus,
) -> Result<TxnStatus> {
    match reader.commit_record(&c.primary, c.lock_ts)? {
        CommitRecord::Committed(ts) => Ok(TxnStatus::Committed(ts)),
        CommitRecord::RolledBack => Ok(TxnStatus::RolledBack {
            how: RollbackAction::None,
        }),
        CommitRecord::None if c.resolving_pessimistic_lock => Ok(TxnStatus::LockNotExistDoNothing),
        CommitRecord::None if c.rollback_if_not_exist => {
            rollback_missing(txn, reader, &c.primary, c.lock_ts, true)?;
            Ok(TxnStatus::RolledBack {
                how: RollbackAction::LockNotExist,
            })
        }
        CommitRecord::None => Err(Error::TxnNotFound {
            start_ts: c.lock_ts,
            key: c.primary.clone(),
        }),
    }
}

/// An async-commit transaction's state on one secondary key.
#[derive(Debug, Clone, PartialEq)]
pub enum SecondaryStatus {
    /// Prewritten and not yet committed.
    Locked(Lock),
    /// Committed at this timestamp.
    Committed(u64),
    /// Rolled back (now, if the key had no prewrite: it never can have one).
    RolledBack,
}

/// Checks one secondary of the transaction `start_ts`: a key it never prewrote is
/// rolled back, which decides the whole transaction.
pub fn check_secondary_lock(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    start_ts: u64,
) -> Result<SecondaryStatus> {
    match reader.load_lock(key)?.filter(|l| l.start_ts == start_ts) {
        Some(lock) if lock.kind == Kind::PESSIMISTIC => {
            rollback_lock(txn, reader, key, &lock, true)?;
            Ok(SecondaryStatus::RolledBack)
        }
        Some(lock) => Ok(SecondaryStatus::Locked(lock)),
        None => match reader.commit_record(key, start_ts)? {
            CommitRecord::Committed(ts) => Ok(SecondaryStatus::Committed(ts)),
            CommitRecord::RolledBack => Ok(SecondaryStatus::RolledBack),
            CommitRecord::None => {
                rollback_missing(txn, reader, key, start_ts, true)?;
                Ok(SecondaryStatus::RolledBack)
            }
        },
    }
}
