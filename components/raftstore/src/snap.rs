//! Region snapshots: generated from a consistent RocksDB snapshot as one SST per data
//! column family, streamed in chunks, checked against CRC32s on arrival, and applied by
//! clearing the region's range and ingesting the files.
//!
//! The transport is not ours to know: [`send_snapshot`] turns a snapshot message into
//! chunks for any sink, and [`SnapReceiver`] turns chunks back into files and a message.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crossbeam_channel::{Receiver, Sender};
use engine::{Cf, Engine};
use parking_lot::Mutex;
use proto::raft_serverpb::{
    PendingSnapshot, RaftApplyState, RaftMessage, RegionLocalState, SnapshotChunk, SnapshotData,
    SnapshotFile,
};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType, Snapshot};
use slog::{debug, info, warn, Logger};

use crate::{metrics, util::conf_state_of, Error, Result};

/// Bytes of file data per chunk.
pub const CHUNK_SIZE: usize = 1 << 20;

/// A request to generate a snapshot of a region.
pub struct GenTask {
    /// The region.
    pub region_id: u64,
    /// Where the result goes.
    pub notifier: Sender<Result<Snapshot>>,
}

/// Which snapshot: region, term and index.
pub type SnapKey = (u64, u64, u64);

/// The key of the snapshot a message carries.
pub fn snap_key(region_id: u64, snap: &Snapshot) -> SnapKey {
    let meta = snap.get_metadata();
    (region_id, meta.term, meta.index)
}

/// The snapshot a store-to-store message carries, if any.
pub fn snapshot_of(msg: &RaftMessage) -> Option<SnapKey> {
    let m = Message::parse_from_bytes(msg.get_message()).ok()?;
    (m.get_msg_type() == MessageType::MsgSnapshot)
        .then(|| snap_key(msg.get_region_id(), m.get_snapshot()))
}

/// A received snapshot's files: what the sender declared, and where each one arrived.
pub type ReceivedFiles = Vec<(SnapshotFile, PathBuf)>;

/// Where snapshot files live on a store, and which received snapshots are whole and not
/// yet taken by their peer.
#[derive(Clone)]
pub struct SnapManager {
    dir: PathBuf,
    /// Snapshots that arrived whole, by key. A peer takes a snapshot's files from here
    /// when it persists the snapshot; a snapshot message with no entry here (one that
    /// came without its files) is refused.
    received: Arc<Mutex<HashMap<SnapKey, ReceivedFiles>>>,
    /// Makes every receive stream's file names its own, so that two streams of the same
    /// snapshot never write or remove each other's files.
    next_stream: Arc<AtomicU64>,
    /// Largest snapshot accepted (the sum of its files' declared sizes).
    max_size: u64,
}

