//! The timestamp oracle: `physical_ms << 18 | logical`, strictly increasing, never at or
//! above a bound committed through the PD group ahead of time, so that neither a restart
//! nor a new leader (which starts above the last committed bound) hands out an older
//! timestamp.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keys::pd::TSO_KEY;
use parking_lot::Mutex;

use crate::{storage::Storage, Error, Result};

/// Bits of the logical part.
pub const LOGICAL_BITS: u32 = 18;
const MAX_LOGICAL: i64 = 1 << LOGICAL_BITS;
/// How far ahead of the clock the bound is saved.
const SAVE_AHEAD: Duration = Duration::from_secs(3);

/// Hands out timestamps.
pub struct Tso {
    storage: Storage,
    state: Mutex<State>,
}

struct State {
    physical: i64,
    logical: i64,
    saved_bound: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

impl Tso {
    /// Resumes above the bound saved by the previous run.
    pub fn new(storage: Storage) -> Result<Tso> {
        let saved = storage.get_u64(TSO_KEY)?.unwrap_or(0) as i64;
        let physical = now_ms().max(saved + 1);
        let saved_bound = physical + SAVE_AHEAD.as_millis() as i64;
        storage.put_u64(TSO_KEY, saved_bound as u64)?;
        crate::metrics::TSO_WINDOW.set(saved_bound);
        Ok(Tso {
            storage,
            state: Mutex::new(State {
                physical,
                logical: 0,
                saved_bound,
            }),
        })
    }

    /// Reserves `count` timestamps; returns the last one as (physical, logical). The
    /// caller owns logicals `logical - count + 1 ..= logical`.
    pub fn next(&self, count: u32) -> Result<(i64, i64)> {
        let count = count as i64;
        if count == 0 || count >= MAX_LOGICAL {
            return Err(Error::InvalidValue(format!(
                "tso count must be between 1 and {}",
                MAX_LOGICAL - 1
            )));
        }
        let mut s = self.state.lock();
        let now = now_ms();
        if now > s.physical {
            s.physical = now;
            s.logical = 0;
        }
        if s.logical + count >= MAX_LOGICAL {
            s.physical += 1;
            s.logical = 0;
        }
        if s.physical >= s.saved_bound {
            let bound = s.physical + SAVE_AHEAD.as_millis() as i64;
            self.storage.put_u64(TSO_KEY, bound as u64)?;
            crate::metrics::TSO_WINDOW.set(bound);
            s.saved_bound = bound;
        }
        s.logical += count;
        Ok((s.physical, s.logical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts((p, l): (i64, i64)) -> i64 {
        p << LOGICAL_BITS | l
    }

    #[test]
    fn timestamps_increase_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for _ in 0..3 {
            let tso = Tso::new(crate::storage::local::open(dir.path())).unwrap();
            for _ in 0..1000 {
                let t = ts(tso.next(3).unwrap());
                assert!(t > last, "{t} <= {last}");
                last = t;
            }
        }
        let tso = Tso::new(crate::storage::local::open(dir.path())).unwrap();
        assert!(tso.next(0).is_err());
    }
}
