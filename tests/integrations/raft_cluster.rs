//! Replication, failover, catch-up by snapshot and replica repair on the in-process
//! cluster (components/test_cluster).

use std::time::Duration;

use proto::{kvrpcpb::Context, metapb};
use test_cluster::{test_config, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: usize, round: usize) -> Vec<u8> {
    format!("value-{i}-{round}").into_bytes()
}

/// A cluster whose one region has three voters.
fn replicated(n: usize, rs: raftstore::Config, pd: pd::Config) -> Cluster {
    let c = Cluster::with_config(n, rs, pd);
    c.wait_voters(b"", 3, T);
    c
}

fn snapshots_applied() -> u64 {
    raftstore::metrics::SNAPSHOTS
        .with_label_values(&["apply", "ok"])
        .get()
}

#[test]
fn three_stores_replicate_every_write() {
    let (rs, pd) = test_config();
    let c = replicated(3, rs, pd);
    for i in 0..100 {
        c.must_put(&key(i), &value(i, 0));
    }
    for i in 0..100 {
        c.must_replicate(&key(i), &value(i, 0), T);
    }
    c.must_get_equal(&key(42), &value(42, 0));
}

#[test]
fn isolated_leader_is_replaced_and_catches_up() {
    let (rs, pd) = test_config();
    let c = replicated(3, rs, pd);
    for i in 0..20 {
        c.must_put(&key(i), &value(i, 0));
    }
    let (old, _) = c.leader_of_key(b"").expect("a leader");
    c.network().isolate(old);
    wait_until(
        "a new leader elsewhere, and the old one stepping down",
        T,
        || {
            c.leader_of_key(b"")
                .is_some_and(|(s, r)| s != old && c.leader_of(r.get_id()) == Some(s))
                && c.local_region(old, b"")
                    .is_some_and(|r| c.leader_of(r.get_id()) != Some(old))
        },
    );
    for i in 0..20 {
        c.must_put(&key(i), &value(i, 1));
    }
    c.network().clear_filters();
    for i in 0..20 {
        c.must_replicate(&key(i), &value(i, 1), T);
    }
    c.must_get_equal(&key(7), &value(7, 1));
}

#[test]
fn follower_partitioned_past_log_gc_recovers_by_snapshot() {
    // Counts applied snapshots in the process-wide metric: no other cluster may add to it.
    let _alone = test_cluster::gate::alone();
    let (mut rs, pd) = test_config();
    rs.raft_log_gc_count_limit = 30;
    rs.raft_log_gc_threshold = 5;
    let c = replicated(3, rs, pd);
    let (leader, region) = c.leader_of_key(b"").expect("a leader");
    let follower = *c
        .store_ids()
        .iter()
        .find(|s| **s != leader)
        .expect("a follower");
    c.must_put(b"before", b"partition");
    c.must_replicate(b"before", b"partition", T);
    let applied_before = snapshots_applied();
    let others: Vec<u64> = c
        .store_ids()
        .into_iter()
        .filter(|s| *s != follower)
        .collect();
    c.network().partition(&[follower], &others);
    for i in 0..200 {
        c.must_put(&key(i), &value(i, 0));
    }
    // Log GC runs on a tick: the puts can be done before one compacts the log.
    let (_, follower_last) = c.log_bounds(follower, region.get_id());
    wait_until("the leader to compact its log past the follower", T, || {
        c.log_bounds(leader, region.get_id()).0 > follower_last
    });
    c.network().clear_filters();
    for i in (0..200).step_by(17) {
        c.must_replicate(&key(i), &value(i, 0), T);
    }
    c.must_replicate(&key(199), &value(199, 0), T);
    assert!(
        snapshots_applied() > applied_before,
        "the follower should have caught up by snapshot, not by log"
    );
}

#[test]
fn down_store_is_replaced_on_a_fourth_store() {
    let (rs, pd) = test_config();
    let mut c = replicated(4, rs, pd);
    for i in 0..50 {
        c.must_put(&key(i), &value(i, 0));
    }
    let (leader, region) = c.leader_of_key(b"").expect("a leader");
    let victim = region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .find(|s| *s != leader)
        .expect("a follower store");
    c.stop_store(victim);
    wait_until("PD to replace the peer on the stopped store", T, || {
        c.leader_of_key(b"").is_some_and(|(_, r)| {
            let voters: Vec<u64> = r
                .get_peers()
                .iter()
                .filter(|p| p.get_role() == metapb::PeerRole::Voter)
                .map(|p| p.get_store_id())
                .collect();
            voters.len() == 3 && !voters.contains(&victim)
        })
    });
    for i in 0..50 {
        c.must_get_equal(&key(i), &value(i, 0));
    }
    let (_, region) = c.leader_of_key(b"").unwrap();
    for p in region.get_peers() {
        c.must_replicate_on(p.get_store_id(), &key(49), &value(49, 0), T);
    }
}