impl SnapManager {
    /// Uses (and creates) `dir` for snapshot files; accepts snapshots of up to
    /// `max_size` bytes.
    pub fn new(dir: PathBuf, max_size: u64) -> Result<SnapManager> {
        fs::create_dir_all(&dir)
            .map_err(|e| Error::Snapshot(format!("create {}: {e}", dir.display())))?;
        // Unique across restarts too: received files of a stream cut by a crash may still
        // be on disk.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(SnapManager {
            dir,
            received: Arc::default(),
            next_stream: Arc::new(AtomicU64::new(start)),
            max_size,
        })
    }

    /// Checks a snapshot's declared size before a byte of it is written: no larger than
    /// `raftstore.snap-max-size`, and no larger than the free disk space.
    fn check_declared_size(&self, files: &[SnapshotFile]) -> Result<()> {
        let total = files
            .iter()
            .try_fold(0u64, |sum, f| sum.checked_add(f.size))
            .ok_or_else(|| Error::Snapshot("declared file sizes overflow".into()))?;
        if total > self.max_size {
            return Err(Error::Snapshot(format!(
                "snapshot of {total} bytes is larger than raftstore.snap-max-size ({} bytes)",
                self.max_size
            )));
        }
        let free = fs2::available_space(&self.dir)
            .map_err(|e| Error::Snapshot(format!("free space of {}: {e}", self.dir.display())))?;
        if total > free {
            return Err(Error::Snapshot(format!(
                "snapshot of {total} bytes does not fit in the {free} bytes free on disk"
            )));
        }
        Ok(())
    }

    /// Where a generated snapshot's file for `cf` is written.
    pub fn gen_path(&self, region_id: u64, term: u64, index: u64, cf: Cf) -> PathBuf {
        self.dir
            .join(format!("gen_{region_id}_{term}_{index}_{}.sst", cf.name()))
    }

    /// Where one receive stream writes a snapshot's file for `cf`.
    fn recv_path(&self, key: SnapKey, cf: &str, stream: u64) -> PathBuf {
        let (region_id, term, index) = key;
        self.dir
            .join(format!("rcv_{region_id}_{term}_{index}_{cf}_{stream}.sst"))
    }

    /// The path of a received file named in a region's pending snapshot.
    pub fn received_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Records a snapshot that arrived whole. A second stream of the same snapshot
    /// (the sender retried) loses: its files are removed, the first one's kept.
    fn register_received(&self, key: SnapKey, files: ReceivedFiles) {
        let mut received = self.received.lock();
        if received.contains_key(&key) {
            remove_paths(files.iter().map(|(_, p)| p));
            return;
        }
        received.insert(key, files);
    }

    /// Whether the files of this snapshot arrived whole and wait for their peer.
    pub fn has_received(&self, key: SnapKey) -> bool {
        self.received.lock().contains_key(&key)
    }

    /// Hands a received snapshot's files to its peer, which now owns them; removes
    /// every other received snapshot of the region (older, or superseded).
    pub fn take_received(&self, key: SnapKey) -> Option<ReceivedFiles> {
        let mut received = self.received.lock();
        let files = received.remove(&key);
        received.retain(|k, other| {
            let keep = k.0 != key.0;
            if !keep {
                remove_paths(other.iter().map(|(_, p)| p));
            }
            keep
        });
        files
    }

    /// Forgets a received snapshot its peer did not take, removing its files.
    pub fn discard_received(&self, key: SnapKey) {
        if let Some(files) = self.received.lock().remove(&key) {
            remove_paths(files.iter().map(|(_, p)| p));
        }
    }

    /// Removes every received file not named in `keep` (files of streams cut short by a
    /// crash, or of snapshots no peer took), at start-up.
    pub fn remove_received_except(&self, keep: &std::collections::HashSet<String>) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("rcv_") && !keep.contains(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Removes every generated file of a region (older snapshots are never reused).
    fn remove_generated(&self, region_id: u64) {
        let prefix = format!("gen_{region_id}_");
        if let Ok(dir) = fs::read_dir(&self.dir) {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Builds a snapshot of `region_id` as of its applied state.
    pub fn generate(&self, engine: &Engine, region_id: u64) -> Result<Snapshot> {
        let snap = engine.snapshot();
        let apply: RaftApplyState = snap
            .get_msg(Cf::Raft, &keys::apply_state_key(region_id))?
            .ok_or_else(|| Error::Snapshot(format!("region {region_id} has no apply state")))?;
        let state: RegionLocalState = snap
            .get_msg(Cf::Raft, &keys::region_state_key(region_id))?
            .ok_or(Error::RegionNotFound(region_id))?;
        if state.changed_at > apply.applied_index {
            return Err(Error::SnapshotNotReady {
                region_id,
                changed_at: state.changed_at,
                applied: apply.applied_index,
            });
        }
        let region = state.get_region();
        let (index, term) = (apply.applied_index, apply.applied_term);
        self.remove_generated(region_id);
        let start = keys::data_key(region.get_start_key());
        let end = keys::data_end_key(region.get_end_key());
        let mut data = SnapshotData::default();
        data.set_region(region.clone());
        for cf in Cf::DATA {
            let path = self.gen_path(region_id, term, index, cf);
            if let Some(sst) = snap.export_sst(cf, &start, &end, &path)? {
                let mut file = SnapshotFile::default();
                file.set_cf(cf.name().to_string());
                file.size = sst.size;
                file.checksum = sst.checksum;
                data.mut_files().push(file);
            }
        }
        let sessions = crate::operation::session::SessionTable::load(&snap, region_id)?;
        if let Some(bytes) = sessions.encode() {
            let path = self.gen_path(region_id, term, index, Cf::Raft);
            fs::write(&path, &bytes)
                .map_err(|e| Error::Snapshot(format!("write {}: {e}", path.display())))?;
            let (size, checksum) = engine::file_checksum(&path)?;
            let mut file = SnapshotFile::default();
            file.set_cf(Cf::Raft.name().to_string());
            file.size = size;
            file.checksum = checksum;
            data.mut_files().push(file);
        }
        let mut out = Snapshot::default();
        out.set_data(data.write_to_bytes()?.into());
        let meta = out.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state_of(region));
        Ok(out)
    }

    /// Runs snapshot generation on its own thread until every sender of `tasks` is gone.
    pub fn spawn_generator(
        &self,
        engine: Engine,
        tasks: Receiver<GenTask>,
        logger: Logger,
    ) -> std::thread::JoinHandle<()> {
        let mgr = self.clone();
        std::thread::Builder::new()
            .name("snap-gen".into())
            .spawn(move || {
                for task in tasks {
                    let started = std::time::Instant::now();
                    let res = mgr.generate(&engine, task.region_id);
                    match &res {
                        Ok(s) => {
                            metrics::SNAPSHOTS.with_label_values(&["generate", "ok"]).inc();
                            metrics::SNAPSHOT_SECONDS
                                .with_label_values(&["generate"])
                                .observe(started.elapsed().as_secs_f64());
                            let bytes = SnapshotData::parse_from_bytes(s.get_data())
                                .map_or(0, |d| d.get_files().iter().map(|f| f.size).sum());
                            metrics::SNAPSHOT_BYTES
                                .with_label_values(&["generate"])
                                .inc_by(bytes);
                            info!(logger, "generated snapshot"; "region_id" => task.region_id,
                                  "index" => s.get_metadata().index);
                        }
                        // Asked again by raft-rs in a moment.
                        Err(e @ Error::SnapshotNotReady { .. }) => {
                            metrics::SNAPSHOTS.with_label_values(&["generate", "not_ready"]).inc();
                            debug!(logger, "snapshot not ready"; "err" => %e);
                        }
                        Err(e) => {
                            metrics::SNAPSHOTS.with_label_values(&["generate", "error"]).inc();
                            warn!(logger, "snapshot generation failed"; "region_id" => task.region_id,
                                  "err" => %e);
                        }
                    }
                    let _ = task.notifier.send(res);
                }
            })
            .expect("spawn snapshot generator")
    }
}

fn remove_paths<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) {
    for p in paths {
        let _ = fs::remove_file(p);
    }
}

