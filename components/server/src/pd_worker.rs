//! Talks to PD for the raftstore: store heartbeats, the region heartbeat stream and
//! operators coming back on it, and split ids. A store that cannot reach PD keeps
//! serving; heartbeats are retried on the next tick.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use crossbeam_channel::Receiver;
use futures::{SinkExt, TryStreamExt};
use grpcio::WriteFlags;
use pd_client::PdClient;
use proto::{metapb, pdpb};
use raftstore::{
    msg::{Callback, StoreMsg},
    operation::split,
    CmdResponse, PdTask, PeerMsg, RaftRouter,
};
use slog::{debug, error, info, warn, Logger};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use util::shutdown::Shutdown;

/// Starts the PD worker; it stops when every sender of `tasks` is gone. After each store
/// heartbeat it reports to the raftstore the stores whose last heartbeat to PD is older
/// than `silent_after` (regions hibernating with a leader there wake up) and those that
/// joined or came back (see `watch_stores`). `retired` fires
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
            let watch = Arc::new(tokio::sync::Mutex::new(StoreWatch::default()));
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
                        let (watch, logger) = (watch.clone(), logger.clone());
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
                            if let Err(e) = watch_stores(&pd, &router, &watch, silent_after).await {
                                debug!(logger, "cannot list stores"; "err" => %e);
                            }
                        });
                    }
                }
            }
            stream.abort();
        })
        .expect("spawn pd worker")
}

/// What this store last learnt from PD about the stores' liveness.
#[derive(Default)]
struct StoreWatch {
    /// Stores reported down (silent), not yet heard from again.
    down: HashSet<u64>,
    /// Each live store's start time as it last told PD: a new one is a restart.
    starts: HashMap<u64, i64>,
    /// Whether a first look has been taken (it reports nothing: it is no news).
    looked: bool,
}

impl StoreWatch {
    /// Which stores went silent for `silent_after`, and which joined, restarted or were
    /// heard from again, since the last look; each change is reported once.
    fn observe(
        &mut self,
        stores: &[metapb::Store],
        now_ns: i64,
        silent_after: Duration,
    ) -> (Vec<u64>, Vec<u64>) {
        let (mut down, mut joined) = (vec![], vec![]);
        for s in stores {
            let id = s.get_id();
            if s.last_heartbeat == 0 {
                continue;
            }
            let quiet_for = Duration::from_nanos((now_ns - s.last_heartbeat).max(0) as u64);
            if quiet_for >= silent_after {
                if self.down.insert(id) {
                    down.push(id);
                }
                continue;
            }
            let was_down = self.down.remove(&id);
            let started = self.starts.insert(id, s.start_timestamp);
            if self.looked && (was_down || started != Some(s.start_timestamp)) {
                joined.push(id);
            }
        }
        self.looked = true;
        (down, joined)
    }
}

/// Asks PD for every store and tells the raftstore which went silent (their regions
/// wake to elect) and which joined or came back (hibernating leaders report to PD, so
/// that it can place replicas and leaders there). One look at a time, so that an older
/// answer never follows a newer one.
async fn watch_stores(
    pd: &PdClient,
    router: &RaftRouter,
    watch: &tokio::sync::Mutex<StoreWatch>,
    silent_after: Duration,
) -> pd_client::Result<()> {
    let mut watch = watch.lock().await;
    let stores = pd.get_all_stores(true).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let (down, joined) = watch.observe(&stores, now, silent_after);
    if !down.is_empty() {
        router.send_store(StoreMsg::StoresDown(down));
    }
    if !joined.is_empty() {
        router.send_store(StoreMsg::StoresUp(joined));
    }
    Ok(())
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

/// How often the region heartbeat stream checks that it is on the PD member in use, and
/// how long one heartbeat may take to go out on it.
const STREAM_CHECK: Duration = Duration::from_secs(2);

async fn region_heartbeats(
    pd: Arc<PdClient>,
    mut rx: UnboundedReceiver<pdpb::RegionHeartbeatRequest>,
    router: RaftRouter,
    logger: Logger,
) {
    loop {
        let opened_on = pd.leader_addr();
        let (mut sink, mut responses) = match pd.region_heartbeat_stream() {
            Ok(s) => s,
            Err(e) => {
                warn!(logger, "cannot open region heartbeat stream"; "err" => %e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut operators = {
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
        let mut check = tokio::time::interval(STREAM_CHECK);
        loop {
            // A stream PD ended (it lost its leadership, say) is noticed at once, not at
            // the next heartbeat, which an idle region may not send for long. So is a
            // stream left on a member the client no longer uses (others found a new
            // leader): one opened on a member that died may neither fail nor deliver.
            let req = tokio::select! {
                req = rx.recv() => req,
                _ = &mut operators => {
                    warn!(logger, "pd ended the region heartbeat stream");
                    break;
                }
                _ = check.tick() => {
                    if pd.leader_addr() != opened_on {
                        info!(logger, "pd leader changed; reopening the region heartbeat stream";
                              "from" => &opened_on, "to" => pd.leader_addr());
                        break;
                    }
                    continue;
                }
            };
            let Some(mut req) = req else {
                operators.abort();
                return;
            };
            req.set_header(pd.request_header());
            let sent = tokio::time::timeout(STREAM_CHECK, sink.send((req, WriteFlags::default())));
            match sent.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(logger, "region heartbeat stream broke"; "err" => %e);
                    break;
                }
                Err(_) => {
                    warn!(logger, "region heartbeat stream takes no heartbeat"; "pd" => &opened_on);
                    break;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(id: u64, last_heartbeat: i64) -> metapb::Store {
        let mut s = metapb::Store::default();
        s.set_id(id);
        s.last_heartbeat = last_heartbeat;
        s
    }

    #[test]
    fn each_change_of_liveness_is_reported_once() {
        let after = Duration::from_secs(10);
        let sec = 1_000_000_000i64;
        let started = |id: u64, last: i64, start: i64| {
            let mut s = store(id, last);
            s.start_timestamp = start;
            s
        };
        let mut w = StoreWatch::default();
        // Store 3 registered but never heartbeat: neither up nor down.
        let all = |t2: i64, start2: i64| {
            vec![
                started(1, 100 * sec, 1),
                started(2, t2, start2),
                started(3, 0, 0),
            ]
        };
        assert_eq!(
            w.observe(&all(100 * sec, 1), 101 * sec, after),
            (vec![], vec![]),
            "first look"
        );
        assert_eq!(
            w.observe(&all(100 * sec, 1), 102 * sec, after),
            (vec![], vec![])
        );
        // Store 2 restarts quickly: a new start time.
        assert_eq!(
            w.observe(&all(102 * sec, 5), 103 * sec, after),
            (vec![], vec![2])
        );
        // Stores 1 and 2 go silent; store 2 comes back (same process, a partition healed).
        assert_eq!(
            w.observe(&all(102 * sec, 5), 111 * sec, after),
            (vec![1], vec![])
        );
        assert_eq!(
            w.observe(&all(102 * sec, 5), 113 * sec, after),
            (vec![2], vec![])
        );
        assert_eq!(
            w.observe(&all(113 * sec, 5), 113 * sec, after),
            (vec![], vec![2])
        );
        assert_eq!(
            w.observe(&all(113 * sec, 5), 114 * sec, after),
            (vec![], vec![])
        );
        // A store that joins later is news.
        let mut four = all(114 * sec, 5);
        four.push(started(4, 114 * sec, 9));
        assert_eq!(w.observe(&four, 115 * sec, after), (vec![], vec![4]));
    }
}
