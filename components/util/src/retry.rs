//! Waiting between retries inside a deadline: exponential delays with jitter (from
//! `backon`), so that many clients retrying after the same failure spread out, cut
//! short when the next wait would pass the deadline.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Retry delays for one operation and its deadline.
pub struct Retry {
    started: Instant,
    timeout: Duration,
    delays: ExponentialBackoff,
}

impl Retry {
    /// Delays from `min`, doubling up to `max`, jittered, for as long as `timeout` allows.
    pub fn new(timeout: Duration, min: Duration, max: Duration) -> Retry {
        Retry {
            started: Instant::now(),
            timeout,
            delays: ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_jitter()
                .without_max_times()
                .build(),
        }
    }

    /// The next wait, or `None` if waiting it would pass the deadline.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let d = self.delays.next()?;
        (self.started.elapsed() + d <= self.timeout).then_some(d)
    }

    /// Waits the next delay; `false` (at once) if the deadline would pass.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.timeout.saturating_sub(self.started.elapsed())
    }

    /// Time since the first try.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stop_at_the_deadline() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(40));
        let mut r = Retry::new(Duration::from_secs(3600), min, max);
        let delays: Vec<Duration> = (0..8).map(|_| r.next_delay().unwrap()).collect();
        // Jitter adds up to one more delay's worth.
        assert!(
            delays.iter().all(|d| *d >= min && *d <= max * 2),
            "{delays:?}"
        );
        assert!(delays[7] >= max, "{delays:?}");
        let mut none_left = Retry::new(Duration::ZERO, min, max);
        assert_eq!(none_left.next_delay(), None);
    }
}
