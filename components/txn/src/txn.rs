//! The writes one command gathers, laid out in the column families.

use engine::Cf;
use keys::txn::{gc_fence_key, lock_key, value_key, write_key};

use crate::{
    reader::encode,
    types::{Lock, Modify, Write},
};

/// The writes of one command, applied together or not at all.
#[derive(Debug, Default)]
pub struct MvccTxn {
    modifies: Vec<Modify>,
}

impl MvccTxn {
    /// An empty batch.
    pub fn new() -> Self {
        MvccTxn::default()
    }

    /// Puts (or replaces) the lock on `key`.
    pub fn put_lock(&mut self, key: &[u8], lock: &Lock) {
        self.put(Cf::Lock, lock_key(key), encode(lock));
    }

    /// Removes the lock on `key`.
    pub fn unlock(&mut self, key: &[u8]) {
        self.delete(Cf::Lock, lock_key(key));
    }

    /// Stores a value too long to inline.
    pub fn put_value(&mut self, key: &[u8], start_ts: u64, value: &[u8]) {
        self.put(Cf::TxnValue, value_key(key, start_ts), value.to_vec());
    }

    /// Removes a stored long value.
    pub fn delete_value(&mut self, key: &[u8], start_ts: u64) {
        self.delete(Cf::TxnValue, value_key(key, start_ts));
    }

    /// Puts a commit or rollback record at `commit_ts`.
    pub fn put_write(&mut self, key: &[u8], commit_ts: u64, write: &Write) {
        self.put(Cf::Write, write_key(key, commit_ts), encode(write));
    }

    /// Removes the record at `commit_ts`.
    pub fn delete_write(&mut self, key: &[u8], commit_ts: u64) {
        self.delete(Cf::Write, write_key(key, commit_ts));
    }

    /// Puts `key`'s GC fence: versions below `safe_point` are being dropped.
    pub fn put_gc_fence(&mut self, key: &[u8], safe_point: u64) {
        let fence = Write {
            kind: crate::types::Kind::GC_FENCE,
            collected_below: safe_point,
            ..Default::default()
        };
        self.put(Cf::Write, gc_fence_key(key), encode(&fence));
    }

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.modifies.is_empty()
    }

    /// One batch of every batch's writes, in order (for tests that apply them at once).
    #[cfg(test)]
    pub(crate) fn concat(batches: Vec<MvccTxn>) -> MvccTxn {
        MvccTxn {
            modifies: batches.into_iter().flat_map(|b| b.modifies).collect(),
        }
    }

    /// Bytes gathered so far, roughly.
    pub fn size(&self) -> usize {
        self.modifies.iter().map(Modify::size).sum()
    }

    /// The writes, in order.
    pub fn into_modifies(self) -> Vec<Modify> {
        self.modifies
    }

    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.modifies.push(Modify::Put { cf, key, value });
    }

    fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.modifies.push(Modify::Delete { cf, key });
    }
}

/// A command's writes cut into batches of about `budget` bytes, each holding whole keys'
/// writes, for commands whose keys are settled one by one (commit, lock resolution):
/// each batch goes through Raft as a command of its own, so that no command passes
/// `raft-entry-max-size`, and a batch that fails is simply sent again.
#[derive(Debug)]
pub struct Batches {
    budget: usize,
    full: Vec<MvccTxn>,
    cur: MvccTxn,
}

impl Batches {
    /// Batches of about `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Batches {
            budget,
            full: vec![],
            cur: MvccTxn::new(),
        }
    }

    /// Where the next key's writes go.
    pub fn txn(&mut self) -> &mut MvccTxn {
        &mut self.cur
    }

    /// Ends a key's writes: a full batch is closed.
    pub fn key_done(&mut self) {
        if self.cur.size() >= self.budget {
            self.full.push(std::mem::take(&mut self.cur));
        }
    }

    /// The batches, in order, none empty.
    pub fn finish(mut self) -> Vec<MvccTxn> {
        if !self.cur.is_empty() {
            self.full.push(self.cur);
        }
        self.full
    }
}
