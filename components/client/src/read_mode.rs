//! Where a read is served, chosen per request or as a client's default (`kvctl --read`).
//!
//! | mode | served by | guarantee |
//! | --- | --- | --- |
//! | `leader` | the leader, after a read index | linearizable |
//! | `follower` | a follower, after a read index from the leader (`replica_read`) | linearizable |
//! | `closest` | a replica in the client's zone, else the leader, as `follower` | linearizable |
//! | `stale=DURATION` | the closest replica alone, with no leader contact | at most that old; refused (and then served by the leader) past it |

use std::{fmt, str::FromStr, time::Duration};

use proto::kvrpcpb;

/// Where a read is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// The leader, after a read index round.
    #[default]
    Leader,
    /// A follower, after a read index from the leader.
    Follower,
    /// A replica in the client's own zone, else the leader.
    Closest,
    /// The closest replica alone, if its data is at most this old.
    Stale(Duration),
}

impl ReadMode {
    /// Sets the request flags that ask a replica to serve the read this way.
    pub(crate) fn stamp(&self, ctx: &mut kvrpcpb::Context) {
        match self {
            ReadMode::Leader => {}
            ReadMode::Follower | ReadMode::Closest => ctx.set_replica_read(true),
            ReadMode::Stale(d) => {
                ctx.set_stale_read(true);
                // Rounded up: a bound under a millisecond is still a bound.
                let ms = d.as_micros().div_ceil(1000);
                ctx.max_staleness_ms = ms.try_into().unwrap_or(u64::MAX);
            }
        }
    }
}

impl FromStr for ReadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "leader" => Ok(ReadMode::Leader),
            "follower" => Ok(ReadMode::Follower),
            "closest" => Ok(ReadMode::Closest),
            _ => {
                let d = s.strip_prefix("stale=").ok_or_else(|| {
                    format!("read mode {s:?}: want leader, follower, closest or stale=DURATION")
                })?;
                let d =
                    humantime::parse_duration(d).map_err(|e| format!("read mode {s:?}: {e}"))?;
                if d.is_zero() {
                    return Err(format!("read mode {s:?}: the staleness must be positive"));
                }
                Ok(ReadMode::Stale(d))
            }
        }
    }
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadMode::Leader => write!(f, "leader"),
            ReadMode::Follower => write!(f, "follower"),
            ReadMode::Closest => write!(f, "closest"),
            ReadMode::Stale(d) => write!(f, "stale={}", humantime::format_duration(*d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        for s in ["leader", "follower", "closest", "stale=5s", "stale=1m 30s"] {
            let m: ReadMode = s.parse().unwrap();
            assert_eq!(m.to_string(), s);
        }
        assert_eq!(
            "stale=250ms".parse(),
            Ok(ReadMode::Stale(Duration::from_millis(250)))
        );
        for bad in ["", "nearest", "stale=", "stale=0s", "stale=soon"] {
            assert!(bad.parse::<ReadMode>().is_err(), "{bad:?}");
        }
    }
}
