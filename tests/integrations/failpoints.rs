//! Tests that stop a store's threads at a fail point. Fail points are global to the
//! process, so every test here holds a `FailScenario` and they run one at a time.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use crossbeam_channel::bounded;
use engine::Cf;
use proto::raft_serverpb::{PeerState, RaftApplyState, RegionLocalState};
use proto::{metapb::Region, raft_cmdpb::ConfChangeType};
use test_cluster::{
    history::{Op, Outcome, Recorder},
    test_config, wait_until, Cluster,
};

const T: Duration = Duration::from_secs(30);

/// Runs `during` while the next thread to reach fail point `name` is held there.
fn while_held_at(name: &str, during: impl FnOnce()) -> impl FnOnce() {
    while_held_on(name, "", during)
}

/// Like [`while_held_at`], for the next thread whose name starts with `thread` (for
/// example "apply-s3-": store 3's apply threads).
fn while_held_on(name: &str, thread: &str, during: impl FnOnce()) -> impl FnOnce() {
    let (hit_tx, hit_rx) = bounded(1);
    let (go_tx, go_rx) = bounded::<()>(1);
    let first = Arc::new(AtomicBool::new(true));
    let thread = thread.to_string();
    fail::cfg_callback(name, move || {
        let ours = thread.is_empty()
            || std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(&thread));
        if ours && first.swap(false, Ordering::SeqCst) {
            let _ = hit_tx.send(());
            let _ = go_rx.recv_timeout(T);
        }
    })
    .expect("configure fail point");
    move || {
        hit_rx.recv_timeout(T).expect("the fail point was reached");
        during();
        go_tx.send(()).expect("release the held thread");
    }
}

/// A batch get reads every key from one view, so it never sees half of an atomic batch
/// put (it did: keys were read one by one from the live database).
#[test]
fn batch_get_sees_a_batch_put_whole() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let c = Cluster::new(1);
    c.must_put(b"a", b"1");
    c.must_put(b"b", b"1");
    let (storage, ctx) = c.leader_storage(b"a").expect("a leader");
    let keys = vec![b"a".to_vec(), b"b".to_vec()];
    let (s, cx, rt) = (storage.clone(), ctx.clone(), c.runtime().handle().clone());
    let release = while_held_at("raw_batch_get_between_keys", move || {
        let pairs = [
            (b"a".to_vec(), b"2".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
        ];
        rt.block_on(s.batch_put(&cx, "", &pairs))
            .expect("batch put");
    });
    let reader = std::thread::spawn({
        let rt = c.runtime().handle().clone();
        move || rt.block_on(storage.batch_get(&ctx, "", &keys))
    });
    release();
    let got = reader.join().unwrap().expect("batch get");
    let values: Vec<&[u8]> = got.iter().map(|(_, v)| v.as_slice()).collect();
    assert!(
        values == [b"1", b"1"] || values == [b"2", b"2"],
        "a batch get saw half of a batch put: {values:?}"
    );
    fail::remove("raw_batch_get_between_keys");
}

/// Snapshots that had to wait for their peer's apply queue (the race this file's crash
/// test needs); the counter is process-wide, and tests here run one at a time.
fn snapshot_waits() -> u64 {
    raftstore::metrics::SNAPSHOTS
        .with_label_values(&["persist", "waited_for_apply"])
        .get()
}

/// A region's local state as a crash image holds it.
fn region_state_in(image: &std::path::Path, region_id: u64) -> RegionLocalState {
    let engine = engine::Engine::open(&image.join("db")).expect("open the image");
    engine
        .get_msg(Cf::Raft, &keys::region_state_key(region_id))
        .expect("read")
        .expect("a region state")
}

