//! Region snapshots: generated from a consistent RocksDB snapshot as one SST per data
//! column family, streamed in chunks, checked against CRC32s on arrival, and applied by
//! clearing the region's range and ingesting the files.
//!
//! The transport is not ours to know: [`send_snapshot`] turns a snapshot message into
//! chunks for any sink, and [`SnapReceiver`] turns chunks back into files and a message.

use std::{
    fs::{self, File},
    io::{Read, Write},
    path::PathBuf,
};

use crossbeam_channel::{Receiver, Sender};
use engine::{Cf, Engine};
use proto::raft_serverpb::{
    RaftApplyState, RaftMessage, RegionLocalState, SnapshotChunk, SnapshotData, SnapshotFile,
};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType, Snapshot};
use slog::{info, warn, Logger};

use crate::{metrics, storage::conf_state_of, Error, Result};

/// Bytes of file data per chunk.
pub const CHUNK_SIZE: usize = 1 << 20;

/// A request to generate a snapshot of a region.
pub struct GenTask {
    /// The region.
    pub region_id: u64,
    /// Where the result goes.
    pub notifier: Sender<Result<Snapshot>>,
}

/// Where snapshot files live on a store.
#[derive(Clone)]
pub struct SnapManager {
    dir: PathBuf,
}

impl SnapManager {
    /// Uses (and creates) `dir` for snapshot files.
    pub fn new(dir: PathBuf) -> Result<SnapManager> {
        fs::create_dir_all(&dir)
            .map_err(|e| Error::Snapshot(format!("create {}: {e}", dir.display())))?;
        Ok(SnapManager { dir })
    }

    fn path(&self, kind: &str, region_id: u64, term: u64, index: u64, cf: &str) -> PathBuf {
        self.dir
            .join(format!("{kind}_{region_id}_{term}_{index}_{cf}.sst"))
    }

    /// Where a generated snapshot's file for `cf` is written.
    pub fn gen_path(&self, region_id: u64, term: u64, index: u64, cf: Cf) -> PathBuf {
        self.path("gen", region_id, term, index, cf.name())
    }

    /// Where a received snapshot's file for `cf` is written.
    pub fn recv_path(&self, region_id: u64, term: u64, index: u64, cf: Cf) -> PathBuf {
        self.path("rcv", region_id, term, index, cf.name())
    }

    /// The received files of a snapshot, by column family.
    pub fn recv_files(
        &self,
        region_id: u64,
        snap: &Snapshot,
        data: &SnapshotData,
    ) -> Result<Vec<(Cf, PathBuf)>> {
        let meta = snap.get_metadata();
        data.get_files()
            .iter()
            .map(|f| {
                let cf = parse_cf(f.get_cf())?;
                Ok((cf, self.recv_path(region_id, meta.term, meta.index, cf)))
            })
            .collect()
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
                    let res = mgr.generate(&engine, task.region_id);
                    match &res {
                        Ok(s) => {
                            metrics::SNAPSHOTS.with_label_values(&["generate", "ok"]).inc();
                            info!(logger, "generated snapshot"; "region_id" => task.region_id,
                                  "index" => s.get_metadata().index);
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

    /// Removes a received snapshot's files once its data is in the database.
    pub fn remove_files(&self, files: &[(Cf, PathBuf)]) {
        for (_, path) in files {
            let _ = fs::remove_file(path);
        }
    }
}

fn parse_cf(name: &str) -> Result<Cf> {
    Cf::from_name(name)
        .filter(|cf| Cf::DATA.contains(cf))
        .ok_or_else(|| Error::Snapshot(format!("unknown column family {name:?} in snapshot")))
}

/// Whether a store-to-store message carries a snapshot (and must be streamed).
pub fn is_snapshot(msg: &RaftMessage) -> bool {
    // The message type is field 1 of eraftpb.Message; decoding the whole message is
    // cheap next to the snapshot itself, and only done here.
    Message::parse_from_bytes(msg.get_message())
        .map(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        .unwrap_or(false)
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
    /// Taken when the snapshot arrived whole; until then the files are removed on drop.
    msg: Option<RaftMessage>,
    files: Vec<(SnapshotFile, PathBuf)>,
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
        let snap = raft_msg.get_snapshot();
        let data = SnapshotData::parse_from_bytes(snap.get_data())?;
        let files = mgr
            .recv_files(msg.get_region_id(), snap, &data)?
            .into_iter()
            .zip(data.get_files())
            .map(|((_, path), f)| (f.clone(), path))
            .collect();
        let mut rx = SnapReceiver {
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

    /// Checks that every file arrived whole and returns the message to deliver.
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
        Ok(self.msg.take().expect("taken only here"))
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

impl SnapManager {
    /// The received files of a snapshot that are still on disk (for redoing an apply that
    /// a restart interrupted).
    pub fn existing_recv_files(&self, region_id: u64, term: u64, index: u64) -> Vec<(Cf, PathBuf)> {
        Cf::DATA
            .into_iter()
            .map(|cf| (cf, self.recv_path(region_id, term, index, cf)))
            .filter(|(_, p)| p.exists())
            .collect()
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
        let mgr = SnapManager::new(dir.join("snap")).unwrap();
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
        let dst_mgr = SnapManager::new(dst.path().to_path_buf()).unwrap();
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
        let received = std::fs::read(dst_mgr.recv_path(1, 5, 5, Cf::Default)).unwrap();
        assert_eq!(received, original);
    }

    #[test]
    fn a_corrupted_chunk_is_caught_by_its_checksum() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (mgr, msg, _) = snapshot_message(src.path());
        let dst_mgr = SnapManager::new(dst.path().to_path_buf()).unwrap();
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
        let dst_mgr = SnapManager::new(dst.path().to_path_buf()).unwrap();
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
            !dst_mgr.recv_path(1, 5, 5, Cf::Default).exists(),
            "partial files are removed"
        );
    }
}
