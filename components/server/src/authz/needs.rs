//! What each request needs of its caller: read or write access to the keys and ranges it
//! touches, or admin. A transactional command that resolves another transaction's
//! locks (check status, check secondaries, cleanup, resolve) needs only read access to
//! the keys it names: readers must be able to clear a dead writer's locks.

use auth::{
    perm::Access::{Read, Write},
    view::Need,
};
use proto::kvrpcpb::{self, Op};

/// A request whose needs can be listed.
pub trait Guarded {
    /// What the caller must be allowed.
    fn needs(&self) -> Vec<Need<'_>>;
}

fn keys(access: auth::perm::Access, keys: &[Vec<u8>]) -> Vec<Need<'_>> {
    keys.iter().map(|k| Need::Key(access, k)).collect()
}

/// A scan's range: forward `[start, end)`; reverse, `start` is the exclusive upper
/// bound and `end` the inclusive lower one (TiKV's convention).
fn range<'a>(
    access: auth::perm::Access,
    start: &'a [u8],
    end: &'a [u8],
    reverse: bool,
) -> Need<'a> {
    match reverse {
        false => Need::Range(access, start, end),
        true => Need::Range(access, end, start),
    }
}

macro_rules! guarded {
    ($($t:ty => |$r:ident| $e:expr;)*) => {$(
        impl Guarded for $t {
            fn needs(&self) -> Vec<Need<'_>> {
                let $r = self;
                $e
            }
        }
    )*};
}

guarded! {
    kvrpcpb::RawGetRequest => |r| vec![Need::Key(Read, r.get_key())];
    kvrpcpb::RawBatchGetRequest => |r| keys(Read, r.get_keys());
    kvrpcpb::RawPutRequest => |r| vec![Need::Key(Write, r.get_key())];
    kvrpcpb::RawBatchPutRequest => |r| r.get_pairs().iter().map(|p| Need::Key(Write, p.get_key())).collect();
    kvrpcpb::RawDeleteRequest => |r| vec![Need::Key(Write, r.get_key())];
    kvrpcpb::RawBatchDeleteRequest => |r| keys(Write, r.get_keys());
    kvrpcpb::RawScanRequest => |r| vec![range(Read, r.get_start_key(), r.get_end_key(), r.get_reverse())];
    kvrpcpb::RawDeleteRangeRequest => |r| vec![Need::Range(Write, r.get_start_key(), r.get_end_key())];
    kvrpcpb::RawCASRequest => |r| vec![Need::Key(Read, r.get_key()), Need::Key(Write, r.get_key())];
    kvrpcpb::RawGetKeyTTLRequest => |r| vec![Need::Key(Read, r.get_key())];
    kvrpcpb::SplitRegionRequest => |_r| vec![Need::Admin];
    kvrpcpb::GetRequest => |r| vec![Need::Key(Read, r.get_key())];
    kvrpcpb::BatchGetRequest => |r| keys(Read, r.get_keys());
    kvrpcpb::ScanRequest => |r| vec![range(Read, r.get_start_key(), r.get_end_key(), r.get_reverse())];
    kvrpcpb::PrewriteRequest => |r| {
        let mut v: Vec<Need<'_>> = r.get_mutations().iter().map(|m| match m.get_op() {
            Op::CheckNotExists => Need::Key(Read, m.get_key()),
            _ => Need::Key(Write, m.get_key()),
        }).collect();
        v.push(Need::Key(Write, r.get_primary_lock()));
        v
    };
    kvrpcpb::CommitRequest => |r| keys(Write, r.get_keys());
    kvrpcpb::BatchRollbackRequest => |r| keys(Write, r.get_keys());
    kvrpcpb::CleanupRequest => |r| vec![Need::Key(Read, r.get_key())];
    kvrpcpb::CheckTxnStatusRequest => |r| vec![Need::Key(Read, r.get_primary_key())];
    kvrpcpb::CheckSecondaryLocksRequest => |r| keys(Read, r.get_keys());
    kvrpcpb::ResolveLockRequest => |r| match r.get_keys().is_empty() {
        // Every lock of the transactions in the region: the whole key space, since the
        // region's range is not the caller's to choose.
        true => vec![Need::Range(Read, b"", b"")],
        false => keys(Read, r.get_keys()),
    };
    kvrpcpb::TxnHeartBeatRequest => |r| vec![Need::Key(Write, r.get_primary_lock())];
    kvrpcpb::PessimisticLockRequest => |r| {
        let mut v: Vec<Need<'_>> = r.get_mutations().iter().map(|m| Need::Key(Write, m.get_key())).collect();
        v.push(Need::Key(Write, r.get_primary_lock()));
        v
    };
    kvrpcpb::PessimisticRollbackRequest => |r| keys(Write, r.get_keys());
    kvrpcpb::ScanLockRequest => |r| vec![Need::Range(Read, r.get_start_key(), r.get_end_key())];
    proto::raft_serverpb::ComputeHashRequest => |_r| vec![Need::Admin];
    proto::raft_serverpb::RegionHashRequest => |_r| vec![Need::Admin];
}
