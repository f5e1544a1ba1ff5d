//! Failed logins, counted per user name and per client address: past
//! `auth.login-free-failures` in a row, each failure locks the name or address out for a
//! time that doubles from a second up to `auth.login-max-lockout`. A login that is locked
//! out is refused before its password is hashed, so a guessing loop costs the cluster
//! almost nothing and gets an answer only every few seconds.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Entries kept at most; past it, those not locked out are forgotten first.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// The counts, by `user:NAME` and `addr:ADDRESS`.
pub(crate) struct Limiter {
    free: u32,
    max_lockout: Duration,
    failures: HashMap<String, Failures>,
}

impl Limiter {
    pub(crate) fn new(free: u32, max_lockout: Duration) -> Limiter {
        Limiter {
            free,
            max_lockout,
            failures: HashMap::new(),
        }
    }

    fn keys(user: &str, addr: &str) -> [String; 2] {
        [format!("user:{user}"), format!("addr:{addr}")]
    }

    /// `Err(wait)` if `user` or `addr` is locked out at `now`.
    pub(crate) fn check(&self, user: &str, addr: &str, now: Instant) -> Result<(), Duration> {
        let wait = Self::keys(user, addr)
            .iter()
            .filter_map(|k| self.failures.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        wait.map_or(Ok(()), Err)
    }

    /// Counts a failed login (or a signup, which costs a hash too).
    pub(crate) fn failed(&mut self, user: &str, addr: &str, now: Instant) {
        if self.failures.len() >= MAX_ENTRIES {
            self.failures
                .retain(|_, f| f.locked_until.is_some_and(|u| u > now));
            // Still full of live lockouts: forget them rather than grow without bound.
            if self.failures.len() >= MAX_ENTRIES {
                self.failures.clear();
            }
        }
        for k in Self::keys(user, addr) {
            let f = self.failures.entry(k).or_insert(Failures {
                count: 0,
                locked_until: None,
            });
            f.count = f.count.saturating_add(1);
            if f.count > self.free {
                let doublings = (f.count - self.free - 1).min(20);
                let lockout = Duration::from_secs(1 << doublings).min(self.max_lockout);
                f.locked_until = Some(now + lockout);
            }
        }
    }

    /// A successful login clears the user's count (not the address's: logging into an
    /// account of one's own must not reset a guessing loop against others).
    pub(crate) fn succeeded(&mut self, user: &str) {
        self.failures.remove(&format!("user:{user}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_start_after_the_free_failures_and_double() {
        let mut l = Limiter::new(2, Duration::from_secs(8));
        let t = Instant::now();
        for _ in 0..2 {
            assert!(l.check("bob", "1.2.3.4", t).is_ok());
            l.failed("bob", "1.2.3.4", t);
        }
        assert!(l.check("bob", "1.2.3.4", t).is_ok(), "two free failures");
        l.failed("bob", "1.2.3.4", t);
        assert_eq!(
            l.check("bob", "5.6.7.8", t),
            Err(Duration::from_secs(1)),
            "per user"
        );
        assert_eq!(
            l.check("eve", "1.2.3.4", t),
            Err(Duration::from_secs(1)),
            "per address"
        );
        assert!(l.check("eve", "5.6.7.8", t).is_ok());
        for _ in 0..10 {
            l.failed("bob", "1.2.3.4", t);
        }
        assert_eq!(
            l.check("bob", "x", t),
            Err(Duration::from_secs(8)),
            "capped"
        );
        assert!(l.check("bob", "x", t + Duration::from_secs(9)).is_ok());
        l.succeeded("bob");
        assert!(l
            .check("bob", "5.6.7.8", t + Duration::from_secs(1))
            .is_ok());
        assert!(
            l.check("eve", "1.2.3.4", t).is_err(),
            "the address stays counted"
        );
    }
}
