//! Transactional requests a buggy or hostile TiKV client sends, as raw gRPC to the
//! region leaders of pd-server and three kv-servers: requests that named the wrong
//! primary, locks that could never be resolved, timestamps far ahead of PD, commands too
//! large for one Raft entry, lock sweeps cut short by the answer budget, and readers
//! that meet a transaction mid-prewrite. None may split a committed transaction, hide a
//! committed version or block a key for good; each bad request gets a clear error and
//! writes nothing.

use crate::common;

use std::time::Duration;

use common::{wait_until, ProcCluster, RawKv};
use proto::kvrpcpb::{self, Op};

const T: Duration = Duration::from_secs(60);

struct Env {
    _cluster: ProcCluster,
    rt: tokio::runtime::Runtime,
    raw: RawKv,
    txn: client::txn::TxnClient,
}

/// Three stores with `extra` settings (TOML after `[raftstore]`), the transactional key
/// space split at `k`; GC off, so that only the tests sweep locks.
fn env(extra: &str) -> Env {
    env_with(&format!("{extra}\n[gc]\nenable = false\n"))
}

/// Three stores with `settings` (TOML after `[raftstore]`), the transactional key space
/// split at `k`.
fn env_with(settings: &str) -> Env {
    let (cluster, rt, ours) = common::three_voters(settings);
    let first = rt.block_on(ours.regions()).unwrap()[0].region.get_id();
    rt.block_on(ours.split_region(first, &[keys::txn::encode_bytes(b"k")]))
        .expect("split");
    wait_until("a leader for both regions", T, || {
        rt.block_on(ours.regions())
            .is_ok_and(|rs| rs.len() == 2 && rs.iter().all(|r| r.leader.is_some()))
    });
    let txn = rt
        .block_on(client::txn::TxnClient::connect(
            std::slice::from_ref(&cluster.pd_addr),
            Duration::from_secs(3),
        ))
        .unwrap();
    Env {
        _cluster: cluster,
        rt,
        raw: RawKv::new(ours, T),
        txn,
    }
}

fn put(key: &[u8], value: &[u8]) -> kvrpcpb::Mutation {
    let mut m = kvrpcpb::Mutation::default();
    m.set_op(Op::Put);
    m.set_key(key.to_vec());
    m.set_value(value.to_vec());
    m
}

impl Env {
    fn ts(&self) -> u64 {
        self.rt.block_on(self.txn.current_ts()).unwrap()
    }

    /// A prewrite of `mutations` (all in one region) with primary `primary`, changed by
    /// `edit` before it goes.
    fn prewrite(
        &self,
        mutations: Vec<kvrpcpb::Mutation>,
        primary: &[u8],
        start: u64,
        edit: impl Fn(&mut kvrpcpb::PrewriteRequest),
    ) -> kvrpcpb::PrewriteResponse {
        let key = mutations[0].get_key().to_vec();
        self.raw.send(
            &key,
            |c, ctx| {
                let mut req = kvrpcpb::PrewriteRequest::default();
                req.set_context(ctx);
                req.set_mutations(mutations.clone().into());
                req.set_primary_lock(primary.to_vec());
                req.start_version = start;
                req.lock_ttl = 3000;
                edit(&mut req);
                c.kv_prewrite(&req).expect("prewrite sent")
            },
            |r| r.region_error.as_ref(),
        )
    }

    fn must_prewrite(&self, key: &[u8], value: &[u8], primary: &[u8], start: u64, ttl: u64) {
        let resp = self.prewrite(vec![put(key, value)], primary, start, |r| r.lock_ttl = ttl);
        assert!(
            ok(&resp.region_error, resp.get_errors().first()),
            "{resp:?}"
        );
    }

    fn commit(&self, keys: &[Vec<u8>], start: u64, commit: u64) -> kvrpcpb::CommitResponse {
        self.raw.send(
            &keys[0],
            |c, ctx| {
                let mut req = kvrpcpb::CommitRequest::default();
                req.set_context(ctx);
                req.set_keys(keys.to_vec().into());
                req.start_version = start;
                req.commit_version = commit;
                c.kv_commit(&req).expect("commit sent")
            },
            |r| r.region_error.as_ref(),
        )
    }