/// Removes a received snapshot's files once its data is in the database.
pub fn remove_files(files: &[(Cf, PathBuf)]) {
    remove_paths(files.iter().map(|(_, p)| p));
}

/// Largest session table a snapshot may carry: read whole into memory on apply.
/// `raftstore.max-session-bytes-per-region` is held well below it.
pub const MAX_SESSION_FILE: u64 = 64 << 20;

/// The column family a snapshot file names: a data column family (an SST to ingest), or
/// `raft` (the region's client sessions, a `SessionSnapshot`); anything else is an error
/// (a snapshot from a hostile or broken sender must not panic the store).
pub fn parse_cf(name: &str) -> Result<Cf> {
    Cf::from_name(name)
        .ok_or_else(|| Error::Snapshot(format!("unknown column family {name:?} in snapshot")))
}

/// Checks that `path` holds exactly what `meta` declares (size and CRC32), so that a file
/// damaged or cut short on disk is never ingested.
pub fn verify_file(meta: &SnapshotFile, path: &Path) -> Result<()> {
    let fail = |why: String| Error::Snapshot(format!("{}: {why}", path.display()));
    let mut file = File::open(path).map_err(|e| fail(format!("open: {e}")))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| fail(format!("read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if size != meta.size {
        return Err(fail(format!("{size} bytes, expected {}", meta.size)));
    }
    let crc = hasher.finalize();
    if crc != meta.checksum {
        return Err(fail(format!(
            "checksum {crc:#x}, expected {:#x}",
            meta.checksum
        )));
    }
    Ok(())
}

/// The record of a snapshot being put in place, written with the state `Applying`.
pub fn pending_snapshot(snap: &Snapshot, files: &ReceivedFiles) -> PendingSnapshot {
    let meta = snap.get_metadata();
    let mut p = PendingSnapshot::default();
    p.set_index(meta.index);
    p.set_term(meta.term);
    for (f, path) in files {
        p.mut_files().push(f.clone());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        p.mut_file_names().push(name);
    }
    p
}

/// Whether a store-to-store message carries a snapshot (and must be streamed).
pub fn is_snapshot(msg: &RaftMessage) -> bool {
    snapshot_of(msg).is_some()
}

/// Streams a snapshot message and its files into `sink`, chunk by chunk.
pub fn send_snapshot(
    mgr: &SnapManager,
    msg: RaftMessage,
    mut sink: impl FnMut(SnapshotChunk) -> Result<()>,
) -> Result<()> {
    let raft_msg = Message::parse_from_bytes(msg.get_message())?;
    let snap = raft_msg.get_snapshot();
    let data = SnapshotData::parse_from_bytes(snap.get_data())?;
    let meta = snap.get_metadata();
    let region_id = msg.get_region_id();
    let mut first = SnapshotChunk::default();
    first.set_message(msg);
    sink(first)?;
    let mut buf = vec![0u8; CHUNK_SIZE];
    for f in data.get_files() {
        let cf = parse_cf(f.get_cf())?;
        let path = mgr.gen_path(region_id, meta.term, meta.index, cf);
        let mut file = File::open(&path)
            .map_err(|e| Error::Snapshot(format!("open {}: {e}", path.display())))?;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::Snapshot(format!("read {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            let mut chunk = SnapshotChunk::default();
            chunk.set_data(buf[..n].to_vec());
            sink(chunk)?;
        }
    }
    Ok(())
}

/// Writes a snapshot's chunks into files as they arrive, and checks them at the end.
pub struct SnapReceiver {
    mgr: SnapManager,
    key: SnapKey,
    /// Taken when the snapshot arrived whole; until then the files are removed on drop.
    msg: Option<RaftMessage>,
    files: ReceivedFiles,
    current: usize,
    written: u64,
    hasher: crc32fast::Hasher,
    out: Option<File>,
}

impl SnapReceiver {
    /// Starts receiving from the first chunk, which carries the message.
    pub fn new(mgr: &SnapManager, first: SnapshotChunk) -> Result<SnapReceiver> {
        if !first.has_message() {
            return Err(Error::Snapshot("first chunk carries no message".into()));
        }
        let msg = first.get_message().clone();
        let raft_msg = Message::parse_from_bytes(msg.get_message())?;
        if raft_msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Error::Snapshot(
                "first chunk carries no snapshot message".into(),
            ));
        }
        let snap = raft_msg.get_snapshot();
        let data = SnapshotData::parse_from_bytes(snap.get_data())?;
        mgr.check_declared_size(data.get_files())?;
        let key = snap_key(msg.get_region_id(), snap);
        let stream = mgr.next_stream.fetch_add(1, Ordering::Relaxed);
        let files = data
            .get_files()
            .iter()
            .map(|f| {
                let cf = parse_cf(f.get_cf())?;
                Ok((f.clone(), mgr.recv_path(key, cf.name(), stream)))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(f) = data
            .get_files()
            .iter()
            .find(|f| f.get_cf() == Cf::Raft.name() && f.size > MAX_SESSION_FILE)
        {
            return Err(Error::Snapshot(format!(
                "snapshot's session table of {} bytes is over {MAX_SESSION_FILE}",
                f.size
            )));
        }
        let mut cfs: Vec<&str> = data.get_files().iter().map(|f| f.get_cf()).collect();
        cfs.sort_unstable();
        if cfs.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Snapshot(
                "snapshot names a column family twice".into(),
            ));
        }
        let mut rx = SnapReceiver {
            mgr: mgr.clone(),
            key,
            msg: Some(msg),
            files,
            current: 0,
            written: 0,
            hasher: crc32fast::Hasher::new(),
            out: None,
        };
        rx.open_current()?;
        Ok(rx)
    }

    fn open_current(&mut self) -> Result<()> {
        self.out = match self.files.get(self.current) {
            Some((_, path)) => Some(
                File::create(path)
                    .map_err(|e| Error::Snapshot(format!("create {}: {e}", path.display())))?,
            ),
            None => None,
        };
        self.written = 0;
        self.hasher = crc32fast::Hasher::new();
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        let (meta, path) = &self.files[self.current];
        let out = self
            .out
            .take()
            .expect("a file is open while one is expected");
        out.sync_all()
            .map_err(|e| Error::Snapshot(format!("sync {}: {e}", path.display())))?;
        let crc = std::mem::take(&mut self.hasher).finalize();
        if crc != meta.checksum {
            return Err(Error::Snapshot(format!(
                "checksum mismatch for {}: got {crc:#x}, expected {:#x}",
                path.display(),
                meta.checksum
            )));
        }
        self.current += 1;
        self.open_current()
    }

    /// Appends a data chunk; chunks may span file boundaries.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let Some((meta, path)) = self.files.get(self.current) else {
                return Err(Error::Snapshot(
                    "more data than the snapshot's files hold".into(),
                ));
            };
            let room = (meta.size - self.written) as usize;
            let n = room.min(data.len());
            let out = self
                .out
                .as_mut()
                .expect("a file is open while one is expected");
            out.write_all(&data[..n])
                .map_err(|e| Error::Snapshot(format!("write {}: {e}", path.display())))?;
            self.hasher.update(&data[..n]);
            self.written += n as u64;
            data = &data[n..];
            if self.written == meta.size {
                self.finish_current()?;
            }
        }
        Ok(())
    }

    /// Checks that every file arrived whole, makes them durable, records them for the
    /// peer, and returns the message to deliver.
    pub fn finish(mut self) -> Result<RaftMessage> {
        // Files of size zero are never written; close them now.
        while self.current < self.files.len() && self.files[self.current].0.size == 0 {
            self.finish_current()?;
        }
        if self.current != self.files.len() {
            return Err(Error::Snapshot(
                "stream ended before every file arrived".into(),
            ));
        }
        // The files are synced; their names must be too before a peer records them as
        // the data to put in place after a restart.
        File::open(&self.mgr.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::Snapshot(format!("sync {}: {e}", self.mgr.dir.display())))?;
        // The sessions are decoded when the snapshot is applied, where a failure stops
        // the region: a file that does not decode is refused now instead.
        for (meta, path) in &self.files {
            if meta.get_cf() == Cf::Raft.name() {
                let bytes = fs::read(path)
                    .map_err(|e| Error::Snapshot(format!("read {}: {e}", path.display())))?;
                crate::operation::session::SessionTable::decode(&bytes).map_err(|e| {
                    Error::Snapshot(format!("the snapshot's session table does not decode: {e}"))
                })?;
            }
        }
        let msg = self.msg.take().expect("taken only here");
        self.mgr
            .register_received(self.key, std::mem::take(&mut self.files));
        Ok(msg)
    }
}