/// The applied index in a crash image, and the index of the last entry of its log that
/// `is` picks (an admin command of one kind).
fn applied_and_last(
    image: &std::path::Path,
    region_id: u64,
    is: fn(&raft::eraftpb::Entry) -> bool,
) -> (u64, u64) {
    let engine = engine::Engine::open(&image.join("db")).expect("open the image");
    let applied = engine
        .get_msg::<RaftApplyState>(Cf::Raft, &keys::apply_state_key(region_id))
        .expect("read")
        .expect("an apply state")
        .applied_index;
    let log = keys::raft_log_all_range(region_id);
    let mut last = 0;
    engine
        .scan(Cf::Raft, &log.start, &log.end, |_, v| {
            let e = <raft::eraftpb::Entry as protobuf::Message>::parse_from_bytes(v).unwrap();
            if is(&e) {
                last = e.index;
            }
            Ok(true)
        })
        .expect("scan the log");
    (applied, last)
}

fn is_conf_change(e: &raft::eraftpb::Entry) -> bool {
    e.get_entry_type() == raft::eraftpb::EntryType::EntryConfChangeV2
}

fn is_split(e: &raft::eraftpb::Entry) -> bool {
    <proto::raft_cmdpb::RaftCmdRequest as protobuf::Message>::parse_from_bytes(&e.data).is_ok_and(
        |c| c.get_admin_request().get_cmd_type() == proto::raft_cmdpb::AdminCmdType::BatchSplit,
    )
}

/// Asserts that the image holds `region` unchanged by the entry `is` picks, and that
/// its apply state stops before that entry (the apply side waits for the peer's write).
fn assert_change_not_on_disk(
    image: &std::path::Path,
    region: &Region,
    is: fn(&raft::eraftpb::Entry) -> bool,
) {
    let on_disk = region_state_in(image, region.get_id());
    assert_eq!(on_disk.get_state(), PeerState::Normal);
    assert_eq!(
        on_disk.get_region().get_region_epoch(),
        region.get_region_epoch(),
        "the change must not be on disk yet"
    );
    let (applied, change) = applied_and_last(image, region.get_id(), is);
    assert!(change > 0, "the image's log holds the change");
    assert!(
        applied < change,
        "the apply state ({applied}) must stop before the change ({change})"
    );
}

/// Whether `store`'s removed peer of `region` (as it was before the removal) is gone
/// with all it held: the region a tombstone, no apply state, no data in its range. A new
/// peer PD placed there since counts as gone (its data is its own).
fn removed_peer_gone(c: &Cluster, store: u64, region: &Region) -> bool {
    let old_peer = region
        .get_peers()
        .iter()
        .find(|p| p.get_store_id() == store)
        .map(|p| p.get_id());
    let engine = c.engine(store);
    let state: RegionLocalState = engine
        .get_msg(Cf::Raft, &keys::region_state_key(region.get_id()))
        .expect("read")
        .expect("a region state");
    if state.get_state() != PeerState::Tombstone {
        let here = state
            .get_region()
            .get_peers()
            .iter()
            .find(|p| p.get_store_id() == store)
            .map(|p| p.get_id());
        return here.is_some() && here != old_peer;
    }
    let apply_state: Option<RaftApplyState> = engine
        .get_msg(Cf::Raft, &keys::apply_state_key(region.get_id()))
        .expect("read");
    let start = keys::data_key(region.get_start_key());
    let end = keys::data_end_key(region.get_end_key());
    let mut data = false;
    engine
        .scan(Cf::Default, &start, &end, |_, _| {
            data = true;
            Ok(false)
        })
        .expect("scan");
    apply_state.is_none() && !data
}

/// Waits until [`removed_peer_gone`].
fn wait_until_gone(c: &Cluster, store: u64, region: &Region) {
    wait_until("the removed peer's data and apply state to go", T, || {
        removed_peer_gone(c, store, region)
    });
}

/// Holds threads of store `store` whose name starts with `kind` (for example "apply")
/// for `pause` at fail point `name`, every time they reach it.
fn slow_down(name: &str, kind: &str, store: u64, pause: Duration) {
    let prefix = format!("{kind}-s{store}-");
    fail::cfg_callback(name, move || {
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            std::thread::sleep(pause);
        }
    })
    .expect("configure fail point");
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:03}").into_bytes()
}

