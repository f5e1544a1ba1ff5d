//! A PD group of three pd-server processes under a cluster of three kv-servers: TiKV's own
//! client rides through 20 kill -9s of the PD leader, and kvctl lists the members and moves
//! the leadership.

use crate::common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{kvctl, wait_until, ProcCluster};
use parking_lot::Mutex;
use tikv_client::{RawClient, TransactionClient};

const T: Duration = Duration::from_secs(60);
/// Longest one client call may take before the workload counts it failed.
const CALL: Duration = Duration::from_secs(10);

/// Three PD members, three stores, the first region on three voters.
fn cluster() -> (ProcCluster, tokio::runtime::Runtime) {
    let cluster = ProcCluster::start_with_pds(3, 3, "");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let ours = common::client(&rt, &cluster.pd_addr);
    wait_until("three voters", T, || {
        rt.block_on(ours.regions())
            .is_ok_and(|rs| rs.first().is_some_and(|r| r.region.get_peers().len() == 3))
    });
    (cluster, rt)
}

fn endpoints(c: &ProcCluster) -> Vec<String> {
    c.pd_addr.split(',').map(String::from).collect()
}

/// What the workload had acknowledged: raw pairs (with when each put began and how long
/// it took), transactional pairs (with when each transaction began and when its commit
/// was acknowledged).
#[derive(Default)]
struct Acked {
    raw: Vec<(Vec<u8>, Vec<u8>, Instant, Duration)>,
    txn: Vec<(Vec<u8>, Vec<u8>, Instant, Instant)>,
}

/// PD leader kills the test makes (the figures are over 20).
const KILLS: usize = 20;

fn median_and_worst(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() - 1])
}

/// TiKV's own client, given every PD member, rides through 20 kill -9s of the PD leader
/// (each killed member restarted before the next kill); every acknowledged write reads
/// back. Prints, over the kills, the time to the first timestamp served and to the first
/// transaction committed, and the p99 of raw writes begun in the failover windows.
#[test]
fn tikv_client_rides_through_kills_of_the_pd_leader() {
    let (mut cluster, rt) = cluster();
    let pds = endpoints(&cluster);
    let raw = rt
        .block_on(RawClient::new(pds.clone()))
        .expect("raw client");
    let txn = rt
        .block_on(TransactionClient::new(pds.clone()))
        .expect("transaction client");
    let probe = rt
        .block_on(TransactionClient::new(pds))
        .expect("timestamp probe client");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let raw_writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        rt.spawn(async move {
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (k, v) = (
                    format!("raw{i:06}").into_bytes(),
                    format!("v{i}").into_bytes(),
                );
                let began = Instant::now();
                let put = raw.put(k.clone(), v.clone());
                if let Ok(Ok(())) = tokio::time::timeout(CALL, put).await {
                    acked.lock().raw.push((k, v, began, began.elapsed()));
                }
            }
            raw
        })
    };
    let txn_writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        rt.spawn(async move {
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (k, v) = (
                    format!("txn{i:06}").into_bytes(),
                    format!("v{i}").into_bytes(),
                );
                let (k2, v2) = (k.clone(), v.clone());
                let t = &txn;
                let began = Instant::now();
                let commit = async move {
                    let mut t = t.begin_optimistic().await?;
                    t.put(k2, v2).await?;
                    t.commit().await
                };
                if let Ok(Ok(_)) = tokio::time::timeout(CALL, commit).await {
                    acked.lock().txn.push((k, v, began, Instant::now()));
                }
            }
            txn
        })
    };
    wait_until("transactions before the kills", T, || {
        acked.lock().txn.len() >= 20
    });
    let (mut to_ts, mut to_txn, mut windows) = (vec![], vec![], vec![]);
    for _ in 0..KILLS {
        let leader =
            test_cluster::poll_until(T, || cluster.pd_leader()).expect("a PD member leads");
        let killed = Instant::now();
        cluster.kill_pd(leader);
        // The first timestamp any client can get after the kill comes from a new leader.
        let first_ts = test_cluster::poll_until(T, || {
            let ts = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(500), probe.current_timestamp()).await
            });
            matches!(ts, Ok(Ok(_))).then(|| killed.elapsed())
        })
        .expect("a timestamp after the kill");
        // The first transaction begun after the kill needs a timestamp from it too.
        let first_txn = test_cluster::poll_until(T, || {
            acked
                .lock()
                .txn
                .iter()
                .find(|(_, _, began, _)| *began > killed)
                .map(|(_, _, _, at)| *at - killed)
        })
        .expect("a transaction begun after the kill commits");
        to_ts.push(first_ts);
        to_txn.push(first_txn);
        windows.push((killed, killed + first_txn));
        cluster.start_pd(leader);
        // The restarted member is back in the group before the next kill: it answers,
        // and a leader serves.
        wait_until("the restarted member answers", T, || {
            common::http_get(&cluster.pd_status_addr_of(leader), "/status").is_some()
                && cluster.pd_leader().is_some()
        });
    }
    let after = acked.lock().txn.len();
    wait_until("more transactions", T, || {
        acked.lock().txn.len() >= after + 20
    });
    stop.store(true, Ordering::Relaxed);
    let raw = rt.block_on(raw_writer).expect("raw writer");
    let txn = rt.block_on(txn_writer).expect("txn writer");

    let acked = acked.lock();
    let (ts_median, ts_worst) = median_and_worst(to_ts);
    let (txn_median, txn_worst) = median_and_worst(to_txn);
    println!(
        "{KILLS} PD leader kills: first timestamp after the kill: median {ts_median:?}, worst {ts_worst:?}; first transaction begun after the kill committed: median {txn_median:?}, worst {txn_worst:?}"
    );
    let mut in_windows: Vec<Duration> = acked
        .raw
        .iter()
        .filter(|(_, _, began, _)| windows.iter().any(|(a, b)| began >= a && began <= b))
        .map(|(_, _, _, took)| *took)
        .collect();
    in_windows.sort();
    assert!(
        !in_windows.is_empty(),
        "raw writes went on during the failovers"
    );
    println!(
        "raw writes begun during the failover windows: {}, p99 {:?}, worst {:?}",
        in_windows.len(),
        in_windows[(in_windows.len() * 99 / 100).min(in_windows.len() - 1)],
        in_windows[in_windows.len() - 1]
    );
    assert!(
        acked.raw.len() >= 20,
        "raw writes went on: {}",
        acked.raw.len()
    );
    rt.block_on(async {
        for (k, v, _, _) in &acked.raw {
            let got = raw.get(k.clone()).await.expect("raw get");
            assert_eq!(got.as_ref(), Some(v), "acknowledged raw write {k:?} lost");
        }
        let mut snap = txn.snapshot(
            txn.current_timestamp().await.expect("timestamp"),
            tikv_client::TransactionOptions::new_optimistic(),
        );
        for (k, v, _, _) in &acked.txn {
            let got = snap.get(k.clone()).await.expect("snapshot get");
            assert_eq!(got.as_ref(), Some(v), "acknowledged transaction {k:?} lost");
        }
    });
    println!(
        "{} raw writes and {} transactions acknowledged, all readable",
        acked.raw.len(),
        acked.txn.len()
    );
}

