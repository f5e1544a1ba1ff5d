//! Checking list-append transaction histories for snapshot isolation, after the ideas of
//! Jepsen's Elle. Every key holds a list that transactions append unique values to, so a
//! read reveals the order of every append before it: the longest read of a key fixes that
//! key's version order, and from it follow the write-write, write-read and read-write
//! (anti-)dependencies between transactions. Snapshot isolation forbids aborted and
//! intermediate reads, lost updates and every dependency cycle with fewer than two
//! anti-dependency edges; cycles with two or more (write skew, G2) are allowed and only
//! reported. Reads that disagree on a key's order, values nobody appended and
//! transactions that contradict themselves are reported as well, because they make the
//! inferred order meaningless. Real-time edges give the "-realtime" cycle variants, which
//! strong SI forbids but plain SI allows.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque},
    fmt,
};

use serde::Serialize;

/// Anomalies listed per kind; further ones are only counted, so a broken run stays readable.
const MAX_PER_KIND: usize = 20;
/// Edge visits allowed to each budgeted cycle search (G-single, G2, real-time), so one
/// huge component in a broken history cannot stall a test.
const SEARCH_BUDGET: usize = 20_000_000;

// Edge kinds as bits, so that a search can follow any set of them.
const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;

/// One step of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MicroOp {
    /// Append `value` to the list at `key`.
    Append {
        /// The list appended to.
        key: u64,
        /// The value, unique among all appends to `key` in the history.
        value: u64,
    },
    /// Read the list at `key`.
    Read {
        /// The list read.
        key: u64,
        /// What the read returned: `None` if unknown, `Some(vec![])` if empty or absent.
        value: Option<Vec<u64>>,
    },
}

/// How a transaction ended, as far as its client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TxnOutcome {
    /// The commit was acknowledged.
    Committed,
    /// The transaction certainly took no effect.
    Aborted,
    /// The client never learned whether it committed.
    Unknown,
}

/// One transaction as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Txn {
    /// Names the transaction in reports; unique in the history.
    pub id: usize,
    /// The client that ran it.
    pub process: usize,
    /// Its steps, in order.
    pub ops: Vec<MicroOp>,
    /// How it ended.
    pub outcome: TxnOutcome,
    /// When the client began it (monotonic ns).
    pub start_ns: u64,
    /// When the client learned its outcome (monotonic ns); ignored unless committed,
    /// because an unknown transaction may still take effect later.
    pub end_ns: u64,
}

/// The kinds of anomaly the checker reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum AnomalyKind {
    /// A cycle of write-write dependencies.
    G0,
    /// A committed read saw an aborted transaction's append.
    G1a,
    /// A read ended at an append its writer followed with another to the same key.
    G1b,
    /// A cycle of write-write and write-read dependencies, at least one write-read.
    G1c,
    /// A cycle with exactly one anti-dependency (read skew).
    GSingle,
    /// A cycle with two or more anti-dependencies (write skew): allowed under SI.
    G2,
    /// Two committed transactions read the same version of a key and both appended to it.
    LostUpdate,
    /// Two reads of a key of which neither is a prefix of the other.
    IncompatibleOrder,
    /// A read held a value nobody appended.
    Garbage,
    /// A read held the same value twice.
    DuplicateElements,
    /// A read disagreed with its own transaction's earlier appends or reads of the key.
    Internal,
    /// A cycle of write-write and real-time edges.
    G0Realtime,
    /// A G1c-like cycle that needs real-time edges.
    G1cRealtime,
    /// A G-single-like cycle that needs real-time edges (e.g. a stale read).
    GSingleRealtime,
}

impl AnomalyKind {
    /// Whether snapshot isolation forbids this anomaly.
    pub fn violates_si(self) -> bool {
        use AnomalyKind::*;
        !matches!(self, G2 | G0Realtime | G1cRealtime | GSingleRealtime)
    }

    /// Whether strong SI (SI whose snapshots respect real-time order) forbids it.
    pub fn violates_strong_si(self) -> bool {
        use AnomalyKind::*;
        self.violates_si() || matches!(self, G0Realtime | G1cRealtime | GSingleRealtime)
    }

    fn name(self) -> &'static str {
        use AnomalyKind::*;
        match self {
            G0 => "G0 (write cycle)",
            G1a => "G1a (aborted read)",
            G1b => "G1b (intermediate read)",
            G1c => "G1c (circular information flow)",
            GSingle => "G-single (read skew)",
            G2 => "G2 (write skew; allowed under SI)",
            LostUpdate => "lost update",
            IncompatibleOrder => "incompatible order",
            Garbage => "garbage read",
            DuplicateElements => "duplicate elements",
            Internal => "internal inconsistency",
            G0Realtime => "G0-realtime (strong SI only)",
            G1cRealtime => "G1c-realtime (strong SI only)",
            GSingleRealtime => "G-single-realtime (strong SI only)",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why one transaction must precede another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Dependency {
    /// `from` appended `prev` to `key`, and `to` appended `next`, the value after it.
    WriteWrite {
        /// The key both appended to.
        key: u64,
        /// The earlier transaction's value.
        prev: u64,
        /// The later transaction's value.
        next: u64,
    },
    /// `to` read `key` as a list ending with `value`, which `from` appended.
    WriteRead {
        /// The key read.
        key: u64,
        /// The last value of the read.
        value: u64,
    },
    /// `from` read `key` ending with `last`, and `to` appended `next`, the value after it.
    ReadWrite {
        /// The key read.
        key: u64,
        /// The last value the reader saw (`None`: the list was empty).
        last: Option<u64>,
        /// The value the reader missed.
        next: u64,
    },
    /// `from` completed before `to` began.
    Realtime,
}

impl Dependency {
    fn bit(&self) -> u8 {
        match self {
            Dependency::WriteWrite { .. } => WW,
            Dependency::WriteRead { .. } => WR,
            Dependency::ReadWrite { .. } => RW,
            Dependency::Realtime => RT,
        }
    }

    fn key(&self) -> Option<u64> {
        match *self {
            Dependency::WriteWrite { key, .. }
            | Dependency::WriteRead { key, .. }
            | Dependency::ReadWrite { key, .. } => Some(key),
            Dependency::Realtime => None,
        }
    }

    fn label(&self) -> String {
        match self.key() {
            Some(key) => format!("{}[key {key}]", bit_name(self.bit())),
            None => bit_name(self.bit()).to_string(),
        }
    }
}

fn bit_name(bit: u8) -> &'static str {
    match bit {
        WW => "ww",
        WR => "wr",
        RW => "rw",
        _ => "rt",
    }
}

/// One edge of a dependency cycle, between transaction ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The transaction that must come first.
    pub from: usize,
    /// The transaction that must come after it.
    pub to: usize,
    /// Why.
    pub dep: Dependency,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (from, to) = (self.from, self.to);
        match self.dep {
            Dependency::WriteWrite { key, prev, next } => write!(
                f,
                "T{from} appended {prev} to key {key}, then T{to} appended {next}"
            ),
            Dependency::WriteRead { key, value } => write!(
                f,
                "T{to} read key {key} ending at {value}, which T{from} appended"
            ),
            Dependency::ReadWrite { key, last, next } => write!(
                f,
                "T{from} read key {key} {}, missing {next} appended by T{to}",
                version_words(last)
            ),
            Dependency::Realtime => write!(f, "T{from} completed before T{to} began"),
        }
    }
}

