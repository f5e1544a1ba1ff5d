//! The known safety defects, each with the test that caught it: durability of Raft state,
//! atomic batch reads, undetermined results, stale or unsafe operators, and snapshots
//! that race with apply.

use std::time::Duration;

use proto::{metapb, pdpb, raft_cmdpb::ConfChangeType, raft_serverpb};
use raftstore::PeerMsg;
use test_cluster::{test_config, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);

/// With `sync-log = false` only log entries may skip the fsync: a new term or vote that
/// a power loss could take back would let a store vote twice in one term.
#[test]
fn term_and_vote_are_fsynced_with_sync_log_off() {
    let (mut rs, pd) = test_config();
    rs.sync_log = false;
    let c = Cluster::with_config(3, rs, pd);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", b"v");
    let (leader, region) = c.leader_of_key(b"k").expect("a leader");
    let before: Vec<(u64, u64)> = c
        .store_ids()
        .into_iter()
        .map(|s| (s, c.engine(s).synced_writes()))
        .collect();
    let to = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.transfer_leader(region.get_id(), to).expect("transfer");
    wait_until("the new leader", T, || {
        c.leader_of(region.get_id()) == Some(to)
    });
    // Every voter saw the new term; each must have fsynced it.
    for (store, synced) in before {
        wait_until(&format!("an fsync on store {store}"), T, || {
            c.engine(store).synced_writes() > synced
        });
    }
}

fn follower(region: &metapb::Region, leader: u64) -> metapb::Peer {
    region
        .get_peers()
        .iter()
        .find(|p| p.get_store_id() != leader)
        .expect("a follower")
        .clone()
}

/// A PD operator decided for an older epoch of the region is dropped: it ran at the
/// current epoch before, so a removal PD chose from stale information went through.
#[test]
fn an_operator_for_an_older_epoch_is_dropped() {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", b"v");
    let (leader, region) = c.leader_of_key(b"k").expect("a leader");
    let victim = follower(&region, leader);
    let mut op = pdpb::RegionHeartbeatResponse::default();
    op.set_region_id(region.get_id());
    let mut stale = region.get_region_epoch().clone();
    stale.set_conf_ver(stale.get_conf_ver() - 1);
    op.set_region_epoch(stale);
    let change = op.mut_change_peer();
    change.set_change_type(pdpb::ConfChangeType::RemoveNode);
    change.set_peer(victim.clone());
    c.router(leader)
        .send(region.get_id(), PeerMsg::Operator(Box::new(op)))
        .expect("send operator");
    // The write is proposed after the operator was handled, and applies after anything
    // the operator proposed.
    c.must_put(b"k", b"after");
    let now = c.local_region(leader, b"k").expect("region");
    assert_eq!(
        now.get_region_epoch(),
        region.get_region_epoch(),
        "a stale operator changed the region: {now:?}"
    );
    assert!(now
        .get_peers()
        .iter()
        .any(|p| p.get_id() == victim.get_id()));
}

/// Removing a healthy voter while another voter is down would leave the region unable to
/// commit; it is refused, and removing the down voter is allowed.
#[test]
fn removing_a_voter_keeps_a_healthy_quorum() {
    let mut c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", b"v");
    let (leader, region) = c.leader_of_key(b"k").expect("a leader");
    let followers: Vec<metapb::Peer> = region
        .get_peers()
        .iter()
        .filter(|p| p.get_store_id() != leader)
        .cloned()
        .collect();
    let (down, healthy) = (&followers[0], &followers[1]);
    c.stop_store(down.get_store_id());
    // The leader counts a voter as healthy if it heard from it within an election timeout
    // (500 ms here); that is internal to the leader, so wait it out.
    std::thread::sleep(Duration::from_millis(1500));
    c.must_put(b"k", b"still served by two of three");
    let err = c
        .change_peer(region.get_id(), ConfChangeType::RemoveNode, healthy.clone())
        .expect_err("removing a healthy voter with another down must be refused");
    assert!(err.contains("healthy voters"), "{err}");
    let after = c
        .change_peer(region.get_id(), ConfChangeType::RemoveNode, down.clone())
        .expect("removing the down voter");
    assert_eq!(after.get_peers().len(), 2);
    c.must_put(b"k", b"after");
}

