//! Structured logging: slog to stderr, asynchronously, with a level from config.

use serde::{Deserialize, Serialize};
pub use slog::Logger;
use slog::{o, Drain};

/// How much to log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The normal operating level.
    #[default]
    Info,
    /// Everything, for debugging.
    Debug,
}

impl Level {
    fn slog(self) -> slog::Level {
        match self {
            Level::Error => slog::Level::Error,
            Level::Warn => slog::Level::Warning,
            Level::Info => slog::Level::Info,
            Level::Debug => slog::Level::Debug,
        }
    }
}

/// A logger that writes human-readable lines with fields to stderr.
pub fn new(level: Level) -> Logger {
    let decorator = slog_term::PlainDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain)
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    Logger::root(drain.filter_level(level.slog()).fuse(), o!())
}

/// A logger that drops everything, for tests that do not look at logs.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}

/// The `[log]` section of every process's config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LogConfig {
    /// How much to log.
    pub level: Level,
}
