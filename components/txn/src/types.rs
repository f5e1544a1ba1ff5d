//! Timestamps, mutations and the writes a command asks for.

use engine::Cf;
pub use proto::mvccpb::{Kind, Lock, Write};

/// Values up to this many bytes live in the lock and then the commit record; longer
/// ones in the txn value CF (as in TiKV).
pub const SHORT_VALUE_MAX_LEN: usize = 255;

/// Bits of a timestamp below its physical part (PD's logical counter).
pub const LOGICAL_BITS: u32 = 18;

/// The wall-clock milliseconds a PD timestamp was issued at.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The timestamp at `ms` milliseconds with logical part 0.
pub fn from_physical_ms(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// One write a command wants; the caller applies a command's writes as one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modify {
    /// Set `key` in `cf` to `value`.
    Put {
        /// The column family.
        cf: Cf,
        /// The full (encoded, prefixed) key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` from `cf`.
    Delete {
        /// The column family.
        cf: Cf,
        /// The full key.
        key: Vec<u8>,
    },
}

impl Modify {
    /// Bytes this write adds to a Raft entry, roughly.
    pub fn size(&self) -> usize {
        match self {
            Modify::Put { key, value, .. } => key.len() + value.len(),
            Modify::Delete { key, .. } => key.len(),
        }
    }
}

/// What a prewrite does to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MutationOp {
    /// Set the value.
    Put(Vec<u8>),
    /// Delete the key.
    Delete,
    /// Lock the key without changing it.
    Lock,
    /// Set the value; fail if the key exists.
    Insert(Vec<u8>),
    /// Fail if the key exists; writes nothing.
    CheckNotExists,
}

/// One key of a prewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// The user key.
    pub key: Vec<u8>,
    /// What to do to it.
    pub op: MutationOp,
}

impl Mutation {
    /// The value it writes, if any.
    pub fn value(&self) -> Option<&[u8]> {
        match &self.op {
            MutationOp::Put(v) | MutationOp::Insert(v) => Some(v),
            _ => None,
        }
    }

    /// The kind of lock the mutation leaves, and its value.
    pub(crate) fn lock_kind(&self) -> (Kind, Option<&[u8]>) {
        let kind = match &self.op {
            MutationOp::Put(_) | MutationOp::Insert(_) => Kind::PUT,
            MutationOp::Delete => Kind::DELETE,
            MutationOp::Lock | MutationOp::CheckNotExists => Kind::LOCK,
        };
        (kind, self.value())
    }
}

/// Whether a lock has outlived its TTL at `current_ts` (TTL runs from the physical time
/// of the transaction's start).
pub fn lock_expired(lock: &Lock, current_ts: u64) -> bool {
    physical_ms(lock.start_ts).saturating_add(lock.ttl) < physical_ms(current_ts)
}
