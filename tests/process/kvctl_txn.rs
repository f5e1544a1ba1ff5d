//! kvctl's transactions: one-statement `txn` commands, `txn status`, and the shell's
//! BEGIN / COMMIT / ROLLBACK driven through its real input (piped stdin), with two
//! shells conflicting.

use crate::common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{channel, Receiver},
    time::{Duration, Instant},
};

use client::txn::{Mode, TxnClient};
use common::{kvctl, wait_until, ProcCluster};

const T: Duration = Duration::from_secs(20);

fn text(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A kvctl shell fed line by line, its output read as it comes.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    /// Lines from stdout and stderr, as they arrive.
    lines: Receiver<String>,
}

impl Shell {
    fn start(pd: &str, home: &std::path::Path) -> Shell {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(["--pd", pd, "shell"])
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kvctl shell");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        Shell {
            child,
            stdin,
            lines,
        }
    }

    /// Sends `line` and returns the first output line containing `want`.
    fn says(&mut self, line: &str, want: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to the shell");
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + T;
        let mut seen = vec![];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(want) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("{line:?}: no output line with {want:?}; saw {seen:?}");
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kvctl_transactions_one_statement_status_and_two_shells() {
    let cluster = ProcCluster::start(1);
    let pd = cluster.pd_addr.clone();
    wait_until("the cluster serves", T, || {
        kvctl(&pd, &["put", "ready", "1"]).status.success()
    });

    // One-statement transactions; raw and transactional data are apart.
    let (code, out, _) = text(&kvctl(&pd, &["txn", "put", "acct", "100"]));
    assert!(code == 0 && out.starts_with("OK\tcommitted at "), "{out}");
    assert_eq!(text(&kvctl(&pd, &["txn", "get", "acct"])).1, "100\n");
    let (code, _, err) = text(&kvctl(&pd, &["get", "acct"]));
    assert!(
        code == 1 && err.contains("not found"),
        "a raw read does not see it"
    );
    assert_eq!(
        text(&kvctl(&pd, &["txn", "get", "ready"])).0,
        1,
        "nor the reverse"
    );
    assert_eq!(text(&kvctl(&pd, &["txn", "scan"])).1, "acct\t100\n");
    let (code, _, err) = text(&kvctl(&pd, &["txn", "status", "acct", "0"]));
    assert!(code == 2 && err.contains("start ts must not be 0"), "{err}");

    // Status through the primary key: locked, committed, rolled back, unknown.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt
        .block_on(TxnClient::connect(std::slice::from_ref(&pd), T))
        .unwrap();
    let status = |key: &str, ts: u64| text(&kvctl(&pd, &["txn", "status", key, &ts.to_string()])).1;
    rt.block_on(async {
        let mut held = c.begin_with(Mode::Pessimistic).await.unwrap();
        held.put(b"held", b"x").await.unwrap();
        assert!(
            status("held", held.start_ts()).starts_with("locked"),
            "{}",
            status("held", held.start_ts())
        );
        let start = held.start_ts();
        let commit_ts = held.commit().await.unwrap();
        assert_eq!(status("held", start), format!("committed at {commit_ts}\n"));
        let mut undone = c.begin_with(Mode::Pessimistic).await.unwrap();
        undone.put(b"undone", b"x").await.unwrap();
        let start = undone.start_ts();
        undone.rollback().await.unwrap();
        assert_eq!(status("undone", start), "rolled back\n");
        assert_eq!(status("never", start), "not found\n");
    });

    // Two shells write the same key; the second to commit loses, and says so.
    let (mut a, mut b) = (
        Shell::start(&pd, cluster.dir.path()),
        Shell::start(&pd, cluster.dir.path()),
    );
    a.says("BEGIN", "BEGIN\tstart ts");
    b.says("begin", "BEGIN\tstart ts");
    a.says("put acct from-a", "OK");
    b.says("txn put acct from-b", "OK");
    a.says("get acct", "from-a");
    b.says("get acct", "from-b");
    b.says("scan", "acct\tfrom-b");
    a.says("COMMIT", "OK\tcommitted at");
    let lost = b.says("COMMIT", "error:");
    assert!(lost.contains("conflict") && lost.contains("acct"), "{lost}");
    b.says("COMMIT", "no transaction is open");
    b.says("BEGIN", "BEGIN");
    b.says("put gone x", "OK");
    b.says("ROLLBACK", "rolled back");
    b.says("txn get gone", "not found");
    a.says("txn get acct", "from-a");
    drop((a, b));

    // Outside the shell a lost commit exits 1 and names the key. The one-statement
    // put starts while a pessimistic transaction holds the key, waits for it, and
    // finds it written after its own start.
    let mut conflicts = 0;
    for attempt in 0..3 {
        let key = format!("contended-{attempt}");
        let code = rt.block_on(async {
            let mut holder = c.begin_with(Mode::Pessimistic).await.unwrap();
            holder.put(key.as_bytes(), b"holder").await.unwrap();
            let put = Command::new(env!("CARGO_BIN_EXE_kvctl"))
                .args(["--pd", &pd, "txn", "put", &key, "late"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            holder.commit().await.unwrap();
            let out = put.wait_with_output().unwrap();
            let (code, _, err) = text(&out);
            if code == 1 {
                assert!(err.contains("conflict") && err.contains(&key), "{err}");
            } else {
                assert_eq!(code, 0, "{err}");
            }
            code
        });
        conflicts += (code == 1) as u32;
        if conflicts > 0 {
            break;
        }
    }
    assert!(
        conflicts > 0,
        "a one-statement put lost to a concurrent commit"
    );
}

/// The shell's common words, through its real input: verbs in any case, SET, HAS, BATCH,
/// BEGIN with a name, BENCHMARK, QUIT.
#[test]
fn the_shell_speaks_the_common_words() {
    let cluster = ProcCluster::start(1);
    let pd = cluster.pd_addr.clone();
    wait_until("the cluster serves", T, || {
        kvctl(&pd, &["put", "ready", "1"]).status.success()
    });
    let mut sh = Shell::start(&pd, cluster.dir.path());
    sh.says("SET greeting hello", "OK");
    sh.says("Get greeting", "hello");
    sh.says("HAS greeting", "1");
    sh.says("has nobody", "0");
    sh.says(
        "BATCH PUT acct-a 10 set acct-b 20 DELETE acct-c",
        "OK\tcommitted at",
    );
    sh.says("TXN GET acct-b", "20");
    sh.says("txn Has acct-c", "0");
    sh.says("BATCH PUT lonely", "missing its key or value");
    sh.says("batch frobnicate x", "is not PUT, SET or DELETE");
    sh.says("txn get acct-a", "10");
    sh.says("BEGIN transfer", "BEGIN\ttransfer\tstart ts");
    sh.says("put acct-a 5", "OK");
    sh.says("has acct-a", "1");
    sh.says("BATCH PUT x 1", "BATCH runs as a transaction of its own");
    sh.says("put acct-a 6 --ttl 5s", "cannot give a key a time to live");
    sh.says("Commit", "OK\tcommitted at");
    sh.says("txn get acct-a", "5");
    sh.says("REGION LIST", "ID");
    sh.says("BENCHMARK 40 bench/ 16", "put\t40 ops");
    sh.says("get bench/0000039", &"v".repeat(16));
    sh.says("benchmark 0", "must be 1 to");
    sh.says("STATS --interval 1s", "raw_batch_put\t");
    let store = sh.says("stats --interval 1s", "open connections");
    let led = store
        .split_once("(region:term/commit) ")
        .map(|(_, r)| r.to_string())
        .unwrap_or_default();
    assert!(
        led.contains('/') && !store.contains(" ? open"),
        "the store counts its connections and names the term and commit of what it leads: {store}"
    );
    writeln!(sh.stdin, "QUIT").unwrap();
    sh.stdin.flush().unwrap();
    wait_until("QUIT ends the shell", T, || {
        sh.child.try_wait().is_ok_and(|s| s.is_some())
    });
}
