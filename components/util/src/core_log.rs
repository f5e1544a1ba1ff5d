//! The gRPC core's own log lines, on stderr, at most one per call site per interval.
//!
//! The core reports a failed assertion (and every other fatal error) as one error line
//! and aborts at once: with that line dropped, a process dies by SIGABRT with nothing in
//! its log. So the lines are written synchronously (not through the asynchronous slog
//! drain, whose queue dies with the process). Other error lines come at a peer's pace (a
//! peer failing TLS handshakes in a loop), so each call site prints at most once per
//! [`SITE_INTERVAL`], and its next line says how many it held back.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// How often one call site may print.
pub const SITE_INTERVAL: Duration = Duration::from_secs(10);

/// When each call site last printed, and how many lines it held back since.
pub struct Limiter {
    sites: BTreeMap<String, (Instant, u64)>,
}

impl Limiter {
    /// No call site has printed yet.
    pub const fn new() -> Limiter {
        Limiter {
            sites: BTreeMap::new(),
        }
    }

    /// `Some(held)` if a line of `site` prints at `now` (`held`: the lines held back
    /// before it), `None` if it is held back.
    pub fn admit(&mut self, site: &str, now: Instant) -> Option<u64> {
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
                // Call sites are the core's source lines: a bounded set.
                self.sites.insert(site.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

struct CoreLog {
    limiter: Mutex<Limiter>,
}

static CORE_LOG: CoreLog = CoreLog {
    limiter: Mutex::new(Limiter::new()),
};

impl log::Log for CoreLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let site = format!(
            "{}:{}",
            record.file().unwrap_or(record.target()),
            record.line().unwrap_or(0)
        );
        // A poisoned lock still holds a usable map; this must never panic (it runs
        // inside the core's C callback).
        let admitted = CORE_LOG
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(&site, Instant::now());
        if let Some(held) = admitted {
            let line = render(record, &site, held, SystemTime::now());
            // One write, so that two threads' lines do not interleave.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// One stderr line: when (Unix seconds, as the core's own logger had them), the source,
/// the message, and the lines of this site held back before it.
fn render(record: &log::Record, site: &str, held: u64, now: SystemTime) -> String {
    let at = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let source = match record.module_path() {
        Some(m) if m.starts_with("grpcio") => "grpc core",
        Some(m) => m,
        None => record.target(),
    };
    let held = match held {
        0 => String::new(),
        n => format!(" ({n} more lines from here held back)"),
    };
    format!(
        "{}.{:06} {} {source} {site}: {}{held}\n",
        at.as_secs(),
        at.subsec_micros(),
        record.level(),
        record.args()
    )
}

/// Routes the gRPC core's error lines (and any other crate's `log` errors) to stderr as
/// above; call once, first thing in `main`.
pub fn core_logs_to_stderr() {
    // Only a second call in one process (tests) finds a logger installed: the first stays.
    let _ = log::set_logger(&CORE_LOG);
    log::set_max_level(log::LevelFilter::Error);
    grpcio::redirect_log();
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_line_names_its_source_and_what_was_held_back() {
        let args = format_args!("Handshake failed with fatal error SSL_ERROR_SSL.");
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Error)
            .module_path_static(Some("grpcio::log_util"))
            .build();
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042);
        assert_eq!(
            render(&record, "ssl.cc:1420", 3, at),
            "1700000000.000042 ERROR grpc core ssl.cc:1420: Handshake failed with fatal \
             error SSL_ERROR_SSL. (3 more lines from here held back)\n"
        );
    }
}
