//! One BatchCommands stream per store connection: the requests of every task using this
//! client go out together, as many to a message as are waiting, and each answer finds
//! its caller by the id it echoes. It saves the gRPC call per request that a unary call
//! costs on both sides, which is most of a small request's cost.
//!
//! A stream that fails ends every request waiting on it with the stream's error (for a
//! write: its outcome is unknown unless gRPC could not connect at all); the next request
//! opens a new stream. A request still queued when its stream failed was never sent,
//! and says so ([`NOT_SENT`]), so that even a write may be sent again. A request whose
//! caller stopped waiting while it was still queued is dropped; one already handed to
//! gRPC may still land late, as a unary call abandoned in flight may. A request larger
//! than a stream message, and every request to a store that does not serve the stream,
//! goes as a unary call instead.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use futures::{SinkExt, TryStreamExt};
use grpcio::{
    ClientDuplexReceiver, ClientDuplexSender, ClientUnaryReceiver, RpcStatus, RpcStatusCode,
    WriteFlags,
};
use parking_lot::Mutex;
use proto::{
    kvrpcpb,
    tikvpb::{
        BatchCommandsRequest, BatchCommandsRequest_Request,
        BatchCommandsRequest_Request_oneof_cmd as Cmd, BatchCommandsResponse,
        BatchCommandsResponse_Response_oneof_cmd as Answer,
    },
};
use proto_grpc::tikvpb_grpc::TikvClient;
use protobuf::Message;
use tokio::sync::{mpsc, oneshot};

/// How the error of a request that never left this client begins.
pub(crate) const NOT_SENT: &str = "not sent:";
/// The error of a request refused because the client's queue to the store is full.
const QUEUE_FULL: &str = "not sent: the client's queue for the store is full";
/// Most requests in one message (TiKV's clients use the same figure).
const MAX_REQUESTS_PER_MESSAGE: usize = 128;
/// Requests stop joining a message once it is this large; a larger request goes as a
/// unary call, so that a message never nears gRPC's limit.
const MESSAGE_BYTES: usize = 1 << 20;
/// Requests waiting for the writer; past it a request is refused as not sent (the store
/// is not taking what was already written).
const MAX_QUEUED: usize = 4096;

/// A request a BatchCommands stream carries, and how its answer comes back.
pub(crate) trait Batched: Message {
    /// Its answer.
    type Resp: Unpin;
    /// The request as a stream command.
    fn into_cmd(self) -> Cmd;
    /// The answer, if `answer` is of its kind.
    fn from_answer(answer: Answer) -> Option<Self::Resp>;
    /// The request as its unary call.
    fn unary(
        &self,
        client: &TikvClient,
        opt: grpcio::CallOption,
    ) -> grpcio::Result<ClientUnaryReceiver<Self::Resp>>;
}

macro_rules! batched {
    ($($req:ident => $resp:ident, $variant:ident, $unary:ident;)*) => {
        $(
            impl Batched for kvrpcpb::$req {
                type Resp = kvrpcpb::$resp;
                fn into_cmd(self) -> Cmd {
                    Cmd::$variant(self)
                }
                fn from_answer(answer: Answer) -> Option<kvrpcpb::$resp> {
                    match answer {
                        Answer::$variant(r) => Some(r),
                        _ => None,
                    }
                }
                fn unary(
                    &self,
                    client: &TikvClient,
                    opt: grpcio::CallOption,
                ) -> grpcio::Result<ClientUnaryReceiver<kvrpcpb::$resp>> {
                    client.$unary(self, opt)
                }
            }
        )*
    };
}

