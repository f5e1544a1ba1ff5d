//! TiKV's BatchCommands: one stream carries many clients' requests, each with an id its
//! answer echoes. Every request is let in and served as its unary call would be (same
//! checks, same routing, same answer), concurrently; answers go back in the order they
//! finish, as many to a message as are ready.
//!
//! Bounds, against a client that sends without reading or a hostile one:
//! - a message is counted before it is decoded, and one of more than
//!   [`MAX_REQUESTS_PER_MESSAGE`] is refused (an empty request is two bytes on the wire
//!   and hundreds in memory);
//! - a stream serves at most `server.stream-max-inflight` requests between reading them
//!   and writing their answers; past it a request is answered server_is_busy at once;
//!   and once as many of those are unwritten too, the store stops reading the stream and
//!   gRPC's flow control holds the client back;
//! - answers that cannot be written within `server.request-timeout` (a client that
//!   stopped reading) end the stream, freeing the places they held.
//!
//! A malformed message (ids that do not match its requests) ends the stream with
//! INVALID_ARGUMENT once the requests already read are answered; a request with a
//! command this store does not serve is answered alone with an empty response, as TiKV
//! does.
//!
//! Each request is checked against the caller's rights as its unary call is, and
//! refused alone; Empty needs no rights.

use std::{sync::Arc, time::Duration};

use futures::{
    future::{BoxFuture, Either},
    FutureExt, SinkExt, TryStreamExt,
};
use grpcio::{
    DuplexSink, Marshaller, MessageReader, Method, MethodType, RequestStream, RpcContext,
    RpcStatus, RpcStatusCode, WriteFlags,
};
use proto::tikvpb::{
    BatchCommandsEmptyRequest, BatchCommandsEmptyResponse, BatchCommandsRequest,
    BatchCommandsRequest_Request_oneof_cmd as Cmd, BatchCommandsResponse,
    BatchCommandsResponse_Response, BatchCommandsResponse_Response_oneof_cmd as Answer,
};
use protobuf::{wire_format::WireType, CodedInputStream, Message};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use util::security::Proof;

use crate::{
    metrics, raw_service as raw,
    service::{Admission, TikvService},
    txn_service as txn,
};

/// Most requests one message may carry (TiKV's clients send at most 128).
pub const MAX_REQUESTS_PER_MESSAGE: usize = 4096;
/// Most answers in one message (TiKV's figure).
const MAX_ANSWERS_PER_MESSAGE: usize = 128;
/// Answers stop joining a message once it is this large; a larger single answer (up to
/// `server.max-response-size`) goes alone.
const MESSAGE_BYTES: usize = 1 << 20;
/// The longest an Empty request may ask its answer to be held.
const MAX_EMPTY_DELAY: Duration = Duration::from_secs(1);

/// A request's places: in its stream's window, and among the store's requests in
/// flight (none if it was refused); freed once its answer is written.
type Places = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// What the reader hands the writer.
enum Reply {
    /// A request's answer, and its places.
    Answer(u64, BatchCommandsResponse_Response, Places),
    /// The stream is unusable: end it with this status.
    Fail(RpcStatus),
}

/// BatchCommands as the store registers it: decoded by [`bounded_decode`].
pub(crate) fn bounded_service(svc: TikvService) -> grpcio::Service {
    const METHOD: Method<BatchCommandsRequest, BatchCommandsResponse> = Method {
        ty: MethodType::Duplex,
        name: "/tikvpb.Tikv/BatchCommands",
        req_mar: Marshaller {
            ser: grpcio::pb_ser,
            de: bounded_decode,
        },
        resp_mar: Marshaller {
            ser: grpcio::pb_ser,
            de: grpcio::pb_de,
        },
    };
    grpcio::ServiceBuilder::new()
        .add_duplex_streaming_handler(&METHOD, move |ctx, stream, sink| {
            serve(&svc, &ctx, stream, sink)
        })
        .build()
}

/// Decodes a message after counting its requests and ids on the wire.
fn bounded_decode(mut reader: MessageReader) -> grpcio::Result<BatchCommandsRequest> {
    let mut buf = Vec::with_capacity(reader.len());
    std::io::Read::read_to_end(&mut reader, &mut buf)
        .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    let count = count_requests(&buf)?;
    if count > MAX_REQUESTS_PER_MESSAGE {
        return Err(grpcio::Error::Codec(
            format!(
                "a BatchCommands message carries {count} requests, more than the \
                 {MAX_REQUESTS_PER_MESSAGE} a store takes in one message"
            )
            .into(),
        ));
    }
    Ok(BatchCommandsRequest::parse_from_bytes(&buf)?)
}

