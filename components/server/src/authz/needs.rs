//! What each request needs of its caller: read or write access to the keys and ranges it
//! touches, or admin. A transactional command that resolves another transaction's
//! locks (check status, check secondaries, cleanup, resolve) needs only read access to
//! the keys it names: readers must be able to clear a dead writer's locks. Two are
//! writes whoever asks: a resolve that commits (its commit timestamp is the caller's
//! word) and a cleanup that rolls back without looking at the lock's age. A command
//! that answers with values or existence (a pessimistic lock returning values, an
//! insert) needs read access as well as write.

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
        let mut v: Vec<Need<'_>> = r.get_mutations().iter().flat_map(|m| match m.get_op() {
            Op::CheckNotExists => vec![Need::Key(Read, m.get_key())],
            Op::Insert => vec![Need::Key(Read, m.get_key()), Need::Key(Write, m.get_key())],
            _ => vec![Need::Key(Write, m.get_key())],
        }).collect();
        v.push(Need::Key(Write, r.get_primary_lock()));
        v
    };
    kvrpcpb::CommitRequest => |r| keys(Write, r.get_keys());
    kvrpcpb::BatchRollbackRequest => |r| keys(Write, r.get_keys());
    kvrpcpb::CleanupRequest => |r| match r.current_ts {
        // Rolls the lock back however young it is.
        0 | u64::MAX => vec![Need::Key(Write, r.get_key())],
        _ => vec![Need::Key(Read, r.get_key())],
    };
    kvrpcpb::CheckTxnStatusRequest => |r| match r.current_ts {
        u64::MAX => vec![Need::Key(Write, r.get_primary_key())],
        _ => vec![Need::Key(Read, r.get_primary_key())],
    };
    kvrpcpb::CheckSecondaryLocksRequest => |r| keys(Read, r.get_keys());
    kvrpcpb::ResolveLockRequest => |r| {
        let commits = r.commit_version != 0 || r.get_txn_infos().iter().any(|t| t.status != 0);
        let access = if commits { Write } else { Read };
        match r.get_keys().is_empty() {
            // Every lock of the transactions in the region: the whole key space, since
            // the region's range is not the caller's to choose.
            true => vec![Need::Range(access, b"", b"")],
            false => keys(access, r.get_keys()),
        }
    };
    kvrpcpb::TxnHeartBeatRequest => |r| vec![Need::Key(Write, r.get_primary_lock())];
    kvrpcpb::PessimisticLockRequest => |r| {
        let mut v: Vec<Need<'_>> = r.get_mutations().iter().map(|m| Need::Key(Write, m.get_key())).collect();
        if r.return_values || r.check_existence {
            v.extend(r.get_mutations().iter().map(|m| Need::Key(Read, m.get_key())));
        }
        v.push(Need::Key(Write, r.get_primary_lock()));
        v
    };
    kvrpcpb::PessimisticRollbackRequest => |r| keys(Write, r.get_keys());
    kvrpcpb::ScanLockRequest => |r| vec![Need::Range(Read, r.get_start_key(), r.get_end_key())];
    proto::raft_serverpb::ComputeHashRequest => |_r| vec![Need::Admin];
    proto::raft_serverpb::RegionHashRequest => |_r| vec![Need::Admin];
}

#[cfg(test)]
mod tests {
    use auth::{
        perm::{Grant, Kind, Permissions},
        view::{By, Caller},
    };

    use super::*;

    fn reader() -> Caller {
        Caller::User {
            name: "r".into(),
            by: By::Token,
            perms: Permissions::new(false, vec![Grant::prefix(Kind::Read, b"a/")]),
        }
    }

    #[test]
    fn resolving_reads_but_committing_or_forcing_a_rollback_writes() {
        let mut resolve = kvrpcpb::ResolveLockRequest::default();
        resolve.set_keys(vec![b"a/1".to_vec()].into());
        assert!(
            reader().check(&resolve.needs()).is_ok(),
            "a rollback resolve reads"
        );
        resolve.commit_version = 9;
        assert!(reader().check(&resolve.needs()).is_err(), "a commit writes");
        let mut cleanup = kvrpcpb::CleanupRequest::default();
        cleanup.set_key(b"a/1".to_vec());
        cleanup.current_ts = 5;
        assert!(reader().check(&cleanup.needs()).is_ok());
        cleanup.current_ts = 0;
        assert!(
            reader().check(&cleanup.needs()).is_err(),
            "a forced rollback writes"
        );
        let mut scan = kvrpcpb::RawScanRequest::default();
        scan.set_start_key(b"a0".to_vec());
        scan.set_end_key(b"a/".to_vec());
        scan.reverse = true;
        assert!(
            reader().check(&scan.needs()).is_ok(),
            "reverse: [end, start)"
        );
        scan.set_end_key(b"".to_vec());
        assert!(
            reader().check(&scan.needs()).is_err(),
            "reverse to the start"
        );
        let mut lock = kvrpcpb::PessimisticLockRequest::default();
        let mut m = kvrpcpb::Mutation::default();
        m.set_key(b"a/1".to_vec());
        lock.mut_mutations().push(m);
        lock.set_primary_lock(b"a/1".to_vec());
        let writer = Caller::User {
            name: "w".into(),
            by: By::Token,
            perms: Permissions::new(false, vec![Grant::prefix(Kind::Write, b"a/")]),
        };
        assert!(writer.check(&lock.needs()).is_ok());
        lock.return_values = true;
        assert!(
            writer.check(&lock.needs()).is_err(),
            "returned values are reads"
        );
    }
}
