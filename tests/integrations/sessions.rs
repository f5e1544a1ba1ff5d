//! Client sessions: a raw write numbered by a session applies once, and a resend is
//! answered with the first answer: after its answer was lost, after a leader change,
//! after a split moved its key to a new region, on a replica added later. A forgotten
//! session, a badly numbered write and a try held up too long get errors that say so,
//! and apply nothing.

use std::time::Duration;

use proto::kvrpcpb::Context;
use server::storage::RawStorage;
use test_cluster::{test_config, wait_until, Cluster};

const T: Duration = Duration::from_secs(20);

/// The leader's raw API for `key`, with `ctx` numbered as write `seq` of session `client`.
fn numbered(c: &Cluster, key: &[u8], client: u64, seq: u64, retry: bool) -> (RawStorage, Context) {
    let (storage, mut ctx) =
        test_cluster::poll_until(T, || c.leader_storage(key)).expect("a leader");
    ctx.session_client_id = client;
    ctx.session_seq = seq;
    ctx.session_acked_below = seq;
    ctx.session_retry = retry;
    ctx.session_sent_ms = util::clock::unix_ms();
    // A first try is its own first; a resend's first try is unknown here (0) unless a
    // test sets it.
    if !retry {
        ctx.session_first_sent_ms = ctx.session_sent_ms;
    }
    (storage, ctx)
}

/// Sends a compare-and-swap of `key` from `a` to `b` as write `seq` of `client`;
/// returns (succeed, previous) or the error's text.
fn cas(
    c: &Cluster,
    key: &[u8],
    client: u64,
    seq: u64,
    retry: bool,
) -> Result<(bool, Option<Vec<u8>>), String> {
    let (storage, ctx) = numbered(c, key, client, seq, retry);
    c.runtime()
        .block_on(storage.compare_and_swap(&ctx, "", key, b"b", Some(b"a")))
        .map(|r| (r.succeed, r.previous))
        .map_err(|e| e.into_wire().1)
}

/// Sends write `seq` of `client` with its answer lost at the store (after it applied);
/// checks that the fail point took effect.
fn cas_answer_lost(c: &Cluster, key: &[u8], client: u64, seq: u64) {
    fail::cfg("raw_cas_answer_lost", "1*return(0)").expect("configure fail point");
    let res = cas(c, key, client, seq, false);
    fail::remove("raw_cas_answer_lost");
    let err = res.expect_err("the answer was lost");
    assert!(err.starts_with(util::wire::UNDETERMINED), "{err}");
    assert!(err.contains("raw_cas_answer_lost"), "{err}");
    c.must_get_equal(key, b"b");
}

fn other_voter(c: &Cluster, key: &[u8]) -> (u64, u64) {
    let (leader, region) = c.leader_of_key(key).expect("a leader");
    let to = region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .find(|s| *s != leader)
        .expect("another voter");
    (region.get_id(), to)
}

#[test]
fn a_resent_cas_gets_its_first_answer_after_a_leader_change() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let c = Cluster::new(3);
    c.must_put(b"k", b"a");
    c.must_replicate(b"k", b"a", T);
    cas_answer_lost(&c, b"k", 42, 1);
    // On the same leader: the first answer, and nothing applied again.
    assert_eq!(cas(&c, b"k", 42, 1, true), Ok((true, Some(b"a".to_vec()))));
    // Another leader has the session too: it came with the log.
    let (region_id, to) = other_voter(&c, b"k");
    c.transfer_leader(region_id, to)
        .expect("transfer leadership");
    wait_until("the new leader leads", T, || {
        c.leader_of(region_id) == Some(to)
    });
    assert_eq!(cas(&c, b"k", 42, 1, true), Ok((true, Some(b"a".to_vec()))));
    // Without the session the same request finds its own write and fails.
    assert_eq!(cas(&c, b"k", 0, 0, false), Ok((false, Some(b"b".to_vec()))));
    // A new number is a new write.
    assert_eq!(
        cas(&c, b"k", 42, 2, false),
        Ok((false, Some(b"b".to_vec())))
    );
}

#[test]
fn a_session_spans_a_region_split() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let c = Cluster::new(3);
    c.must_put(b"m", b"a");
    let before = c.leader_of_key(b"m").expect("a leader").1.get_id();
    cas_answer_lost(&c, b"m", 7, 1);
    // The key moves to the split's new region, which starts with a copy of the sessions.
    let regions = c.must_split(b"m");
    let after = test_cluster::poll_until(T, || c.leader_of_key(b"m"))
        .expect("the new region elects a leader")
        .1
        .get_id();
    assert_ne!(before, after, "the key is in a new region: {regions:?}");
    assert_eq!(cas(&c, b"m", 7, 1, true), Ok((true, Some(b"a".to_vec()))));
    c.must_get_equal(b"m", b"b");
}

