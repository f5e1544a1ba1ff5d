//! Transactions on the in-process cluster through the store's transactional API (the
//! layer the Kv* calls use): two-phase commit across regions, conflicts, snapshot
//! reads, async commit, and the bad input the API must refuse.

use std::time::Duration;

use test_cluster::{wait_until, Cluster};
use txn::{actions::TxnProps, commands::PrewriteRequest, reader::Bypass, Mutation, MutationOp};

const T: Duration = Duration::from_secs(30);

struct Env {
    c: Cluster,
}

impl Env {
    /// Three stores, the key space split at the plain bytes `m` (transactional key `m`,
    /// encoded, sorts after them).
    fn new() -> Env {
        let c = Cluster::new(3);
        c.wait_voters(b"", 3, T);
        c.must_split(b"m");
        wait_until("a leader for both halves, split", T, || {
            match (c.leader_txn(b"a"), c.leader_txn(b"x")) {
                (Some((_, a)), Some((_, x))) => {
                    a.region_id != x.region_id
                        && a.get_region_epoch().version > 1
                        && x.get_region_epoch().version > 1
                }
                _ => false,
            }
        });
        Env { c }
    }

    fn ts(&self) -> u64 {
        self.c
            .runtime()
            .block_on(self.c.pd().get_ts())
            .expect("a timestamp")
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.c.runtime().block_on(f)
    }

    /// The store leading the region of `key` and that region, once one leads it: a
    /// leader may step down for a moment on a loaded machine.
    fn leader(&self, key: &[u8]) -> (u64, proto::metapb::Region) {
        test_cluster::poll_until(T, || self.c.leader_of_key(&keys::txn::encode_bytes(key)))
            .expect("a leader within the deadline")
    }

    /// Runs `f` on the leader of `key`'s region, again (as a client would) while the
    /// answer is a routing error: leaders still move after the split.
    fn on_leader<T>(
        &self,
        key: &[u8],
        f: impl Fn(&server::txn_storage::TxnStorage, &proto::kvrpcpb::Context) -> server::Result<T>,
    ) -> server::Result<T> {
        let deadline = std::time::Instant::now() + T;
        loop {
            let res = match self.c.leader_txn(key) {
                Some((s, ctx)) => f(&s, &ctx),
                None => Err(server::Error::Raft(raftstore::Error::NotLeader {
                    region_id: 0,
                    leader: None,
                })),
            };
            match res {
                Err(server::Error::Raft(
                    raftstore::Error::NotLeader { .. }
                    | raftstore::Error::EpochNotMatch { .. }
                    | raftstore::Error::RegionNotFound(_)
                    | raftstore::Error::StaleCommand(_),
                )) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                res => return res,
            }
        }
    }

    /// Prewrites `key` alone with `props` through the leader.
    fn prewrite_with(
        &self,
        key: &[u8],
        value: &[u8],
        props: TxnProps,
    ) -> server::Result<txn::commands::PrewriteOutcome> {
        let req = PrewriteRequest {
            mutations: vec![Mutation {
                key: key.to_vec(),
                op: MutationOp::Put(value.to_vec()),
            }],
            pessimistic: vec![],
            props,
        };
        self.on_leader(key, |s, ctx| self.block(s.prewrite(ctx, req.clone())))
    }