/// One anomaly, with the transactions and keys involved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// What kind it is.
    pub kind: AnomalyKind,
    /// Ids of the transactions involved (for a cycle, in cycle order).
    pub txns: Vec<usize>,
    /// The keys involved.
    pub keys: Vec<u64>,
    /// For a cycle, its edges; empty otherwise.
    pub cycle: Vec<Step>,
    /// What was observed, in words.
    pub detail: String,
}

impl Anomaly {
    fn simple(kind: AnomalyKind, txns: Vec<usize>, key: u64, detail: String) -> Self {
        Anomaly {
            kind,
            txns,
            keys: vec![key],
            cycle: Vec::new(),
            detail,
        }
    }

    fn from_cycle(cycle: Vec<Step>) -> Self {
        let mut keys: Vec<u64> = cycle.iter().filter_map(|s| s.dep.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut chain = format!("T{}", cycle[0].from);
        for step in &cycle {
            chain.push_str(&format!(" -{}-> T{}", step.dep.label(), step.to));
        }
        let steps: Vec<String> = cycle.iter().map(Step::to_string).collect();
        Anomaly {
            kind: classify(&cycle),
            txns: cycle.iter().map(|s| s.from).collect(),
            keys,
            detail: format!("{chain}: {}", steps.join("; ")),
            cycle,
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The anomalies, at most 20 of each kind.
    pub anomalies: Vec<Anomaly>,
    /// Transactions analysed: the committed ones and the unknown ones whose appends were
    /// observed.
    pub txns_checked: usize,
    /// Anomalies found beyond the per-kind limit and left out (cycle searches stop at the
    /// limit, so cycles are undercounted).
    pub omitted: usize,
    /// Kinds whose cycle search ran out of budget, so some of them may have gone unseen.
    pub truncated_searches: Vec<AnomalyKind>,
}

impl Report {
    /// Whether the history is snapshot isolated, as far as the checker could tell.
    pub fn is_valid_si(&self) -> bool {
        self.holds(AnomalyKind::violates_si)
    }

    /// Whether the history is strong (real-time) SI, as far as the checker could tell.
    pub fn is_valid_strong_si(&self) -> bool {
        self.holds(AnomalyKind::violates_strong_si)
    }

    /// How many anomalies of `kind` are listed.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }

    fn holds(&self, forbidden: fn(AnomalyKind) -> bool) -> bool {
        let kinds = self.anomalies.iter().map(|a| a.kind);
        !kinds
            .chain(self.truncated_searches.iter().copied())
            .any(forbidden)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_valid_si() {
            "snapshot isolation holds"
        } else {
            "NOT snapshot isolation"
        };
        let n = self.anomalies.len();
        let noun = if n == 1 { "anomaly" } else { "anomalies" };
        writeln!(
            f,
            "{n} {noun} in {} transactions: {verdict}",
            self.txns_checked
        )?;
        for anomaly in &self.anomalies {
            writeln!(f, "  - {anomaly}")?;
        }
        if self.omitted > 0 {
            writeln!(
                f,
                "  ({} more not listed: at most {MAX_PER_KIND} per kind)",
                self.omitted
            )?;
        }
        for kind in &self.truncated_searches {
            writeln!(
                f,
                "  (the search for {kind} ran out of budget; some may be unseen)"
            )?;
        }
        Ok(())
    }
}

/// Checks a list-append history for snapshot isolation and related anomalies.
pub fn check(history: &[Txn]) -> Report {
    let ctx = Ctx::new(history);
    let mut found = Findings::default();
    let orders = version_orders(&ctx);
    check_reads(&ctx, &orders, &mut found);
    check_internal(&ctx, &mut found);
    check_lost_updates(&ctx, &mut found);
    let mut graph = Graph::new(history.len());
    add_write_write(&orders, &mut graph);
    add_read_edges(&ctx, &orders, &mut graph, &mut found);
    add_realtime(&ctx, &mut graph);
    graph.finish();
    let mut cycles = Cycles {
        ctx: &ctx,
        graph: &graph,
        found: &mut found,
        seen: HashSet::new(),
    };
    cycles.search_all();
    Report {
        anomalies: found.anomalies,
        txns_checked: ctx.included.iter().filter(|&&i| i).count(),
        omitted: found.omitted,
        truncated_searches: found.truncated,
    }
}

/// Anomalies gathered so far, with the per-kind limit applied.
#[derive(Default)]
struct Findings {
    anomalies: Vec<Anomaly>,
    per_kind: HashMap<AnomalyKind, usize>,
    omitted: usize,
    truncated: Vec<AnomalyKind>,
}

impl Findings {
    fn full(&self, kind: AnomalyKind) -> bool {
        self.per_kind.get(&kind).copied().unwrap_or(0) >= MAX_PER_KIND
    }

    fn add(&mut self, anomaly: Anomaly) {
        if self.full(anomaly.kind) {
            self.omitted += 1;
        } else {
            *self.per_kind.entry(anomaly.kind).or_default() += 1;
            self.anomalies.push(anomaly);
        }
    }
}

/// Who appended a value.
struct Writer {
    /// Index of the writer in the history.
    txn: usize,
    /// Whether no later append of the writer went to the same key.
    last_in_txn: bool,
}

/// The history with its appends indexed and the transactions to analyse marked.
struct Ctx<'a> {
    history: &'a [Txn],
    writers: HashMap<(u64, u64), Writer>,
    /// By history index: committed, or unknown but observed by an included read.
    included: Vec<bool>,
}

impl<'a> Ctx<'a> {
    fn new(history: &'a [Txn]) -> Self {
        let writers = index_writers(history);
        let included = included_txns(history, &writers);
        Ctx {
            history,
            writers,
            included,
        }
    }

    fn id(&self, i: usize) -> usize {
        self.history[i].id
    }

    fn members(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.history.len()).filter(|&i| self.included[i])
    }

    fn reads(&self, i: usize) -> impl Iterator<Item = (u64, &'a [u64])> + 'a {
        let history: &'a [Txn] = self.history;
        known_reads(&history[i])
    }

    fn writer(&self, key: u64, value: u64) -> Option<&Writer> {
        self.writers.get(&(key, value))
    }

    fn included_writer(&self, key: u64, value: u64) -> Option<usize> {
        self.writer(key, value)
            .map(|w| w.txn)
            .filter(|&t| self.included[t])
    }

    /// The last value of a read that the reader did not append itself: its own appends
    /// are not part of the snapshot it read from.
    fn external_last(&self, reader: usize, key: u64, list: &[u64]) -> Option<u64> {
        list.iter()
            .rev()
            .copied()
            .find(|&v| self.writer(key, v).is_none_or(|w| w.txn != reader))
    }
}

fn known_reads(txn: &Txn) -> impl Iterator<Item = (u64, &[u64])> + '_ {
    txn.ops.iter().filter_map(|op| match op {
        MicroOp::Read {
            key,
            value: Some(list),
        } => Some((*key, list.as_slice())),
        _ => None,
    })
}

fn appends(txn: &Txn) -> impl DoubleEndedIterator<Item = (u64, u64)> + '_ {
    txn.ops.iter().filter_map(|op| match *op {
        MicroOp::Append { key, value } => Some((key, value)),
        MicroOp::Read { .. } => None,
    })
}

