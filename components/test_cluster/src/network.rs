//! The simulated network between in-process stores. Every message passes the filters;
//! snapshots are streamed through the same chunked send/receive code as over gRPC.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{unbounded, Sender};
use parking_lot::{Mutex, RwLock};
use proto::raft_serverpb::RaftMessage;
use raftstore::{snap, RaftRouter, SnapManager, Transport};

/// What a filter decides for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Pass,
    /// Lose it.
    Drop,
    /// Deliver it later.
    Delay(Duration),
}

/// Decides the fate of a message from one store to another.
pub type Filter = Arc<dyn Fn(u64, u64, &RaftMessage) -> Verdict + Send + Sync>;

/// A message held back until its time: (when, from store, to store, message).
type Delayed = (Instant, u64, u64, RaftMessage);

#[derive(Default)]
struct Inner {
    stores: RwLock<HashMap<u64, (RaftRouter, SnapManager)>>,
    /// Each filter with its id and the messages it dropped.
    filters: RwLock<Vec<(u64, Filter, Arc<AtomicU64>)>>,
    next_filter: AtomicU64,
    delayed: Mutex<Option<Sender<Delayed>>>,
}

/// The network every store of a test cluster talks through.
#[derive(Clone, Default)]
pub struct Network {
    inner: Arc<Inner>,
}

/// One store's end of the network.
pub struct SimTransport {
    from: u64,
    net: Network,
}

impl Transport for SimTransport {
    fn send(&self, to: u64, msgs: Vec<RaftMessage>) {
        for m in msgs {
            self.net.deliver(self.from, to, m);
        }
    }
}

impl Network {
    pub(crate) fn transport(&self, store_id: u64) -> SimTransport {
        SimTransport {
            from: store_id,
            net: self.clone(),
        }
    }

    pub(crate) fn attach(&self, store_id: u64, router: RaftRouter, snap_mgr: SnapManager) {
        self.inner
            .stores
            .write()
            .insert(store_id, (router, snap_mgr));
    }

    pub(crate) fn detach(&self, store_id: u64) {
        self.inner.stores.write().remove(&store_id);
    }

    /// Adds a filter; returns its id for [`Network::remove_filter`].
    pub fn add_filter(&self, f: Filter) -> u64 {
        let id = self.inner.next_filter.fetch_add(1, Ordering::SeqCst);
        self.inner
            .filters
            .write()
            .push((id, f, Arc::new(AtomicU64::new(0))));
        id
    }

    /// Removes one filter; returns how many messages it dropped, so that a test can tell
    /// a partition that cut something from one that cut nothing.
    pub fn remove_filter(&self, id: u64) -> u64 {
        let mut filters = self.inner.filters.write();
        let dropped = filters
            .iter()
            .find(|(i, _, _)| *i == id)
            .map_or(0, |(_, _, n)| n.load(Ordering::Relaxed));
        filters.retain(|(i, _, _)| *i != id);
        dropped
    }

    /// Removes every filter: the network heals.
    pub fn clear_filters(&self) {
        self.inner.filters.write().clear();
    }

    /// Cuts every message between a store in `a` and a store in `b`, both ways.
    pub fn partition(&self, a: &[u64], b: &[u64]) -> u64 {
        let (a, b) = (a.to_vec(), b.to_vec());
        self.add_filter(Arc::new(move |from, to, _| {
            let cut =
                (a.contains(&from) && b.contains(&to)) || (b.contains(&from) && a.contains(&to));
            if cut {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }))
    }

    /// Cuts one store off from every other.
    pub fn isolate(&self, store: u64) -> u64 {
        self.add_filter(Arc::new(move |from, to, _| {
            if from == store || to == store {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }))
    }

    /// Delays every message by `d`.
    pub fn delay_all(&self, d: Duration) -> u64 {
        self.add_filter(Arc::new(move |_, _, _| Verdict::Delay(d)))
    }

    fn verdict(&self, from: u64, to: u64, msg: &RaftMessage) -> Verdict {
        let mut delay = Duration::ZERO;
        for (_, f, dropped) in self.inner.filters.read().iter() {
            match f(from, to, msg) {
                Verdict::Drop => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Drop;
                }
                Verdict::Delay(d) => delay = delay.max(d),
                Verdict::Pass => {}
            }
        }
        if delay.is_zero() {
            Verdict::Pass
        } else {
            Verdict::Delay(delay)
        }
    }

    fn deliver(&self, from: u64, to: u64, msg: RaftMessage) {
        match self.verdict(from, to, &msg) {
            Verdict::Pass => self.arrive(from, to, msg),
            // A snapshot stream that cannot get through fails at its sender, as over gRPC;
            // without the report Raft would wait for that snapshot forever.
            Verdict::Drop if snap::is_snapshot(&msg) => {
                if let Some((sender, _)) = self.inner.stores.read().get(&from) {
                    sender.report_snapshot_status(
                        msg.get_region_id(),
                        msg.get_to_peer().get_id(),
                        false,
                    );
                }
            }
            Verdict::Drop => {}
            Verdict::Delay(d) => self
                .delayer()
                .send((Instant::now() + d, from, to, msg))
                .expect("delayer runs"),
        }
    }

    fn delayer(&self) -> Sender<Delayed> {
        let mut slot = self.inner.delayed.lock();
        if let Some(tx) = slot.as_ref() {
            return tx.clone();
        }
        let (tx, rx) = unbounded::<Delayed>();
        // Holds only a weak view of the network so that dropping the cluster ends it.
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("sim-delay".into())
            .spawn(move || {
                while let Ok((at, from, to, msg)) = rx.recv() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let Some(inner) = weak.upgrade() else { return };
                    Network { inner }.arrive(from, to, msg);
                }
            })
            .expect("spawn delayer");
        *slot = Some(tx.clone());
        tx
    }

    fn arrive(&self, from: u64, to: u64, msg: RaftMessage) {
        let stores = self.inner.stores.read();
        let Some((router, dst_mgr)) = stores.get(&to).cloned() else {
            if let Some((sender, _)) = stores.get(&from) {
                sender.report_unreachable(msg.get_region_id(), msg.get_to_peer().get_id());
            }
            return;
        };
        let sender = stores.get(&from).cloned();
        drop(stores);
        if !snap::is_snapshot(&msg) {
            let _ = router.send_raft_message(msg);
            return;
        }
        let Some((sender_router, src_mgr)) = sender else {
            return;
        };
        // Stream off the poller thread, as the gRPC transport does.
        std::thread::spawn(move || {
            let region_id = msg.get_region_id();
            let to_peer = msg.get_to_peer().get_id();
            let mut receiver = None;
            let mut sent = snap::send_snapshot(&src_mgr, msg, |chunk| {
                match receiver.as_mut() {
                    None => receiver = Some(snap::SnapReceiver::new(&dst_mgr, chunk)?),
                    Some(r) => r.write(chunk.get_data())?,
                }
                Ok(())
            });
            if sent.is_ok() {
                sent = receiver
                    .take()
                    .ok_or_else(|| raftstore::Error::Snapshot("no chunk".into()))
                    .and_then(|r| r.finish())
                    .and_then(|m| router.send_raft_message(m));
            }
            sender_router.report_snapshot_status(region_id, to_peer, sent.is_ok());
        });
    }
}
