//! What every client request's `kvrpcpb.Context` may ask for. Fields Flotilla does not
//! honour are refused by name rather than ignored: a client that asked for keyspaces or
//! read-committed reads must not get something else silently. Hints that change no answer
//! are accepted: priority, not_fill_cache, request_source, is_retry_request, and
//! max_execution_duration_ms (TiKV's Go client sets it on every request; the client
//! keeps its own deadline, and `server.request-timeout` bounds the work).

use proto::kvrpcpb::{self, APIVersion, Context, IsolationLevel};

use crate::{Error, Result};

/// A request that carries a `Context`.
pub(crate) trait HasContext {
    /// Its context.
    fn context(&self) -> &Context;
}

macro_rules! has_context {
    ($($req:ident),* $(,)?) => {$(
        impl HasContext for kvrpcpb::$req {
            fn context(&self) -> &Context {
                self.get_context()
            }
        }
    )*};
}

has_context!(
    GetRequest,
    ScanRequest,
    PrewriteRequest,
    PessimisticLockRequest,
    PessimisticRollbackRequest,
    TxnHeartBeatRequest,
    CheckTxnStatusRequest,
    CheckSecondaryLocksRequest,
    CommitRequest,
    CleanupRequest,
    BatchGetRequest,
    BatchRollbackRequest,
    ScanLockRequest,
    ResolveLockRequest,
);

/// Refuses a context that asks for what Flotilla does not do.
pub(crate) fn check(ctx: &Context) -> Result<()> {
    let refuse = |why: String| Err(Error::InvalidRequest(why));
    if ctx.get_api_version() == APIVersion::V2 {
        return refuse(
            "context.api_version V2 (keyspaces) is not supported: send V1 or V1TTL".into(),
        );
    }
    if ctx.keyspace_id != 0 {
        return refuse(format!(
            "context.keyspace_id {} is not supported: Flotilla has no keyspaces",
            ctx.keyspace_id
        ));
    }
    if ctx.get_isolation_level() != IsolationLevel::SI {
        return refuse(format!(
            "context.isolation_level {:?} is not supported: reads are snapshot isolation (SI)",
            ctx.get_isolation_level()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhonoured_fields_are_refused_by_name() {
        assert!(check(&Context::default()).is_ok());
        let mut ttl = Context::default();
        ttl.set_api_version(APIVersion::V1TTL);
        assert!(check(&ttl).is_ok(), "raw TTL is honoured");
        type Set = fn(&mut Context);
        let cases: [(&str, Set); 3] = [
            ("api_version", |c| c.set_api_version(APIVersion::V2)),
            ("keyspace_id", |c| c.keyspace_id = 7),
            ("isolation_level", |c| {
                c.set_isolation_level(IsolationLevel::RC)
            }),
        ];
        let deadline = Context {
            max_execution_duration_ms: 2000,
            ..Default::default()
        };
        assert!(
            check(&deadline).is_ok(),
            "client-go sets it on every request"
        );
        for (field, set) in cases {
            let mut c = Context::default();
            set(&mut c);
            let err = check(&c).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
