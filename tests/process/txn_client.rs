//! Flotilla's own transactional client (`client::txn`) against a three-store cluster:
//! write skew as snapshot isolation permits it and as `lock_keys` prevents it, and a
//! bank whose total never changes while transfers run through splits, leader moves and
//! a store killed and restarted.

use crate::common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use client::{
    txn::{CommitMode, Mode, TxnClient, TxnState},
    Error,
};
use common::{kvctl, wait_until, ProcCluster, StopOnDrop};

const T: Duration = Duration::from_secs(20);
const ACCOUNTS: usize = 10;
const START_BALANCE: u64 = 100;

fn account(i: usize) -> Vec<u8> {
    format!("acct-{i}").into_bytes()
}

/// Three stores with three voters each; the transactional client.
fn cluster(rt: &tokio::runtime::Runtime) -> (ProcCluster, client::Client, TxnClient) {
    cluster_with(rt, "")
}

/// Like [`cluster`], with extra store settings (TOML after `[raftstore]`).
fn cluster_with(
    rt: &tokio::runtime::Runtime,
    extra: &str,
) -> (ProcCluster, client::Client, TxnClient) {
    let cluster = ProcCluster::start_with(3, extra);
    let raw = common::client(rt, &cluster.pd_addr);
    wait_until("three voters", Duration::from_secs(60), || {
        common::voters(rt, &raw) == 3
    });
    let txn = rt
        .block_on(TxnClient::connect(
            std::slice::from_ref(&cluster.pd_addr),
            T,
        ))
        .expect("connect");
    (cluster, raw, txn)
}

/// Splits the region holding transactional `key` just before it.
fn split_at(rt: &tokio::runtime::Runtime, raw: &client::Client, key: &[u8]) {
    let at = keys::txn::encode_bytes(key);
    let region = rt
        .block_on(raw.regions())
        .expect("regions")
        .into_iter()
        .find(|r| {
            let (s, e) = (r.region.get_start_key(), r.region.get_end_key());
            s <= at.as_slice() && (e.is_empty() || at.as_slice() < e)
        })
        .expect("a region holds every key");
    if region.region.get_start_key() != at.as_slice() {
        rt.block_on(raw.split_region(region.region.get_id(), &[at]))
            .expect("split");
    }
}

fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Conflict { .. })
}

/// Two on-call doctors, at least one must stay on call; each transaction checks that
/// the other is on call and takes itself off.
async fn go_off_call(c: &TxnClient, me: &[u8], other: &[u8], lock: bool) -> client::Result<u64> {
    let mut t = c.begin().await?;
    let on_call = t.get(me).await?.is_some() as u8 + t.get(other).await?.is_some() as u8;
    assert_eq!(on_call, 2, "both start on call");
    if lock {
        t.lock_keys(&[me.to_vec(), other.to_vec()]).await?;
    }
    t.delete(me).await?;
    t.commit().await
}

#[test]
fn write_skew_happens_under_snapshot_isolation_and_lock_keys_prevents_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_cluster, raw, c) = cluster(&rt);
    split_at(&rt, &raw, b"doctor-b");
    rt.block_on(async {
        for (round, lock) in [(0, false), (1, true)] {
            let (a, b) = (
                format!("doctor-a-{round}").into_bytes(),
                format!("doctor-b-{round}").into_bytes(),
            );
            let mut init = c.begin().await.unwrap();
            init.put(&a, b"on").await.unwrap();
            init.put(&b, b"on").await.unwrap();
            init.commit().await.unwrap();
            // Both read before either commits.
            let (ra, rb) =
                tokio::join!(go_off_call(&c, &a, &b, lock), go_off_call(&c, &b, &a, lock));
            let after = c.begin().await.unwrap();
            let still = after.get(&a).await.unwrap().is_some() as u8
                + after.get(&b).await.unwrap().is_some() as u8;
            if lock {
                // Optimistic transactions may both lose: the first to find the
                // other's lock rolls it back, and that rollback record is then a
                // newer write for its own retry. What lock_keys rules out is both
                // winning.
                let failed: Vec<&client::Result<u64>> =
                    [&ra, &rb].into_iter().filter(|r| r.is_err()).collect();
                assert!(
                    !failed.is_empty(),
                    "at most one of the two wins: {ra:?} {rb:?}"
                );
                assert!(
                    failed.iter().all(|r| is_conflict(r.as_ref().unwrap_err())),
                    "{ra:?} {rb:?}"
                );
                assert_eq!(
                    still as usize,
                    failed.len(),
                    "each loser stays on call: {ra:?} {rb:?}"
                );
            } else {
                assert!(
                    ra.is_ok() && rb.is_ok(),
                    "snapshot isolation lets both commit: {ra:?} {rb:?}"
                );
                assert_eq!(still, 0, "the anomaly: nobody is on call");
            }
        }
    });
}

