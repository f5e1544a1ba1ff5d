use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use protobuf::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction,
    IngestExternalFileOptions, IteratorMode, Options, ReadOptions, SnapshotWithThreadMode,
    WriteBufferManager, WriteOptions, DB,
};

use crate::{Cf, EngineOptions, Error, Result, WriteBatch};

/// A store's database. Cheap to clone; every clone is the same database.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    path: PathBuf,
    /// Writes made with `sync`, so that tests can see that an fsync the design needs
    /// happened (a dropped fsync is otherwise invisible until a power loss).
    synced_writes: Arc<AtomicU64>,
    memory: Arc<Memory>,
}

/// What bounds the database's memory, kept for its statistics.
pub(crate) struct Memory {
    pub(crate) cache: Cache,
    pub(crate) cache_capacity: usize,
    pub(crate) write_buffers: WriteBufferManager,
    /// The options the database opened with: they hold its statistics.
    pub(crate) db_opts: Options,
}

/// An engine that does not keep the database open (for observers such as a metrics
/// collector, which must not outlive the store's use of it).
#[derive(Clone)]
pub struct WeakEngine {
    db: std::sync::Weak<DB>,
    path: PathBuf,
    synced_writes: std::sync::Weak<AtomicU64>,
    memory: std::sync::Weak<Memory>,
}

impl WeakEngine {
    /// The engine, if it is still open.
    pub fn upgrade(&self) -> Option<Engine> {
        Some(Engine {
            db: self.db.upgrade()?,
            path: self.path.clone(),
            synced_writes: self.synced_writes.upgrade()?,
            memory: self.memory.upgrade()?,
        })
    }
}

pub(crate) fn cf_handle(db: &DB, cf: Cf) -> &ColumnFamily {
    db.cf_handle(cf.name())
        .expect("every column family is created when the database opens")
}

impl Engine {
    /// Opens (creating if needed) the database at `path` with every column family and
    /// the default memory budget.
    pub fn open(path: &Path) -> Result<Engine> {
        Self::open_with(path, &EngineOptions::default())
    }

    /// Opens the database at `path` within `opts`'s memory budget.
    pub fn open_with(path: &Path, opts: &EngineOptions) -> Result<Engine> {
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        // Past the budget RocksDB flushes the largest memtable, and stalls writers while
        // flushes cannot keep up: that is what bounds memory under a burst (without the
        // stall, memtables waiting to flush grew RSS past the budget in the `memory` process test).
        // The stall blocks the Raft poller's write, as RocksDB's own write stalls do.
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager(opts.memtable_budget_bytes, true);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(opts.max_background_jobs);
        db_opts.set_write_buffer_manager(&write_buffers);
        db_opts.enable_statistics();
        // Counters only: timers and histograms on every operation would cost the write path.
        db_opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        let cfs = Cf::ALL.iter().map(|&cf| {
            let mut block = BlockBasedOptions::default();
            block.set_block_cache(&cache);
            block.set_bloom_filter(10.0, false);
            // Index and filter blocks count against the cache instead of growing apart
            // from it, so that the budget bounds them too; kept at high priority, and
            // pinned for level 0, so that a small cache does not evict them first.
            block.set_cache_index_and_filter_blocks(true);
            block.set_cache_index_and_filter_blocks_with_high_priority(true);
            block.set_pin_l0_filter_and_index_blocks_in_cache(true);
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&block);
            cf_opts.set_write_buffer_size(opts.write_buffer_bytes);
            cf_opts.set_compression_type(DBCompressionType::Lz4);
            cf_opts.set_bottommost_compression_type(DBCompressionType::Zstd);
            if cf == Cf::Lock {
                // Every transactional read and write looks its keys up here, and almost
                // always finds nothing: a memtable bloom filter answers that without a
                // skip-list search (a tenth of a store's CPU under a transactional load).
                cf_opts.set_memtable_whole_key_filtering(true);
                cf_opts.set_memtable_prefix_bloom_ratio(0.1);
            }
            if let (Cf::Default, Some(drop)) = (cf, &opts.default_cf_drop) {
                let drop = drop.0.clone();
                cf_opts.set_compaction_filter(
                    "flotilla-drop",
                    move |_level, k: &[u8], v: &[u8]| match drop(k, v) {
                        true => rocksdb::CompactionDecision::Remove,
                        false => rocksdb::CompactionDecision::Keep,
                    },
                );
            }
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        Ok(Engine {
            db: Arc::new(db),
            path: path.to_path_buf(),
            synced_writes: Arc::default(),
            memory: Arc::new(Memory {
                cache,
                cache_capacity: opts.block_cache_bytes,
                write_buffers,
                db_opts,
            }),
        })
    }

    /// A handle that does not keep the database open.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine {
            db: Arc::downgrade(&self.db),
            path: self.path.clone(),
            synced_writes: Arc::downgrade(&self.synced_writes),
            memory: Arc::downgrade(&self.memory),
        }
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty write batch for this database.
    pub fn write_batch(&self) -> WriteBatch {
        WriteBatch::new(self.db.clone())
    }

