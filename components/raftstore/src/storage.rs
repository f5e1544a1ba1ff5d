//! A peer's Raft storage: raft-rs's `Storage` over the engine, plus the writes that
//! persist a Ready (entries, hard state, snapshot) and log truncation.
//!
//! The tail of the log lives in an in-memory cache, so a leader replicating to followers
//! that keep up never reads RocksDB.

use std::{cell::RefCell, collections::VecDeque};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use engine::{Cf, Engine, WriteBatch};
use proto::{
    metapb,
    raft_serverpb::{
        PeerState, PendingSnapshot, RaftApplyState, RaftLocalState, RaftTruncatedState,
        RegionLocalState, SnapshotData,
    },
};
use protobuf::Message as _;
use raft::{
    eraftpb::{Entry, HardState, Snapshot},
    GetEntriesContext, RaftState, StorageError,
};

use crate::{snap::GenTask, util::conf_state_of, Error, Result};

/// Index and term every new region's log starts from, so that a peer created empty (term
/// 0, index 0) is always behind and gets a snapshot.
pub const RAFT_INIT_LOG_INDEX: u64 = 5;
/// See [`RAFT_INIT_LOG_INDEX`].
pub const RAFT_INIT_LOG_TERM: u64 = 5;

/// Most entries kept in memory beyond what is applied.
const CACHE_KEEP_APPLIED: usize = 1024;

enum SnapState {
    Relax,
    Generating(Receiver<Result<Snapshot>>),
}

/// One peer's Raft log and states. It owns the log, the Raft state and the region's local
/// state (`RegionLocalState`) on disk; the apply state belongs to the region's apply
/// state machine, and only a copy of its progress (reported back after each apply) is
/// kept here.
pub struct PeerStorage {
    engine: Engine,
    region: metapb::Region,
    raft_state: RaftLocalState,
    applied_index: u64,
    last_term: u64,
    cache: VecDeque<Entry>,
    snap_state: RefCell<SnapState>,
    gen_tx: Sender<GenTask>,
    /// The raft state changed since it was last written.
    raft_state_dirty: bool,
    /// The region changed (split, membership, snapshot in place) and is to be written,
    /// with the entry that changed it (`changed_at` in `RegionLocalState`; 0: none).
    region_unwritten: Option<u64>,
}

/// Adds to `wb` the region's local state: its shape and whether it is live or removed.
pub fn put_region_state(wb: &mut WriteBatch, region: &metapb::Region, state: PeerState) {
    put_local_state(wb, local_state(region, state));
}

fn local_state(region: &metapb::Region, state: PeerState) -> RegionLocalState {
    let mut s = RegionLocalState::default();
    s.set_state(state);
    s.set_region(region.clone());
    s
}

fn put_local_state(wb: &mut WriteBatch, s: RegionLocalState) {
    wb.put_msg(
        Cf::Raft,
        &keys::region_state_key(s.get_region().get_id()),
        &s,
    );
}

/// Adds to `wb` the deletion of a region's data in every data column family, and of its
/// client sessions.
pub fn delete_region_data(wb: &mut WriteBatch, region: &metapb::Region) {
    let start = keys::data_key(region.get_start_key());
    let end = keys::data_end_key(region.get_end_key());
    for cf in Cf::DATA {
        wb.delete_range(cf, &start, &end);
    }
    let sessions = keys::session_range(region.get_id());
    wb.delete_range(Cf::Raft, &sessions.start, &sessions.end);
}

