//! What the database reports about itself, read at the moment of asking (a metrics
//! scrape): memory, block cache hits, compaction debt, stalls, files per column family.

use rocksdb::{properties, statistics::Ticker};

use crate::{db::cf_handle, Cf, Engine};

/// One column family's files and memory.
#[derive(Clone, Debug, Default)]
pub struct CfStats {
    /// The column family.
    pub cf: &'static str,
    /// Live SST files.
    pub sst_files: u64,
    /// Their bytes on disk.
    pub sst_bytes: u64,
    /// Bytes in its memtables.
    pub memtable_bytes: u64,
    /// Bytes compaction still has to rewrite (RocksDB's estimate).
    pub pending_compaction_bytes: u64,
    /// Keys, as RocksDB estimates them.
    pub estimated_keys: u64,
}

/// The whole database.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    /// Block cache bytes in use.
    pub block_cache_usage: u64,
    /// Block cache size.
    pub block_cache_capacity: u64,
    /// Block reads served from the cache since the database opened.
    pub block_cache_hits: u64,
    /// Block reads that went to disk.
    pub block_cache_misses: u64,
    /// Bytes of every memtable together (the write buffer manager's count).
    pub memtable_bytes: u64,
    /// The memtable budget.
    pub memtable_budget: u64,
    /// Microseconds writers spent stalled by RocksDB since the database opened.
    pub stall_micros: u64,
    /// Whether writes are stopped right now (too many files, too much compaction debt).
    pub write_stopped: bool,
    /// Per column family.
    pub cfs: Vec<CfStats>,
}

impl Engine {
    /// Reads the database's statistics and properties now.
    pub fn stats(&self) -> EngineStats {
        let db = self.db();
        let prop = |cf: Cf, name: &rocksdb::properties::PropName| {
            db.property_int_value_cf(cf_handle(db, cf), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let files = db.live_files().unwrap_or_default();
        let cfs = Cf::ALL
            .iter()
            .map(|&cf| {
                let mine = files.iter().filter(|f| f.column_family_name == cf.name());
                CfStats {
                    cf: cf.name(),
                    sst_files: mine.clone().count() as u64,
                    sst_bytes: mine.map(|f| f.size as u64).sum(),
                    memtable_bytes: prop(cf, properties::CUR_SIZE_ALL_MEM_TABLES),
                    pending_compaction_bytes: prop(
                        cf,
                        properties::ESTIMATE_PENDING_COMPACTION_BYTES,
                    ),
                    estimated_keys: prop(cf, properties::ESTIMATE_NUM_KEYS),
                }
            })
            .collect();
        let memory = self.memory();
        EngineStats {
            block_cache_usage: memory.cache.get_usage() as u64,
            block_cache_capacity: memory.cache_capacity as u64,
            block_cache_hits: memory.db_opts.get_ticker_count(Ticker::BlockCacheHit),
            block_cache_misses: memory.db_opts.get_ticker_count(Ticker::BlockCacheMiss),
            memtable_bytes: memory.write_buffers.get_usage() as u64,
            memtable_budget: memory.write_buffers.get_buffer_size() as u64,
            stall_micros: memory.db_opts.get_ticker_count(Ticker::StallMicros),
            write_stopped: prop(Cf::Default, properties::IS_WRITE_STOPPED) != 0,
            cfs,
        }
    }
}