    /// Writes a batch atomically; with `sync`, waits until the write-ahead log is on disk.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch.into_inner(), &opts)?;
        if sync {
            self.synced_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies the database as it is now (every write so far, fsynced or not) into a new
    /// directory `path`: what a restart would find after a crash at this instant that kept
    /// the page cache. Tests use it to crash a store at a chosen point.
    pub fn checkpoint(&self, path: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(path)?;
        Ok(())
    }

    /// Writes every memtable to SST files, so that the next open replays no log.
    pub fn flush(&self) -> Result<()> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|cf| cf_handle(&self.db, *cf)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// Compacts all of `cf` (after flushing its memtable), running its compaction filter
    /// over every pair.
    pub fn compact(&self, cf: Cf) {
        self.db
            .compact_range_cf(cf_handle(&self.db, cf), None::<&[u8]>, None::<&[u8]>);
    }

    /// How many writes were made with `sync` since the database was opened.
    pub fn synced_writes(&self) -> u64 {
        self.synced_writes.load(Ordering::Relaxed)
    }

    /// Reads one value.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(cf_handle(&self.db, cf), key)?)
    }

    /// Reads and decodes one protobuf message.
    pub fn get_msg<M: Message>(&self, cf: Cf, key: &[u8]) -> Result<Option<M>> {
        decode(key, self.get(cf, key)?)
    }

    /// Calls `f` on every pair in `[start, end)` in key order until it returns `false`.
    /// The scan sees one consistent view.
    pub fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.snapshot().scan(cf, start, end, f)
    }

    /// Like [`Engine::scan`] but from the end of the range backwards.
    pub fn scan_reverse(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.snapshot().scan_reverse(cf, start, end, f)
    }

    /// A consistent point-in-time view of the whole database.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            inner: self.db.snapshot(),
            db: &self.db,
        }
    }

    /// Estimated bytes on disk and in memtables for keys in `[start, end)`.
    pub fn approximate_size(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        let range = rocksdb::Range::new(start, end);
        self.db
            .get_approximate_sizes_cf(cf_handle(&self.db, cf), &[range])
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// Copies SST files into the database. The files must not overlap data written since
    /// the range was cleared. They are copied, not moved, so that an apply interrupted by
    /// a crash can be redone from them.
    pub fn ingest(&self, cf: Cf, files: &[PathBuf]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(false);
        self.db
            .ingest_external_file_cf_opts(cf_handle(&self.db, cf), &opts, files.to_vec())?;
        Ok(())
    }
}

/// A consistent point-in-time view of the database, for reads and snapshot export.
pub struct Snapshot<'a> {
    inner: SnapshotWithThreadMode<'a, DB>,
    db: &'a DB,
}

impl Snapshot<'_> {
    /// Reads one value as of the snapshot.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.get_cf(cf_handle(self.db, cf), key)?)
    }

    /// Reads and decodes one protobuf message as of the snapshot.
    pub fn get_msg<M: Message>(&self, cf: Cf, key: &[u8]) -> Result<Option<M>> {
        decode(key, self.get(cf, key)?)
    }

    /// Calls `f` on every pair in `[start, end)` as of the snapshot until it returns `false`.
    pub fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let opts = bounded_read_opts(start, end);
        let iter = self.inner.iterator_cf_opt(
            cf_handle(self.db, cf),
            opts,
            IteratorMode::From(start, Direction::Forward),
        );
        drive(iter, f)
    }

    /// The pairs in `[start, end)` in key order, as of the snapshot: for reading several
    /// column families side by side.
    pub fn iter(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = Result<Pair>> + '_ {
        let opts = bounded_read_opts(start, end);
        self.inner
            .iterator_cf_opt(
                cf_handle(self.db, cf),
                opts,
                IteratorMode::From(start, Direction::Forward),
            )
            .map(|item| item.map_err(Error::from))
    }

    /// Like [`Snapshot::scan`] but from the end of the range backwards.
    pub fn scan_reverse(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let opts = bounded_read_opts(start, end);
        let iter = self
            .inner
            .iterator_cf_opt(cf_handle(self.db, cf), opts, IteratorMode::End);
        drive(iter, f)
    }
}

/// A key and its value, as an iterator yields them.
pub type Pair = (Box<[u8]>, Box<[u8]>);

fn bounded_read_opts(start: &[u8], end: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(start.to_vec());
    opts.set_iterate_upper_bound(end.to_vec());
    opts
}

fn drive<I>(iter: I, mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()>
where
    I: Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
{
    for item in iter {
        let (k, v) = item?;
        if !f(&k, &v)? {
            break;
        }
    }
    Ok(())
}

fn decode<M: Message>(key: &[u8], value: Option<Vec<u8>>) -> Result<Option<M>> {
    value
        .map(|v| {
            M::parse_from_bytes(&v).map_err(|source| Error::Corrupted {
                key: key.to_vec(),
                source,
            })
        })
        .transpose()
}