fn index_writers(history: &[Txn]) -> HashMap<(u64, u64), Writer> {
    let mut writers = HashMap::new();
    for (txn, t) in history.iter().enumerate() {
        // Walking backwards, the first append seen per key is the transaction's last.
        let mut later = HashSet::new();
        for (key, value) in appends(t).rev() {
            let last_in_txn = later.insert(key);
            writers
                .entry((key, value))
                .or_insert(Writer { txn, last_in_txn });
        }
    }
    writers
}

fn included_txns(history: &[Txn], writers: &HashMap<(u64, u64), Writer>) -> Vec<bool> {
    let mut included: Vec<bool> = history
        .iter()
        .map(|t| t.outcome == TxnOutcome::Committed)
        .collect();
    let mut queue = Vec::new();
    let longest = longest_reads(history, |i| included[i]);
    for (&key, &(_, list)) in &longest {
        promote_observed(history, writers, key, list, &mut included, &mut queue);
    }
    // A prefix of the longest read holds nothing it does not, so only the rest are scanned.
    for i in (0..history.len()).filter(|&i| history[i].outcome == TxnOutcome::Committed) {
        for (key, list) in known_reads(&history[i]) {
            if !longest.get(&key).is_some_and(|l| l.1.starts_with(list)) {
                promote_observed(history, writers, key, list, &mut included, &mut queue);
            }
        }
    }
    // A promoted transaction's own reads may reveal further unknown ones.
    while let Some(i) = queue.pop() {
        for (key, list) in known_reads(&history[i]) {
            promote_observed(history, writers, key, list, &mut included, &mut queue);
        }
    }
    included
}

fn promote_observed(
    history: &[Txn],
    writers: &HashMap<(u64, u64), Writer>,
    key: u64,
    list: &[u64],
    included: &mut [bool],
    queue: &mut Vec<usize>,
) {
    for &v in list {
        let Some(w) = writers.get(&(key, v)) else {
            continue;
        };
        if !included[w.txn] && history[w.txn].outcome == TxnOutcome::Unknown {
            included[w.txn] = true;
            queue.push(w.txn);
        }
    }
}

/// The longest read of each key among the transactions `member` accepts, with its reader;
/// the first of equally long ones.
fn longest_reads(
    history: &[Txn],
    member: impl Fn(usize) -> bool,
) -> BTreeMap<u64, (usize, &[u64])> {
    let mut longest: BTreeMap<u64, (usize, &[u64])> = BTreeMap::new();
    for i in (0..history.len()).filter(|&i| member(i)) {
        for (key, list) in known_reads(&history[i]) {
            let best = longest.entry(key).or_insert((i, list));
            if list.len() > best.1.len() {
                *best = (i, list);
            }
        }
    }
    longest
}

fn check_reads(ctx: &Ctx, orders: &BTreeMap<u64, KeyOrder>, found: &mut Findings) {
    for r in ctx.members() {
        for (key, list) in ctx.reads(r) {
            let flaws = match orders.get(&key) {
                Some(order) if order.longest.starts_with(list) => order.flaws.within(list.len()),
                _ => Flaws::of(ctx, key, list),
            };
            report_flaws(ctx, r, key, list, flaws, found);
            check_intermediate(ctx, r, key, list, found);
        }
    }
}

/// Where a read first goes wrong: the index of its first repeated value, first value
/// nobody appended and first value an aborted transaction appended.
#[derive(Clone, Copy)]
struct Flaws {
    duplicate: Option<usize>,
    garbage: Option<usize>,
    aborted: Option<usize>,
}

impl Flaws {
    fn of(ctx: &Ctx, key: u64, list: &[u64]) -> Self {
        let mut seen = HashSet::with_capacity(list.len());
        let aborted = |v: u64| {
            ctx.writer(key, v)
                .is_some_and(|w| ctx.history[w.txn].outcome == TxnOutcome::Aborted)
        };
        Flaws {
            duplicate: list.iter().position(|&v| !seen.insert(v)),
            garbage: list.iter().position(|&v| ctx.writer(key, v).is_none()),
            aborted: list.iter().position(|&v| aborted(v)),
        }
    }

    /// The flaws of the first `len` values: those of a prefix, without scanning it again.
    fn within(self, len: usize) -> Self {
        Flaws {
            duplicate: self.duplicate.filter(|&i| i < len),
            garbage: self.garbage.filter(|&i| i < len),
            aborted: self.aborted.filter(|&i| i < len),
        }
    }
}

fn report_flaws(ctx: &Ctx, r: usize, key: u64, list: &[u64], flaws: Flaws, found: &mut Findings) {
    let reader = format!("T{} read key {key} as {}", ctx.id(r), show(list));
    if let Some(i) = flaws.duplicate {
        let detail = format!("{reader} with {} more than once", list[i]);
        let anomaly = Anomaly::simple(AnomalyKind::DuplicateElements, vec![ctx.id(r)], key, detail);
        found.add(anomaly);
    }
    if let Some(i) = flaws.garbage {
        let detail = format!(
            "{reader}, which holds {} that no transaction appended",
            list[i]
        );
        found.add(Anomaly::simple(
            AnomalyKind::Garbage,
            vec![ctx.id(r)],
            key,
            detail,
        ));
    }
    let writer = flaws
        .aborted
        .and_then(|i| Some((list[i], ctx.writer(key, list[i])?.txn)));
    if let Some((v, w)) = writer {
        let detail = format!(
            "{reader}, which holds {v} appended by aborted T{}",
            ctx.id(w)
        );
        let txns = vec![ctx.id(r), ctx.id(w)];
        found.add(Anomaly::simple(AnomalyKind::G1a, txns, key, detail));
    }
}

fn check_intermediate(ctx: &Ctx, r: usize, key: u64, list: &[u64], found: &mut Findings) {
    let Some(&last) = list.last() else {
        return;
    };
    let Some(w) = ctx.writer(key, last) else {
        return;
    };
    if w.txn != r && !w.last_in_txn {
        let detail = format!(
            "T{} read key {key} as {}, but T{} appended more to the key after {last}",
            ctx.id(r),
            show(list),
            ctx.id(w.txn)
        );
        found.add(Anomaly::simple(
            AnomalyKind::G1b,
            vec![ctx.id(r), ctx.id(w.txn)],
            key,
            detail,
        ));
    }
}

/// What a transaction's own earlier steps say its next read of a key must return.
enum Expect<'a> {
    /// An earlier read fixed the list; these own appends followed it.
    Exactly(&'a [u64], Vec<u64>),
    /// No read yet: whatever the snapshot held, then these own appends.
    EndsWith(Vec<u64>),
}

impl Expect<'_> {
    fn push(&mut self, value: u64) {
        match self {
            Expect::Exactly(_, own) | Expect::EndsWith(own) => own.push(value),
        }
    }

    fn admits(&self, list: &[u64]) -> bool {
        match self {
            Expect::Exactly(base, own) => {
                list.len() == base.len() + own.len()
                    && list.starts_with(base)
                    && list.ends_with(own)
            }
            Expect::EndsWith(own) => list.ends_with(own),
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Exactly(base, own) => {
                format!("exactly {}", show(&[*base, own.as_slice()].concat()))
            }
            Expect::EndsWith(own) => format!("a list ending with its own appends {}", show(own)),
        }
    }
}

