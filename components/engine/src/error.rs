use std::path::PathBuf;

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB refused an operation.
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    /// A stored value does not decode as the message it should hold.
    #[error("corrupted value under key {key:?}: {source}")]
    Corrupted {
        /// The key whose value is corrupted.
        key: Vec<u8>,
        /// Why it does not decode.
        source: protobuf::ProtobufError,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A snapshot file does not match its recorded checksum or size.
    #[error("snapshot file {path} is corrupted: {detail}")]
    BadSnapshotFile {
        /// The file.
        path: PathBuf,
        /// What does not match.
        detail: String,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
