//! `kvctl txn ...` (each a one-statement transaction), `kvctl batch`, and the shell's
//! BEGIN / COMMIT / ROLLBACK.

use clap::Subcommand;
use serde_json::json;

use client::{
    txn::{Mode, Transaction, TxnClient},
    Error, ReadMode, Result,
};

use super::{show_key, Printer};

/// Transactional commands: each runs as a transaction of its own (snapshot isolation);
/// a write conflict exits 1 and names the key.
#[derive(Clone, Debug, Subcommand)]
pub enum TxnCommand {
    /// Print the value of KEY; exit 1 with "not found" if it does not exist.
    Get {
        /// The key.
        key: String,
    },
    /// Print 1 if KEY exists, 0 if not.
    Has {
        /// The key.
        key: String,
    },
    /// Set KEY to VALUE; prints OK and the commit timestamp.
    #[command(visible_alias = "set")]
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove KEY; prints OK and the commit timestamp.
    Delete {
        /// The key.
        key: String,
    },
    /// Print pairs in [START, END) as KEY<TAB>VALUE lines, in key order.
    Scan {
        /// First key (default: the start of the key space).
        start: Option<String>,
        /// End key, exclusive (default: the end of the key space).
        end: Option<String>,
        /// Most pairs to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The state of the transaction that started at START_TS with primary key
    /// PRIMARY_KEY: locked, committed at a timestamp, rolled back, or not found.
    Status {
        /// The transaction's primary key (its first key).
        primary_key: String,
        /// Its start timestamp.
        start_ts: u64,
    },
}

/// Runs one transactional command, its reads served as `read` says (a stale read mode
/// reads a snapshot that far back, from the closest replica).
pub(super) async fn run(
    c: &TxnClient,
    cmd: &TxnCommand,
    read: ReadMode,
    p: &mut Printer<'_>,
) -> Result<i32> {
    match cmd {
        TxnCommand::Status {
            primary_key,
            start_ts,
        } => {
            let state = c.status(primary_key.as_bytes(), *start_ts).await?;
            if p.json {
                p.line(json!({"state": state.to_string()}));
            } else {
                p.line(state);
            }
            Ok(0)
        }
        cmd @ (TxnCommand::Get { .. } | TxnCommand::Has { .. } | TxnCommand::Scan { .. })
            if matches!(read, ReadMode::Stale(_)) =>
        {
            let ReadMode::Stale(max_age) = read else {
                unreachable!("matched by the guard")
            };
            let mut t = c.stale_snapshot(max_age).await?;
            statement(&mut t, cmd, p).await
        }
        cmd => {
            let mut t = c.begin().await?;
            // Writes read from the leader or a follower, never a stale replica.
            if !matches!(read, ReadMode::Stale(_)) {
                t.set_read_mode(read);
            }
            let code = statement(&mut t, cmd, p).await?;
            let ts = t.commit().await?;
            if matches!(cmd, TxnCommand::Put { .. } | TxnCommand::Delete { .. }) {
                committed(p, ts);
            }
            Ok(code)
        }
    }
}

fn committed(p: &mut Printer<'_>, ts: u64) {
    if p.json {
        p.line(json!({"ok": true, "commit_ts": ts}));
    } else {
        p.line(format!("OK\tcommitted at {ts}"));
    }
}

/// One statement inside transaction `t` (writes are buffered until commit).
async fn statement(t: &mut Transaction<'_>, cmd: &TxnCommand, p: &mut Printer<'_>) -> Result<i32> {
    match cmd {
        TxnCommand::Get { key } => match t.get(key.as_bytes()).await? {
            Some(v) if p.json => p.line(json!({"key": key, "value": show_key(&v)})),
            Some(v) => p.bytes(&[&v, b"\n"]),
            None => {
                p.diagnostic("not found");
                return Ok(1);
            }
        },
        TxnCommand::Has { key } => {
            let found = t.get(key.as_bytes()).await?.is_some();
            match p.json {
                true => p.line(json!({"key": key, "exists": found})),
                false => p.line(u8::from(found)),
            }
        }
        TxnCommand::Put { key, value } => t.put(key.as_bytes(), value.as_bytes()).await?,
        TxnCommand::Delete { key } => t.delete(key.as_bytes()).await?,
        TxnCommand::Scan { start, end, limit } => {
            let start = start.as_deref().unwrap_or("").as_bytes();
            let end = end.as_deref().unwrap_or("").as_bytes();
            super::print_pairs(&t.scan(start, end, *limit).await?, p);
        }
        TxnCommand::Status { .. } => {
            p.diagnostic("status is not a statement: run it outside BEGIN ... COMMIT");
            return Ok(1);
        }
    }
    Ok(0)
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum BatchOp {
    Put(String, String),
    Delete(String),
}

/// The writes of `batch PUT K V SET K V DELETE K ...` (verbs in any case).
pub(super) fn parse_batch(words: &[String]) -> Result<Vec<BatchOp>> {
    let mut ops = vec![];
    let mut rest = words;
    while let Some((verb, tail)) = rest.split_first() {
        let bad = |why: String| {
            Error::InvalidArgument(format!(
                "batch, word {}: {why}",
                words.len() - rest.len() + 1
            ))
        };
        match (verb.to_ascii_uppercase().as_str(), tail) {
            ("PUT" | "SET", [k, v, more @ ..]) => {
                ops.push(BatchOp::Put(k.clone(), v.clone()));
                rest = more;
            }
            ("DELETE" | "DEL", [k, more @ ..]) => {
                ops.push(BatchOp::Delete(k.clone()));
                rest = more;
            }
            ("PUT" | "SET" | "DELETE" | "DEL", _) => {
                return Err(bad(format!("{verb} is missing its key or value")))
            }
            _ => return Err(bad(format!("{verb:?} is not PUT, SET or DELETE"))),
        }
    }
    if ops.is_empty() {
        return Err(Error::InvalidArgument(
            "batch needs at least one PUT or DELETE".into(),
        ));
    }
    Ok(ops)
}

/// Applies `ops` as one optimistic transaction: all or nothing.
pub(super) async fn batch(c: &TxnClient, ops: &[BatchOp], p: &mut Printer<'_>) -> Result<i32> {
    let mut t = c.begin().await?;
    for op in ops {
        match op {
            BatchOp::Put(k, v) => t.put(k.as_bytes(), v.as_bytes()).await?,
            BatchOp::Delete(k) => t.delete(k.as_bytes()).await?,
        }
    }
    let ts = t.commit().await?;
    committed(p, ts);
    Ok(0)
}

/// The shell's open transaction, between BEGIN and COMMIT or ROLLBACK.
pub(super) struct Session<'a> {
    client: &'a TxnClient,
    open: Option<Transaction<'a>>,
    /// The name BEGIN gave it, if any (shown in the prompt).
    name: Option<String>,
}

impl<'a> Session<'a> {
    pub(super) fn new(client: &'a TxnClient) -> Self {
        Session {
            client,
            open: None,
            name: None,
        }
    }

