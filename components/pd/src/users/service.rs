//! `authpb.Auth` over gRPC, served by the PD leader: each call runs on the blocking pool
//! (a password check takes tens of milliseconds) and fails with a gRPC status that says
//! why.

use std::sync::Arc;

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use proto::authpb;
use proto_grpc::authpb_grpc::Auth;
use util::{secret::ClusterSecret, security::Proof};

use crate::{server::Serving, users::AuthCore, Error, Result};

/// The gRPC face of PD's auth.
#[derive(Clone)]
pub(crate) struct AuthService {
    pub(crate) pd: Arc<Serving>,
    pub(crate) secret: ClusterSecret,
    pub(crate) security: Arc<util::security::Security>,
    pub(crate) pool: tokio::runtime::Handle,
}

fn status(e: Error) -> RpcStatus {
    let code = match &e {
        Error::NotLeader(_) => RpcStatusCode::UNAVAILABLE,
        Error::InvalidValue(_) => RpcStatusCode::INVALID_ARGUMENT,
        Error::NotFound(_) => RpcStatusCode::NOT_FOUND,
        Error::AlreadyExists(_) => RpcStatusCode::ALREADY_EXISTS,
        Error::FailedPrecondition(_) => RpcStatusCode::FAILED_PRECONDITION,
        Error::AuthFailed(_) | Error::Unauthenticated => RpcStatusCode::UNAUTHENTICATED,
        Error::PermissionDenied(_) => RpcStatusCode::PERMISSION_DENIED,
        Error::RateLimited(_) => RpcStatusCode::RESOURCE_EXHAUSTED,
        Error::Undetermined(_) => RpcStatusCode::UNKNOWN,
        _ => RpcStatusCode::INTERNAL,
    };
    RpcStatus::with_message(code, e.to_string())
}

impl AuthService {
    /// Runs `f` with the leader's auth and the call's proof off the gRPC threads.
    fn serve<R, F>(&self, ctx: &RpcContext, sink: UnarySink<R>, f: F)
    where
        R: Send + 'static,
        F: FnOnce(&AuthCore, &Proof) -> Result<R> + Send + 'static,
    {
        let proof = self.security.proof(ctx, &self.secret);
        let pd = self.pd.clone();
        let task = self
            .pool
            .spawn_blocking(move || f(pd.core()?.auth(), &proof));
        ctx.spawn(async move {
            let res = match task.await {
                Ok(r) => r,
                Err(e) => Err(Error::Raft(format!("pd worker: {e}"))),
            };
            let _ = match res {
                Ok(r) => sink.success(r).await,
                Err(e) => sink.fail(status(e)).await,
            };
        });
    }
}

impl Auth for AuthService {
    fn login(
        &mut self,
        ctx: RpcContext,
        req: authpb::LoginRequest,
        sink: UnarySink<authpb::LoginResponse>,
    ) {
        self.serve(&ctx, sink, move |auth, proof| {
            let (token, expires) = auth.login(req.get_name(), req.get_password(), &proof.peer)?;
            let mut resp = authpb::LoginResponse::default();
            resp.set_token(token);
            resp.expires_unix_ms = expires;
            Ok(resp)
        });
    }

    fn signup(
        &mut self,
        ctx: RpcContext,
        req: authpb::SignupRequest,
        sink: UnarySink<authpb::SignupResponse>,
    ) {
        self.serve(&ctx, sink, move |auth, proof| {
            auth.signup(req.get_name(), req.get_password(), &proof.peer)?;
            Ok(authpb::SignupResponse::default())
        });
    }

    fn who_am_i(
        &mut self,
        ctx: RpcContext,
        _req: authpb::WhoAmIRequest,
        sink: UnarySink<authpb::WhoAmIResponse>,
    ) {
        self.serve(&ctx, sink, move |auth, proof| {
            let mut resp = authpb::WhoAmIResponse {
                enabled: auth.view().enabled,
                ..Default::default()
            };
            match auth.caller(proof)? {
                auth::view::Caller::Cluster => {
                    resp.set_by("cluster".into());
                    resp.admin = true;
                }
                auth::view::Caller::Anonymous => {}
                auth::view::Caller::User { name, by, perms } => {
                    resp.set_by(
                        match by {
                            auth::view::By::Token => "token",
                            auth::view::By::Certificate => "certificate",
                        }
                        .into(),
                    );
                    resp.admin = perms.admin;
                    if let Some(u) = auth.view().user(&name) {
                        resp.set_roles(u.roles.clone().into());
                    }
                    resp.set_name(name);
                }
            }
            Ok(resp)
        });
    }

    fn change(
        &mut self,
        ctx: RpcContext,
        mut req: authpb::ChangeRequest,
        sink: UnarySink<authpb::ChangeResponse>,
    ) {
        self.serve(&ctx, sink, move |auth, proof| {
            let change = req
                .change
                .take()
                .ok_or_else(|| Error::InvalidValue("the change request names no change".into()))?;
            Ok(authpb::ChangeResponse {
                revision: auth.change(proof, change)?,
                ..Default::default()
            })
        });
    }

    fn list(
        &mut self,
        ctx: RpcContext,
        _req: authpb::ListRequest,
        sink: UnarySink<authpb::ListResponse>,
    ) {
        self.serve(&ctx, sink, move |auth, proof| {
            auth.check_admin(proof, false)?;
            Ok(auth.list())
        });
    }

    fn state(
        &mut self,
        ctx: RpcContext,
        req: authpb::StateRequest,
        sink: UnarySink<authpb::StateResponse>,
    ) {
        self.serve(&ctx, sink, move |auth, proof| {
            if !proof.cluster {
                return Err(Error::Unauthenticated);
            }
            let mut resp = authpb::StateResponse::default();
            if let Some(s) = auth.state_since(req.known_revision) {
                resp.changed = true;
                resp.set_state(s);
            }
            Ok(resp)
        });
    }
}