/// The consistency check hashes every replica at the same applied index: equal data gives
/// equal hashes, and a replica changed behind Raft's back is caught.
#[test]
fn the_consistency_check_catches_a_diverged_replica() {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    for i in 0..50 {
        c.must_put(format!("k{i:02}").as_bytes(), b"v");
    }
    let (leader, region) = c.leader_of_key(b"k00").expect("a leader");
    c.must_replicate(b"k49", b"v", T);
    let hashes = c.region_hashes(region.get_id()).expect("a check");
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|h| h.1 == hashes[0].1), "{hashes:?}");
    let victim = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.corrupt(victim, b"k07", b"not what raft wrote");
    // Checks are spaced out by a second per region.
    let mut again = Err(String::new());
    wait_until("a second check", T, || {
        again = c.region_hashes(region.get_id());
        again.is_ok()
    });
    let again = again.unwrap();
    let bad: Vec<u64> = again
        .iter()
        .filter(|(_, h)| *h != again.iter().find(|(s, _)| *s == leader).unwrap().1)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(bad, vec![victim], "{again:?}");
}

/// A vote request for a region this store does not have yet, from peer `from` of
/// store `from_store` to peer `to` of store `to_store`, at `term`.
fn vote_request(from: (u64, u64), to: (u64, u64), term: u64) -> raft_serverpb::RaftMessage {
    use protobuf::Message as _;
    let peer = |(id, store_id): (u64, u64)| {
        let mut p = metapb::Peer::default();
        p.set_id(id);
        p.set_store_id(store_id);
        p
    };
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
    m.from = from.0;
    m.to = to.0;
    m.term = term;
    m.log_term = 5;
    m.index = 5;
    let mut out = raft_serverpb::RaftMessage::default();
    out.set_region_id(NEW_REGION);
    out.set_from_peer(peer(from));
    out.set_to_peer(peer(to));
    out.mut_region_epoch().set_version(1);
    out.mut_region_epoch().set_conf_ver(1);
    out.set_start_key(b"zzz-vote-1".to_vec());
    out.set_end_key(b"zzz-vote-2".to_vec());
    out.set_message(m.write_to_bytes().unwrap());
    out
}

const NEW_REGION: u64 = 1_000_000;

/// A store can be asked to vote for a region it has no data of yet (its peer is created
/// empty by the request). That vote must outlive a restart like any other: a store that
/// forgot it could vote for a second candidate in the same term, and two leaders of one
/// term break Raft.
#[test]
fn a_vote_cast_by_a_peer_created_from_a_message_survives_a_restart() {
    let mut c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    let voter = c.add_store();
    // Keep every answer of the new store, and keep it from reaching anyone.
    let answers = std::sync::Arc::new(parking_lot::Mutex::new(vec![]));
    let seen = answers.clone();
    c.network().add_filter(std::sync::Arc::new(
        move |from, _, msg: &raft_serverpb::RaftMessage| {
            if from != voter || msg.get_region_id() != NEW_REGION {
                return test_cluster::Verdict::Pass;
            }
            use protobuf::Message as _;
            let m = raft::eraftpb::Message::parse_from_bytes(msg.get_message()).unwrap();
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgRequestVoteResponse {
                seen.lock().push((m.from, m.to, m.term, m.reject));
            }
            test_cluster::Verdict::Drop
        },
    ));
    let me = (2_000_003, voter);
    let ask = |c: &Cluster, candidate: (u64, u64)| {
        c.router(voter)
            .send_raft_message(vote_request(candidate, me, 7))
            .expect("send the vote request");
    };
    let first = (2_000_001, 1);
    ask(&c, first);
    wait_until("the first answer", T, || answers.lock().len() == 1);
    assert!(
        !answers.lock()[0].3,
        "the first candidate of term 7 gets the vote"
    );
    c.stop_store(voter);
    c.start_store(voter);
    let second = (2_000_002, 2);
    // A store that restarted drops vote requests for a lease (a leader its answers kept
    // up may still be serving reads), so the candidate asks again, as a real one would
    // at its next election timeout, until it is answered.
    wait_until("the second answer", T, || {
        if answers.lock().len() < 2 {
            ask(&c, second);
        }
        answers.lock().len() >= 2
    });
    let answers = answers.lock();
    assert!(
        answers[1..].iter().all(|a| *a == (me.0, second.0, 7, true)),
        "the store voted twice in term 7: {answers:?}"
    );
}