fn check_internal(ctx: &Ctx, found: &mut Findings) {
    for i in ctx.members() {
        let mut expect: HashMap<u64, Expect> = HashMap::new();
        for op in &ctx.history[i].ops {
            match op {
                MicroOp::Append { key, value } => expect
                    .entry(*key)
                    .or_insert_with(|| Expect::EndsWith(Vec::new()))
                    .push(*value),
                MicroOp::Read {
                    key,
                    value: Some(list),
                } => {
                    if let Some(e) = expect.get(key).filter(|e| !e.admits(list)) {
                        found.add(internal(ctx, i, *key, list, e));
                    }
                    // Judge later reads against this one, so one slip is reported once.
                    expect.insert(*key, Expect::Exactly(list, Vec::new()));
                }
                MicroOp::Read { value: None, .. } => {}
            }
        }
    }
}

fn internal(ctx: &Ctx, i: usize, key: u64, list: &[u64], expected: &Expect) -> Anomaly {
    let detail = format!(
        "T{} read key {key} as {} but its own earlier steps imply {}",
        ctx.id(i),
        show(list),
        expected.describe()
    );
    Anomaly::simple(AnomalyKind::Internal, vec![ctx.id(i)], key, detail)
}

fn check_lost_updates(ctx: &Ctx, found: &mut Findings) {
    let mut groups: BTreeMap<(u64, Option<u64>), Vec<usize>> = BTreeMap::new();
    for i in ctx.members() {
        let appended: HashSet<u64> = appends(&ctx.history[i]).map(|(k, _)| k).collect();
        let mut first_read = HashSet::new();
        for (key, list) in ctx.reads(i) {
            if appended.contains(&key) && first_read.insert(key) {
                let version = ctx.external_last(i, key, list);
                groups.entry((key, version)).or_default().push(i);
            }
        }
    }
    for ((key, version), txns) in groups.into_iter().filter(|(_, t)| t.len() > 1) {
        let ids: Vec<usize> = txns.iter().map(|&i| ctx.id(i)).collect();
        let detail = format!(
            "{} each read key {key} {} and appended to it; under SI only one may commit",
            names(&ids),
            version_words(version)
        );
        found.add(Anomaly::simple(AnomalyKind::LostUpdate, ids, key, detail));
    }
}

/// A key's version order, as the longest read of it shows.
struct KeyOrder<'a> {
    key: u64,
    longest: &'a [u64],
    /// History index of the transaction that read `longest`.
    reader: usize,
    /// The values of `longest` appended by analysed transactions, with their writers.
    values: Vec<(u64, usize)>,
    /// Position of each value in `values`.
    pos: HashMap<u64, usize>,
    /// Where `longest` first goes wrong, which tells the same for every prefix of it.
    flaws: Flaws,
}

impl<'a> KeyOrder<'a> {
    fn new(ctx: &Ctx, key: u64, reader: usize, longest: &'a [u64]) -> Self {
        let mut values = Vec::new();
        let mut pos = HashMap::new();
        for &v in longest {
            let Some(w) = ctx.included_writer(key, v) else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(e) = pos.entry(v) {
                e.insert(values.len());
                values.push((v, w));
            }
        }
        KeyOrder {
            key,
            longest,
            reader,
            values,
            pos,
            flaws: Flaws::of(ctx, key, longest),
        }
    }

    /// The value after `last` (`None`: the first), with its writer.
    fn next_after(&self, last: Option<u64>) -> Option<(u64, usize)> {
        let at = match last {
            None => 0,
            Some(v) => self.pos.get(&v)? + 1,
        };
        self.values.get(at).copied()
    }
}

fn version_orders<'a>(ctx: &Ctx<'a>) -> BTreeMap<u64, KeyOrder<'a>> {
    longest_reads(ctx.history, |i| ctx.included[i])
        .into_iter()
        .map(|(key, (reader, list))| (key, KeyOrder::new(ctx, key, reader, list)))
        .collect()
}

/// The dependency graph over history indexes; only analysed transactions have edges.
struct Graph {
    adj: Vec<Vec<(usize, Dependency)>>,
}

impl Graph {
    fn new(n: usize) -> Self {
        Graph {
            adj: vec![Vec::new(); n],
        }
    }

    fn add(&mut self, from: usize, to: usize, dep: Dependency) {
        if from != to {
            self.adj[from].push((to, dep));
        }
    }

    /// One edge per target and kind is enough for cycles, and keeps searches cheap.
    fn finish(&mut self) {
        for edges in &mut self.adj {
            edges.sort_unstable_by_key(|&(to, dep)| (to, dep.bit(), dep));
            edges.dedup_by_key(|e| (e.0, e.1.bit()));
        }
    }

    fn len(&self) -> usize {
        self.adj.len()
    }
}

fn add_write_write(orders: &BTreeMap<u64, KeyOrder>, graph: &mut Graph) {
    for order in orders.values() {
        for pair in order.values.windows(2) {
            let ((prev, a), (next, b)) = (pair[0], pair[1]);
            let key = order.key;
            graph.add(a, b, Dependency::WriteWrite { key, prev, next });
        }
    }
}

fn add_read_edges(
    ctx: &Ctx,
    orders: &BTreeMap<u64, KeyOrder>,
    graph: &mut Graph,
    found: &mut Findings,
) {
    for r in ctx.members() {
        for (key, list) in ctx.reads(r) {
            let Some(order) = orders.get(&key) else {
                continue;
            };
            if !order.longest.starts_with(list) {
                // The order is ambiguous here, so edges from this read would be guesses.
                found.add(incompatible(ctx, order, r, list));
                continue;
            }
            let last = ctx.external_last(r, key, list);
            if let Some(value) = last {
                if let Some(w) = ctx.included_writer(key, value) {
                    graph.add(w, r, Dependency::WriteRead { key, value });
                }
            }
            if let Some((next, w)) = order.next_after(last) {
                graph.add(r, w, Dependency::ReadWrite { key, last, next });
            }
        }
    }
}

fn incompatible(ctx: &Ctx, order: &KeyOrder, r: usize, list: &[u64]) -> Anomaly {
    let longest = order.longest;
    let at = list
        .iter()
        .zip(longest)
        .position(|(a, b)| a != b)
        .unwrap_or(list.len().min(longest.len()));
    let value_at = |l: &[u64]| l.get(at).map_or("nothing".to_string(), u64::to_string);
    let detail = format!(
        "T{} read key {} as {} but T{} read {}; they diverge at index {at}: {} vs {}",
        ctx.id(r),
        order.key,
        show(list),
        ctx.id(order.reader),
        show(longest),
        value_at(list),
        value_at(longest)
    );
    let txns = vec![ctx.id(r), ctx.id(order.reader)];
    Anomaly::simple(AnomalyKind::IncompatibleOrder, txns, order.key, detail)
}

/// Real-time edges, transitively reduced: each transaction gets edges only from those
/// that completed before it began and that no other such transaction followed, which
/// keeps the edge count near transactions times concurrency rather than quadratic.
fn add_realtime(ctx: &Ctx, graph: &mut Graph) {
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for i in ctx.members() {
        let t = &ctx.history[i];
        events.push((t.start_ns, false, i));
        if t.outcome == TxnOutcome::Committed {
            events.push((t.end_ns, true, i));
        }
    }
    // Starts sort before ends at the same instant: only a strictly earlier end orders.
    events.sort_unstable();
    let mut frontier: Vec<usize> = Vec::new();
    for (_, is_end, i) in events {
        if is_end {
            let start = ctx.history[i].start_ns;
            frontier.retain(|&f| ctx.history[f].end_ns >= start);
            frontier.push(i);
        } else {
            for &f in &frontier {
                graph.add(f, i, Dependency::Realtime);
            }
        }
    }
}

