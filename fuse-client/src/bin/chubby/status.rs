//! `chubby status [--json]`: asks every replica for its view and prints one table (or one
//! JSON object for scripts).

use std::process::ExitCode;
use std::sync::Arc;

use chubby_client::conn::{CellConn, ClientError};
use chubby_client::protocol::client_msg::{ReplicaRole, StatusReport};
use serde_json::{json, Value};

use crate::CellArg;

/// Arguments of `chubby status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cell: CellArg,
    /// Print one JSON object: {master, epoch, replicas: [{id, addr, role, applied,
    /// reachable, ...}]}.
    #[arg(long)]
    json: bool,
}

/// One replica's answer, or why there was none.
struct Row {
    addr: String,
    report: Result<StatusReport, ClientError>,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let cell = args.cell.load()?;
    let rows = crate::runtime()?.block_on(async {
        let conn = Arc::new(CellConn::new(&cell)?);
        let addrs = conn.replica_addrs();
        let mut tasks = Vec::new();
        for (i, addr) in addrs.into_iter().enumerate() {
            let conn = Arc::clone(&conn);
            tasks.push(tokio::spawn(async move {
                Row {
                    addr,
                    report: conn.status_of(i).await,
                }
            }));
        }
        let mut rows = Vec::new();
        for t in tasks {
            if let Ok(row) = t.await {
                rows.push(row);
            }
        }
        conn.close().await;
        Ok::<_, anyhow::Error>(rows)
    })?;
    let view = View::of(&rows);
    if args.json {
        println!("{}", view.json(&rows));
    } else {
        view.print(&rows);
    }
    let reachable = rows.iter().any(|r| r.report.is_ok());
    Ok(if reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the answers add up to.
struct View {
    /// The replica that says it is master and holds a lease.
    master: Option<usize>,
    /// Replica ids by address, learnt from any reachable replica's member list.
    ids: Vec<(String, u32)>,
}

impl View {
    fn of(rows: &[Row]) -> View {
        let master = rows.iter().position(|r| {
            r.report
                .as_ref()
                .is_ok_and(|s| s.role == ReplicaRole::Master && s.lease_remaining_ms.is_some())
        });
        let ids = rows
            .iter()
            .filter_map(|r| r.report.as_ref().ok())
            .flat_map(|s| s.members.iter().map(|m| (m.addr.clone(), m.id.0)))
            .collect();
        View { master, ids }
    }

    fn id_of(&self, row: &Row) -> Option<u32> {
        match &row.report {
            Ok(s) => Some(s.id.0),
            Err(_) => self
                .ids
                .iter()
                .find(|(a, _)| *a == row.addr)
                .map(|(_, id)| *id),
        }
    }

    fn master_report<'a>(&self, rows: &'a [Row]) -> Option<&'a StatusReport> {
        self.master.and_then(|i| rows[i].report.as_ref().ok())
    }

    fn lag(&self, rows: &[Row], s: &StatusReport) -> u64 {
        let head = self
            .master_report(rows)
            .map_or(s.known_chosen, |m| m.applied.max(s.known_chosen));
        head.0.saturating_sub(s.applied.0)
    }

    fn json(&self, rows: &[Row]) -> Value {
        let master = self.master_report(rows);
        let replicas: Vec<Value> = rows
            .iter()
            .map(|row| match &row.report {
                Ok(s) => json!({
                    "id": s.id.0,
                    "addr": row.addr,
                    "reachable": true,
                    "role": s.role.as_str(),
                    "epoch": { "round": s.epoch.round, "node": s.epoch.node.0 },
                    "applied": s.applied.0,
                    "chosen_through": s.chosen_through.0,
                    "known_chosen": s.known_chosen.0,
                    "lag": self.lag(rows, s),
                    "snapshot": s.snapshot.0,
                    "log_entries": s.log_entries,
                    "digest": format!("{:016x}", s.digest),
                    "last_checksum": s.last_checksum.map(|(slot, d)| json!({
                        "slot": slot.0, "digest": format!("{d:016x}")
                    })),
                    "divergence": s.divergence,
                    "lease_remaining_ms": s.lease_remaining_ms,
                    "sessions": s.sessions,
                    "client_calls": s.client_calls,
                    "master_hint": s.master.as_ref().map(|m| m.id.0),
                }),
                Err(e) => json!({
                    "id": self.id_of(row),
                    "addr": row.addr,
                    "reachable": false,
                    "role": null,
                    "applied": null,
                    "error": e.to_string(),
                }),
            })
            .collect();
        let sets = master.map(crate::admin::sets_of);
        json!({
            "members": sets.as_ref().map(|(effect, _)| effect.iter().map(|n| n.0).collect::<Vec<_>>()),
            "members_pending": sets.as_ref().and_then(|(_, p)| p.as_ref()).map(|(from, set)| json!({
                "from_slot": from.0, "members": set.iter().map(|n| n.0).collect::<Vec<_>>()
            })),
            "master": master.map(|m| m.id.0),
            "epoch": master.map(|m| json!({ "round": m.epoch.round, "node": m.epoch.node.0 })),
            "lease_remaining_ms": master.and_then(|m| m.lease_remaining_ms),
            "replicas": replicas,
        })
    }

    fn print(&self, rows: &[Row]) {
        match self.master_report(rows) {
            Some(m) => println!(
                "master: replica {} (epoch {}, lease {} ms left)",
                m.id.0,
                m.epoch,
                m.lease_remaining_ms.unwrap_or(0)
            ),
            None => println!("master: none reachable with a lease"),
        }
        if let Some(m) = self.master_report(rows) {
            let (effect, pending) = crate::admin::sets_of(m);
            match pending {
                Some((from, set)) => println!(
                    "members: {} (changing to {} from slot {})",
                    crate::admin::show(&effect),
                    crate::admin::show(&set),
                    from
                ),
                None => println!("members: {}", crate::admin::show(&effect)),
            }
        }
        println!(
            "{:<4} {:<22} {:<11} {:<9} {:>8} {:>8} {:>8} {:>6} {:<16} NOTE",
            "ID", "ADDR", "ROLE", "EPOCH", "APPLIED", "CHOSEN", "SNAPSHOT", "LAG", "DIGEST"
        );
        for row in rows {
            let id = self
                .id_of(row)
                .map_or_else(|| "?".to_owned(), |i| i.to_string());
            match &row.report {
                Ok(s) => {
                    let note = match &s.divergence {
                        Some(d) => format!("DIVERGED: {d}"),
                        None => String::new(),
                    };
                    println!(
                        "{:<4} {:<22} {:<11} {:<9} {:>8} {:>8} {:>8} {:>6} {:016x} {}",
                        id,
                        row.addr,
                        s.role.as_str(),
                        s.epoch.to_string(),
                        s.applied.0,
                        s.chosen_through.0,
                        s.snapshot.0,
                        self.lag(rows, s),
                        s.digest,
                        note
                    );
                }
                Err(e) => println!("{:<4} {:<22} unreachable: {e}", id, row.addr),
            }
        }
    }
}
