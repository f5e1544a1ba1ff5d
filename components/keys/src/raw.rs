//! How a raw value is stored: the user's bytes followed by its expiry, 8 bytes big-endian,
//! in whole seconds since the Unix epoch; 0 means it never expires (TiKV's layout with TTL
//! enabled). Every raw value carries the suffix, so no value can be mistaken for one
//! with an expiry.

/// The expiry of a value that never expires.
pub const NO_EXPIRY: u64 = 0;

/// Bytes the expiry adds to a stored value.
pub const SUFFIX_LEN: usize = 8;

/// `value` as stored, expiring at `expire_at` (seconds since the epoch; [`NO_EXPIRY`]).
pub fn encode(value: &[u8], expire_at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + SUFFIX_LEN);
    v.extend_from_slice(value);
    v.extend_from_slice(&expire_at.to_be_bytes());
    v
}

/// A stored raw value split into the user's bytes and the expiry; `None` if it is too
/// short to carry one (not written by this layout).
pub fn decode(stored: &[u8]) -> Option<(&[u8], u64)> {
    let split = stored.len().checked_sub(SUFFIX_LEN)?;
    let (value, suffix) = stored.split_at(split);
    let expire_at = u64::from_be_bytes(suffix.try_into().expect("eight bytes"));
    Some((value, expire_at))
}

/// Whether a value expiring at `expire_at` is still alive at `now` (seconds).
pub fn is_live(expire_at: u64, now: u64) -> bool {
    expire_at == NO_EXPIRY || now < expire_at
}

/// The user's bytes of a stored value alive at `now`; `None` if expired or malformed.
pub fn live_value(stored: &[u8], now: u64) -> Option<&[u8]> {
    decode(stored).and_then(|(v, at)| is_live(at, now).then_some(v))
}

/// The expiry of a value written at `now` with a time to live of `ttl` seconds (0: none).
pub fn expire_at(now: u64, ttl: u64) -> u64 {
    match ttl {
        0 => NO_EXPIRY,
        t => now.saturating_add(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_their_expiry() {
        for (value, at) in [
            (&b""[..], 0),
            (b"v", 7),
            (b"\x00\x00\x00\x00\x00\x00\x00\x00", u64::MAX),
        ] {
            let stored = encode(value, at);
            assert_eq!(decode(&stored), Some((value, at)));
        }
        assert_eq!(decode(b"short"), None, "too short to be ours");
        assert_eq!(
            live_value(&encode(b"v", 0), u64::MAX),
            Some(&b"v"[..]),
            "never expires"
        );
        assert_eq!(live_value(&encode(b"v", 10), 9), Some(&b"v"[..]));
        assert_eq!(
            live_value(&encode(b"v", 10), 10),
            None,
            "expired at its second"
        );
        assert_eq!(expire_at(100, 0), NO_EXPIRY);
        assert_eq!(expire_at(100, 5), 105);
        assert_eq!(expire_at(u64::MAX - 1, 5), u64::MAX);
    }
}
