//! A cluster idle long enough for its region to hibernate loses the store that leads it:
//! the other stores notice the broken connection, wake the region and elect a leader at
//! once, and kvctl, which cannot dial the dead leader, asks a follower for the new one.

use crate::common;

use std::time::{Duration, Instant};

use common::{kvctl, wait_until, ProcCluster};

const T: Duration = Duration::from_secs(60);

fn hibernating(c: &ProcCluster, i: usize) -> f64 {
    common::http_get(&c.status_addr(i), "/metrics")
        .map(|m| common::metric(&m, "flotilla_raftstore_hibernating_peers"))
        .unwrap_or(0.0)
}

#[test]
fn a_write_soon_after_the_idle_leaders_store_is_killed_succeeds() {
    let mut c = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let client = common::client(&rt, &c.pd_addr);
    wait_until("three voters", T, || {
        rt.block_on(client.regions())
            .is_ok_and(|rs| rs.first().is_some_and(|r| r.region.get_peers().len() == 3))
    });
    rt.block_on(client.put(b"before", b"v"))
        .expect("a first write");
    wait_until("the region to hibernate on every store", T, || {
        (0..3).all(|i| hibernating(&c, i) == 1.0)
    });
    let leader_store = rt
        .block_on(client.pd().get_region(b""))
        .expect("the region")
        .leader
        .expect("a leader")
        .get_store_id();
    let addr = rt
        .block_on(client.pd().get_store(leader_store))
        .expect("the leader's store")
        .0
        .get_address()
        .to_string();
    let i = (0..3)
        .find(|&i| addr.ends_with(&format!(":{}", c.store_addrs[i].0)))
        .expect("the leader's store is one of ours");
    c.kill_store(i);
    let killed = Instant::now();
    let out = kvctl(&c.pd_addr, &["--timeout", "10s", "put", "after", "v"]);
    let took = killed.elapsed();
    println!("idle region's leader store killed: kvctl put succeeded {took:?} after the kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(5),
        "the write took {took:?}: the region must not wait for the store-silence check"
    );
    // The store killed did lead: another one does now.
    wait_until("PD to learn of the new leader", T, || {
        rt.block_on(client.pd().get_region(b""))
            .ok()
            .and_then(|r| r.leader)
            .is_some_and(|l| l.get_store_id() != leader_store)
    });
}

#[test]
fn a_move_and_a_decommission_of_an_idle_region_finish_in_seconds() {
    let c = ProcCluster::start(4);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let client = common::client(&rt, &c.pd_addr);
    wait_until("three voters", T, || {
        rt.block_on(client.regions())
            .is_ok_and(|rs| rs.first().is_some_and(|r| r.region.get_peers().len() == 3))
    });
    rt.block_on(client.put(b"k", b"v")).expect("a write");
    let asleep = |c: &ProcCluster| (0..4).filter(|&i| hibernating(c, i) == 1.0).count() == 3;
    wait_until("the region to hibernate", T, || asleep(&c));
    let route = rt
        .block_on(client.pd().get_region(b""))
        .expect("the region");
    let id = route.region.get_id();
    let leader = route.leader.expect("a leader").get_store_id();
    let holders: Vec<u64> = route
        .region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .collect();
    let stores = rt
        .block_on(client.pd().get_all_stores(true))
        .expect("stores");
    let spare = stores
        .iter()
        .map(|s| s.get_id())
        .find(|s| !holders.contains(s))
        .expect("a store without a replica");
    let from = *holders.iter().find(|s| **s != leader).expect("a follower");

    // PD sends the move to the sleeping leader at once, not at its next idle heartbeat
    // (a minute away).
    let started = Instant::now();
    let out = kvctl(
        &c.pd_addr,
        &[
            "--timeout",
            "60s",
            "region",
            "move",
            &id.to_string(),
            "--from",
            &from.to_string(),
            "--to",
            &spare.to_string(),
        ],
    );
    let took = started.elapsed();
    println!("move of an idle region took {took:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(30), "the move took {took:?}");

    // Asleep again, then the store that held the replica before the move is no longer
    // needed; the one that holds a follower now is decommissioned.
    wait_until("the region to hibernate again", T, || asleep(&c));
    let route = rt
        .block_on(client.pd().get_region(b""))
        .expect("the region");
    let leader = route.leader.expect("a leader").get_store_id();
    let victim = route
        .region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .find(|s| *s != leader)
        .expect("a follower");
    let started = Instant::now();
    let out = kvctl(
        &c.pd_addr,
        &["store", "delete", &victim.to_string(), "--wait"],
    );
    let took = started.elapsed();
    println!("decommission of a store holding an idle region took {took:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(30),
        "the decommission took {took:?}"
    );
}
