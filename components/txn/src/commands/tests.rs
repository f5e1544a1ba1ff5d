//! Whole requests: all keys or none, bad input refused, async commit and 1PC.

use engine::Cf;

use super::*;
use crate::{reader::Bypass, test_util::Db, types::MutationOp};

fn request(keys: &[&[u8]], start_ts: u64) -> PrewriteRequest {
    PrewriteRequest {
        mutations: keys
            .iter()
            .map(|k| Mutation {
                key: k.to_vec(),
                op: MutationOp::Put(b"v".to_vec()),
            })
            .collect(),
        pessimistic: vec![],
        props: TxnProps {
            start_ts,
            primary: keys[0].to_vec(),
            lock_ttl: 3000,
            ..Default::default()
        },
    }
}

fn run_prewrite(
    db: &Db,
    cm: &ConcurrencyManager,
    req: &PrewriteRequest,
) -> Result<PrewriteOutcome> {
    db.run(|txn, r| {
        let (out, t, _guard) = prewrite(r, cm, req)?;
        *txn = t;
        Ok(out)
    })
}

#[test]
fn a_prewrite_that_meets_a_lock_writes_none_of_its_keys() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    run_prewrite(&db, &cm, &request(&[b"b"], 10)).unwrap();
    let out = run_prewrite(&db, &cm, &request(&[b"a", b"b", b"c"], 20)).unwrap();
    assert_eq!(out.locked.len(), 1);
    assert!(matches!(&out.locked[0], Error::KeyIsLocked { key, .. } if key == b"b"));
    assert_eq!(db.count(Cf::Lock), 1, "only the first transaction's lock");
}

#[test]
fn bad_requests_are_refused_and_write_nothing() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    let bad = |req: PrewriteRequest, says: &str| {
        let err = run_prewrite(&db, &cm, &req).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest(w) if w.contains(says)),
            "{err} should say {says}"
        );
    };
    bad(request(&[b"a"], 0), "start_version must not be 0");
    bad(request(&[b"a", b"a"], 10), "given twice");
    bad(request(&[b""], 10), "must not be empty");
    let mut r = request(&[b"a"], 10);
    r.mutations.clear();
    bad(r, "no keys");
    let mut r = request(&[b"a", b"b"], 10);
    r.pessimistic = vec![true];
    r.props.for_update_ts = 10;
    bad(r, "pessimistic flags");
    let mut r = request(&[b"a"], 10);
    r.pessimistic = vec![true];
    bad(r, "for_update_ts");
    run_prewrite(&db, &cm, &request(&[b"a"], 10)).unwrap();
    for (start, commit_ts, says) in [
        (10, 10, "must be above"),
        (10, 5, "must be above"),
        (0, 5, "must not be 0"),
    ] {
        let err = db
            .run(|txn, r| {
                *txn = commit(r, &[b"a".to_vec()], start, commit_ts)?;
                Ok(())
            })
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest(w) if w.contains(says)),
            "{err}"
        );
    }
    assert_eq!(db.count(Cf::Write), 0);
    assert_eq!(db.count(Cf::Lock), 1);
}

#[test]
fn a_read_during_an_async_prewrite_meets_its_lock_or_is_committed_over() {
    let db = Db::new();
    let cm = ConcurrencyManager::new(50);
    let mut req = request(&[b"p", b"s"], 10);
    req.props.async_commit = true;
    req.props.secondaries = vec![b"s".to_vec()];
    let snap = db.engine.snapshot();
    let reader = MvccReader::new(&snap);
    let (out, _txn, guard) = prewrite(&reader, &cm, &req).unwrap();
    assert_eq!(out.min_commit_ts, 51, "above max_ts");
    // Before the locks are applied: a read above min_commit_ts meets them, one below
    // passes (the commit will land above it).
    assert!(matches!(
        cm.read_key(b"s", 60, &Bypass::default()),
        Err(Error::KeyIsLocked { .. })
    ));
    cm.read_key(b"s", 40, &Bypass::default()).unwrap();
    drop(guard);
    cm.read_key(b"s", 70, &Bypass::default()).unwrap();
    assert_eq!(cm.max_ts(), 70);
}

