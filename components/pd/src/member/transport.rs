//! Raft messages to the other members: one queue and one gRPC client stream per member,
//! redialed with backoff. A message that cannot be sent is dropped (Raft resends), and
//! the group's thread is told the member is unreachable.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crossbeam_channel::Sender;
use futures::SinkExt;
use grpcio::{Environment, WriteFlags};
use proto::pd_memberpb::RaftBatch;
use proto_grpc::pd_memberpb_grpc::PdMemberClient;
use protobuf::Message as _;
use raft::eraftpb::Message;
use slog::{warn, Logger};
use tokio::sync::mpsc;
use util::secret::ClusterSecret;
use util::security::Security;

use super::node::Msg;

/// Messages queued per member before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages sent in one batch at most.
const BATCH: usize = 256;
/// Bytes of messages in one batch at most (well under the receiver's message limit).
const BATCH_BYTES: usize = 8 << 20;
/// The longest wait before redialing a member that could not be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Sends Raft messages to the other members.
pub(crate) struct Transport {
    group_id: u64,
    /// Where this member is reached, sent with every batch.
    url: String,
    env: Arc<Environment>,
    secret: ClusterSecret,
    security: Arc<Security>,
    runtime: tokio::runtime::Handle,
    node: Sender<Msg>,
    /// Per member id: its URL and its queue.
    peers: HashMap<u64, (String, mpsc::Sender<Message>)>,
    max_message_bytes: usize,
    logger: Logger,
}

impl Transport {
    /// A transport for members of `group_id`; unreachable members are reported to `node`.
    pub(crate) fn new(
        group_id: u64,
        url: String,
        (secret, security): (ClusterSecret, Arc<Security>),
        runtime: tokio::runtime::Handle,
        node: Sender<Msg>,
        max_message_bytes: usize,
        logger: Logger,
    ) -> Transport {
        let env = Arc::new(
            grpcio::EnvBuilder::new()
                .cq_count(1)
                .name_prefix("pd-peer")
                .build(),
        );
        Transport {
            group_id,
            url,
            env,
            secret,
            security,
            runtime,
            node,
            peers: HashMap::new(),
            max_message_bytes,
            logger,
        }
    }

    /// Queues `msg` for member `to` at `url` (`http://host:port`).
    pub(crate) fn send(&mut self, to: u64, url: &str, msg: Message) {
        let stale = self.peers.get(&to).is_some_and(|(u, _)| u != url);
        if stale || !self.peers.contains_key(&to) {
            let (tx, rx) = mpsc::channel(QUEUE);
            self.spawn_sender(to, url.to_string(), rx);
            self.peers.insert(to, (url.to_string(), tx));
        }
        let (_, tx) = self.peers.get(&to).expect("inserted above");
        let snapshot = is_snapshot(&msg);
        if tx.try_send(msg).is_err() {
            // Never blocks: this runs on the group's own thread, which drains `node`.
            let _ = self.node.try_send(Msg::Unreachable(to));
            if snapshot {
                let _ = self.node.try_send(Msg::SnapshotStatus(to, false));
            }
        }
    }

    /// Stops sending to members no longer in the group.
    pub(crate) fn retain(&mut self, members: impl Fn(u64) -> bool) {
        self.peers.retain(|id, _| members(*id));
    }

    fn spawn_sender(&self, to: u64, url: String, mut rx: mpsc::Receiver<Message>) {
        let addr = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        // A new channel after every failed stream: it dials with the certificate files as
        // they are then, so a rotation reaches member-to-member traffic too.
        let (env, security, max) = (
            self.env.clone(),
            self.security.clone(),
            self.max_message_bytes as i32,
        );
        let dial = move |addr: &str| {
            let builder = util::grpc::channel(env.clone()).max_send_message_len(max);
            PdMemberClient::new(security.connect(builder, addr))
        };
        let mut client = dial(&addr);
        let (group_id, secret, node, logger) = (
            (self.group_id, self.url.clone()),
            self.secret.clone(),
            self.node.clone(),
            self.logger.clone(),
        );
        self.runtime.spawn(async move {
            let mut backoff = Duration::from_millis(50);
            // Ends when the transport drops this member's queue.
            while let Some(first) = rx.recv().await {
                match stream_to(
                    &client,
                    group_id.clone(),
                    &secret,
                    to,
                    &node,
                    first,
                    &mut rx,
                )
                .await
                {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(logger, "cannot send raft messages to pd member";
                              "member_id" => to, "addr" => &addr, "err" => %e);
                        let _ = node.try_send(Msg::Unreachable(to));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        client = dial(&addr);
                        // What queued meanwhile is stale; Raft sends afresh (a snapshot
                        // once told it failed).
                        while let Ok(m) = rx.try_recv() {
                            if is_snapshot(&m) {
                                let _ = node.try_send(Msg::SnapshotStatus(to, false));
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Opens a stream to member `to` and sends until the queue closes or the stream fails;
/// tells `node` whether each snapshot went out.
async fn stream_to(
    client: &PdMemberClient,
    (group_id, from_url): (u64, String),
    secret: &ClusterSecret,
    to: u64,
    node: &Sender<Msg>,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
) -> Result<(), grpcio::Error> {
    let opt = grpcio::CallOption::default().headers(secret.headers());
    let (mut sink, receiver) = match client.raft_opt(opt) {
        Ok(s) => s,
        Err(e) => {
            if is_snapshot(&first) {
                let _ = node.try_send(Msg::SnapshotStatus(to, false));
            }
            return Err(e);
        }
    };
    let mut next = Some(first);
    while let Some(m) = next.take() {
        let mut batch = RaftBatch::default();
        batch.set_group_id(group_id);
        batch.set_from_url(from_url.clone());
        let mut snapshots = usize::from(is_snapshot(&m));
        let mut bytes = encode(&m);
        let mut size = bytes.len();
        batch.mut_messages().push(bytes);
        while batch.get_messages().len() < BATCH && size < BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    snapshots += usize::from(is_snapshot(&m));
                    bytes = encode(&m);
                    size += bytes.len();
                    batch.mut_messages().push(bytes);
                }
                Err(_) => break,
            }
        }
        let sent = sink.send((batch, WriteFlags::default())).await;
        for _ in 0..snapshots {
            let _ = node.try_send(Msg::SnapshotStatus(to, sent.is_ok()));
        }
        sent?;
        next = rx.recv().await;
    }
    sink.close().await?;
    receiver.await?;
    Ok(())
}

fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
}

fn encode(m: &Message) -> Vec<u8> {
    m.write_to_bytes()
        .expect("encoding a protobuf message into memory cannot fail")
}
