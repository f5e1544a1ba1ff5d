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

const L: Limits = Limits {
    max_key_size: 64,
    max_keys: 100,
    max_ttl_ms: 60_000,
};
const BUDGET: usize = 1 << 20;

fn run_prewrite(
    db: &Db,
    cm: &ConcurrencyManager,
    req: &PrewriteRequest,
) -> Result<PrewriteOutcome> {
    db.run(|txn, r| {
        let (out, t, _guard) = prewrite(r, cm, req, &L)?;
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
    // Locks whose primary or secondaries could never be looked up, or that would block
    // their keys for longer than a store allows.
    let mut r = request(&[b"a"], 10);
    r.props.primary = vec![];
    bad(r, "primary_lock must not be empty");
    let mut r = request(&[b"a"], 10);
    r.props.primary = vec![b'p'; 65];
    bad(r, "primary_lock");
    let mut r = request(&[b"a"], 10);
    r.props.async_commit = true;
    r.props.secondaries = vec![b"b".to_vec(), vec![]];
    bad(r, "a secondary must not be empty");
    let mut r = request(&[b"a"], 10);
    r.props.async_commit = true;
    r.props.secondaries = vec![vec![b's'; 65]];
    bad(r, "more than txn.max-key-size");
    let mut r = request(&[b"a"], 10);
    r.props.async_commit = true;
    r.props.secondaries = (0..101u32).map(|i| i.to_be_bytes().to_vec()).collect();
    bad(r, "secondaries has 101 entries");
    let mut r = request(&[b"a"], 10);
    r.props.lock_ttl = 60_001;
    bad(r, "above txn.max-lock-ttl");
    let keys: Vec<Vec<u8>> = (0..101u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    bad(request(&keys, 10), "mutations has 101 entries");
    assert_eq!(db.count(Cf::Lock), 0);
    run_prewrite(&db, &cm, &request(&[b"a"], 10)).unwrap();
    for (start, commit_ts, says) in [
        (10, 10, "must be above"),
        (10, 5, "must be above"),
        (0, 5, "must not be 0"),
    ] {
        let err = db
            .run(|txn, r| {
                *txn = MvccTxn::concat(commit(r, &[b"a".to_vec()], start, commit_ts, &L, BUDGET)?);
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
    // Two phases keep no secondaries (tikv-client sends them anyway): not bounded.
    let mut r = request(&[b"z"], 10);
    r.props.secondaries = (0..101u32).map(|i| i.to_be_bytes().to_vec()).collect();
    run_prewrite(&db, &cm, &r).unwrap();
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
    let (out, _txn, guard) = prewrite(&reader, &cm, &req, &L).unwrap();
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
        let locks = r.scan_locks(
            keys::DATA_MIN_KEY,
            keys::DATA_MAX_KEY,
            &|_| true,
            0,
            usize::MAX,
        )?;
        *txn = MvccTxn::concat(resolve_locks(r, &cm, &[(10, 15), (20, 0)], &locks, BUDGET)?);
        Ok(())
    })
    .unwrap();
    assert_eq!(db.count(Cf::Lock), 0);
    assert_eq!(db.get(b"b", 15).unwrap(), Some(b"v".to_vec()));
    assert_eq!(db.get(b"c", 25).unwrap(), None);
}

#[test]
fn resolving_refuses_commit_timestamps_not_above_the_start_and_too_many_transactions() {
    let many: Vec<(u64, u64)> = (1..=101).map(|t| (t, 0)).collect();
    for txns in [&[(50u64, 40u64)][..], &[(50, 50)], &[(0, 10)], &[], &many] {
        let err = check_resolve(txns, &L).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{txns:?}: {err}");
    }
    check_resolve(&[(50, 51), (60, 0)], &L).unwrap();
}

#[test]
fn one_phase_commit_lands_above_rollbacks_and_reports_its_timestamp_when_retried() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    // A resolver rolls back transaction 31 on another key: no commit may land at 31
    // afterwards, where it could hide that rollback.
    db.run(|txn, r| {
        *txn = MvccTxn::concat(rollback(r, &cm, &[b"b".to_vec()], 31, &L, BUDGET)?);
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
fn an_async_or_1pc_prewrite_above_the_clients_bound_falls_back_to_two_phases() {
    let db = Db::new();
    let cm = ConcurrencyManager::new(100);
    let mut req = request(&[b"a"], 10);
    req.props.async_commit = true;
    req.props.secondaries = vec![b"b".to_vec()];
    req.props.max_commit_ts = 50;
    let out = run_prewrite(&db, &cm, &req).unwrap();
    assert_eq!(
        (out.min_commit_ts, out.one_pc_commit_ts),
        (0, 0),
        "two phases"
    );
    let lock = db.lock(b"a").expect("a two-phase lock");
    assert!(
        !lock.use_async_commit && lock.secondaries.is_empty(),
        "{lock:?}"
    );
    // The same for 1PC: the key is locked, not committed, and the client commits it.
    let mut one_pc = request(&[b"x"], 10);
    one_pc.props.one_pc = true;
    one_pc.props.max_commit_ts = 50;
    let out = run_prewrite(&db, &cm, &one_pc).unwrap();
    assert_eq!((out.min_commit_ts, out.one_pc_commit_ts), (0, 0));
    assert!(db.lock(b"x").is_some());
    assert_eq!(db.count(Cf::Write), 0, "nothing committed");
    // The fallen-back prewrite holds no lock in memory.
    cm.read_key(b"a", 200, &Bypass::default()).unwrap();
    // A key that only checked leaves no lock in memory either.
    let mut req = request(&[b"d"], 10);
    req.props.async_commit = true;
    req.mutations.push(Mutation {
        key: b"c".to_vec(),
        op: MutationOp::CheckNotExists,
    });
    let snap = db.engine.snapshot();
    let reader = MvccReader::new(&snap);
    let (_, _, guard) = prewrite(&reader, &cm, &req, &L).unwrap();
    cm.read_key(b"c", 300, &Bypass::default()).unwrap();
    assert!(cm.read_key(b"d", 300, &Bypass::default()).is_err());
    drop(guard);
}

#[test]
fn a_commit_of_many_keys_comes_in_batches_within_the_budget() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    let keys: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("key{i:04}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    run_prewrite(&db, &cm, &request(&refs, 10)).unwrap();
    let snap = db.engine.snapshot();
    let reader = MvccReader::new(&snap);
    let batches = commit(&reader, &keys, 10, 20, &L, 500).unwrap();
    assert!(batches.len() > 1, "{} batches", batches.len());
    // Each batch is cut at the first key that passes the budget.
    assert!(batches.iter().all(|b| b.size() < 500 + 100), "{batches:?}");
    // Every key is decided before anything is written: one key without a lock fails the
    // whole request.
    let mut more = keys.clone();
    more.push(b"unlocked".to_vec());
    assert!(matches!(
        commit(&reader, &more, 10, 20, &L, 500),
        Err(Error::TxnLockNotFound { .. })
    ));
}

#[test]
fn a_retried_async_or_1pc_prewrite_after_a_fallback_falls_back_again() {
    let db = Db::new();
    let cm = ConcurrencyManager::new(100);
    for one_pc in [false, true] {
        let key: &[u8] = if one_pc { b"o" } else { b"a" };
        let mut req = request(&[key], 10);
        req.props.async_commit = !one_pc;
        req.props.one_pc = one_pc;
        req.props.min_commit_ts = 11;
        req.props.max_commit_ts = 50;
        let first = run_prewrite(&db, &cm, &req).unwrap();
        // The answer was lost; the client sends the same prewrite again.
        let again = run_prewrite(&db, &cm, &req).unwrap();
        for out in [first, again] {
            assert_eq!(
                (out.min_commit_ts, out.one_pc_commit_ts),
                (0, 0),
                "never claims an async or 1PC commit (1PC: {one_pc})"
            );
        }
        assert!(db.lock(key).is_some(), "the two-phase lock stays");
    }
}

#[test]
fn a_batched_commit_commits_the_primary_in_its_first_batch() {
    let db = Db::new();
    let cm = ConcurrencyManager::default();
    let keys: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("key{i:04}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let mut req = request(&refs, 10);
    req.props.primary = keys[49].clone();
    run_prewrite(&db, &cm, &req).unwrap();
    let snap = db.engine.snapshot();
    let reader = MvccReader::new(&snap);
    let batches = commit(&reader, &keys, 10, 20, &L, 500).unwrap();
    assert!(batches.len() > 1);
    let first = batches.into_iter().next().unwrap().into_modifies();
    let primary_record = keys::txn::write_key(&keys[49], 20);
    assert!(
        first
            .iter()
            .any(|m| matches!(m, crate::Modify::Put { key, .. } if *key == primary_record)),
        "a lost later batch must not leave secondaries committed without their primary"
    );
}
