//! Transactional (MVCC) keys, laid out as TiKV lays them out.
//!
//! A transactional user key is stored memcomparable-encoded ([`encode_bytes`]); raw keys
//! are stored as they are, in another column family, and one region's range covers
//! both. Region boundaries are plain bytes, compared with raw keys and with encoded
//! transactional keys alike. TiKV's transactional clients route by the encoded key and
//! decode the boundaries PD gives them, so PD shows them a region's boundaries rounded up
//! to encodings ([`ceil_encoded`]): exactly the transactional keys the region holds. A
//! boundary never falls between the versions of one key ([`split_point`]).
//!
//! - lock CF: `z + enc(key)` -> lock;
//! - write CF: `z + enc(key) + !commit_ts` -> commit record (newest version first);
//! - txn value CF: `z + enc(key) + !start_ts` -> a value too long to inline.

use crate::{data_key, Error, Result};

/// Bytes per group of the memcomparable encoding.
const GROUP: usize = 8;
/// The marker after a full group: more groups follow.
const MARKER: u8 = 0xff;
/// Length of the descending timestamp suffix of a versioned key.
pub const TS_LEN: usize = 8;

/// Encodes `key` so that byte order of encodings is the order of keys, and no encoding
/// is a prefix of another: groups of 8 bytes, each followed by 0xff minus the number of
/// zero bytes padding it (only the last group is padded, by 1 to 8).
pub fn encode_bytes(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((key.len() / GROUP + 1) * (GROUP + 1));
    let mut chunks = key.chunks_exact(GROUP);
    for chunk in &mut chunks {
        out.extend_from_slice(chunk);
        out.push(MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP - rest.len();
    out.extend_from_slice(rest);
    out.extend(std::iter::repeat_n(0, pad));
    out.push(MARKER - pad as u8);
    out
}

/// Decodes the encoded key at the start of `bytes`; returns it and how many bytes it
/// took. Fails on anything [`encode_bytes`] cannot have produced.
pub fn decode_bytes(bytes: &[u8]) -> Result<(Vec<u8>, usize)> {
    let invalid = || Error::InvalidKey {
        kind: "memcomparable-encoded",
        key: bytes.to_vec(),
    };
    let mut key = Vec::with_capacity(bytes.len() / (GROUP + 1) * GROUP);
    let mut at = 0;
    loop {
        let group = bytes.get(at..at + GROUP + 1).ok_or_else(invalid)?;
        at += GROUP + 1;
        let pad = (MARKER - group[GROUP]) as usize;
        if pad == 0 {
            key.extend_from_slice(&group[..GROUP]);
            continue;
        }
        if pad > GROUP || group[GROUP - pad..GROUP].iter().any(|b| *b != 0) {
            return Err(invalid());
        }
        key.extend_from_slice(&group[..GROUP - pad]);
        return Ok((key, at));
    }
}

/// Where a region may be cut at or just before `key` without separating the versions
/// of one transactional key: `key` itself, or, if `key` extends a complete encoding
/// (as every versioned key does), that encoding.
pub fn split_point(key: &[u8]) -> &[u8] {
    match decode_bytes(key) {
        Ok((_, n)) if n < key.len() => &key[..n],
        _ => key,
    }
}

/// The smallest encoding that sorts at or after `bound`. A region `[start, end)` holds
/// exactly the transactional keys whose encodings are in
/// `[ceil_encoded(start), ceil_encoded(end))`: that is the range a transactional client,
/// which decodes region boundaries, is shown. (`end` empty means unbounded.)
pub fn ceil_encoded(bound: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bound.len() + 2 * (GROUP + 1));
    let mut at = 0;
    loop {
        let rest = &bound[at..];
        let mut data = [0u8; GROUP];
        if rest.len() <= GROUP {
            // `bound` ends inside this group: it is a prefix of the smallest group
            // starting with its bytes.
            data[..rest.len()].copy_from_slice(rest);
            close_group(&mut out, data);
            return out;
        }
        data.copy_from_slice(&rest[..GROUP]);
        let marker = rest[GROUP];
        let zeros = data.iter().rev().take_while(|b| **b == 0).count();
        let lowest_final = MARKER - zeros as u8;
        if marker == MARKER {
            out.extend_from_slice(&rest[..=GROUP]);
            at += GROUP + 1;
        } else if zeros > 0 && marker >= lowest_final {
            // A complete encoding: `bound` itself, or, if more bytes follow, the
            // encoding after it (one byte of padding less).
            out.extend_from_slice(&data);
            if rest.len() == GROUP + 1 {
                out.push(marker);
            } else if marker + 1 < MARKER {
                out.push(marker + 1);
            } else {
                out.push(MARKER);
                close_group(&mut out, [0; GROUP]);
            }
            return out;
        } else {
            // No encoding has this group's bytes with this marker; every valid marker
            // for them is higher.
            close_group(&mut out, data);
            return out;
        }
    }
}

/// Appends the smallest final group (or full group plus empty final group) holding `data`.
fn close_group(out: &mut Vec<u8>, data: [u8; GROUP]) {
    out.extend_from_slice(&data);
    let zeros = data.iter().rev().take_while(|b| **b == 0).count();
    if zeros == 0 {
        out.push(MARKER);
        out.extend_from_slice(&[0; GROUP]);
        out.push(MARKER - GROUP as u8);
    } else {
        out.push(MARKER - zeros as u8);
    }
}

/// Whether `bytes` is exactly one encoded key.
pub fn is_encoded(bytes: &[u8]) -> bool {
    decode_bytes(bytes).is_ok_and(|(_, n)| n == bytes.len())
}

/// The lock CF key of a transactional user key.
pub fn lock_key(user_key: &[u8]) -> Vec<u8> {
    data_key(&encode_bytes(user_key))
}

/// The write CF key of `user_key`'s version committed at `commit_ts`.
pub fn write_key(user_key: &[u8], commit_ts: u64) -> Vec<u8> {
    versioned(user_key, commit_ts)
}

/// The write CF key of `user_key`'s GC fence: at commit ts 0, after every version of
/// the key, so that a walk of its versions meets it last.
pub fn gc_fence_key(user_key: &[u8]) -> Vec<u8> {
    versioned(user_key, 0)
}

/// The txn value CF key of the value `user_key` was given by the transaction that
/// started at `start_ts`.
pub fn value_key(user_key: &[u8], start_ts: u64) -> Vec<u8> {
    versioned(user_key, start_ts)
}

fn versioned(user_key: &[u8], ts: u64) -> Vec<u8> {
    let mut k = lock_key(user_key);
    k.extend_from_slice(&(!ts).to_be_bytes());
    k
}

/// A key past every version of `user_key` and before the next user key's: an exclusive
/// scan bound.
pub fn after_versions(user_key: &[u8]) -> Vec<u8> {
    let mut end = lock_key(user_key);
    end.extend_from_slice(&[0xff; TS_LEN + 1]);
    end
}

/// Splits a write or txn value CF key into its lock key (`z + enc(key)`, the part every
/// version shares) and its timestamp.
pub fn split_versioned(key: &[u8]) -> Result<(&[u8], u64)> {
    if key.len() < 1 + GROUP + 1 + TS_LEN {
        return Err(Error::InvalidKey {
            kind: "versioned",
            key: key.to_vec(),
        });
    }
    let (prefix, ts) = key.split_at(key.len() - TS_LEN);
    let ts = u64::from_be_bytes(ts.try_into().expect("TS_LEN bytes"));
    Ok((prefix, !ts))
}

/// The user key of a lock key or of a versioned key's shared part.
pub fn user_key(lock_key: &[u8]) -> Result<Vec<u8>> {
    let enc = crate::origin_key(lock_key)?;
    let (key, n) = decode_bytes(enc)?;
    if n != enc.len() {
        return Err(Error::InvalidKey {
            kind: "lock",
            key: lock_key.to_vec(),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn encoding_matches_tikv_layout() {
        assert_eq!(encode_bytes(b""), [0, 0, 0, 0, 0, 0, 0, 0, 0xf7]);
        assert_eq!(encode_bytes(b"abc"), *b"abc\0\0\0\0\0\xfa");
        assert_eq!(
            encode_bytes(b"12345678"),
            *b"12345678\xff\0\0\0\0\0\0\0\0\xf7"
        );
    }

    #[test]
    fn bad_encodings_are_refused() {
        for bad in [
            &b""[..],
            b"abc",
            b"abc\0\0\0\0\x01\xfa", // padding must be zeros
            b"abc\0\0\0\0\0\x00",   // marker says 255 bytes of padding
            b"12345678\xff",        // a full group with nothing after
        ] {
            assert!(decode_bytes(bad).is_err(), "{bad:?}");
        }
        assert!(!is_encoded(b"h"));
        assert!(is_encoded(&encode_bytes(b"h")));
        assert!(!is_encoded(&[encode_bytes(b"h"), vec![1]].concat()));
    }

    #[test]
    fn a_split_point_never_falls_between_versions() {
        let k = lock_key(b"k");
        let enc = &k[1..];
        assert_eq!(split_point(&write_key(b"k", 7)[1..]), enc);
        assert_eq!(split_point(enc), enc);
        assert_eq!(split_point(b"plain raw key"), b"plain raw key");
    }

    #[test]
    fn ceil_encoded_rounds_up_to_an_encoding() {
        assert_eq!(ceil_encoded(b""), encode_bytes(b""));
        assert_eq!(ceil_encoded(b"h"), encode_bytes(b"h"));
        assert_eq!(ceil_encoded(&encode_bytes(b"h")), encode_bytes(b"h"));
        // Past "12345678" + 0x00 there is no room below the full group's marker.
        assert_eq!(ceil_encoded(b"12345678\x00"), encode_bytes(b"12345678"));
        assert_eq!(ceil_encoded(b"12345678a"), encode_bytes(b"12345678"));
    }

    #[test]
    fn versions_sort_newest_first_and_split_back() {
        let (old, new) = (write_key(b"k", 5), write_key(b"k", 9));
        assert!(new < old);
        assert!(
            write_key(b"k", 1) < lock_key(b"k\0"),
            "versions of one key stay together"
        );
        let (prefix, ts) = split_versioned(&new).unwrap();
        assert_eq!((prefix, ts), (lock_key(b"k").as_slice(), 9));
        assert_eq!(user_key(prefix).unwrap(), b"k");
        assert!(split_versioned(b"zk").is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_keeps_order(a in proptest::collection::vec(any::<u8>(), 0..40),
                                               b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (ea, eb) = (encode_bytes(&a), encode_bytes(&b));
            prop_assert_eq!(decode_bytes(&ea).unwrap(), (a.clone(), ea.len()));
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            prop_assert!(is_encoded(&ea));
        }

        #[test]
        fn ceil_encoded_is_the_least_encoding_at_or_after(
            bound in proptest::collection::vec(edge_byte(), 0..30),
            keys in proptest::collection::vec(proptest::collection::vec(edge_byte(), 0..20), 1..40),
        ) {
            let ceil = ceil_encoded(&bound);
            prop_assert!(is_encoded(&ceil), "{:?} -> {:?}", bound, ceil);
            prop_assert!(ceil >= bound);
            for k in keys {
                let e = encode_bytes(&k);
                prop_assert_eq!(e >= bound, e >= ceil, "{:?} {:?} {:?}", bound, ceil, e);
            }
        }
    }

    /// Bytes that matter to the encoding: zero padding, markers, and ordinary data.
    fn edge_byte() -> impl Strategy<Value = u8> {
        prop_oneof![Just(0u8), 0xf6u8..=0xff, Just(b'a'), Just(b'b')]
    }
}