/// A transactional command is computed from a snapshot read in one leader term and
/// carries that term: if leadership changed since (another leader may have written the
/// keys), the command is refused rather than applied over writes it never saw.
#[test]
fn a_command_computed_in_an_earlier_term_is_refused() {
    let c = Cluster::new(3);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", b"v");
    let (leader, region) = c.leader_of_key(b"k").expect("a leader");
    let read = || {
        let (tx, rx) = std::sync::mpsc::channel();
        c.router(leader)
            .send(
                region.get_id(),
                PeerMsg::Read {
                    epoch: region.get_region_epoch().clone(),
                    from: raftstore::ReadFrom::Leader,
                    cb: Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                },
            )
            .expect("send the read");
        rx.recv_timeout(T).expect("an answer").expect("the read")
    };
    let term = read().term;
    assert!(term > 0);
    let put = |term: u64| {
        let mut cmd = proto::raft_cmdpb::RaftCmdRequest::default();
        cmd.mut_header().set_region_id(region.get_id());
        cmd.mut_header()
            .set_region_epoch(region.get_region_epoch().clone());
        cmd.mut_header().set_term(term);
        let mut req = proto::raft_cmdpb::Request::default();
        req.set_cmd_type(proto::raft_cmdpb::CmdType::Put);
        req.mut_put().set_key(b"k".to_vec());
        req.mut_put().set_value(keys::raw::encode(
            format!("written in term {term}").as_bytes(),
            keys::raw::NO_EXPIRY,
        ));
        cmd.mut_requests().push(req);
        let (tx, rx) = std::sync::mpsc::channel();
        c.router(leader)
            .send(
                region.get_id(),
                PeerMsg::Command {
                    cmd,
                    cb: Box::new(move |r| {
                        let _ = tx.send(r.map(|_| ()));
                    }),
                },
            )
            .expect("send the command");
        rx.recv_timeout(T).expect("an answer")
    };
    let err = put(term - 1).expect_err("an earlier term is refused");
    assert!(err.to_string().contains("leadership changed"), "{err}");
    c.must_get_equal(b"k", b"v");
    put(term).expect("the current term is accepted");
    c.must_get_equal(b"k", format!("written in term {term}").as_bytes());
}

/// A leader's proposal that its successor committed reaches the old leader only inside a
/// snapshot: whether it applied is not known there. Once it was answered stale_command
/// ("never applied"), and a store routing a dumb client sent such a write again.
#[test]
fn a_proposal_covered_by_a_snapshot_is_undetermined_not_stale() {
    let (mut rs, pd) = test_config();
    rs.raft_log_gc_count_limit = 30;
    rs.raft_log_gc_threshold = 5;
    let c = Cluster::with_config(3, rs, pd);
    c.wait_voters(b"", 3, T);
    c.must_put(b"k", b"before");
    let (old, region) = c.leader_of_key(b"k").expect("a leader");
    // The old leader's messages go out and nothing comes back: its followers store the
    // proposal, it never learns that they did.
    let deaf = c
        .network()
        .add_filter(std::sync::Arc::new(move |from, to, _| {
            match to == old && from != old {
                true => test_cluster::Verdict::Drop,
                false => test_cluster::Verdict::Pass,
            }
        }));
    let ctx = Cluster::context(&region, old);
    let storage = c.storage_with_timeout(old, Duration::from_secs(120));
    let put = c
        .runtime()
        .spawn(async move { storage.put(&ctx, "", b"k", b"once").await });
    let others: Vec<u64> = c.store_ids().into_iter().filter(|s| *s != old).collect();
    wait_until(
        "a new leader to commit the old leader's proposal",
        T,
        || {
            c.leader_of(region.get_id()).is_some_and(|s| s != old)
                && others
                    .iter()
                    .all(|s| c.local_get(*s, b"k").as_deref() == Some(&b"once"[..]))
        },
    );
    c.network().isolate(old);
    assert!(
        c.network().remove_filter(deaf) > 0,
        "the old leader heard nothing"
    );
    let (_, old_last) = c.log_bounds(old, region.get_id());
    for i in 0..100 {
        c.must_put(format!("after{i:03}").as_bytes(), b"v");
    }
    let new = c.leader_of(region.get_id()).expect("a leader");
    wait_until(
        "the new leader to compact its log past the old one",
        T,
        || c.log_bounds(new, region.get_id()).0 > old_last,
    );
    assert!(!put.is_finished(), "the old leader's proposal still waits");
    c.network().clear_filters();
    c.must_put(b"later", b"v");
    c.must_replicate_on(old, b"later", b"v", T);
    let res = c
        .runtime()
        .block_on(async { tokio::time::timeout(T, put).await })
        .expect("the proposal is answered once the snapshot is in")
        .expect("the put task");
    assert!(
        matches!(
            res,
            Err(server::Error::Raft(raftstore::Error::Undetermined(_)))
        ),
        "{res:?}"
    );
    c.must_get_equal(b"k", b"once");
}
