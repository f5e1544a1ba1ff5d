//! Linearizable reads by ReadIndex, batched: every read that reaches a leader in one round
//! shares one ReadIndex request (one heartbeat round trip to a quorum). A read runs once
//! the leader has applied up to the read index.

use std::collections::VecDeque;

use proto::metapb;
use raft::{RawNode, ReadState};
use slog::{warn, Logger};

use crate::{
    metrics,
    msg::{Callback, ReadReady},
    storage::PeerStorage,
    util::check_epoch,
    Error,
};

type Read = (metapb::RegionEpoch, Callback<ReadReady>);

struct Batch {
    id: u64,
    reads: Vec<Read>,
    index: Option<u64>,
    issued: bool,
    age_ticks: u64,
}

/// Reads waiting on a leader.
#[derive(Default)]
pub struct ReadQueue {
    next_id: u64,
    incoming: Vec<Read>,
    batches: VecDeque<Batch>,
}

impl ReadQueue {
    /// Queues a read for the next batch.
    pub fn push(&mut self, epoch: metapb::RegionEpoch, cb: Callback<ReadReady>) {
        self.incoming.push((epoch, cb));
    }

    /// Whether no read is waiting.
    pub fn is_empty(&self) -> bool {
        self.incoming.is_empty() && self.batches.is_empty()
    }

    /// Turns the reads of this round into one batch and asks Raft for its read index.
    pub fn flush(&mut self, raft: &mut RawNode<PeerStorage>, is_leader: bool) {
        if self.incoming.is_empty() {
            return;
        }
        self.next_id += 1;
        self.batches.push_back(Batch {
            id: self.next_id,
            reads: std::mem::take(&mut self.incoming),
            index: None,
            issued: false,
            age_ticks: 0,
        });
        if is_leader {
            self.retry_pending(raft);
        }
    }

    /// Issues the batches Raft could not take yet. A new leader answers ReadIndex only
    /// once it has committed an entry of its own term.
    pub fn retry_pending(&mut self, raft: &mut RawNode<PeerStorage>) {
        if !raft.raft.commit_to_current_term() {
            return;
        }
        for b in self.batches.iter_mut().filter(|b| !b.issued) {
            b.issued = true;
            metrics::PROPOSALS
                .with_label_values(&["read_index", "ok"])
                .inc();
            raft.read_index(b.id.to_be_bytes().to_vec());
        }
    }

    /// Records the read indexes Raft confirmed, and runs the reads already applied.
    pub fn on_read_states(
        &mut self,
        states: Vec<ReadState>,
        applied: u64,
        region: &metapb::Region,
        term: u64,
    ) {
        for s in states {
            let Ok(id) = <[u8; 8]>::try_from(s.request_ctx.as_slice()) else {
                continue;
            };
            let id = u64::from_be_bytes(id);
            if let Some(b) = self.batches.iter_mut().find(|b| b.id == id) {
                b.index = Some(s.index);
            }
        }
        self.on_applied(applied, region, term);
    }

    /// Runs every read whose index has been applied.
    pub fn on_applied(&mut self, applied: u64, region: &metapb::Region, term: u64) {
        let (ready, waiting): (Vec<Batch>, Vec<Batch>) = self
            .batches
            .drain(..)
            .partition(|b| b.index.is_some_and(|i| i <= applied));
        self.batches = waiting.into();
        for b in ready {
            for (epoch, cb) in b.reads {
                // A split or merge since the read arrived may have moved its keys.
                cb(check_epoch(region, &epoch, false).map(|_| ReadReady {
                    region: region.clone(),
                    term,
                }));
            }
        }
    }

    /// Fails reads that waited longer than `max_ticks` (their ReadIndex was lost).
    pub fn expire(&mut self, max_ticks: u64, logger: &Logger) {
        let mut kept = VecDeque::with_capacity(self.batches.len());
        for mut b in self.batches.drain(..) {
            b.age_ticks += 1;
            if b.age_ticks > max_ticks {
                warn!(logger, "read index timed out"; "reads" => b.reads.len());
                for (_, cb) in b.reads {
                    cb(Err(Error::StaleCommand("read index timed out")));
                }
            } else {
                kept.push_back(b);
            }
        }
        self.batches = kept;
    }

    /// Fails every waiting read.
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        for (_, cb) in self.incoming.drain(..) {
            cb(Err(err()));
        }
        for b in self.batches.drain(..) {
            for (_, cb) in b.reads {
                cb(Err(err()));
            }
        }
    }
}
