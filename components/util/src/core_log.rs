//! The gRPC core's own log lines, in the process's log format, at most one per call site
//! per interval.
//!
//! The core reports a failed assertion (`GPR_ASSERT`, `grpc_core::Crash`) as one error
//! line and aborts at once: with that line dropped, a process died by SIGABRT with
//! nothing in its log. So the lines are written synchronously ([`logger::new_sync`]),
//! not through the asynchronous queue, which dies with the process. (The core's other
//! fatal paths, absl's checks among them, write to stderr themselves.) Its other error
//! lines come at a peer's pace (a peer failing TLS handshakes in a loop), so each call
//! site prints at most once per [`SITE_INTERVAL`], and its next line says how many it
//! held back. The core logs errors only: `GRPC_VERBOSITY` has no effect.

use std::{
    collections::BTreeMap,
    ffi::CString,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::logger::{self, LogConfig, Logger};

/// How often one call site may print.
pub const SITE_INTERVAL: Duration = Duration::from_secs(10);

/// When each call site last printed, and how many lines it held back since.
struct Limiter {
    sites: BTreeMap<String, (Instant, u64)>,
}

impl Limiter {
    const fn new() -> Limiter {
        Limiter {
            sites: BTreeMap::new(),
        }
    }

    /// `Some(held)` if a line of `site` prints at `now` (`held`: the lines held back
    /// before it), `None` if it is held back.
    fn admit(&mut self, site: &str, now: Instant) -> Option<u64> {
        match self.sites.get_mut(site) {
            Some((printed, held)) if now.duration_since(*printed) < SITE_INTERVAL => {
                *held += 1;
                None
            }
            Some((printed, held)) => {
                *printed = now;
                Some(std::mem::take(held))
            }
            None => {
                // Sites are source lines of the binary: a set bounded by its code.
                self.sites.insert(site.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

struct CoreLog {
    limiter: Mutex<Limiter>,
    logger: OnceLock<Logger>,
}

static CORE_LOG: CoreLog = CoreLog {
    limiter: Mutex::new(Limiter::new()),
    logger: OnceLock::new(),
};

impl log::Log for CoreLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record) {
        let Some(logger) = self.logger.get() else {
            return;
        };
        if !self.enabled(record.metadata()) {
            return;
        }
        // Limited by the full path (files of one name live in several directories);
        // shown by the file name alone, as the core's own logger did.
        let path = record.file().unwrap_or(record.target());
        let line = record.line().unwrap_or(0);
        let key = format!("{path}:{line}");
        let site = format!("{}:{line}", path.rsplit('/').next().unwrap_or(path));
        // This runs inside the core's C callback and must not panic: a poisoned lock
        // still holds a usable map.
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(&key, Instant::now());
        let Some(held_back) = admitted else {
            return;
        };
        let source = match record.module_path() {
            Some(m) if m.starts_with("grpcio") => "grpc core",
            Some(m) => m,
            None => record.target(),
        };
        let msg = record.args().to_string();
        slog::error!(logger, "{}", msg.trim_end();
            "source" => source, "site" => &site, "held_back" => held_back);
    }

    fn flush(&self) {}
}

/// Routes the gRPC core's error lines (and any other crate's `log` errors) to stderr in
/// `cfg`'s format, as above. Call once, before the first gRPC environment exists; a
/// second call changes nothing.
pub fn core_logs_to_stderr(cfg: &LogConfig) {
    if CORE_LOG
        .logger
        .set(logger::new_sync(cfg, std::io::stderr()))
        .is_err()
    {
        return;
    }
    // Nothing else in the process installs a `log` logger.
    let _ = log::set_logger(&CORE_LOG);
    log::set_max_level(log::LevelFilter::Error);
    grpcio::redirect_log();
}

/// Fails as a gRPC core assertion does (its line through the core's logger, then
/// abort), for the test that such a crash leaves its line in the log.
#[doc(hidden)]
pub fn fail_like_a_core_assertion(what: &str) -> ! {
    let file = CString::new(file!()).expect("a source path has no NUL");
    let what = CString::new(what.replace('\0', " ")).expect("NULs were replaced");
    // SAFETY: two NUL-terminated strings that live past the call, which does not return.
    unsafe { grpcio_sys::gpr_assertion_failed(file.as_ptr(), line!() as i32, what.as_ptr()) };
    unreachable!("gpr_assertion_failed aborts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logger::tests::Captured;

    #[test]
    fn a_site_prints_once_per_interval_and_counts_what_it_held_back() {
        let mut l = Limiter::new();
        let t0 = Instant::now();
        assert_eq!(l.admit("ssl.cc:1420", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.admit("ssl.cc:1420", t0 + Duration::from_millis(i)), None);
        }
        // Another site, such as a failed assertion, is not held back by the first.
        assert_eq!(
            l.admit("crash.cc:31", t0 + Duration::from_millis(6)),
            Some(0)
        );
        assert_eq!(l.admit("ssl.cc:1420", t0 + SITE_INTERVAL), Some(5));
        assert_eq!(
            l.admit("ssl.cc:1420", t0 + SITE_INTERVAL + Duration::from_millis(1)),
            None
        );
    }

    #[test]
    fn a_core_line_is_written_at_once_in_the_log_format() {
        let out = Captured::default();
        let cfg = LogConfig {
            format: "json".parse().unwrap(),
            ..LogConfig::default()
        };
        let core = CoreLog {
            limiter: Mutex::new(Limiter::new()),
            logger: OnceLock::from(logger::new_sync(&cfg, out.clone())),
        };
        let line = |msg: &str| {
            log::Log::log(
                &core,
                &log::Record::builder()
                    .args(format_args!("{msg}"))
                    .level(log::Level::Error)
                    .file(Some("/build/grpc/src/core/tsi/ssl_transport_security.cc"))
                    .line(Some(1420))
                    .module_path(Some("grpcio::log_util"))
                    .build(),
            )
        };
        line("Handshake failed with fatal error SSL_ERROR_SSL.\n");
        line("held back");
        // No flush, no drop: the line is there when the call returns.
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["msg"], "Handshake failed with fatal error SSL_ERROR_SSL.");
        assert_eq!(l["level"], "ERRO");
        assert_eq!(l["source"], "grpc core");
        assert_eq!(l["site"], "ssl_transport_security.cc:1420");
        assert_eq!(l["held_back"], 0);
    }
}