/// The larger of a message's requests (field 1) and request ids (field 2, packed or
/// not), read from the wire without decoding them.
fn count_requests(buf: &[u8]) -> protobuf::ProtobufResult<usize> {
    let mut s = CodedInputStream::from_bytes(buf);
    let (mut requests, mut ids) = (0, 0);
    while !s.eof()? {
        let (field, wire) = s.read_tag_unpack()?;
        match (field, wire) {
            (1, _) => requests += 1,
            (2, WireType::WireTypeLengthDelimited) => {
                let len = s.read_raw_varint32()?;
                let packed = s.read_raw_bytes(len)?;
                // A varint ends at its one byte without the high bit.
                ids += packed.iter().filter(|b| *b & 0x80 == 0).count();
                continue;
            }
            (2, _) => ids += 1,
            _ => {}
        }
        s.skip_field(wire)?;
    }
    Ok(requests.max(ids))
}

/// Serves one BatchCommands stream.
fn serve(
    svc: &TikvService,
    ctx: &RpcContext,
    stream: RequestStream<BatchCommandsRequest>,
    sink: DuplexSink<BatchCommandsResponse>,
) {
    // Test-only: a store that does not serve the stream, as one of an older version.
    if fail::eval("batch_commands_unimplemented", |_| ()).is_some() {
        svc.rt.spawn(async move {
            let _ = sink
                .fail(RpcStatus::new(RpcStatusCode::UNIMPLEMENTED))
                .await;
            drop(stream);
        });
        return;
    }
    svc.rt.spawn(run(svc.clone(), svc.proof(ctx), stream, sink));
}

/// Serves one stream until the client closes it or goes away.
async fn run(
    svc: TikvService,
    proof: Proof,
    stream: RequestStream<BatchCommandsRequest>,
    sink: DuplexSink<BatchCommandsResponse>,
) {
    metrics::BATCH_STREAMS.inc();
    let (tx, rx) = mpsc::unbounded_channel();
    // The request stream lives until the writer is done: dropping it first would cancel
    // the call, and the client would see that instead of the status that says why.
    let timeout = svc.limits.write_timeout;
    let reader = read(svc, proof, stream, tx);
    let writer = write(sink, rx, timeout);
    futures::pin_mut!(reader, writer);
    match futures::future::select(reader, writer).await {
        Either::Left((stream, writer)) => {
            writer.await;
            drop(stream);
        }
        // The writer gave up (the client stopped reading, or went away): nothing more
        // of this stream is read or served; the reader goes when `run` returns.
        Either::Right(_) => {}
    }
    metrics::BATCH_STREAMS.dec();
}

/// Reads the stream's requests and starts each, with a place in the window (or, when it
/// is full, answered busy with a place among the overflow; with none of those either,
/// it waits). Gives the stream back once it ends or fails.
async fn read(
    svc: TikvService,
    proof: Proof,
    mut stream: RequestStream<BatchCommandsRequest>,
    tx: mpsc::UnboundedSender<Reply>,
) -> RequestStream<BatchCommandsRequest> {
    let window = Arc::new(Semaphore::new(svc.limits.stream_max_inflight));
    let overflow = Arc::new(Semaphore::new(svc.limits.stream_max_inflight));
    loop {
        let mut batch = match stream.try_next().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return stream,
            Err(e) => {
                // The client went away, or sent what could not be decoded.
                let why = format!("the BatchCommands stream broke: {e}");
                let _ = tx.send(Reply::Fail(invalid(why)));
                return stream;
            }
        };
        let (ids, requests) = (batch.take_request_ids(), batch.take_requests());
        if ids.len() != requests.len() {
            let why = format!(
                "a BatchCommands message has {} requests but {} request ids; nothing of it \
                 was served",
                requests.len(),
                ids.len()
            );
            let _ = tx.send(Reply::Fail(invalid(why)));
            return stream;
        }
        metrics::BATCH_REQUESTS_PER_MESSAGE.observe(ids.len() as f64);
        for (id, mut req) in ids.into_iter().zip(requests) {
            let (held, full) = match window.clone().try_acquire_owned() {
                Ok(place) => (place, false),
                Err(_) => (
                    overflow
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the overflow is never closed"),
                    true,
                ),
            };
            let (place, answer) = match req.cmd.take() {
                Some(cmd) => dispatch(&svc, &proof, cmd, full),
                None => (None, futures::future::ready(None).boxed()),
            };
            let tx = tx.clone();
            svc.rt.spawn(async move {
                // A request that panicked is answered (empty) rather than left to time out.
                let answer = std::panic::AssertUnwindSafe(answer).catch_unwind().await;
                let resp = BatchCommandsResponse_Response {
                    cmd: answer.ok().flatten(),
                    ..Default::default()
                };
                let _ = tx.send(Reply::Answer(id, resp, (held, place)));
            });
        }
    }
}

