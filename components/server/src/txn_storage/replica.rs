//! Transactional reads served by a follower (`Context.replica_read`, TiKV's follower
//! read). The follower's ReadIndex request carries the read's timestamp and keys
//! (`ReplicaReadCheck`); the leader, on receiving it and before Raft fixes the read index,
//! raises its max timestamp to the read's and reports the in-memory locks (async-commit
//! and 1PC prewrites not yet applied) the read must not pass (`ReplicaReadAnswer`).
//! Either an async commit chose its commit timestamp before the check, and its lock is
//! reported or already applied below the read index, or it chooses one above the read.

use std::collections::HashSet;

use proto::raft_serverpb::{ReplicaReadAnswer, ReplicaReadCheck};
use protobuf::Message as _;
use raftstore::ReadIndexCheck;
use txn::{concurrency::ConcurrencyManager, reader::Bypass, types::Lock};

use crate::{Error, Result};

/// Above this many key bytes a point read's check names the range from its least to its
/// greatest key instead (a ReadIndex request must stay small); the follower then ignores
/// locks on keys it did not ask for.
const CHECK_KEY_BYTES: usize = 64 << 10;

/// The answer to a check that could not be read: not a valid `ReplicaReadAnswer` (a
/// field 31 with wire type 7 does not exist).
const UNCHECKED: &[u8] = &[0xff];

/// Locks one answer carries at most: it travels in the leader's heartbeats.
const ANSWER_LOCKS: usize = 16;

fn with_bypass(ts: u64, bypass: &Bypass) -> ReplicaReadCheck {
    let mut c = ReplicaReadCheck::default();
    c.set_start_ts(ts);
    c.set_resolved(bypass.resolved.clone());
    c.set_committed(bypass.committed.clone());
    c
}

fn encode(c: &ReplicaReadCheck) -> Vec<u8> {
    c.write_to_bytes().expect("encode a replica read check")
}

/// The check of a read at `ts` of these user keys.
pub(crate) fn keys_check(ts: u64, keys: &[Vec<u8>], bypass: &Bypass) -> Vec<u8> {
    let mut c = with_bypass(ts, bypass);
    if keys.iter().map(Vec::len).sum::<usize>() <= CHECK_KEY_BYTES {
        c.set_keys(keys.to_vec().into());
    } else {
        let lower = keys.iter().min().map(|k| keys::txn::lock_key(k));
        let upper = keys.iter().max().map(|k| {
            let mut u = keys::txn::lock_key(k);
            u.push(0);
            u
        });
        c.set_lower(lower.unwrap_or_default());
        c.set_upper(upper.unwrap_or_default());
    }
    encode(&c)
}

/// The check of a read at `ts` of the lock keys in `[lower, upper)`.
pub(crate) fn range_check(ts: u64, lower: &[u8], upper: &[u8], bypass: &Bypass) -> Vec<u8> {
    let mut c = with_bypass(ts, bypass);
    c.set_lower(lower.to_vec());
    c.set_upper(upper.to_vec());
    encode(&c)
}

/// The leader's side: answers checks from this store's concurrency manager.
pub fn read_index_check(cm: ConcurrencyManager) -> ReadIndexCheck {
    std::sync::Arc::new(move |_region_id, bytes| answer(&cm, bytes))
}

fn answer(cm: &ConcurrencyManager, bytes: &[u8]) -> Vec<u8> {
    let mut out = ReplicaReadAnswer::default();
    let Ok(c) = ReplicaReadCheck::parse_from_bytes(bytes) else {
        // Unchecked is not lock-free: an answer that does not decode fails the read.
        return UNCHECKED.to_vec();
    };
    let bypass = Bypass {
        resolved: c.get_resolved().to_vec(),
        committed: c.get_committed().to_vec(),
    };
    let ts = c.get_start_ts();
    let locks = if c.get_keys().is_empty() {
        let (lower, upper) = (c.get_lower(), c.get_upper());
        cm.blocking_locks(
            &|k| {
                let enc = keys::txn::lock_key(k);
                enc.as_slice() >= lower && enc.as_slice() < upper
            },
            ts,
            &bypass,
        )
    } else {
        // Run on the Raft poller under the store's lock table: one lookup per lock.
        let keys: HashSet<&[u8]> = c.get_keys().iter().map(Vec::as_slice).collect();
        cm.blocking_locks(&|k| keys.contains(k), ts, &bypass)
    };
    out.set_truncated(locks.len() > ANSWER_LOCKS);
    for (k, mut l) in locks.into_iter().take(ANSWER_LOCKS) {
        l.clear_secondaries();
        out.mut_keys().push(k);
        out.mut_locks().push(l);
    }
    out.write_to_bytes().expect("encode a replica read answer")
}

