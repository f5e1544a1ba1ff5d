//! Percolator's rules, each checked through the actions on a real engine.

use engine::Cf;

use super::*;
use crate::{
    test_util::Db,
    types::{from_physical_ms, Mutation, MutationOp},
    ConflictReason, Error, MvccReader, Result,
};

impl Db {
    fn prewrite(&self, props: &TxnProps, m: Mutation, pessimistic: bool) -> Result<Prewrite> {
        self.run(|txn, r| {
            let out = prewrite(txn, r, props, &m, pessimistic, 0)?;
            if let Prewrite::Locked(lock) = &out {
                txn.put_lock(&m.key, lock);
            }
            Ok(out)
        })
    }

    fn put(&self, key: &[u8], value: &[u8], start_ts: u64, commit_ts: u64) {
        self.prewrite(&props(key, start_ts), put(key, value), false)
            .unwrap();
        self.run(|txn, r| commit(txn, r, key, start_ts, commit_ts))
            .unwrap();
    }
}

fn props(primary: &[u8], start_ts: u64) -> TxnProps {
    TxnProps {
        start_ts,
        primary: primary.to_vec(),
        lock_ttl: 3000,
        ..Default::default()
    }
}

fn put(key: &[u8], value: &[u8]) -> Mutation {
    Mutation {
        key: key.to_vec(),
        op: MutationOp::Put(value.to_vec()),
    }
}

fn op(key: &[u8], op: MutationOp) -> Mutation {
    Mutation {
        key: key.to_vec(),
        op,
    }
}

#[test]
fn a_committed_write_is_seen_from_its_commit_on_and_its_lock_blocks_reads_before() {
    let db = Db::new();
    db.prewrite(&props(b"k", 10), put(b"k", b"v"), false)
        .unwrap();
    assert!(
        matches!(db.get(b"k", 9), Ok(None)),
        "older reads pass the lock"
    );
    assert!(matches!(db.get(b"k", 11), Err(Error::KeyIsLocked { .. })));
    db.run(|txn, r| commit(txn, r, b"k", 10, 20)).unwrap();
    assert_eq!(db.get(b"k", 19).unwrap(), None);
    assert_eq!(db.get(b"k", 20).unwrap(), Some(b"v".to_vec()));
    assert_eq!(db.lock(b"k"), None);
    // Committing again is fine and changes nothing.
    db.run(|txn, r| commit(txn, r, b"k", 10, 20)).unwrap();
    assert_eq!(db.count(Cf::Write), 1);
}