#[test]
fn pessimistic_transactions_lock_at_write_and_the_loser_fails_then() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_cluster, _raw, c) = cluster(&rt);
    rt.block_on(async {
        let mut a = c.begin_with(Mode::Pessimistic).await.unwrap();
        let mut b = c.begin_with(Mode::Pessimistic).await.unwrap();
        a.put(b"p-key", b"a").await.unwrap();
        let a_start = a.start_ts();
        let t0 = Instant::now();
        let ((r, waited), committed) = tokio::join!(
            async {
                let r = b.put(b"p-key", b"b").await;
                (r, t0.elapsed())
            },
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                a.commit().await.expect("a commits")
            }
        );
        assert!(
            waited >= Duration::from_millis(300),
            "b waited for a's lock"
        );
        match r {
            Err(Error::Conflict {
                conflict_commit_ts, ..
            }) => assert_eq!(conflict_commit_ts, committed),
            other => panic!("b must fail at its write with a conflict: {other:?}"),
        }
        let r = c.begin().await.unwrap();
        assert_eq!(r.get(b"p-key").await.unwrap(), Some(b"a".to_vec()));
        // Status through the primary key: committed, and unknown at another start.
        assert_eq!(
            c.status(b"p-key", a_start).await.unwrap(),
            TxnState::Committed(committed)
        );
        assert_eq!(
            c.status(b"p-key", a_start - 1).await.unwrap(),
            TxnState::NotFound
        );
    });
}

fn balance(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a balance is a number")
}

/// Sum and count of the accounts as of one snapshot.
async fn snapshot_total(c: &TxnClient) -> client::Result<(u64, usize)> {
    let t = c.begin().await?;
    let pairs = t.scan(b"acct-", b"acct.", 100).await?;
    Ok((pairs.iter().map(|(_, v)| balance(v)).sum(), pairs.len()))
}

/// One transfer between two random accounts.
async fn transfer(c: &TxnClient, seed: u64) -> client::Result<u64> {
    let from = (seed % ACCOUNTS as u64) as usize;
    let to = (from + 1 + (seed / 7 % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
    let mut t = c.begin().await?;
    let a = balance(&t.get(&account(from)).await?.expect("every account exists"));
    let b = balance(&t.get(&account(to)).await?.expect("every account exists"));
    let amount = (seed % 13).min(a);
    t.put(&account(from), (a - amount).to_string().as_bytes())
        .await?;
    t.put(&account(to), (b + amount).to_string().as_bytes())
        .await?;
    t.commit().await
}

#[test]
fn bank_total_holds_through_splits_leader_moves_and_a_store_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut cluster, raw, c) = cluster(&rt);
    let c = Arc::new(c);
    rt.block_on(async {
        let mut init = c.begin().await.unwrap();
        for i in 0..ACCOUNTS {
            init.put(&account(i), START_BALANCE.to_string().as_bytes())
                .await
                .unwrap();
        }
        init.commit().await.unwrap();
    });
    split_at(&rt, &raw, &account(5));
    let total = START_BALANCE * ACCOUNTS as u64;

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(&stop);
    let (committed, conflicts, checks) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut workers = vec![];
    for w in 0..4u64 {
        let (c, stop, committed, conflicts) = (
            c.clone(),
            stop.clone(),
            committed.clone(),
            conflicts.clone(),
        );
        workers.push(rt.spawn(async move {
            let mut seed = w * 1_000_003 + 17;
            while !stop.load(Relaxed) && Instant::now() < deadline {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match transfer(&c, seed >> 33).await {
                    Ok(_) => committed.fetch_add(1, Relaxed),
                    Err(e) if is_conflict(&e) => conflicts.fetch_add(1, Relaxed),
                    // A store killed mid-transfer: the transfer is atomic either way.
                    Err(_) => 0,
                };
            }
        }));
    }
    let reader = {
        let (c, stop, checks) = (c.clone(), stop.clone(), checks.clone());
        rt.spawn(async move {
            let mut bad = vec![];
            while !stop.load(Relaxed) && Instant::now() < deadline {
                if let Ok((sum, n)) = snapshot_total(&c).await {
                    checks.fetch_add(1, Relaxed);
                    if sum != total || n != ACCOUNTS {
                        bad.push((sum, n));
                    }
                }
            }
            bad
        })
    };
    let progress = |what: &str, n: u64| {
        let start = committed.load(Relaxed);
        wait_until(what, Duration::from_secs(60), || {
            committed.load(Relaxed) >= start + n
        });
    };

    progress("transfers before the nemesis", 20);
    split_at(&rt, &raw, &account(2));
    split_at(&rt, &raw, &account(8));
    progress("transfers after the splits", 20);
    let regions = rt.block_on(raw.regions()).expect("regions");
    assert!(
        regions.len() >= 4,
        "the splits took effect: {} regions",
        regions.len()
    );
    let moved = regions
        .iter()
        .filter(|r| r.leader.is_some())
        .take(2)
        .filter(|r| {
            let leader = r.leader.as_ref().unwrap().get_store_id();
            let to = r
                .region
                .get_peers()
                .iter()
                .map(|p| p.get_store_id())
                .find(|s| *s != leader);
            let out = kvctl(
                &cluster.pd_addr,
                &[
                    "region",
                    "transfer-leader",
                    &r.region.get_id().to_string(),
                    "--to",
                    &to.unwrap().to_string(),
                ],
            );
            out.status.success()
        })
        .count();
    assert!(moved > 0, "at least one leader moved");
    progress("transfers after the leader moves", 20);
    cluster.kill_store(2);
    progress("transfers with a store down", 10);
    cluster.start_store(2);
    progress("transfers after the restart", 20);

    stop.store(true, Relaxed);
    for w in workers {
        rt.block_on(w).unwrap();
    }
    let bad = rt.block_on(reader).unwrap();
    assert!(
        bad.is_empty(),
        "snapshot reads saw totals other than {total}: {bad:?}"
    );
    assert!(
        checks.load(Relaxed) > 5,
        "the reader checked during the run"
    );
    let (sum, n) = rt.block_on(snapshot_total(&c)).expect("final read");
    assert_eq!(
        (sum, n),
        (total, ACCOUNTS),
        "the final state keeps the total"
    );
    eprintln!(
        "bank: {} transfers committed, {} conflicts, {} snapshot checks",
        committed.load(Relaxed),
        conflicts.load(Relaxed),
        checks.load(Relaxed)
    );
}

