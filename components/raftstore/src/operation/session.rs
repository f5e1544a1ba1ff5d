//! Client sessions (the Raft thesis, section 6.3): a write numbered by a client session
//! applies at most once per region; a resend gets the first answer. The leader stamps
//! its clock and the limits into the command; every replica decides from the log alone,
//! so all decide alike. The table lives under the region's session keys, is copied to a
//! split's new regions, travels in snapshots, and goes with the replica.
//!
//! Both halves: the leader stamps (raft poller), the apply side decides and records.

use std::collections::HashMap;

use engine::{Cf, Snapshot, WriteBatch};
use proto::{
    raft_cmdpb::{RaftCmdRequest, SessionHeader},
    raft_serverpb::{CasAnswer, ClientSession, SessionAnswer, SessionSnapshot, SessionTableState},
};
use protobuf::Message as _;

use crate::{
    config::Config,
    fsm::apply::{ApplyContext, ApplyFsm},
    msg::{CasResult, CmdResponse},
    Error, Result,
};

/// One region's sessions, as of its applied state.
#[derive(Debug, Default)]
pub struct SessionTable {
    state: SessionTableState,
    clients: HashMap<u64, ClientSession>,
    /// The latest leader clock in the log so far: never written by itself, it is the
    /// latest of the last sweep and the sessions' last activity, so every replica,
    /// restarted or not, has the same.
    clock_ms: u64,
    /// The sessions' encoded size, held to `raftstore.max-session-bytes-per-region`.
    bytes: u64,
}

/// Whether a session write is to be applied, or was already.
#[derive(Debug)]
enum Admission {
    Apply,
    Answered(CmdResponse),
}

/// This machine's clock, unix ms (0 if set before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The leader's part: its clock and the limits every replica then applies.
pub(crate) fn stamp(cmd: &mut RaftCmdRequest, cfg: &Config) {
    if !cmd.get_header().has_session() {
        return;
    }
    let s = cmd.mut_header().mut_session();
    s.now_ms = now_ms();
    s.ttl_ms = cfg.session_ttl.as_millis() as u64;
    s.max_sessions = cfg.max_sessions_per_region;
    s.max_bytes = cfg.max_session_bytes_per_region.as_u64();
}

/// Checks a session header as a client sent it (before anything is proposed).
pub fn check_header(h: &SessionHeader, window: u64) -> Result<()> {
    if h.client_id == 0 {
        return Ok(());
    }
    if h.seq == 0 || h.acked_below > h.seq {
        return Err(Error::Session(format!(
            "sequence number {} with acknowledged point {}: numbers start at 1 and a write \
             cannot be acknowledged before it is sent",
            h.seq, h.acked_below
        )));
    }
    if h.seq - h.acked_below >= window {
        return Err(Error::Session(format!(
            "sequence number {} is {} past the acknowledged point {}; at most {window} \
             writes may be unanswered (raftstore.session-window)",
            h.seq,
            h.seq - h.acked_below,
            h.acked_below
        )));
    }
    Ok(())
}

/// Refuses a try whose sending time (the client's clock) is a twentieth of the session
/// TTL or more from `clock_ms`: the proposing leader's clock, as an early refusal, and at
/// apply the region's log clock (the latest stamp in its log, the same on every replica),
/// which is what makes it safe. A session is forgotten only once idle a tenth of the TTL
/// by the log clock, and its last activity is at least the sending time of the try that
/// used it minus a twentieth; so a first try held up in the network (a partition heals
/// and the kernel delivers what it queued) that arrives after its resend applied and the
/// session was forgotten is always refused here, whatever the clocks say. Clocks further
/// apart than that only get tries refused.
pub(crate) fn check_sent(h: &SessionHeader, clock_ms: u64, ttl_ms: u64) -> Result<()> {
    if h.client_id == 0 {
        return Ok(());
    }
    if h.sent_ms == 0 {
        return Err(Error::Session(
            "a session write must say when it was sent (session_sent_ms)".into(),
        ));
    }
    if h.first_sent_ms > h.sent_ms {
        return Err(Error::Session(format!(
            "the first try is dated after this one (session_first_sent_ms {} > \
             session_sent_ms {})",
            h.first_sent_ms, h.sent_ms
        )));
    }
    let max = ttl_ms / 20;
    if clock_ms.abs_diff(h.sent_ms) >= max {
        let when = match clock_ms >= h.sent_ms {
            true => format!("was sent {} ms before", clock_ms - h.sent_ms),
            false => format!("is dated {} ms after", h.sent_ms - clock_ms),
        };
        return Err(Error::Session(format!(
            "this try {when} the region's clock, {max} ms or more (raftstore.session-ttl / \
             20): one held up that long could arrive after the region forgot the session; \
             or the client's clock is off"
        )));
    }
    Ok(())
}

