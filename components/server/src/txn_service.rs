//! The transactional Kv* calls of `tikvpb.Tikv`: each turns a wire request into a
//! `TxnStorage` command and its answer back, with errors as TiKV's clients read them
//! (region errors to retry, key errors to act on). Transactional clients always route
//! (their requests carry a region), so nothing here is forwarded.

use std::future::Future;

use proto::{
    errorpb,
    kvrpcpb::{self, Action, KeyError, LockInfo, Op},
};
use txn::{
    actions::{
        CheckTxnStatus, PessimisticLock, RollbackAction, SecondaryStatus, TxnProps, TxnStatus,
    },
    commands::PrewriteRequest,
    reader::Bypass,
    types::{Kind, Lock},
    ConflictReason, Mutation, MutationOp,
};

use crate::{metrics, txn_storage::TxnStorage, Error, Result};

/// Where a response's errors go.
pub(crate) trait TxnResponse: Default + Send + 'static {
    fn set_region_err(&mut self, e: errorpb::Error);
    fn set_key_err(&mut self, e: KeyError);
    fn outcome(&self) -> &'static str;
}

macro_rules! txn_response {
    ($resp:ty, single) => {
        impl TxnResponse for $resp {
            fn set_region_err(&mut self, e: errorpb::Error) {
                self.set_region_error(e);
            }
            fn set_key_err(&mut self, e: KeyError) {
                self.set_error(e);
            }
            fn outcome(&self) -> &'static str {
                outcome(self.has_region_error(), self.has_error())
            }
        }
    };
    ($resp:ty, many) => {
        impl TxnResponse for $resp {
            fn set_region_err(&mut self, e: errorpb::Error) {
                self.set_region_error(e);
            }
            fn set_key_err(&mut self, e: KeyError) {
                self.mut_errors().push(e);
            }
            fn outcome(&self) -> &'static str {
                outcome(self.has_region_error(), !self.get_errors().is_empty())
            }
        }
    };
}

fn outcome(region: bool, key: bool) -> &'static str {
    match (region, key) {
        (true, _) => "region_error",
        (false, true) => "key_error",
        _ => "ok",
    }
}

txn_response!(kvrpcpb::GetResponse, single);
txn_response!(kvrpcpb::BatchGetResponse, single);
txn_response!(kvrpcpb::ScanResponse, single);
txn_response!(kvrpcpb::PrewriteResponse, many);
txn_response!(kvrpcpb::CommitResponse, single);
txn_response!(kvrpcpb::BatchRollbackResponse, single);
txn_response!(kvrpcpb::CleanupResponse, single);
txn_response!(kvrpcpb::CheckTxnStatusResponse, single);
txn_response!(kvrpcpb::CheckSecondaryLocksResponse, single);
txn_response!(kvrpcpb::ResolveLockResponse, single);
txn_response!(kvrpcpb::TxnHeartBeatResponse, single);
txn_response!(kvrpcpb::PessimisticLockResponse, many);
txn_response!(kvrpcpb::PessimisticRollbackResponse, many);
txn_response!(kvrpcpb::ScanLockResponse, single);

