//! `pd_memberpb.PdMember`: Raft messages from other members, start-up checks, the seed's
//! one-time hand-out of the cluster secret, joins and leader transfers.

use std::sync::Arc;

use engine::{Cf, Engine};
use futures::{FutureExt, TryStreamExt};
use grpcio::{ClientStreamingSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use keys::pd as k;
use proto::pd_memberpb::*;
use proto_grpc::pd_memberpb_grpc::PdMember;
use protobuf::Message as _;
use raft::eraftpb::Message;
use slog::{info, warn, Logger};
use util::secret::ClusterSecret;

use super::{
    node::{add_learner, delete, put, remove_member},
    start::url,
    Group,
};
use crate::{Error, Result};

/// What members call on each other.
#[derive(Clone)]
pub(crate) struct MemberService {
    pub(crate) group: Arc<Group>,
    pub(crate) identity: MemberIdentity,
    pub(crate) secret: ClusterSecret,
    /// TLS: a cluster certificate proves a member too.
    pub(crate) security: Arc<util::security::Security>,
    pub(crate) engine: Engine,
    pub(crate) pool: tokio::runtime::Handle,
    /// How long after the group was created the seed still hands out the secret.
    pub(crate) secret_window: std::time::Duration,
    /// One join at a time: two must not be given the same member id.
    pub(crate) join_lock: Arc<parking_lot::Mutex<()>>,
    pub(crate) logger: Logger,
}

fn header(res: Result<()>) -> proto::pdpb::ResponseHeader {
    let mut h = proto::pdpb::ResponseHeader::default();
    if let Err(e) = res {
        h.mut_error().set_field_type(e.error_type());
        h.mut_error().set_message(e.to_string());
    }
    h
}

impl MemberService {
    fn authenticated(&self, ctx: &RpcContext) -> bool {
        self.security.is_cluster_call(ctx, &self.secret)
    }

    /// The leader's client URL, for a member that is not it.
    fn not_leader(&self) -> Error {
        let view = self.group.view();
        let url = view
            .members
            .get(&view.leader_id)
            .and_then(|m| m.get_client_urls().first().cloned());
        Error::NotLeader(url)
    }

    /// The initial members' names, seed first.
    fn initial_names(&self) -> Vec<String> {
        self.identity
            .get_initial_cluster()
            .split(',')
            .filter_map(|p| p.split_once('=').map(|(n, _)| n.to_string()))
            .collect()
    }

    fn give_secret(&self, req: &FetchSecretRequest) -> Result<String> {
        let names = self.initial_names();
        if names.first().map(String::as_str) != Some(self.identity.get_name()) {
            return Err(Error::Member(format!(
                "{} is not the seed of its group; the seed hands out the cluster secret",
                self.identity.get_name()
            )));
        }
        if req.group_id != self.identity.group_id {
            return Err(Error::Member(format!(
                "the caller's initial cluster differs from this group's ({})",
                self.identity.get_initial_cluster()
            )));
        }
        let name = req.get_name();
        if name == self.identity.get_name() || !names.iter().any(|n| n == name) {
            return Err(Error::Member(format!(
                "{name:?} is not another initial member of this group"
            )));
        }
        let age_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(self.identity.created_unix_ms);
        if age_ms > self.secret_window.as_millis() as u64 {
            return Err(Error::Member(format!(
                "this group was created {}s ago: the seed hands out the cluster secret only \
                 during the first {:?} (pd.join-timeout); give {name:?} the file \
                 (cluster-secret-file)",
                age_ms / 1000,
                self.secret_window
            )));
        }
        let key = k::secret_given_key(name);
        if self.engine.get(Cf::Raft, &key)?.is_some() {
            return Err(Error::Member(format!(
                "the cluster secret was already handed to {name:?}: if that member lost its \
                 copy, give it the file from another member (cluster-secret-file); \
                 otherwise a second process claims its name"
            )));
        }
        let mut wb = self.engine.write_batch();
        wb.put(Cf::Raft, &key, b"");
        self.engine.write(wb, true)?;
        info!(self.logger, "cluster secret handed to an initial member"; "member" => name);
        Ok(self.secret.as_str().to_string())
    }

    /// Adds the member `req` names as a learner (the leader promotes it once it caught
    /// up), removing first a member of the same name.
    fn add_member(&self, req: &JoinRequest) -> Result<JoinResponse> {
        let _one_at_a_time = self.join_lock.lock();
        let view = self.group.view();
        let term = view.serving_term.ok_or_else(|| self.not_leader())?;
        let name = req.get_name();
        let addr = req.get_url().strip_prefix("http://").unwrap_or_default();
        if name.is_empty() || addr.rsplit_once(':').is_none() {
            return Err(Error::InvalidValue(
                "a joining member needs a name and an http://host:port URL".into(),
            ));
        }
        if name == self.group.name() {
            return Err(Error::Member(format!(
                "{name} is this group's leader: it cannot be replaced while it leads"
            )));
        }
        if let Some(old) = self.group.member_named(name) {
            info!(self.logger, "replacing pd member"; "member" => name, "old_id" => old.member_id);
            let mut cmd = Command::default();
            cmd.mut_ops().push(delete(&k::member_key(old.member_id)));
            self.group
                .change_members(term, remove_member(old.member_id), cmd)?;
        }
        let max = self
            .engine
            .get(Cf::Default, k::MAX_MEMBER_ID_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let id = max.max(view.members.keys().copied().max().unwrap_or(0)) + 1;
        let mut member = proto::pdpb::Member::default();
        member.set_name(name.to_string());
        member.member_id = id;
        member.mut_peer_urls().push(url(addr));
        member.mut_client_urls().push(url(addr));
        let mut cmd = Command::default();
        cmd.mut_ops().push(put(
            &k::member_key(id),
            member
                .write_to_bytes()
                .expect("encoding a protobuf message into memory cannot fail"),
        ));
        cmd.mut_ops()
            .push(put(k::MAX_MEMBER_ID_KEY, id.to_be_bytes().to_vec()));
        self.group.change_members(term, add_learner(id), cmd)?;
        info!(self.logger, "pd member added"; "member" => name, "member_id" => id, "url" => req.get_url());
        let mut resp = JoinResponse::default();
        resp.set_member_id(id);
        resp.set_group_id(self.identity.group_id);
        resp.set_members(self.group.view().members.into_values().collect());
        Ok(resp)
    }

    fn move_leader(&self, req: &TransferLeaderRequest) -> Result<()> {
        if self.group.view().serving_term.is_none() {
            return Err(self.not_leader());
        }
        let to = self
            .group
            .member_named(req.get_name())
            .ok_or_else(|| Error::Member(format!("no pd member is named {:?}", req.get_name())))?;
        if to.member_id != self.group.id() {
            info!(self.logger, "transferring pd leadership"; "to" => req.get_name());
            self.group.transfer_leader(to.member_id);
        }
        Ok(())
    }
}

fn refuse<T>(ctx: &RpcContext, sink: UnarySink<T>, code: RpcStatusCode, msg: String) {
    ctx.spawn(sink.fail(RpcStatus::with_message(code, msg)).map(|_| ()));
}

const UNAUTHENTICATED: &str =
    "pd member calls must carry this cluster's secret (cluster-secret-file)";

impl PdMember for MemberService {
    fn raft(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<RaftBatch>,
        sink: ClientStreamingSink<RaftDone>,
    ) {
        if !self.authenticated(&ctx) {
            let status =
                RpcStatus::with_message(RpcStatusCode::UNAUTHENTICATED, UNAUTHENTICATED.into());
            ctx.spawn(sink.fail(status).map(|_| ()));
            return;
        }
        let this = self.clone();
        ctx.spawn(async move {
            let mut stream = stream;
            let refused = loop {
                match stream.try_next().await {
                    Ok(Some(batch)) if batch.group_id != this.identity.group_id => {
                        break Some(format!(
                            "raft messages of group {} sent to a member of group {} (initial \
                             cluster {})",
                            batch.group_id,
                            this.identity.group_id,
                            this.identity.get_initial_cluster()
                        ));
                    }
                    Ok(Some(batch)) => {
                        let msgs: Vec<Message> = batch
                            .get_messages()
                            .iter()
                            .filter_map(|b| Message::parse_from_bytes(b).ok())
                            .collect();
                        this.group.step(msgs, batch.get_from_url().to_string());
                    }
                    Ok(None) => break None,
                    Err(e) => {
                        warn!(this.logger, "raft stream from a pd member broke"; "err" => %e);
                        return;
                    }
                }
            };
            let _ = match refused {
                None => sink.success(RaftDone::default()).await,
                Some(why) => {
                    warn!(this.logger, "raft messages refused"; "why" => &why);
                    sink.fail(RpcStatus::with_message(
                        RpcStatusCode::FAILED_PRECONDITION,
                        why,
                    ))
                    .await
                }
            };
        });
    }

    fn hello(&mut self, ctx: RpcContext, req: HelloRequest, sink: UnarySink<HelloResponse>) {
        let mut resp = HelloResponse::default();
        let view = self.group.view();
        resp.caller_matched = view
            .members
            .values()
            .find(|m| m.get_name() == req.get_name())
            .and_then(|m| view.matched.get(&m.member_id))
            .copied()
            .unwrap_or(0);
        let mut h = header(Ok(()));
        h.cluster_id = view.cluster_id;
        resp.set_header(h);
        resp.set_name(self.identity.get_name().to_string());
        resp.member_id = self.identity.member_id;
        resp.group_id = self.identity.group_id;
        resp.set_initial_cluster(self.identity.get_initial_cluster().to_string());
        ctx.spawn(sink.success(resp).map(|_| ()));
    }

    fn fetch_secret(
        &mut self,
        ctx: RpcContext,
        req: FetchSecretRequest,
        sink: UnarySink<FetchSecretResponse>,
    ) {
        let mut resp = FetchSecretResponse::default();
        // With TLS, only a member's certificate may ask.
        let asked = match self.security.tls() && !self.security.is_cluster_peer(&ctx) {
            true => Err(Error::Member(
                "the cluster secret goes only to a peer with a cluster certificate".into(),
            )),
            false => self.give_secret(&req),
        };
        match asked {
            Ok(secret) => resp.set_secret(secret),
            Err(e) => {
                warn!(self.logger, "cluster secret refused"; "to" => req.get_name(), "why" => %e);
                resp.set_header(header(Err(e)));
            }
        }
        ctx.spawn(sink.success(resp).map(|_| ()));
    }

    fn join(&mut self, ctx: RpcContext, req: JoinRequest, sink: UnarySink<JoinResponse>) {
        if !self.authenticated(&ctx) {
            return refuse(
                &ctx,
                sink,
                RpcStatusCode::UNAUTHENTICATED,
                UNAUTHENTICATED.into(),
            );
        }
        let this = self.clone();
        let task = self
            .pool
            .spawn_blocking(move || match this.add_member(&req) {
                Ok(resp) => resp,
                Err(e) => {
                    let mut resp = JoinResponse::default();
                    resp.set_header(header(Err(e)));
                    resp
                }
            });
        ctx.spawn(async move {
            if let Ok(resp) = task.await {
                let _ = sink.success(resp).await;
            }
        });
    }

    fn transfer_leader(
        &mut self,
        ctx: RpcContext,
        req: TransferLeaderRequest,
        sink: UnarySink<TransferLeaderResponse>,
    ) {
        if !self.authenticated(&ctx) {
            return refuse(
                &ctx,
                sink,
                RpcStatusCode::UNAUTHENTICATED,
                UNAUTHENTICATED.into(),
            );
        }
        let mut resp = TransferLeaderResponse::default();
        resp.set_header(header(self.move_leader(&req)));
        ctx.spawn(sink.success(resp).map(|_| ()));
    }
}
