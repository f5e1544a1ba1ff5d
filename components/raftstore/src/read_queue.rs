//! Linearizable reads by ReadIndex, batched: every read that reaches a leader in one round
//! shares one ReadIndex request (one heartbeat round trip to a quorum), and so does every
//! replica read that reaches a follower (which sends the request to its leader). A read
//! runs once this replica has applied up to the read index.

use std::{collections::VecDeque, time::Instant};

use proto::{metapb, raft_serverpb::ReadIndexContext};
use protobuf::Message as _;
use raft::{RawNode, ReadState};
use slog::{warn, Logger};

use crate::{
    metrics,
    msg::{Callback, ReadReady},
    storage::PeerStorage,
    util::check_epoch,
    Error,
};

/// The checks of one ReadIndex batch, at most (unless one read's check is larger).
const CONTEXT_BYTES: usize = 1 << 20;

struct Read {
    epoch: metapb::RegionEpoch,
    /// For a follower's replica read: what the leader is to check.
    check: Option<Vec<u8>>,
    cb: Callback<ReadReady>,
}

struct Batch {
    id: u64,
    reads: Vec<Read>,
    index: Option<u64>,
    /// The leader's answers to the reads' checks, in the order of the reads that have one.
    answers: Vec<Vec<u8>>,
    /// When its ReadIndex was asked for: a quorum acknowledged the leader after it.
    issued: Option<Instant>,
    age_ticks: u64,
}

impl Batch {
    /// The ReadIndex context: this batch's id, the asking peer, the reads' checks.
    fn context(&self, peer_id: u64) -> Vec<u8> {
        let mut c = ReadIndexContext::default();
        c.set_batch(self.id);
        c.set_peer_id(peer_id);
        c.set_checks(self.reads.iter().filter_map(|r| r.check.clone()).collect());
        c.write_to_bytes().expect("encode a read index context")
    }
}