    fn check_txn_status(
        &self,
        primary: &[u8],
        edit: impl Fn(&mut kvrpcpb::CheckTxnStatusRequest),
    ) -> kvrpcpb::CheckTxnStatusResponse {
        self.raw.send(
            primary,
            |c, ctx| {
                let mut req = kvrpcpb::CheckTxnStatusRequest::default();
                req.set_context(ctx);
                req.set_primary_key(primary.to_vec());
                edit(&mut req);
                c.kv_check_txn_status(&req).expect("check sent")
            },
            |r| r.region_error.as_ref(),
        )
    }

    /// Every lock at or below `max_version` in the region of `key`.
    fn locks(&self, key: &[u8], max_version: u64) -> Vec<kvrpcpb::LockInfo> {
        let resp = self.raw.send(
            key,
            |c, ctx| {
                let mut req = kvrpcpb::ScanLockRequest::default();
                req.set_context(ctx);
                req.max_version = max_version;
                c.kv_scan_lock(&req).expect("scan lock sent")
            },
            |r| r.region_error.as_ref(),
        );
        assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");
        resp.get_locks().to_vec()
    }

    /// What a snapshot read of `key` by Flotilla's client sees now.
    fn read(&self, key: &[u8]) -> client::Result<Option<Vec<u8>>> {
        self.rt.block_on(async {
            let t = self.txn.begin().await?;
            let v = t.get(key).await;
            t.rollback().await?;
            v
        })
    }

    /// Writes `key` in a transaction of Flotilla's client: the key is not blocked.
    fn write(&self, key: &[u8], value: &[u8]) {
        self.rt
            .block_on(async {
                let mut t = self.txn.begin().await?;
                t.put(key, value).await?;
                t.commit().await
            })
            .unwrap_or_else(|e| panic!("{:?} is writable: {e}", String::from_utf8_lossy(key)));
    }
}

fn ok(
    region: &protobuf::SingularPtrField<proto::errorpb::Error>,
    key: Option<&kvrpcpb::KeyError>,
) -> bool {
    region.is_none() && key.is_none()
}

/// The abort message of a refused request (its first key error).
fn refusal(errors: &[kvrpcpb::KeyError]) -> String {
    errors
        .first()
        .map(|e| e.get_abort().to_string())
        .unwrap_or_default()
}

