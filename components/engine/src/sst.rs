//! SST files: how a region's data leaves one store and enters another.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use rocksdb::{Options, SstFileWriter};

use crate::{Cf, Error, Result, Snapshot};

/// One exported SST file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SstMeta {
    /// The column family its pairs belong to.
    pub cf: Cf,
    /// Where it is.
    pub path: PathBuf,
    /// Its length in bytes.
    pub size: u64,
    /// CRC32 of its bytes.
    pub checksum: u32,
    /// How many pairs it holds.
    pub keys: u64,
}

impl Snapshot<'_> {
    /// Writes every pair of `cf` in `[start, end)` into a new SST file at `path`.
    /// Returns `None` (and writes nothing) when the range is empty.
    pub fn export_sst(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        path: &Path,
    ) -> Result<Option<SstMeta>> {
        let opts = Options::default();
        let mut writer = SstFileWriter::create(&opts);
        let mut keys = 0u64;
        self.scan(cf, start, end, |k, v| {
            // Opened on the first pair: RocksDB cannot finish an empty SST.
            if keys == 0 {
                writer.open(path)?;
            }
            writer.put(k, v)?;
            keys += 1;
            Ok(true)
        })?;
        if keys == 0 {
            return Ok(None);
        }
        writer.finish()?;
        let (size, checksum) = file_checksum(path)?;
        Ok(Some(SstMeta {
            cf,
            path: path.to_path_buf(),
            size,
            checksum,
            keys,
        }))
    }
}

/// Size and CRC32 of a file's bytes.
pub fn file_checksum(path: &Path) -> Result<(u64, u32)> {
    let mut file = File::open(path).map_err(Error::io(path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize()))
}