/// A follower cut off while its apply side still works on entries, then sent a snapshot
/// when it returns, crashed mid-way through applying the snapshot. Before, the Raft side
/// wrote the snapshot's apply state and the apply side then overwrote it from its stale
/// copy: after the crash the store found a log base behind its deleted log and refused to
/// start. Now the apply state has one owner and the snapshot waits for the apply queue.
/// `point` is where the follower is held for the image ("apply_snapshot_before_ingest":
/// mid-apply), on its threads named `thread` ("apply", "raftstore").
fn crash_during_snapshot_apply(
    point: &str,
    thread: &str,
    damage: impl FnOnce(&std::path::Path, u64),
) -> (Cluster, u64, Result<(), String>) {
    let (mut rs, pd) = test_config();
    rs.raft_log_gc_threshold = 1;
    rs.raft_log_gc_count_limit = 5;
    let mut c = Cluster::with_config(3, rs, pd);
    c.wait_voters(b"", 3, T);
    c.must_put(&key(0), b"v");
    let (leader, region) = c.leader_of_key(&key(0)).expect("a leader");
    let id = region.get_id();
    let follower = c
        .store_ids()
        .into_iter()
        .find(|s| *s != leader)
        .expect("a follower");
    let waits = snapshot_waits();
    let mut image = None;
    let crash = while_held_on(point, &format!("{thread}-s{follower}-"), || {
        image = Some(c.crash_image(follower))
    });
    // While the follower's apply side is held with entries to apply, cut it off, move
    // the log past it, and let it back: its snapshot must wait for the apply queue.
    let stall = while_held_on("apply_before_write", &format!("apply-s{follower}-"), || {
        let cut = c.network().isolate(follower);
        let (_, last_at_cut) = c.log_bounds(leader, id);
        for i in 2..40 {
            c.must_put(&key(i), b"v");
        }
        wait_until("the leader to compact past the follower", T, || {
            c.log_bounds(leader, id).0 > last_at_cut
        });
        c.network().remove_filter(cut);
        wait_until("the snapshot to wait for the apply side", T, || {
            snapshot_waits() > waits
        });
    });
    c.must_put(&key(1), b"v");
    stall();
    crash();
    let image = image.expect("a crash image");
    fail::remove("apply_before_write");
    fail::remove(point);
    assert_eq!(
        region_state_in(&image, id).get_state(),
        PeerState::Applying,
        "the crash came before the region was marked live"
    );
    damage(&image, id);
    let restarted = c.restart_from_image(follower, &image);
    (c, follower, restarted)
}

#[test]
fn a_crash_while_a_snapshot_applies_restarts_and_catches_up() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let (c, follower, restarted) =
        crash_during_snapshot_apply("apply_snapshot_before_ingest", "apply", |_, _| {});
    restarted.expect("the store restarts after a crash mid-snapshot");
    for i in 0..40 {
        c.must_replicate_on(follower, &key(i), b"v", T);
    }
    c.must_put(&key(40), b"after");
    c.must_replicate_on(follower, &key(40), b"after", T);
}

/// A crash after the apply side put a snapshot's data in place and wrote its apply state,
/// before the peer marked the region live: the restart must not redo the apply (its
/// files are gone) but take the region as live, and catch up.
#[test]
fn a_crash_after_a_snapshot_is_in_place_before_the_region_is_live_restarts() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let (c, follower, restarted) = crash_during_snapshot_apply(
        "raft_before_marking_a_snapshot_live",
        "raftstore",
        |image, region| {
            let engine = engine::Engine::open(&image.join("db")).expect("open the image");
            let state: RegionLocalState = engine
                .get_msg(Cf::Raft, &keys::region_state_key(region))
                .expect("read")
                .expect("a region state");
            let applied: RaftApplyState = engine
                .get_msg(Cf::Raft, &keys::apply_state_key(region))
                .expect("read")
                .expect("an apply state");
            assert!(
                applied.applied_index >= state.get_pending_snapshot().index,
                "the image must hold the snapshot's data in place"
            );
        },
    );
    restarted.expect("the store restarts with the snapshot in place");
    for i in 0..40 {
        c.must_replicate_on(follower, &key(i), b"v", T);
    }
    c.must_put(&key(40), b"after");
    c.must_replicate_on(follower, &key(40), b"after", T);
}

