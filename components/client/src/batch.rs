//! One BatchCommands stream per store connection: the requests of every task using this
//! client go out together, as many to a message as are waiting, and each answer finds
//! its caller by the id it echoes. It saves the gRPC call per request that a unary call
//! costs on both sides, which is most of a small request's cost.
//!
//! A stream that fails ends every request waiting on it with the stream's error (for a
//! write: its outcome is unknown unless gRPC could not connect at all); the next request
//! opens a new stream. A request still queued when its stream failed was never sent,
//! and says so ([`NOT_SENT`]), so that even a write may be sent again.

use std::{collections::HashMap, sync::Arc};

use futures::{SinkExt, TryStreamExt};
use grpcio::{ClientDuplexReceiver, ClientDuplexSender, RpcStatus, RpcStatusCode, WriteFlags};
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
pub(crate) const NOT_SENT: &str = "not sent: the batch stream had failed";
/// Most requests in one message (TiKV's clients use the same figure).
const MAX_REQUESTS_PER_MESSAGE: usize = 128;
/// Requests stop joining a message once it is this large; a larger one goes alone.
const MESSAGE_BYTES: usize = 1 << 20;

/// A request a BatchCommands stream carries, and how its answer comes back.
pub(crate) trait Batched: Sized {
    /// Its answer.
    type Resp;
    /// The request as a stream command.
    fn into_cmd(self) -> Cmd;
    /// The answer, if `answer` is of its kind.
    fn from_answer(answer: Answer) -> Option<Self::Resp>;
}

macro_rules! batched {
    ($($req:ident => $resp:ident, $variant:ident;)*) => {
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
            }
        )*
    };
}

batched! {
    RawGetRequest => RawGetResponse, RawGet;
    RawBatchGetRequest => RawBatchGetResponse, RawBatchGet;
    RawPutRequest => RawPutResponse, RawPut;
    RawBatchPutRequest => RawBatchPutResponse, RawBatchPut;
    RawDeleteRequest => RawDeleteResponse, RawDelete;
    RawBatchDeleteRequest => RawBatchDeleteResponse, RawBatchDelete;
    RawScanRequest => RawScanResponse, RawScan;
    RawDeleteRangeRequest => RawDeleteRangeResponse, RawDeleteRange;
    GetRequest => GetResponse, Get;
    ScanRequest => ScanResponse, Scan;
    PrewriteRequest => PrewriteResponse, Prewrite;
    CommitRequest => CommitResponse, Commit;
    BatchRollbackRequest => BatchRollbackResponse, BatchRollback;
    ScanLockRequest => ScanLockResponse, ScanLock;
    ResolveLockRequest => ResolveLockResponse, ResolveLock;
    PessimisticLockRequest => PessimisticLockResponse, PessimisticLock;
    CheckTxnStatusRequest => CheckTxnStatusResponse, CheckTxnStatus;
    CheckSecondaryLocksRequest => CheckSecondaryLocksResponse, CheckSecondaryLocks;
}

/// The batch stream to one store, opened on first use and again after a failure.
pub(crate) struct BatchStream {
    client: TikvClient,
    opt: grpcio::CallOption,
    current: Mutex<Option<Arc<Stream>>>,
}

/// One open stream.
struct Stream {
    /// To the task that writes the stream.
    queue: mpsc::UnboundedSender<(u64, Cmd)>,
    waiting: Arc<Mutex<Waiting>>,
}

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
        }
    }

    /// Sends `req` on the stream and waits for its answer.
    pub(crate) async fn call<R: Batched>(&self, req: R) -> grpcio::Result<R::Resp> {
        let stream = self.stream()?;
        let (id, answer) = stream.register()?;
        let _forget = Forget {
            waiting: &stream.waiting,
            id,
        };
        if stream.queue.send((id, req.into_cmd())).is_err() {
            return Err(failure(RpcStatusCode::UNAVAILABLE, NOT_SENT.into()));
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
        let (queue, queued) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        self.client
            .spawn(write_requests(sink, queued, waiting.clone()));
        self.client.spawn(read_answers(receiver, waiting.clone()));
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
            let msg = format!("{NOT_SENT} ({})", why.message());
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
/// store which never answers does not grow the table.
struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.lock().callers.remove(&self.id);
    }
}

/// Ends a stream: no more requests, and every caller waiting is told `why`.
fn end(waiting: &Mutex<Waiting>, why: RpcStatus) {
    let mut w = waiting.lock();
    w.ended.get_or_insert(why);
    // Dropping the senders wakes the callers, who read `ended`.
    w.callers.clear();
}

fn failure(code: RpcStatusCode, msg: String) -> grpcio::Error {
    grpcio::Error::RpcFailure(RpcStatus::with_message(code, msg))
}

fn status_of(e: grpcio::Error) -> RpcStatus {
    match e {
        grpcio::Error::RpcFailure(s) => s,
        e => RpcStatus::with_message(RpcStatusCode::UNKNOWN, e.to_string()),
    }
}

/// Writes queued requests, as many to a message as are waiting.
async fn write_requests(
    mut sink: ClientDuplexSender<BatchCommandsRequest>,
    mut queued: mpsc::UnboundedReceiver<(u64, Cmd)>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(next) => next,
            None => match queued.recv().await {
                Some(next) => next,
                None => break,
            },
        };
        let mut msg = BatchCommandsRequest::default();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some((id, cmd)) = next.take() {
            let mut req = BatchCommandsRequest_Request {
                cmd: Some(cmd),
                ..Default::default()
            };
            let size = req.compute_size() as usize;
            if !msg.get_requests().is_empty() && bytes + size > MESSAGE_BYTES {
                carried = req.cmd.take().map(|cmd| (id, cmd));
                break;
            }
            bytes += size;
            msg.mut_request_ids().push(id);
            msg.mut_requests().push(req);
            if msg.get_requests().len() < MAX_REQUESTS_PER_MESSAGE {
                next = queued.try_recv().ok();
            }
        }
        if let Err(e) = sink.send((msg, WriteFlags::default())).await {
            let why = status_of(e);
            refuse_queued(queued, carried, &waiting, &why);
            end(&waiting, why);
            return;
        }
    }
    // Every handle to the stream is gone: say so, and let the store finish.
    let _ = sink.close().await;
}

/// Tells the callers of requests still queued that theirs were never sent.
fn refuse_queued(
    mut queued: mpsc::UnboundedReceiver<(u64, Cmd)>,
    carried: Option<(u64, Cmd)>,
    waiting: &Mutex<Waiting>,
    why: &RpcStatus,
) {
    queued.close();
    let msg = format!("{NOT_SENT} ({})", why.message());
    let mut w = waiting.lock();
    let unsent = carried
        .into_iter()
        .chain(std::iter::from_fn(|| queued.try_recv().ok()));
    for (id, _) in unsent {
        if let Some(caller) = w.callers.remove(&id) {
            let _ = caller.send(Err(RpcStatus::with_message(
                RpcStatusCode::UNAVAILABLE,
                msg.clone(),
            )));
        }
    }
}

/// Hands each answer to its caller; ends the stream when the store does.
async fn read_answers(
    mut receiver: ClientDuplexReceiver<BatchCommandsResponse>,
    waiting: Arc<Mutex<Waiting>>,
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
            Err(e) => break status_of(e),
        }
    };
    end(&waiting, why);
}
