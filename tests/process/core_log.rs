//! The gRPC core's own lines in a process's log: a core assertion aborts the process at
//! once, and its line must be there; a peer failing TLS handshakes in a loop gets one
//! line per interval, not one per attempt.

use crate::common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::ExitStatusExt,
    time::{Duration, Instant},
};

use common::{wait_until, ProcCluster};
use util::core_log::SITE_INTERVAL;

const T: Duration = Duration::from_secs(60);

/// The core logs a failed assertion and aborts in the same breath; the line was once
/// dropped, and such a crash left nothing in the log.
#[test]
fn a_core_assertion_leaves_its_line_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // Through a shell that turns core dumps off: this abort is the test's own.
    let mut store = common::Proc::spawn_full(
        "store",
        "/bin/sh",
        &[
            "-c".into(),
            r#"ulimit -c 0 && exec "$0" "$@""#.into(),
            env!("CARGO_BIN_EXE_kv-server").into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ],
        dir.path(),
        dir.path(),
        None,
        &[("FAILPOINTS".into(), "grpc_core_assertion=return".into())],
    );
    let status = store.wait_exit(T).expect("the store aborts");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    let log = store.log();
    assert!(
        log.contains("ASSERTION FAILED: the fail point grpc_core_assertion"),
        "the assertion's line is not in the log:\n{log}"
    );
}

#[test]
fn a_failing_handshake_reaches_the_log_once_per_interval_not_per_attempt() {
    let cluster = ProcCluster::start_tls(1, 1, &[]);
    let addr = format!("127.0.0.1:{}", cluster.store_addrs[0].0);
    let store = cluster.stores[0].as_ref().expect("the store runs");
    let lines = || -> Vec<String> {
        store
            .log()
            .lines()
            .filter(|l| l.contains("grpc core") && l.contains("Handshake failed"))
            .map(str::to_string)
            .collect()
    };
    wait_until("the store listening", T, || {
        TcpStream::connect(&addr).is_ok()
    });
    const BURST: usize = 20;
    let started = Instant::now();
    for _ in 0..BURST {
        plaintext_hello(&addr);
    }
    let burst = started.elapsed();
    wait_until("the core's handshake error in the store's log", T, || {
        !lines().is_empty()
    });
    // Each hello waits for its refusal, so the burst's lines all came within `burst`.
    // (Half the interval: the store may log a refusal a little after the client saw it.)
    if burst < SITE_INTERVAL / 2 {
        assert_eq!(lines().len(), 1, "one line for a burst: {:?}", lines());
    }
    // Past the interval, the next failure prints and counts what was held back: every
    // failure so far is a line or in a line's count.
    let accounted = || -> usize {
        let lines = lines();
        let held: usize = lines
            .iter()
            .filter_map(|l| {
                l.split("held_back: ")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        lines.len() + held
    };
    wait_until("the burst's failures counted", T, || {
        plaintext_hello(&addr);
        lines().len() >= 2 && accounted() >= BURST
    });
    assert!(
        lines().len() < BURST / 2,
        "a line per failure, not per interval: {:?}",
        lines()
    );
}

/// A plaintext HTTP/2 client's first bytes to a TLS port; returns once the store has
/// closed the connection (its handshake failed).
fn plaintext_hello(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("the store's port accepts");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let _ = s.read_to_end(&mut Vec::new());
}
