//! Three stores as processes, each on its own host (network namespace) with its data
//! directory on a lazy filesystem, and PD on the bridge. Stores can be killed, paused,
//! cut off and made to lose power; every one of those ends with the store running and
//! reachable again.

use std::path::PathBuf;

use lazyfs::LazyFs;

use crate::{
    common::{register_secret, Proc},
    net::{Net, Node},
};

const PD_PORT: u16 = 2379;
const STORE_PORT: u16 = 20160;
const STATUS_PORT: u16 = 20180;

pub struct NetCluster {
    // Dropped in this order: processes, then mounts, then the network, then the files.
    stores: Vec<Option<Proc>>,
    _pd: Proc,
    disks: Vec<LazyFs>,
    pub net: Net,
    dir: tempfile::TempDir,
    /// Extra `[raftstore]` lines (and further sections) for every store.
    raftstore_extra: String,
}

impl NetCluster {
    pub fn start(n: usize) -> NetCluster {
        Self::start_with(n, "")
    }

    /// Like [`NetCluster::start`], with extra `[raftstore]` settings (TOML lines).
    pub fn start_with(n: usize, raftstore_extra: &str) -> NetCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let net = Net::create(n);
        let secret = dir.path().join("cluster-secret");
        util::secret::ClusterSecret::load_or_create(&secret, true).expect("cluster secret");
        let pd_addr = format!("{}:{PD_PORT}", net.gateway());
        register_secret(&pd_addr, &secret);
        std::fs::write(dir.path().join("pd.toml"), "[pd]\n").expect("pd config");
        let pd = Proc::spawn(
            "pd",
            env!("CARGO_BIN_EXE_pd-server"),
            &[
                "--cluster-secret-file".into(),
                secret.display().to_string(),
                "--config".into(),
                dir.path().join("pd.toml").display().to_string(),
                "--addr".into(),
                pd_addr.clone(),
                "--data-dir".into(),
                dir.path().join("pd").display().to_string(),
                "--max-store-down-time".into(),
                "60s".into(),
                "--status-addr".into(),
                format!("{}:{}", net.gateway(), STATUS_PORT),
            ],
            dir.path(),
            dir.path(),
        );
        let mut disks = vec![];
        for i in 0..n {
            let (backing, mnt) = (
                dir.path().join(format!("disk-{i}")),
                dir.path().join(format!("store-{i}")),
            );
            std::fs::create_dir_all(&backing).expect("backing dir");
            std::fs::create_dir_all(&mnt).expect("mount point");
            disks.push(
                LazyFs::mount(&backing, &mnt)
                    .expect("mount the lazy filesystem (root and /dev/fuse needed)"),
            );
        }
        let mut c = NetCluster {
            stores: (0..n).map(|_| None).collect(),
            _pd: pd,
            disks,
            net,
            dir,
            raftstore_extra: raftstore_extra.to_string(),
        };
        for i in 0..n {
            c.start_store(i);
        }
        c
    }

    /// PD's address, for clients.
    pub fn pd_addr(&self) -> String {
        format!("{}:{PD_PORT}", self.net.gateway())
    }

    /// Store `i`'s status address (metrics).
    pub fn status_addr(&self, i: usize) -> String {
        format!("{}:{STATUS_PORT}", self.net.addr(Node::Host(i)))
    }

    fn store_config(&self) -> PathBuf {
        let cfg = self.dir.path().join("store.toml");
        // Fast heartbeats so that PD learns leaders quickly.
        std::fs::write(
            &cfg,
            format!(
                "[raftstore]\npd-heartbeat-tick-interval = \"1s\"\npd-store-heartbeat-tick-interval = \"1s\"\n{}\n",
                self.raftstore_extra
            ),
        )
        .expect("store config");
        cfg
    }

    /// Starts store `i` (again) on its host.
    pub fn start_store(&mut self, i: usize) {
        let addr = self.net.addr(Node::Host(i));
        let args = [
            "--config".into(),
            self.store_config().display().to_string(),
            "--pd".into(),
            self.pd_addr(),
            "--cluster-secret-file".into(),
            self.dir.path().join("cluster-secret").display().to_string(),
            "--addr".into(),
            format!("{addr}:{STORE_PORT}"),
            "--status-addr".into(),
            format!("{addr}:{STATUS_PORT}"),
            "--data-dir".into(),
            self.disks[i].mountpoint().display().to_string(),
        ];
        self.stores[i] = Some(Proc::spawn_in(
            &format!("store-{i}"),
            env!("CARGO_BIN_EXE_kv-server"),
            &args,
            self.dir.path(),
            self.dir.path(),
            Some(&self.net.netns_path(i)),
        ));
    }

    /// SIGKILLs store `i`; its page cache survives, as a crashed process's does.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.stores[i].take() {
            p.kill();
        }
    }

    /// Store `i` loses power: killed, and every byte it wrote without fsync is gone.
    /// Returns the bytes dropped.
    pub fn power_loss(&mut self, i: usize) -> u64 {
        self.kill(i);
        let d = self.disks[i].power_loss().expect("drop unsynced writes");
        d.appended_bytes + d.restored_bytes
    }

    /// Every store loses power at the same instant: all are killed before any disk drops
    /// its unsynced writes, so no survivor can fsync (say, a new term after an election)
    /// what the others are about to lose. Returns the bytes dropped.
    pub fn power_loss_all(&mut self) -> u64 {
        for i in 0..self.stores.len() {
            self.kill(i);
        }
        (0..self.stores.len()).map(|i| self.power_loss(i)).sum()
    }

    /// Sends `sig` to store `i`'s process.
    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(pid) = self.stores[i].as_ref().and_then(|p| p.pid()) {
            // SAFETY: kill(2) with a pid this test started and still holds.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// The host whose store listens on `addr`.
    pub fn host_of(&self, addr: &str) -> Option<usize> {
        (0..self.stores.len())
            .find(|h| addr == format!("{}:{STORE_PORT}", self.net.addr(Node::Host(*h))))
    }

    /// Store `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.stores[i].as_ref().and_then(|p| p.pid())
    }

    /// Whether store `i`'s process is alive (a store that exits on its own is a bug).
    pub fn running(&mut self, i: usize) -> bool {
        self.stores[i].as_mut().is_some_and(|p| p.is_running())
    }

    /// The last lines of store `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        self.stores[i]
            .as_ref()
            .map(|p| p.log_tail())
            .unwrap_or_default()
    }

    /// The directory kept for a failed run's histories and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops everything and keeps the run's directory (logs, data, history) for a look.
    pub fn keep(self) -> PathBuf {
        let NetCluster {
            stores,
            _pd,
            disks,
            net,
            dir,
            ..
        } = self;
        drop(stores);
        drop(_pd);
        drop(disks);
        drop(net);
        dir.keep()
    }
}
