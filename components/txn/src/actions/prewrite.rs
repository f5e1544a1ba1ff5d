//! The first phase of a commit: lock each key, after checking that nobody committed it
//! since the transaction's snapshot.

use crate::{
    reader::CommitRecord,
    types::{Kind, Lock, Mutation, MutationOp, SHORT_VALUE_MAX_LEN},
    ConflictReason, Error, MvccReader, MvccTxn, Result,
};

/// What a prewrite knows of its transaction.
#[derive(Debug, Clone, Default)]
pub struct TxnProps {
    /// The transaction's start timestamp.
    pub start_ts: u64,
    /// Its primary key.
    pub primary: Vec<u8>,
    /// How long its locks live without a heartbeat, in milliseconds.
    pub lock_ttl: u64,
    /// How many keys it writes (a hint for lock resolution).
    pub txn_size: u64,
    /// Non-zero for a pessimistic transaction: the timestamp of its last lock.
    pub for_update_ts: u64,
    /// The least commit timestamp the client asks for.
    pub min_commit_ts: u64,
    /// Async commit: the primary lock carries every other key.
    pub async_commit: bool,
    /// The secondaries an async-commit primary records.
    pub secondaries: Vec<Vec<u8>>,
    /// One-phase commit: no locks; the caller commits at once.
    pub one_pc: bool,
    /// For async commit and 1PC: the largest commit timestamp the client accepts (0: no
    /// bound); above it the prewrite fails and the client falls back to two phases.
    pub max_commit_ts: u64,
}

/// The outcome of prewriting one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Prewrite {
    /// The lock to put (or, for 1PC, to commit at once).
    Locked(Lock),
    /// Nothing to write: an earlier attempt of the same prewrite did it, the transaction
    /// already committed the key, or the mutation only checked.
    Done {
        /// The min_commit_ts of an async-commit lock left by an earlier attempt (0 if
        /// none, or a two-phase lock).
        min_commit_ts: u64,
        /// The commit timestamp, if the transaction already committed the key.
        committed_at: u64,
    },
}

