//! `chubby admin add-replica` / `remove-replica`: membership changes of a running cell
//! (docs/paxos.md, "Membership changes").
//!
//! The master proposes the change as a log entry; it takes effect a fixed number of slots
//! after it is chosen (the master fills them with no-ops, so this takes well under a second
//! in a healthy cell). The command waits until the master reports the new set in effect,
//! so a script can run the next change right after it; a removal also waits until every
//! remaining member knows it in effect, and then says the removed replica may be stopped.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chubby_client::conn::CellConn;
use chubby_client::protocol::client_msg::{Answer, Call, ReplicaRole, StatusReport};
use chubby_client::protocol::{MemberAddr, NodeId, Slot};

use crate::CellArg;

/// Membership changes and backups (the `admin` principal's certificate only).
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Write a consistent, checksummed backup of the cell's database to FILE (taken by the
    /// master now; restore it with `chubby cell restore --from FILE`).
    Backup(crate::backup::BackupArgs),
    /// Add replica ID, listening at HOST:PORT (its peer port), to the running cell. Issue it
    /// first with `chubby cell issue-replica` and start it (`chubby-server --config ...`):
    /// it catches up while it waits. Returns once the new member set is in effect.
    AddReplica {
        #[command(flatten)]
        cell: CellArg,
        /// The new replica's id (its certificate is `replica-<ID>`).
        #[arg(long)]
        id: u32,
        /// HOST:PORT of its peer port (as in its config.toml).
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Its client port [default: PORT + 1, as `chubby cell issue-replica` assigns].
        #[arg(long)]
        client_port: Option<u16>,
        /// How long to wait for the change to take effect.
        #[arg(long, default_value = "60", value_name = "SECONDS")]
        timeout: u64,
    },
    /// Remove replica ID from the running cell. Returns once the new member set is in
    /// effect and every remaining member knows it (it then says "replica ID may be
    /// stopped now"); stop the removed replica only after that line.
    RemoveReplica {
        #[command(flatten)]
        cell: CellArg,
        /// The replica's id.
        #[arg(long)]
        id: u32,
        /// How long to wait for the change to take effect.
        #[arg(long, default_value = "60", value_name = "SECONDS")]
        timeout: u64,
    },
}

pub fn run(cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    let (cell, call, id, adding, timeout) = match cmd {
        AdminCommand::Backup(args) => return crate::backup::run(args),
        AdminCommand::AddReplica {
            cell,
            id,
            addr,
            client_port,
            timeout,
        } => {
            let (host, port) = split_host_port(&addr)?;
            let client_port = match client_port {
                Some(p) => p,
                None => port
                    .checked_add(1)
                    .context("--addr port is the last port; pass --client-port")?,
            };
            let add = MemberAddr {
                id: NodeId(id),
                host,
                peer_port: port,
                client_port,
            };
            let call = Call::ChangeMembers {
                add: Some(add),
                remove: None,
            };
            (cell, call, id, true, timeout)
        }
        AdminCommand::RemoveReplica { cell, id, timeout } => {
            let call = Call::ChangeMembers {
                add: None,
                remove: Some(NodeId(id)),
            };
            (cell, call, id, false, timeout)
        }
    };
    if id == 0 {
        bail!("replica ids start at 1");
    }
    let cell = cell.load()?;
    crate::runtime()?.block_on(async {
        let conn = CellConn::new(&cell)?;
        let result = change(
            &conn,
            call,
            NodeId(id),
            adding,
            Duration::from_secs(timeout),
        )
        .await;
        conn.close().await;
        result
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn change(
    conn: &CellConn,
    call: Call,
    id: NodeId,
    adding: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let verb = if adding { "adding" } else { "removing" };
    conn.call(call)
        .await
        .with_context(|| format!("{verb} replica {}", id.0))?;
    println!(
        "{verb} replica {}: proposed; waiting for it to take effect",
        id.0
    );
    let started = Instant::now();
    loop {
        if let Some(report) = master_status(conn).await {
            let (effect, pending) = sets_of(&report);
            if effect.contains(&id) == adding && pending.is_none() {
                let from = effect_from(&report);
                println!(
                    "members now: {} (in effect from slot {})",
                    show(&effect),
                    from.0
                );
                if !adding {
                    let left = timeout.saturating_sub(started.elapsed());
                    confirm_removal(conn, id, &effect, from, left).await;
                }
                return Ok(());
            }
        }
        if started.elapsed() >= timeout {
            bail!(
                "the change was proposed but is not in effect after {} s; see `chubby status`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first slot the set in effect governs.
fn effect_from(report: &StatusReport) -> Slot {
    let next = report.chosen_through.next();
    report
        .member_sets
        .iter()
        .rev()
        .find(|(from, _)| *from <= next)
        .map_or(Slot(1), |(from, _)| *from)
}

/// Waits until every member of the new set knows it in effect (its chosen prefix reaches
/// `from`), then says the removed replica may be stopped. Until then, slots just below the
/// new set may be known chosen only to the removed replica (say, the master that was
/// removed), and a new master could need a majority of the old set, the removed replica
/// included, to find them again (docs/paxos.md, "Membership changes").
async fn confirm_removal(
    conn: &CellConn,
    id: NodeId,
    members: &[NodeId],
    from: Slot,
    timeout: Duration,
) {
    let started = Instant::now();
    let mut behind: Vec<NodeId> = members.to_vec();
    loop {
        let mut known = Vec::new();
        for i in 0..conn.replica_addrs().len() {
            if let Ok(report) = conn.status_of(i).await {
                if report.chosen_through.next() >= from {
                    known.push(report.id);
                }
            }
        }
        behind.retain(|m| !known.contains(m));
        if behind.is_empty() {
            println!(
                "replica {} may be stopped now: every member knows the new set in effect",
                id.0
            );
            return;
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "warning: members {} have not confirmed the new set yet; stop replica {} only                  once `chubby status` shows each of them past slot {}",
                show(&behind),
                id.0,
                from.0.saturating_sub(1)
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The master's status (found by a Status call to each replica until one is master).
async fn master_status(conn: &CellConn) -> Option<StatusReport> {
    for i in 0..conn.replica_addrs().len() {
        if let Ok(report) = conn.status_of(i).await {
            if report.role == ReplicaRole::Master && report.lease_remaining_ms.is_some() {
                return Some(report);
            }
        }
    }
    // The master may be one the cell file does not list: ask it through a write-free call.
    match conn.call(Call::Status).await {
        Ok(Answer::Status(r)) => Some(*r),
        _ => None,
    }
}

/// The member set in effect after `chosen_through`, and a later one if pending.
pub fn sets_of(report: &StatusReport) -> (Vec<NodeId>, Option<(Slot, Vec<NodeId>)>) {
    let next = report.chosen_through.next();
    let effect = report
        .member_sets
        .iter()
        .rev()
        .find(|(from, _)| *from <= next)
        .map(|(_, set)| set.clone())
        .unwrap_or_default();
    let pending = report
        .member_sets
        .iter()
        .find(|(from, _)| *from > next)
        .cloned();
    (effect, pending)
}

pub fn show(set: &[NodeId]) -> String {
    let ids: Vec<String> = set.iter().map(|n| n.0.to_string()).collect();
    format!("{{{}}}", ids.join(", "))
}

fn split_host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("--addr {addr:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--addr {addr:?} has no host");
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("--addr {addr:?}: the port must be 1 to 65535"))?;
    Ok((host.to_owned(), port))
}