/// Strongly connected components over the edges in `mask`.
struct Components {
    /// Each node's component number.
    of: Vec<usize>,
    /// How many components there are (single nodes included).
    count: usize,
}

impl Components {
    /// The members of each component of two or more nodes, in node order.
    fn groups(&self) -> Vec<Vec<usize>> {
        let mut members = vec![Vec::new(); self.count];
        for (v, &c) in self.of.iter().enumerate() {
            members[c].push(v);
        }
        members.retain(|m| m.len() > 1);
        members
    }
}

fn components(graph: &Graph, mask: u8) -> Components {
    let n = graph.len();
    let mut t = Tarjan {
        index: vec![usize::MAX; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        of: vec![usize::MAX; n],
        count: 0,
    };
    for root in 0..n {
        if t.index[root] == usize::MAX {
            t.run(graph, mask, root);
        }
    }
    Components {
        of: t.of,
        count: t.count,
    }
}

struct Tarjan {
    index: Vec<usize>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    of: Vec<usize>,
    count: usize,
}

impl Tarjan {
    fn visit(&mut self, v: usize) {
        self.index[v] = self.next;
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
    }

    /// Iterative, because a long dependency chain would overflow a test thread's stack.
    fn run(&mut self, graph: &Graph, mask: u8, root: usize) {
        let mut calls = vec![(root, 0usize)];
        self.visit(root);
        while let Some(top) = calls.last_mut() {
            let (v, e) = *top;
            if let Some(&(w, dep)) = graph.adj[v].get(e) {
                top.1 += 1;
                if dep.bit() & mask == 0 {
                    continue;
                }
                if self.index[w] == usize::MAX {
                    self.visit(w);
                    calls.push((w, 0));
                } else if self.on_stack[w] {
                    self.low[v] = self.low[v].min(self.index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                self.low[parent] = self.low[parent].min(self.low[v]);
            }
            if self.low[v] == self.index[v] {
                self.pop_component(v);
            }
        }
    }

    fn pop_component(&mut self, root: usize) {
        loop {
            let w = self
                .stack
                .pop()
                .expect("a component's root is on the stack");
            self.on_stack[w] = false;
            self.of[w] = self.count;
            if w == root {
                break;
            }
        }
        self.count += 1;
    }
}

/// A rank per node such that no path over the edges in `mask` leads to a lower rank
/// (a topological order of the components), following history order where the edges
/// allow. A search for a path to `a` can then skip every node ranked above `a`: in a
/// valid history that leaves only the transactions running around the same time.
fn topological_ranks(graph: &Graph, mask: u8) -> Vec<usize> {
    let comps = components(graph, mask);
    let mut members = vec![Vec::new(); comps.count];
    for (v, &c) in comps.of.iter().enumerate() {
        members[c].push(v);
    }
    let of = &comps.of;
    let crossing = |u: usize| {
        graph.adj[u]
            .iter()
            .filter(move |(v, dep)| dep.bit() & mask != 0 && of[*v] != of[u])
            .map(|&(v, _)| of[v])
    };
    let mut indegree = vec![0usize; comps.count];
    for c in (0..graph.len()).flat_map(crossing) {
        indegree[c] += 1;
    }
    // Kahn's algorithm, always taking the ready component with the earliest member.
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = (0..comps.count)
        .filter(|&c| indegree[c] == 0)
        .map(|c| Reverse((members[c][0], c)))
        .collect();
    let mut rank = vec![0; comps.count];
    let mut next = 0;
    while let Some(Reverse((_, c))) = ready.pop() {
        rank[c] = next;
        next += 1;
        for d in members[c].iter().flat_map(|&u| crossing(u)) {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push(Reverse((members[d][0], d)));
            }
        }
    }
    comps.of.iter().map(|&c| rank[c]).collect()
}

/// Where a search may go: nodes of the start's component, ranked no higher than the goal.
#[derive(Clone, Copy)]
struct Scope<'s> {
    component: &'s [usize],
    rank: Option<&'s [usize]>,
}

impl Scope<'_> {
    fn admits(&self, from: usize, to: usize, w: usize) -> bool {
        self.component[w] == self.component[from] && self.rank.is_none_or(|r| r[w] <= r[to])
    }
}

/// Breadth-first search for shortest paths, reusing its buffers between searches.
struct Bfs {
    seen: Vec<u32>,
    via: Vec<(usize, usize)>,
    round: u32,
    queue: VecDeque<usize>,
    budget: usize,
}

impl Bfs {
    fn new(n: usize, budget: usize) -> Self {
        Bfs {
            seen: vec![0; n],
            via: vec![(0, 0); n],
            round: 0,
            queue: VecDeque::new(),
            budget,
        }
    }

    fn exhausted(&self) -> bool {
        self.budget == 0
    }

    /// The hops (node, edge index) of a shortest path from `from` to `to` over edges in
    /// `mask` inside `scope`; `None` if there is none or the budget ran out.
    fn path(
        &mut self,
        graph: &Graph,
        scope: Scope,
        from: usize,
        to: usize,
        mask: u8,
    ) -> Option<Vec<(usize, usize)>> {
        if !scope.admits(from, to, from) {
            return None;
        }
        self.round += 1;
        self.queue.clear();
        self.seen[from] = self.round;
        self.queue.push_back(from);
        while let Some(u) = self.queue.pop_front() {
            for (e, &(w, dep)) in graph.adj[u].iter().enumerate() {
                if self.budget == 0 {
                    return None;
                }
                self.budget -= 1;
                let usable = dep.bit() & mask != 0 && scope.admits(from, to, w);
                if !usable || self.seen[w] == self.round {
                    continue;
                }
                self.seen[w] = self.round;
                self.via[w] = (u, e);
                if w == to {
                    return Some(self.trace(from, to));
                }
                self.queue.push_back(w);
            }
        }
        None
    }

    fn trace(&self, from: usize, to: usize) -> Vec<(usize, usize)> {
        let mut hops = Vec::new();
        let mut at = to;
        while at != from {
            let (u, e) = self.via[at];
            hops.push((u, e));
            at = u;
        }
        hops.reverse();
        hops
    }
}

/// Names a cycle by its edges. A cycle with real-time edges and several anti-dependencies
/// is plain G2: strong SI allows it too.
fn classify(cycle: &[Step]) -> AnomalyKind {
    use AnomalyKind::*;
    let count = |bit: u8| cycle.iter().filter(|s| s.dep.bit() == bit).count();
    let (wr, rw, realtime) = (count(WR), count(RW), count(RT) > 0);
    match (realtime, rw, wr) {
        (_, 2.., _) => G2,
        (false, 0, 0) => G0,
        (false, 0, _) => G1c,
        (false, _, _) => GSingle,
        (true, 0, 0) => G0Realtime,
        (true, 0, _) => G1cRealtime,
        (true, _, _) => GSingleRealtime,
    }
}

/// The cycle searches, which share the reports and the set of cycles already reported.
struct Cycles<'c, 'a> {
    ctx: &'c Ctx<'a>,
    graph: &'c Graph,
    found: &'c mut Findings,
    /// Reported cycles as (node, edge kind) sequences, rotated to start at their smallest
    /// node: the same nodes joined by other kinds of edge are another anomaly (a G2 over
    /// A and B must not hide a G-single over them).
    seen: HashSet<Vec<(usize, u8)>>,
}

impl Cycles<'_, '_> {
    fn search_all(&mut self) {
        self.one_per_component(WW, WW);
        self.one_per_component(WW | WR, WR);
        self.anti_dependency_cycles();
        self.realtime_cycles();
    }