/// Prewrites one key: `pessimistic` when the key was locked by an earlier pessimistic
/// lock of this transaction. `max_ts` is the store's largest read timestamp, above
/// which an async-commit or 1PC transaction must commit. A long value goes into `txn` at
/// once; the lock is returned for the caller to put or commit.
pub fn prewrite(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    props: &TxnProps,
    m: &Mutation,
    pessimistic: bool,
    max_ts: u64,
) -> Result<Prewrite> {
    let key = &m.key;
    let start_ts = props.start_ts;
    // The TTL of this transaction's pessimistic lock on the key, if it holds one.
    let mut held_pessimistic: Option<u64> = None;
    if let Some(lock) = reader.load_lock(key)? {
        if lock.start_ts != start_ts {
            if pessimistic {
                return Err(Error::PessimisticLockNotFound {
                    start_ts,
                    key: key.clone(),
                });
            }
            return Err(Error::KeyIsLocked {
                key: key.clone(),
                lock: Box::new(lock),
            });
        }
        if lock.kind != Kind::PESSIMISTIC {
            // A retried async-commit or 1PC prewrite whose earlier attempt fell back to
            // two phases: so does this one (its answer must not claim a commit).
            if (props.async_commit || props.one_pc) && !lock.use_async_commit {
                return Err(Error::CommitTsTooLarge {
                    start_ts,
                    min_commit_ts: lock.min_commit_ts,
                    max_commit_ts: props.max_commit_ts,
                });
            }
            // A retried prewrite: the lock is in place.
            return Ok(Prewrite::Done {
                min_commit_ts: if lock.use_async_commit {
                    lock.min_commit_ts
                } else {
                    0
                },
                committed_at: 0,
            });
        }
        if !pessimistic {
            return Err(Error::InvalidRequest(format!(
                "key {:?} holds a pessimistic lock of transaction {start_ts} but the prewrite \
                 does not say so",
                String::from_utf8_lossy(key)
            )));
        }
        held_pessimistic = Some(lock.ttl);
    }
    match reader.commit_record(key, start_ts)? {
        CommitRecord::Committed(ts) => {
            return Ok(Prewrite::Done {
                min_commit_ts: 0,
                committed_at: ts,
            })
        }
        CommitRecord::RolledBack => {
            return Err(Error::WriteConflict {
                key: key.clone(),
                primary: props.primary.clone(),
                start_ts,
                conflict_start_ts: start_ts,
                conflict_commit_ts: start_ts,
                reason: ConflictReason::SelfRolledBack,
            })
        }
        CommitRecord::None => {}
    }
    // Records this transaction must meet (a rollback of its own, a newer version) may
    // have been collected below the key's safe point.
    reader.check_gc_fence(key, "a transaction", start_ts)?;
    if pessimistic && held_pessimistic.is_none() {
        return Err(Error::PessimisticLockNotFound {
            start_ts,
            key: key.clone(),
        });
    }
    if !pessimistic {
        check_newer_version(reader, props, key)?;
    }
    if matches!(m.op, MutationOp::Insert(_) | MutationOp::CheckNotExists) && reader.exists(key)? {
        return Err(Error::AlreadyExist { key: key.clone() });
    }
    if m.op == MutationOp::CheckNotExists {
        return Ok(Prewrite::Done {
            min_commit_ts: 0,
            committed_at: 0,
        });
    }
    let mut lock = new_lock(txn, props, m, max_ts);
    // Heartbeats may have raised the pessimistic lock's TTL past the prewrite's: a
    // shorter one would let readers roll back a transaction that is alive.
    lock.ttl = lock.ttl.max(held_pessimistic.unwrap_or(0));
    let bounded = (props.async_commit || props.one_pc) && props.max_commit_ts != 0;
    if bounded && lock.min_commit_ts > props.max_commit_ts {
        return Err(Error::CommitTsTooLarge {
            start_ts,
            min_commit_ts: lock.min_commit_ts,
            max_commit_ts: props.max_commit_ts,
        });
    }
    Ok(Prewrite::Locked(lock))
}

/// An optimistic transaction fails if anyone committed the key after it started.
fn check_newer_version(reader: &MvccReader, props: &TxnProps, key: &[u8]) -> Result<()> {
    match reader.seek_write(key, u64::MAX)? {
        Some((commit_ts, w)) if commit_ts > props.start_ts => Err(Error::WriteConflict {
            key: key.to_vec(),
            primary: props.primary.clone(),
            start_ts: props.start_ts,
            conflict_start_ts: w.start_ts,
            conflict_commit_ts: commit_ts,
            reason: ConflictReason::Optimistic,
        }),
        _ => Ok(()),
    }
}

fn new_lock(txn: &mut MvccTxn, props: &TxnProps, m: &Mutation, max_ts: u64) -> Lock {
    let (kind, value) = m.lock_kind();
    let mut lock = Lock {
        kind,
        primary: props.primary.clone(),
        start_ts: props.start_ts,
        ttl: props.lock_ttl,
        for_update_ts: props.for_update_ts,
        txn_size: props.txn_size,
        min_commit_ts: props.min_commit_ts,
        ..Default::default()
    };
    match value {
        Some(v) if v.len() <= SHORT_VALUE_MAX_LEN => {
            lock.has_short_value = true;
            lock.short_value = v.to_vec();
        }
        Some(v) => txn.put_value(&m.key, props.start_ts, v),
        None => {}
    }
    if props.async_commit || props.one_pc {
        // Above every read this store has served, so that none of them misses the commit.
        lock.min_commit_ts = [
            props.min_commit_ts,
            props.start_ts.saturating_add(1),
            props.for_update_ts.saturating_add(1),
            max_ts.saturating_add(1),
        ]
        .into_iter()
        .max()
        .expect("non-empty");
        lock.use_async_commit = props.async_commit;
        if props.async_commit && m.key == props.primary {
            lock.secondaries = props.secondaries.clone().into();
        }
    }
    lock
}
