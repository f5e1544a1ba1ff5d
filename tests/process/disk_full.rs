//! A store on a small filesystem (tmpfs, as root): once free space falls below
//! `raftstore.reserve-space` writes get a "disk full" error that names the limit, reads
//! go on, nothing acknowledged is lost, and writes resume by themselves when the
//! filesystem grows.

use crate::common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{client, wait_until, ProcCluster};
use rand::{rngs::StdRng, RngCore, SeedableRng};

const VALUE: usize = 256 << 10;
/// Enough to fill the filesystem several times over; the loop stops at the first refusal.
const MAX_WRITES: usize = 4000;

/// A tmpfs mounted for the test, lazily unmounted when dropped (the store may still hold
/// files on it if the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mount a tmpfs at {} (the test runs as root)",
            at.display()
        );
        Tmpfs(at)
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "grow the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("big-{i:05}").into_bytes()
}

#[test]
fn a_full_disk_refuses_writes_clearly_keeps_reads_and_recovers() {
    // Declared first so that it is unmounted only after the store is gone.
    let disk;
    let mut cluster = ProcCluster::start_with(0, "reserve-space = \"128MiB\"");
    disk = Tmpfs::mount(cluster.data_dir(0), "384m");
    cluster.add_store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    // Random bytes: RocksDB compresses what it flushes, and a value of one repeated byte
    // shrinks so far that the filesystem never fills.
    let mut value = vec![0; VALUE];
    StdRng::seed_from_u64(8).fill_bytes(&mut value);

    let mut acked = 0;
    let refusal = loop {
        assert!(
            acked < MAX_WRITES,
            "{MAX_WRITES} writes of {VALUE} bytes and the disk never filled"
        );
        match rt.block_on(c.put(&key(acked), &value)) {
            Ok(()) => acked += 1,
            Err(e) => break e.to_string(),
        }
    };
    eprintln!("{acked} writes of {VALUE} bytes before: {refusal}");
    assert!(
        acked > 10,
        "only {acked} writes fit before the first refusal: {refusal}"
    );
    assert!(
        refusal.contains("disk full") && refusal.contains("raftstore.reserve-space"),
        "{refusal}"
    );
    // Refused again, and nothing of the refused write is there.
    let again = rt
        .block_on(c.put(&key(acked), &value))
        .unwrap_err()
        .to_string();
    assert!(again.contains("disk full"), "{again}");
    assert_eq!(rt.block_on(c.get(&key(acked))).unwrap(), None);
    for i in (0..acked).step_by(7) {
        let got = rt.block_on(c.get(&key(i))).unwrap();
        assert!(got.as_deref() == Some(&value[..]), "key {i}");
    }
    // Deleting is how an operator makes room: allowed while full.
    rt.block_on(c.delete(&key(0)))
        .expect("a delete on a full disk");
    assert_eq!(rt.block_on(c.get(&key(0))).unwrap(), None);

    disk.resize("2g");
    wait_until(
        "writes to resume once there is room",
        Duration::from_secs(30),
        || rt.block_on(c.put(&key(acked), &value)).is_ok(),
    );
    assert!(
        cluster.stores[0].as_mut().unwrap().is_running(),
        "the store stayed up"
    );
    let all = rt.block_on(c.scan(b"big-", b"big.", MAX_WRITES)).unwrap();
    assert_eq!(
        all.len(),
        acked,
        "every acknowledged write is there, less the deleted"
    );
}