batched! {
    RawGetRequest => RawGetResponse, RawGet, raw_get_async_opt;
    RawBatchGetRequest => RawBatchGetResponse, RawBatchGet, raw_batch_get_async_opt;
    RawPutRequest => RawPutResponse, RawPut, raw_put_async_opt;
    RawBatchPutRequest => RawBatchPutResponse, RawBatchPut, raw_batch_put_async_opt;
    RawDeleteRequest => RawDeleteResponse, RawDelete, raw_delete_async_opt;
    RawBatchDeleteRequest => RawBatchDeleteResponse, RawBatchDelete, raw_batch_delete_async_opt;
    RawScanRequest => RawScanResponse, RawScan, raw_scan_async_opt;
    RawDeleteRangeRequest => RawDeleteRangeResponse, RawDeleteRange, raw_delete_range_async_opt;
    GetRequest => GetResponse, Get, kv_get_async_opt;
    ScanRequest => ScanResponse, Scan, kv_scan_async_opt;
    PrewriteRequest => PrewriteResponse, Prewrite, kv_prewrite_async_opt;
    CommitRequest => CommitResponse, Commit, kv_commit_async_opt;
    BatchRollbackRequest => BatchRollbackResponse, BatchRollback, kv_batch_rollback_async_opt;
    ScanLockRequest => ScanLockResponse, ScanLock, kv_scan_lock_async_opt;
    ResolveLockRequest => ResolveLockResponse, ResolveLock, kv_resolve_lock_async_opt;
    PessimisticLockRequest => PessimisticLockResponse, PessimisticLock, kv_pessimistic_lock_async_opt;
    CheckTxnStatusRequest => CheckTxnStatusResponse, CheckTxnStatus, kv_check_txn_status_async_opt;
    CheckSecondaryLocksRequest => CheckSecondaryLocksResponse, CheckSecondaryLocks, kv_check_secondary_locks_async_opt;
}

/// The batch stream to one store, opened on first use and again after a failure.
pub(crate) struct BatchStream {
    client: TikvClient,
    opt: grpcio::CallOption,
    current: Mutex<Option<Arc<Stream>>>,
    /// The store answered the stream UNIMPLEMENTED: every request goes unary.
    unary_only: Arc<AtomicBool>,
}

/// One open stream.
struct Stream {
    /// To the task that writes the stream.
    queue: mpsc::Sender<Queued>,
    waiting: Arc<Mutex<Waiting>>,
}

/// A request waiting for the writer: its id, its command, and its size on the wire
/// (measured once, when the caller chose between the stream and a unary call).
type Queued = (u64, Cmd, usize);

/// What a caller gets: the answer, or why there is none.
type Reply = Result<Answer, RpcStatus>;

/// The requests sent and not yet answered, by id.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    callers: HashMap<u64, oneshot::Sender<Reply>>,
    /// Why the stream ended, once it has: it takes no more requests.
    ended: Option<RpcStatus>,
}

impl BatchStream {
    /// Streams to the store `client` reaches, opened with `opt`'s headers.
    pub(crate) fn new(client: TikvClient, opt: grpcio::CallOption) -> BatchStream {
        BatchStream {
            client,
            opt,
            current: Mutex::default(),
            unary_only: Arc::default(),
        }
    }

