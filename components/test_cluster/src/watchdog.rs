//! A bound on how long one test may run. A test that deadlocks would otherwise hold the
//! whole suite (and CI) until an outer timeout kills everything with no word of which
//! test it was; the watchdog names the test and aborts its binary instead, so the other
//! test binaries still run and report.

use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

/// Aborts the process if it is still armed after its limit; disarmed by dropping it.
pub struct Watchdog {
    _disarm: Sender<()>,
}

impl Watchdog {
    /// The limit for one cluster test: several times the slowest test on a loaded
    /// 2-core machine.
    pub const TEST_LIMIT: Duration = Duration::from_secs(300);

    /// Arms a watchdog for the current thread's test.
    pub fn arm(limit: Duration) -> Watchdog {
        let test = std::thread::current()
            .name()
            .unwrap_or("an unnamed test")
            .to_string();
        let (tx, rx) = bounded::<()>(0);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    eprintln!(
                        "watchdog: {test} still running after {limit:?}; aborting its test \
                         binary so that the suite fails instead of hanging"
                    );
                    std::process::abort();
                }
            })
            .expect("spawn watchdog thread");
        Watchdog { _disarm: tx }
    }
}