/// Writes answers as they come, as many to a message as are ready; closes the stream
/// (with the reader's failure, if it failed) once the reader and every request it
/// started are done. An answer not written within `timeout` ends the stream at once.
async fn write(
    mut sink: DuplexSink<BatchCommandsResponse>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    timeout: Duration,
) {
    let mut carried = None;
    let mut failed = None;
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
            let (id, resp, held) = match reply {
                Reply::Answer(id, resp, held) => (id, resp, held),
                Reply::Fail(status) => {
                    failed = Some(status);
                    continue;
                }
            };
            let size = resp.compute_size() as usize;
            if !places.is_empty() && bytes + size > MESSAGE_BYTES {
                carried = Some(Reply::Answer(id, resp, held));
                break;
            }
            bytes += size;
            out.mut_request_ids().push(id);
            out.mut_responses().push(resp);
            places.push(held);
            if places.len() < MAX_ANSWERS_PER_MESSAGE {
                next = rx.try_recv().ok();
            }
        }
        if places.is_empty() {
            continue;
        }
        let sent = tokio::time::timeout(timeout, sink.send((out, WriteFlags::default()))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        drop(places);
    }
    // What was served has gone out; a failure ends the stream now.
    let _ = match failed {
        Some(status) => sink.fail(status).await,
        None => sink.close().await,
    };
}

fn invalid(why: String) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, why)
}

/// The place one command takes among the store's requests in flight, and its answer, as
/// its unary call gives it (`full`: its stream has no room, so it is answered busy).
fn dispatch(
    svc: &TikvService,
    proof: &Proof,
    cmd: Cmd,
    full: bool,
) -> (
    Option<OwnedSemaphorePermit>,
    BoxFuture<'static, Option<Answer>>,
) {
    macro_rules! raw {
        ($req:expr, $variant:ident, $handler:ident) => {{
            let Admission { place, refusal } = svc.admit(proof, &$req, full);
            let answer = svc.answer(refusal, $req, raw::$handler);
            (place, answer.map(|a| Some(Answer::$variant(a))).boxed())
        }};
    }
    macro_rules! txn {
        ($req:expr, $variant:ident, $name:literal, $handler:ident) => {{
            let Admission { place, refusal } = svc.admit(proof, &$req, full);
            let answer = svc.answer_txn(refusal, $name, $req, txn::$handler);
            (place, answer.map(|a| Some(Answer::$variant(a))).boxed())
        }};
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
        Cmd::Empty(r) => (None, empty(r).map(|a| Some(Answer::Empty(a))).boxed()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(requests: usize, ids: usize) -> Vec<u8> {
        let mut msg = BatchCommandsRequest::default();
        for _ in 0..requests {
            msg.mut_requests().push(Default::default());
        }
        for id in 0..ids {
            msg.mut_request_ids().push(id as u64 * 1000);
        }
        msg.write_to_bytes().expect("encode")
    }

    #[test]
    fn a_message_is_counted_on_the_wire_by_its_requests_or_its_ids() {
        assert_eq!(count_requests(&encoded(0, 0)).unwrap(), 0);
        assert_eq!(count_requests(&encoded(3, 3)).unwrap(), 3);
        assert_eq!(count_requests(&encoded(5000, 2)).unwrap(), 5000);
        assert_eq!(count_requests(&encoded(2, 7000)).unwrap(), 7000);
        assert!(
            count_requests(&[0x0a, 0x05, 0x00]).is_err(),
            "a cut-off message"
        );
    }
}
