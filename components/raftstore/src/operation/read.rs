//! Linearizable reads on the Raft poller. A leader queues each read (checked for
//! leadership and epoch) for the next ReadIndex batch (`crate::read_queue`); a follower
//! asked for a replica read sends the batch's ReadIndex to its leader. A read runs once
//! this replica has applied up to its read index. Reads have no apply-side half.
//!
//! The leader answers the checks a follower's request carries (`ReadIndexCheck`) when
//! the request arrives, before Raft fixes its read index: whatever the check raises (the
//! transaction layer's max timestamp) is then raised before the index the read waits for.

use proto::{metapb, raft_serverpb::ReadIndexContext};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use slog::debug;

use crate::{
    fsm::peer::{PeerFsm, PollContext},
    msg::{Callback, ReadFrom, ReadReady},
    util::check_epoch,
};

impl PeerFsm {
    pub(crate) fn on_read(
        &mut self,
        epoch: metapb::RegionEpoch,
        from: ReadFrom,
        cb: Callback<ReadReady>,
    ) {
        // Test-only: serve from whatever this replica has, leader or not, with no ReadIndex
        // round. It breaks linearizability on purpose, so that tests can show their
        // checker catches it.
        if fail::eval("read_without_read_index", |_| ()).is_some() {
            return cb(Ok(ReadReady {
                region: self.region().clone(),
                term: self.raft.raft.term,
                answer: vec![],
            }));
        }
        let replica = matches!(from, ReadFrom::Replica(_));
        // A follower can read only through a leader it knows; without one, raft-rs would
        // drop the request.
        if !self.is_leader() && (!replica || self.raft.raft.leader_id == raft::INVALID_ID) {
            cb(Err(self.not_leader()));
            return;
        }
        if let Err(e) = check_epoch(self.region(), &epoch, false) {
            cb(Err(e));
            return;
        }
        // A leader reads for itself; its own transaction layer checks its memory.
        let check = match from {
            ReadFrom::Replica(check) if !self.is_leader() => Some(check),
            _ => None,
        };
        self.reads.push(epoch, check, cb);
    }

    /// On a leader, answers the checks in a follower's ReadIndex request in place, so that
    /// raft-rs echoes the answers back with the read index.
    pub(crate) fn answer_read_checks(&self, msg: &mut Message, ctx: &PollContext) {
        if msg.get_msg_type() != MessageType::MsgReadIndex || !self.is_leader() {
            return;
        }
        let (Some(check), Some(entry)) = (&ctx.read_index_check, msg.mut_entries().first_mut())
        else {
            return;
        };
        let Ok(mut rctx) = ReadIndexContext::parse_from_bytes(entry.get_data()) else {
            debug!(self.logger, "a read index request with an undecodable context");
            return;
        };
        if rctx.get_checks().is_empty() {
            return;
        }
        let region_id = self.region_id();
        let answers = rctx.get_checks().iter().map(|c| check(region_id, c)).collect();
        rctx.set_answers(answers);
        entry.set_data(rctx.write_to_bytes().expect("encode a read index context").into());
    }
}