impl PeerStorage {
    /// Loads (or, for a peer that has never had data, starts empty) a peer's storage.
    /// `applying`: the region's data is being replaced by a snapshot whose apply a
    /// restart interrupted (and will redo before anything else applies).
    pub fn new(
        engine: Engine,
        region: metapb::Region,
        applying: bool,
        gen_tx: Sender<GenTask>,
    ) -> Result<Self> {
        let id = region.get_id();
        let initialized = !region.get_peers().is_empty();
        let mut raft_state: RaftLocalState = engine
            .get_msg(Cf::Raft, &keys::raft_state_key(id))?
            .unwrap_or_default();
        let apply_state: RaftApplyState = if !initialized && !applying {
            // A peer without data has applied nothing. An apply state found here is a
            // removed peer's: its apply side deletes it after the peer wrote the
            // tombstone, and a crash can come in between (see `operation::destroy`).
            RaftApplyState::default()
        } else {
            match engine.get_msg(Cf::Raft, &keys::apply_state_key(id))? {
                Some(s) => s,
                None if !applying => {
                    return Err(Error::Snapshot(format!(
                        "region {id} has a region state but no apply state"
                    )))
                }
                None => RaftApplyState::default(),
            }
        };
        // A data directory from before the log's base moved into the Raft state.
        let legacy = !raft_state.has_truncated_state() && apply_state.has_legacy_truncated_state();
        if legacy {
            raft_state.set_truncated_state(apply_state.get_legacy_truncated_state().clone());
        }
        let truncated = raft_state.get_truncated_state().clone();
        // While a snapshot's apply is redone, the data is the old one: what was applied
        // stays what the apply side last recorded until it reports the snapshot in place.
        let applied_index = apply_state.applied_index;
        if initialized && !applying && applied_index < truncated.index {
            return Err(Error::Snapshot(format!(
                "region {id}: applied index {applied_index} is behind the log's start {}; \
                 the entries in between are gone",
                truncated.index + 1
            )));
        }
        // Applied entries are committed even if the commit index written with the hard
        // state lags behind (it is persisted lazily).
        raft_state.commit = raft_state.commit.max(applied_index).max(truncated.index);
        let last_term = if raft_state.last_index == truncated.index {
            truncated.term
        } else {
            let e: Entry = engine
                .get_msg(Cf::Raft, &keys::raft_log_key(id, raft_state.last_index))?
                .ok_or_else(|| {
                    Error::Snapshot(format!(
                        "region {id}: last log entry {} is missing",
                        raft_state.last_index
                    ))
                })?;
            e.term
        };
        Ok(PeerStorage {
            engine,
            region,
            raft_state,
            applied_index,
            last_term,
            cache: VecDeque::new(),
            snap_state: RefCell::new(SnapState::Relax),
            gen_tx,
            // Written back in the new place with the next Ready.
            raft_state_dirty: legacy,
            region_unwritten: None,
        })
    }

    /// The region as this peer knows it.
    pub fn region(&self) -> &metapb::Region {
        &self.region
    }

    /// Replaces the region after the entry at `changed_at` (a split or a membership
    /// change; 0 for a snapshot put in place); [`PeerStorage::write_region_state`]
    /// writes it as live.
    pub fn set_region(&mut self, region: metapb::Region, changed_at: u64) {
        self.region = region;
        self.region_unwritten = Some(changed_at);
    }

    /// Writes the region as live into `wb` if it changed; returns whether it did (the
    /// write must then be fsynced).
    pub fn write_region_state(&mut self, wb: &mut WriteBatch) -> bool {
        let Some(changed_at) = self.region_unwritten.take() else {
            return false;
        };
        let mut s = local_state(&self.region, PeerState::Normal);
        s.changed_at = changed_at;
        put_local_state(wb, s);
        true
    }

