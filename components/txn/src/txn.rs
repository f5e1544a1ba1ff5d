//! The writes one command gathers, laid out in the column families.

use engine::Cf;
use keys::txn::{lock_key, value_key, write_key};

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

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.modifies.is_empty()
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
