//! Who this member is, settled before its Raft group starts: a restart reads its
//! identity; a member of a new group checks the others agree on the initial cluster, gets
//! the cluster secret, and writes the group's first state; a member that joins is added by
//! the leader and then receives a snapshot.

use std::{
    hash::Hasher,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use engine::{Cf, Engine};
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, Environment};
use keys::pd as k;
use proto::{
    pd_memberpb::{FetchSecretRequest, HelloRequest, JoinRequest, MemberIdentity},
    pdpb,
};
use proto_grpc::pd_memberpb_grpc::PdMemberClient;
use slog::{info, warn, Logger};
use util::secret::{self, ClusterSecret};
use util::security::Security;

use super::log::MemberLog;
use crate::{Config, Error, Result};

/// How long one call to another member may take at start-up.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of calls to members that did not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// This member, ready to start its group.
pub(crate) struct Prepared {
    /// Name, member id, group.
    pub identity: MemberIdentity,
    /// What members and stores of this cluster prove themselves with.
    pub secret: ClusterSecret,
    /// TLS: what members dial and listen with, and what else proves a cluster process.
    pub security: Arc<Security>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The URL a member at `addr` is reached at.
pub(crate) fn url(addr: &str) -> String {
    format!("http://{addr}")
}

/// The group id of a group started with `members`: the same on every member given the
/// same initial cluster, in any order.
fn group_id(members: &[(String, String)]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(canonical(members).as_bytes());
    h.finish().max(1)
}

/// `members` as one string, sorted.
fn canonical(members: &[(String, String)]) -> String {
    let mut sorted = members.to_vec();
    sorted.sort();
    sorted
        .iter()
        .map(|(n, a)| format!("{n}={a}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn member_record(id: u64, name: &str, addr: &str) -> pdpb::Member {
    let mut m = pdpb::Member::default();
    m.set_name(name.to_string());
    m.member_id = id;
    m.mut_peer_urls().push(url(addr));
    m.mut_client_urls().push(url(addr));
    m
}

/// What a starting member dials the others with.
struct Dial {
    env: Arc<Environment>,
    security: Arc<Security>,
}

fn client(dial: &Dial, addr: &str) -> PdMemberClient {
    PdMemberClient::new(
        dial.security
            .connect(ChannelBuilder::new(dial.env.clone()), addr),
    )
}

fn header_error(h: &pdpb::ResponseHeader) -> Option<String> {
    h.has_error()
        .then(|| h.get_error().get_message().to_string())
}

/// Settles this member's identity (see the module doc) and its cluster secret.
pub(crate) fn prepare(
    cfg: &Config,
    security: Arc<Security>,
    engine: &Engine,
    fresh: bool,
    logger: &Logger,
) -> Result<Prepared> {
    let secret_path = secret::path_in(&cfg.cluster_secret_file, &cfg.data_dir);
    if let Some(identity) = engine.get_msg::<MemberIdentity>(Cf::Raft, k::IDENTITY_KEY)? {
        if identity.get_name() != cfg.name {
            return Err(Error::Member(format!(
                "{} holds the data of pd member {:?}, not {:?} (pd.name)",
                cfg.data_dir.display(),
                identity.get_name(),
                cfg.name
            )));
        }
        let secret = match secret_path.exists() || !security.tls() {
            true => ClusterSecret::load_or_create(&secret_path, false)?,
            // A member that joined with TLS alone has none.
            false => ClusterSecret::none(),
        };
        return Ok(Prepared {
            identity,
            secret,
            security,
        });
    }
    let dial = Dial {
        env: Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix("pd-start")
                .build(),
        ),
        security: security.clone(),
    };
    if !cfg.join.is_empty() {
        return join(cfg, engine, &dial, &secret_path, logger);
    }
    let members = cfg.initial_members()?;
    let group_id = group_id(&members);
    let initial_cluster = canonical(&members);
    let secret = if members.len() == 1 {
        ClusterSecret::load_or_create(&secret_path, fresh)?
    } else {
        if engine.get(Cf::Default, k::CLUSTER_KEY)?.is_some() {
            return Err(Error::Member(format!(
                "{} holds the metadata of a PD that ran alone; start it alone \
                 (no initial-cluster) and add members with --join",
                cfg.data_dir.display()
            )));
        }
        check_others(cfg, &members, group_id, &initial_cluster, &dial, logger)?;
        initial_secret(cfg, &members, group_id, &secret_path, &dial, logger)?
    };
    let mut identity = MemberIdentity::default();
    identity.set_name(cfg.name.clone());
    identity.group_id = group_id;
    identity.set_initial_cluster(initial_cluster);
    identity.created_unix_ms = unix_ms();
    let mut wb = engine.write_batch();
    for (i, (name, addr)) in members.iter().enumerate() {
        let id = i as u64 + 1;
        if *name == cfg.name {
            identity.member_id = id;
        }
        wb.put_msg(
            Cf::Default,
            &k::member_key(id),
            &member_record(id, name, addr),
        );
    }
    wb.put(
        Cf::Default,
        k::MAX_MEMBER_ID_KEY,
        &(members.len() as u64).to_be_bytes(),
    );
    MemberLog::bootstrap(&mut wb, (1..=members.len() as u64).collect());
    wb.put_msg(Cf::Raft, k::IDENTITY_KEY, &identity);
    engine.write(wb, true)?;
    info!(logger, "pd group created"; "member" => &cfg.name, "member_id" => identity.member_id,
          "initial_cluster" => identity.get_initial_cluster());
    Ok(Prepared {
        identity,
        secret,
        security,
    })
}

/// Asks every other initial member who it is: one that answers with another initial
/// cluster (or under another name) stops this start with an error; one that does not
/// answer may simply not be up yet.
fn check_others(
    cfg: &Config,
    members: &[(String, String)],
    group_id: u64,
    initial_cluster: &str,
    dial: &Dial,
    logger: &Logger,
) -> Result<()> {
    for (name, addr) in members.iter().filter(|(n, _)| *n != cfg.name) {
        let mut req = HelloRequest::default();
        req.set_group_id(group_id);
        req.set_name(cfg.name.clone());
        req.set_initial_cluster(initial_cluster.to_string());
        let opt = CallOption::default().timeout(CALL_TIMEOUT);
        match client(dial, addr).hello_opt(&req, opt) {
            Err(e) => {
                warn!(logger, "pd member not reachable yet"; "member" => name, "addr" => addr, "err" => %e)
            }
            Ok(resp) if resp.get_name() != name => {
                return Err(Error::Member(format!(
                    "{addr} answers as pd member {:?}, but the initial cluster names it {name:?}",
                    resp.get_name()
                )))
            }
            Ok(resp) if resp.caller_matched > super::log::INIT_INDEX => {
                return Err(Error::Member(format!(
                    "pd member {name} at {addr} leads a group in which {} already took part \
                     (it acknowledged entries up to {}): this member lost its data; replace \
                     it with --join instead of starting a new group",
                    cfg.name, resp.caller_matched
                )))
            }
            Ok(resp) if resp.group_id != group_id => {
                return Err(Error::Member(format!(
                    "pd member {name} at {addr} was started with initial cluster {:?}; this \
                     member was given {initial_cluster:?}: every member of a new group must \
                     be given the same one",
                    resp.get_initial_cluster()
                )))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The secret of a new group: the configured file, or one the seed (the first name)
/// creates and every other initial member fetches from it once.
fn initial_secret(
    cfg: &Config,
    members: &[(String, String)],
    group_id: u64,
    path: &Path,
    dial: &Dial,
    logger: &Logger,
) -> Result<ClusterSecret> {
    if path.exists() {
        return Ok(ClusterSecret::load(path)?);
    }
    let (seed, seed_addr) = &members[0];
    if *seed == cfg.name {
        return Ok(ClusterSecret::load_or_create(path, true)?);
    }
    let deadline = Instant::now() + cfg.join_timeout;
    let mut req = FetchSecretRequest::default();
    req.set_group_id(group_id);
    req.set_name(cfg.name.clone());
    let last = loop {
        let opt = CallOption::default().timeout(CALL_TIMEOUT);
        let err = match client(dial, seed_addr).fetch_secret_opt(&req, opt) {
            Ok(resp) => match header_error(resp.get_header()) {
                None => {
                    info!(logger, "cluster secret received from the seed"; "seed" => seed);
                    return Ok(ClusterSecret::save(path, resp.get_secret())?);
                }
                // The seed refused: waiting will not change its mind.
                Some(e) => return Err(Error::Member(format!("seed {seed} at {seed_addr}: {e}"))),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            break err;
        }
        std::thread::sleep(RETRY_PAUSE);
    };
    Err(Error::Member(format!(
        "could not fetch the cluster secret from the seed {seed} at {seed_addr} within {:?} \
         (pd.join-timeout): {last}; start the seed, or give every member the same \
         cluster-secret-file",
        cfg.join_timeout
    )))
}

/// Joins a running group: the leader adds this member (replacing one of the same name)
/// and answers with its id; the snapshot that follows carries the metadata.
fn join(
    cfg: &Config,
    engine: &Engine,
    dial: &Dial,
    secret_path: &Path,
    logger: &Logger,
) -> Result<Prepared> {
    let has_secret = !cfg.cluster_secret_file.as_os_str().is_empty() && secret_path.exists();
    if !has_secret && !dial.security.tls() {
        return Err(Error::Member(
            "joining a PD group needs the cluster secret: copy <data-dir>/cluster-secret \
             from a member and give it as cluster-secret-file (or use TLS certificates)"
                .into(),
        ));
    }
    // With TLS, this member's certificate proves it.
    let secret = match has_secret {
        true => ClusterSecret::load(secret_path)?,
        false => ClusterSecret::none(),
    };
    let mut req = JoinRequest::default();
    req.set_name(cfg.name.clone());
    req.set_url(url(cfg.client_addr()));
    let deadline = Instant::now() + cfg.join_timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        for addr in cfg.join_addrs() {
            let opt = CallOption::default()
                .timeout(cfg.propose_timeout * 3)
                .headers(secret.headers());
            match client(dial, &addr).join_opt(&req, opt) {
                Ok(resp) => match header_error(resp.get_header()) {
                    None => {
                        let mut identity = MemberIdentity::default();
                        identity.set_name(cfg.name.clone());
                        identity.member_id = resp.member_id;
                        identity.group_id = resp.group_id;
                        identity.set_joined_members(resp.get_members().into());
                        identity.created_unix_ms = unix_ms();
                        let mut wb = engine.write_batch();
                        wb.put_msg(Cf::Raft, k::IDENTITY_KEY, &identity);
                        engine.write(wb, true)?;
                        info!(logger, "joined the pd group"; "via" => &addr, "member_id" => resp.member_id);
                        return Ok(Prepared {
                            identity,
                            secret,
                            security: dial.security.clone(),
                        });
                    }
                    Some(e) => last = format!("{addr}: {e}"),
                },
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        std::thread::sleep(RETRY_PAUSE);
    }
    Err(Error::Member(format!(
        "could not join the pd group at {} within {:?} (pd.join-timeout): {last}",
        cfg.join, cfg.join_timeout
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_id_does_not_depend_on_the_order_members_are_given_in() {
        let a = vec![("pd1".into(), "h:1".into()), ("pd2".into(), "h:2".into())];
        let b = vec![("pd2".into(), "h:2".into()), ("pd1".into(), "h:1".into())];
        assert_eq!(group_id(&a), group_id(&b));
        let c = vec![("pd1".into(), "h:1".into()), ("pd2".into(), "h:3".into())];
        assert_ne!(group_id(&a), group_id(&c));
    }
}
