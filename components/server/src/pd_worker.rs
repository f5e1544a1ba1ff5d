//! Talks to PD for the raftstore: store heartbeats, the region heartbeat stream and
//! operators coming back on it, and split ids. A store that cannot reach PD keeps
//! serving; heartbeats are retried on the next tick.

use std::{collections::HashSet, sync::Arc, time::Duration};

use crossbeam_channel::Receiver;
use futures::{SinkExt, TryStreamExt};
use grpcio::WriteFlags;
use parking_lot::Mutex;
use pd_client::PdClient;
use proto::{metapb, pdpb};
use raftstore::{
    msg::{Callback, StoreMsg},
    split, CmdResponse, PdTask, PeerMsg, RaftRouter,
};
use slog::{debug, error, warn, Logger};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use util::shutdown::Shutdown;

/// Starts the PD worker; it stops when every sender of `tasks` is gone. A store whose
/// last heartbeat to PD is older than `silent_after` is reported to the raftstore as
/// down, once, so that regions hibernating with a leader there wake up. `retired` fires
/// when PD says this store is tombstone (decommissioned): it has nothing left to serve.
pub fn spawn(
    pd: Arc<PdClient>,
    tasks: Receiver<PdTask>,
    router: RaftRouter,
    rt: tokio::runtime::Handle,
    silent_after: Duration,
    retired: Shutdown,
    logger: Logger,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("pd-worker".into())
        .spawn(move || {
            let (hb_tx, hb_rx) = unbounded_channel();
            let stream = rt.spawn(region_heartbeats(
                pd.clone(),
                hb_rx,
                router.clone(),
                logger.clone(),
            ));
            let silent = Arc::new(Mutex::new(HashSet::new()));
            for task in tasks {
                match task {
                    PdTask::RegionHeartbeat(req) => {
                        let _ = hb_tx.send(req);
                    }
                    PdTask::AskBatchSplit {
                        region,
                        peer,
                        keys,
                        cb,
                    } => {
                        rt.spawn(ask_split(
                            pd.clone(),
                            router.clone(),
                            region,
                            peer,
                            keys,
                            cb,
                        ));
                    }
                    PdTask::StoreHeartbeat(stats) => {
                        let (pd, router) = (pd.clone(), router.clone());
                        let (silent, logger) = (silent.clone(), logger.clone());
                        let retired = retired.clone();
                        rt.spawn(async move {
                            match pd.store_heartbeat(stats).await {
                                Ok(()) => {}
                                Err(e) if e.is_store_tombstone() => {
                                    error!(logger, "PD says this store is tombstone (decommissioned); stopping");
                                    retired.trigger();
                                    return;
                                }
                                Err(e) => {
                                    warn!(logger, "store heartbeat failed"; "err" => %e);
                                    return;
                                }
                            }
                            match newly_silent_stores(&pd, &silent, silent_after).await {
                                Ok(down) if !down.is_empty() => {
                                    router.send_store(StoreMsg::StoresDown(down))
                                }
                                Ok(_) => {}
                                Err(e) => debug!(logger, "cannot list stores"; "err" => %e),
                            }
                        });
                    }
                }
            }
            stream.abort();
        })
        .expect("spawn pd worker")
}

/// Stores that PD has not heard from within `silent_after` and were not reported yet;
/// a store heard from again is forgotten, so that it is reported if it goes silent again.
async fn newly_silent_stores(
    pd: &PdClient,
    reported: &Mutex<HashSet<u64>>,
    silent_after: Duration,
) -> pd_client::Result<Vec<u64>> {
    let stores = pd.get_all_stores(true).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let mut reported = reported.lock();
    let mut down = vec![];
    for s in stores {
        let quiet_for = Duration::from_nanos((now - s.last_heartbeat).max(0) as u64);
        if s.last_heartbeat == 0 || quiet_for < silent_after {
            reported.remove(&s.get_id());
        } else if reported.insert(s.get_id()) {
            down.push(s.get_id());
        }
    }
    Ok(down)
}

/// Gets ids from PD and proposes the split; once applied, reports the new regions so
/// that PD routes to them before their first heartbeats.
async fn ask_split(
    pd: Arc<PdClient>,
    router: RaftRouter,
    region: metapb::Region,
    peer: metapb::Peer,
    keys: Vec<Vec<u8>>,
    cb: Callback<Vec<metapb::Region>>,
) {
    let ids = match pd.ask_batch_split(region.clone(), keys.len() as u32).await {
        Ok(ids) => ids,
        Err(e) => return cb(Err(raftstore::Error::Pd(e.to_string()))),
    };
    let cmd = match split::split_command(&region, &peer, &keys, ids) {
        Ok(cmd) => cmd,
        Err(e) => return cb(Err(e)),
    };
    let rt = tokio::runtime::Handle::current();
    let done: Callback<CmdResponse> = Box::new(move |res| match res {
        Ok(resp) => {
            let regions = resp.split_regions;
            let report = regions.clone();
            rt.spawn(async move {
                // Heartbeats from the new leaders would tell PD too, a little later.
                let _ = pd.report_batch_split(report).await;
            });
            cb(Ok(regions));
        }
        Err(e) => cb(Err(e)),
    });
    // If the region is gone, the callback is dropped with the message and the asker
    // sees the request end.
    let _ = router.force_send(region.get_id(), PeerMsg::Command { cmd, cb: done });
}

async fn region_heartbeats(
    pd: Arc<PdClient>,
    mut rx: UnboundedReceiver<pdpb::RegionHeartbeatRequest>,
    router: RaftRouter,
    logger: Logger,
) {
    loop {
        let (mut sink, mut responses) = match pd.region_heartbeat_stream() {
            Ok(s) => s,
            Err(e) => {
                warn!(logger, "cannot open region heartbeat stream"; "err" => %e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let operators = {
            let router = router.clone();
            let logger = logger.clone();
            tokio::spawn(async move {
                while let Ok(Some(resp)) = responses.try_next().await {
                    if resp.get_header().has_error() {
                        debug!(logger, "pd rejected a region heartbeat"; "err" => ?resp.get_header().get_error());
                        continue;
                    }
                    let region_id = resp.region_id;
                    let _ = router.force_send(region_id, PeerMsg::Operator(Box::new(resp)));
                }
            })
        };
        loop {
            let Some(mut req) = rx.recv().await else {
                operators.abort();
                return;
            };
            req.set_header(pd.request_header());
            if let Err(e) = sink.send((req, WriteFlags::default())).await {
                warn!(logger, "region heartbeat stream broke"; "err" => %e);
                break;
            }
        }
        operators.abort();
        // Heartbeats are periodic: the ones queued while PD is away are stale.
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = pd.reconnect().await {
            debug!(logger, "PD still unreachable"; "err" => %e);
        }
    }
}