    fn prewrite(
        &self,
        key: &[u8],
        value: &[u8],
        primary: &[u8],
        start_ts: u64,
    ) -> server::Result<()> {
        let props = TxnProps {
            start_ts,
            primary: primary.to_vec(),
            lock_ttl: 3000,
            ..Default::default()
        };
        let out = self.prewrite_with(key, value, props)?;
        match out.locked.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// An async-commit prewrite of `key` (its own primary) to `v`.
    fn prewrite_async(&self, key: &[u8], start_ts: u64) -> txn::commands::PrewriteOutcome {
        let props = TxnProps {
            start_ts,
            primary: key.to_vec(),
            lock_ttl: 3000,
            async_commit: true,
            ..Default::default()
        };
        let out = self.prewrite_with(key, b"v", props).expect("prewrite");
        assert!(out.locked.is_empty(), "no lock met");
        out
    }

    /// Commits `old` to `key`; returns the commit timestamp and a store following the
    /// key's region.
    fn committed_old(&self, key: &[u8]) -> (u64, u64) {
        let t1 = self.ts();
        self.prewrite(key, b"old", key, t1).unwrap();
        let c1 = self.ts();
        self.commit(key, t1, c1).unwrap();
        let (leader, region) = self.leader(key);
        let follower = region
            .get_peers()
            .iter()
            .map(|p| p.get_store_id())
            .find(|s| *s != leader)
            .unwrap();
        (c1, follower)
    }

    /// Runs `during` while an async-commit prewrite of `key` at `start` is in flight on
    /// the leader: every append with entries is held back (from any leader: PD may move
    /// one to even out the two regions' leaders at any time), so that its entry reaches
    /// no follower. Then lets it through; returns what `during` returned and the
    /// prewrite's outcome.
    fn with_prewrite_in_flight<R>(
        &self,
        key: &[u8],
        start: u64,
        during: impl FnOnce() -> R,
    ) -> (R, txn::commands::PrewriteOutcome) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let held_entries = std::sync::Arc::new(AtomicU64::new(0));
        let counted = held_entries.clone();
        let held = self
            .c
            .network()
            .add_filter(std::sync::Arc::new(move |_, _, m| {
                if is_msg_append(m) {
                    counted.fetch_add(1, Ordering::Relaxed);
                    test_cluster::Verdict::Drop
                } else {
                    test_cluster::Verdict::Pass
                }
            }));
        std::thread::scope(|s| {
            let prewrite = s.spawn(|| self.prewrite_async(key, start));
            // The prewrite took its commit timestamp before it proposed its entry.
            wait_until("the async prewrite's entry to be held back", T, || {
                held_entries.load(Ordering::Relaxed) > 0
            });
            let r = during();
            assert!(
                self.c.network().remove_filter(held) > 0,
                "appends were held"
            );
            (r, prewrite.join().expect("the prewrite thread"))
        })
    }

    fn commit(&self, key: &[u8], start_ts: u64, commit_ts: u64) -> server::Result<()> {
        self.on_leader(key, |s, ctx| {
            self.block(s.commit(ctx, &[key.to_vec()], start_ts, commit_ts))
        })
    }

    /// Moves the leadership of `key`'s region to another store; returns the region and
    /// that store once it leads.
    fn move_leader(&self, key: &[u8]) -> (u64, u64) {
        let (old, region) = self.leader(key);
        let to = region
            .get_peers()
            .iter()
            .map(|p| p.get_store_id())
            .find(|s| *s != old)
            .unwrap();
        self.c.transfer_leader(region.get_id(), to).unwrap();
        wait_until("the new leader", T, || {
            self.c.leader_of(region.get_id()) == Some(to)
        });
        (region.get_id(), to)
    }

    fn get(&self, key: &[u8], ts: u64) -> server::Result<Option<Vec<u8>>> {
        self.on_leader(key, |s, ctx| {
            self.block(s.get(ctx, key, ts, &Bypass::default()))
        })
    }
}

#[test]
fn a_transaction_across_two_regions_commits_whole_and_reads_see_one_snapshot() {
    let e = Env::new();
    let (ra, rx) = (e.leader(b"a").1, e.leader(b"x").1);
    assert_ne!(
        ra.get_id(),
        rx.get_id(),
        "the keys are in different regions"
    );
    let start = e.ts();
    e.prewrite(b"a", b"1", b"a", start).unwrap();
    e.prewrite(b"x", b"2", b"a", start).unwrap();
    let before = e.ts();
    let commit = e.ts();
    e.commit(b"a", start, commit).unwrap();
    // The secondary is still locked: a reader after the commit meets the lock.
    assert!(matches!(
        e.get(b"x", e.ts()),
        Err(server::Error::Txn(txn::Error::KeyIsLocked { .. }))
    ));
    e.commit(b"x", start, commit).unwrap();
    let after = e.ts();
    assert_eq!(e.get(b"a", before).unwrap(), None);
    assert_eq!(e.get(b"x", before).unwrap(), None);
    assert_eq!(e.get(b"a", after).unwrap(), Some(b"1".to_vec()));
    assert_eq!(e.get(b"x", after).unwrap(), Some(b"2".to_vec()));
}

