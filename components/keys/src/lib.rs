//! Every key encoding Flotilla writes to RocksDB, in one place.
//!
//! Two disjoint spaces share the store's RocksDB:
//! - user data, under [`DATA_PREFIX`] (`'z'`), in the data column families;
//! - local (per-store and per-region) metadata, under [`LOCAL_PREFIX`] (`0x01`), in the raft
//!   column family.
//!
//! Per-region local keys sort by region id, then by kind, then by index, so that one region's
//! Raft log is one contiguous range and can be deleted or scanned as such.
//!
//! This crate knows nothing of Raft, RocksDB or the wire protocol: it only lays out bytes.

use std::ops::Range;

#[cfg(test)]
mod properties;
pub mod raw;
pub mod txn;

/// First byte of every local (non-user) key.
pub const LOCAL_PREFIX: u8 = 0x01;
/// First byte of every user data key.
pub const DATA_PREFIX: u8 = b'z';
/// The smallest data key: the encoded empty user key.
pub const DATA_MIN_KEY: &[u8] = &[DATA_PREFIX];
/// One past every data key: what an empty (unbounded) region end key encodes to.
pub const DATA_MAX_KEY: &[u8] = &[DATA_PREFIX + 1];

/// Where this store's identity (cluster id, store id) is kept.
pub const STORE_IDENT_KEY: &[u8] = &[LOCAL_PREFIX, 0x01];
/// Where a store records the layout of its raw values ([`raw`]); a store that joined a
/// cluster before raw values carried their expiry has none.
pub const RAW_FORMAT_KEY: &[u8] = &[LOCAL_PREFIX, 0x05];
/// The layout of raw values this build writes: [`raw`], an expiry on every value.
pub const RAW_FORMAT_WITH_EXPIRY: &[u8] = b"raw-v2-expiry";

const REGION_RAFT_PREFIX: u8 = 0x02;
const REGION_META_PREFIX: u8 = 0x03;
const REGION_SESSION_PREFIX: u8 = 0x04;

const RAFT_LOG_SUFFIX: u8 = 0x01;
const RAFT_STATE_SUFFIX: u8 = 0x02;
const APPLY_STATE_SUFFIX: u8 = 0x03;
const REGION_STATE_SUFFIX: u8 = 0x01;
const SESSION_TABLE_SUFFIX: u8 = 0x01;
const SESSION_CLIENT_SUFFIX: u8 = 0x02;

/// Length of a session key: prefix (2) + region id (8) + suffix (1) + client id (8).
pub const SESSION_CLIENT_KEY_LEN: usize = 19;

/// Length of a Raft log key: prefix (2) + region id (8) + suffix (1) + index (8).
pub const RAFT_LOG_KEY_LEN: usize = 19;

/// Errors from decoding a key this crate did not produce.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The key does not have the layout the caller expected.
    #[error("invalid {kind} key {key:?}")]
    InvalidKey {
        /// What kind of key was expected.
        kind: &'static str,
        /// The offending bytes.
        key: Vec<u8>,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Encodes a user key as stored in the data column families.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(key.len() + 1);
    v.push(DATA_PREFIX);
    v.extend_from_slice(key);
    v
}

/// Encodes a region end key: an empty end key means "to the end of the key space".
pub fn data_end_key(region_end_key: &[u8]) -> Vec<u8> {
    if region_end_key.is_empty() {
        DATA_MAX_KEY.to_vec()
    } else {
        data_key(region_end_key)
    }
}

/// Whether two key ranges share a key; each is `[start, end)` in user keys, non-empty,
/// an empty end meaning the end of the key space.
pub fn ranges_overlap(a_start: &[u8], a_end: &[u8], b_start: &[u8], b_end: &[u8]) -> bool {
    let before = |end: &[u8], start: &[u8]| !end.is_empty() && end <= start;
    !before(a_end, b_start) && !before(b_end, a_start)
}

/// Recovers the user key from a data key.
pub fn origin_key(data_key: &[u8]) -> Result<&[u8]> {
    match data_key.split_first() {
        Some((&DATA_PREFIX, rest)) => Ok(rest),
        _ => Err(Error::InvalidKey {
            kind: "data",
            key: data_key.to_vec(),
        }),
    }
}

fn region_key(prefix: u8, region_id: u64, suffix: u8) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = LOCAL_PREFIX;
    k[1] = prefix;
    k[2..10].copy_from_slice(&region_id.to_be_bytes());
    k[10] = suffix;
    k
}