/// A snapshot apply redone after a restart checks its files first: one damaged on disk
/// must stop the store with a clear error, not be ingested as whatever is left (which
/// marked the region live with part of its data).
#[test]
fn a_damaged_snapshot_file_is_never_ingested_after_a_restart() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let (_c, _follower, restarted) =
        crash_during_snapshot_apply("apply_snapshot_before_ingest", "apply", |image, _| {
            let damaged = std::fs::read_dir(image.join("snap"))
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("rcv_"))
                .expect("a received snapshot file in the crash image");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(damaged.path())
                .unwrap();
            f.set_len(f.metadata().unwrap().len() / 2).unwrap();
        });
    let err = restarted.expect_err("a damaged snapshot must stop the store");
    assert!(err.contains("cannot be redone"), "{err}");
}

/// A compare-and-swap whose answer does not come in time may still apply. It used to be
/// answered `server_is_busy`, which clients retry: the retry then found its own write and
/// reported "failed". Now the answer says the outcome is undetermined, in the `error`
/// field, which no client retries.
#[test]
fn a_write_that_times_out_is_reported_undetermined() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let c = Cluster::new(1);
    c.must_put(b"k", b"a");
    let (leader, _) = c.leader_of_key(b"k").expect("a leader");
    let (_, ctx) = c.leader_storage(b"k").expect("a leader");
    let storage = c.storage_with_timeout(leader, Duration::from_millis(300));
    slow_down(
        "apply_before_write",
        "apply",
        leader,
        Duration::from_millis(1000),
    );
    let res = c
        .runtime()
        .block_on(storage.compare_and_swap(&ctx, "", b"k", b"b", Some(b"a")));
    fail::remove("apply_before_write");
    let err = res.expect_err("no answer within the timeout");
    let (region_err, msg) = err.into_wire();
    assert!(
        region_err.is_none(),
        "must not be a retryable region error: {region_err:?}"
    );
    assert!(msg.starts_with(util::wire::UNDETERMINED), "{msg}");
    // It did apply (once the slowed apply thread got to it): a blind retry would now fail.
    // A read served from the leader's lease sees what is applied, so it may come first.
    wait_until("the swap applies", T, || {
        c.get_within(b"k", T).ok().flatten().as_deref() == Some(b"b")
    });
}

/// Puts `value(n)` under "k" through the leader, recorded in `rec` as `process`'s.
fn recorded_put(c: &Cluster, rec: &Recorder, process: usize, n: u64) {
    let inv = rec.invoke(process, Op::Put(b"k".to_vec(), n));
    c.must_put(b"k", &value(n));
    rec.complete(inv, Outcome::Written);
}

fn value(n: u64) -> Vec<u8> {
    format!("v{n}").into_bytes()
}

fn value_of(bytes: &[u8]) -> u64 {
    std::str::from_utf8(&bytes[1..]).unwrap().parse().unwrap()
}