#[test]
fn the_second_committer_of_a_key_gets_a_write_conflict() {
    let e = Env::new();
    let t1 = e.ts();
    let t2 = e.ts();
    e.prewrite(b"k", b"one", b"k", t1).unwrap();
    e.commit(b"k", t1, e.ts()).unwrap();
    let err = e.prewrite(b"k", b"two", b"k", t2).unwrap_err();
    assert!(
        matches!(err, server::Error::Txn(txn::Error::WriteConflict { .. })),
        "{err}"
    );
    assert_eq!(e.get(b"k", e.ts()).unwrap(), Some(b"one".to_vec()));
}

#[test]
fn raw_and_transactional_data_do_not_see_each_other() {
    let e = Env::new();
    let (raw, ctx) = e.c.leader_storage(b"a").unwrap();
    e.block(raw.put(&ctx, "", b"a", b"raw")).unwrap();
    assert_eq!(e.get(b"a", e.ts()).unwrap(), None);
    let start = e.ts();
    e.prewrite(b"b", b"txn", b"b", start).unwrap();
    e.commit(b"b", start, e.ts()).unwrap();
    let (raw, ctx) = e.c.leader_storage(b"b").unwrap();
    assert_eq!(e.block(raw.get(&ctx, "", b"b")).unwrap(), None);
    assert_eq!(
        e.block(raw.get(&ctx, "", b"a")).unwrap(),
        Some(b"raw".to_vec())
    );
}

#[test]
fn bad_transactional_requests_get_clear_errors_and_change_nothing() {
    let e = Env::new();
    let start = e.ts();
    // A commit with no lock.
    let err = e.commit(b"a", start, e.ts()).unwrap_err();
    assert!(
        matches!(err, server::Error::Txn(txn::Error::TxnLockNotFound { .. })),
        "{err}"
    );
    // A key outside the request's region.
    let req = PrewriteRequest {
        mutations: vec![Mutation {
            key: b"x".to_vec(),
            op: MutationOp::Put(b"v".to_vec()),
        }],
        pessimistic: vec![],
        props: TxnProps {
            start_ts: start,
            primary: b"x".to_vec(),
            ..Default::default()
        },
    };
    let prewrite = |on: &[u8], req: &PrewriteRequest| {
        e.on_leader(on, |s, ctx| e.block(s.prewrite(ctx, req.clone())))
    };
    let err = prewrite(b"a", &req).unwrap_err();
    assert!(err.to_string().contains("not in region"), "{err}");
    // A timestamp of 0, a commit below the start, a mutation list past the size limit.
    let mut zero = req.clone();
    zero.props.start_ts = 0;
    let err = prewrite(b"x", &zero).unwrap_err();
    assert!(
        err.to_string().contains("start_version must not be 0"),
        "{err}"
    );
    e.prewrite(b"x", b"v", b"x", start).unwrap();
    let err = e.commit(b"x", start, start - 1).unwrap_err();
    assert!(
        err.to_string().contains("must be above start_version"),
        "{err}"
    );
    let mut big = req;
    big.mutations = (0..2000)
        .map(|i| Mutation {
            key: format!("x{i}").into_bytes(),
            op: MutationOp::Put(vec![0; 8 << 10]),
        })
        .collect();
    let err = prewrite(b"x", &big).unwrap_err();
    assert!(err.to_string().contains("raft-entry-max-size"), "{err}");
    // A read timestamp far ahead of PD's clock would raise max_ts for good.
    let future = txn::types::from_physical_ms(txn::types::physical_ms(e.ts()) + 10 * 3600 * 1000);
    let err = e.get(b"x", future).unwrap_err();
    assert!(err.to_string().contains("ahead of PD's clock"), "{err}");
    // Nothing of the refused requests was written.
    assert_eq!(e.get(b"x1", e.ts()).unwrap(), None);
    let err = e.get(b"x", e.ts()).unwrap_err();
    assert!(
        matches!(err, server::Error::Txn(txn::Error::KeyIsLocked { .. })),
        "only the good prewrite's lock: {err}"
    );
}