    /// Whether the peer has data (a range and peers), as opposed to having just been
    /// created by a message and waiting for a snapshot.
    pub fn is_initialized(&self) -> bool {
        !self.region.get_peers().is_empty()
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Where raft-rs may consider the log applied from: never before the log's base, even
    /// while a snapshot's data is still being put in place.
    pub fn raft_applied(&self) -> u64 {
        self.applied_index.max(self.truncated_index())
    }

    /// Index of the last entry removed from the log.
    pub fn truncated_index(&self) -> u64 {
        self.raft_state.get_truncated_state().index
    }

    /// Index of the last entry in the log.
    pub fn last_index(&self) -> u64 {
        self.raft_state.last_index
    }

    /// Records apply progress, and drops cached entries nobody is likely to ask for.
    pub fn on_applied(&mut self, index: u64) {
        if index < self.applied_index {
            return;
        }
        self.applied_index = index;
        while self.cache.len() > CACHE_KEEP_APPLIED
            && self.cache.front().is_some_and(|e| e.index <= index)
        {
            self.cache.pop_front();
        }
    }

    /// Writes new log entries (replacing any conflicting suffix) into `wb`.
    pub fn append(&mut self, entries: Vec<Entry>, wb: &mut WriteBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let (first_index, last_index, last_term) = (first.index, last.index, last.term);
        let id = self.region.get_id();
        for e in &entries {
            wb.put_msg(Cf::Raft, &keys::raft_log_key(id, e.index), e);
        }
        for stale in last_index + 1..=self.raft_state.last_index {
            wb.delete(Cf::Raft, &keys::raft_log_key(id, stale));
        }
        self.raft_state.last_index = last_index;
        self.last_term = last_term;
        self.raft_state_dirty = true;
        while self.cache.back().is_some_and(|e| e.index >= first_index) {
            self.cache.pop_back();
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first_index)
        {
            self.cache.clear();
        }
        self.cache.extend(entries);
    }

    /// Records a new hard state (written by [`PeerStorage::write_raft_state`]); returns
    /// whether the term or vote changed, which must be fsynced whatever `sync-log` says.
    pub fn set_hard_state(&mut self, hs: &HardState) -> bool {
        let changed = self.raft_state.term != hs.term || self.raft_state.vote != hs.vote;
        self.raft_state.term = hs.term;
        self.raft_state.vote = hs.vote;
        self.raft_state.commit = hs.commit;
        self.raft_state_dirty = true;
        changed
    }

    /// Records a commit index that advanced after the last persisted Ready.
    pub fn set_commit(&mut self, commit: u64) {
        self.raft_state.commit = commit;
        self.raft_state_dirty = true;
    }

    /// Writes the hard state and last index into `wb`, if they changed.
    pub fn write_raft_state(&mut self, wb: &mut WriteBatch) {
        if !std::mem::take(&mut self.raft_state_dirty) {
            return;
        }
        wb.put_msg(
            Cf::Raft,
            &keys::raft_state_key(self.region.get_id()),
            &self.raft_state,
        );
    }

    /// Takes a received snapshot as the new base of the log: the old log goes, and the
    /// region is marked `Applying`, with what it takes to redo the apply after a restart,
    /// until the apply state machine has put the data in place (and written the apply
    /// state, which is its alone). The apply side must have nothing in flight.
    pub fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        pending: PendingSnapshot,
        wb: &mut WriteBatch,
    ) -> Result<SnapshotData> {
        let data = SnapshotData::parse_from_bytes(snap.get_data())?;
        let meta = snap.get_metadata();
        let id = self.region.get_id();
        let old_first = self.truncated_index() + 1;
        let old_last = self.raft_state.last_index;
        if old_last >= old_first {
            let range = keys::raft_log_range(id, old_first, old_last + 1);
            wb.delete_range(Cf::Raft, &range.start, &range.end);
        }
        self.raft_state.last_index = meta.index;
        self.raft_state.commit = self.raft_state.commit.max(meta.index);
        self.raft_state_dirty = true;
        self.last_term = meta.term;
        self.cache.clear();
        // Not applied yet: the apply side reports it once the data is in place, and until
        // then nothing may be read from this peer as of the snapshot.
        self.set_truncated(meta.index, meta.term);
        self.region = data.get_region().clone();
        self.write_raft_state(wb);
        self.region_unwritten = None;
        let mut s = local_state(&self.region, PeerState::Applying);
        s.set_pending_snapshot(pending);
        put_local_state(wb, s);
        Ok(data)
    }

    fn set_truncated(&mut self, index: u64, term: u64) {
        let mut truncated = RaftTruncatedState::default();
        truncated.set_index(index);
        truncated.set_term(term);
        self.raft_state.set_truncated_state(truncated);
        self.raft_state_dirty = true;
    }

    /// Removes log entries up to and including `index` (already applied everywhere that
    /// matters, or past the limits).
    pub fn compact_to(&mut self, index: u64, term: u64, wb: &mut WriteBatch) {
        let old_first = self.truncated_index() + 1;
        if index < old_first {
            return;
        }
        let range = keys::raft_log_range(self.region.get_id(), old_first, index + 1);
        wb.delete_range(Cf::Raft, &range.start, &range.end);
        self.set_truncated(index, term);
        self.write_raft_state(wb);
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.cache.pop_front();
        }
    }

    /// Rough size in bytes of the entries still in the log (from the cache's average).
    pub fn approximate_log_bytes(&self) -> u64 {
        let count = self
            .raft_state
            .last_index
            .saturating_sub(self.truncated_index());
        if self.cache.is_empty() {
            return 0;
        }
        let cached: u64 = self.cache.iter().map(|e| e.data.len() as u64 + 16).sum();
        cached / self.cache.len() as u64 * count
    }

    fn entry(&self, index: u64) -> raft::Result<Entry> {
        if let Some(front) = self.cache.front() {
            if index >= front.index {
                if let Some(e) = self.cache.get((index - front.index) as usize) {
                    return Ok(e.clone());
                }
            }
        }
        let key = keys::raft_log_key(self.region.get_id(), index);
        match self.engine.get_msg::<Entry>(Cf::Raft, &key) {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(raft::Error::Store(StorageError::Unavailable)),
            Err(e) => Err(raft::Error::Store(StorageError::Other(Box::new(e)))),
        }
    }
}