    /// G0 and G1c: a component of the ww (or ww+wr) subgraph has a cycle through each of
    /// its inner edges, so one search per component always succeeds, in linear time.
    fn one_per_component(&mut self, mask: u8, start: u8) {
        let comps = components(self.graph, mask);
        let scope = Scope {
            component: &comps.of,
            rank: None,
        };
        let mut bfs = Bfs::new(self.graph.len(), usize::MAX);
        for group in comps.groups() {
            let Some((a, e)) = self.inner_edge(&group, &comps.of, start) else {
                continue;
            };
            let b = self.graph.adj[a][e].0;
            if let Some(hops) = bfs.path(self.graph, scope, b, a, mask) {
                self.report((a, e), hops);
            }
        }
    }

    fn inner_edge(&self, group: &[usize], of: &[usize], kind: u8) -> Option<(usize, usize)> {
        group.iter().find_map(|&a| {
            let edges = &self.graph.adj[a];
            let e = edges
                .iter()
                .position(|&(b, dep)| dep.bit() == kind && of[b] == of[a])?;
            Some((a, e))
        })
    }

    /// G-single, else G2, through each anti-dependency inside a component. Most searches
    /// for a ww+wr path back fail in a valid history, so they are pruned by rank; the G2
    /// searches always succeed but may cross a whole component, so they stop at the limit.
    fn anti_dependency_cycles(&mut self) {
        let comps = components(self.graph, WW | WR | RW);
        let rank = topological_ranks(self.graph, WW | WR);
        let pruned = Scope {
            component: &comps.of,
            rank: Some(&rank),
        };
        let whole = Scope {
            rank: None,
            ..pruned
        };
        let mut single = Bfs::new(self.graph.len(), SEARCH_BUDGET);
        let mut skew = Bfs::new(self.graph.len(), SEARCH_BUDGET);
        for (a, e) in self.inner_edges(&comps, RW) {
            let singles_done = self.found.full(AnomalyKind::GSingle);
            let skews_done = self.found.full(AnomalyKind::G2) || skew.exhausted();
            if singles_done && skews_done {
                break;
            }
            let b = self.graph.adj[a][e].0;
            let mut hops = None;
            if !singles_done {
                hops = single.path(self.graph, pruned, b, a, WW | WR);
                if single.exhausted() {
                    self.found.truncated.push(AnomalyKind::GSingle);
                    return;
                }
            }
            if hops.is_none() && !skews_done {
                hops = skew.path(self.graph, whole, b, a, WW | WR | RW);
            }
            if let Some(hops) = hops {
                self.report((a, e), hops);
            }
        }
        if skew.exhausted() {
            self.found.truncated.push(AnomalyKind::G2);
        }
    }

    /// Cycles that need real-time edges and hold at most one anti-dependency: from each
    /// real-time edge back over ww (+wr) and real-time edges, and from each
    /// anti-dependency back over those.
    fn realtime_cycles(&mut self) {
        let comps = components(self.graph, WW | WR | RW | RT);
        let writes = topological_ranks(self.graph, WW | RT);
        let flows = topological_ranks(self.graph, WW | WR | RT);
        let scope = |rank| Scope {
            component: &comps.of,
            rank: Some(rank),
        };
        let tries = [
            (RT, WW | RT, scope(&writes), AnomalyKind::G0Realtime),
            (RT, WW | WR | RT, scope(&flows), AnomalyKind::G1cRealtime),
            (
                RW,
                WW | WR | RT,
                scope(&flows),
                AnomalyKind::GSingleRealtime,
            ),
        ];
        let mut bfs = Bfs::new(self.graph.len(), SEARCH_BUDGET);
        for (start, mask, scope, kind) in tries {
            for (a, e) in self.inner_edges(&comps, start) {
                if self.found.full(kind) {
                    break;
                }
                let b = self.graph.adj[a][e].0;
                let hops = bfs.path(self.graph, scope, b, a, mask);
                if bfs.exhausted() {
                    self.found.truncated.push(AnomalyKind::GSingleRealtime);
                    return;
                }
                if let Some(hops) = hops {
                    self.report((a, e), hops);
                }
            }
        }
    }

    /// Edges of `kind` whose ends share a component.
    fn inner_edges(&self, comps: &Components, kind: u8) -> Vec<(usize, usize)> {
        let of = &comps.of;
        let mut edges = Vec::new();
        for group in comps.groups() {
            for a in group {
                for (e, &(b, dep)) in self.graph.adj[a].iter().enumerate() {
                    if dep.bit() == kind && of[b] == of[a] {
                        edges.push((a, e));
                    }
                }
            }
        }
        edges
    }

    /// Reports the cycle made of edge `first` and the path `back` to its start.
    fn report(&mut self, first: (usize, usize), back: Vec<(usize, usize)>) {
        let hops: Vec<(usize, usize)> = std::iter::once(first).chain(back).collect();
        let mut nodes: Vec<(usize, u8)> = hops
            .iter()
            .map(|&(u, e)| (u, self.graph.adj[u][e].1.bit()))
            .collect();
        let smallest = (0..nodes.len())
            .min_by_key(|&i| nodes[i])
            .expect("a cycle has nodes");
        nodes.rotate_left(smallest);
        if !self.seen.insert(nodes) {
            return;
        }
        let steps = hops
            .iter()
            .map(|&(u, e)| {
                let (v, dep) = self.graph.adj[u][e];
                Step {
                    from: self.ctx.id(u),
                    to: self.ctx.id(v),
                    dep,
                }
            })
            .collect();
        self.found.add(Anomaly::from_cycle(steps));
    }
}

/// A list for humans: its last few values, since reads may hold thousands.
fn show(list: &[u64]) -> String {
    const TAIL: usize = 6;
    let skip = list.len().saturating_sub(TAIL);
    let tail: Vec<String> = list[skip..].iter().map(u64::to_string).collect();
    if skip == 0 {
        format!("[{}]", tail.join(", "))
    } else {
        format!("[..{skip} earlier, {}]", tail.join(", "))
    }
}

fn version_words(last: Option<u64>) -> String {
    match last {
        Some(v) => format!("ending at {v}"),
        None => "as empty".to_string(),
    }
}