    /// Sends `req` on the stream and waits for its answer.
    pub(crate) async fn call<R: Batched>(&self, req: R) -> grpcio::Result<R::Resp> {
        let size = req.compute_size() as usize;
        if self.unary_only.load(Ordering::Relaxed) || size > MESSAGE_BYTES {
            return req.unary(&self.client, self.opt.clone())?.await;
        }
        let stream = self.stream().map_err(|e| {
            let why = format!("{NOT_SENT} the batch stream did not open ({e})");
            failure(RpcStatusCode::UNAVAILABLE, why)
        })?;
        let (id, answer) = stream.register()?;
        let _forget = Forget {
            waiting: &stream.waiting,
            id,
        };
        if let Err(e) = stream.queue.try_send((id, req.into_cmd(), size)) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => format!("{QUEUE_FULL} ({MAX_QUEUED})"),
                mpsc::error::TrySendError::Closed(_) => {
                    format!("{NOT_SENT} the batch stream had ended")
                }
            };
            return Err(failure(RpcStatusCode::UNAVAILABLE, why));
        }
        let answer = match answer.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => return Err(grpcio::Error::RpcFailure(why)),
            // The stream ended after the request went out: `ended` says why.
            Err(_) => return Err(grpcio::Error::RpcFailure(stream.ended())),
        };
        R::from_answer(answer).ok_or_else(|| {
            failure(
                RpcStatusCode::INTERNAL,
                "the store answered a batched request with an answer of another kind".into(),
            )
        })
    }

    /// The open stream, or a new one.
    fn stream(&self) -> grpcio::Result<Arc<Stream>> {
        let mut current = self.current.lock();
        if let Some(s) = current
            .as_ref()
            .filter(|s| s.waiting.lock().ended.is_none())
        {
            return Ok(s.clone());
        }
        let (sink, receiver) = self.client.batch_commands_opt(self.opt.clone())?;
        let (queue, queued) = mpsc::channel(MAX_QUEUED);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let unary_only = &self.unary_only;
        let writer = write_requests(sink, queued, waiting.clone(), unary_only.clone());
        self.client.spawn(writer);
        let reader = read_answers(receiver, waiting.clone(), unary_only.clone());
        self.client.spawn(reader);
        let stream = Arc::new(Stream { queue, waiting });
        *current = Some(stream.clone());
        Ok(stream)
    }
}

impl Stream {
    /// A new request's id and where its answer will arrive; refused once the stream
    /// ended, with nothing sent.
    fn register(&self) -> grpcio::Result<(u64, oneshot::Receiver<Reply>)> {
        let mut w = self.waiting.lock();
        if let Some(why) = &w.ended {
            let msg = format!("{NOT_SENT} the batch stream had ended ({})", why.message());
            return Err(failure(RpcStatusCode::UNAVAILABLE, msg));
        }
        let id = w.next_id;
        w.next_id += 1;
        let (tx, rx) = oneshot::channel();
        w.callers.insert(id, tx);
        Ok((id, rx))
    }

    fn ended(&self) -> RpcStatus {
        self.waiting.lock().ended.clone().unwrap_or_else(|| {
            RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "the batch stream ended".into())
        })
    }
}

/// Drops a caller's place when it stops waiting (answered, or it gave up), so that a
/// store which never answers does not grow the table, and a request not yet written is
/// not written at all.
struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.lock().callers.remove(&self.id);
    }
}

/// Ends a stream: no more requests, and every caller waiting is told `why`. A store
/// that does not serve the stream served nothing sent on it: those requests were not
/// sent, and every later one goes unary (`unary_only`).
fn end(waiting: &Mutex<Waiting>, unary_only: &AtomicBool, mut why: RpcStatus) {
    if why.code() == RpcStatusCode::UNIMPLEMENTED {
        unary_only.store(true, Ordering::Relaxed);
        let msg = format!("{NOT_SENT} {UNSERVED}");
        why = RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, msg);
    }
    let mut w = waiting.lock();
    w.ended.get_or_insert(why);
    // Dropping the senders wakes the callers, who read `ended`.
    w.callers.clear();
}

/// Why a stream ended at a store that does not serve it (an older version).
const UNSERVED: &str = "the store does not serve BatchCommands";

/// Whether a call was not sent because the store does not serve the stream: the same
/// store client, unary from now on, sends it again.
pub(crate) fn stream_unserved(e: &grpcio::Error) -> bool {
    matches!(e, grpcio::Error::RpcFailure(s)
        if s.message().starts_with(NOT_SENT) && s.message().contains(UNSERVED))
}

/// Whether a call was refused because the client's queue to the store was full (the
/// store is slow to take what it was sent; nothing is wrong with the stream).
pub(crate) fn queue_full(e: &grpcio::Error) -> bool {
    matches!(e, grpcio::Error::RpcFailure(s) if s.message().starts_with(QUEUE_FULL))
}

fn failure(code: RpcStatusCode, msg: String) -> grpcio::Error {
    grpcio::Error::RpcFailure(RpcStatus::with_message(code, msg))
}