/// Checks travel in the ReadIndex request and the leader's heartbeats: a round whose
/// checks are large is split over several batches of at most `CONTEXT_BYTES` of checks.
fn split_by_check_bytes(reads: Vec<Read>) -> Vec<Vec<Read>> {
    let (mut out, mut bytes) = (vec![vec![]], 0);
    for read in reads {
        let size = read.check.as_ref().map_or(0, Vec::len);
        let last = out.last_mut().expect("never empty");
        if !last.is_empty() && bytes + size > CONTEXT_BYTES {
            out.push(vec![]);
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("never empty").push(read);
    }
    out
}

/// Reads waiting on a read index.
#[derive(Default)]
pub struct ReadQueue {
    next_id: u64,
    incoming: Vec<Read>,
    batches: VecDeque<Batch>,
}

impl ReadQueue {
    /// Queues a read for the next batch; `check` only for a follower's replica read.
    pub fn push(
        &mut self,
        epoch: metapb::RegionEpoch,
        check: Option<Vec<u8>>,
        cb: Callback<ReadReady>,
    ) {
        self.incoming.push(Read { epoch, check, cb });
    }

    /// Queues a read whose index is already known (a leader's commit index under its
    /// lease): it runs once that index is applied, with no ReadIndex round.
    pub fn push_at(&mut self, index: u64, epoch: metapb::RegionEpoch, cb: Callback<ReadReady>) {
        let read = Read {
            epoch,
            check: None,
            cb,
        };
        let b = self.push_batch(vec![read]);
        b.index = Some(index);
        // Never issued to Raft, and confirms nothing: no lease renewal comes of it.
        b.issued = Some(Instant::now());
    }

    /// Whether no read is waiting.
    pub fn is_empty(&self) -> bool {
        self.incoming.is_empty() && self.batches.is_empty()
    }

    /// Asks for a read index with no read waiting on it, unless one is on its way: its
    /// confirmation renews the leader's lease.
    pub fn renew(&mut self) {
        if self.is_empty() {
            self.push_batch(vec![]);
        }
    }

    /// Turns the reads of this round into one batch and asks Raft for its read index: a
    /// leader itself, a follower its leader.
    pub fn flush(&mut self, raft: &mut RawNode<PeerStorage>, is_leader: bool) {
        if !self.incoming.is_empty() {
            for reads in split_by_check_bytes(std::mem::take(&mut self.incoming)) {
                self.push_batch(reads);
            }
        }
        if self.batches.iter().all(|b| b.issued.is_some()) {
            return;
        }
        if is_leader {
            self.retry_pending(raft);
        } else {
            self.issue(raft);
        }
    }

    fn push_batch(&mut self, reads: Vec<Read>) -> &mut Batch {
        self.next_id += 1;
        self.batches.push_back(Batch {
            id: self.next_id,
            reads,
            index: None,
            answers: vec![],
            issued: None,
            age_ticks: 0,
        });
        self.batches.back_mut().expect("just pushed")
    }

    /// Issues the batches Raft could not take yet. A new leader answers ReadIndex only
    /// once it has committed an entry of its own term.
    pub fn retry_pending(&mut self, raft: &mut RawNode<PeerStorage>) {
        if raft.raft.commit_to_current_term() {
            self.issue(raft);
        }
    }

    fn issue(&mut self, raft: &mut RawNode<PeerStorage>) {
        let peer_id = raft.raft.id;
        for b in self.batches.iter_mut().filter(|b| b.issued.is_none()) {
            b.issued = Some(Instant::now());
            metrics::PROPOSALS
                .with_label_values(&["read_index", "ok"])
                .inc();
            raft.read_index(b.context(peer_id));
        }
    }

    /// Records the read indexes Raft confirmed, and runs the reads already applied.
    /// Returns when the latest confirmed batch was issued: on a leader, a quorum
    /// acknowledged it after that.
    pub fn on_read_states(
        &mut self,
        states: Vec<ReadState>,
        applied: u64,
        region: &metapb::Region,
        term: u64,
    ) -> Option<Instant> {
        let mut confirmed = None;
        for s in states {
            let Ok(mut c) = ReadIndexContext::parse_from_bytes(&s.request_ctx) else {
                continue;
            };
            if let Some(b) = self
                .batches
                .iter_mut()
                .find(|b| b.id == c.get_batch() && b.index.is_none())
            {
                b.index = Some(s.index);
                b.answers = c.take_answers().into();
                confirmed = confirmed.max(b.issued);
            }
        }
        self.on_applied(applied, region, term);
        confirmed
    }

    /// Runs every read whose index has been applied.
    pub fn on_applied(&mut self, applied: u64, region: &metapb::Region, term: u64) {
        let (ready, waiting): (Vec<Batch>, Vec<Batch>) = self
            .batches
            .drain(..)
            .partition(|b| b.index.is_some_and(|i| i <= applied));
        self.batches = waiting.into();
        for b in ready {
            let index = b.index.unwrap_or_default();
            let mut answers = b.answers.into_iter();
            for r in b.reads {
                let answer = match r.check {
                    // A leader that could not check (no hook) must not pass for one that
                    // found nothing.
                    Some(_) => answers.next().ok_or(Error::StaleCommand(
                        "the leader did not answer the read check",
                    )),
                    None => Ok(vec![]),
                };
                // A split or merge since the read arrived may have moved its keys.
                (r.cb)(answer.and_then(|answer| {
                    check_epoch(region, &r.epoch, false).map(|_| ReadReady {
                        region: region.clone(),
                        term,
                        answer,
                        index,
                    })
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
                for r in b.reads {
                    (r.cb)(Err(Error::StaleCommand("read index timed out")));
                }
            } else {
                kept.push_back(b);
            }
        }
        self.batches = kept;
    }

    /// Fails every waiting read.
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        for r in self.incoming.drain(..) {
            (r.cb)(Err(err()));
        }
        for b in self.batches.drain(..) {
            for r in b.reads {
                (r.cb)(Err(err()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(check_bytes: Option<usize>) -> Read {
        Read {
            epoch: metapb::RegionEpoch::default(),
            check: check_bytes.map(|n| vec![0; n]),
            cb: Box::new(|_| {}),
        }
    }

    fn sizes(batches: &[Vec<Read>]) -> Vec<usize> {
        batches.iter().map(Vec::len).collect()
    }

    #[test]
    fn a_round_of_large_checks_is_split_over_batches() {
        let half = CONTEXT_BYTES / 2;
        let small = split_by_check_bytes((0..5).map(|_| read(Some(100))).collect());
        assert_eq!(sizes(&small), [5]);
        let none = split_by_check_bytes((0..3).map(|_| read(None)).collect());
        assert_eq!(sizes(&none), [3]);
        let large = [
            Some(half),
            Some(half),
            Some(1),
            None,
            Some(CONTEXT_BYTES * 2),
            Some(1),
        ];
        let batches = split_by_check_bytes(large.into_iter().map(read).collect());
        // Two halves fill one batch; a check larger than the bound goes alone.
        assert_eq!(sizes(&batches), [2, 2, 1, 1]);
    }
}