impl Drop for SnapReceiver {
    fn drop(&mut self) {
        // A snapshot that did not arrive whole is of no use; do not leave it on disk.
        if self.msg.is_some() {
            for (_, path) in &self.files {
                let _ = fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::metapb;

    use super::*;
    use crate::bootstrap;

    /// A region with 3,000 keys (about 3 MB: several chunks) on a fresh engine, and a
    /// snapshot message for it.
    fn snapshot_message(dir: &std::path::Path) -> (SnapManager, RaftMessage, Vec<u8>) {
        let engine = Engine::open(&dir.join("db")).unwrap();
        let region = bootstrap::first_region(1, 2, 3);
        bootstrap::write_initial_region(&engine, &region).unwrap();
        let mut wb = engine.write_batch();
        for i in 0..3000u32 {
            // Random values: compression must not fold the file into one chunk.
            let value: Vec<u8> = (0..1000).map(|_| rand::random::<u8>()).collect();
            wb.put(
                Cf::Default,
                &keys::data_key(format!("k{i:05}").as_bytes()),
                &value,
            );
        }
        engine.write(wb, false).unwrap();
        let mgr = SnapManager::new(dir.join("snap"), u64::MAX).unwrap();
        let snap = mgr.generate(&engine, 1).unwrap();
        let data = SnapshotData::parse_from_bytes(snap.get_data()).unwrap();
        assert_eq!(data.get_region().get_id(), 1);
        assert_eq!(
            data.get_files().len(),
            1,
            "only the default column family has data"
        );
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.set_snapshot(snap);
        let mut msg = RaftMessage::default();
        msg.set_region_id(1);
        let mut to = metapb::Peer::default();
        to.set_id(9);
        msg.set_to_peer(to);
        msg.set_message(m.write_to_bytes().unwrap());
        let gen = mgr.gen_path(1, 5, 5, Cf::Default);
        (mgr, msg, std::fs::read(gen).unwrap())
    }

    /// A region whose shape on disk is ahead of its apply state (a split or membership
    /// change the apply side waits to pass) gets no snapshot until the apply state
    /// catches up: one would pair the new shape with an index before it.
    #[test]
    fn no_snapshot_while_the_region_changed_past_the_apply_state() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let region = bootstrap::first_region(1, 2, 3);
        bootstrap::write_initial_region(&engine, &region).unwrap();
        let mgr = SnapManager::new(dir.path().join("snap"), u64::MAX).unwrap();
        let mut state = RegionLocalState::default();
        state.set_region(region.clone());
        state.changed_at = 9;
        let mut wb = engine.write_batch();
        wb.put_msg(Cf::Raft, &keys::region_state_key(1), &state);
        engine.write(wb, false).unwrap();
        match mgr.generate(&engine, 1) {
            Err(Error::SnapshotNotReady {
                changed_at: 9,
                applied,
                ..
            }) => assert!(applied < 9),
            other => panic!("expected not ready, got {other:?}"),
        }
        let apply = RaftApplyState {
            applied_index: 9,
            applied_term: 6,
            ..Default::default()
        };
        let mut wb = engine.write_batch();
        wb.put_msg(Cf::Raft, &keys::apply_state_key(1), &apply);
        engine.write(wb, false).unwrap();
        let snap = mgr.generate(&engine, 1).unwrap();
        assert_eq!(snap.get_metadata().index, 9);
    }

    /// A region's client sessions travel in its snapshot, as the `raft` file, and nothing
    /// of another region's does.
    #[test]
    fn a_snapshot_carries_the_regions_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let region = bootstrap::first_region(1, 2, 3);
        bootstrap::write_initial_region(&engine, &region).unwrap();
        let mut wb = engine.write_batch();
        for (region_id, client) in [(1, 11), (1, 12), (2, 21)] {
            let mut c = proto::raft_serverpb::ClientSession::default();
            c.set_client_id(client);
            c.set_acked_below(3);
            wb.put_msg(Cf::Raft, &keys::session_client_key(region_id, client), &c);
        }
        engine.write(wb, false).unwrap();
        let mgr = SnapManager::new(dir.path().join("snap"), u64::MAX).unwrap();
        let snap = mgr.generate(&engine, 1).unwrap();
        let data = SnapshotData::parse_from_bytes(snap.get_data()).unwrap();
        let raft: Vec<_> = data
            .get_files()
            .iter()
            .filter(|f| f.get_cf() == "raft")
            .collect();
        assert_eq!(raft.len(), 1, "one session file");
        let path = mgr.gen_path(1, 5, 5, Cf::Raft);
        verify_file(raft[0], &path).unwrap();
        let table =
            crate::operation::session::SessionTable::decode(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(table.len(), 2, "region 1's two sessions, not region 2's");
    }

    #[test]
    fn chunks_reassemble_into_the_same_files() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (mgr, msg, original) = snapshot_message(src.path());
        assert!(is_snapshot(&msg));
        assert!(
            original.len() > CHUNK_SIZE,
            "the test needs more than one chunk"
        );
        let dst_mgr = SnapManager::new(dst.path().to_path_buf(), u64::MAX).unwrap();
        let mut rx = None;
        send_snapshot(&mgr, msg.clone(), |chunk| {
            match rx.as_mut() {
                None => rx = Some(SnapReceiver::new(&dst_mgr, chunk)?),
                Some(r) => r.write(chunk.get_data())?,
            }
            Ok(())
        })
        .unwrap();
        let delivered = rx.unwrap().finish().unwrap();
        assert_eq!(delivered, msg);
        assert!(dst_mgr.has_received((1, 5, 5)));
        let files = dst_mgr.take_received((1, 5, 5)).expect("registered");
        assert_eq!(files.len(), 1);
        verify_file(&files[0].0, &files[0].1).expect("whole");
        assert_eq!(std::fs::read(&files[0].1).unwrap(), original);
        assert!(!dst_mgr.has_received((1, 5, 5)), "taken once");
    }

    fn received_files(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("rcv_"))
            .collect()
    }