/// The status a failed call ended with, if the error carries it.
fn status_in(e: grpcio::Error) -> Option<RpcStatus> {
    match e {
        grpcio::Error::RpcFailure(s) | grpcio::Error::RpcFinished(Some(s)) => Some(s),
        _ => None,
    }
}

/// Writes queued requests, as many to a message as are waiting.
async fn write_requests(
    mut sink: ClientDuplexSender<BatchCommandsRequest>,
    mut queued: mpsc::Receiver<Queued>,
    waiting: Arc<Mutex<Waiting>>,
    unary_only: Arc<AtomicBool>,
) {
    // Taken from the queue but left for the next message.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(next) => next,
            None => match queued.recv().await {
                Some(next) => next,
                None => break,
            },
        };
        let (msg, left) = next_message(first, &mut queued, &waiting);
        carried = left;
        if msg.get_requests().is_empty() {
            continue;
        }
        if let Err(e) = sink.send((msg, WriteFlags::default())).await {
            refuse_queued(queued, carried, &waiting);
            // A failed send carries the call's status only sometimes; the reader gets it
            // when the call ends.
            if let Some(status) = status_in(e) {
                end(&waiting, &unary_only, status);
            }
            return;
        }
    }
    // Every handle to the stream is gone: say so, and let the store finish.
    let _ = sink.close().await;
}

/// A message of `first` and what else is queued (up to the message's bounds), skipping
/// requests whose callers gave up; and a request taken that did not fit.
fn next_message(
    first: Queued,
    queued: &mut mpsc::Receiver<Queued>,
    waiting: &Mutex<Waiting>,
) -> (BatchCommandsRequest, Option<Queued>) {
    let mut msg = BatchCommandsRequest::default();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some((id, cmd, size)) = next.take() {
        // Its caller gave up (and may have reported it undetermined): written now, it
        // could apply after writes that caller made since. (One already written may
        // still do so, as a unary call abandoned in flight may.)
        if waiting.lock().callers.contains_key(&id) {
            if !msg.get_requests().is_empty() && bytes + size > MESSAGE_BYTES {
                return (msg, Some((id, cmd, size)));
            }
            bytes += size;
            msg.mut_request_ids().push(id);
            msg.mut_requests().push(BatchCommandsRequest_Request {
                cmd: Some(cmd),
                ..Default::default()
            });
        }
        if msg.get_requests().len() < MAX_REQUESTS_PER_MESSAGE {
            next = queued.try_recv().ok();
        }
    }
    (msg, None)
}

/// Tells the callers of requests still queued that theirs were never sent.
fn refuse_queued(
    mut queued: mpsc::Receiver<Queued>,
    carried: Option<Queued>,
    waiting: &Mutex<Waiting>,
) {
    queued.close();
    let msg = format!("{NOT_SENT} the batch stream failed before it was written");
    let mut w = waiting.lock();
    let unsent = carried
        .into_iter()
        .chain(std::iter::from_fn(|| queued.try_recv().ok()));
    for (id, ..) in unsent {
        if let Some(caller) = w.callers.remove(&id) {
            let status = RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, msg.clone());
            let _ = caller.send(Err(status));
        }
    }
}

