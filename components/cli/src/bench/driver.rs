//! The systems a workload runs against: Flotilla through the project's client library,
//! and etcd through the `etcd-client` crate. Each worker holds a [`Session`] of its own
//! over one of the bench's connections.

use std::{sync::Arc, time::Duration};

use clap::ValueEnum;
use rand::Rng;

use client::{
    txn::{CommitMode, TxnClient},
    Client, ReadMode,
};

use super::workload::KeySpace;

/// Which system the bench loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// Flotilla, through its client library (endpoints: PD members).
    Flotilla,
    /// etcd v3, through the `etcd-client` crate (endpoints: etcd members' client URLs).
    Etcd,
}

/// How the `txn` workload commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxnCommit {
    /// Two-phase commit, the two keys in different regions.
    TwoPhase,
    /// Async commit, the two keys in different regions.
    AsyncCommit,
    /// One-phase commit, both keys in one region.
    OnePc,
}

/// Why one operation failed, by kind (the report counts errors per kind).
pub type ErrorKind = String;

/// The connections of one run.
pub enum Driver {
    /// Flotilla clients, one per connection.
    Flotilla(Vec<(Arc<Client>, Arc<TxnClient>)>),
    /// etcd clients, one per connection, and whether reads are serializable.
    Etcd(Vec<etcd_client::KvClient>, bool),
}

/// One worker's handle on its connection.
pub enum Session {
    /// Over a Flotilla client.
    Flotilla(Arc<Client>, Arc<TxnClient>),
    /// Over an etcd client (boxed: it is large), with the reads' options.
    Etcd(Box<(etcd_client::KvClient, Option<etcd_client::GetOptions>)>),
}

impl Driver {
    /// Opens `connections` Flotilla clients (each with its own PD client and store
    /// connections) and checks, with one read, that PD and a store answer.
    pub async fn flotilla(
        endpoints: &[String],
        connections: usize,
        timeout: Duration,
        make: impl Fn(Client) -> Client,
        creds: util::security::Credentials,
    ) -> Result<Driver, String> {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            let c = Client::connect_with(endpoints, timeout, creds.clone())
                .await
                .map_err(|e| {
                    format!("cannot reach Flotilla's PD at {}: {e}", endpoints.join(","))
                })?;
            let c = Arc::new(make(c));
            let t = Arc::new(TxnClient::new(&c));
            conns.push((c, t));
        }
        // PD answering says nothing of the stores: one read must reach one.
        let (probe, _) = &conns[0];
        match tokio::time::timeout(timeout, probe.get(b"kv-bench-probe")).await {
            Ok(Ok(_)) => Ok(Driver::Flotilla(conns)),
            Ok(Err(e)) => Err(format!("Flotilla's stores did not serve a read: {e}")),
            Err(_) => Err(format!(
                "Flotilla's stores did not serve a read in {timeout:?}"
            )),
        }
    }

    /// Opens `connections` etcd clients and checks, with one read, that the cluster
    /// answers within `timeout`.
    pub async fn etcd(
        endpoints: &[String],
        connections: usize,
        timeout: Duration,
        serializable: bool,
    ) -> Result<Driver, String> {
        let unreachable = |e: &dyn std::fmt::Display| {
            format!("cannot reach etcd at {}: {e}", endpoints.join(","))
        };
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            let client = etcd_client::Client::connect(endpoints, Some(options.clone()))
                .await
                .map_err(|e| unreachable(&e))?;
            let mut kv = client.kv_client();
            match tokio::time::timeout(timeout, kv.get("kv-bench-probe", None)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(unreachable(&e)),
                Err(_) => return Err(unreachable(&format!("no answer in {timeout:?}"))),
            }
            conns.push(kv);
        }
        Ok(Driver::Etcd(conns, serializable))
    }

    /// Worker `i`'s session (workers share the connections round robin).
    pub fn session(&self, i: usize) -> Session {
        match self {
            Driver::Flotilla(conns) => {
                let (c, t) = &conns[i % conns.len()];
                Session::Flotilla(c.clone(), t.clone())
            }
            Driver::Etcd(conns, serializable) => Session::Etcd(Box::new((
                conns[i % conns.len()].clone(),
                serializable.then(|| etcd_client::GetOptions::new().with_serializable()),
            ))),
        }
    }

    /// A Flotilla client, for what only Flotilla has (splits, store metrics).
    pub fn flotilla_client(&self) -> Option<&Client> {
        match self {
            Driver::Flotilla(conns) => Some(&conns[0].0),
            Driver::Etcd(..) => None,
        }
    }
}

