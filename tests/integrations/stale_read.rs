//! Stale reads on the in-process cluster, served by a replica alone: transactional reads
//! at or below the replica's safe timestamp (`Context.stale_read`), and raw reads within
//! a staleness bound (`max_staleness_ms`). A follower cut off from its leader keeps
//! serving what its safe timestamp covers and refuses the rest with `data_is_not_ready`;
//! every value a stale read returns is the one committed at its timestamp, through a
//! leader change and a split.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use proto::kvrpcpb::Context;
use test_cluster::{wait_until, Cluster};
use txn::{actions::TxnProps, commands::PrewriteRequest, reader::Bypass, Mutation, MutationOp};

const T: Duration = Duration::from_secs(30);

fn ts(c: &Cluster) -> u64 {
    c.runtime().block_on(c.pd().get_ts()).expect("a timestamp")
}

/// Commits `value` to `key` through the leader, again on routing errors; returns the
/// commit timestamp.
fn commit(c: &Cluster, key: &[u8], value: &[u8]) -> u64 {
    let start = ts(c);
    let req = PrewriteRequest {
        mutations: vec![Mutation {
            key: key.to_vec(),
            op: MutationOp::Put(value.to_vec()),
        }],
        pessimistic: vec![],
        props: TxnProps {
            start_ts: start,
            primary: key.to_vec(),
            lock_ttl: 3000,
            ..Default::default()
        },
    };
    let mut prewritten = false;
    let deadline = Instant::now() + T;
    loop {
        assert!(
            Instant::now() < deadline,
            "no commit of {key:?} within {T:?}"
        );
        let Some((s, ctx)) = c.leader_txn(key) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if !prewritten {
            match c.runtime().block_on(s.prewrite(&ctx, req.clone())) {
                Ok(out) if out.locked.is_empty() => prewritten = true,
                Ok(out) => panic!("locked: {:?}", out.locked),
                Err(_) => continue,
            }
        }
        let commit_ts = ts(c);
        if c.runtime()
            .block_on(s.commit(&ctx, &[key.to_vec()], start, commit_ts))
            .is_ok()
        {
            return commit_ts;
        }
    }
}

/// A transactional stale read of `key` at `at` on `store`.
fn stale_get(c: &Cluster, store: u64, key: &[u8], at: u64) -> server::Result<Option<Vec<u8>>> {
    let (s, mut ctx) = c.replica_txn(store, key).expect("a replica");
    ctx.set_replica_read(false);
    ctx.set_stale_read(true);
    c.runtime()
        .block_on(s.get(&ctx, key, at, &Bypass::default()))
}

/// The value committed at or below `at`, by the history of commits.
fn expected(history: &BTreeMap<u64, Vec<u8>>, at: u64) -> Option<Vec<u8>> {
    history.range(..=at).next_back().map(|(_, v)| v.clone())
}

fn safe_ts_of(err: &server::Error) -> Option<u64> {
    match err {
        server::Error::Raft(raftstore::Error::DataIsNotReady { safe_ts, .. }) => Some(*safe_ts),
        _ => None,
    }
}

