use std::sync::Arc;

use protobuf::Message;

use crate::{db::cf_handle, Cf};

/// A set of writes that reach the database together or not at all.
pub struct WriteBatch {
    inner: rocksdb::WriteBatch,
    db: Arc<rocksdb::DB>,
}

impl WriteBatch {
    pub(crate) fn new(db: Arc<rocksdb::DB>) -> WriteBatch {
        WriteBatch {
            inner: rocksdb::WriteBatch::default(),
            db,
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(cf_handle(&self.db, cf), key, value);
    }

    /// Sets `key` to an encoded protobuf message.
    pub fn put_msg<M: Message>(&mut self, cf: Cf, key: &[u8], msg: &M) {
        let value = msg
            .write_to_bytes()
            .expect("encoding a protobuf message into memory cannot fail");
        self.put(cf, key, &value);
    }

    /// Removes `key`.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(cf_handle(&self.db, cf), key);
    }

    /// Removes every key in `[start, end)`.
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.inner
            .delete_range_cf(cf_handle(&self.db, cf), start, end);
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Encoded size of the batch in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }

    pub(crate) fn into_inner(self) -> rocksdb::WriteBatch {
        self.inner
    }
}