/// Whether the write's first try was sent so lately (by the region's log clock
/// `clock_ms`) that, had it applied, the region could not have forgotten its session
/// since: that first try would have passed `check_sent`, so the session's last activity
/// would be past the first sending time minus a twentieth of the TTL, and forgetting takes
/// a tenth idle. So a resend the region knows nothing of, or one below a recreated
/// session's floor, did not apply before; its first try, if it arrives later, is
/// answered from the session or refused by `check_sent`.
fn first_sent_lately(h: &SessionHeader, clock_ms: u64) -> bool {
    h.first_sent_ms != 0 && clock_ms <= h.first_sent_ms.saturating_add(h.ttl_ms / 20)
}

/// What a command's requests are: their checksum and length, as encoded, without what a
/// resend changes by being proposed later (a raw value's expiry, `now + ttl`, and a
/// compare-and-swap's `now`).
fn digest_of(cmd: &RaftCmdRequest) -> u64 {
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0u64;
    for r in cmd.get_requests() {
        let mut r = r.clone();
        if r.has_put() {
            strip_expiry(r.mut_put().mut_value());
        }
        if r.has_cas() {
            let cas = r.mut_cas();
            cas.set_now(0);
            strip_expiry(cas.mut_value());
        }
        let bytes = r
            .write_to_bytes()
            .expect("encoding a message into memory cannot fail");
        len += bytes.len() as u64;
        crc.update(&bytes);
    }
    (u64::from(crc.finalize()) << 32) | (len & 0xffff_ffff)
}

fn strip_expiry(value: &mut Vec<u8>) {
    let keep = value.len().saturating_sub(keys::raw::SUFFIX_LEN);
    value.truncate(keep);
}

fn answer_of(seq: u64, digest: u64, resp: &CmdResponse) -> SessionAnswer {
    let mut a = SessionAnswer::default();
    a.set_seq(seq);
    a.set_digest(digest);
    for r in &resp.cas {
        let mut c = CasAnswer::default();
        c.set_succeed(r.succeed);
        if let Some(p) = &r.previous {
            c.set_previous_exists(true);
            c.set_previous(p.clone());
        }
        a.mut_cas().push(c);
    }
    a
}

fn response_of(a: &SessionAnswer) -> CmdResponse {
    CmdResponse {
        cas: a
            .get_cas()
            .iter()
            .map(|c| CasResult {
                succeed: c.succeed,
                previous: c.previous_exists.then(|| c.previous.clone()),
            })
            .collect(),
        ..Default::default()
    }
}

/// What a session's answers will take once those below `acked_below` are dropped.
fn kept_bytes(c: &ClientSession, acked_below: u64) -> u64 {
    let acked = c.acked_below.max(acked_below);
    c.get_answers()
        .iter()
        .filter(|a| a.seq >= acked)
        .map(|a| u64::from(a.compute_size()))
        .sum()
}

impl SessionTable {
    /// Region `region_id`'s table as `snap` has it.
    pub fn load(snap: &Snapshot<'_>, region_id: u64) -> Result<SessionTable> {
        let state = snap
            .get_msg(Cf::Raft, &keys::session_table_key(region_id))?
            .unwrap_or_default();
        let mut clients = HashMap::new();
        let range = keys::session_client_range(region_id);
        let mut bad = None;
        snap.scan(Cf::Raft, &range.start, &range.end, |_, v| {
            match ClientSession::parse_from_bytes(v) {
                Ok(c) => {
                    clients.insert(c.client_id, c);
                }
                Err(e) => bad = Some(e),
            }
            Ok(bad.is_none())
        })?;
        if let Some(e) = bad {
            return Err(e.into());
        }
        Ok(SessionTable::new(state, clients))
    }

    fn new(state: SessionTableState, clients: HashMap<u64, ClientSession>) -> SessionTable {
        let active = clients.values().map(|c| c.last_active_ms).max();
        SessionTable {
            clock_ms: active.unwrap_or(0).max(state.last_sweep_ms),
            bytes: clients.values().map(|c| u64::from(c.compute_size())).sum(),
            state,
            clients,
        }
    }

