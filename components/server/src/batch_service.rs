//! TiKV's BatchCommands: one stream carries many clients' requests, each with an id its
//! answer echoes. Every request is served as its unary call would be (same checks, same
//! routing, same answer), concurrently; answers go back in the order they finish, as
//! many to a message as are ready. A stream holds at most `server.stream-max-inflight`
//! requests between reading them and writing their answers: past it this store stops
//! reading, and gRPC's flow control holds the client back.

use std::{sync::Arc, time::Duration};

use futures::{future::BoxFuture, FutureExt, SinkExt, TryStreamExt};
use grpcio::{DuplexSink, RequestStream, RpcStatus, RpcStatusCode, WriteFlags};
use proto::tikvpb::{
    BatchCommandsEmptyRequest, BatchCommandsEmptyResponse, BatchCommandsRequest,
    BatchCommandsRequest_Request_oneof_cmd as Cmd, BatchCommandsResponse,
    BatchCommandsResponse_Response, BatchCommandsResponse_Response_oneof_cmd as Answer,
};
use protobuf::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use util::security::Proof;

use crate::{metrics, raw_service as raw, service::TikvService, txn_service as txn};

/// Most answers in one message (TiKV's figure).
const MAX_ANSWERS_PER_MESSAGE: usize = 128;
/// Answers stop joining a message once it is this large; a larger single answer (up to
/// `server.max-response-size`) goes alone.
const MESSAGE_BYTES: usize = 1 << 20;
/// The longest an Empty request may ask its answer to be held.
const MAX_EMPTY_DELAY: Duration = Duration::from_secs(1);

/// What the reader hands the writer.
enum Reply {
    /// A request's answer, and its place in the stream's window (freed once written).
    Answer(u64, BatchCommandsResponse_Response, OwnedSemaphorePermit),
    /// The stream is unusable: end it with this status.
    Fail(RpcStatus),
}

/// Serves one BatchCommands stream until the client closes it or goes away.
pub(crate) async fn run(
    svc: TikvService,
    proof: Proof,
    stream: RequestStream<BatchCommandsRequest>,
    sink: DuplexSink<BatchCommandsResponse>,
) {
    metrics::BATCH_STREAMS.inc();
    let (tx, rx) = mpsc::unbounded_channel();
    let window = Arc::new(Semaphore::new(svc.limits.stream_max_inflight));
    // The request stream lives until the writer is done: dropping it first would cancel
    // the call, and the client would see that instead of the status that says why.
    let (stream, ()) = futures::join!(read(svc, proof, stream, tx, window), write(sink, rx));
    drop(stream);
    metrics::BATCH_STREAMS.dec();
}

/// Reads the stream's requests and starts each; it waits for room in `window` first.
/// Gives the stream back once it ends or fails.
async fn read(
    svc: TikvService,
    proof: Proof,
    mut stream: RequestStream<BatchCommandsRequest>,
    tx: mpsc::UnboundedSender<Reply>,
    window: Arc<Semaphore>,
) -> RequestStream<BatchCommandsRequest> {
    // A client that went away ends the read; the writer then fails on its own.
    while let Ok(Some(mut batch)) = stream.try_next().await {
        let commands = match commands(&mut batch) {
            Ok(commands) => commands,
            Err(why) => {
                let _ = tx.send(Reply::Fail(invalid(why)));
                return stream;
            }
        };
        metrics::BATCH_REQUESTS_PER_MESSAGE.observe(commands.len() as f64);
        for (id, cmd) in commands {
            let place = window
                .clone()
                .acquire_owned()
                .await
                .expect("the window is never closed");
            let answer = dispatch(&svc, &proof, cmd);
            let tx = tx.clone();
            svc.rt.spawn(async move {
                let resp = BatchCommandsResponse_Response {
                    cmd: Some(answer.await),
                    ..Default::default()
                };
                let _ = tx.send(Reply::Answer(id, resp, place));
            });
        }
    }
    stream
}

/// A message's requests with their ids; a malformed message is refused whole, before
/// any of it is served.
fn commands(batch: &mut BatchCommandsRequest) -> Result<Vec<(u64, Cmd)>, String> {
    let (ids, requests) = (batch.take_request_ids(), batch.take_requests());
    if ids.len() != requests.len() {
        return Err(format!(
            "a BatchCommands message has {} requests but {} request ids",
            requests.len(),
            ids.len()
        ));
    }
    ids.into_iter()
        .zip(requests)
        .map(|(id, mut req)| match req.cmd.take() {
            Some(cmd) => Ok((id, cmd)),
            None => Err(format!(
                "BatchCommands request {id} has no command this store serves (Flotilla \
                 serves the raw and transactional key-value commands and Empty); nothing \
                 of its message was served"
            )),
        })
        .collect()
}