/// The key of entry `index` of region `region_id`'s Raft log.
pub fn raft_log_key(region_id: u64, index: u64) -> [u8; RAFT_LOG_KEY_LEN] {
    let mut k = [0u8; RAFT_LOG_KEY_LEN];
    k[..11].copy_from_slice(&region_key(REGION_RAFT_PREFIX, region_id, RAFT_LOG_SUFFIX));
    k[11..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log index encoded in a Raft log key.
pub fn raft_log_index(key: &[u8]) -> Result<u64> {
    let invalid = || Error::InvalidKey {
        kind: "raft log",
        key: key.to_vec(),
    };
    if key.len() != RAFT_LOG_KEY_LEN || key[..2] != [LOCAL_PREFIX, REGION_RAFT_PREFIX] {
        return Err(invalid());
    }
    let index: [u8; 8] = key[11..].try_into().map_err(|_| invalid())?;
    Ok(u64::from_be_bytes(index))
}

/// Keys `[from, to)` of region `region_id`'s Raft log.
pub fn raft_log_range(region_id: u64, from: u64, to: u64) -> Range<[u8; RAFT_LOG_KEY_LEN]> {
    raft_log_key(region_id, from)..raft_log_key(region_id, to)
}

/// Every key of region `region_id`'s Raft log, and nothing else.
pub fn raft_log_all_range(region_id: u64) -> Range<[u8; 11]> {
    region_key(REGION_RAFT_PREFIX, region_id, RAFT_LOG_SUFFIX)
        ..region_key(REGION_RAFT_PREFIX, region_id, RAFT_LOG_SUFFIX + 1)
}

/// Where a region's Raft hard state and last log index are kept.
pub fn raft_state_key(region_id: u64) -> [u8; 11] {
    region_key(REGION_RAFT_PREFIX, region_id, RAFT_STATE_SUFFIX)
}

/// Where a region's apply progress is kept (written with the data it applies).
pub fn apply_state_key(region_id: u64) -> [u8; 11] {
    region_key(REGION_RAFT_PREFIX, region_id, APPLY_STATE_SUFFIX)
}

/// Where a region's range, epoch, peers and peer state are kept.
pub fn region_state_key(region_id: u64) -> [u8; 11] {
    region_key(REGION_META_PREFIX, region_id, REGION_STATE_SUFFIX)
}

/// Every region-state key on a store, for loading all peers at start-up.
pub fn region_state_range() -> Range<[u8; 2]> {
    [LOCAL_PREFIX, REGION_META_PREFIX]..[LOCAL_PREFIX, REGION_META_PREFIX + 1]
}

/// The region id in a region-state key.
pub fn region_id_of_state_key(key: &[u8]) -> Result<u64> {
    if key.len() != 11 || key[..2] != [LOCAL_PREFIX, REGION_META_PREFIX] {
        return Err(Error::InvalidKey {
            kind: "region state",
            key: key.to_vec(),
        });
    }
    Ok(u64::from_be_bytes(key[2..10].try_into().expect("8 bytes")))
}

/// Every Raft key (log, hard state, apply state) of one region.
pub fn region_raft_range(region_id: u64) -> Range<[u8; 10]> {
    let mut start = [0u8; 10];
    start[0] = LOCAL_PREFIX;
    start[1] = REGION_RAFT_PREFIX;
    start[2..].copy_from_slice(&region_id.to_be_bytes());
    let mut end = start;
    end[2..].copy_from_slice(&(region_id + 1).to_be_bytes());
    start..end
}

/// Where a region's client-session table keeps its own state (clock, expiry).
pub fn session_table_key(region_id: u64) -> [u8; 11] {
    region_key(REGION_SESSION_PREFIX, region_id, SESSION_TABLE_SUFFIX)
}

/// Where a region keeps what it remembers of client `client_id`'s session.
pub fn session_client_key(region_id: u64, client_id: u64) -> [u8; SESSION_CLIENT_KEY_LEN] {
    let mut k = [0u8; SESSION_CLIENT_KEY_LEN];
    k[..11].copy_from_slice(&region_key(
        REGION_SESSION_PREFIX,
        region_id,
        SESSION_CLIENT_SUFFIX,
    ));
    k[11..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// Every client-session key of one region.
pub fn session_client_range(region_id: u64) -> Range<[u8; 11]> {
    region_key(REGION_SESSION_PREFIX, region_id, SESSION_CLIENT_SUFFIX)
        ..region_key(REGION_SESSION_PREFIX, region_id, SESSION_CLIENT_SUFFIX + 1)
}

/// Every session key (table state and clients) of one region: what a snapshot carries
/// and a destroyed replica deletes.
pub fn session_range(region_id: u64) -> Range<[u8; 10]> {
    let mut start = [0u8; 10];
    start[0] = LOCAL_PREFIX;
    start[1] = REGION_SESSION_PREFIX;
    start[2..].copy_from_slice(&region_id.to_be_bytes());
    let mut end = start;
    end[2..].copy_from_slice(&(region_id + 1).to_be_bytes());
    start..end
}

/// Keys of the placement driver's own metadata store (a separate database from any
/// store's). Ids are big-endian so that a prefix scan returns them in order.
pub mod pd {
    /// The cluster: id and bootstrap state.
    pub const CLUSTER_KEY: &[u8] = b"pd/cluster";
    /// The end of the last id window handed out.
    pub const ALLOC_ID_KEY: &[u8] = b"pd/alloc_id";
    /// The timestamp oracle's persisted upper bound (ms).
    pub const TSO_KEY: &[u8] = b"pd/tso";
    /// The GC safe point.
    pub const GC_SAFE_POINT_KEY: &[u8] = b"pd/gc_safe_point";
    /// Users, roles and signing keys: one `authpb.AuthState`.
    pub const AUTH_KEY: &[u8] = b"pd/auth";
    /// Prefix of every store record.
    pub const STORE_PREFIX: &[u8] = b"pd/store/";
    /// Prefix of every region record.
    pub const REGION_PREFIX: &[u8] = b"pd/region/";

    /// Prefix of every PD member record (replicated with the rest of the metadata).
    pub const MEMBER_PREFIX: &[u8] = b"pd/member/";
    /// The highest member id ever given, so that a replaced member gets a new one.
    pub const MAX_MEMBER_ID_KEY: &[u8] = b"pd/max_member_id";
    /// Every replicated key starts with this; a snapshot of PD's group carries them all.
    pub const REPLICATED_PREFIX: &[u8] = b"pd/";

    /// This member's identity (local, in the raft CF).
    pub const IDENTITY_KEY: &[u8] = b"pdraft/identity";
    /// This member's Raft hard state (local, in the raft CF).
    pub const HARD_STATE_KEY: &[u8] = b"pdraft/hard_state";
    /// How far this member applied its log (local, in the raft CF).
    pub const APPLY_STATE_KEY: &[u8] = b"pdraft/apply_state";
    /// Prefix of this member's Raft log entries (local, in the raft CF).
    pub const LOG_PREFIX: &[u8] = b"pdraft/log/";
    /// The seed's record of the initial members it handed the cluster secret to.
    pub const SECRET_GIVEN_PREFIX: &[u8] = b"pdraft/secret_given/";

    fn with_id(prefix: &[u8], id: u64) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    /// The record of PD member `id`.
    pub fn member_key(id: u64) -> Vec<u8> {
        with_id(MEMBER_PREFIX, id)
    }

    /// Entry `index` of this member's Raft log.
    pub fn log_key(index: u64) -> Vec<u8> {
        with_id(LOG_PREFIX, index)
    }

    /// The seed's record that member `name` was given the cluster secret.
    pub fn secret_given_key(name: &str) -> Vec<u8> {
        let mut k = SECRET_GIVEN_PREFIX.to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// The record of store `id`.
    pub fn store_key(id: u64) -> Vec<u8> {
        with_id(STORE_PREFIX, id)
    }

    /// The record of region `id`.
    pub fn region_key(id: u64) -> Vec<u8> {
        with_id(REGION_PREFIX, id)
    }

    /// One past every key starting with `prefix` (for range scans).
    pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
        let mut end = prefix.to_vec();
        *end.last_mut().expect("prefixes are not empty") += 1;
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_keys_never_mix_with_data_keys() {
        let all_local: [&[u8]; 5] = [
            STORE_IDENT_KEY,
            &raft_log_key(u64::MAX, u64::MAX),
            &raft_state_key(u64::MAX),
            &apply_state_key(7),
            &region_state_key(u64::MAX),
        ];
        for k in all_local {
            assert!(k < DATA_MIN_KEY, "{k:?} sorts into the data space");
        }
        assert!(data_key(&[0xff; 64]).as_slice() < DATA_MAX_KEY);
        assert!(data_key(b"").as_slice() >= DATA_MIN_KEY);
    }

    #[test]
    fn a_regions_session_keys_are_one_range_apart_from_its_raft_keys() {
        let range = session_range(7);
        for k in [
            &session_table_key(7)[..],
            &session_client_key(7, 0)[..],
            &session_client_key(7, u64::MAX)[..],
        ] {
            assert!(range.start.as_slice() <= k && k < range.end.as_slice());
            assert!(k < DATA_MIN_KEY);
            assert!(
                !(region_raft_range(7).start.as_slice() <= k
                    && k < region_raft_range(7).end.as_slice())
            );
        }
        let clients = session_client_range(7);
        assert!(clients.start.as_slice() <= &session_client_key(7, 1)[..]);
        assert!(&session_client_key(7, u64::MAX)[..] < clients.end.as_slice());
        assert!(&session_table_key(7)[..] < clients.start.as_slice());
        assert!(session_range(6).end.as_slice() <= &session_table_key(7)[..]);
        assert!(&session_client_key(7, u64::MAX)[..] < session_range(8).start.as_slice());
    }

    #[test]
    fn raft_log_sorts_by_region_then_index() {
        let keys = [
            raft_log_key(1, 1),
            raft_log_key(1, 2),
            raft_log_key(1, 256),
            raft_log_key(1, u64::MAX),
            raft_log_key(2, 0),
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        // The hard state and apply state of a region sort after its whole log, and before
        // the next region's log, so a region's log is one range.
        assert!(raft_log_key(1, u64::MAX).as_slice() < raft_state_key(1).as_slice());
        assert!(raft_state_key(1) < apply_state_key(1));
        assert!(apply_state_key(1).as_slice() < raft_log_key(2, 0).as_slice());
    }

    #[test]
    fn region_raft_range_covers_exactly_one_region() {
        let r = region_raft_range(5);
        for k in [
            raft_log_key(5, 0).to_vec(),
            raft_log_key(5, u64::MAX).to_vec(),
            raft_state_key(5).to_vec(),
            apply_state_key(5).to_vec(),
        ] {
            assert!(r.start.as_slice() <= k.as_slice() && k.as_slice() < r.end.as_slice());
        }
        for k in [
            raft_log_key(4, u64::MAX).to_vec(),
            raft_log_key(6, 0).to_vec(),
        ] {
            assert!(!(r.start.as_slice() <= k.as_slice() && k.as_slice() < r.end.as_slice()));
        }
        let log = raft_log_all_range(5);
        let in_log = |k: &[u8]| log.start.as_slice() <= k && k < log.end.as_slice();
        assert!(in_log(&raft_log_key(5, 0)) && in_log(&raft_log_key(5, u64::MAX)));
        assert!(!in_log(&raft_state_key(5)) && !in_log(&apply_state_key(5)));
        assert!(!in_log(&raft_log_key(4, u64::MAX)) && !in_log(&raft_log_key(6, 0)));
        let logs = raft_log_range(5, 3, 9);
        assert_eq!(raft_log_index(&logs.start), Ok(3));
        assert_eq!(raft_log_index(&logs.end), Ok(9));
    }

    #[test]
    fn decoding_round_trips_and_rejects_foreign_keys() {
        assert_eq!(raft_log_index(&raft_log_key(9, 42)), Ok(42));
        assert!(raft_log_index(&raft_state_key(9)).is_err());
        assert_eq!(origin_key(&data_key(b"k1")), Ok(&b"k1"[..]));
        assert!(origin_key(b"k1").is_err());
        assert_eq!(region_id_of_state_key(&region_state_key(77)), Ok(77));
        assert!(region_id_of_state_key(&apply_state_key(77)).is_err());
        let r = region_state_range();
        let k = region_state_key(u64::MAX);
        assert!(r.start.as_slice() <= k.as_slice() && k.as_slice() < r.end.as_slice());
        assert_eq!(data_end_key(b""), DATA_MAX_KEY);
        assert_eq!(data_end_key(b"m"), b"zm");
    }

    #[test]
    fn pd_keys_sort_by_id_within_their_prefix() {
        assert!(pd::store_key(1) < pd::store_key(256));
        let end = pd::prefix_end(pd::STORE_PREFIX);
        assert!(pd::store_key(u64::MAX) < end);
        assert!(pd::region_key(0) >= end || pd::region_key(0) < pd::store_key(0));
    }
}
