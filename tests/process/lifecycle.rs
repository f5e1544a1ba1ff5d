//! Stopping and restarting stores the way operators do: SIGTERM hands leadership away
//! before the store stops, so clients see a redirect rather than an election; a rolling
//! restart of every store under load loses no acknowledged write, and the longest time
//! any region went without serving a write is measured and bounded.

use crate::common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use common::{client, voters, wait_until, ProcCluster, StopOnDrop};
use proto::metapb;

const T: Duration = Duration::from_secs(60);

/// `server.graceful-shutdown-timeout`'s default: the bound a shutdown waits for leaders.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// An election can take up to twice the configured timeout (10 ticks of 100 ms,
/// randomized up to 20).
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// The store index (in `cluster`) whose store leads the region holding `key`.
fn leader_index(
    cluster: &ProcCluster,
    rt: &tokio::runtime::Runtime,
    c: &client::Client,
    key: &[u8],
) -> Option<usize> {
    let route = rt.block_on(c.pd().get_region(key)).ok()?;
    let store = route.leader?.get_store_id();
    let stores = rt.block_on(c.stores()).ok()?;
    let (s, _) = stores.iter().find(|(s, _)| s.get_id() == store)?;
    index_of(cluster, s)
}

/// The index (in `cluster`) of the process serving `store`.
fn index_of(cluster: &ProcCluster, store: &metapb::Store) -> Option<usize> {
    (0..cluster.stores.len())
        .find(|i| store.get_address() == format!("127.0.0.1:{}", cluster.store_addrs[*i].0))
}

/// When the process serving store index `i` started, as it last told PD (Unix seconds).
fn started_at(
    cluster: &ProcCluster,
    rt: &tokio::runtime::Runtime,
    c: &client::Client,
    i: usize,
) -> Option<u32> {
    let stores = rt.block_on(c.stores()).ok()?;
    let (_, stats) = stores
        .iter()
        .find(|(s, _)| index_of(cluster, s) == Some(i))?;
    Some(stats.start_time)
}

/// Writes `prefix-N` keys one after another until `stop`; records each acknowledged key
/// and the slowest request.
fn writer(
    rt: &tokio::runtime::Runtime,
    c: &client::Client,
    prefix: &str,
    stop: &AtomicBool,
    acked: &Mutex<Vec<Vec<u8>>>,
) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = format!("{prefix}-{i:06}").into_bytes();
        let started = Instant::now();
        let res = rt.block_on(c.put(&k, b"v"));
        slowest = slowest.max(started.elapsed());
        if res.is_ok() {
            acked.lock().unwrap().push(k);
        }
        i += 1;
    }
    slowest
}

fn assert_all_there(rt: &tokio::runtime::Runtime, c: &client::Client, acked: &[Vec<u8>]) {
    for k in acked {
        let got = rt.block_on(c.get(k)).expect("a read after the restarts");
        assert_eq!(
            got.as_deref(),
            Some(&b"v"[..]),
            "acknowledged {:?} lost",
            String::from_utf8_lossy(k)
        );
    }
}

#[test]
fn sigterm_hands_leadership_away_so_no_request_waits_for_an_election() {
    // Times requests: no other test's cluster may share the machine.
    let _alone = test_cluster::gate::alone();
    let mut cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", T, || voters(&rt, &c) == 3);
    rt.block_on(c.put(b"w-000000", b"v")).unwrap();
    let mut leader = None;
    wait_until("PD to know the leader", T, || {
        leader = leader_index(&cluster, &rt, &c, b"w-");
        leader.is_some()
    });
    let leader = leader.expect("found above");

    let stop = AtomicBool::new(false);
    let acked = Mutex::new(vec![]);
    let (slowest, status) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let w = s.spawn(|| writer(&rt, &c, "w", &stop, &acked));
        std::thread::sleep(Duration::from_millis(500));
        let before = acked.lock().unwrap().len();
        let status = cluster.terminate_store(leader, SHUTDOWN_WAIT + Duration::from_secs(20));
        let at_exit = acked.lock().unwrap().len();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let slowest = w.join().expect("writer");
        assert!(
            before > 0 && acked.lock().unwrap().len() > at_exit,
            "writes went on throughout"
        );
        (slowest, status)
    });
    let status = status.expect("the store exited within its shutdown bound");
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let log =
        std::fs::read_to_string(cluster.dir.path().join(format!("store-{leader}.log"))).unwrap();
    assert!(
        log.contains("no leaders left to hand over"),
        "the store stopped without handing its leaders away:\n{log}"
    );
    eprintln!("slowest write while the leader's store shut down: {slowest:?}");
    assert!(
        slowest < ELECTION_TIMEOUT_MAX,
        "a write waited {slowest:?}, as long as an election"
    );
    assert_all_there(&rt, &c, &acked.into_inner().unwrap());
}

