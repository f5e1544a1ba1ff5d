//! Linearizable reads on the Raft poller: a leader queues each read (checked for
//! leadership and epoch) for the next ReadIndex batch (`crate::read_queue`). Reads have
//! no apply-side half: a read runs once the leader has applied up to its read index.

use proto::metapb;

use crate::{
    fsm::peer::PeerFsm,
    msg::{Callback, ReadReady},
    util::check_epoch,
};

impl PeerFsm {
    pub(crate) fn on_read(&mut self, epoch: metapb::RegionEpoch, cb: Callback<ReadReady>) {
        // Test-only: serve from whatever this replica has, leader or not, with no ReadIndex
        // round. It breaks linearizability on purpose, so that tests can show their
        // checker catches it.
        if fail::eval("read_without_read_index", |_| ()).is_some() {
            return cb(Ok(ReadReady {
                region: self.region().clone(),
                term: self.raft.raft.term,
            }));
        }
        if !self.is_leader() {
            cb(Err(self.not_leader()));
            return;
        }
        if let Err(e) = check_epoch(self.region(), &epoch, false) {
            cb(Err(e));
            return;
        }
        self.reads.push(epoch, cb);
    }
}