#[test]
fn an_async_commit_lands_above_every_timestamp_pd_gave_out_before_it() {
    let e = Env::new();
    let start = e.ts();
    // The leader's first async commit of the term raises max_ts from PD; have it done,
    // so that only the read below can lift the next one above `read_at`.
    e.prewrite_async(b"j", e.ts());
    let read_at = e.ts();
    // A read at `read_at` on the key's leader raises its max_ts.
    assert_eq!(e.get(b"k", read_at).unwrap(), None);
    let out = e.prewrite_async(b"k", start);
    assert!(
        out.min_commit_ts > read_at,
        "{} <= {read_at}",
        out.min_commit_ts
    );
    e.commit(b"k", start, out.min_commit_ts).unwrap();
    assert_eq!(
        e.get(b"k", read_at).unwrap(),
        None,
        "the earlier read stays right"
    );
    assert_eq!(e.get(b"k", e.ts()).unwrap(), Some(b"v".to_vec()));
}

/// A new leader knows nothing of the reads its predecessor served: before its first
/// async commit it raises max_ts from PD, above every timestamp handed out so far.
#[test]
fn a_new_leader_commits_async_above_reads_its_predecessor_served() {
    let e = Env::new();
    let start = e.ts();
    let read_at = e.ts();
    assert_eq!(e.get(b"k", read_at).unwrap(), None);
    let (region_id, to) = e.move_leader(b"k");
    let out = e.prewrite_async(b"k", start);
    assert_eq!(
        e.c.leader_of(region_id),
        Some(to),
        "the new leader served it"
    );
    assert!(
        out.min_commit_ts > read_at,
        "{} <= {read_at}",
        out.min_commit_ts
    );
}

/// The safe point a region was collected at travels with its data: a leader that never
/// learned it (GC ran on its predecessor) still refuses a read below it, instead of
/// answering "not found" for a version that is gone.
#[test]
fn a_new_leader_refuses_reads_below_the_safe_point_the_region_was_collected_at() {
    let e = Env::new();
    let put = |value: &[u8]| {
        let start = e.ts();
        e.prewrite(b"k", value, b"k", start).unwrap();
        let commit = e.ts();
        e.commit(b"k", start, commit).unwrap();
        commit
    };
    let c1 = put(b"v1");
    put(b"v2");
    let safe_point = e.ts();
    e.on_leader(b"k", |s, ctx| {
        s.set_gc_safe_point(safe_point);
        e.block(s.gc(ctx, safe_point))
    })
    .unwrap();
    // v1 is gone; v2, visible at the safe point, stays.
    assert_eq!(e.get(b"k", safe_point).unwrap(), Some(b"v2".to_vec()));
    let (region_id, to) = e.move_leader(b"k");
    let err = e.get(b"k", c1).unwrap_err();
    assert_eq!(
        e.c.leader_of(region_id),
        Some(to),
        "the new leader answered"
    );
    assert!(
        matches!(
            err,
            server::Error::Txn(txn::Error::BelowSafePoint { safe_point: sp, .. }) if sp == safe_point
        ),
        "{err}"
    );
    // Nor may a transaction that old write the key.
    let err = e.prewrite(b"k", b"late", b"k", c1).unwrap_err();
    assert!(
        matches!(err, server::Error::Txn(txn::Error::BelowSafePoint { .. })),
        "{err}"
    );
    assert_eq!(e.get(b"k", e.ts()).unwrap(), Some(b"v2".to_vec()));
}

/// Whether `m` carries log entries.
fn is_msg_append(m: &proto::raft_serverpb::RaftMessage) -> bool {
    use protobuf::Message as _;
    raft::eraftpb::Message::parse_from_bytes(m.get_message()).is_ok_and(|r| {
        r.get_msg_type() == raft::eraftpb::MessageType::MsgAppend && !r.get_entries().is_empty()
    })
}