#[test]
fn rolling_restart_under_load_loses_nothing_and_keeps_every_region_served() {
    // Times requests: no other test's cluster may share the machine.
    let _alone = test_cluster::gate::alone();
    let mut cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", T, || voters(&rt, &c) == 3);
    let first = rt.block_on(c.regions()).unwrap().remove(0).region.get_id();
    let prefixes = ["a", "h", "p", "w"];
    let splits: Vec<Vec<u8>> = prefixes[1..]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    wait_until("the key space to split", T, || {
        rt.block_on(c.split_region(first, &splits)).is_ok()
    });

    let stop = AtomicBool::new(false);
    let acked = Mutex::new(vec![]);
    // Per region (one writer each): the longest time between two acknowledged writes,
    // counted from the first, so that the new regions' first elections are not in it.
    let gaps = Mutex::new(BTreeMap::new());
    let serving = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for p in prefixes {
            let (rt, c, stop, acked, gaps, serving) = (&rt, &c, &stop, &acked, &gaps, &serving);
            s.spawn(move || {
                let mut last_ok: Option<Instant> = None;
                let mut longest = Duration::ZERO;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("{p}-{i:06}").into_bytes();
                    if rt.block_on(c.put(&k, b"v")).is_ok() {
                        match last_ok {
                            Some(t) => longest = longest.max(t.elapsed()),
                            None => _ = serving.fetch_add(1, Ordering::Relaxed),
                        }
                        last_ok = Some(Instant::now());
                        acked.lock().unwrap().push(k);
                    }
                    i += 1;
                }
                gaps.lock().unwrap().insert(p, longest);
            });
        }
        let _stop = StopOnDrop(&stop);
        wait_until("every region to serve writes", T, || {
            serving.load(Ordering::Relaxed) == prefixes.len()
        });
        for i in 0..3 {
            let mut before = None;
            wait_until("PD to tell the store's start time", T, || {
                before = started_at(&cluster, &rt, &c, i);
                before.is_some()
            });
            let status = cluster.terminate_store(i, SHUTDOWN_WAIT + Duration::from_secs(20));
            assert!(
                status.is_some_and(|s| s.success()),
                "store {i} stopped: {status:?}"
            );
            cluster.start_store(i);
            // The next store goes only once this one is back: it told PD of its new
            // start, and no region lacks a leader or a replica.
            wait_until("the restarted store to report to PD", T, || {
                started_at(&cluster, &rt, &c, i).is_some_and(|t| Some(t) != before)
            });
            wait_until("the cluster healthy again", T, || {
                common::kvctl(&cluster.pd_addr, &["cluster", "health"])
                    .status
                    .success()
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
    });
    let gaps = gaps.into_inner().unwrap();
    eprintln!("longest time without an acknowledged write, per region (by key prefix): {gaps:?}");
    for (p, gap) in &gaps {
        assert!(
            *gap < ELECTION_TIMEOUT_MAX,
            "the region of {p:?} went {gap:?} without serving a write"
        );
    }
    let acked = acked.into_inner().unwrap();
    assert!(acked.len() > 100, "the load ran ({} writes)", acked.len());
    assert_all_there(&rt, &c, &acked);
}

#[test]
fn a_store_restarted_on_a_new_address_keeps_its_id_and_pd_learns_the_address() {
    // Times requests: no other test's cluster may share the machine.
    let _alone = test_cluster::gate::alone();
    let mut cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", T, || voters(&rt, &c) == 3);
    rt.block_on(c.put(b"before", b"v")).unwrap();
    let old_addr = format!("127.0.0.1:{}", cluster.store_addrs[2].0);
    let id_at = |addr: &str| {
        rt.block_on(c.stores())
            .unwrap()
            .iter()
            .find(|(s, _)| s.get_address() == addr)
            .map(|(s, _)| s.get_id())
    };
    let id = id_at(&old_addr).expect("the store is registered");

    let status = cluster.terminate_store(2, SHUTDOWN_WAIT + Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    cluster.readdress_store(2);
    cluster.start_store(2);
    let new_addr = format!("127.0.0.1:{}", cluster.store_addrs[2].0);
    wait_until("PD to have the new address under the same id", T, || {
        id_at(&new_addr) == Some(id)
    });
    assert_eq!(id_at(&old_addr), None, "the old address is gone");
    assert_eq!(
        rt.block_on(c.stores()).unwrap().len(),
        3,
        "no new store was made"
    );
    // The others reach it at its new address: it catches up and the cluster is whole.
    rt.block_on(c.put(b"after", b"v")).unwrap();
    wait_until("a healthy cluster", T, || {
        common::kvctl(
            &cluster.pd_addr,
            &["cluster", "health", "--down-after", "4s"],
        )
        .status
        .success()
    });
    for route in rt.block_on(c.regions()).unwrap() {
        let id = route.region.get_id();
        wait_until("replicas to agree", T, || {
            rt.block_on(c.check_region(id))
                .is_ok_and(|r| r.consistent())
        });
    }
}
