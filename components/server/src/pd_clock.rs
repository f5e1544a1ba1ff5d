//! What this store knows of PD's clock: the newest timestamp it fetched and when, so that
//! a request's timestamps are bounded without one PD call per request.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use txn::types::physical_ms;

use crate::{Error, Result};

/// PD is asked again after a timestamp that seems too far ahead at most this often, so
/// that a stream of hostile requests costs PD little.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(100);

/// PD's clock as this store last saw it, moving on with the local clock.
pub struct PdClock {
    pd: Arc<pd_client::PdClient>,
    max_drift: Duration,
    state: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The newest timestamp fetched, and when it arrived.
    last: Option<(u64, Instant)>,
    /// When PD was last asked.
    asked: Option<Instant>,
}

impl PdClock {
    /// A clock that refuses timestamps more than `max_drift` ahead of PD's.
    pub fn new(pd: Arc<pd_client::PdClient>, max_drift: Duration) -> Self {
        PdClock {
            pd,
            max_drift,
            state: Mutex::default(),
        }
    }

    /// Records a timestamp fetched from PD by a call sent at `asked`: PD's clock read at
    /// least `ts` then, so the estimate never runs behind by the call's latency.
    pub fn observe(&self, ts: u64, asked: Instant) {
        let mut s = self.state.lock();
        if s.last.is_none_or(|(seen, _)| ts > seen) {
            s.last = Some((ts, asked));
        }
    }

    /// PD's physical time in milliseconds as far as this store can vouch for it.
    fn now_ms(&self) -> Option<u64> {
        let s = self.state.lock();
        s.last
            .map(|(ts, at)| physical_ms(ts).saturating_add(at.elapsed().as_millis() as u64))
    }

    fn within(&self, ts: u64) -> bool {
        let drift = self.max_drift.as_millis() as u64;
        self.now_ms()
            .is_some_and(|now| physical_ms(ts) <= now.saturating_add(drift))
    }

    /// Refuses any of `fields`' timestamps (other than 0 and read-latest) more than
    /// `txn.max-ts-drift` ahead of PD's clock.
    pub async fn admit(&self, fields: &[(&str, u64)]) -> Result<()> {
        let Some(&(field, ts)) = fields
            .iter()
            .filter(|(_, t)| *t != u64::MAX)
            .max_by_key(|(_, t)| *t)
        else {
            return Ok(());
        };
        if self.within(ts) {
            return Ok(());
        }
        if self.may_ask() {
            let asked = Instant::now();
            self.observe(self.pd.get_ts().await?, asked);
            if self.within(ts) {
                return Ok(());
            }
        }
        Err(Error::InvalidRequest(format!(
            "{field} {ts} is more than txn.max-ts-drift ({:?}) ahead of PD's clock (at {} ms)",
            self.max_drift,
            self.now_ms().unwrap_or(0)
        )))
    }

    fn may_ask(&self) -> bool {
        let mut s = self.state.lock();
        // Until PD has answered once, every request may ask.
        let due = s.last.is_none()
            || s.asked
                .is_none_or(|at| at.elapsed() >= REFRESH_AT_MOST_EVERY);
        if due {
            s.asked = Some(Instant::now());
        }
        due
    }
}