impl raft::Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mut hs = HardState::default();
        hs.set_term(self.raft_state.term);
        hs.set_vote(self.raft_state.vote);
        hs.set_commit(self.raft_state.commit);
        Ok(RaftState::new(hs, conf_state_of(&self.region)))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.raft_state.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut ents = Vec::with_capacity((high - low) as usize);
        let cache_first = self.cache.front().map_or(high, |e| e.index).max(low);
        if low < cache_first {
            let end = cache_first.min(high);
            let range = keys::raft_log_range(self.region.get_id(), low, end);
            let mut expected = low;
            let mut gap = false;
            self.engine
                .scan(Cf::Raft, &range.start, &range.end, |_, v| {
                    let e =
                        Entry::parse_from_bytes(v).map_err(|source| engine::Error::Corrupted {
                            key: range.start.to_vec(),
                            source,
                        })?;
                    gap = e.index != expected;
                    expected += 1;
                    ents.push(e);
                    Ok(!gap)
                })
                .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
            if gap || expected != end {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        if high > cache_first {
            let front = self
                .cache
                .front()
                .expect("cache_first < high implies a cache")
                .index;
            let from = (cache_first - front) as usize;
            let to = (high - front) as usize;
            ents.extend(self.cache.range(from..to).cloned());
        }
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let truncated = self.raft_state.get_truncated_state();
        if idx == truncated.index {
            return Ok(truncated.term);
        }
        if idx < truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.raft_state.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.raft_state.last_index {
            return Ok(self.last_term);
        }
        Ok(self.entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.raft_state.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut state = self.snap_state.borrow_mut();
        if let SnapState::Generating(rx) = &*state {
            match rx.try_recv() {
                Ok(Ok(snap)) if snap.get_metadata().index >= request_index => {
                    *state = SnapState::Relax;
                    return Ok(snap);
                }
                Err(TryRecvError::Empty) => {
                    return Err(raft::Error::Store(
                        StorageError::SnapshotTemporarilyUnavailable,
                    ))
                }
                // Too old, failed, or the worker is gone: generate again.
                Ok(_) | Err(TryRecvError::Disconnected) => {}
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let task = GenTask {
            region_id: self.region.get_id(),
            notifier: tx,
        };
        if self.gen_tx.send(task).is_ok() {
            *state = SnapState::Generating(rx);
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage;

    use super::*;
    use crate::bootstrap;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.set_index(index);
        e.set_term(term);
        e.set_data(vec![index as u8; 8].into());
        e
    }

    fn setup() -> (tempfile::TempDir, Engine, PeerStorage) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let region = bootstrap::first_region(1, 2, 3);
        bootstrap::write_initial_region(&engine, &region).unwrap();
        let (tx, _rx) = crossbeam_channel::unbounded();
        let storage = PeerStorage::new(engine.clone(), region, false, tx).unwrap();
        (dir, engine, storage)
    }

    fn append(engine: &Engine, s: &mut PeerStorage, entries: Vec<Entry>) {
        let mut wb = engine.write_batch();
        s.append(entries, &mut wb);
        s.write_raft_state(&mut wb);
        engine.write(wb, true).unwrap();
    }

    /// Found by the chaos test: a removed peer's apply side can write its apply state
    /// after the Raft side deleted the region's Raft keys. A peer created here later for
    /// the same region must start empty, not with a commit index past its empty log
    /// (raft-rs panics: "hs.commit 337 is out of range [0, 0]").
    #[test]
    fn a_new_peer_ignores_the_apply_state_a_removed_peer_left() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut left = RaftApplyState::default();
        left.set_applied_index(337);
        left.set_applied_term(7);
        let mut wb = engine.write_batch();
        wb.put_msg(Cf::Raft, &keys::apply_state_key(10), &left);
        engine.write(wb, true).unwrap();
        let mut region = metapb::Region::default();
        region.set_id(10);
        let (tx, _rx) = crossbeam_channel::unbounded();
        let s = PeerStorage::new(engine, region, false, tx).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(s.last_index(), 0);
        assert_eq!(st.hard_state.commit, 0, "commit past an empty log");
        assert_eq!(s.applied_index(), 0);
    }

    #[test]
    fn a_new_region_starts_at_the_initial_index() {
        let (_d, _e, s) = setup();
        assert_eq!(s.first_index().unwrap(), RAFT_INIT_LOG_INDEX + 1);
        assert_eq!(s.last_index(), RAFT_INIT_LOG_INDEX);
        assert_eq!(s.term(RAFT_INIT_LOG_INDEX).unwrap(), RAFT_INIT_LOG_TERM);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, RAFT_INIT_LOG_INDEX);
        assert_eq!(st.conf_state.voters, vec![2]);
    }

    #[test]
    fn entries_come_from_cache_and_engine_and_conflicts_are_replaced() {
        let (_d, engine, mut s) = setup();
        append(&engine, &mut s, (6..=20).map(|i| entry(i, 6)).collect());
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(s.entries(6, 21, None, ctx()).unwrap().len(), 15);
        assert_eq!(s.term(20).unwrap(), 6);
        // A new leader's entries replace the suffix from 15 on.
        append(&engine, &mut s, (15..=17).map(|i| entry(i, 7)).collect());
        assert_eq!(s.last_index(), 17);
        assert_eq!(s.term(16).unwrap(), 7);
        assert_eq!(s.term(14).unwrap(), 6);
        // Reloading from disk (an empty cache) sees the same log.
        let (tx, _rx) = crossbeam_channel::unbounded();
        let reloaded = PeerStorage::new(engine.clone(), s.region().clone(), false, tx).unwrap();
        let from_disk = reloaded.entries(6, 18, None, ctx()).unwrap();
        let from_cache = s.entries(6, 18, None, ctx()).unwrap();
        assert_eq!(from_disk, from_cache);
        assert_eq!(reloaded.last_index(), 17);
        assert!(matches!(
            s.entries(6, 19, None, ctx()),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        // A size limit still returns at least one entry.
        assert_eq!(s.entries(6, 18, Some(1), ctx()).unwrap().len(), 1);
    }

    /// A data directory written before the log's base moved into the Raft state loads
    /// with its base from the apply state.
    #[test]
    fn an_older_data_directory_keeps_its_log_base() {
        let (_d, engine, mut s) = setup();
        append(&engine, &mut s, (6..=30).map(|i| entry(i, 6)).collect());
        let mut wb = engine.write_batch();
        s.compact_to(20, 6, &mut wb);
        engine.write(wb, true).unwrap();
        let id = s.region().get_id();
        let mut raft: RaftLocalState = engine
            .get_msg(Cf::Raft, &keys::raft_state_key(id))
            .unwrap()
            .unwrap();
        let mut apply: RaftApplyState = engine
            .get_msg(Cf::Raft, &keys::apply_state_key(id))
            .unwrap()
            .unwrap();
        apply.set_legacy_truncated_state(raft.take_truncated_state());
        apply.applied_index = 25;
        let mut wb = engine.write_batch();
        wb.put_msg(Cf::Raft, &keys::raft_state_key(id), &raft);
        wb.put_msg(Cf::Raft, &keys::apply_state_key(id), &apply);
        engine.write(wb, true).unwrap();
        let (tx, _rx) = crossbeam_channel::unbounded();
        let old = PeerStorage::new(engine.clone(), s.region().clone(), false, tx).unwrap();
        assert_eq!(old.first_index().unwrap(), 21);
        assert_eq!(old.term(20).unwrap(), 6);
    }

    #[test]
    fn compaction_removes_the_prefix() {
        let (_d, engine, mut s) = setup();
        append(&engine, &mut s, (6..=30).map(|i| entry(i, 6)).collect());
        let mut wb = engine.write_batch();
        s.compact_to(20, 6, &mut wb);
        engine.write(wb, true).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.term(20).unwrap(), 6);
        assert!(matches!(
            s.term(19),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let ctx = GetEntriesContext::empty(false);
        assert!(matches!(
            s.entries(10, 25, None, ctx),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(engine
            .get(engine::Cf::Raft, &keys::raft_log_key(1, 15))
            .unwrap()
            .is_none());
    }
}
