//! The real binaries on 127.0.0.1: durability of acknowledged writes across SIGKILLs of
//! one store at a time while writing, and of all stores at once.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{kvctl, wait_until, ProcCluster};

const KEYS: usize = 1000;

fn client(rt: &tokio::runtime::Runtime, pd: &str) -> client::Client {
    rt.block_on(client::Client::connect(&[pd.to_string()], Duration::from_secs(20)))
        .expect("connect client")
}

fn voters(rt: &tokio::runtime::Runtime, c: &client::Client) -> usize {
    rt.block_on(c.regions())
        .ok()
        .and_then(|rs| rs.into_iter().next())
        .map(|r| {
            r.region
                .get_peers()
                .iter()
                .filter(|p| p.get_role() == proto::metapb::PeerRole::Voter)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn acknowledged_writes_survive_sigkill_of_each_store_and_of_all() {
    let mut cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = Arc::new(client(&rt, &cluster.pd_addr));
    wait_until("the first region to have three voters", Duration::from_secs(60), || voters(&rt, &c) == 3);

    // One writer: each key is written once with its own value and retried until
    // acknowledged, so "the last acknowledged value" is exact.
    let acked: Arc<parking_lot::Mutex<BTreeMap<usize, String>>> = Arc::default();
    let written = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, acked, written, stop) = (c.clone(), acked.clone(), written.clone(), stop.clone());
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            for i in 0..KEYS {
                let (k, v) = (format!("k{i:04}"), format!("v{i}"));
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if handle.block_on(c.put(k.as_bytes(), v.as_bytes())).is_ok() {
                        acked.lock().insert(i, v);
                        written.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        })
    };
    for victim in 0..3 {
        let before = written.load(Ordering::SeqCst);
        wait_until("writes to progress", Duration::from_secs(60), || written.load(Ordering::SeqCst) >= before + 50);
        cluster.kill_store(victim);
        let at_kill = written.load(Ordering::SeqCst);
        wait_until("writes to go on without the killed store", Duration::from_secs(60), || {
            written.load(Ordering::SeqCst) >= (at_kill + 50).min(KEYS)
        });
        cluster.start_store(victim);
    }
    writer.join().expect("writer thread");
    assert_eq!(written.load(Ordering::SeqCst), KEYS);
    stop.store(true, Ordering::SeqCst);

    for i in 0..3 {
        cluster.kill_store(i);
    }
    for i in 0..3 {
        cluster.start_store(i);
    }
    let acked = acked.lock().clone();
    for (i, v) in &acked {
        let got = rt
            .block_on(c.get(format!("k{i:04}").as_bytes()))
            .unwrap_or_else(|e| panic!("read k{i:04}: {e}"));
        assert_eq!(got.as_deref(), Some(v.as_bytes()), "k{i:04}");
    }

    // kvctl sees the same data.
    let out = kvctl(&cluster.pd_addr, &["get", "k0999"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v999");
    let out = kvctl(&cluster.pd_addr, &["scan", "k0000", "k0003"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k0000\tv0\nk0001\tv1\nk0002\tv2\n");
}