#[test]
fn a_cut_off_follower_serves_stale_reads_up_to_its_safe_ts_and_refuses_newer_ones() {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    let key = b"stale";
    let mut history = BTreeMap::new();
    for i in 0..5 {
        let v = format!("v{i}").into_bytes();
        history.insert(commit(&c, key, &v), v);
    }
    let (leader, _) = c
        .leader_of_key(&keys::txn::encode_bytes(key))
        .expect("a leader");
    let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    let last = *history.keys().next_back().unwrap();
    wait_until("the follower's safe ts to pass the last commit", T, || {
        stale_get(&c, follower, key, last).is_ok()
    });

    let cut = c.network().isolate(follower);
    // Its safe timestamp as of the cut: the first refusal names it.
    let now = ts(&c);
    let safe = safe_ts_of(&stale_get(&c, follower, key, now).expect_err("refused"))
        .expect("data_is_not_ready");
    assert!(
        safe >= last && safe < now,
        "safe ts {safe} in [{last}, {now})"
    );
    for i in 5..8 {
        let v = format!("v{i}").into_bytes();
        history.insert(commit(&c, key, &v), v);
    }
    // Below its safe timestamp it serves, each time the value committed then.
    let first = *history.keys().next().unwrap();
    for at in [first - 1, first, last, safe, (first + safe) / 2] {
        let got = stale_get(&c, follower, key, at).expect("served");
        assert_eq!(got, expected(&history, at), "at {at}");
    }
    // Above it, whatever the leader committed since, it refuses and says where it is.
    let newest = *history.keys().next_back().unwrap();
    let err = stale_get(&c, follower, key, newest).expect_err("not ready");
    assert_eq!(safe_ts_of(&err), Some(safe), "{err}");
    let (region_err, _) = err.into_wire();
    let region_err = region_err.expect("a region error");
    assert!(region_err.has_data_is_not_ready(), "{region_err:?}");
    assert_eq!(region_err.get_data_is_not_ready().safe_ts, safe);
    assert!(
        c.network().remove_filter(cut) > 0,
        "the cut dropped messages"
    );

    // Bad timestamps are refused before anything is read.
    let zero = stale_get(&c, follower, key, 0).expect_err("ts 0");
    assert!(zero.to_string().contains("timestamp"), "{zero}");
    let ahead = stale_get(&c, follower, key, now + (3_600_000 << 18)).expect_err("far ahead");
    assert!(ahead.to_string().contains("ahead"), "{ahead}");

    // Back in touch, it catches up; through a leader change and a split the values stay
    // those of the history.
    wait_until("the follower to serve the newest commit", T, || {
        stale_get(&c, follower, key, newest).is_ok()
    });
    let (_, region) = c
        .leader_of_key(&keys::txn::encode_bytes(key))
        .expect("a leader");
    c.transfer_leader(region.get_id(), follower)
        .expect("the follower leads");
    wait_until("a split next to the key", T, || {
        c.split(
            &keys::txn::encode_bytes(key),
            &keys::txn::encode_bytes(b"stalf"),
        )
        .is_ok()
    });
    for i in 8..11 {
        let v = format!("v{i}").into_bytes();
        history.insert(commit(&c, key, &v), v);
    }
    let newest = *history.keys().next_back().unwrap();
    for store in c.store_ids() {
        wait_until("every replica to serve the newest commit", T, || {
            stale_get(&c, store, key, newest).is_ok()
        });
        for (at, _) in history.iter() {
            for at in [*at - 1, *at, *at + 1] {
                if let Ok(got) = stale_get(&c, store, key, at) {
                    assert_eq!(got, expected(&history, at), "store {store} at {at}");
                }
            }
        }
    }
}

/// A raw stale read with bound `bound` of `key` on `store`.
fn bounded_get(
    c: &Cluster,
    store: u64,
    key: &[u8],
    bound: Duration,
) -> server::Result<Option<Vec<u8>>> {
    let region = c.local_region(store, key).expect("a replica");
    let mut ctx = Context::default();
    ctx.set_region_id(region.get_id());
    ctx.set_region_epoch(region.get_region_epoch().clone());
    ctx.set_stale_read(true);
    ctx.max_staleness_ms = bound.as_millis() as u64;
    c.runtime().block_on(c.storage(store).get(&ctx, "", key))
}

#[test]
fn a_raw_stale_read_is_served_within_its_bound_and_refused_past_it() {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    c.must_put(b"r", b"1");
    let (leader, _) = c.leader_of_key(b"r").expect("a leader");
    let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    let bound = Duration::from_secs(2);
    let margin = c.raft_cfg.stale_margin();
    wait_until("the follower to serve the write", T, || {
        bounded_get(&c, follower, b"r", bound).ok() == Some(Some(b"1".to_vec()))
    });

    let cut = c.network().isolate(follower);
    let cut_at = Instant::now();
    // Within the bound it serves what it has, with no leader to ask.
    let within = bounded_get(&c, follower, b"r", bound);
    assert!(
        within.is_ok() || cut_at.elapsed() + margin >= bound,
        "{within:?}"
    );
    c.must_put(b"r", b"2");
    wait_until("the follower to refuse past the bound", T, || {
        bounded_get(&c, follower, b"r", bound).is_err()
    });
    let refused_after = cut_at.elapsed();
    let err = bounded_get(&c, follower, b"r", bound).expect_err("refused");
    assert!(err.to_string().contains("ms old"), "{err}");
    // Words count the margin for a deposed leader older than they look.
    assert!(
        refused_after + margin + Duration::from_millis(300) >= bound,
        "refused after {refused_after:?}, before the {bound:?} bound less the {margin:?} margin"
    );
    eprintln!("a follower cut off at a 2 s bound: refused after {refused_after:?}");
    // A looser bound is still met.
    assert_eq!(
        bounded_get(&c, follower, b"r", Duration::from_secs(60)).expect("served"),
        Some(b"1".to_vec())
    );
    assert!(c.network().remove_filter(cut) > 0);

    // Bounds of zero and past server.max-read-staleness are refused.
    for bad in [Duration::ZERO, Duration::from_secs(3600)] {
        let err = bounded_get(&c, follower, b"r", bad).expect_err("bad bound");
        assert!(err.to_string().contains("max_staleness_ms"), "{err}");
    }
}
