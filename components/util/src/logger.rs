//! Structured logging: slog to stderr, asynchronously (synchronously for lines that may be
//! a process's last: `new_sync`), with a level and a format (text
//! for people, JSON lines for log collectors) from config or flags. Every line carries
//! its fields (region_id, peer_id, store_id, ...); user keys and values are logged only
//! at debug level.

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

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        match s {
            "error" => Ok(Level::Error),
            "warn" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(format!(
                "log level {s:?}: expected error, warn, info or debug"
            )),
        }
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One human-readable line per event: time, level, message, key=value fields.
    #[default]
    Text,
    /// One JSON object per line, with `ts`, `level`, `msg` and the fields.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("log format {s:?}: expected text or json")),
        }
    }
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

/// A logger to stderr at `cfg`'s level and in its format.
pub fn new(cfg: &LogConfig) -> Logger {
    new_to(cfg, std::io::stderr())
}

/// Like [`new`], writing to `out`.
pub fn new_to(cfg: &LogConfig, out: impl std::io::Write + Send + 'static) -> Logger {
    let drain = slog_async::Async::new(format(cfg, out))
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    Logger::root(drain.filter_level(cfg.level.slog()).fuse(), o!())
}

/// Like [`new_to`], but each line is written before the call returns, by the thread
/// that logs it: for lines that may be a process's last (the asynchronous queue dies
/// with the process). A writer that blocks blocks that thread.
pub fn new_sync(cfg: &LogConfig, out: impl std::io::Write + Send + 'static) -> Logger {
    // A poisoned lock only follows a panic, which has aborted the process already.
    let drain = std::sync::Mutex::new(format(cfg, out)).ignore_res();
    Logger::root(drain.filter_level(cfg.level.slog()).fuse(), o!())
}

/// `cfg`'s format, writing whole lines to `out`. A line that cannot be written (stderr
/// closed, `kvctl ... | head`) is dropped: a logger must not stop the process.
fn format(
    cfg: &LogConfig,
    out: impl std::io::Write + Send + 'static,
) -> Box<dyn Drain<Ok = (), Err = slog::Never> + Send> {
    // Formatters write a record in many small pieces: one write per line keeps lines
    // whole for readers and costs one syscall.
    let out = std::io::LineWriter::with_capacity(64 << 10, out);
    match cfg.format {
        Format::Text => {
            let decorator = slog_term::PlainDecorator::new(out);
            Box::new(slog_term::FullFormat::new(decorator).build().ignore_res())
        }
        Format::Json => Box::new(
            slog_json::Json::new(out)
                .add_default_keys()
                .set_newlines(true)
                .build()
                .ignore_res(),
        ),
    }
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
    /// text or json.
    pub format: Format,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Captured {
        /// What was written, one JSON value per line.
        pub(crate) fn json_lines(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_message_the_level_and_every_field() {
        let out = Captured::default();
        let cfg = LogConfig {
            level: "info".parse().unwrap(),
            format: "json".parse().unwrap(),
        };
        let log = new_to(&cfg, out.clone()).new(o!("store_id" => 1u64));
        slog::info!(log, "peer created"; "region_id" => 7u64, "peer_id" => 9u64);
        slog::debug!(log, "not at info level");
        drop(log); // flushes the async drain
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["msg"], "peer created");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["region_id"], 7);
        assert_eq!(l["peer_id"], 9);
        assert_eq!(l["store_id"], 1);
        assert!("yaml".parse::<Format>().is_err());
    }
}