    /// The shell's prompt: it shows an open transaction and its name.
    pub(super) fn prompt(&self) -> String {
        match (&self.open, &self.name) {
            (None, _) => "kvctl> ".into(),
            (Some(_), None) => "kvctl(txn)> ".into(),
            (Some(_), Some(n)) => format!("kvctl(txn {n})> "),
        }
    }

    /// Handles BEGIN [PESSIMISTIC] [NAME], COMMIT and ROLLBACK (any case); `None` if the
    /// line is none of them.
    pub(super) async fn control(
        &mut self,
        words: &[String],
        p: &mut Printer<'_>,
    ) -> Option<Result<i32>> {
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        let named = |i: usize| words.get(i).cloned();
        Some(match upper.as_slice() {
            ["BEGIN"] | ["BEGIN", _] if upper.get(1) != Some(&"PESSIMISTIC") => {
                self.begin(Mode::Optimistic, named(1), p).await
            }
            ["BEGIN", "PESSIMISTIC"] | ["BEGIN", "PESSIMISTIC", _] => {
                self.begin(Mode::Pessimistic, named(2), p).await
            }
            ["COMMIT"] => match self.open.take() {
                Some(t) => t.commit().await.map(|ts| {
                    committed(p, ts);
                    0
                }),
                None => no_transaction(p),
            },
            ["ROLLBACK"] => match self.open.take() {
                Some(t) => t.rollback().await.map(|()| {
                    p.line("OK\trolled back");
                    0
                }),
                None => no_transaction(p),
            },
            _ => return None,
        })
    }

    async fn begin(
        &mut self,
        mode: Mode,
        name: Option<String>,
        p: &mut Printer<'_>,
    ) -> Result<i32> {
        if self.open.is_some() {
            p.diagnostic("a transaction is open: COMMIT or ROLLBACK it first");
            return Ok(1);
        }
        let t = self.client.begin_with(mode).await?;
        match &name {
            Some(n) => p.line(format!("BEGIN\t{n}\tstart ts {}", t.start_ts())),
            None => p.line(format!("BEGIN\tstart ts {}", t.start_ts())),
        }
        self.open = Some(t);
        self.name = name;
        Ok(0)
    }

    /// Runs get/put/delete/scan inside the open transaction; `None` if none is open (the
    /// command then runs on its own).
    pub(super) async fn statement(
        &mut self,
        cmd: &TxnCommand,
        p: &mut Printer<'_>,
    ) -> Option<Result<i32>> {
        let t = self.open.as_mut()?;
        let res = statement(t, cmd, p).await;
        if res.is_ok() && matches!(cmd, TxnCommand::Put { .. } | TxnCommand::Delete { .. }) {
            p.line("OK");
        }
        Some(res)
    }

    /// Rolls back a transaction left open.
    pub(super) async fn close(&mut self) {
        if let Some(t) = self.open.take() {
            let _ = t.rollback().await;
        }
    }

    /// Whether a transaction is open (for the prompt).
    pub(super) fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

fn no_transaction(p: &mut Printer<'_>) -> Result<i32> {
    p.diagnostic("no transaction is open (BEGIN starts one)");
    Ok(1)
}
