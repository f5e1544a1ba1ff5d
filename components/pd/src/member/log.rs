//! This member's Raft log, hard state and apply state on PD's RocksDB (raft CF), served to
//! raft-rs as its `Storage`. Owned by the group's thread (`node.rs`) inside its `RawNode`;
//! nothing else writes these keys.

use engine::{Cf, Engine, WriteBatch};
use keys::pd as k;
use proto::pd_memberpb::{ApplyState, KvOp, SnapshotData};
use protobuf::Message;
use raft::{
    eraftpb::{ConfState, Entry, HardState, Snapshot},
    GetEntriesContext, RaftState, StorageError,
};

use crate::{Error, Result};

/// Where a new group's log starts: every initial member holds the same state at this
/// index, as if from one snapshot, and a member that joins later (with an empty log) is
/// therefore sent a snapshot, which carries the member table.
pub(crate) const INIT_INDEX: u64 = 5;
/// The term of [`INIT_INDEX`].
pub(crate) const INIT_TERM: u64 = 5;

/// raft-rs's view of this member's log.
pub(crate) struct MemberLog {
    engine: Engine,
    hard_state: HardState,
    apply: ApplyState,
    conf_state: ConfState,
    last_index: u64,
    last_term: u64,
}

fn decode<M: Message>(what: &str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| Error::Corrupted(format!("{what}: {e}")))
}

fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("encoding a protobuf message into memory cannot fail")
}

/// The apply state of a log whose every entry up to `index` (of `term`) is applied and
/// compacted away, with membership `cs`.
fn applied_at(index: u64, term: u64, cs: &ConfState) -> ApplyState {
    let mut apply = ApplyState::default();
    apply.set_applied_index(index);
    apply.set_applied_term(term);
    apply.set_truncated_index(index);
    apply.set_truncated_term(term);
    apply.set_conf_state(encode(cs));
    apply
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl MemberLog {
    /// Reads the log's state from `engine`.
    pub(crate) fn open(engine: Engine) -> Result<MemberLog> {
        let hard_state = engine
            .get_msg(Cf::Raft, k::HARD_STATE_KEY)?
            .unwrap_or_default();
        let apply: ApplyState = engine
            .get_msg(Cf::Raft, k::APPLY_STATE_KEY)?
            .unwrap_or_default();
        let conf_state = decode("conf state", apply.get_conf_state())?;
        let (mut last_index, mut last_term) = (apply.truncated_index, apply.truncated_term);
        let end = k::prefix_end(k::LOG_PREFIX);
        engine.scan_reverse(Cf::Raft, k::LOG_PREFIX, &end, |_, v| {
            let e: Entry =
                Entry::parse_from_bytes(v).map_err(|source| engine::Error::Corrupted {
                    key: k::LOG_PREFIX.to_vec(),
                    source,
                })?;
            last_index = e.index;
            last_term = e.term;
            Ok(false)
        })?;
        Ok(MemberLog {
            engine,
            hard_state,
            apply,
            conf_state,
            last_index,
            last_term,
        })
    }

    /// Writes the state every initial member of a new group starts from: `voters` at
    /// [`INIT_INDEX`], committed and applied.
    pub(crate) fn bootstrap(wb: &mut WriteBatch, voters: Vec<u64>) {
        let mut cs = ConfState::default();
        cs.set_voters(voters);
        let apply = applied_at(INIT_INDEX, INIT_TERM, &cs);
        let mut hs = HardState::default();
        hs.set_term(INIT_TERM);
        hs.set_commit(INIT_INDEX);
        wb.put_msg(Cf::Raft, k::APPLY_STATE_KEY, &apply);
        wb.put_msg(Cf::Raft, k::HARD_STATE_KEY, &hs);
    }

    /// The engine the log and the metadata live in.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The last applied entry (index, term).
    pub(crate) fn applied(&self) -> (u64, u64) {
        (self.apply.applied_index, self.apply.applied_term)
    }

    /// The membership as of the last applied entry.
    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Whether this member holds any Raft state (a member that joins starts without).
    pub(crate) fn is_initialized(&self) -> bool {
        !self.conf_state.get_voters().is_empty() || self.apply.applied_index > 0
    }

    /// Writes `entries` (replacing any conflicting suffix) and the hard state, synced.
    pub(crate) fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        let mut wb = self.engine.write_batch();
        if let Some(first) = entries.first() {
            for e in entries {
                wb.put(Cf::Raft, &k::log_key(e.index), &encode(e));
            }
            let last = entries.last().expect("not empty");
            if first.index <= self.last_index && last.index < self.last_index {
                wb.delete_range(
                    Cf::Raft,
                    &k::log_key(last.index + 1),
                    &k::log_key(self.last_index + 1),
                );
            }
        }
        if let Some(hs) = hs {
            wb.put_msg(Cf::Raft, k::HARD_STATE_KEY, hs);
        }
        if wb.is_empty() {
            return Ok(());
        }
        self.engine.write(wb, true)?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
            self.last_term = last.term;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Adds the apply state after `index` (of `term`) to `wb`, with `conf_state` if the
    /// membership changed, and the hard state if its commit index is behind (raft-rs
    /// refuses to start with an applied index past the commit index). Takes effect in
    /// memory once `wb` is written ([`MemberLog::applied_written`]).
    pub(crate) fn stage_applied(
        &self,
        wb: &mut WriteBatch,
        index: u64,
        term: u64,
        conf_state: Option<&ConfState>,
    ) -> (ApplyState, HardState) {
        let mut apply = self.apply.clone();
        apply.applied_index = index;
        apply.applied_term = term;
        if let Some(cs) = conf_state {
            apply.set_conf_state(encode(cs));
        }
        wb.put_msg(Cf::Raft, k::APPLY_STATE_KEY, &apply);
        let mut hs = self.hard_state.clone();
        if hs.commit < index {
            hs.commit = index;
            wb.put_msg(Cf::Raft, k::HARD_STATE_KEY, &hs);
        }
        (apply, hs)
    }

    /// Records what [`MemberLog::stage_applied`] staged, once written.
    pub(crate) fn applied_written(&mut self, (apply, hs): (ApplyState, HardState)) -> Result<()> {
        self.conf_state = decode("conf state", apply.get_conf_state())?;
        self.apply = apply;
        self.hard_state = hs;
        Ok(())
    }

    /// Replaces the metadata, the log and the apply state with `snap` (from the leader).
    pub(crate) fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let data: SnapshotData = decode("snapshot", snap.get_data())?;
        let mut wb = self.engine.write_batch();
        wb.delete_range(
            Cf::Default,
            k::REPLICATED_PREFIX,
            &k::prefix_end(k::REPLICATED_PREFIX),
        );
        for p in data.get_pairs() {
            if !p.get_key().starts_with(k::REPLICATED_PREFIX) {
                return Err(Error::Corrupted(format!(
                    "snapshot carries key {:?} outside PD's metadata",
                    p.get_key()
                )));
            }
            wb.put(Cf::Default, p.get_key(), p.get_value());
        }
        wb.delete_range(Cf::Raft, k::LOG_PREFIX, &k::prefix_end(k::LOG_PREFIX));
        let apply = applied_at(meta.index, meta.term, meta.get_conf_state());
        wb.put_msg(Cf::Raft, k::APPLY_STATE_KEY, &apply);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        wb.put_msg(Cf::Raft, k::HARD_STATE_KEY, &hs);
        self.engine.write(wb, true)?;
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.apply = apply;
        self.last_index = meta.index;
        self.last_term = meta.term;
        Ok(())
    }

    /// Drops entries up to `index` (applied ones only), keeping the term of `index`.
    pub(crate) fn compact(&mut self, index: u64) -> Result<()> {
        if index <= self.apply.truncated_index || index > self.apply.applied_index {
            return Ok(());
        }
        let term = self
            .term_of(index)
            .map_err(|e| Error::Corrupted(e.to_string()))?;
        let mut wb = self.engine.write_batch();
        wb.delete_range(Cf::Raft, &k::log_key(0), &k::log_key(index + 1));
        let mut apply = self.apply.clone();
        apply.truncated_index = index;
        apply.truncated_term = term;
        wb.put_msg(Cf::Raft, k::APPLY_STATE_KEY, &apply);
        self.engine.write(wb, true)?;
        self.apply = apply;
        Ok(())
    }

    /// Entries past the compacted prefix.
    pub(crate) fn log_len(&self) -> u64 {
        self.last_index - self.apply.truncated_index
    }

    fn entry(&self, index: u64) -> raft::Result<Entry> {
        let v = self
            .engine
            .get(Cf::Raft, &k::log_key(index))
            .map_err(store_err)?
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        Entry::parse_from_bytes(&v).map_err(store_err)
    }

    fn term_of(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.apply.truncated_index {
            return Ok(self.apply.truncated_term);
        }
        if idx < self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry(idx)?.term)
    }

    /// Every replicated pair, as a snapshot's data.
    fn snapshot_data(&self) -> Result<SnapshotData> {
        let mut data = SnapshotData::default();
        let end = k::prefix_end(k::REPLICATED_PREFIX);
        self.engine
            .scan(Cf::Default, k::REPLICATED_PREFIX, &end, |key, value| {
                let mut p = KvOp::default();
                p.set_key(key.to_vec());
                p.set_value(value.to_vec());
                data.mut_pairs().push(p);
                Ok(true)
            })?;
        Ok(data)
    }
}