/// A leader cut off from its followers, whose clock stalls (`leader_clock_slow`: its
/// ticks stop, so check-quorum does not depose it; its lease lasts `lease_stretch_ms`
/// longer), while the others elect a new leader and acknowledge a write. From the cut
/// until a read after that write, a reader asks the old leader again and again. Returns
/// what each of those reads answered (in order; the last one started after the write was
/// acknowledged) and whether the history checker found the whole history linearizable.
fn reads_from_a_deposed_leader(lease_stretch_ms: u64) -> (Vec<Result<u64, String>>, bool) {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    let rec = Recorder::default();
    let write = |process, n: u64| recorded_put(&c, &rec, process, n);
    write(0, 1);
    let (old, region) = c.leader_of_key(b"k").expect("a leader");
    fail::cfg("leader_clock_slow", &format!("return({lease_stretch_ms})")).unwrap();
    // A write the leader commits now renews its lease, stretched or not.
    write(0, 2);
    let context = |store: u64| Cluster::context(&region, store);
    let old_storage = c.storage_with_timeout(old, Duration::from_millis(300));
    let read_old = || {
        let inv = rec.invoke(1, Op::Get(b"k".to_vec()));
        let got = c
            .runtime()
            .block_on(old_storage.get(&context(old), "", b"k"))
            .map_err(|e| e.to_string());
        match &got {
            Ok(v) => rec.complete(inv, Outcome::Read(v.as_deref().map(value_of))),
            Err(_) => rec.complete(inv, Outcome::Failed),
        }
        got.map(|v| value_of(&v.expect("k was written")))
    };
    let cut = c.network().isolate(old);
    let written = AtomicBool::new(false);
    let mut reads = vec![];
    std::thread::scope(|s| {
        // The others elect a leader among themselves and acknowledge a write through it.
        s.spawn(|| {
            let inv = rec.invoke(0, Op::Put(b"k".to_vec(), 3));
            let others: Vec<u64> = c.store_ids().into_iter().filter(|s| *s != old).collect();
            wait_until("a new leader acknowledges a write", T, || {
                others.iter().any(|&s| {
                    let storage = c.storage_with_timeout(s, Duration::from_millis(300));
                    c.runtime()
                        .block_on(storage.put(&context(s), "", b"k", &value(3)))
                        .is_ok()
                })
            });
            rec.complete(inv, Outcome::Written);
            written.store(true, Ordering::SeqCst);
        });
        let deadline = std::time::Instant::now() + T;
        while !written.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            reads.push(read_old());
            // Paced, so that the history stays small enough to check (a few hundred
            // reads; unpaced, the window holds thousands).
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // The checker orders events by the microsecond: a read invoked in the microsecond
    // the write completed in would count as overlapping it.
    std::thread::sleep(Duration::from_millis(1));
    reads.push(read_old());
    fail::remove("leader_clock_slow");
    c.network().remove_filter(cut);
    let dir = tempfile::tempdir().unwrap();
    let linearizable = match rec.check(dir.path()) {
        Ok(()) => true,
        Err(v) => {
            eprintln!("{v}");
            false
        }
    };
    (reads, linearizable)
}

/// Lease reads are safe while clocks keep time: a leader cut off from its followers
/// serves reads from its lease (nothing else can confirm it) only until the others could
/// elect a new leader, even if its ticks stop: every read it served, checked against the
/// new leader's write, is linearizable. With its clock running slow (the lease stretched
/// by a minute), it serves a stale read after the new leader acknowledged a write, and
/// the history checker catches it.
#[test]
fn the_checker_catches_a_lease_that_outlives_its_leader() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let (reads, linearizable) = reads_from_a_deposed_leader(0);
    assert!(
        reads.iter().any(Result::is_ok),
        "the cut-off leader served reads from its lease: {reads:?}"
    );
    assert!(
        reads.last().is_some_and(Result::is_err),
        "its lease was gone once another leader wrote: {reads:?}"
    );
    assert!(linearizable);
    let (reads, linearizable) = reads_from_a_deposed_leader(60_000);
    assert_eq!(
        reads.last(),
        Some(&Ok(2)),
        "the stretched lease served the old value"
    );
    assert!(!linearizable, "a stale read is not linearizable");
}

/// A write committed but not yet applied on the leader (its apply thread is held) is
/// already visible on a follower, which a replica read is answered from. A read that
/// starts after that replica read returned must see the write too: the leader's lease
/// read waits for its commit index to apply rather than answering from what it applied.
#[test]
fn a_lease_read_waits_for_writes_a_follower_already_showed() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", b"a");
    let (leader, region) = c.leader_of_key(b"k").expect("a leader");
    let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.must_replicate_on(follower, b"k", b"a", T);
    let held = hold("apply_before_write", "apply", leader);
    let (storage, ctx) = c.leader_storage(b"k").expect("a leader");
    let put = c
        .runtime()
        .spawn(async move { storage.put(&ctx, "", b"k", b"b").await });
    c.must_replicate_on(follower, b"k", b"b", T);
    let mut replica_ctx = Cluster::context(&region, follower);
    replica_ctx.set_replica_read(true);
    let shown = c
        .runtime()
        .block_on(c.storage(follower).get(&replica_ctx, "", b"k"))
        .expect("a replica read");
    assert_eq!(
        shown.as_deref(),
        Some(&b"b"[..]),
        "the follower shows the write"
    );
    assert!(!put.is_finished(), "the leader has not applied the write");
    let (storage, ctx) = c.leader_storage(b"k").expect("a leader");
    let read = c
        .runtime()
        .spawn(async move { storage.get(&ctx, "", b"k").await });
    // Time for a read served from the lease alone to come back with the old value; well
    // inside the read's own timeout (20 ticks of 50 ms).
    std::thread::sleep(Duration::from_millis(300));
    assert!(!read.is_finished(), "the read waits for the leader's apply");
    held.release();
    let read = c.runtime().block_on(read).unwrap().expect("a leader read");
    fail::remove("apply_before_write");
    assert_eq!(
        read.as_deref(),
        Some(&b"b"[..]),
        "the leader read saw the write"
    );
    c.runtime()
        .block_on(put)
        .unwrap()
        .expect("the write is acknowledged");
}

