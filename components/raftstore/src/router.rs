//! The raftstore's entry point from outside: region id -> the peer's mailbox, with the
//! store's own mailbox for regions it has no peer of.

use std::{collections::HashSet, sync::Arc};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use proto::raft_serverpb::RaftMessage;

use crate::{
    batch::{Router, SendError},
    fsm::peer::PeerFsm,
    msg::{PeerMsg, StoreMsg},
    Error, Result,
};

/// The entry point into a running raftstore: routes mail to peers, and to the store for
/// regions it has no peer of.
#[derive(Clone)]
pub struct RaftRouter {
    pub(crate) peers: Router<PeerFsm>,
    pub(crate) store: Sender<StoreMsg>,
    /// Regions whose peer here hibernates: the store sends them no ticks.
    pub(crate) hibernating: Arc<Mutex<HashSet<u64>>>,
}

impl RaftRouter {
    /// Sends a request from outside (a client, an operator) to the peer of `region_id`;
    /// refused with `Busy` while its mailbox is full, before any work starts.
    pub fn send(&self, region_id: u64, msg: PeerMsg) -> Result<()> {
        match self.peers.try_send(region_id, msg) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(Error::Busy(format!(
                "region {region_id} has too many requests waiting (raftstore.peer-mailbox-capacity)"
            ))),
            Err(SendError::Closed(_)) => Err(Error::RegionNotFound(region_id)),
        }
    }

    /// Sends mail from inside the store (results, reports, ticks), which is never
    /// refused for a full mailbox: losing it would stall the peer.
    pub fn force_send(&self, region_id: u64, msg: PeerMsg) -> Result<()> {
        self.peers
            .send(region_id, msg)
            .map_err(|_| Error::RegionNotFound(region_id))
    }

    /// Delivers a Raft message from another store, creating the peer if needed. Raft
    /// traffic comes only from authenticated stores and is paced by Raft itself (in-flight
    /// windows), so it is never refused for a mailbox that clients filled: dropping
    /// heartbeats under client load would depose healthy leaders.
    pub fn send_raft_message(&self, msg: RaftMessage) -> Result<()> {
        let region_id = msg.get_region_id();
        match self
            .peers
            .send(region_id, PeerMsg::RaftMessage(Box::new(msg)))
        {
            Ok(()) => Ok(()),
            Err(PeerMsg::RaftMessage(msg)) => self
                .store
                .send(StoreMsg::RaftMessage(msg))
                .map_err(|_| Error::Stopped),
            Err(_) => unreachable!("the message given back is the one sent"),
        }
    }

    /// Tells a peer that a message it sent to `to_peer_id` was not delivered.
    pub fn report_unreachable(&self, region_id: u64, to_peer_id: u64) {
        let _ = self.force_send(region_id, PeerMsg::Unreachable { to_peer_id });
    }

    /// Tells a peer how sending a snapshot to `to_peer_id` ended.
    pub fn report_snapshot_status(&self, region_id: u64, to_peer_id: u64, ok: bool) {
        let _ = self.force_send(region_id, PeerMsg::SnapshotStatus { to_peer_id, ok });
    }

    /// Sends mail to the store itself.
    pub fn send_store(&self, msg: StoreMsg) {
        let _ = self.store.send(msg);
    }

    /// Whether the region's peer on this store hibernates.
    pub fn is_hibernating(&self, region_id: u64) -> bool {
        self.hibernating.lock().contains(&region_id)
    }

    /// How many peers on this store hibernate.
    pub fn hibernating_count(&self) -> usize {
        self.hibernating.lock().len()
    }

    /// How many peers this store hosts.
    pub fn region_count(&self) -> usize {
        self.peers.len()
    }
}
