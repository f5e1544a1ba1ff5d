//! Zones with the real binaries: stores started with `--labels zone=...`, PD with
//! `[replication] location-labels` and `isolation-level`, kvctl reading by mode (leader,
//! follower, closest, stale) and showing labels and isolation; and the loss of a whole
//! zone (its PD member and its store) with PD members spread over three zones.

use std::time::{Duration, Instant};

use client::ReadMode;

use crate::common::{http_get, kvctl, wait_until, ProcCluster};

const T: Duration = Duration::from_secs(60);

const ZONED_PD: &str =
    "[replication]\nlocation-labels = [\"zone\", \"host\"]\nisolation-level = \"zone\"\n";

/// `pds` PD members and one store in each of zones z1, z2, z3.
fn three_zones(pds: usize) -> ProcCluster {
    let mut c = ProcCluster::start_full(pds, 0, "", ZONED_PD);
    for z in 1..=3 {
        c.add_labelled_store(&format!("zone=z{z},host=h{z}"));
    }
    c
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Reads served by store `i`, in `mode` (leader, replica, stale), by its metrics.
fn served(c: &ProcCluster, i: usize, mode: &str) -> u64 {
    count(c, i, mode, "served")
}

/// Reads store `i` answered in `mode` with `outcome` (served, not_ready, error).
fn count(c: &ProcCluster, i: usize, mode: &str, outcome: &str) -> u64 {
    let Some(body) = http_get(&c.status_addr(i), "/metrics") else {
        return 0;
    };
    let (mode, outcome) = (format!("mode=\"{mode}\""), format!("outcome=\"{outcome}\""));
    body.lines()
        .filter(|l| l.starts_with("flotilla_server_reads_total{"))
        .filter(|l| l.contains(&mode) && l.contains(&outcome))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn kvctl_reads_by_mode_and_shows_labels_and_isolation() {
    let c = three_zones(1);
    let pd = c.pd_addr.clone();
    wait_until("three voters in three zones", T, || {
        let out = kvctl(&pd, &["region", "list"]);
        let t = text(&out);
        t.lines()
            .skip(1)
            .any(|l| l.ends_with("\tzone") && l.matches(":voter").count() == 3)
    });
    let put = kvctl(&pd, &["put", "k", "v"]);
    assert!(put.status.success(), "{}", text(&put));

    for z in 1..=3 {
        let zone = format!("z{z}");
        let before = served(&c, z - 1, "replica");
        let out = kvctl(&pd, &["--zone", &zone, "--read", "closest", "get", "k"]);
        assert_eq!(text(&out), "v\n", "closest read from {zone}");
        let all: Vec<(u64, u64)> = (0..3)
            .map(|i| (served(&c, i, "replica"), served(&c, i, "leader")))
            .collect();
        assert!(
            served(&c, z - 1, "replica") > before,
            "the store in {zone} served the closest read: (replica, leader) reads by store {all:?}"
        );
    }
    let out = kvctl(&pd, &["get", "k", "--read", "follower"]);
    assert_eq!(text(&out), "v\n");
    let before = served(&c, 1, "stale");
    let out = kvctl(&pd, &["--zone", "z2", "get", "k", "--read", "stale=30s"]);
    assert_eq!(text(&out), "v\n");
    assert!(
        served(&c, 1, "stale") > before,
        "z2's store served the stale read"
    );
    let scan = kvctl(&pd, &["scan", "--read", "stale=30s", "--zone", "z3"]);
    assert_eq!(text(&scan), "k\tv\n");

    // A bound within the deposed-leader margin (two election timeouts, 2 s) no follower
    // can meet: they refuse (data_is_not_ready) and the client reads from the leader.
    let refused = |c: &ProcCluster| {
        (0..3)
            .map(|i| count(c, i, "stale", "not_ready"))
            .sum::<u64>()
    };
    let before = refused(&c);
    for z in 1..=3 {
        let out = kvctl(
            &pd,
            &["--zone", &format!("z{z}"), "get", "k", "--read", "stale=1s"],
        );
        assert_eq!(
            text(&out),
            "v\n",
            "a refused stale read falls back to the leader"
        );
    }
    assert!(refused(&c) > before, "the followers refused the 1 s bound");

    // Transactional reads take the same modes: a follower read, and a snapshot read
    // back in time from the closest replica.
    let put = kvctl(&pd, &["txn", "put", "tk", "tv"]);
    assert!(put.status.success(), "{}", text(&put));
    let out = kvctl(
        &pd,
        &["--zone", "z2", "txn", "get", "tk", "--read", "closest"],
    );
    assert_eq!(text(&out), "tv\n");
    wait_until("a stale transactional read of the put", T, || {
        let out = kvctl(
            &pd,
            &["--zone", "z3", "txn", "get", "tk", "--read", "stale=1s"],
        );
        text(&out) == "tv\n"
    });

    for bad in ["stale=0s", "nearest", "stale=soon"] {
        let out = kvctl(&pd, &["get", "k", "--read", bad]);
        assert!(!out.status.success(), "--read {bad} accepted");
        assert!(text(&out).contains("read mode"), "{bad}: {}", text(&out));
    }
    let stores = text(&kvctl(&pd, &["store", "list"]));
    for z in 1..=3 {
        assert!(stores.contains(&format!("host=h{z},zone=z{z}")), "{stores}");
    }
    let health = text(&kvctl(&pd, &["cluster", "health"]));
    assert!(health.contains("not isolated:      0"), "{health}");
}

#[test]
fn losing_a_whole_zone_keeps_every_acknowledged_key_and_writes_resume() {
    let runs: usize = std::env::var("ZONE_LOSS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut resumed = vec![];
    for run in 0..runs {
        resumed.push(lose_a_zone(run));
    }
    resumed.sort();
    eprintln!(
        "writes resumed after a zone loss: median {:.2}s, worst {:.2}s over {runs} runs: {resumed:.2?}",
        resumed[resumed.len() / 2].as_secs_f64(),
        resumed.last().unwrap().as_secs_f64()
    );
}

/// One zone loss: the zone whose store leads the region goes, with that zone's PD member
/// (pdN and storeN stand for zone zN); returns how long writes took to resume.
fn lose_a_zone(run: usize) -> Duration {
    let mut c = three_zones(3);
    let pd = c.pd_addr.clone();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let ours = crate::common::client(&rt, &pd);
    wait_until("three voters", T, || crate::common::voters(&rt, &ours) == 3);
    let keys: Vec<String> = (0..50).map(|i| format!("run{run}-key{i:02}")).collect();
    for k in &keys {
        rt.block_on(ours.put(k.as_bytes(), b"acked")).expect("put");
    }
    // The zone of the store leading the region, with that zone's PD member.
    let zone = leader_zone(&c, &rt, &ours);
    c.kill_pd(zone);
    c.kill_store(zone);
    let lost = Instant::now();
    wait_until("a write after the zone loss", T, || {
        rt.block_on(ours.put(b"after-loss", b"1")).is_ok()
    });
    let resumed = lost.elapsed();
    eprintln!(
        "run {run}: zone z{} lost, writes resumed after {resumed:.2?}",
        zone + 1
    );
    for k in &keys {
        assert_eq!(
            rt.block_on(ours.get(k.as_bytes())).expect("get"),
            Some(b"acked".to_vec()),
            "{k}"
        );
    }

    // The zone comes back and catches up: its store serves a follower read of the write
    // made while it was gone.
    c.start_pd(zone);
    c.start_store(zone);
    let local = ours_in_zone(&rt, &pd, zone);
    wait_until(
        "the returned zone to serve the write made without it",
        T,
        || {
            rt.block_on(local.get_with(b"after-loss", ReadMode::Closest))
                .is_ok_and(|v| v == Some(b"1".to_vec()))
                && served(&c, zone, "replica") > 0
        },
    );
    resumed
}

/// The index of the store (and zone) leading the first region.
fn leader_zone(c: &ProcCluster, rt: &tokio::runtime::Runtime, ours: &client::Client) -> usize {
    let leader = rt.block_on(ours.regions()).expect("regions")[0]
        .leader
        .clone()
        .expect("a leader");
    let (store, _) = rt
        .block_on(ours.pd().get_store(leader.get_store_id()))
        .expect("the leader's store");
    let port: u16 = store
        .get_address()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    c.store_addrs
        .iter()
        .position(|(p, _)| *p == port)
        .expect("one of ours")
}

fn ours_in_zone(rt: &tokio::runtime::Runtime, pd: &str, zone: usize) -> client::Client {
    crate::common::client(rt, pd).with_zone(Some(format!("z{}", zone + 1)))
}