/// Threads held at a fail point (see [`hold`]) until released, at the latest when this
/// is dropped: a failing test must not leave a store's threads stuck.
struct Held(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Held {
    fn release(&self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// Holds threads of store `store` whose name starts with `kind` at fail point `name`
/// until released.
fn hold(name: &str, kind: &str, store: u64) -> Held {
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prefix = format!("{kind}-s{store}-");
    let flag = held.clone();
    fail::cfg_callback(name, move || {
        let ours = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with(&prefix));
        while ours && flag.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .expect("configure fail point");
    Held(held)
}

/// The history checker finds a real violation: with reads served by a cut-off follower
/// without a ReadIndex round, a read that starts after a write was acknowledged returns
/// the value before it.
#[test]
fn the_checker_catches_reads_served_without_read_index() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    let rec = Recorder::default();
    let write = |process, n: u64| recorded_put(&c, &rec, process, n);
    write(0, 1);
    let (leader, region) = c.leader_of_key(b"k").expect("a leader");
    let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.must_replicate_on(follower, b"k", &value(1), T);
    let cut = c.network().isolate(follower);
    write(0, 2);
    fail::cfg("read_without_read_index", "return").expect("configure fail point");
    let storage = c.storage(follower);
    let mut ctx = proto::kvrpcpb::Context::default();
    ctx.set_region_id(region.get_id());
    ctx.set_region_epoch(region.get_region_epoch().clone());
    let inv = rec.invoke(1, Op::Get(b"k".to_vec()));
    let got = c
        .runtime()
        .block_on(storage.get(&ctx, "", b"k"))
        .expect("a read served by the follower");
    rec.complete(inv, Outcome::Read(got.as_deref().map(value_of)));
    fail::remove("read_without_read_index");
    c.network().remove_filter(cut);
    assert_eq!(got, Some(value(1)), "the follower served its stale value");
    let dir = tempfile::tempdir().unwrap();
    let violation = rec
        .check(dir.path())
        .expect_err("a stale read is not linearizable");
    eprintln!("{violation}");
    let smallest = format!("{:?}", violation.smallest);
    assert_eq!(
        violation.smallest.len(),
        3,
        "both writes and the stale read: {smallest}"
    );
    assert!(smallest.contains("Read(Some(1))"), "{smallest}");
    assert!(violation.file.exists(), "the whole history is saved");
}

/// What a crash test does while a store is held at its fail point.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Write,
    Split,
    AddLearner,
    RemoveHeld,
}

/// Extra checks of a crash test, on the region as it was before the trigger.
#[derive(Default)]
struct Checks {
    /// Runs while the store is held, before the image (the cluster, the held store).
    held: Option<fn(&Cluster, u64, &Region)>,
    /// Runs on the image before the restart.
    image: Option<fn(&std::path::Path, &Region)>,
    /// Runs as soon as the store has restarted.
    restarted: Option<fn(&Cluster, u64, &Region)>,
    /// Runs at the end, once the replicas agree.
    after: Option<fn(&Cluster, u64, &Region)>,
}

/// Holds `store`'s `thread` at fail point `point` while `trigger` runs, takes a crash
/// image there, restarts the store from it, and checks that it starts, that every
/// acknowledged write is there, and that every replica ends with the same data.
fn crash_at(point: &str, thread: &str, on_leader: bool, trigger: Trigger, checks: Checks) {
    let _scenario = fail::FailScenario::setup();
    let mut c = Cluster::new(4);
    c.wait_voters(b"", 3, T);
    for i in 0..20 {
        c.must_put(&key(i), b"v");
    }
    let (leader, region) = c.leader_of_key(&key(0)).expect("a leader");
    let voters: Vec<u64> = region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .collect();
    let spare = c
        .store_ids()
        .into_iter()
        .find(|s| !voters.contains(s))
        .unwrap();
    let held = match on_leader {
        true => leader,
        false => *voters.iter().find(|s| **s != leader).unwrap(),
    };
    let mut image = None;
    let crash = while_held_on(point, &format!("{thread}-s{held}-"), || {
        if let Some(check) = checks.held {
            check(&c, held, &region);
        }
        image = Some(c.crash_image(held))
    });
    let acked = std::thread::scope(|s| {
        let (c, region) = (&c, &region);
        let work = s.spawn(move || match trigger {
            Trigger::Write => c
                .put_within(b"x", b"during", Duration::from_secs(5))
                .is_ok(),
            Trigger::Split => c.split(&key(10), &key(10)).is_ok(),
            Trigger::AddLearner => {
                let id = c.runtime().block_on(c.pd().alloc_id()).expect("an id");
                let mut p = proto::metapb::Peer::default();
                p.set_id(id);
                p.set_store_id(spare);
                p.set_role(proto::metapb::PeerRole::Learner);
                c.change_peer(region.get_id(), ConfChangeType::AddLearnerNode, p)
                    .is_ok()
            }
            Trigger::RemoveHeld => {
                let p = region
                    .get_peers()
                    .iter()
                    .find(|p| p.get_store_id() == held)
                    .unwrap();
                c.change_peer(region.get_id(), ConfChangeType::RemoveNode, p.clone())
                    .is_ok()
            }
        });
        crash();
        work.join().expect("trigger")
    });
    fail::remove(point);
    let image = image.expect("a crash image");
    if let Some(check) = checks.image {
        check(&image, &region);
    }
    c.restart_from_image(held, &image)
        .unwrap_or_else(|e| panic!("store {held} does not restart after a crash at {point}: {e}"));
    if let Some(check) = checks.restarted {
        check(&c, held, &region);
    }
    for i in 0..20 {
        c.must_get_equal(&key(i), b"v");
    }
    if acked && matches!(trigger, Trigger::Write) {
        c.must_get_equal(b"x", b"during");
    }
    c.must_put(b"after", b"crash");
    wait_until(
        "every replica of every region holds the same data",
        T,
        || replicas_agree(&c),
    );
    if let Some(check) = checks.after {
        check(&c, held, &region);
    }
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Whether every store holding a replica of a region has the same pairs in its range.
fn replicas_agree(c: &Cluster) -> bool {
    c.regions().values().all(|r| {
        let stores: Vec<u64> = r.get_peers().iter().map(|p| p.get_store_id()).collect();
        let data: Vec<Option<Pairs>> = stores
            .iter()
            .map(|s| {
                let local = c.local_region(*s, r.get_start_key())?;
                (local.get_region_epoch() == r.get_region_epoch()).then(|| c.local_scan(*s, r))
            })
            .collect();
        data.iter().all(|d| d.is_some() && *d == data[0])
    })
}

#[test]
fn crash_before_persisting_a_ready() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "raft_before_persist",
        "raftstore",
        true,
        Trigger::Write,
        Checks::default(),
    );
}

#[test]
fn crash_after_persisting_a_ready() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "raft_after_persist",
        "raftstore",
        true,
        Trigger::Write,
        Checks::default(),
    );
}

