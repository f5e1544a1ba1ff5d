//! PD's own Raft group. Every PD member keeps a copy of the metadata; the group's leader
//! alone serves. A write is a Raft proposal, answered once applied on the leader; a
//! timestamp batch is answered once a quorum confirmed the leadership (a read index)
//! after the batch was taken.
//!
//! - `log.rs`: the Raft log and apply state on PD's RocksDB (raft-rs's `Storage`);
//! - `node.rs`: the group's thread, the only writer of the log and the metadata;
//! - `transport.rs`: messages to the other members;
//! - `service.rs`: `pd_memberpb.PdMember`, what members call on each other;
//! - `start.rs`: a member's identity: a new group, a restart, or a join.

mod log;
mod node;
mod service;
mod start;
mod transport;

use std::{sync::Arc, thread::JoinHandle, time::Duration};

use crossbeam_channel::{bounded, Sender};
use engine::Engine;
use parking_lot::RwLock;
use proto::{pd_memberpb::Command, pdpb};
use slog::Logger;

pub(crate) use self::node::{delete, put, View};
use self::node::{Msg, Node, NodeConfig};
pub(crate) use self::service::MemberService;
pub(crate) use self::start::{prepare, url, Prepared};
use crate::{storage::Replicate, Config, Error, Result};

/// This member of the PD group.
pub(crate) struct Group {
    id: u64,
    name: String,
    tx: Option<Sender<Msg>>,
    view: Arc<RwLock<View>>,
    propose_timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl Group {
    /// Starts the group's thread for the member `prepared` describes; leadership changes
    /// are told on `serving` (the term this member serves in, or `None`).
    pub(crate) fn start(
        cfg: &Config,
        engine: Engine,
        prepared: &Prepared,
        runtime: tokio::runtime::Handle,
        serving: Sender<Option<u64>>,
        logger: &Logger,
    ) -> Result<Group> {
        let identity = &prepared.identity;
        let logger = logger.new(slog::o!("member" => identity.get_name().to_string(),
                                          "member_id" => identity.member_id));
        let (tx, rx) = bounded(65536);
        let own_url = identity_url(identity, cfg);
        let transport = transport::Transport::new(
            identity.group_id,
            own_url,
            (prepared.secret.clone(), prepared.security.clone()),
            runtime,
            tx.clone(),
            cfg.raft_max_message_bytes,
            logger.clone(),
        );
        let view = Arc::new(RwLock::new(View::default()));
        let node_cfg = NodeConfig {
            id: identity.member_id,
            tick: cfg.raft_tick_interval,
            election_ticks: cfg.raft_election_ticks,
            heartbeat_ticks: cfg.raft_heartbeat_ticks,
            log_gc_threshold: cfg.raft_log_gc_threshold,
            joined_members: identity.get_joined_members().to_vec(),
        };
        let node = Node::new(
            &node_cfg,
            log::MemberLog::open(engine)?,
            rx,
            transport,
            view.clone(),
            serving,
            logger,
        )?;
        let thread = std::thread::Builder::new()
            .name("pd-raft".into())
            .spawn(move || node.run())
            .map_err(|e| Error::Raft(format!("start the pd raft thread: {e}")))?;
        Ok(Group {
            id: identity.member_id,
            name: identity.get_name().to_string(),
            tx: Some(tx),
            view,
            propose_timeout: cfg.propose_timeout,
            thread: Some(thread),
        })
    }

    /// This member's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// This member's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The group as this member last saw it.
    pub(crate) fn view(&self) -> View {
        self.view.read().clone()
    }

    /// The writes of a leader serving in `term`.
    pub(crate) fn replicate(&self, term: u64) -> Arc<dyn Replicate> {
        Arc::new(TermWriter {
            tx: self.sender(),
            term,
            timeout: self.propose_timeout,
        })
    }

    /// The member named `name`.
    pub(crate) fn member_named(&self, name: &str) -> Option<pdpb::Member> {
        self.view
            .read()
            .members
            .values()
            .find(|m| m.get_name() == name)
            .cloned()
    }

    /// Asks the group's leader (this member) to hand leadership to `to`.
    pub(crate) fn transfer_leader(&self, to: u64) {
        let _ = self.sender().send(Msg::TransferLeader(to));
    }

    fn sender(&self) -> Sender<Msg> {
        self.tx.clone().expect("the group runs until dropped")
    }

    /// Proposes a membership change as the leader of `term` and waits until it applied.
    pub(crate) fn change_members(
        &self,
        term: u64,
        change: raft::eraftpb::ConfChange,
        cmd: Command,
    ) -> Result<()> {
        let (done, rx) = bounded(1);
        self.sender()
            .send(Msg::ConfChange {
                term,
                change,
                cmd,
                done,
            })
            .map_err(|_| stopped())?;
        wait(rx, self.propose_timeout, "membership change")
    }

    /// Raft messages from another member, reached at `from_url`.
    pub(crate) fn step(&self, msgs: Vec<raft::eraftpb::Message>, from_url: String) {
        let _ = self.sender().try_send(Msg::Raft(msgs, from_url));
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where this member is reached: its entry in the initial cluster, or else its
/// advertised (or listening) address.
fn identity_url(identity: &proto::pd_memberpb::MemberIdentity, cfg: &Config) -> String {
    let from_initial = identity
        .get_initial_cluster()
        .split(',')
        .filter_map(|p| p.split_once('='))
        .find(|(n, _)| *n == identity.get_name())
        .map(|(_, a)| a.to_string());
    url(&from_initial.unwrap_or_else(|| cfg.client_addr().to_string()))
}

fn stopped() -> Error {
    Error::Undetermined("the pd member is stopping".into())
}

fn wait(rx: crossbeam_channel::Receiver<Result<()>>, timeout: Duration, what: &str) -> Result<()> {
    match rx.recv_timeout(timeout) {
        Ok(res) => res,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Undetermined(format!(
            "{what} not committed within {timeout:?}"
        ))),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(stopped()),
    }
}

/// Writes of the leader of one term.
struct TermWriter {
    tx: Sender<Msg>,
    term: u64,
    timeout: Duration,
}

impl Replicate for TermWriter {
    fn write(&self, cmd: Command) -> Result<()> {
        let (done, rx) = bounded(1);
        self.tx
            .send(Msg::Propose {
                term: self.term,
                cmd,
                done,
            })
            .map_err(|_| stopped())?;
        wait(rx, self.timeout, "pd metadata write")
    }

    fn confirm_leader(&self) -> Result<()> {
        let (done, rx) = bounded(1);
        self.tx
            .send(Msg::Confirm {
                term: self.term,
                done,
            })
            .map_err(|_| stopped())?;
        match wait(rx, self.timeout, "leadership check") {
            Err(Error::Undetermined(_)) => Err(Error::NotLeader(None)),
            res => res,
        }
    }
}
