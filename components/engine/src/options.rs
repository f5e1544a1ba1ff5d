//! How much memory the database may use: one block cache shared by every column family,
//! and one budget for all memtables together (RocksDB's write buffer manager, which
//! flushes the largest memtable when the budget fills, and stalls writers until flushes
//! catch up).

use std::sync::Arc;

/// Whether a compaction drops a (key, value) pair.
pub type DropFn = dyn Fn(&[u8], &[u8]) -> bool + Send + Sync;

/// Decides, for a pair of the default column family met by a compaction, whether to drop
/// it (the caller knows what its keys and values mean; the engine does not).
#[derive(Clone)]
pub struct DropFilter(pub Arc<DropFn>);

impl std::fmt::Debug for DropFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropFilter(..)")
    }
}

impl PartialEq for DropFilter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DropFilter {}

/// Memory and background settings for [`crate::Engine::open_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Bytes of the LRU block cache shared by every column family.
    pub block_cache_bytes: usize,
    /// Bytes all memtables of all column families may take together.
    pub memtable_budget_bytes: usize,
    /// One memtable's size before it is switched for flushing.
    pub write_buffer_bytes: usize,
    /// Flush and compaction threads.
    pub max_background_jobs: i32,
    /// What compactions of the default column family drop (expired raw values).
    pub default_cf_drop: Option<DropFilter>,
}

impl EngineOptions {
    /// Small, for metadata databases (PD's): a few MiB of cache and memtables.
    pub fn small() -> Self {
        EngineOptions {
            block_cache_bytes: 8 << 20,
            memtable_budget_bytes: 16 << 20,
            write_buffer_bytes: 4 << 20,
            max_background_jobs: 1,
            default_cf_drop: None,
        }
    }
}

impl Default for EngineOptions {
    /// Sized for a small machine: 128 MiB of cache, 128 MiB of memtables.
    fn default() -> Self {
        EngineOptions {
            block_cache_bytes: 128 << 20,
            memtable_budget_bytes: 128 << 20,
            write_buffer_bytes: 32 << 20,
            max_background_jobs: 2,
            default_cf_drop: None,
        }
    }
}