impl Session {
    /// Reads one key.
    pub async fn get(&mut self, key: &[u8]) -> Result<(), ErrorKind> {
        match self {
            Session::Flotilla(c, _) => c.get(key).await.map(drop).map_err(flotilla_kind),
            Session::Etcd(e) => {
                let (kv, opts) = &mut **e;
                kv.get(key, opts.clone()).await.map(drop).map_err(etcd_kind)
            }
        }
    }

    /// Writes one key.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ErrorKind> {
        match self {
            Session::Flotilla(c, _) => c.put(key, value).await.map_err(flotilla_kind),
            Session::Etcd(e) => e.0.put(key, value, None).await.map(drop).map_err(etcd_kind),
        }
    }

    /// Reads at most `limit` keys from `start` up to `end`.
    pub async fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<(), ErrorKind> {
        match self {
            Session::Flotilla(c, _) => c
                .scan(start, end, limit)
                .await
                .map(drop)
                .map_err(flotilla_kind),
            Session::Etcd(e) => {
                let (kv, opts) = &mut **e;
                let o = opts
                    .clone()
                    .unwrap_or_default()
                    .with_range(end)
                    .with_limit(limit as i64);
                kv.get(start, Some(o)).await.map(drop).map_err(etcd_kind)
            }
        }
    }

    /// One transaction of the `txn` workload: read two keys, write both.
    pub async fn transfer(
        &mut self,
        keys: &KeySpace,
        mode: TxnCommit,
        value: &[u8],
    ) -> Result<(), ErrorKind> {
        let Session::Flotilla(_, c) = self else {
            return Err("unsupported".into());
        };
        let (a, b) = {
            let mut rng = rand::thread_rng();
            let half = (keys.count() / 2).max(1);
            let a = rng.gen_range(0..half);
            let b = match mode {
                TxnCommit::OnePc => (a + 1 + rng.gen_range(0..half.max(2) - 1)) % half,
                _ => half + rng.gen_range(0..(keys.count() - half).max(1)),
            };
            (keys.key(a), keys.key(b))
        };
        let run = async {
            let mut t = c.begin().await?;
            t.set_commit_mode(match mode {
                TxnCommit::TwoPhase => CommitMode::TwoPhase,
                TxnCommit::AsyncCommit => CommitMode::AsyncCommit,
                TxnCommit::OnePc => CommitMode::OnePc,
            });
            t.get(&a).await?;
            t.get(&b).await?;
            t.put(&a, value).await?;
            t.put(&b, value).await?;
            t.commit().await.map(drop)
        };
        run.await.map_err(flotilla_kind)
    }

    /// One transaction of the `hot` workload: update the key `hot` in one phase.
    pub async fn update_hot(&mut self, value: &[u8]) -> Result<(), ErrorKind> {
        let Session::Flotilla(_, c) = self else {
            return Err("unsupported".into());
        };
        let run = async {
            let mut t = c.begin().await?;
            t.set_commit_mode(CommitMode::OnePc);
            t.get(b"hot").await?;
            t.put(b"hot", value).await?;
            t.commit().await.map(drop)
        };
        run.await.map_err(flotilla_kind)
    }
}

/// Flotilla's errors by kind (their text names regions and keys, which vary).
fn flotilla_kind(e: client::Error) -> ErrorKind {
    use client::Error::*;
    match e {
        Pd(_) => "pd",
        Store(_) => "store",
        Timeout { .. } => "timeout",
        InvalidArgument(_) => "invalid-argument",
        Undetermined(_) => "undetermined",
        Conflict { .. } => "conflict",
        AlreadyExists(_) => "already-exists",
        Aborted(_) => "aborted",
    }
    .into()
}

/// etcd's errors by kind: the gRPC code where there is one.
fn etcd_kind(e: etcd_client::Error) -> ErrorKind {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("grpc-{:?}", s.code()).to_lowercase(),
        etcd_client::Error::TransportError(_) => "transport".into(),
        other => format!("{other}").chars().take(40).collect(),
    }
}

/// What `--read` asks of etcd: serializable reads (a member's local state) for stale
/// reads, linearizable ones for the other modes, which are linearizable in Flotilla.
pub fn etcd_serializable(mode: ReadMode) -> bool {
    matches!(mode, ReadMode::Stale(_))
}
