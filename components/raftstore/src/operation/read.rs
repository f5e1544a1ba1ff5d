//! Linearizable reads on the Raft poller. A leader queues each read (checked for
//! leadership and epoch) for the next ReadIndex batch (`crate::read_queue`); a follower
//! asked for a replica read sends the batch's ReadIndex to its leader. A read runs once
//! this replica has applied up to its read index. Reads have no apply-side half.
//!
//! The leader answers the checks a follower's request carries (`ReadIndexCheck`) when
//! the request arrives, before Raft fixes its read index: whatever the check raises (the
//! transaction layer's max timestamp) is then raised before the index the read waits for.

use std::time::{Duration, Instant};

use proto::{
    metapb,
    raft_serverpb::{LeaderState, ReadIndexContext},
};
use protobuf::Message as _;
use raft::{
    eraftpb::{Message, MessageType},
    ReadOnlyOption,
};
use slog::debug;

use crate::{
    fsm::peer::{PeerFsm, PollContext},
    metrics,
    msg::{Callback, ReadFrom, ReadReady},
    util::check_epoch,
    Error, Result,
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
            return cb(Ok(self.local_ready()));
        }
        let from = match from {
            ReadFrom::Stale(ts) => return cb(self.stale_read(&epoch, ts)),
            ReadFrom::Bounded(max_age) if !self.is_leader() => {
                return cb(self.bounded_read(&epoch, max_age))
            }
            // A leader reads as a leader: one that was deposed while asleep (it did not
            // tick, so check-quorum could not stop it) may be far older than any margin.
            // A region that went to sleep since the store listed it stays asleep.
            ReadFrom::Confirm if self.quiet => {
                return cb(Err(Error::StaleCommand("the region hibernates")))
            }
            ReadFrom::Bounded(_) | ReadFrom::Confirm => ReadFrom::Leader,
            from => from,
        };
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
        if from == ReadFrom::Leader && self.may_read_on_lease(Instant::now()) {
            metrics::LEASE_READS.with_label_values(&["lease"]).inc();
            // At the commit index, not the applied one: a follower may already have shown
            // a committed write this leader has yet to apply, and a split committed here
            // may have moved the key.
            let committed = self.raft.raft.raft_log.committed;
            if self.raft.store().applied_index() >= committed {
                return cb(Ok(self.lease_ready(committed)));
            }
            return self.reads.push_at(committed, epoch, cb);
        }
        if self.is_leader() {
            metrics::LEASE_READS
                .with_label_values(&["read_index"])
                .inc();
        }
        // A leader reads for itself; its own transaction layer checks its memory.
        let check = match from {
            ReadFrom::Replica(check) if !self.is_leader() && !check.is_empty() => Some(check),
            _ => None,
        };
        self.reads.push(epoch, check, cb);
    }

    /// Whether this peer leads under a lease at `now`, with no leader transfer under way.
    pub(crate) fn lease_holds(&self, now: Instant) -> bool {
        let raft = &self.raft.raft;
        self.is_leader()
            && self.lease.is_valid(raft.term, now)
            && self.transfer.is_none()
            && raft.lead_transferee.is_none()
    }

    /// Whether this leader may serve a read arriving at `now` without a ReadIndex round:
    /// its lease holds and it has applied an entry of its own term (so every write an
    /// earlier leader acknowledged). A lease about to run out is renewed by a ReadIndex round in
    /// the background, so that steady reads do not wait for one.
    fn may_read_on_lease(&mut self, now: Instant) -> bool {
        if !self.lease_holds(now) || self.applying_snapshot {
            return false;
        }
        let raft = &self.raft.raft;
        let applied = self.raft.store().applied_index();
        if raft.raft_log.term(applied).ok() != Some(raft.term) {
            return false;
        }
        if self.lease.expires_soon(now) {
            self.reads.renew();
        }
        true
    }

    /// Steps a follower's ReadIndex request: a leader under a lease answers it with its
    /// commit index at once, as raft-rs does for a lease-based read, instead of a
    /// heartbeat round.
    pub(crate) fn step_read_index(&mut self, msg: Message) -> raft::Result<()> {
        let now = Instant::now();
        if self.is_leader()
            && (!self.lease.is_valid(self.raft.raft.term, now) || self.lease.expires_soon(now))
        {
            // Followers' reads confirm nothing for the leader itself: renew it for them.
            self.reads.renew();
        }
        if !self.lease_holds(now) {
            return self.raft.step(msg);
        }
        let read_only = &mut self.raft.raft.read_only;
        read_only.option = ReadOnlyOption::LeaseBased;
        let res = self.raft.step(msg);
        self.raft.raft.read_only.option = ReadOnlyOption::Safe;
        res
    }

    fn lease_ready(&self, index: u64) -> ReadReady {
        ReadReady {
            region: self.region().clone(),
            term: self.raft.raft.term,
            answer: vec![],
            index,
        }
    }

    /// A transactional read at `ts` served from what this replica has applied, if its
    /// safe timestamp covers it.
    fn stale_read(&self, epoch: &metapb::RegionEpoch, ts: u64) -> Result<ReadReady> {
        self.check_local(epoch)?;
        let safe_ts = self.stale.safe_ts();
        if ts > safe_ts {
            return Err(self.not_ready(format!(
                "its safe timestamp {safe_ts} is below the read's {ts}"
            )));
        }
        Ok(self.local_ready())
    }

    /// A raw read served from what this replica has applied, if that is at most
    /// `max_age` old by its last word from the leader.
    fn bounded_read(&self, epoch: &metapb::RegionEpoch, max_age: Duration) -> Result<ReadReady> {
        self.check_local(epoch)?;
        match self.stale.age(Instant::now()) {
            Some(age) if age <= max_age => Ok(self.local_ready()),
            Some(age) => Err(self.not_ready(format!(
                "its applied state is {} ms old, past the read's bound of {} ms",
                age.as_millis(),
                max_age.as_millis()
            ))),
            None => Err(self.not_ready("it has not caught up with its leader".into())),
        }
    }

    /// Whether this replica's engine may be read for the region as it stands.
    fn check_local(&self, epoch: &metapb::RegionEpoch) -> Result<()> {
        check_epoch(self.region(), epoch, false)?;
        if self.applying_snapshot {
            return Err(self.not_ready("it is applying a snapshot".into()));
        }
        Ok(())
    }

    fn local_ready(&self) -> ReadReady {
        ReadReady {
            region: self.region().clone(),
            term: self.raft.raft.term,
            answer: vec![],
            index: 0,
        }
    }

    fn not_ready(&self, why: String) -> Error {
        Error::DataIsNotReady {
            region_id: self.region_id(),
            peer_id: self.peer.get_id(),
            safe_ts: self.stale.safe_ts(),
            why,
        }
    }

    /// The store confirmed a resolved timestamp by a read index in `term`.
    pub(crate) fn on_safe_ts(&mut self, term: u64, safe_ts: u64, index: u64) {
        if self.is_leader() && self.raft.raft.term == term {
            let applied = self.raft.store().applied_index();
            self.stale
                .on_resolved(safe_ts, index, applied, Instant::now());
        }
    }

    /// A leader's word on a message from peer `from`: taken only from the leader of this
    /// replica's term.
    pub(crate) fn on_leader_state(&mut self, from: u64, ls: &LeaderState) {
        let raft = &self.raft.raft;
        if self.is_leader() || ls.term != raft.term || raft.leader_id != from {
            return;
        }
        let applied = self.raft.store().applied_index();
        self.stale
            .on_word(ls.commit, ls.safe_ts, applied, Instant::now());
    }

    /// What a leader tells its followers on every message. A new leader says nothing
    /// until it has committed an entry of its term: before, its commit index may be
    /// below writes the previous leader acknowledged.
    pub(crate) fn leader_state(&self) -> Option<LeaderState> {
        let raft = &self.raft.raft;
        if !self.is_leader() || raft.raft_log.term(raft.raft_log.committed).ok() != Some(raft.term)
        {
            return None;
        }
        let mut ls = LeaderState::default();
        ls.set_term(self.raft.raft.term);
        ls.set_commit(self.raft.raft.raft_log.committed);
        ls.set_safe_ts(self.stale.shipped_safe_ts());
        Some(ls)
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
            debug!(
                self.logger,
                "a read index request with an undecodable context"
            );
            return;
        };
        if rctx.get_checks().is_empty() {
            return;
        }
        let region_id = self.region_id();
        let answers = rctx
            .get_checks()
            .iter()
            .map(|c| check(region_id, c))
            .collect();
        rctx.set_answers(answers);
        entry.set_data(
            rctx.write_to_bytes()
                .expect("encode a read index context")
                .into(),
        );
    }
}