#[test]
fn a_version_committed_after_the_start_is_a_write_conflict() {
    let db = Db::new();
    db.put(b"k", b"a", 10, 20);
    let err = db.prewrite(&props(b"k", 15), put(b"k", b"b"), false);
    assert!(
        matches!(
            err,
            Err(Error::WriteConflict {
                conflict_start_ts: 10,
                conflict_commit_ts: 20,
                reason: ConflictReason::Optimistic,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(db.lock(b"k"), None, "nothing written");
    db.prewrite(&props(b"k", 25), put(b"k", b"b"), false)
        .unwrap();
}

#[test]
fn a_commit_without_a_lock_fails_and_writes_nothing() {
    let db = Db::new();
    let err = db.run(|txn, r| commit(txn, r, b"k", 10, 20));
    assert!(matches!(
        err,
        Err(Error::TxnLockNotFound {
            start_ts: 10,
            commit_ts: 20,
            ..
        })
    ));
    assert_eq!(db.count(Cf::Write), 0);
    // Another transaction's lock is not ours either.
    db.prewrite(&props(b"k", 30), put(b"k", b"v"), false)
        .unwrap();
    let err = db.run(|txn, r| commit(txn, r, b"k", 10, 40));
    assert!(matches!(err, Err(Error::TxnLockNotFound { .. })));
    assert_eq!(db.lock(b"k").unwrap().start_ts, 30);
}

#[test]
fn a_rolled_back_transaction_cannot_prewrite_or_commit_later() {
    let db = Db::new();
    db.run(|txn, r| rollback(txn, r, b"k", 10, false)).unwrap();
    let err = db.prewrite(&props(b"k", 10), put(b"k", b"v"), false);
    assert!(matches!(
        err,
        Err(Error::WriteConflict {
            reason: ConflictReason::SelfRolledBack,
            ..
        })
    ));
    let err = db.run(|txn, r| commit(txn, r, b"k", 10, 20));
    assert!(matches!(err, Err(Error::TxnLockNotFound { .. })));
    // A committed transaction cannot be rolled back.
    db.put(b"c", b"v", 30, 40);
    let err = db.run(|txn, r| rollback(txn, r, b"c", 30, false));
    assert!(matches!(err, Err(Error::Committed { commit_ts: 40, .. })));
}

#[test]
fn a_rollback_at_another_transactions_commit_ts_survives_in_its_record() {
    let db = Db::new();
    // Transaction 20 is rolled back after transaction 10 committed at 20.
    db.put(b"k", b"v", 10, 20);
    db.run(|txn, r| rollback(txn, r, b"k", 20, false)).unwrap();
    assert_eq!(
        db.get(b"k", 25).unwrap(),
        Some(b"v".to_vec()),
        "the commit stays"
    );
    let err = db.prewrite(&props(b"k", 20), put(b"k", b"late"), false);
    assert!(matches!(
        err,
        Err(Error::WriteConflict {
            reason: ConflictReason::SelfRolledBack,
            ..
        })
    ));
    // The other order: the rollback first, then a commit at that timestamp.
    db.prewrite(&props(b"j", 45), put(b"j", b"v"), false)
        .unwrap();
    db.run(|txn, r| rollback(txn, r, b"j", 50, false)).unwrap();
    db.run(|txn, r| commit(txn, r, b"j", 45, 50)).unwrap();
    assert_eq!(db.get(b"j", 50).unwrap(), Some(b"v".to_vec()));
    let err = db.prewrite(&props(b"j", 50), put(b"j", b"late"), false);
    assert!(matches!(
        err,
        Err(Error::WriteConflict {
            reason: ConflictReason::SelfRolledBack,
            ..
        })
    ));
}

#[test]
fn long_values_live_apart_and_go_with_a_rollback() {
    let db = Db::new();
    let long = vec![7u8; 1000];
    db.prewrite(&props(b"k", 10), put(b"k", &long), false)
        .unwrap();
    assert_eq!(db.count(Cf::TxnValue), 1);
    assert!(!db.lock(b"k").unwrap().has_short_value);
    db.run(|txn, r| rollback(txn, r, b"k", 10, false)).unwrap();
    assert_eq!(db.count(Cf::TxnValue), 0);
    db.put(b"k", &long, 20, 30);
    assert_eq!(db.get(b"k", 30).unwrap(), Some(long));
}

#[test]
fn a_status_check_pushes_a_live_lock_and_rolls_back_an_expired_one() {
    let db = Db::new();
    let start = from_physical_ms(1_000);
    db.prewrite(&props(b"p", start), put(b"p", b"v"), false)
        .unwrap();
    let check = |current_ms: u64, caller: u64| CheckTxnStatus {
        primary: b"p".to_vec(),
        lock_ts: start,
        caller_start_ts: caller,
        current_ts: from_physical_ms(current_ms),
        ..Default::default()
    };
    let caller = from_physical_ms(2_000);
    let st = db
        .run(|txn, r| check_txn_status(txn, r, &check(2_000, caller)))
        .unwrap();
    assert!(matches!(st, TxnStatus::Locked { pushed: true, .. }));
    assert_eq!(db.lock(b"p").unwrap().min_commit_ts, caller + 1);
    // The reader that pushed it reads past it now, and the writer cannot commit below it.
    assert_eq!(db.get(b"p", caller).unwrap(), None);
    let err = db.run(|txn, r| commit(txn, r, b"p", start, caller));
    assert!(matches!(err, Err(Error::CommitTsExpired { .. })));
    // TTL 3 s from the start's physical time.
    let st = db
        .run(|txn, r| check_txn_status(txn, r, &check(5_000, 0)))
        .unwrap();
    assert_eq!(
        st,
        TxnStatus::RolledBack {
            how: RollbackAction::TtlExpired
        }
    );
    assert_eq!(db.lock(b"p"), None);
    let st = db
        .run(|txn, r| check_txn_status(txn, r, &check(5_000, 0)))
        .unwrap();
    assert_eq!(
        st,
        TxnStatus::RolledBack {
            how: RollbackAction::None
        }
    );
}

#[test]
fn a_status_check_of_a_transaction_that_left_nothing_rolls_it_back_only_when_asked() {
    let db = Db::new();
    let mut c = CheckTxnStatus {
        primary: b"p".to_vec(),
        lock_ts: 10,
        current_ts: 20,
        ..Default::default()
    };
    let err = db.run(|txn, r| check_txn_status(txn, r, &c));
    assert!(matches!(err, Err(Error::TxnNotFound { start_ts: 10, .. })));
    c.rollback_if_not_exist = true;
    let st = db.run(|txn, r| check_txn_status(txn, r, &c)).unwrap();
    assert_eq!(
        st,
        TxnStatus::RolledBack {
            how: RollbackAction::LockNotExist
        }
    );
    let err = db.prewrite(&props(b"p", 10), put(b"p", b"v"), false);
    assert!(
        matches!(err, Err(Error::WriteConflict { .. })),
        "a protected rollback stops it"
    );
    db.put(b"q", b"v", 30, 40);
    c.primary = b"q".to_vec();
    c.lock_ts = 30;
    let st = db.run(|txn, r| check_txn_status(txn, r, &c)).unwrap();
    assert_eq!(st, TxnStatus::Committed(40));
}

#[test]
fn pessimistic_locks_conflict_on_newer_commits_and_become_ordinary_locks() {
    let db = Db::new();
    db.put(b"k", b"a", 10, 20);
    let lock = |for_update_ts| PessimisticLock {
        key: b"k".to_vec(),
        primary: b"k".to_vec(),
        start_ts: 15,
        for_update_ts,
        ttl: 3000,
        need_value: true,
        ..Default::default()
    };
    let err = db.run(|txn, r| acquire_pessimistic_lock(txn, r, &lock(15)));
    assert!(matches!(
        err,
        Err(Error::WriteConflict {
            reason: ConflictReason::PessimisticRetry,
            conflict_commit_ts: 20,
            ..
        })
    ));
    let v = db
        .run(|txn, r| acquire_pessimistic_lock(txn, r, &lock(25)))
        .unwrap();
    assert_eq!(v, Some(b"a".to_vec()));
    // Others are locked out; an optimistic prewrite of its own key is told off.
    assert!(matches!(
        db.prewrite(&props(b"k", 30), put(b"k", b"x"), false),
        Err(Error::KeyIsLocked { .. })
    ));
    assert!(
        db.run(|txn, r| commit(txn, r, b"k", 15, 30)).is_err(),
        "not prewritten"
    );
    let mut p = props(b"k", 15);
    p.for_update_ts = 25;
    db.prewrite(&p, put(b"k", b"b"), true).unwrap();
    db.run(|txn, r| commit(txn, r, b"k", 15, 30)).unwrap();
    assert_eq!(db.get(b"k", 30).unwrap(), Some(b"b".to_vec()));
    // A pessimistic prewrite without its lock fails.
    let mut p = props(b"j", 40);
    p.for_update_ts = 40;
    assert!(matches!(
        db.prewrite(&p, put(b"j", b"v"), true),
        Err(Error::PessimisticLockNotFound { .. })
    ));
}

#[test]
fn a_pessimistic_rollback_removes_only_pessimistic_locks_up_to_its_ts() {
    let db = Db::new();
    let l = PessimisticLock {
        key: b"k".to_vec(),
        primary: b"k".to_vec(),
        start_ts: 10,
        for_update_ts: 12,
        ttl: 3000,
        ..Default::default()
    };
    db.run(|txn, r| acquire_pessimistic_lock(txn, r, &l))
        .unwrap();
    db.run(|txn, r| pessimistic_rollback(txn, r, b"k", 10, 11))
        .unwrap();
    assert!(db.lock(b"k").is_some(), "taken after 11");
    db.run(|txn, r| pessimistic_rollback(txn, r, b"k", 10, 12))
        .unwrap();
    assert_eq!(db.lock(b"k"), None);
}

#[test]
fn inserts_fail_on_live_keys_only() {
    let db = Db::new();
    db.put(b"k", b"a", 10, 20);
    for o in [
        MutationOp::Insert(b"b".to_vec()),
        MutationOp::CheckNotExists,
    ] {
        assert!(matches!(
            db.prewrite(&props(b"k", 30), op(b"k", o), false),
            Err(Error::AlreadyExist { .. })
        ));
    }
    db.prewrite(&props(b"k", 30), op(b"k", MutationOp::Delete), false)
        .unwrap();
    db.run(|txn, r| commit(txn, r, b"k", 30, 40)).unwrap();
    db.prewrite(
        &props(b"k", 50),
        op(b"k", MutationOp::CheckNotExists),
        false,
    )
    .unwrap();
    assert_eq!(db.lock(b"k"), None, "a check writes nothing");
    db.prewrite(
        &props(b"k", 50),
        op(b"k", MutationOp::Insert(b"c".to_vec())),
        false,
    )
    .unwrap();
}

#[test]
fn async_commit_locks_commit_above_every_read_and_are_never_rolled_back_by_the_primary_alone() {
    let db = Db::new();
    let mut p = props(b"p", 10);
    p.async_commit = true;
    p.secondaries = vec![b"s".to_vec()];
    let out = db
        .run(|txn, r| {
            let out = prewrite(txn, r, &p, &put(b"p", b"v"), false, 99)?;
            if let Prewrite::Locked(l) = &out {
                txn.put_lock(b"p", l);
            }
            Ok(out)
        })
        .unwrap();
    let Prewrite::Locked(lock) = out else {
        panic!("locked")
    };
    assert_eq!(lock.min_commit_ts, 100, "above max_ts");
    assert_eq!(lock.secondaries.to_vec(), vec![b"s".to_vec()]);
    let c = CheckTxnStatus {
        primary: b"p".to_vec(),
        lock_ts: 10,
        current_ts: from_physical_ms(1_000_000),
        ..Default::default()
    };
    let st = db.run(|txn, r| check_txn_status(txn, r, &c)).unwrap();
    assert!(
        matches!(st, TxnStatus::Locked { pushed: false, .. }),
        "{st:?}"
    );
    // The secondary was never prewritten: checking it rolls the transaction back.
    let st = db
        .run(|txn, r| check_secondary_lock(txn, r, b"s", 10))
        .unwrap();
    assert_eq!(st, SecondaryStatus::RolledBack);
    assert!(db.prewrite(&p, put(b"s", b"v"), false).is_err());
}

#[test]
fn heartbeats_only_raise_the_ttl() {
    let db = Db::new();
    db.prewrite(&props(b"p", 10), put(b"p", b"v"), false)
        .unwrap();
    assert_eq!(
        db.run(|txn, r| heartbeat(txn, r, b"p", 10, 1000)).unwrap(),
        3000
    );
    assert_eq!(
        db.run(|txn, r| heartbeat(txn, r, b"p", 10, 9000)).unwrap(),
        9000
    );
    assert!(matches!(
        db.run(|txn, r| heartbeat(txn, r, b"p", 11, 9000)),
        Err(Error::TxnNotFound { .. })
    ));
}

#[test]
fn gc_keeps_the_newest_visible_version_and_drops_the_rest() {
    let db = Db::new();
    let long = vec![1u8; 600];
    db.put(b"k", &long, 10, 20);
    db.put(b"k", b"b", 30, 40);
    db.run(|txn, r| rollback(txn, r, b"k", 45, false)).unwrap();
    db.put(b"k", b"c", 50, 60);
    let dropped = db.run(|txn, r| gc(txn, r, b"k", 55, usize::MAX)).unwrap();
    assert_eq!(dropped, 2, "the long put at 20 and the rollback at 45");
    assert_eq!(db.count(Cf::TxnValue), 0);
    assert_eq!(db.get(b"k", 55).unwrap(), Some(b"b".to_vec()));
    assert_eq!(db.get(b"k", 60).unwrap(), Some(b"c".to_vec()));
    // A delete at or below the safe point takes every older version with it.
    db.prewrite(&props(b"k", 70), op(b"k", MutationOp::Delete), false)
        .unwrap();
    db.run(|txn, r| commit(txn, r, b"k", 70, 80)).unwrap();
    db.run(|txn, r| gc(txn, r, b"k", 90, usize::MAX)).unwrap();
    assert_eq!(db.count(Cf::Write), 1, "only the key's GC fence");
    assert_eq!(db.get(b"k", 90).unwrap(), None);
    // A read below the safe point would have seen a version that is gone: refused.
    assert!(matches!(
        db.get(b"k", 75),
        Err(Error::BelowSafePoint { safe_point: 90, .. })
    ));
}

/// Runs GC steps of `budget` bytes until one drops nothing; checks after each step that
/// a read at the safe point sees `expect`.
fn gc_in_steps(db: &Db, safe_point: u64, budget: usize, expect: Option<&[u8]>) -> usize {
    let mut steps = 0;
    while db
        .run(|txn, r| gc(txn, r, b"k", safe_point, budget))
        .unwrap()
        > 0
    {
        steps += 1;
        assert_eq!(db.get(b"k", safe_point).unwrap().as_deref(), expect);
    }
    steps
}

#[test]
fn gc_in_bounded_steps_ends_where_one_unbounded_call_would() {
    let db = Db::new();
    for i in 0..5u64 {
        db.put(b"k", b"v", 10 + 10 * i, 15 + 10 * i);
    }
    // A write CF key of `k` is 18 bytes: each step drops one or two records.
    assert!(gc_in_steps(&db, 50, 36, Some(b"v")) >= 2);
    assert_eq!(
        db.count(Cf::Write),
        3,
        "the version visible at 50, the newer one and the fence stay"
    );
    let written = db
        .run(|_, r| r.written_keys(&keys::data_key(b""), &keys::data_end_key(b""), 10))
        .unwrap();
    assert_eq!(written, vec![b"k".to_vec()]);
    // A delete goes only with everything under it: a step that cannot take them all
    // leaves it in place, and the key stays deleted.
    db.prewrite(&props(b"k", 60), op(b"k", MutationOp::Delete), false)
        .unwrap();
    db.run(|txn, r| commit(txn, r, b"k", 60, 65)).unwrap();
    db.run(|txn, r| rollback(txn, r, b"k", 70, false)).unwrap();
    assert!(gc_in_steps(&db, 100, 19, None) >= 3);
    assert_eq!(db.count(Cf::Write), 1, "the fence alone");
}

#[test]
fn gc_memory_stays_bounded_for_a_key_with_many_versions() {
    let db = Db::new();
    for i in 0..300u64 {
        db.put(b"k", b"v", 10 + 10 * i, 15 + 10 * i);
    }
    // Each step holds at most about `budget` bytes, whatever the key's history.
    let steps = gc_in_steps(&db, 10_000, 18 * 10, Some(b"v"));
    assert!(steps >= 29, "{steps} steps of at most 10 records for 299");
    assert_eq!(db.count(Cf::Write), 2);
}

#[test]
fn key_listing_merges_locked_and_committed_keys_in_both_directions() {
    let db = Db::new();
    db.put(b"a", b"1", 10, 20);
    db.put(b"a", b"2", 30, 40);
    db.prewrite(&props(b"b", 50), put(b"b", b"x"), false)
        .unwrap();
    db.put(b"c", b"3", 10, 20);
    db.prewrite(&props(b"c", 50), put(b"c", b"y"), false)
        .unwrap();
    db.prewrite(&props(b"d", 50), put(b"d", b"z"), false)
        .unwrap();
    let list = |reverse: bool, limit: usize| {
        let snap = db.engine.snapshot();
        let r = MvccReader::new(&snap);
        let mut out = vec![];
        r.keys_in(keys::DATA_MIN_KEY, keys::DATA_MAX_KEY, reverse, &mut |k| {
            out.push(k);
            Ok(out.len() < limit)
        })
        .unwrap();
        out
    };
    let all: Vec<Vec<u8>> = [b"a", b"b", b"c", b"d"]
        .iter()
        .map(|k| k.to_vec())
        .collect();
    assert_eq!(list(false, 10), all);
    assert_eq!(
        list(true, 10),
        all.iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(list(false, 2), all[..2].to_vec());
    assert_eq!(
        list(true, 3),
        vec![b"d".to_vec(), b"c".to_vec(), b"b".to_vec()]
    );
}

#[test]
fn a_status_check_on_a_secondary_answers_primary_mismatch_and_changes_nothing() {
    let db = Db::new();
    let start = from_physical_ms(1_000);
    // Transaction `start` locks p (primary) and s; p commits, s is still locked.
    db.prewrite(&props(b"p", start), put(b"p", b"v"), false)
        .unwrap();
    db.prewrite(&props(b"p", start), put(b"s", b"v"), false)
        .unwrap();
    db.run(|txn, r| commit(txn, r, b"p", start, start + 10))
        .unwrap();
    // A hostile or buggy caller names the secondary as the primary, long after its TTL.
    let c = CheckTxnStatus {
        primary: b"s".to_vec(),
        lock_ts: start,
        caller_start_ts: start + 20,
        current_ts: from_physical_ms(1_000_000),
        rollback_if_not_exist: true,
        ..Default::default()
    };
    let err = db.run(|txn, r| check_txn_status(txn, r, &c));
    assert!(
        matches!(&err, Err(Error::PrimaryMismatch { key, lock }) if key == b"s" && lock.primary == b"p"),
        "{err:?}"
    );
    let lock = db.lock(b"s").expect("the secondary's lock stays");
    assert_eq!(lock.min_commit_ts, 0, "not pushed either");
    // The transaction still commits whole.
    db.run(|txn, r| commit(txn, r, b"s", start, start + 10))
        .unwrap();
    assert_eq!(db.get(b"s", start + 10).unwrap(), Some(b"v".to_vec()));
}

#[test]
fn a_status_check_reports_pushed_whenever_the_lock_is_above_the_caller_and_writes_nothing_for_caller_0(
) {
    let db = Db::new();
    let start = from_physical_ms(1_000);
    let mut p = props(b"p", start);
    p.min_commit_ts = start + 100;
    db.prewrite(&p, put(b"p", b"v"), false).unwrap();
    let check = |caller: u64| CheckTxnStatus {
        primary: b"p".to_vec(),
        lock_ts: start,
        caller_start_ts: caller,
        current_ts: from_physical_ms(1_500),
        ..Default::default()
    };
    // Already above this reader: nothing to push, but the reader may pass the lock.
    let st = db
        .run(|txn, r| {
            let st = check_txn_status(txn, r, &check(start + 50))?;
            assert!(txn.is_empty(), "nothing written for a reader already below");
            Ok(st)
        })
        .unwrap();
    assert!(
        matches!(st, TxnStatus::Locked { pushed: true, .. }),
        "{st:?}"
    );
    // A caller of 0 (a status query or GC) learns the state and writes nothing.
    let st = db
        .run(|txn, r| {
            let st = check_txn_status(txn, r, &check(0))?;
            assert!(txn.is_empty(), "a status query writes nothing");
            Ok(st)
        })
        .unwrap();
    assert!(
        matches!(st, TxnStatus::Locked { pushed: false, .. }),
        "{st:?}"
    );
    assert_eq!(db.lock(b"p").unwrap().min_commit_ts, start + 100);
}

#[test]
fn a_prewrite_after_a_pessimistic_lock_keeps_the_longer_ttl() {
    let db = Db::new();
    let lock = PessimisticLock {
        key: b"k".to_vec(),
        primary: b"k".to_vec(),
        start_ts: 10,
        for_update_ts: 10,
        ttl: 3_000,
        ..Default::default()
    };
    db.run(|txn, r| acquire_pessimistic_lock(txn, r, &lock))
        .unwrap();
    // A heartbeat extends the primary's TTL while the transaction runs.
    db.run(|txn, r| heartbeat(txn, r, b"k", 10, 60_000))
        .unwrap();
    let mut p = props(b"k", 10);
    p.for_update_ts = 10;
    p.lock_ttl = 3_000;
    db.prewrite(&p, put(b"k", b"v"), true).unwrap();
    assert_eq!(db.lock(b"k").unwrap().ttl, 60_000);
}

#[test]
fn a_limited_key_listing_reads_a_bounded_number_of_locks_and_gc_a_bounded_number_of_versions() {
    let db = Db::new();
    for i in 0..2_000u32 {
        let key = format!("k{i:05}").into_bytes();
        db.prewrite(&props(&key, 10), put(&key, b"v"), false)
            .unwrap();
    }
    let snap = crate::test_util::Counting::new(&db.engine);
    let reader = MvccReader::new(&snap);
    let mut listed = 0;
    reader
        .keys_in(keys::DATA_MIN_KEY, keys::DATA_MAX_KEY, false, &mut |_| {
            listed += 1;
            Ok(listed < 10)
        })
        .unwrap();
    assert_eq!(listed, 10);
    assert!(
        snap.visited(Cf::Lock) <= 10 + 64,
        "{} locks read for 10 keys",
        snap.visited(Cf::Lock)
    );
    // GC of a key with a long history reads about what one bounded step drops.
    for i in 0..500u64 {
        db.put(b"h", b"v", 100 + 10 * i, 105 + 10 * i);
    }
    let snap = crate::test_util::Counting::new(&db.engine);
    let reader = MvccReader::new(&snap);
    let mut txn = crate::MvccTxn::new();
    let dropped = gc(&mut txn, &reader, b"h", 100_000, 18 * 20).unwrap();
    assert!(dropped <= 20, "{dropped}");
    assert!(
        snap.visited(Cf::Write) <= 2 * 20 + 2,
        "{} versions read to drop {dropped}",
        snap.visited(Cf::Write)
    );
}