#[test]
fn one_phase_commit_writes_commit_records_and_no_locks() {
    let db = Db::new();
    let cm = ConcurrencyManager::new(30);
    let mut req = request(&[b"a", b"b"], 10);
    req.props.one_pc = true;
    let out = run_prewrite(&db, &cm, &req).unwrap();
    assert_eq!(out.one_pc_commit_ts, 31);
    assert_eq!(db.count(Cf::Lock), 0);
    assert_eq!(db.get(b"a", 30).unwrap(), None);
    assert_eq!(db.get(b"b", 31).unwrap(), Some(b"v".to_vec()));
}

#[test]
fn resolving_commits_or_rolls_back_each_transactions_locks() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    run_prewrite(&db, &cm, &request(&[b"a", b"b"], 10)).unwrap();
    run_prewrite(&db, &cm, &request(&[b"c"], 20)).unwrap();
    db.run(|txn, r| {
        let locks = r.scan_locks(keys::DATA_MIN_KEY, keys::DATA_MAX_KEY, &|_| true, 0)?;
        *txn = resolve_locks(r, &cm, &[(10, 15), (20, 0)], &locks)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(db.count(Cf::Lock), 0);
    assert_eq!(db.get(b"b", 15).unwrap(), Some(b"v".to_vec()));
    assert_eq!(db.get(b"c", 25).unwrap(), None);
}

#[test]
fn resolving_refuses_commit_timestamps_not_above_the_start() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    for txns in [[(50u64, 40u64)], [(50, 50)], [(0, 10)]] {
        let err = db
            .run(|txn, r| {
                *txn = resolve_locks(r, &cm, &txns, &[])?;
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{txns:?}: {err}");
    }
}

#[test]
fn one_phase_commit_lands_above_rollbacks_and_reports_its_timestamp_when_retried() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    // A resolver rolls back transaction 31 on another key: no commit may land at 31
    // afterwards, where it could hide that rollback.
    db.run(|txn, r| {
        *txn = rollback(r, &cm, &[b"b".to_vec()], 31)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(cm.max_ts(), 31, "a rollback raises max_ts");
    let mut req = request(&[b"a"], 10);
    req.props.one_pc = true;
    let out = run_prewrite(&db, &cm, &req).unwrap();
    assert_eq!(out.one_pc_commit_ts, 32);
    let again = run_prewrite(&db, &cm, &req).unwrap();
    assert_eq!(
        again.one_pc_commit_ts, 32,
        "a retry reports the same commit"
    );
    assert_eq!(db.count(Cf::Write), 2, "the retry wrote nothing");
}

#[test]
fn a_pessimistic_one_phase_commit_removes_its_pessimistic_locks() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    let lock = crate::actions::PessimisticLock {
        key: b"a".to_vec(),
        primary: b"a".to_vec(),
        start_ts: 10,
        for_update_ts: 12,
        ttl: 3000,
        ..Default::default()
    };
    db.run(|txn, r| crate::actions::acquire_pessimistic_lock(txn, r, &lock))
        .unwrap();
    let mut req = request(&[b"a"], 10);
    req.props.one_pc = true;
    req.props.for_update_ts = 12;
    req.pessimistic = vec![true];
    let out = run_prewrite(&db, &cm, &req).unwrap();
    assert_eq!(out.one_pc_commit_ts, 13);
    assert_eq!(db.count(Cf::Lock), 0);
    assert_eq!(db.get(b"a", 13).unwrap(), Some(b"v".to_vec()));
}

#[test]
fn an_async_prewrite_above_the_clients_bound_fails_and_drops_its_memory_locks() {
    let db = Db::new();
    let cm = ConcurrencyManager::new(100);
    let mut req = request(&[b"a"], 10);
    req.props.async_commit = true;
    req.props.max_commit_ts = 50;
    assert!(matches!(
        run_prewrite(&db, &cm, &req),
        Err(Error::CommitTsTooLarge {
            min_commit_ts: 101,
            ..
        })
    ));
    cm.read_key(b"a", 200, &Bypass::default()).unwrap();
    // A key that only checked leaves no lock in memory either.
    req.props.max_commit_ts = 0;
    req.mutations.push(Mutation {
        key: b"c".to_vec(),
        op: MutationOp::CheckNotExists,
    });
    let snap = db.engine.snapshot();
    let reader = MvccReader::new(&snap);
    let (_, _, guard) = prewrite(&reader, &cm, &req).unwrap();
    cm.read_key(b"c", 300, &Bypass::default()).unwrap();
    assert!(cm.read_key(b"a", 300, &Bypass::default()).is_err());
    drop(guard);
}