#[test]
fn crash_before_applying_a_split() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "apply_before_split",
        "apply",
        false,
        Trigger::Split,
        Checks::default(),
    );
}

#[test]
fn crash_after_applying_a_split() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "raft_after_split_applied",
        "raftstore",
        false,
        Trigger::Split,
        Checks::default(),
    );
}

#[test]
fn crash_during_a_conf_change() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "apply_conf_change",
        "apply",
        false,
        Trigger::AddLearner,
        Checks::default(),
    );
}

#[test]
fn crash_between_a_destroys_two_writes() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "apply_destroy",
        "apply",
        false,
        Trigger::RemoveHeld,
        Checks {
            // The restart deletes what the removed peer left, before any peer starts.
            restarted: Some(|c, held, region| {
                assert!(
                    removed_peer_gone(c, held, region),
                    "the removed peer's data is left"
                )
            }),
            ..Checks::default()
        },
    );
}

/// The apply side has applied a split and the peer has not yet written the regions' new
/// shapes (the split's two halves): the image holds the region unsplit, and after the
/// restart the split applies again.
#[test]
fn crash_between_a_splits_apply_and_its_persist() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "raft_before_persisting_a_split",
        "raftstore",
        false,
        Trigger::Split,
        Checks {
            image: Some(|image, region| assert_change_not_on_disk(image, region, is_split)),
            ..Checks::default()
        },
    );
}