fn names(ids: &[usize]) -> String {
    let names: Vec<String> = ids.iter().map(|id| format!("T{id}")).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::{AnomalyKind::*, *};

    fn ap(key: u64, value: u64) -> MicroOp {
        MicroOp::Append { key, value }
    }

    fn rd(key: u64, list: &[u64]) -> MicroOp {
        MicroOp::Read {
            key,
            value: Some(list.to_vec()),
        }
    }

    /// A transaction overlapping every other one by default, so no real-time order.
    fn txn(id: usize, outcome: TxnOutcome, ops: Vec<MicroOp>) -> Txn {
        Txn {
            id,
            process: id,
            ops,
            outcome,
            start_ns: 0,
            end_ns: 1_000_000,
        }
    }

    fn ok(id: usize, ops: Vec<MicroOp>) -> Txn {
        txn(id, TxnOutcome::Committed, ops)
    }

    /// Runs the transactions one after another in real time, in the order given.
    fn serial(mut txns: Vec<Txn>) -> Vec<Txn> {
        for (i, t) in txns.iter_mut().enumerate() {
            t.start_ns = 10 * i as u64;
            t.end_ns = 10 * i as u64 + 5;
        }
        txns
    }

    fn assert_has(report: &Report, kind: AnomalyKind) {
        assert!(report.count(kind) > 0, "expected {kind:?} in:\n{report}");
    }

    fn assert_kinds(report: &Report, kinds: &[AnomalyKind]) {
        let mut found: Vec<AnomalyKind> = report.anomalies.iter().map(|a| a.kind).collect();
        found.sort_unstable();
        found.dedup();
        assert_eq!(found, kinds, "unexpected anomalies in:\n{report}");
    }

    fn first(report: &Report, kind: AnomalyKind) -> &Anomaly {
        report
            .anomalies
            .iter()
            .find(|a| a.kind == kind)
            .unwrap_or_else(|| panic!("expected {kind:?} in:\n{report}"))
    }

    #[test]
    fn valid_serial_history_passes() {
        let history = serial(vec![
            ok(1, vec![rd(1, &[]), ap(1, 1)]),
            ok(2, vec![rd(1, &[1]), ap(1, 2), ap(2, 1), rd(1, &[1, 2])]),
            ok(3, vec![rd(1, &[1, 2]), rd(2, &[1])]),
            ok(4, vec![rd(2, &[1]), ap(2, 2)]),
            ok(5, vec![rd(1, &[1, 2]), rd(2, &[1, 2])]),
        ]);
        let report = check(&history);
        assert_kinds(&report, &[]);
        assert!(report.is_valid_si() && report.is_valid_strong_si());
        assert_eq!(report.txns_checked, 5);
    }

    #[test]
    fn write_skew_is_g2_but_valid_si() {
        let report = check(&write_skew(1, (1, 2)));
        assert_kinds(&report, &[G2]);
        assert!(report.is_valid_si(), "{report}");
        let mut txns = first(&report, G2).txns.clone();
        txns.sort_unstable();
        assert_eq!(txns, vec![1, 2]);
    }

    #[test]
    fn opposite_append_orders_are_g0() {
        let history = vec![
            ok(1, vec![ap(1, 1), ap(2, 2)]),
            ok(2, vec![ap(1, 2), ap(2, 1)]),
            ok(3, vec![rd(1, &[1, 2]), rd(2, &[1, 2])]),
        ];
        let report = check(&history);
        assert_kinds(&report, &[G0]);
        assert!(!report.is_valid_si());
        assert_eq!(first(&report, G0).keys, vec![1, 2]);
    }

    #[test]
    fn reading_an_aborted_append_is_g1a() {
        let history = vec![
            txn(1, TxnOutcome::Aborted, vec![ap(1, 1)]),
            ok(2, vec![rd(1, &[1])]),
        ];
        let report = check(&history);
        assert_kinds(&report, &[G1a]);
        assert_eq!(first(&report, G1a).txns, vec![2, 1]);
        assert_eq!(report.txns_checked, 1);
    }

    #[test]
    fn an_aborted_append_in_the_middle_of_a_read_is_g1a() {
        let history = vec![
            ok(1, vec![ap(1, 1)]),
            txn(2, TxnOutcome::Aborted, vec![ap(1, 2)]),
            ok(3, vec![ap(1, 3)]),
            ok(4, vec![rd(1, &[1, 2, 3])]),
            // An aborted transaction's own reads prove nothing.
            txn(5, TxnOutcome::Aborted, vec![rd(1, &[99])]),
            // Stops before the aborted value.
            ok(6, vec![rd(1, &[1])]),
        ];
        let report = check(&history);
        assert_kinds(&report, &[G1a]);
        assert_eq!(report.count(G1a), 1, "{report}");
        assert_eq!(first(&report, G1a).txns, vec![4, 2]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn reading_an_intermediate_append_is_g1b() {
        let history = vec![
            ok(1, vec![ap(1, 1), ap(1, 2)]),
            ok(2, vec![rd(1, &[1])]),
            ok(3, vec![rd(1, &[1, 2])]),
        ];
        let report = check(&history);
        assert_has(&report, G1b);
        assert_eq!(first(&report, G1b).txns, vec![2, 1]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn mutual_reads_are_g1c() {
        let history = vec![
            ok(1, vec![ap(1, 1), rd(2, &[1])]),
            ok(2, vec![ap(2, 1), rd(1, &[1])]),
        ];
        let report = check(&history);
        assert_kinds(&report, &[G1c]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn read_skew_is_g_single() {
        let history = vec![
            ok(1, vec![ap(1, 1), ap(2, 1)]),
            // Sees T1's append to key 2 but not its append to key 1.
            ok(2, vec![rd(1, &[]), rd(2, &[1])]),
            ok(3, vec![rd(1, &[1]), rd(2, &[1])]),
        ];
        let report = check(&history);
        assert_kinds(&report, &[GSingle]);
        let anomaly = first(&report, GSingle);
        let mut txns = anomaly.txns.clone();
        txns.sort_unstable();
        assert_eq!(txns, vec![1, 2]);
        assert_eq!(anomaly.keys, vec![1, 2]);
        assert!(!report.is_valid_si());
    }

    /// Two transactions that each miss the other's append (a G2 cycle), and a reader that
    /// reveals both appends.
    fn write_skew(id: usize, (x, y): (u64, u64)) -> [Txn; 3] {
        [
            ok(id, vec![rd(x, &[]), rd(y, &[]), ap(x, 1)]),
            ok(id + 1, vec![rd(x, &[]), rd(y, &[]), ap(y, 1)]),
            ok(id + 2, vec![rd(x, &[1]), rd(y, &[1])]),
        ]
    }

    #[test]
    fn a_longer_g_single_is_found_whatever_the_listing_order() {
        // Write skews listed first fill the G2 limit, so only the G-single search can find
        // the cycle below.
        let skews = (0..MAX_PER_KIND as u64)
            .flat_map(|i| write_skew(100 + 3 * i as usize, (100 + 2 * i, 101 + 2 * i)));
        let mut history: Vec<Txn> = skews.collect();
        history.extend([
            ok(4, vec![rd(1, &[1, 2]), rd(2, &[1]), rd(3, &[1])]),
            ok(3, vec![ap(1, 2), ap(2, 1)]),
            // Misses T2's append to key 3, though it saw T3's to key 2, which came after
            // T2's to key 1.
            ok(1, vec![rd(2, &[1]), rd(3, &[])]),
            ok(2, vec![ap(1, 1), ap(3, 1)]),
        ]);
        let report = check(&history);
        assert_kinds(&report, &[GSingle, G2]);
        let mut txns = first(&report, GSingle).txns.clone();
        txns.sort_unstable();
        assert_eq!(txns, vec![1, 2, 3]);
    }

    #[test]
    fn two_appends_from_one_version_are_a_lost_update() {
        let history = vec![
            ok(1, vec![ap(1, 1)]),
            ok(2, vec![rd(1, &[1]), ap(1, 2)]),
            ok(3, vec![rd(1, &[1]), ap(1, 3)]),
            ok(4, vec![rd(1, &[1, 2, 3])]),
        ];
        let report = check(&history);
        assert_has(&report, LostUpdate);
        assert_eq!(first(&report, LostUpdate).txns, vec![2, 3]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn a_read_of_own_appends_reveals_the_snapshot_beneath_them() {
        let history = vec![
            ok(1, vec![ap(1, 1)]),
            // Its snapshot held [1]: the 2 it read back is its own.
            ok(2, vec![ap(1, 2), rd(1, &[1, 2])]),
            ok(3, vec![rd(1, &[1]), ap(1, 3)]),
            ok(4, vec![rd(1, &[1, 2, 3])]),
        ];
        let report = check(&history);
        assert_eq!(first(&report, LostUpdate).txns, vec![2, 3]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn diverging_reads_are_an_incompatible_order() {
        let history = vec![
            ok(1, vec![ap(1, 1)]),
            ok(2, vec![ap(1, 2)]),
            ok(3, vec![ap(1, 3)]),
            ok(4, vec![rd(1, &[1, 2])]),
            ok(5, vec![rd(1, &[1, 3])]),
        ];
        let report = check(&history);
        assert_kinds(&report, &[IncompatibleOrder]);
        assert_eq!(first(&report, IncompatibleOrder).txns, vec![5, 4]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn an_observed_unknown_transaction_counts_as_committed() {
        let unknown = TxnOutcome::Unknown;
        let history = vec![
            txn(1, unknown, vec![ap(1, 1), ap(2, 1)]),
            ok(2, vec![rd(1, &[1]), rd(2, &[])]),
            ok(3, vec![rd(1, &[1]), rd(2, &[1])]),
            // Never observed: ignored.
            txn(4, unknown, vec![ap(3, 1)]),
        ];
        let report = check(&history);
        assert_kinds(&report, &[GSingle]);
        assert!(first(&report, GSingle).txns.contains(&1), "{report}");
        assert_eq!(report.txns_checked, 3);

        let history = vec![txn(1, unknown, vec![ap(1, 1)]), ok(2, vec![rd(1, &[1])])];
        let report = check(&history);
        assert_kinds(&report, &[]);
        assert_eq!(report.txns_checked, 2);
    }

    #[test]
    fn reads_that_contradict_their_own_transaction_are_internal() {
        let history = vec![
            ok(1, vec![ap(1, 1), rd(1, &[])]),
            ok(2, vec![rd(2, &[]), rd(2, &[5])]),
            ok(3, vec![ap(2, 5)]),
            ok(
                4,
                vec![rd(3, &[]), ap(3, 1), rd(3, &[1]), ap(3, 2), rd(3, &[1, 2])],
            ),
        ];
        let report = check(&history);
        let mut txns: Vec<usize> = report
            .anomalies
            .iter()
            .filter(|a| a.kind == Internal)
            .flat_map(|a| a.txns.clone())
            .collect();
        txns.sort_unstable();
        assert_eq!(txns, vec![1, 2], "{report}");
        assert!(!report.is_valid_si());
    }

    #[test]
    fn unknown_and_repeated_values_are_garbage_and_duplicates() {
        let history = vec![
            ok(1, vec![ap(1, 1)]),
            ok(2, vec![rd(1, &[1, 1])]),
            ok(3, vec![rd(2, &[7])]),
        ];
        let report = check(&history);
        assert_has(&report, DuplicateElements);
        assert_eq!(first(&report, Garbage).txns, vec![3]);
        assert!(!report.is_valid_si());
    }

    #[test]
    fn a_stale_read_is_a_strong_si_violation_only() {
        let history = serial(vec![
            ok(1, vec![ap(1, 1)]),
            ok(2, vec![rd(1, &[])]),
            ok(3, vec![rd(1, &[1])]),
        ]);
        let report = check(&history);
        assert_kinds(&report, &[GSingleRealtime]);
        assert!(report.is_valid_si(), "{report}");
        assert!(!report.is_valid_strong_si());
    }

    #[test]
    fn the_report_names_kinds_transactions_and_keys() {
        let history = vec![
            ok(7, vec![ap(1, 1), ap(2, 1)]),
            ok(8, vec![rd(1, &[]), rd(2, &[1])]),
            ok(9, vec![rd(1, &[1]), rd(2, &[1])]),
        ];
        let text = check(&history).to_string();
        for needle in [
            "NOT snapshot isolation",
            "G-single",
            "T7",
            "T8",
            "key 1",
            "key 2",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn anomalies_beyond_the_limit_are_counted_not_listed() {
        let history: Vec<Txn> = (0..30u64)
            .flat_map(|k| {
                let id = 2 * k as usize;
                [
                    ok(id, vec![rd(k, &[]), ap(k, 1)]),
                    ok(id + 1, vec![rd(k, &[]), ap(k, 2)]),
                ]
            })
            .collect();
        let report = check(&history);
        assert_eq!(report.count(LostUpdate), MAX_PER_KIND);
        assert_eq!(report.omitted, 30 - MAX_PER_KIND);
        assert!(report.to_string().contains("more not listed"));
    }

    #[test]
    fn a_long_overlapping_valid_history_passes() {
        const KEYS: u64 = 50;
        let mut lists = vec![Vec::new(); KEYS as usize];
        let history: Vec<Txn> = (0..20_000u64)
            .map(|i| {
                let (k, other) = (i % KEYS, (i * 7 + 3) % KEYS);
                let seen = lists[k as usize].clone();
                lists[k as usize].push(i);
                let ops = vec![rd(k, &seen), ap(k, i), rd(other, &lists[other as usize])];
                Txn {
                    start_ns: 10 * i,
                    // Overlaps the next three, which follow it in the serial order.
                    end_ns: 10 * i + 35,
                    ..ok(i as usize, ops)
                }
            })
            .collect();
        let report = check(&history);
        assert_kinds(&report, &[]);
        assert!(report.is_valid_strong_si() && report.truncated_searches.is_empty());
        assert_eq!(report.txns_checked, 20_000);
    }

    /// A history from a simulated strong-SI store: transaction `i` takes its snapshot at
    /// step `i`, commits at step `i + overlap` unless a transaction that committed since
    /// its snapshot appended to the same key (first committer wins). Reads see the
    /// snapshot plus the transaction's own appends, so write skew is common.
    fn simulated_si(txns: u64, keys: u64, overlap: u64) -> Vec<Txn> {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        // Per key: (commit step, value), in commit order.
        let mut versions: Vec<Vec<(u64, u64)>> = vec![Vec::new(); keys as usize];
        let mut history = Vec::new();
        for i in 0..txns {
            let snapshot = |k: u64, versions: &[Vec<(u64, u64)>]| -> Vec<u64> {
                let list = versions[k as usize].iter().filter(|&&(c, _)| c < i);
                list.map(|&(_, v)| v).collect()
            };
            let written = random(keys);
            let mut ops = Vec::new();
            for _ in 0..2 {
                let k = random(keys);
                ops.push(rd(k, &snapshot(k, &versions)));
            }
            ops.push(ap(written, i));
            let k = random(keys);
            let mut seen = snapshot(k, &versions);
            if k == written {
                seen.push(i);
            }
            ops.push(rd(k, &seen));
            let list = &mut versions[written as usize];
            let outcome = if list.iter().any(|&(c, _)| c >= i) {
                TxnOutcome::Aborted
            } else {
                list.push((i + overlap, i));
                TxnOutcome::Committed
            };
            history.push(Txn {
                start_ns: 10 * i,
                end_ns: 10 * (i + overlap) + 5,
                ..txn(i as usize, outcome, ops)
            });
        }
        history
    }

    #[test]
    fn a_long_simulated_si_history_with_write_skew_passes() {
        let report = check(&simulated_si(20_000, 20, 30));
        assert!(report.count(G2) > 0, "{report}");
        assert_kinds(&report, &[G2]);
        assert!(report.is_valid_strong_si() && report.truncated_searches.is_empty());
    }
}