#[test]
fn a_status_check_naming_a_secondary_cannot_roll_back_a_committed_transaction() {
    let e = env("");
    let start = e.ts();
    e.must_prewrite(b"a-primary", b"v", b"a-primary", start, 1);
    e.must_prewrite(b"a-secondary", b"v", b"a-primary", start, 1);
    let resp = e.commit(&[b"a-primary".to_vec()], start, e.ts());
    assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");
    // Long past the TTL, a status check that names the secondary as the primary.
    let now = e.ts();
    let resp = e.check_txn_status(b"a-secondary", |r| {
        r.lock_ts = start;
        r.caller_start_ts = now;
        r.current_ts = now;
        r.rollback_if_not_exist = true;
    });
    assert!(resp.get_error().has_primary_mismatch(), "{resp:?}");
    let lock = resp.get_error().get_primary_mismatch().get_lock_info();
    assert_eq!(lock.get_primary_lock(), b"a-primary");
    assert_eq!(
        e.locks(b"a-secondary", now).len(),
        1,
        "the lock is untouched"
    );
    // The transaction commits whole: a reader rolls the secondary forward.
    assert_eq!(e.read(b"a-secondary").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn locks_that_could_never_be_resolved_and_timestamps_far_ahead_are_refused() {
    let e = env("");
    let start = e.ts();
    let pessimistic = |primary: Vec<u8>, ttl: u64| {
        e.raw.send(
            b"b-key",
            |c, ctx| {
                let mut req = kvrpcpb::PessimisticLockRequest::default();
                req.set_context(ctx);
                let mut m = kvrpcpb::Mutation::default();
                m.set_op(Op::PessimisticLock);
                m.set_key(b"b-key".to_vec());
                req.mut_mutations().push(m);
                req.set_primary_lock(primary.clone());
                req.start_version = start;
                req.for_update_ts = start;
                req.lock_ttl = ttl;
                c.kv_pessimistic_lock(&req).expect("lock sent")
            },
            |r| r.region_error.as_ref(),
        )
    };
    let says = |errors: &[kvrpcpb::KeyError], what: &str| {
        let why = refusal(errors);
        assert!(why.contains(what), "{why:?} should say {what:?}");
    };
    says(
        pessimistic(vec![], 3000).get_errors(),
        "primary_lock must not be empty",
    );
    says(
        pessimistic(vec![b'p'; 9000], 3000).get_errors(),
        "txn.max-key-size",
    );
    says(
        pessimistic(b"b-key".to_vec(), 2 * 3600 * 1000).get_errors(),
        "txn.max-lock-ttl",
    );
    let async_prewrite = |secondaries: Vec<Vec<u8>>| {
        e.prewrite(vec![put(b"b-key", b"v")], b"b-key", start, move |r| {
            r.use_async_commit = true;
            r.set_secondaries(secondaries.clone().into());
        })
    };
    says(
        async_prewrite(vec![vec![]]).get_errors(),
        "a secondary must not be empty",
    );
    says(
        async_prewrite(vec![vec![b's'; 9000]]).get_errors(),
        "txn.max-key-size",
    );
    let many: Vec<kvrpcpb::Mutation> = (0..10_001u32)
        .map(|i| put(format!("b-{i:05}").as_bytes(), b"v"))
        .collect();
    says(
        e.prewrite(many, b"b-00000", start, |_| {}).get_errors(),
        "max-keys-per-command",
    );
    // Timestamps far ahead of PD's clock: a read would raise max_ts for good, a commit
    // near the greatest timestamp would wedge the key.
    let hour_ahead = txn::types::from_physical_ms(txn::types::physical_ms(e.ts()) + 3600 * 1000);
    let get = e.raw.send(
        b"b-key",
        |c, ctx| {
            let mut req = kvrpcpb::GetRequest::default();
            req.set_context(ctx);
            req.set_key(b"b-key".to_vec());
            req.version = hour_ahead;
            c.kv_get(&req).expect("get sent")
        },
        |r| r.region_error.as_ref(),
    );
    assert!(
        get.get_error().get_abort().contains("txn.max-ts-drift"),
        "{get:?}"
    );
    e.must_prewrite(b"b-key", b"v", b"b-key", start, 3000);
    let wedge = e.commit(&[b"b-key".to_vec()], start, u64::MAX - 1);
    assert!(
        wedge.get_error().get_abort().contains("txn.max-ts-drift"),
        "{wedge:?}"
    );
    let resp = e.check_txn_status(b"b-key", |r| {
        r.lock_ts = start;
        r.current_ts = hour_ahead;
    });
    assert!(
        resp.get_error().get_abort().contains("txn.max-ts-drift"),
        "{resp:?}"
    );
    assert_eq!(
        e.locks(b"b-key", u64::MAX - 1).len(),
        1,
        "the lock is still alive"
    );
    let resp = e.commit(&[b"b-key".to_vec()], start, e.ts());
    assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");
    assert_eq!(e.read(b"b-key").unwrap(), Some(b"v".to_vec()));
    // Nothing of the refused requests was written, and the keys take writes.
    assert!(e.locks(b"b-key", u64::MAX - 1).is_empty());
    e.write(b"b-key", b"after");
    e.write(b"b-00001", b"after");
}

/// A lock whose primary holds a lock of the same transaction naming yet another primary
/// (a buggy client): nobody can decide it by its primary, so readers and GC roll it back
/// once its TTL has passed instead of failing on it for good.
#[test]
fn readers_and_gc_get_past_expired_locks_whose_primary_cannot_decide() {
    let e = env("");
    let start = e.ts();
    e.must_prewrite(b"c-1", b"v", b"c-2", start, 1);
    e.must_prewrite(b"c-2", b"v", b"c-3", start, 1);
    assert_eq!(e.read(b"c-1").unwrap(), None);
    let report = e.rt.block_on(e.txn.gc(e.ts())).expect("gc gets past them");
    assert!(report.locks_resolved >= 1, "{report:?}");
    assert!(e.locks(b"c-1", u64::MAX - 1).is_empty());
    e.write(b"c-1", b"w");
    e.write(b"c-2", b"w");
}

/// A store answers ScanLock with what fits in one message; the sweep before GC must go
/// on from the last lock returned, not take a short page for the end of the region.
#[test]
fn gc_resolves_every_lock_when_scan_lock_answers_are_cut_short() {
    let e = env("[server]\nmax-response-size = \"64KiB\"");
    let start = e.ts();
    let key = |i: u32| {
        let mut k = format!("d-{i:04}-").into_bytes();
        k.resize(1024, b'x');
        k
    };
    let mutations: Vec<kvrpcpb::Mutation> = (0..300).map(|i| put(&key(i), b"v")).collect();
    let resp = e.prewrite(mutations, &key(0), start, |r| r.lock_ttl = 1);
    assert!(
        ok(&resp.region_error, resp.get_errors().first()),
        "{resp:?}"
    );
    let report = e.rt.block_on(e.txn.gc(e.ts())).expect("gc");
    assert_eq!(report.locks_resolved, 300, "{report:?}");
    assert!(
        e.locks(&key(0), u64::MAX - 1).is_empty(),
        "no lock is left behind"
    );
}

/// A commit or a lock resolution whose writes pass one Raft entry goes in batches, so a
/// transaction can always be finished.
#[test]
fn a_commit_or_resolution_too_large_for_one_raft_entry_goes_in_batches() {
    let e = env("raft-entry-max-size = \"256KiB\"");
    let keys: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| {
            let mut k = format!("e-{i:04}-").into_bytes();
            k.resize(200, b'x');
            k
        })
        .collect();
    let value = vec![b'v'; 250];
    let prewrite_all = |start: u64, ttl: u64| {
        for chunk in keys.chunks(200) {
            let mutations = chunk.iter().map(|k| put(k, &value)).collect();
            let resp = e.prewrite(mutations, &keys[0], start, |r| r.lock_ttl = ttl);
            assert!(
                ok(&resp.region_error, resp.get_errors().first()),
                "{resp:?}"
            );
        }
    };
    let start = e.ts();
    prewrite_all(start, 3000);
    let resp = e.commit(&keys, start, e.ts());
    assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");
    assert!(e.locks(&keys[0], u64::MAX - 1).is_empty());
    assert_eq!(e.read(&keys[999]).unwrap(), Some(value.clone()));
    // A dead transaction of the same size: one ResolveLock rolls every lock back.
    let start = e.ts();
    prewrite_all(start, 1);
    let resp = e.raw.send(
        &keys[0],
        |c, ctx| {
            let mut req = kvrpcpb::ResolveLockRequest::default();
            req.set_context(ctx);
            req.start_version = start;
            req.set_keys(keys.clone().into());
            c.kv_resolve_lock(&req).expect("resolve sent")
        },
        |r| r.region_error.as_ref(),
    );
    assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");
    assert!(e.locks(&keys[0], u64::MAX - 1).is_empty());
    assert_eq!(e.read(&keys[0]).unwrap(), Some(value));
}

/// A reader that meets a secondary before its primary's prewrite landed waits: it must
/// not roll back a transaction that is alive, only one whose TTL has passed.
#[test]
fn a_reader_does_not_roll_back_a_live_transaction_whose_primary_is_on_its_way() {
    let e = env("");
    let start = e.ts();
    e.must_prewrite(b"f-secondary", b"v", b"f-primary", start, 20_000);
    let err = e.read(b"f-secondary").unwrap_err();
    assert!(
        err.to_string().contains("locked"),
        "the reader waited: {err}"
    );
    e.must_prewrite(b"f-primary", b"v", b"f-primary", start, 20_000);
    let commit = e.ts();
    for key in [b"f-primary".to_vec(), b"f-secondary".to_vec()] {
        let resp = e.commit(&[key], start, commit);
        assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");
    }
    assert_eq!(e.read(b"f-secondary").unwrap(), Some(b"v".to_vec()));
}

/// Async commit past the client's max_commit_ts falls back to two phases, as TiKV's
/// clients expect; a status check by a caller of 0 writes nothing, and a prewrite keeps
/// the TTL heartbeats gave the pessimistic lock.
#[test]
fn async_commit_falls_back_and_status_checks_keep_the_lock_as_it_is() {
    let e = env("");
    let start = e.ts();
    // A read above the start raises the store's max_ts past the bound.
    let get = e.raw.send(
        b"g-key",
        |c, ctx| {
            let mut req = kvrpcpb::GetRequest::default();
            req.set_context(ctx);
            req.set_key(b"g-key".to_vec());
            req.version = e.ts();
            c.kv_get(&req).expect("get sent")
        },
        |r| r.region_error.as_ref(),
    );
    assert!(ok(&get.region_error, get.error.as_ref()), "{get:?}");
    let resp = e.prewrite(vec![put(b"g-key", b"v")], b"g-key", start, |r| {
        r.use_async_commit = true;
        r.max_commit_ts = start + 1;
    });
    assert!(
        ok(&resp.region_error, resp.get_errors().first()),
        "{resp:?}"
    );
    assert_eq!(resp.min_commit_ts, 0, "two phases");
    let lock = &e.locks(b"g-key", start)[0];
    assert!(!lock.use_async_commit, "{lock:?}");
    let resp = e.commit(&[b"g-key".to_vec()], start, e.ts());
    assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");

    // Pessimistic lock (3 s), heartbeat to 60 s, prewrite asking 3 s again.
    let start = e.ts();
    let resp = e.raw.send(
        b"g-pess",
        |c, ctx| {
            let mut req = kvrpcpb::PessimisticLockRequest::default();
            req.set_context(ctx);
            let mut m = kvrpcpb::Mutation::default();
            m.set_op(Op::PessimisticLock);
            m.set_key(b"g-pess".to_vec());
            req.mut_mutations().push(m);
            req.set_primary_lock(b"g-pess".to_vec());
            req.start_version = start;
            req.for_update_ts = start;
            req.lock_ttl = 3000;
            c.kv_pessimistic_lock(&req).expect("lock sent")
        },
        |r| r.region_error.as_ref(),
    );
    assert!(
        ok(&resp.region_error, resp.get_errors().first()),
        "{resp:?}"
    );
    let resp = e.raw.send(
        b"g-pess",
        |c, ctx| {
            let mut req = kvrpcpb::TxnHeartBeatRequest::default();
            req.set_context(ctx);
            req.set_primary_lock(b"g-pess".to_vec());
            req.start_version = start;
            req.advise_lock_ttl = 60_000;
            c.kv_txn_heart_beat(&req).expect("heartbeat sent")
        },
        |r| r.region_error.as_ref(),
    );
    assert_eq!(resp.lock_ttl, 60_000, "{resp:?}");
    let resp = e.prewrite(vec![put(b"g-pess", b"v")], b"g-pess", start, |r| {
        r.for_update_ts = start;
        r.mut_pessimistic_actions()
            .push(kvrpcpb::PrewriteRequest_PessimisticAction::DO_PESSIMISTIC_CHECK);
    });
    assert!(
        ok(&resp.region_error, resp.get_errors().first()),
        "{resp:?}"
    );
    let before = e.locks(b"g-pess", start)[0].clone();
    let now = e.ts();
    let resp = e.check_txn_status(b"g-pess", |r| {
        r.lock_ts = start;
        r.current_ts = now;
    });
    assert_eq!(resp.lock_ttl, 60_000, "the heartbeat's TTL stays: {resp:?}");
    assert_eq!(resp.action, kvrpcpb::Action::NoAction);
    assert_eq!(
        e.locks(b"g-pess", start)[0],
        before,
        "a caller of 0 changes nothing"
    );
}

/// A transaction whose primary committed while its secondaries are still locked survives
/// a GC safe point that a client moved past it: the stores resolve the locks below the
/// safe point (committing them, as the primary says) before they drop any version.
#[test]
fn a_safe_point_moved_past_a_half_committed_transaction_keeps_it_whole() {
    let e = env_with("\n[gc]\nrun-interval = \"1s\"\nlife-time = \"10m\"\n");
    let start = e.ts();
    // The primary left of the split at `k`, the secondaries right of it.
    e.must_prewrite(b"a-primary", b"p", b"a-primary", start, 60_000);
    let secondaries = [b"m-1".to_vec(), b"m-2".to_vec()];
    for k in &secondaries {
        e.must_prewrite(k, b"s", b"a-primary", start, 60_000);
    }
    let commit = e.ts();
    let resp = e.commit(&[b"a-primary".to_vec()], start, commit);
    assert!(ok(&resp.region_error, resp.error.as_ref()), "{resp:?}");
    assert_eq!(
        e.locks(b"m-1", u64::MAX - 1).len(),
        2,
        "the secondaries are locked"
    );

    // Any client may ask PD to move the safe point (TiKV's clients do); this one moves
    // it past the commit, far ahead of what the stores' own GC would choose.
    let past = e.ts();
    let moved =
        e.rt.block_on(async {
            let endpoints = [e._cluster.pd_addr.clone()];
            let pd = pd_client::PdClient::connect(&endpoints, T, util::logger::discard()).await?;
            pd.update_gc_safe_point(past).await
        })
        .expect("the safe point moves");
    assert_eq!(moved, past);
    wait_until("GC resolved the locks below the safe point", T, || {
        e.locks(b"m-1", u64::MAX - 1).is_empty()
    });
    for k in &secondaries {
        assert_eq!(e.read(k).unwrap(), Some(b"s".to_vec()), "{k:?} committed");
    }
    assert_eq!(e.read(b"a-primary").unwrap(), Some(b"p".to_vec()));
}