    /// A sender that retries can have two streams of one snapshot in flight; the one that
    /// fails must not remove the files of the one that arrived (they shared names).
    #[test]
    fn a_failed_duplicate_stream_leaves_the_live_one_alone() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (mgr, msg, _) = snapshot_message(src.path());
        let dst_mgr = SnapManager::new(dst.path().to_path_buf(), u64::MAX).unwrap();
        let mut chunks = vec![];
        send_snapshot(&mgr, msg, |c| {
            chunks.push(c);
            Ok(())
        })
        .unwrap();
        let mut live = SnapReceiver::new(&dst_mgr, chunks[0].clone()).unwrap();
        let mut dup = SnapReceiver::new(&dst_mgr, chunks[0].clone()).unwrap();
        dup.write(chunks[1].get_data()).unwrap();
        for c in &chunks[1..] {
            live.write(c.get_data()).unwrap();
        }
        live.finish().unwrap();
        drop(dup);
        let files = dst_mgr
            .take_received((1, 5, 5))
            .expect("the live stream's files");
        verify_file(&files[0].0, &files[0].1).expect("still whole");
        assert_eq!(
            received_files(dst.path()).len(),
            1,
            "the duplicate's files are gone"
        );
    }

    /// A snapshot message whose first chunk is not a snapshot is refused, and one naming an
    /// unknown column family is refused with an error rather than a panic.
    #[test]
    fn hostile_first_chunks_are_refused() {
        let dst = tempfile::tempdir().unwrap();
        let dst_mgr = SnapManager::new(dst.path().to_path_buf(), u64::MAX).unwrap();
        let mut not_snap = SnapshotChunk::default();
        let mut m = RaftMessage::default();
        m.set_message(Message::default().write_to_bytes().unwrap());
        not_snap.set_message(m.clone());
        assert!(SnapReceiver::new(&dst_mgr, not_snap).is_err());
        let mut data = SnapshotData::default();
        let mut f = SnapshotFile::default();
        f.set_cf("nonsense".into());
        f.size = 10;
        data.mut_files().push(f);
        let mut raft_msg = Message::default();
        raft_msg.set_msg_type(MessageType::MsgSnapshot);
        raft_msg
            .mut_snapshot()
            .set_data(data.write_to_bytes().unwrap().into());
        m.set_message(raft_msg.write_to_bytes().unwrap());
        let mut chunk = SnapshotChunk::default();
        chunk.set_message(m);
        let err = SnapReceiver::new(&dst_mgr, chunk.clone())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("unknown column family"), "{err}");
        // Declared sizes are not trusted: past the limit, or past the free disk space.
        data.mut_files()[0].set_cf("default".into());
        data.mut_files()[0].size = 1 << 40;
        raft_msg
            .mut_snapshot()
            .set_data(data.write_to_bytes().unwrap().into());
        chunk
            .mut_message()
            .set_message(raft_msg.write_to_bytes().unwrap());
        let small = SnapManager::new(dst.path().to_path_buf(), 1 << 20).unwrap();
        let err = SnapReceiver::new(&small, chunk.clone())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("snap-max-size"), "{err}");
        data.mut_files()[0].size = u64::MAX;
        raft_msg
            .mut_snapshot()
            .set_data(data.write_to_bytes().unwrap().into());
        chunk
            .mut_message()
            .set_message(raft_msg.write_to_bytes().unwrap());
        let err = SnapReceiver::new(&dst_mgr, chunk).err().expect("refused");
        assert!(err.to_string().contains("free on disk"), "{err}");
        assert!(received_files(dst.path()).is_empty());
    }

    #[test]
    fn a_corrupted_chunk_is_caught_by_its_checksum() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (mgr, msg, _) = snapshot_message(src.path());
        let dst_mgr = SnapManager::new(dst.path().to_path_buf(), u64::MAX).unwrap();
        let mut rx = None;
        let res = send_snapshot(&mgr, msg, |mut chunk| {
            match rx.as_mut() {
                None => rx = Some(SnapReceiver::new(&dst_mgr, chunk)?),
                Some(r) => {
                    let mut data = chunk.take_data();
                    data[10] ^= 0xff;
                    r.write(&data)?
                }
            }
            Ok(())
        });
        let err = res
            .and_then(|_| rx.unwrap().finish().map(|_| ()))
            .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_stream_cut_short_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (mgr, msg, _) = snapshot_message(src.path());
        let dst_mgr = SnapManager::new(dst.path().to_path_buf(), u64::MAX).unwrap();
        let mut rx = None;
        let mut chunks = 0;
        send_snapshot(&mgr, msg, |chunk| {
            chunks += 1;
            match rx.as_mut() {
                None => rx = Some(SnapReceiver::new(&dst_mgr, chunk)?),
                Some(r) if chunks == 2 => r.write(chunk.get_data())?,
                Some(_) => {}
            }
            Ok(())
        })
        .unwrap();
        let err = rx.unwrap().finish().unwrap_err();
        assert!(
            err.to_string()
                .contains("stream ended before every file arrived"),
            "{err}"
        );
        assert!(
            received_files(dst.path()).is_empty(),
            "partial files are removed"
        );
        assert!(!dst_mgr.has_received((1, 5, 5)));
    }
}