#[test]
fn gc_advances_by_itself_resolves_old_locks_and_drops_old_versions() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, raw, c) = cluster_with(&rt, "[gc]\nrun-interval = \"1s\"\nlife-time = \"2s\"");
    let updates = 30;
    let abandoned = rt.block_on(async {
        for i in 0..updates {
            let mut t = c.begin().await.unwrap();
            t.put(b"hot", i.to_string().as_bytes()).await.unwrap();
            t.commit().await.unwrap();
        }
        // A transaction that locked a key and was abandoned.
        let mut dead = c.begin_with(Mode::Pessimistic).await.unwrap();
        dead.put(b"abandoned", b"x").await.unwrap();
        let start = dead.start_ts();
        std::mem::forget(dead);
        start
    });
    let written = rt.block_on(c.current_ts()).unwrap();
    let store_metric = |name: &str| {
        (0..3)
            .filter_map(|i| common::http_get(&cluster.status_addr(i), "/metrics"))
            .map(|m| common::metric(&m, name))
            .sum::<f64>()
    };
    wait_until(
        "the safe point passes the writes",
        Duration::from_secs(60),
        || {
            rt.block_on(raw.pd().get_gc_safe_point())
                .is_ok_and(|sp| sp > written)
        },
    );
    wait_until("old versions dropped", Duration::from_secs(30), || {
        store_metric("flotilla_gc_versions_dropped_total") >= (updates - 1) as f64
    });
    assert!(
        store_metric("flotilla_gc_locks_resolved_total") >= 1.0,
        "the abandoned lock was resolved"
    );
    let t = rt.block_on(c.begin()).unwrap();
    assert_eq!(
        rt.block_on(t.get(b"hot")).unwrap(),
        Some((updates - 1).to_string().into_bytes())
    );
    assert_eq!(
        rt.block_on(t.get(b"abandoned")).unwrap(),
        None,
        "the abandoned write never landed"
    );
    let state = rt.block_on(c.status(b"abandoned", abandoned)).unwrap();
    assert!(
        matches!(state, TxnState::RolledBack | TxnState::NotFound),
        "the abandoned lock is gone: {state}"
    );
}

#[test]
fn async_commit_across_regions_and_one_pc_in_one_region() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, raw, c) = cluster(&rt);
    // KvCommit calls the stores answered.
    let commits = || {
        (0..3)
            .filter_map(|i| common::http_get(&cluster.status_addr(i), "/metrics"))
            .flat_map(|m| {
                m.lines()
                    .filter(|l| l.starts_with("flotilla_server_requests_total{"))
                    .filter(|l| l.contains("rpc=\"kv_commit\""))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum::<f64>()
    };
    split_at(&rt, &raw, b"m");
    rt.block_on(async {
        let mut t = c.begin().await.unwrap();
        t.set_commit_mode(CommitMode::AsyncCommit);
        t.put(b"a-async", b"1").await.unwrap();
        t.put(b"z-async", b"2").await.unwrap();
        let start = t.start_ts();
        let committed = t.commit().await.expect("async commit");
        assert!(
            commits() > 0.0,
            "the KvCommit count is read (async commit sends some)"
        );
        assert!(committed > start);
        assert_eq!(
            c.status(b"a-async", start).await.unwrap(),
            TxnState::Committed(committed)
        );
        let mut one = c.begin().await.unwrap();
        one.set_commit_mode(CommitMode::OnePc);
        one.put(b"a-1pc", b"3").await.unwrap();
        one.put(b"b-1pc", b"4").await.unwrap();
        let start = one.start_ts();
        let commits_before = commits();
        let committed = one.commit().await.expect("1PC");
        assert_eq!(commits(), commits_before, "1PC commits without a KvCommit");
        assert_eq!(
            c.status(b"a-1pc", start).await.unwrap(),
            TxnState::Committed(committed)
        );
        let r = c.begin().await.unwrap();
        let all = r.scan(b"", b"", 10).await.unwrap();
        let keys_: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys_, [&b"a-1pc"[..], b"a-async", b"b-1pc", b"z-async"]);
    });
}
