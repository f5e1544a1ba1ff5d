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
    /// How long it took to answer, or why it did not.
    pub probe: std::result::Result<Duration, String>,
}

/// Every member as the leader lists them, each probed directly.
pub async fn members(client: &Client) -> Result<Vec<MemberHealth>> {
    let resp = client.pd().members().await?;
    let leader = resp.get_leader().member_id;
    let mut out = vec![];
    for m in resp.get_members() {
        let url = m.get_client_urls().first().cloned().unwrap_or_default();
        let started = Instant::now();
        let probe = match client.pd().probe_member(&url, PROBE_TIMEOUT).await {
            Ok(_) => Ok(started.elapsed()),
            Err(e) => Err(e.to_string()),
        };
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
            Ok(i32::from(members.iter().any(|m| m.probe.is_err())))
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
                    "healthy": m.probe.is_ok(),
                    "probe_ms": m.probe.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
                    "error": m.probe.as_ref().err(),
                })
            })
            .collect();
        p.line(serde_json::Value::Array(v));
        return;
    }
    p.line("NAME\tID\tURL\tLEADER\tHEALTH");
    for m in members {
        let health = match &m.probe {
            Ok(d) => format!("up ({:.1} ms)", d.as_secs_f64() * 1000.0),
            Err(e) => format!("down: {e}"),
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