/// Writes answers as they come, as many to a message as are ready; closes the stream
/// once the reader and every request it started are done.
async fn write(
    mut sink: DuplexSink<BatchCommandsResponse>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(reply) => reply,
            None => match rx.recv().await {
                Some(reply) => reply,
                None => break,
            },
        };
        let mut out = BatchCommandsResponse::default();
        let mut places = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(reply) = next.take() {
            let (id, resp, place) = match reply {
                Reply::Answer(id, resp, place) => (id, resp, place),
                Reply::Fail(status) => {
                    let _ = sink.fail(status).await;
                    return;
                }
            };
            let size = resp.compute_size() as usize;
            if !places.is_empty() && bytes + size > MESSAGE_BYTES {
                carried = Some(Reply::Answer(id, resp, place));
                break;
            }
            bytes += size;
            out.mut_request_ids().push(id);
            out.mut_responses().push(resp);
            places.push(place);
            if places.len() < MAX_ANSWERS_PER_MESSAGE {
                next = rx.try_recv().ok();
            }
        }
        if sink.send((out, WriteFlags::default())).await.is_err() {
            return;
        }
        drop(places);
    }
    let _ = sink.close().await;
}

fn invalid(why: String) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, why)
}

/// The answer to one command, as its unary call gives it.
fn dispatch(svc: &TikvService, proof: &Proof, cmd: Cmd) -> BoxFuture<'static, Answer> {
    macro_rules! raw {
        ($req:expr, $variant:ident, $handler:ident) => {
            svc.answer(proof, $req, raw::$handler)
                .map(Answer::$variant)
                .boxed()
        };
    }
    macro_rules! txn {
        ($req:expr, $variant:ident, $name:literal, $handler:ident) => {
            svc.answer_txn(proof, $name, $req, txn::$handler)
                .map(Answer::$variant)
                .boxed()
        };
    }
    match cmd {
        Cmd::RawGet(r) => raw!(r, RawGet, get),
        Cmd::RawBatchGet(r) => raw!(r, RawBatchGet, batch_get),
        Cmd::RawPut(r) => raw!(r, RawPut, put),
        Cmd::RawBatchPut(r) => raw!(r, RawBatchPut, batch_put),
        Cmd::RawDelete(r) => raw!(r, RawDelete, delete),
        Cmd::RawBatchDelete(r) => raw!(r, RawBatchDelete, batch_delete),
        Cmd::RawScan(r) => raw!(r, RawScan, scan),
        Cmd::RawDeleteRange(r) => raw!(r, RawDeleteRange, delete_range),
        Cmd::Get(r) => txn!(r, Get, "kv_get", get),
        Cmd::Scan(r) => txn!(r, Scan, "kv_scan", scan),
        Cmd::Prewrite(r) => txn!(r, Prewrite, "kv_prewrite", prewrite),
        Cmd::Commit(r) => txn!(r, Commit, "kv_commit", commit),
        Cmd::Cleanup(r) => txn!(r, Cleanup, "kv_cleanup", cleanup),
        Cmd::BatchGet(r) => txn!(r, BatchGet, "kv_batch_get", batch_get),
        Cmd::BatchRollback(r) => txn!(r, BatchRollback, "kv_batch_rollback", batch_rollback),
        Cmd::ScanLock(r) => txn!(r, ScanLock, "kv_scan_lock", scan_lock),
        Cmd::ResolveLock(r) => txn!(r, ResolveLock, "kv_resolve_lock", resolve_lock),
        Cmd::PessimisticLock(r) => {
            txn!(r, PessimisticLock, "kv_pessimistic_lock", pessimistic_lock)
        }
        Cmd::PessimisticRollback(r) => txn!(
            r,
            PessimisticRollback,
            "kv_pessimistic_rollback",
            pessimistic_rollback
        ),
        Cmd::CheckTxnStatus(r) => {
            txn!(r, CheckTxnStatus, "kv_check_txn_status", check_txn_status)
        }
        Cmd::TxnHeartBeat(r) => txn!(r, TxnHeartBeat, "kv_txn_heart_beat", txn_heart_beat),
        Cmd::CheckSecondaryLocks(r) => txn!(
            r,
            CheckSecondaryLocks,
            "kv_check_secondary_locks",
            check_secondary_locks
        ),
        Cmd::Empty(r) => empty(r).map(Answer::Empty).boxed(),
    }
}

/// Echoes an Empty request's test id, after the delay it asks for (capped).
async fn empty(req: BatchCommandsEmptyRequest) -> BatchCommandsEmptyResponse {
    let delay = Duration::from_millis(req.delay_time).min(MAX_EMPTY_DELAY);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    BatchCommandsEmptyResponse {
        test_id: req.test_id,
        ..Default::default()
    }
}