/// A follower read (`replica_read`) at a timestamp above an async-commit prewrite that
/// is still in flight on the leader (its entry not yet on any follower, so no follower
/// has its lock) meets the lock: the leader reports it in answer to the read index. The
/// follower would otherwise have served the old value, and the transaction then commits
/// below the read's timestamp. Once it has committed, the follower reads its value.
#[test]
fn a_follower_read_meets_an_async_commit_prewrite_in_flight_on_the_leader() {
    let e = Env::new();
    let key = b"fa";
    let (_, follower) = e.committed_old(key);
    let follower_get = |ts: u64| {
        let (s, ctx) = e.c.replica_txn(follower, key).expect("a replica");
        e.block(s.get(&ctx, key, ts, &Bypass::default()))
    };
    wait_until("the follower to read the first commit", T, || {
        follower_get(e.ts()).ok() == Some(Some(b"old".to_vec()))
    });

    let start = e.ts();
    let (read_ts, out) = e.with_prewrite_in_flight(key, start, || {
        let read_ts = e.ts();
        match follower_get(read_ts) {
            Err(server::Error::Txn(txn::Error::KeyIsLocked { lock, .. })) => {
                assert_eq!(lock.start_ts, start, "the in-flight prewrite's lock")
            }
            other => panic!("the follower read passed the lock in flight: {other:?}"),
        }
        read_ts
    });
    assert!(
        out.min_commit_ts > start && out.min_commit_ts <= read_ts,
        "the lock was taken before the read: it commits below it"
    );
    e.commit(key, start, out.min_commit_ts).unwrap();
    wait_until("the follower to read the async commit", T, || {
        follower_get(read_ts).ok() == Some(Some(b"v".to_vec()))
    });
}

/// The same prewrite in flight, against stale reads: while its lock is only in the
/// leader's memory, the region's safe timestamp stays below its commit, so a stale read
/// on a follower at a later timestamp is refused rather than served without it; once it
/// has committed, the safe timestamp moves past it and the read sees its value.
#[test]
fn the_safe_ts_stays_below_an_async_commit_prewrite_in_flight_on_the_leader() {
    let e = Env::new();
    let key = b"sa";
    let (c1, follower) = e.committed_old(key);
    let stale_get = |ts: u64| {
        let (s, mut ctx) = e.c.replica_txn(follower, key).expect("a replica");
        ctx.set_replica_read(false);
        ctx.set_stale_read(true);
        e.block(s.get(&ctx, key, ts, &Bypass::default()))
    };
    let safe_ts_of = |r: &server::Result<Option<Vec<u8>>>| match r {
        Err(server::Error::Raft(raftstore::Error::DataIsNotReady { safe_ts, .. })) => {
            Some(*safe_ts)
        }
        _ => None,
    };
    wait_until("the follower to serve the first commit", T, || {
        stale_get(c1).ok() == Some(Some(b"old".to_vec()))
    });

    let start = e.ts();
    let ((read_ts, safe), out) = e.with_prewrite_in_flight(key, start, || {
        let read_ts = e.ts();
        // Safe-ts rounds go on (every 200 ms) and reach the lock: a read above it is
        // refused. (A round between `start` and the lock may have passed `start`: its
        // raised max_ts then puts the commit above it, which the end checks.)
        let mut safe = 0;
        wait_until("the safe ts to reach the lock", T, || {
            let r = stale_get(read_ts);
            safe = safe_ts_of(&r).unwrap_or_else(|| panic!("served past the lock: {r:?}"));
            safe >= start - 1
        });
        (read_ts, safe)
    });
    assert!(
        out.min_commit_ts > safe,
        "the commit at {} lands at or below the safe ts {safe}",
        out.min_commit_ts
    );
    e.commit(key, start, out.min_commit_ts).unwrap();
    let expected = if out.min_commit_ts <= read_ts {
        b"v".to_vec()
    } else {
        b"old".to_vec()
    };
    wait_until("the follower to serve the read after the commit", T, || {
        stale_get(read_ts).ok() == Some(Some(expected.clone()))
    });
}
