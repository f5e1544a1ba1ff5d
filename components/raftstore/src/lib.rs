//! Multi-Raft: many regions, each its own Raft group (raft-rs `RawNode`), on one store.
//!
//! The loop, for every region with work:
//! 1. mail (Raft messages, proposals, reads, ticks) reaches the peer through the
//!    [`RaftRouter`]; the batch system schedules the peer on a Raft poller;
//! 2. the poller handles a batch of peers in a round: steps messages, proposes, ticks;
//!    then gathers every touched peer's `Ready` into ONE WriteBatch, written with ONE
//!    fsync; then sends the round's Raft messages, batched per destination store;
//! 3. committed entries go to the apply pool, which writes each region's data and apply
//!    state together, answers the proposals, and reports back to the peer.
//!
//! Layout: the three state machines (peer, apply, store) in `fsm`; each operation (a
//! command, the ready loop, split, membership change, snapshot, destroy, log GC, reads,
//! the consistency check, hibernation, leadership) in one file of [`operation`], its
//! Raft-poller half beside its apply-poller half. Each key on disk has one writer: the
//! peer writes its log, Raft state and the region's shape (`RegionLocalState`), also a
//! split's new regions' first states; the apply side writes data and its apply state.
//!
//! Reads are linearizable through batched ReadIndex. Membership changes go one peer at a
//! time (add learner, promote, remove). Regions split past size or key limits, or by
//! hand. Logs are compacted once every peer has the entries or past count/size limits;
//! a peer left behind gets a snapshot (SST files streamed in checksummed chunks).
//!
//! Owns: Raft peers, apply, snapshots, log GC, region metadata on disk.
//! Must not depend on: gRPC, the PD client or server. It talks to other stores through
//! the [`Transport`] trait and to PD through [`PdTask`]s.

pub mod batch;
pub mod bootstrap;
mod config;
pub mod disk;
mod error;
mod fsm;
mod lease;
pub mod metrics;
pub mod msg;
pub mod operation;
mod proposal;
mod read_queue;
mod router;
pub mod snap;
mod split_check;
mod stale;
mod storage;
mod store_meta;
mod system;
mod transport;
pub mod util;

pub use batch::Router;
pub use config::Config;
pub use error::{Error, Result};
pub use msg::{CasResult, CmdResponse, PdTask, PeerMsg, ReadFrom, ReadIndexCheck, ReadReady};
pub use router::RaftRouter;
pub use snap::SnapManager;
pub use store_meta::StoreMeta;
pub use system::{RaftStore, StoreDeps};
pub use transport::Transport;