/// Hands each answer to its caller; ends the stream when the store does.
async fn read_answers(
    mut receiver: ClientDuplexReceiver<BatchCommandsResponse>,
    waiting: Arc<Mutex<Waiting>>,
    unary_only: Arc<AtomicBool>,
) {
    let why = loop {
        match receiver.try_next().await {
            Ok(Some(mut msg)) => {
                let ids = msg.take_request_ids();
                let mut w = waiting.lock();
                for (id, resp) in ids.into_iter().zip(msg.take_responses()) {
                    if let Some(caller) = w.callers.remove(&id) {
                        let _ = caller.send(resp.cmd.ok_or_else(|| {
                            RpcStatus::with_message(
                                RpcStatusCode::INTERNAL,
                                "the store's answer carried no command".into(),
                            )
                        }));
                    }
                }
            }
            Ok(None) => {
                break RpcStatus::with_message(
                    RpcStatusCode::UNAVAILABLE,
                    "the store closed the batch stream".into(),
                )
            }
            Err(e) => {
                let text = e.to_string();
                break status_in(e)
                    .unwrap_or_else(|| RpcStatus::with_message(RpcStatusCode::UNKNOWN, text));
            }
        }
    };
    end(&waiting, &unary_only, why);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use grpcio::{RpcContext, ServerCredentials, UnarySink};
    use proto_grpc::tikvpb_grpc::{create_tikv, Tikv};

    use super::*;

    /// A store that serves RawGet and RawPut unary calls only (BatchCommands is
    /// UNIMPLEMENTED, as from a server that does not register the method), counting
    /// them.
    #[derive(Clone, Default)]
    struct UnaryStore {
        calls: Arc<AtomicUsize>,
    }

    impl Tikv for UnaryStore {
        /// grpcio's default answer drops the request stream before its
        /// UNIMPLEMENTED status is written, which cancels the call at times;
        /// a store without the method answers UNIMPLEMENTED every time.
        fn batch_commands(
            &mut self,
            ctx: RpcContext,
            stream: grpcio::RequestStream<BatchCommandsRequest>,
            sink: grpcio::DuplexSink<BatchCommandsResponse>,
        ) {
            ctx.spawn(async move {
                let _ = sink
                    .fail(RpcStatus::new(RpcStatusCode::UNIMPLEMENTED))
                    .await;
                drop(stream);
            });
        }

        fn raw_get(
            &mut self,
            ctx: RpcContext,
            _req: kvrpcpb::RawGetRequest,
            sink: UnarySink<kvrpcpb::RawGetResponse>,
        ) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut resp = kvrpcpb::RawGetResponse::default();
            resp.set_value(b"unary".to_vec());
            ctx.spawn(async move {
                let _ = sink.success(resp).await;
            });
        }

        fn raw_put(
            &mut self,
            ctx: RpcContext,
            _req: kvrpcpb::RawPutRequest,
            sink: UnarySink<kvrpcpb::RawPutResponse>,
        ) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            ctx.spawn(async move {
                let _ = sink.success(kvrpcpb::RawPutResponse::default()).await;
            });
        }
    }

    fn start(store: UnaryStore) -> (grpcio::Server, BatchStream) {
        let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
        let mut server = grpcio::ServerBuilder::new(env.clone())
            .register_service(create_tikv(store))
            .build()
            .expect("a server");
        let port = server
            .add_listening_port("127.0.0.1:0", ServerCredentials::insecure())
            .expect("a port");
        server.start();
        let ch = grpcio::ChannelBuilder::new(env).connect(&format!("127.0.0.1:{port}"));
        let stream = BatchStream::new(TikvClient::new(ch), grpcio::CallOption::default());
        (server, stream)
    }

    #[tokio::test]
    async fn a_store_without_the_stream_is_asked_unary_and_nothing_was_sent() {
        let store = UnaryStore::default();
        let (_server, stream) = start(store.clone());
        let first = stream.call(kvrpcpb::RawGetRequest::default()).await;
        match first {
            Err(grpcio::Error::RpcFailure(s)) => {
                assert!(s.message().starts_with(NOT_SENT), "{s:?}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.calls.load(Ordering::SeqCst), 0);
        let second = stream.call(kvrpcpb::RawGetRequest::default()).await;
        assert_eq!(second.expect("served unary").get_value(), b"unary");
        assert_eq!(store.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_larger_than_a_message_goes_unary() {
        let store = UnaryStore::default();
        let (_server, stream) = start(store.clone());
        let mut put = kvrpcpb::RawPutRequest::default();
        put.set_value(vec![b'v'; MESSAGE_BYTES + 1]);
        stream.call(put).await.expect("served unary");
        assert_eq!(store.calls.load(Ordering::SeqCst), 1);
        assert!(stream.current.lock().is_none(), "no stream was opened");
    }
}
