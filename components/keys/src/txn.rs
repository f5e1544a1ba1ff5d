//! Transactional (MVCC) keys, laid out as TiKV lays them out.
//!
//! A transactional user key is stored memcomparable-encoded ([`encode_bytes`]): TiKV's
//! transactional clients route by the encoded key and decode the region boundaries PD
//! gives them, so every region boundary must be a valid encoding (or empty), and the
//! store compares a transactional key with its region's range in encoded form. Raw keys
//! are stored as they are, in another column family; a region's range covers both.
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

/// Whether `boundary` may be a region boundary: empty, or exactly one encoded key.
pub fn is_encoded_boundary(boundary: &[u8]) -> bool {
    boundary.is_empty() || decode_bytes(boundary).is_ok_and(|(_, n)| n == boundary.len())
}

/// The region boundary for a split wanted at `key`: its encoding, which sorts after
/// `key` itself and every raw key that is `key` followed by zero bytes only.
pub fn split_boundary(key: &[u8]) -> Vec<u8> {
    if is_encoded_boundary(key) {
        key.to_vec()
    } else {
        encode_bytes(key)
    }
}

/// The lock CF key of a transactional user key.
pub fn lock_key(user_key: &[u8]) -> Vec<u8> {
    data_key(&encode_bytes(user_key))
}

/// The write CF key of `user_key`'s version committed at `commit_ts`.
pub fn write_key(user_key: &[u8], commit_ts: u64) -> Vec<u8> {
    versioned(user_key, commit_ts)
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
        assert!(!is_encoded_boundary(b"h"));
        assert!(is_encoded_boundary(b""));
        assert!(is_encoded_boundary(&encode_bytes(b"h")));
        assert!(!is_encoded_boundary(
            &[encode_bytes(b"h"), vec![1]].concat()
        ));
    }

    #[test]
    fn a_split_boundary_sorts_just_after_its_key() {
        let b = split_boundary(b"h");
        assert!(b"h".as_slice() < b.as_slice() && b.as_slice() < b"h\x01".as_slice());
        assert_eq!(split_boundary(&b), b, "an encoded boundary stays as it is");
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
            prop_assert!(is_encoded_boundary(&ea));
        }
    }
}
