//! The known safety defects, each with the test that caught it: durability of Raft state,
//! atomic batch reads, undetermined results, stale or unsafe operators, and snapshots
//! that race with apply.

use std::time::Duration;

use proto::{metapb, pdpb, raft_cmdpb::ConfChangeType};
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
    op.region_id = region.get_id();
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