#[test]
fn kvctl_lists_the_pd_members_and_moves_their_leadership() {
    let (mut cluster, _rt) = cluster();
    let out = kvctl(&cluster.pd_addr, &["--output", "json", "pd", "members"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let members = members.as_array().expect("a list");
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(members.iter().filter(|m| m["leader"] == true).count(), 1);
    assert!(members.iter().all(|m| m["healthy"] == true), "{members:?}");
    let leader = cluster.pd_leader().expect("a leader");
    let to = format!("pd{}", (leader + 1) % 3 + 1);
    let out = kvctl(&cluster.pd_addr, &["pd", "transfer-leader", &to]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.pd_leader(), Some((leader + 1) % 3), "{to} leads");

    // A member that is down shows as such, and the command says so in its exit code.
    let down = (leader + 2) % 3;
    cluster.kill_pd(down);
    let out = kvctl(&cluster.pd_addr, &["pd", "members"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("pd{}\t", down + 1)))
        .expect("the down member is listed");
    assert!(line.contains("down"), "{line}");
}

#[test]
fn kvctl_with_no_pd_answering_fails_soon_naming_the_addresses() {
    let addrs = format!(
        "127.0.0.1:{},127.0.0.1:{}",
        common::free_port(),
        common::free_port()
    );
    let started = Instant::now();
    let out = kvctl(&addrs, &["get", "k"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for a in addrs.split(',') {
        assert!(err.contains(a), "{a} is named: {err}");
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn cluster_health_probes_every_pd_member_and_store_directly() {
    let (mut cluster, _rt) = cluster();
    let health = |c: &ProcCluster| {
        let out = kvctl(&c.pd_addr, &["cluster", "health"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    wait_until("a healthy cluster", T, || health(&cluster).0 == Some(0));
    let (_, text) = health(&cluster);
    assert!(text.contains("pd members: "), "{text}");
    assert!(text.matches(" up").count() >= 3, "{text}");

    // A PD member that is not the leader stops: degraded at once, and named.
    let leader = cluster.pd_leader().expect("a leader");
    let follower = (leader + 1) % 3;
    cluster.kill_pd(follower);
    let (code, text) = health(&cluster);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("pd{} down", follower + 1)), "{text}");

    // Two of three stores stop: no region can take a write, which the very next check
    // says, without waiting for PD's heartbeat threshold.
    cluster.kill_store(1);
    cluster.kill_store(2);
    let (code, text) = health(&cluster);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("UNHEALTHY"), "{text}");
}