impl raft::Storage for MemberLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for i in low..high {
            let e = self.entry(i)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let data = self.snapshot_data().map_err(store_err)?;
        snap.set_data(encode(&data).into());
        let meta = snap.mut_metadata();
        meta.index = self.apply.applied_index;
        meta.term = self.apply.applied_term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.set_index(index);
        e.set_term(term);
        e.set_data(vec![index as u8].into());
        e
    }

    #[test]
    fn a_conflicting_suffix_is_replaced_and_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_with(dir.path(), &engine::EngineOptions::small()).unwrap();
        let mut wb = engine.write_batch();
        MemberLog::bootstrap(&mut wb, vec![1, 2, 3]);
        engine.write(wb, true).unwrap();
        let mut log = MemberLog::open(engine.clone()).unwrap();
        assert_eq!(log.first_index().unwrap(), INIT_INDEX + 1);
        assert_eq!(log.last_index().unwrap(), INIT_INDEX);
        assert_eq!(log.term(INIT_INDEX).unwrap(), INIT_TERM);
        let ents: Vec<Entry> = (6..=9).map(|i| entry(i, 6)).collect();
        log.persist(&ents, None).unwrap();
        log.persist(&[entry(7, 7)], None).unwrap();
        assert_eq!(log.last_index().unwrap(), 7);
        drop(log);
        let log = MemberLog::open(engine).unwrap();
        assert_eq!(
            log.last_index().unwrap(),
            7,
            "entries 8 and 9 were replaced"
        );
        assert_eq!(log.term(7).unwrap(), 7);
        assert_eq!(log.term(6).unwrap(), 6);
        assert_eq!(
            log.initial_state().unwrap().conf_state.get_voters(),
            &[1, 2, 3]
        );
        assert!(log
            .entries(5, 7, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(
            log.entries(6, 8, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );
    }
}