#[test]
fn a_replica_added_later_answers_a_resend() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    // No balancing: this test places the new replica itself.
    let (raft, mut pd) = test_config();
    pd.enable_balance = false;
    let mut c = Cluster::with_config(3, raft, pd);
    c.must_put(b"k", b"a");
    cas_answer_lost(&c, b"k", 9, 1);
    let region_id = c.leader_of_key(b"k").expect("a leader").1.get_id();
    let store = c.add_store();
    let mut peer = proto::metapb::Peer::default();
    peer.set_id(c.runtime().block_on(c.pd().alloc_id()).expect("an id"));
    peer.set_store_id(store);
    peer.set_role(proto::metapb::PeerRole::Learner);
    c.change_peer(
        region_id,
        proto::raft_cmdpb::ConfChangeType::AddLearnerNode,
        peer.clone(),
    )
    .expect("add a learner");
    c.must_replicate_on(store, b"k", b"b", T);
    peer.set_role(proto::metapb::PeerRole::Voter);
    c.change_peer(region_id, proto::raft_cmdpb::ConfChangeType::AddNode, peer)
        .expect("promote it");
    c.transfer_leader(region_id, store)
        .expect("transfer leadership");
    wait_until("the new replica leads", T, || {
        c.leader_of(region_id) == Some(store)
    });
    assert_eq!(cas(&c, b"k", 9, 1, true), Ok((true, Some(b"a".to_vec()))));
}

#[test]
fn a_forgotten_session_refuses_a_resend_and_applies_nothing() {
    let _alone = test_cluster::gate::alone();
    let _scenario = fail::FailScenario::setup();
    let (mut raft, pd) = test_config();
    raft.max_sessions_per_region = 1;
    // Past the count limit only sessions idle a tenth of the TTL are pushed out; a try
    // may be a twentieth of it (0.5 s) old.
    raft.session_ttl = Duration::from_secs(10);
    let c = Cluster::with_config(1, raft, pd);
    c.must_put(b"k", b"a");
    let first_sent = util::clock::unix_ms();
    cas_answer_lost(&c, b"k", 1, 1);
    // Log time passes only with writes stamped later: let a tenth of the TTL go by.
    std::thread::sleep(Duration::from_millis(1_200));
    // Another session pushes the first out of the region's table of one.
    c.must_put(b"other", b"x");
    assert_eq!(
        cas(&c, b"other", 2, 1, false),
        Ok((false, Some(b"x".to_vec())))
    );
    // The resend says when its first try went out: longer ago than a twentieth of the
    // TTL, so that try may have applied before the session was forgotten.
    let (storage, mut ctx) = numbered(&c, b"k", 1, 1, true);
    ctx.session_first_sent_ms = first_sent;
    let err = c
        .runtime()
        .block_on(storage.compare_and_swap(&ctx, "", b"k", b"b", Some(b"a")))
        .map_err(|e| e.into_wire().1)
        .expect_err("the session was forgotten");
    assert!(err.starts_with(util::wire::UNDETERMINED), "{err}");
    assert!(err.contains("raftstore.session-ttl"), "{err}");
    c.must_get_equal(b"k", b"b");
    // A new client's resend whose first try went out just now: had that try applied, its
    // session could not have been forgotten yet, so it did not, and the resend applies.
    let (storage, mut ctx) = numbered(&c, b"fresh", 3, 1, true);
    ctx.session_first_sent_ms = ctx.session_sent_ms;
    c.runtime()
        .block_on(storage.put(&ctx, "", b"fresh", b"1"))
        .map_err(|e| e.into_wire().1)
        .expect("a resend whose first try is recent applies");
    c.must_get_equal(b"fresh", b"1");
}

#[test]
fn badly_numbered_session_writes_are_refused_with_the_reason() {
    let _alone = test_cluster::gate::alone();
    let c = Cluster::new(1);
    c.must_put(b"k", b"a");
    let send = |seq: u64, acked: u64| {
        let (storage, mut ctx) = numbered(&c, b"k", 5, seq, false);
        ctx.session_acked_below = acked;
        c.runtime()
            .block_on(storage.put(&ctx, "", b"k", b"z"))
            .map_err(|e| e.into_wire().1)
    };
    let far = send(5_000_000, 1).expect_err("too far ahead");
    assert!(far.contains("raftstore.session-window"), "{far}");
    let zero = send(0, 0).expect_err("numbers start at 1");
    assert!(zero.contains("start at 1"), "{zero}");
    let ahead = send(3, 4).expect_err("acknowledged before sent");
    assert!(ahead.contains("cannot be acknowledged before"), "{ahead}");
    c.must_get_equal(b"k", b"a");
    // Once write 10 says every write below 10 was answered, a resend of 9 is refused.
    send(10, 10).expect("write 10");
    let stale = send(9, 9).expect_err("a resend after it was acknowledged");
    assert!(
        stale.contains("acknowledged every write below 10"),
        "{stale}"
    );
    // A try held up in the network past a twentieth of the session TTL (10 min), or from
    // a client whose clock is off as far, or one that does not say when it was sent.
    for (sent_ms, why) in [
        (util::clock::unix_ms() - 60_000, "was sent"),
        (util::clock::unix_ms() + 60_000, "ms after"),
        (0, "session_sent_ms"),
    ] {
        let (storage, mut ctx) = numbered(&c, b"k", 5, 11, false);
        ctx.session_sent_ms = sent_ms;
        ctx.session_first_sent_ms = sent_ms;
        let late = c
            .runtime()
            .block_on(storage.put(&ctx, "", b"k", b"late"))
            .expect_err("a try too old to be told from a forgotten one");
        let late = late.into_wire().1;
        assert!(late.contains(why), "{late}");
        assert!(late.contains("raftstore.session-ttl") || why == "session_sent_ms");
    }
    c.must_get_equal(b"k", b"z");
}