/// The answer of `handle`; errors become the response's.
pub(crate) async fn answer<Req, Resp, F, Fut>(
    storage: TxnStorage,
    name: &'static str,
    req: Req,
    handle: F,
) -> Resp
where
    Req: crate::context::HasContext + Send + 'static,
    Resp: TxnResponse,
    F: FnOnce(TxnStorage, Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp>> + Send,
{
    let timer = metrics::REQUEST_SECONDS
        .with_label_values(&[name])
        .start_timer();
    let resp = match crate::context::check(req.context()) {
        Ok(()) => handle(storage, req).await.unwrap_or_else(error_response),
        Err(e) => error_response(e),
    };
    timer.observe_duration();
    metrics::REQUESTS
        .with_label_values(&[name, resp.outcome()])
        .inc();
    resp
}

/// The answer to a request refused before it was served.
pub(crate) fn refused<Resp: TxnResponse>(
    name: &'static str,
    refusal: crate::service::Refusal,
) -> Resp {
    let (outcome, e) = refusal.into_parts();
    metrics::REQUESTS.with_label_values(&[name, outcome]).inc();
    error_response(e)
}

fn error_response<R: TxnResponse>(e: Error) -> R {
    let mut resp = R::default();
    match e {
        Error::Txn(t) => resp.set_key_err(key_error(t)),
        // Not a verdict on the transaction: the client sends the request again (every
        // transactional command may be repeated), which settles an unknown outcome.
        e @ (Error::Undetermined(_)
        | Error::Raft(raftstore::Error::Undetermined(_))
        | Error::Pd(_)) => {
            let mut region = errorpb::Error::default();
            region.set_message(e.to_string());
            region.mut_stale_command();
            resp.set_region_err(region);
        }
        other => match other.into_wire() {
            (Some(region), _) => resp.set_region_err(region),
            (None, msg) => {
                let mut k = KeyError::default();
                k.set_abort(msg);
                resp.set_key_err(k);
            }
        },
    }
    resp
}

/// The one conversion of transaction errors to what TiKV's clients act on.
pub fn key_error(e: txn::Error) -> KeyError {
    let k = to_key_error(e);
    let kind = if k.has_locked() {
        "locked"
    } else if k.has_conflict() {
        "conflict"
    } else if k.has_already_exist() {
        "already_exist"
    } else if k.has_txn_not_found() {
        "txn_not_found"
    } else if k.has_commit_ts_expired() {
        "commit_ts_expired"
    } else if k.has_primary_mismatch() {
        "primary_mismatch"
    } else {
        "other"
    };
    metrics::TXN_KEY_ERRORS.with_label_values(&[kind]).inc();
    k
}

fn to_key_error(e: txn::Error) -> KeyError {
    let mut k = KeyError::default();
    let msg = e.to_string();
    match e {
        txn::Error::KeyIsLocked { key, lock } => k.set_locked(lock_info(key, *lock)),
        txn::Error::WriteConflict {
            key,
            primary,
            start_ts,
            conflict_start_ts,
            conflict_commit_ts,
            reason,
        } => {
            let c = k.mut_conflict();
            c.start_ts = start_ts;
            c.conflict_ts = conflict_start_ts;
            c.conflict_commit_ts = conflict_commit_ts;
            c.set_key(key);
            c.set_primary(primary);
            c.reason = match reason {
                ConflictReason::Optimistic => kvrpcpb::WriteConflict_Reason::Optimistic,
                ConflictReason::PessimisticRetry => kvrpcpb::WriteConflict_Reason::PessimisticRetry,
                ConflictReason::SelfRolledBack => kvrpcpb::WriteConflict_Reason::SelfRolledBack,
            };
            k.set_retryable(msg);
        }
        txn::Error::AlreadyExist { key } => k.mut_already_exist().set_key(key),
        txn::Error::TxnNotFound { start_ts, key } => {
            let t = k.mut_txn_not_found();
            t.start_ts = start_ts;
            t.set_primary_key(key);
        }
        txn::Error::CommitTsExpired {
            start_ts,
            commit_ts,
            key,
            min_commit_ts,
        } => {
            let c = k.mut_commit_ts_expired();
            c.start_ts = start_ts;
            c.attempted_commit_ts = commit_ts;
            c.set_key(key);
            c.min_commit_ts = min_commit_ts;
        }
        txn::Error::PrimaryMismatch { key, lock } => k
            .mut_primary_mismatch()
            .set_lock_info(lock_info(key, *lock)),
        txn::Error::TxnLockNotFound { .. } => k.set_retryable(msg),
        _ => k.set_abort(msg),
    }
    k
}

fn op_of(kind: Kind) -> Op {
    match kind {
        Kind::PUT => Op::Put,
        Kind::DELETE => Op::Del,
        Kind::LOCK => Op::Lock,
        Kind::ROLLBACK => Op::Rollback,
        Kind::PESSIMISTIC => Op::PessimisticLock,
        // Never a lock's kind: a fence lives in the write column family only.
        Kind::GC_FENCE => Op::Rollback,
    }
}

/// A lock as TiKV's clients read it.
pub fn lock_info(key: Vec<u8>, lock: Lock) -> LockInfo {
    let mut l = LockInfo::default();
    l.set_key(key);
    l.set_primary_lock(lock.primary);
    l.lock_version = lock.start_ts;
    l.lock_ttl = lock.ttl;
    l.txn_size = lock.txn_size;
    l.lock_type = op_of(lock.kind);
    l.lock_for_update_ts = lock.for_update_ts;
    l.use_async_commit = lock.use_async_commit;
    l.min_commit_ts = lock.min_commit_ts;
    l.set_secondaries(lock.secondaries);
    l
}

fn bypass(ctx: &kvrpcpb::Context) -> Bypass {
    Bypass {
        resolved: ctx.get_resolved_locks().to_vec(),
        committed: ctx.get_committed_locks().to_vec(),
    }
}

fn mutation(m: &kvrpcpb::Mutation) -> Result<Mutation> {
    let op = match m.get_op() {
        Op::Put => MutationOp::Put(m.get_value().to_vec()),
        Op::Del => MutationOp::Delete,
        Op::Lock => MutationOp::Lock,
        Op::Insert => MutationOp::Insert(m.get_value().to_vec()),
        Op::CheckNotExists => MutationOp::CheckNotExists,
        other => {
            return Err(Error::InvalidRequest(format!(
            "mutation op {other:?} cannot be prewritten (Put, Del, Lock, Insert or CheckNotExists)"
        )))
        }
    };
    Ok(Mutation {
        key: m.get_key().to_vec(),
        op,
    })
}

/// The pairs of a read, each locked key with its error (and the first error at the
/// top, as TiKV sets both).
fn read_pairs(
    pairs: Vec<(Vec<u8>, txn::Result<Vec<u8>>)>,
) -> (Vec<kvrpcpb::KvPair>, Option<KeyError>) {
    let mut first = None;
    let out = pairs
        .into_iter()
        .map(|(k, v)| {
            let mut p = kvrpcpb::KvPair::default();
            p.set_key(k);
            match v {
                Ok(v) => p.set_value(v),
                Err(e) => {
                    let ke = key_error(e);
                    first.get_or_insert_with(|| ke.clone());
                    p.set_error(ke);
                }
            }
            p
        })
        .collect();
    (out, first)
}

pub(crate) async fn get(s: TxnStorage, req: kvrpcpb::GetRequest) -> Result<kvrpcpb::GetResponse> {
    let ctx = req.get_context();
    let mut resp = kvrpcpb::GetResponse::default();
    match s.get(ctx, req.get_key(), req.version, &bypass(ctx)).await? {
        Some(v) => resp.set_value(v),
        None => resp.not_found = true,
    }
    Ok(resp)
}

pub(crate) async fn batch_get(
    s: TxnStorage,
    req: kvrpcpb::BatchGetRequest,
) -> Result<kvrpcpb::BatchGetResponse> {
    let ctx = req.get_context();
    let pairs = s
        .batch_get(ctx, req.get_keys(), req.version, &bypass(ctx))
        .await?;
    let (pairs, first) = read_pairs(pairs);
    let mut resp = kvrpcpb::BatchGetResponse::default();
    resp.set_pairs(pairs.into());
    if let Some(e) = first {
        resp.set_error(e);
    }
    Ok(resp)
}

pub(crate) async fn scan(
    s: TxnStorage,
    req: kvrpcpb::ScanRequest,
) -> Result<kvrpcpb::ScanResponse> {
    let ctx = req.get_context();
    // In reverse, start_key is the exclusive upper bound (TiKV's convention).
    let (start, end) = if req.reverse {
        (req.get_end_key(), req.get_start_key())
    } else {
        (req.get_start_key(), req.get_end_key())
    };
    let pairs = s
        .scan(
            ctx,
            start,
            end,
            req.limit as usize,
            req.version,
            req.key_only,
            req.reverse,
            &bypass(ctx),
        )
        .await?;
    let (pairs, first) = read_pairs(pairs);
    let mut resp = kvrpcpb::ScanResponse::default();
    resp.set_pairs(pairs.into());
    if let Some(e) = first {
        resp.set_error(e);
    }
    Ok(resp)
}

pub(crate) async fn prewrite(
    s: TxnStorage,
    req: kvrpcpb::PrewriteRequest,
) -> Result<kvrpcpb::PrewriteResponse> {
    use kvrpcpb::PrewriteRequest_PessimisticAction as PA;
    let mutations = req
        .get_mutations()
        .iter()
        .map(mutation)
        .collect::<Result<Vec<_>>>()?;
    let pessimistic = req
        .get_pessimistic_actions()
        .iter()
        .map(|a| *a == PA::DO_PESSIMISTIC_CHECK)
        .collect();
    let cmd = PrewriteRequest {
        mutations,
        pessimistic,
        props: TxnProps {
            start_ts: req.start_version,
            primary: req.get_primary_lock().to_vec(),
            lock_ttl: req.lock_ttl,
            txn_size: req.txn_size,
            for_update_ts: req.for_update_ts,
            min_commit_ts: req.min_commit_ts,
            async_commit: req.use_async_commit,
            secondaries: req.get_secondaries().to_vec(),
            one_pc: req.try_one_pc,
            max_commit_ts: req.max_commit_ts,
        },
    };
    let out = s.prewrite(req.get_context(), cmd).await?;
    let mut resp = kvrpcpb::PrewriteResponse::default();
    if !out.locked.is_empty() {
        resp.set_errors(out.locked.into_iter().map(key_error).collect());
        return Ok(resp);
    }
    resp.min_commit_ts = out.min_commit_ts;
    resp.one_pc_commit_ts = out.one_pc_commit_ts;
    Ok(resp)
}

pub(crate) async fn commit(
    s: TxnStorage,
    req: kvrpcpb::CommitRequest,
) -> Result<kvrpcpb::CommitResponse> {
    s.commit(
        req.get_context(),
        req.get_keys(),
        req.start_version,
        req.commit_version,
    )
    .await?;
    let mut resp = kvrpcpb::CommitResponse::default();
    resp.set_commit_version(req.commit_version);
    Ok(resp)
}

pub(crate) async fn batch_rollback(
    s: TxnStorage,
    req: kvrpcpb::BatchRollbackRequest,
) -> Result<kvrpcpb::BatchRollbackResponse> {
    s.rollback(req.get_context(), req.get_keys(), req.start_version)
        .await?;
    Ok(kvrpcpb::BatchRollbackResponse::default())
}

pub(crate) async fn cleanup(
    s: TxnStorage,
    req: kvrpcpb::CleanupRequest,
) -> Result<kvrpcpb::CleanupResponse> {
    let mut resp = kvrpcpb::CleanupResponse::default();
    match s
        .cleanup(
            req.get_context(),
            req.get_key(),
            req.start_version,
            req.current_ts,
        )
        .await
    {
        Ok(()) => {}
        Err(Error::Txn(txn::Error::Committed { commit_ts, .. })) => resp.commit_version = commit_ts,
        Err(e) => return Err(e),
    }
    Ok(resp)
}

pub(crate) async fn check_txn_status(
    s: TxnStorage,
    req: kvrpcpb::CheckTxnStatusRequest,
) -> Result<kvrpcpb::CheckTxnStatusResponse> {
    let c = CheckTxnStatus {
        primary: req.get_primary_key().to_vec(),
        lock_ts: req.lock_ts,
        caller_start_ts: req.caller_start_ts,
        current_ts: req.current_ts,
        rollback_if_not_exist: req.rollback_if_not_exist,
        force_sync_commit: req.force_sync_commit,
        resolving_pessimistic_lock: req.resolving_pessimistic_lock,
    };
    let mut resp = kvrpcpb::CheckTxnStatusResponse::default();
    match s.check_txn_status(req.get_context(), c).await? {
        TxnStatus::Locked { lock, pushed } => {
            resp.lock_ttl = lock.ttl.max(1);
            resp.action = if pushed {
                Action::MinCommitTSPushed
            } else {
                Action::NoAction
            };
            resp.set_lock_info(lock_info(req.get_primary_key().to_vec(), lock));
        }
        TxnStatus::Committed(ts) => resp.commit_version = ts,
        TxnStatus::RolledBack { how } => {
            resp.action = match how {
                RollbackAction::None => Action::NoAction,
                RollbackAction::TtlExpired => Action::TTLExpireRollback,
                RollbackAction::TtlExpiredPessimistic => Action::TTLExpirePessimisticRollback,
                RollbackAction::LockNotExist => Action::LockNotExistRollback,
            }
        }
        TxnStatus::LockNotExistDoNothing => resp.action = Action::LockNotExistDoNothing,
    }
    Ok(resp)
}

pub(crate) async fn check_secondary_locks(
    s: TxnStorage,
    req: kvrpcpb::CheckSecondaryLocksRequest,
) -> Result<kvrpcpb::CheckSecondaryLocksResponse> {
    let statuses = s
        .check_secondary_locks(req.get_context(), req.get_keys(), req.start_version)
        .await?;
    let mut resp = kvrpcpb::CheckSecondaryLocksResponse::default();
    // One rolled-back key decides the transaction; else one committed key; else the locks.
    if statuses.contains(&SecondaryStatus::RolledBack) {
        return Ok(resp);
    }
    for (key, st) in req.get_keys().iter().zip(statuses) {
        match st {
            SecondaryStatus::Committed(ts) => {
                resp.clear_locks();
                resp.commit_ts = ts;
                return Ok(resp);
            }
            SecondaryStatus::Locked(lock) => resp.mut_locks().push(lock_info(key.clone(), lock)),
            SecondaryStatus::RolledBack => unreachable!("handled above"),
        }
    }
    Ok(resp)
}

pub(crate) async fn resolve_lock(
    s: TxnStorage,
    req: kvrpcpb::ResolveLockRequest,
) -> Result<kvrpcpb::ResolveLockResponse> {
    let txns: Vec<(u64, u64)> = if req.get_txn_infos().is_empty() {
        vec![(req.start_version, req.commit_version)]
    } else {
        req.get_txn_infos()
            .iter()
            .map(|t| (t.txn, t.status))
            .collect()
    };
    s.resolve_locks(req.get_context(), &txns, req.get_keys())
        .await?;
    Ok(kvrpcpb::ResolveLockResponse::default())
}

pub(crate) async fn txn_heart_beat(
    s: TxnStorage,
    req: kvrpcpb::TxnHeartBeatRequest,
) -> Result<kvrpcpb::TxnHeartBeatResponse> {
    let ttl = s
        .heartbeat(
            req.get_context(),
            req.get_primary_lock(),
            req.start_version,
            req.advise_lock_ttl,
        )
        .await?;
    let mut resp = kvrpcpb::TxnHeartBeatResponse::default();
    resp.set_lock_ttl(ttl);
    Ok(resp)
}

pub(crate) async fn pessimistic_lock(
    s: TxnStorage,
    req: kvrpcpb::PessimisticLockRequest,
) -> Result<kvrpcpb::PessimisticLockResponse> {
    let mut locks = Vec::with_capacity(req.get_mutations().len());
    for m in req.get_mutations() {
        let should_not_exist = match m.get_op() {
            Op::PessimisticLock => false,
            Op::Insert | Op::CheckNotExists => true,
            other => {
                return Err(Error::InvalidRequest(format!(
                    "mutation op {other:?} cannot take a pessimistic lock (PessimisticLock, Insert or CheckNotExists)"
                )))
            }
        };
        locks.push(PessimisticLock {
            key: m.get_key().to_vec(),
            primary: req.get_primary_lock().to_vec(),
            start_ts: req.start_version,
            for_update_ts: req.for_update_ts,
            ttl: req.lock_ttl,
            should_not_exist,
            need_value: req.return_values || req.check_existence,
        });
    }
    let values = s.pessimistic_lock(req.get_context(), &locks).await?;
    let mut resp = kvrpcpb::PessimisticLockResponse::default();
    if req.return_values || req.check_existence {
        for v in values {
            resp.mut_not_founds().push(v.is_none());
            if req.return_values {
                resp.mut_values().push(v.unwrap_or_default());
            }
        }
    }
    Ok(resp)
}

pub(crate) async fn pessimistic_rollback(
    s: TxnStorage,
    req: kvrpcpb::PessimisticRollbackRequest,
) -> Result<kvrpcpb::PessimisticRollbackResponse> {
    s.pessimistic_rollback(
        req.get_context(),
        req.get_keys(),
        req.start_version,
        req.for_update_ts,
    )
    .await?;
    Ok(kvrpcpb::PessimisticRollbackResponse::default())
}

pub(crate) async fn scan_lock(
    s: TxnStorage,
    req: kvrpcpb::ScanLockRequest,
) -> Result<kvrpcpb::ScanLockResponse> {
    let locks = s
        .scan_locks(
            req.get_context(),
            req.max_version,
            req.get_start_key(),
            req.get_end_key(),
            req.limit as usize,
        )
        .await?;
    let mut resp = kvrpcpb::ScanLockResponse::default();
    resp.set_locks(locks.into_iter().map(|(k, l)| lock_info(k, l)).collect());
    Ok(resp)
}