/// The locks the leader reported against a replica read's check.
pub(crate) struct Reported {
    locks: Vec<(Vec<u8>, Lock)>,
    truncated: bool,
}

impl Reported {
    /// Nothing reported (a read the leader serves itself).
    pub(crate) fn none() -> Reported {
        Reported {
            locks: vec![],
            truncated: false,
        }
    }

    /// The follower's side: decodes the leader's answer.
    pub(crate) fn decode(answer: &[u8]) -> Result<Reported> {
        let mut a = ReplicaReadAnswer::parse_from_bytes(answer).map_err(|_| {
            Error::Raft(raftstore::Error::StaleCommand(
                "the leader could not check a replica read",
            ))
        })?;
        Ok(Reported {
            truncated: a.truncated,
            locks: a.take_keys().into_iter().zip(a.take_locks()).collect(),
        })
    }

    /// The error a leader read of the keys `wanted` of region `region_id` would have met:
    /// the first reported lock on one of them; or, if the answer was cut short (a lock on
    /// a wanted key may be missing from it), not ready here, so that the client reads at
    /// the leader.
    pub(crate) fn check(&self, region_id: u64, wanted: &dyn Fn(&[u8]) -> bool) -> Result<()> {
        if let Some((key, lock)) = self.locks.iter().find(|(k, _)| wanted(k)) {
            return Err(txn::Error::KeyIsLocked {
                key: key.clone(),
                lock: Box::new(lock.clone()),
            }
            .into());
        }
        if self.truncated {
            return Err(Error::Raft(raftstore::Error::DataIsNotReady {
                region_id,
                peer_id: 0,
                safe_ts: 0,
                why: "the leader holds more in-memory locks in the read's range than it \
                      reports to a follower"
                    .into(),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` in-memory locks of a transaction that started at 5, on `k00`, `k01`, ...
    fn locked(cm: &ConcurrencyManager, n: usize) -> txn::concurrency::MemLockGuard {
        let locks = (0..n)
            .map(|i| {
                let mut l = Lock::default();
                l.set_start_ts(5);
                l.set_secondaries(vec![b"s".to_vec()].into());
                (format!("k{i:02}").into_bytes(), l)
            })
            .collect();
        cm.lock_in_memory(locks)
    }

    #[test]
    fn an_answer_carries_the_first_locks_and_a_cut_short_one_fails_the_read() {
        let cm = ConcurrencyManager::default();
        let _held = locked(&cm, 20);
        let none = Bypass::default();
        let (lower, upper) = (keys::txn::lock_key(b""), keys::data_end_key(b""));
        let all = Reported::decode(&answer(&cm, &range_check(10, &lower, &upper, &none)))
            .expect("an answer");
        assert_eq!((all.locks.len(), all.truncated), (ANSWER_LOCKS, true));
        assert!(all
            .locks
            .iter()
            .all(|(_, l)| l.get_secondaries().is_empty()));
        assert!(cm.max_ts() >= 10, "the check raised max_ts");
        // k19 is not in the answer, but may be locked: the read goes to the leader.
        let err = all.check(1, &|k| k == b"k19").expect_err("cut short");
        assert!(
            matches!(err, Error::Raft(raftstore::Error::DataIsNotReady { .. })),
            "{err}"
        );
        assert!(matches!(
            all.check(1, &|k| k == b"k03"),
            Err(Error::Txn(txn::Error::KeyIsLocked { .. }))
        ));

        // A point check answers for its keys only: an unlocked key passes.
        let keys = [b"k03".to_vec(), b"zz".to_vec()];
        let two = Reported::decode(&answer(&cm, &keys_check(10, &keys, &none))).expect("answer");
        assert_eq!((two.locks.len(), two.truncated), (1, false));
        assert!(two.check(1, &|k| k == b"zz").is_ok());
        assert!(two.check(1, &|k| k == b"k03").is_err());
        // A read below the transaction's start passes its locks.
        let below = Reported::decode(&answer(&cm, &keys_check(4, &keys, &none))).expect("answer");
        assert!(below.check(1, &|_| true).is_ok());
        // A check the leader cannot read fails the follower's read.
        assert!(Reported::decode(&answer(&cm, b"\xff\xff")).is_err());
    }
}