/// The apply side has applied a membership change and the peer has not yet written it:
/// after the restart the change applies again.
#[test]
fn crash_between_a_conf_changes_apply_and_its_persist() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "raft_before_persisting_a_conf_change",
        "raftstore",
        false,
        Trigger::AddLearner,
        Checks {
            image: Some(|image, region| assert_change_not_on_disk(image, region, is_conf_change)),
            ..Checks::default()
        },
    );
}

/// A removed peer's data and apply state go only once its tombstone is durable: held
/// just before that write, the store keeps both (the apply side deleted them first, and
/// a crash then left a live region without its data: the store refused to start). In
/// the end they go (unless PD has meanwhile placed a new replica on that store, whose
/// data is its own).
#[test]
fn a_removed_peer_keeps_its_data_until_its_tombstone_is_durable() {
    let _alone = test_cluster::gate::alone();
    crash_at(
        "raft_before_persisting_a_destroy",
        "raftstore",
        false,
        Trigger::RemoveHeld,
        Checks {
            held: Some(|c, held, region| {
                let engine = c.engine(held);
                let present = || {
                    let state: Option<RaftApplyState> = engine
                        .get_msg(Cf::Raft, &keys::apply_state_key(region.get_id()))
                        .expect("read");
                    let data = engine
                        .get(Cf::Default, &keys::data_key(&key(0)))
                        .expect("read");
                    state.is_some() && data.is_some()
                };
                // Give an apply side that was told too early the time to act.
                let deadline = std::time::Instant::now() + Duration::from_secs(1);
                while std::time::Instant::now() < deadline {
                    assert!(
                        present(),
                        "the data or apply state went before the tombstone"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }),
            image: Some(|image, region| {
                assert_eq!(
                    region_state_in(image, region.get_id()).get_state(),
                    PeerState::Normal
                );
            }),
            after: Some(wait_until_gone),
            ..Checks::default()
        },
    );
}
