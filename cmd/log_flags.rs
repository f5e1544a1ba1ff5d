//! The logging flags both servers take (kv-server, pd-server). Here rather than in `util`,
//! which the client library links, so that clap stays out of the library.

use util::logger::{Format, Level, LogConfig};

/// The logging flags every server takes; they override the config file's `[log]`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogFlags {
    /// error, warn, info or debug.
    #[arg(long)]
    pub log_level: Option<Level>,
    /// text (human-readable lines) or json (one object per line).
    #[arg(long)]
    pub log_format: Option<Format>,
}

impl LogFlags {
    /// Sets what the flags give in `cfg`.
    pub fn apply(&self, cfg: &mut LogConfig) {
        if let Some(l) = self.log_level {
            cfg.level = l;
        }
        if let Some(f) = self.log_format {
            cfg.format = f;
        }
    }
}
