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
    WriteOptions, DB,
};

use crate::{Cf, Error, Result, WriteBatch};

/// A store's database. Cheap to clone; every clone is the same database.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    path: PathBuf,
    /// Writes made with `sync`, so that tests can see that an fsync the design needs
    /// happened (a dropped fsync is otherwise invisible until a power loss).
    synced_writes: Arc<AtomicU64>,
}

pub(crate) fn cf_handle(db: &DB, cf: Cf) -> &ColumnFamily {
    db.cf_handle(cf.name())
        .expect("every column family is created when the database opens")
}

impl Engine {
    /// Opens (creating if needed) the database at `path` with every column family.
    pub fn open(path: &Path) -> Result<Engine> {
        let cache = Cache::new_lru_cache(128 << 20);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        let cfs = Cf::ALL.iter().map(|&cf| {
            let mut block = BlockBasedOptions::default();
            block.set_block_cache(&cache);
            block.set_bloom_filter(10.0, false);
            let mut opts = Options::default();
            opts.set_block_based_table_factory(&block);
            opts.set_compression_type(DBCompressionType::Lz4);
            opts.set_bottommost_compression_type(DBCompressionType::Zstd);
            ColumnFamilyDescriptor::new(cf.name(), opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        Ok(Engine {
            db: Arc::new(db),
            path: path.to_path_buf(),
            synced_writes: Arc::default(),
        })
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