#[test]
fn every_store_restarts_with_its_data() {
    let (rs, pd) = test_config();
    let mut c = replicated(3, rs, pd);
    for i in 0..50 {
        c.must_put(&key(i), &value(i, 0));
    }
    for s in c.store_ids() {
        c.stop_store(s);
    }
    for s in c.store_ids() {
        c.start_store(s);
    }
    for i in 0..50 {
        c.must_get_equal(&key(i), &value(i, 0));
    }
    c.must_put(b"after", b"restart");
    c.must_replicate(b"after", b"restart", T);
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let (rs, pd) = test_config();
    let c = Cluster::with_config(1, rs, pd);
    c.must_put(b"k", b"v");
    let (store, region) = c.leader_of_key(b"k").unwrap();
    let s = c.storage(store);
    let rt = c.runtime();
    let mut ctx = Context::default();
    ctx.set_region_id(region.get_id());
    ctx.set_region_epoch(region.get_region_epoch().clone());
    ctx.set_peer(region.get_peers()[0].clone());

    let err = rt
        .block_on(s.put(&ctx, "", b"", b"v"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("key must not be empty"), "{err}");

    let big = vec![0u8; (8 << 20) + 1];
    let err = rt
        .block_on(s.put(&ctx, "", b"k", &big))
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than the limit"), "{err}");

    let err = rt
        .block_on(s.put(&ctx, "write", b"k", b"v"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("column family"), "{err}");

    let mut unknown = ctx.clone();
    unknown.region_id = 999_999;
    let err = rt
        .block_on(s.put(&unknown, "", b"k", b"x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("region 999999 not found"), "{err}");

    let mut stale = ctx.clone();
    stale.mut_region_epoch().set_version(0);
    let err = rt.block_on(s.put(&stale, "", b"k", b"x")).unwrap_err();
    let (region_err, _) = err.into_wire();
    assert!(region_err.expect("a region error").has_epoch_not_match());

    c.must_get_equal(b"k", b"v");
}

#[test]
fn leadership_moves_on_request_and_not_to_learners_or_strangers() {
    let (rs, pd) = test_config();
    let c = replicated(3, rs, pd);
    c.must_put(b"k", b"v1");
    let (leader, region) = c.leader_of_key(b"k").unwrap();
    let target = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.transfer_leader(region.get_id(), target)
        .expect("transfer starts");
    wait_until("leadership to move", T, || {
        c.leader_of(region.get_id()) == Some(target)
    });
    c.must_put(b"k", b"v2");
    c.must_get_equal(b"k", b"v2");
    let err = c.transfer_leader(region.get_id(), 999).unwrap_err();
    assert!(err.contains("no peer on store 999"), "{err}");
}

#[test]
fn leadership_is_not_handed_to_a_peer_that_is_behind() {
    let (rs, pd) = test_config();
    let mut c = replicated(3, rs, pd);
    c.must_put(b"k", b"v1");
    let (leader, region) = c.leader_of_key(b"k").unwrap();
    let behind = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
    c.stop_store(behind);
    // Writes the stopped store misses; within an election timeout the leader has not
    // heard from it lately, and it is no longer replicating.
    for i in 0..10 {
        c.must_put(&key(i), &value(i, 0));
    }
    let mut err = String::new();
    wait_until("the leader to refuse a peer that is behind", T, || match c
        .try_transfer_leader(region.get_id(), behind)
    {
        Err(e) => {
            err = e;
            true
        }
        Ok(()) => false,
    });
    assert!(err.contains("not caught up"), "{err}");
    assert_eq!(
        c.leader_of(region.get_id()),
        Some(leader),
        "leadership stayed"
    );
    c.must_put(b"k", b"v2");
    c.start_store(behind);
    c.must_replicate_on(behind, b"k", b"v2", T);
    // Asked again while it moves: a transfer the restarted peer missed is abandoned.
    wait_until("leadership to move to the peer that caught up", T, || {
        let _ = c.try_transfer_leader(region.get_id(), behind);
        c.leader_of(region.get_id()) == Some(behind)
    });
}

#[test]
fn stores_keep_serving_while_pd_is_down() {
    let (rs, pd) = test_config();
    let mut c = replicated(3, rs, pd);
    c.must_put(b"before", b"pd stops");
    c.stop_pd();
    for i in 0..20 {
        c.must_put(&key(i), &value(i, 0));
    }
    c.must_get_equal(&key(19), &value(19, 0));
    c.must_replicate(&key(19), &value(19, 0), T);
}

#[test]
fn writes_commit_through_a_slow_network() {
    let (rs, pd) = test_config();
    let c = replicated(3, rs, pd);
    let slow = c.network().delay_all(Duration::from_millis(30));
    for i in 0..20 {
        c.must_put(&key(i), &value(i, 0));
    }
    c.must_replicate(&key(19), &value(19, 0), T);
    c.network().remove_filter(slow);
    c.must_put(b"fast", b"again");
    c.must_replicate(b"fast", b"again", T);
}
