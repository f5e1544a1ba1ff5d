//! `kvctl pd`: the PD members, their health and leader, and moving the leadership.

use std::time::{Duration, Instant};

use clap::Subcommand;
use client::{Client, Error, Result};
use serde_json::json;

use super::Printer;

/// How long a member may take to answer a probe before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// PD commands.
#[derive(Debug, Subcommand)]
pub enum PdCommand {
    /// Every PD member: name, id, client URL, whether it leads, and whether it answered
    /// a direct probe within a second (with how long it took).
    Members,
    /// Move the PD group's leadership to the member NAME; waits until it leads.
    TransferLeader {
        /// The member that should lead.
        name: String,
    },
}

/// What a direct probe found.
pub enum Probe {
    /// It answered, in this time.
    Up(Duration),
    /// It did not answer (refused, reset, or silent past the deadline).
    Down(String),
    /// Its address does not resolve from here (a container name seen from the host):
    /// only PD's view of it counts.
    Unknown(String),
}

impl Probe {
    /// Judges the outcome of a probe.
    pub fn of(res: std::result::Result<Duration, String>) -> Probe {
        match res {
            Ok(d) => Probe::Up(d),
            Err(e) if e.contains("DNS resolution failed") => Probe::Unknown(e),
            Err(e) => Probe::Down(e),
        }
    }

    /// Whether the probe proved it down.
    pub fn is_down(&self) -> bool {
        matches!(self, Probe::Down(_))
    }

    /// One word for it: up, down or unknown.
    pub fn word(&self) -> &'static str {
        match self {
            Probe::Up(_) => "up",
            Probe::Down(_) => "down",
            Probe::Unknown(_) => "unknown",
        }
    }
}

/// One member, probed.
pub struct MemberHealth {
    /// Its name.
    pub name: String,
    /// Its member id.
    pub id: u64,
    /// Where clients reach it.
    pub url: String,
    /// Whether the group's leader is this member.
    pub leader: bool,
    /// What a direct probe found.
    pub probe: Probe,
}

/// Every member as the leader lists them, each probed directly: at the endpoint kvctl
/// was given that answers as that member (a published port), or else at the member's
/// own URL.
pub async fn members(client: &Client) -> Result<Vec<MemberHealth>> {
    let pd = client.pd();
    let resp = pd.members().await?;
    let leader = resp.get_leader().member_id;
    let mut given = std::collections::HashMap::new();
    for ep in pd.endpoints() {
        if let Some(id) = pd.member_id_at(ep).await {
            given.insert(id, ep.clone());
        }
    }
    let mut out = vec![];
    for m in resp.get_members() {
        let url = m.get_client_urls().first().cloned().unwrap_or_default();
        let at = given
            .get(&m.member_id)
            .cloned()
            .unwrap_or_else(|| url.clone());
        let started = Instant::now();
        let probe = Probe::of(
            pd.probe_member(&at, PROBE_TIMEOUT)
                .await
                .map(|_| started.elapsed())
                .map_err(|e| e.to_string()),
        );
        out.push(MemberHealth {
            name: m.get_name().to_string(),
            id: m.member_id,
            url,
            leader: m.member_id == leader,
            probe,
        });
    }
    Ok(out)
}

/// Runs a `pd` command.
pub async fn run(client: &Client, command: &PdCommand, p: &mut Printer<'_>) -> Result<i32> {
    match command {
        PdCommand::Members => {
            let members = members(client).await?;
            print_members(&members, p);
            Ok(i32::from(members.iter().any(|m| m.probe.is_down())))
        }
        PdCommand::TransferLeader { name } => transfer(client, name, p).await,
    }
}

fn print_members(members: &[MemberHealth], p: &mut Printer<'_>) {
    if p.json {
        let v: Vec<_> = members
            .iter()
            .map(|m| {
                json!({
                    "name": m.name, "id": m.id, "url": m.url, "leader": m.leader,
                    "healthy": !m.probe.is_down(),
                    "state": m.probe.word(),
                    "probe_ms": match &m.probe { Probe::Up(d) => Some(d.as_secs_f64() * 1000.0), _ => None },
                    "error": match &m.probe { Probe::Down(e) | Probe::Unknown(e) => Some(e), Probe::Up(_) => None },
                })
            })
            .collect();
        p.line(serde_json::Value::Array(v));
        return;
    }
    p.line("NAME\tID\tURL\tLEADER\tHEALTH");
    for m in members {
        let health = match &m.probe {
            Probe::Up(d) => format!("up ({:.1} ms)", d.as_secs_f64() * 1000.0),
            Probe::Down(e) => format!("down: {e}"),
            Probe::Unknown(e) => format!("unknown from here: {e}"),
        };
        p.line(format!(
            "{}\t{}\t{}\t{}\t{}",
            m.name,
            m.id,
            m.url,
            if m.leader { "yes" } else { "no" },
            health
        ));
    }
}

async fn transfer(client: &Client, name: &str, p: &mut Printer<'_>) -> Result<i32> {
    let members = client.pd().members().await?;
    if !members.get_members().iter().any(|m| m.get_name() == name) {
        return Err(Error::InvalidArgument(format!(
            "no PD member is named {name:?}"
        )));
    }
    let deadline = Instant::now() + client.timeout();
    loop {
        if client.pd().members().await?.get_leader().get_name() == name {
            p.line(format!("OK: {name} leads the PD group"));
            return Ok(0);
        }
        client.pd().transfer_pd_leader(name).await?;
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                elapsed: client.timeout(),
                last: format!("{name} does not lead the PD group yet"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = client.pd().reconnect().await;
    }
}
