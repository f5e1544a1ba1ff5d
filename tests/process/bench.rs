//! kv-bench as an operator runs it: against a cluster, with its JSON report, and with bad
//! arguments or an unreachable target refused before any load starts.

use std::{process::Command, time::Duration};

use test_cluster::wait_until;

use crate::common::{kvctl_command, ProcCluster};

/// Runs kv-bench to its end, or kills it after two minutes (coreutils' `timeout`, exit
/// code 124): a bench that hangs fails the test instead of hanging it.
fn kv_bench(pd: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new("timeout")
        .args(["--kill-after=5s", "120s", env!("CARGO_BIN_EXE_kv-bench")])
        .args(["--endpoints", pd, "--quiet"])
        .args(args)
        .output()
        .expect("run kv-bench");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The load writes every key once; ycsb-a then reads and updates them, and the report
/// counts both kinds with the cluster's fsyncs; a stale read mode and zipfian keys work
/// too.
#[test]
fn kv_bench_loads_and_reports_per_operation() {
    let cluster = ProcCluster::start(1);
    let pd = cluster.pd_addr.clone();
    wait_until("the cluster to serve", Duration::from_secs(60), || {
        kvctl_command(&pd)
            .args(["put", "a", "1"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let common = [
        "--keys",
        "500",
        "--clients",
        "8",
        "--connections",
        "2",
        "--output",
        "json",
    ];
    let (code, out, err) = kv_bench(&pd, &[&common[..], &["--workload", "load"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let load: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(load["ops"][0]["op"], "insert");
    assert_eq!(load["ops"][0]["count"], 500, "{out}");
    assert!(load["incomplete"].is_null());
    let (code, out, err) = kv_bench(
        &pd,
        &[
            &common[..],
            &[
                "--workload",
                "ycsb-a",
                "--ops",
                "400",
                "--distribution",
                "zipfian",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{err}");
    let mixed: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    let ops = mixed["ops"].as_array().expect("lines");
    let names: Vec<&str> = ops.iter().map(|l| l["op"].as_str().unwrap()).collect();
    assert_eq!(names, ["read", "update", "total"], "{out}");
    assert_eq!(ops[2]["count"], 400, "{out}");
    assert!(ops[2]["errors"].as_object().unwrap().is_empty(), "{out}");
    assert!(mixed["fsyncs"].as_f64().unwrap() > 0.0, "{out}");
    let (code, out, err) = kv_bench(
        &pd,
        &[
            "--keys",
            "500",
            "--workload",
            "ycsb-e",
            "--ops",
            "100",
            "--clients",
            "4",
            "--connections",
            "1",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("scan") && out.contains("insert"), "{out}");
}

/// Bad arguments and a target that does not answer are refused, named, before any load.
#[test]
fn kv_bench_refuses_bad_input_before_any_load() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for (args, want) in [
        (&["--workload", "ycsb-x"][..], "invalid value 'ycsb-x'"),
        (&["--value-size", "0"][..], "must be at least 1, not 0"),
        (&["--clients", "-3"][..], "must be at least 1, not -3"),
        (
            &["--driver", "etcd", "--workload", "txn"][..],
            "the etcd driver has none",
        ),
        (
            &["--connect-timeout", "1s"][..],
            "cannot reach Flotilla's PD",
        ),
        (
            &["--driver", "etcd", "--connect-timeout", "1s"][..],
            "cannot reach etcd",
        ),
    ] {
        let (code, out, err) = kv_bench(&closed, args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: nothing measured: {out}");
    }
}
