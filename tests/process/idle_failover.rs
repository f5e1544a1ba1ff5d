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