    /// The table as a snapshot carries it; `None` if there is nothing to carry.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.clients.is_empty() && self.state == SessionTableState::default() {
            return None;
        }
        let mut s = SessionSnapshot::default();
        s.set_state(self.state.clone());
        let mut clients: Vec<&ClientSession> = self.clients.values().collect();
        clients.sort_by_key(|c| c.client_id);
        s.set_clients(clients.into_iter().cloned().collect());
        Some(
            s.write_to_bytes()
                .expect("encoding a message into memory cannot fail"),
        )
    }

    /// A table from a snapshot's file.
    pub fn decode(bytes: &[u8]) -> Result<SessionTable> {
        let mut s = SessionSnapshot::parse_from_bytes(bytes)?;
        let clients = s
            .take_clients()
            .into_iter()
            .map(|c| (c.client_id, c))
            .collect();
        Ok(SessionTable::new(s.take_state(), clients))
    }

    /// How many sessions it remembers.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Writes the whole table under region `region_id` (a split's new regions start
    /// with their parent's sessions; a snapshot's table replaces a replica's).
    pub(crate) fn copy_to(&self, region_id: u64, wb: &mut WriteBatch) {
        wb.put_msg(Cf::Raft, &keys::session_table_key(region_id), &self.state);
        for c in self.clients.values() {
            wb.put_msg(
                Cf::Raft,
                &keys::session_client_key(region_id, c.client_id),
                c,
            );
        }
    }

    fn admit(&self, h: &SessionHeader, digest: u64, region_id: u64) -> Result<Admission> {
        let forgotten = || Error::SessionExpired {
            region_id,
            client_id: h.client_id,
        };
        let clock = self.clock_ms.max(h.now_ms);
        check_sent(h, clock, h.ttl_ms)?;
        let lately = first_sent_lately(h, clock);
        match self.clients.get(&h.client_id) {
            Some(c) if h.seq < c.acked_below => Err(Error::Session(format!(
                "write {} of client session {:#x} was resent after the client acknowledged \
                 every write below {}",
                h.seq, h.client_id, c.acked_below
            ))),
            // Recreated after the region forgot sessions: below its first number, a write
            // may have applied before.
            Some(c) if h.seq < c.floor && !lately => Err(forgotten()),
            Some(c) => match c.get_answers().iter().find(|a| a.seq == h.seq) {
                Some(a) if a.digest != digest => Err(Error::SessionMismatch {
                    region_id,
                    client_id: h.client_id,
                    seq: h.seq,
                }),
                Some(a) => Ok(Admission::Answered(response_of(a))),
                // One client alone may not fill the region's table with answers it
                // never acknowledges.
                None if kept_bytes(c, h.acked_below) >= h.max_bytes.max(1) => {
                    Err(Error::Session(format!(
                        "client session {:#x} keeps {} unacknowledged answers in region \
                         {region_id}, past raftstore.max-session-bytes-per-region; it must \
                         acknowledge earlier writes first",
                        h.client_id,
                        c.get_answers().len()
                    )))
                }
                None => Ok(Admission::Apply),
            },
            // Unknown, and maybe forgotten: a first try may have applied.
            None if h.retry && self.state.expired_at_ms != 0 && !lately => Err(forgotten()),
            None => Ok(Admission::Apply),
        }
    }

    /// Remembers the answer to an applied write, then forgets what it may.
    fn record(
        &mut self,
        h: &SessionHeader,
        digest: u64,
        resp: &CmdResponse,
        region_id: u64,
        wb: &mut WriteBatch,
    ) {
        let clock = self.clock_ms.max(h.now_ms);
        self.clock_ms = clock;
        let before = self
            .clients
            .get(&h.client_id)
            .map_or(0, |c| u64::from(c.compute_size()));
        let forgot_before = self.state.expired_at_ms != 0;
        let c = self.clients.entry(h.client_id).or_insert_with(|| {
            let mut c = ClientSession::default();
            c.set_client_id(h.client_id);
            if forgot_before {
                c.set_floor(h.seq);
            }
            c
        });
        c.last_active_ms = clock;
        c.acked_below = c.acked_below.max(h.acked_below);
        let acked = c.acked_below;
        c.mut_answers().retain(|a| a.seq >= acked);
        if h.seq >= acked {
            c.mut_answers().push(answer_of(h.seq, digest, resp));
        }
        let after = u64::from(c.compute_size());
        wb.put_msg(
            Cf::Raft,
            &keys::session_client_key(region_id, h.client_id),
            &*c,
        );
        self.bytes = self.bytes - before + after;
        self.sweep(h, region_id, wb);
    }

    fn over_limits(&self, h: &SessionHeader) -> bool {
        self.clients.len() as u64 > h.max_sessions.max(1) || self.bytes > h.max_bytes.max(1)
    }

    /// Forgets sessions idle past the TTL (checked every quarter TTL of log time) and,
    /// past the count or size limit, the least recently active; never the one just used.
    fn sweep(&mut self, h: &SessionHeader, region_id: u64, wb: &mut WriteBatch) {
        let clock = self.clock_ms;
        if !self.over_limits(h) && clock < self.state.last_sweep_ms.saturating_add(h.ttl_ms / 4) {
            return;
        }
        self.state.last_sweep_ms = clock;
        let mut by_age: Vec<(u64, u64)> = self
            .clients
            .values()
            .filter(|c| c.client_id != h.client_id)
            .map(|c| (c.last_active_ms, c.client_id))
            .collect();
        by_age.sort_unstable();
        // Past the limits, only sessions idle a tenth of the TTL are pushed out: a
        // session in use keeps its answers (the table may stay over the limits for that
        // long), so a resend a moment later still finds them.
        let min_idle = h.ttl_ms / 10;
        let mut gone = 0;
        for &(at, id) in &by_age {
            let idle = clock.saturating_sub(at);
            if idle < h.ttl_ms && !(self.over_limits(h) && idle >= min_idle) {
                break;
            }
            let c = self.clients.remove(&id).expect("listed above");
            self.bytes -= u64::from(c.compute_size());
            wb.delete(Cf::Raft, &keys::session_client_key(region_id, id));
            gone += 1;
        }
        if gone > 0 {
            self.state.expired_at_ms = clock;
        }
        wb.put_msg(Cf::Raft, &keys::session_table_key(region_id), &self.state);
    }
}

