//! What an operator's dashboards read: every process serves `/metrics`, and every series
//! the Grafana dashboard (docker/grafana/flotilla.json) queries is exported by PD or a
//! store of a running cluster.

use crate::common;

use std::{collections::BTreeSet, time::Duration};

use common::{client, http_get, series, voters, wait_until, ProcCluster};

const T: Duration = Duration::from_secs(60);

/// The metric names a PromQL expression reads: identifiers of ours or the process's.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = expr;
    while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        if word.starts_with("flotilla_") || word.starts_with("process_") {
            out.push(word.to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/grafana/flotilla.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let mut exprs = vec![];
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("an expression").to_string());
        }
    }
    exprs
}

#[test]
fn every_series_the_dashboard_queries_is_exported() {
    let cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", T, || voters(&rt, &c) == 3);
    for i in 0..50 {
        rt.block_on(c.put(format!("k{i:03}").as_bytes(), b"v"))
            .unwrap();
        rt.block_on(c.get(format!("k{i:03}").as_bytes())).unwrap();
    }
    let mut addrs = vec![cluster.pd_status_addr()];
    addrs.extend((0..3).map(|i| cluster.status_addr(i)));
    let mut exported = BTreeSet::new();
    for a in &addrs {
        let text = http_get(a, "/metrics").unwrap_or_else(|| panic!("no /metrics on {a}"));
        exported.extend(series(&text));
    }
    let exprs = dashboard_exprs();
    assert!(exprs.len() > 30, "the dashboard has its panels");
    let mut missing = BTreeSet::new();
    for e in &exprs {
        for name in names_in(e) {
            if !exported.contains(&name) {
                missing.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried but exported by no process: {missing:?}"
    );

    // kvctl cluster stats, from the same metrics, while a client writes.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let _stop = common::StopOnDrop(&stop);
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rt.block_on(c.put(format!("load-{i:06}").as_bytes(), b"v"));
                i += 1;
            }
        });
        let out = common::kvctl(
            &cluster.pd_addr,
            &["cluster", "stats", "--interval", "2s", "--output", "json"],
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(stats["stores_scraped"], 3, "{stats}");
    assert!(stats["regions"].as_u64() >= Some(1), "{stats}");
    assert!(stats["keys"].as_u64() >= Some(50), "{stats}");
    let writes = stats["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .find(|o| o["rpc"].as_str().is_some_and(|r| r.contains("put")))
        .unwrap_or_else(|| panic!("no put in {stats}"));
    assert!(writes["ops_per_sec"].as_f64() > Some(1.0), "{stats}");
    assert!(writes["p99_seconds"].as_f64() > Some(0.0), "{stats}");
}

/// A Prometheus server (Debian's binary) scraping the given targets every second; killed
/// and its data removed when dropped.
struct Prometheus {
    _proc: common::Proc,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flotilla\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", common::free_port());
        let proc = common::Proc::spawn(
            "prometheus",
            "prometheus",
            &[
                format!("--config.file={}", cfg.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address={addr}"),
            ],
            dir.path(),
            dir.path(),
        );
        Prometheus {
            _proc: proc,
            addr,
            _dir: dir,
        }
    }

    /// The instant vector of `query`: (labels, value) per series.
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Some(body) = http_get(&self.addr, &format!("/api/v1/query?query={q}")) else {
            return vec![];
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The sum of `query` over its series (0 if none).
    fn sum(&self, query: &str) -> f64 {
        self.query(query).iter().map(|(_, v)| v).sum()
    }
}

fn prometheus_installed() -> bool {
    std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_real_prometheus_scrapes_every_process_and_sees_the_workload() {
    assert!(
        prometheus_installed(),
        "Debian's prometheus is missing: `make deps` (scripts/install-deps.sh) installs it"
    );
    let cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", T, || voters(&rt, &c) == 3);
    let mut targets = vec![cluster.pd_status_addr()];
    targets.extend((0..3).map(|i| cluster.status_addr(i)));
    let prom = Prometheus::start(&targets);
    wait_until("Prometheus to scrape all four processes", T, || {
        prom.query("up == 1").len() == 4
    });
    let series = [
        "flotilla_server_requests_total",
        "flotilla_raftstore_append_seconds_count",
        "flotilla_raftstore_log_fsyncs_total",
        "flotilla_engine_memtable_bytes",
        "flotilla_pd_region_heartbeats_total",
    ];
    let before: Vec<f64> = series.iter().map(|s| prom.sum(s)).collect();
    for i in 0..300 {
        rt.block_on(c.put(format!("load-{i:04}").as_bytes(), &[b'x'; 512]))
            .unwrap();
    }
    for (i, s) in series.iter().enumerate() {
        wait_until(&format!("{s} to move in Prometheus"), T, || {
            prom.sum(s) > before[i]
        });
    }
    // Every store's engine series is there, one per store.
    let memtables = prom.query("flotilla_engine_memtable_bytes");
    assert_eq!(memtables.len(), 3, "{memtables:?}");
    assert!(!prom.query("process_resident_memory_bytes").is_empty());
}