impl ApplyFsm {
    /// The region's session table, read from disk on first use.
    /// A table that cannot be read stops the region: deciding without it would differ
    /// from the other replicas.
    pub(crate) fn session_table(&mut self, engine: &engine::Engine) -> &mut SessionTable {
        if self.sessions.is_none() {
            let region_id = self.region.get_id();
            let table = SessionTable::load(&engine.snapshot(), region_id).unwrap_or_else(|e| {
                panic!("region {region_id}: its client sessions cannot be read: {e}")
            });
            self.sessions = Some(table);
        }
        self.sessions.as_mut().expect("loaded above")
    }

    /// Runs `exec` for a session write unless the region answered it already; records
    /// the answer of a write it applies.
    pub(crate) fn exec_in_session(
        &mut self,
        cmd: &RaftCmdRequest,
        ctx: &mut ApplyContext,
        exec: impl FnOnce(&mut Self, &mut ApplyContext) -> Result<CmdResponse>,
    ) -> Result<CmdResponse> {
        let h = cmd.get_header().get_session();
        if h.client_id == 0 {
            return exec(self, ctx);
        }
        let region_id = self.region.get_id();
        let engine = ctx.engine.clone();
        let digest = digest_of(cmd);
        if let Admission::Answered(resp) =
            self.session_table(&engine).admit(h, digest, region_id)?
        {
            crate::metrics::SESSION_WRITES
                .with_label_values(&["deduplicated"])
                .inc();
            return Ok(resp);
        }
        let resp = exec(self, ctx)?;
        self.session_table(&engine)
            .record(h, digest, &resp, region_id, &mut ctx.wb);
        crate::metrics::SESSION_WRITES
            .with_label_values(&["applied"])
            .inc();
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(client: u64, seq: u64, acked: u64, retry: bool, now: u64) -> SessionHeader {
        let mut h = SessionHeader::default();
        h.set_client_id(client);
        h.set_seq(seq);
        h.set_acked_below(acked);
        h.set_retry(retry);
        h.set_now_ms(now);
        h.set_sent_ms(now.max(1));
        h.set_ttl_ms(1000);
        h.set_max_sessions(2);
        h.set_max_bytes(1 << 20);
        h
    }

    fn cas(succeed: bool, previous: Option<&[u8]>) -> CmdResponse {
        CmdResponse {
            cas: vec![CasResult {
                succeed,
                previous: previous.map(|p| p.to_vec()),
            }],
            ..Default::default()
        }
    }

    fn answered(a: Admission) -> Option<CmdResponse> {
        match a {
            Admission::Apply => None,
            Admission::Answered(r) => Some(r),
        }
    }

    #[test]
    fn a_resent_write_gets_its_first_answer_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine::Engine::open(dir.path()).unwrap();
        let mut t = SessionTable::default();
        let mut wb = engine.write_batch();
        let h = header(7, 1, 1, false, 100);
        assert!(answered(t.admit(&h, 0, 3).unwrap()).is_none());
        t.record(&h, 0, &cas(true, Some(b"old")), 3, &mut wb);
        let again = answered(t.admit(&header(7, 1, 1, true, 150), 0, 3).unwrap()).unwrap();
        assert!(again.cas[0].succeed);
        assert_eq!(again.cas[0].previous.as_deref(), Some(&b"old"[..]));
        // What is on disk reads back the same.
        engine.write(wb, false).unwrap();
        let loaded = SessionTable::load(&engine.snapshot(), 3).unwrap();
        let decoded = SessionTable::decode(&loaded.encode().unwrap()).unwrap();
        assert_eq!(decoded.clients, loaded.clients);
        // A restarted or rebuilt replica has the same clock, so it forgets alike.
        assert_eq!(
            (loaded.clock_ms, decoded.clock_ms),
            (t.clock_ms, t.clock_ms)
        );
        assert!(answered(loaded.admit(&header(7, 1, 1, true, 150), 0, 3).unwrap()).is_some());
        // Write 2 says write 1 was answered: a resend of 1 is refused.
        let mut wb = engine.write_batch();
        t.record(
            &header(7, 2, 2, false, 200),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        let e = t.admit(&header(7, 1, 1, true, 210), 0, 3).unwrap_err();
        assert!(
            e.to_string().contains("acknowledged every write below 2"),
            "{e}"
        );
    }

    #[test]
    fn forgotten_sessions_refuse_resends_but_take_new_writes() {
        let mut t = SessionTable::default();
        let dir = tempfile::tempdir().unwrap();
        let engine = engine::Engine::open(dir.path()).unwrap();
        let mut wb = engine.write_batch();
        // A resend from an unknown client applies while nothing was ever forgotten.
        assert!(answered(t.admit(&header(1, 5, 5, true, 0), 0, 3).unwrap()).is_none());
        t.record(
            &header(1, 5, 5, false, 0),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        t.record(
            &header(2, 1, 1, false, 10),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        // A third session pushes out the least recently active (client 1).
        t.record(
            &header(3, 1, 1, false, 200),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        assert_eq!(t.len(), 2);
        assert!(matches!(
            t.admit(&header(1, 5, 5, true, 210), 0, 3),
            Err(Error::SessionExpired { client_id: 1, .. })
        ));
        // Unless its first try was sent within a twentieth of the TTL (50 ms) of the
        // region's clock (200): had it applied, the session could not be gone yet.
        let mut lately = header(1, 7, 7, true, 210);
        lately.set_first_sent_ms(160);
        assert!(answered(t.admit(&lately, 0, 3).unwrap()).is_none());
        lately.set_first_sent_ms(159);
        assert!(matches!(
            t.admit(&lately, 0, 3),
            Err(Error::SessionExpired { client_id: 1, .. })
        ));
        // Not a resend: a new write of a forgotten session applies.
        assert!(answered(t.admit(&header(1, 6, 6, false, 210), 0, 3).unwrap()).is_none());
        // Idle past the TTL (1 s of log time): forgotten at the next sweep.
        t.record(
            &header(3, 2, 2, false, 2000),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        assert_eq!(t.len(), 1, "client 2, idle since 10 ms, is gone at 2000 ms");
    }

    #[test]
    fn the_tables_size_is_bounded() {
        let mut t = SessionTable::default();
        let dir = tempfile::tempdir().unwrap();
        let engine = engine::Engine::open(dir.path()).unwrap();
        let mut wb = engine.write_batch();
        let bounded = |client, seq, now| {
            let mut h = header(client, seq, 1, false, now);
            h.max_sessions = 100;
            h.max_bytes = 64;
            h
        };
        let big = cas(true, Some(&[7u8; 40]));
        t.record(&bounded(1, 1, 0), 0, &big, 3, &mut wb);
        // Client 1 keeps more than the region's limit: its next new write is refused,
        // until it acknowledges the answer.
        t.record(&bounded(1, 2, 1), 0, &big, 3, &mut wb);
        let e = t.admit(&bounded(1, 3, 2), 0, 3).unwrap_err();
        assert!(
            e.to_string().contains("max-session-bytes-per-region"),
            "{e}"
        );
        let mut acks = bounded(1, 3, 2);
        acks.acked_below = 3;
        assert!(t.admit(&acks, 0, 3).is_ok());
        // Another session's write pushes client 1, the least recently active, out.
        t.record(&bounded(2, 1, 500), 0, &CmdResponse::default(), 3, &mut wb);
        assert_eq!(t.len(), 1);
        assert!(t.bytes <= 64, "{} bytes kept", t.bytes);
        let reloaded = SessionTable::decode(&t.encode().unwrap()).unwrap();
        assert_eq!(reloaded.bytes, t.bytes);
    }

    #[test]
    fn a_number_answered_for_other_requests_or_below_the_floor_is_not_settled() {
        let mut t = SessionTable::default();
        let dir = tempfile::tempdir().unwrap();
        let engine = engine::Engine::open(dir.path()).unwrap();
        let mut wb = engine.write_batch();
        t.record(
            &header(1, 4, 4, false, 0),
            11,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        // The same number with other requests: not this write.
        assert!(matches!(
            t.admit(&header(1, 4, 4, true, 5), 12, 3),
            Err(Error::SessionMismatch { seq: 4, .. })
        ));
        // Client 1 is pushed out (two other sessions, room for two), then comes back
        // with write 9: a resend of 6, which may have applied before, is not settled.
        t.record(
            &header(2, 1, 1, false, 200),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        t.record(
            &header(3, 1, 1, false, 300),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        assert_eq!(t.len(), 2);
        t.record(
            &header(1, 9, 6, false, 400),
            0,
            &CmdResponse::default(),
            3,
            &mut wb,
        );
        assert!(matches!(
            t.admit(&header(1, 6, 6, true, 410), 0, 3),
            Err(Error::SessionExpired { client_id: 1, .. })
        ));
    }

    #[test]
    fn bad_headers_are_refused_with_the_reason() {
        let ok = header(1, 10, 5, false, 0);
        check_header(&ok, 16).unwrap();
        let e = check_header(&header(1, 30, 5, false, 0), 16).unwrap_err();
        assert!(e.to_string().contains("raftstore.session-window"), "{e}");
        let e = check_header(&header(1, 0, 0, false, 0), 16).unwrap_err();
        assert!(e.to_string().contains("start at 1"), "{e}");
        let e = check_header(&header(1, 4, 5, false, 0), 16).unwrap_err();
        assert!(
            e.to_string().contains("cannot be acknowledged before"),
            "{e}"
        );
        check_header(&header(0, 0, 9, false, 0), 16).unwrap();
    }

    #[test]
    fn a_try_a_twentieth_of_the_ttl_from_the_clock_is_refused() {
        let sent = |ms: u64| {
            let mut h = header(1, 1, 1, false, 0);
            h.set_sent_ms(ms);
            h
        };
        check_sent(&sent(10_001), 40_000, 600_000).unwrap();
        check_sent(&sent(69_999), 40_000, 600_000).unwrap();
        let e = check_sent(&sent(10_000), 40_000, 600_000).unwrap_err();
        assert!(e.to_string().contains("raftstore.session-ttl / 20"), "{e}");
        assert!(e.to_string().contains("30000 ms before"), "{e}");
        let e = check_sent(&sent(70_000), 40_000, 600_000).unwrap_err();
        assert!(e.to_string().contains("ms after"), "{e}");
        let e = check_sent(&sent(0), 40_000, 600_000).unwrap_err();
        assert!(e.to_string().contains("session_sent_ms"), "{e}");
        let mut h = sent(40_000);
        h.set_first_sent_ms(40_001);
        let e = check_sent(&h, 40_000, 600_000).unwrap_err();
        assert!(e.to_string().contains("first try is dated after"), "{e}");
        // Outside a session nothing is dated.
        check_sent(&header(0, 0, 0, false, 0), 40_000, 600_000).unwrap();
    }

    /// A write batch on an engine in a temporary directory (kept while it lives).
    fn scratch() -> (tempfile::TempDir, WriteBatch) {
        let dir = tempfile::tempdir().unwrap();
        let wb = engine::Engine::open(dir.path()).unwrap().write_batch();
        (dir, wb)
    }

    /// First writes of `clients` at their stamps, in a region that keeps two sessions
    /// (TTL 1000 ms: past the count, a tenth idle, 100 ms, may be pushed out; a try may
    /// be a twentieth, 50 ms, off the clock).
    fn crowded(t: &mut SessionTable, wb: &mut WriteBatch, clients: &[(u64, u64)]) {
        for &(client, now) in clients {
            let h = header(client, 1, 1, false, now);
            assert!(answered(t.admit(&h, 0, 3).unwrap()).is_none());
            t.record(&h, 0, &CmdResponse::default(), 3, wb);
        }
    }

    #[test]
    fn a_slow_leaders_clock_cannot_let_a_resend_apply_twice() {
        let (_dir, mut wb) = scratch();
        let mut t = SessionTable::default();
        // Client 1's write applies at a leader stamp of 20 (sent at 40 by its fast
        // clock); a fast leader's stamp of 125 pushes the session out.
        let mut first = header(1, 1, 1, false, 20);
        first.set_sent_ms(40);
        first.set_first_sent_ms(40);
        t.admit(&first, 0, 3).unwrap();
        t.record(&first, 0, &CmdResponse::default(), 3, &mut wb);
        crowded(&mut t, &mut wb, &[(2, 30), (3, 125)]);
        assert!(!t.clients.contains_key(&1));
        // The resend comes through the slow leader again (stamp 80, sent at 100): by
        // that stamp its first try is 40 ms old, "lately"; by the log clock (125) it is
        // not, and the resend is refused as forgotten.
        let mut resend = header(1, 1, 1, true, 80);
        resend.set_sent_ms(100);
        resend.set_first_sent_ms(40);
        assert!(matches!(
            t.admit(&resend, 0, 3),
            Err(Error::SessionExpired { client_id: 1, .. })
        ));
    }

    #[test]
    fn a_first_try_held_up_until_its_session_is_forgotten_is_refused() {
        let (_dir, mut wb) = scratch();
        let mut t = SessionTable::default();
        // The first try (sent at 40) is held up; its resend applies at 40.
        let mut resend = header(1, 1, 1, true, 40);
        resend.set_sent_ms(60);
        resend.set_first_sent_ms(40);
        t.admit(&resend, 0, 3).unwrap();
        t.record(&resend, 0, &CmdResponse::default(), 3, &mut wb);
        // A fast leader pushes the session out at 145.
        crowded(&mut t, &mut wb, &[(2, 50), (3, 145)]);
        assert!(!t.clients.contains_key(&1));
        // The first try arrives at a slow leader (stamp 85, 45 ms after it was sent):
        // by the log clock it is 105 ms old, and refused.
        let mut late = header(1, 1, 1, false, 85);
        late.set_sent_ms(40);
        late.set_first_sent_ms(40);
        let e = t.admit(&late, 0, 3).unwrap_err();
        assert!(e.to_string().contains("raftstore.session-ttl / 20"), "{e}");
    }

    #[test]
    fn a_recent_resend_below_a_recreated_sessions_floor_applies() {
        let (_dir, mut wb) = scratch();
        let mut t = SessionTable::default();
        crowded(&mut t, &mut wb, &[(1, 0), (2, 10), (3, 200)]);
        assert!(!t.clients.contains_key(&1), "client 1 was pushed out");
        // Client 1 comes back with write 9: its session starts with floor 9.
        let h = header(1, 9, 8, false, 210);
        t.admit(&h, 0, 3).unwrap();
        t.record(&h, 0, &CmdResponse::default(), 3, &mut wb);
        // A resend of write 8 whose first try is older than the clock allows may have
        // applied before: expired. One sent lately cannot have: it applies.
        let mut eight = header(1, 8, 8, true, 220);
        eight.set_first_sent_ms(150);
        assert!(matches!(
            t.admit(&eight, 0, 3),
            Err(Error::SessionExpired { client_id: 1, .. })
        ));
        eight.set_first_sent_ms(200);
        assert!(answered(t.admit(&eight, 0, 3).unwrap()).is_none());
    }
}
