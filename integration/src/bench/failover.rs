//! The fail-over gap of `chubby-bench`: the master of a real cell is killed with `kill -9`
//! again and again under a writing session, and the figures are the median and the worst
//! gap from the kill to the first write completed after it (issue 21 asks for at least
//! ten kills), with every error the client saw around the kills.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chubby_client::client::ClientEvent;
use chubby_client::session::SessionStatus;
use chubby_protocol::cell::CellFile;
use chubby_protocol::client_msg::ReplicaRole;

use super::workloads::{session, value, write_handle, BenchError};
use super::Figure;
use crate::real_cell::RealCell;

/// What one kill cost.
#[derive(Clone, Debug)]
pub struct Kill {
    /// Kill to the completion of the first write sent after it.
    pub gap: Duration,
    /// Errors the writing client saw (none expected: the session survives).
    pub errors: Vec<String>,
    /// Sessions the killed master held (each must acknowledge the fail-over).
    pub sessions: u64,
}

/// The replica that is master with a lease, waiting up to 30 s.
///
/// # Errors
/// No master within 30 s.
pub async fn find_master(cell: &RealCell) -> Result<usize, BenchError> {
    let conn = cell.connect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let found = loop {
        let master = cell
            .statuses(&conn)
            .await
            .into_iter()
            .flatten()
            .find(|s| s.role == ReplicaRole::Master && s.lease_remaining_ms.is_some());
        if let Some(s) = master {
            break usize::try_from(s.id.0).map_err(|e| BenchError::Check(e.to_string()));
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(BenchError::Check("no master within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    conn.close().await;
    found
}

/// `kills` kills of the master, each followed by the killed replica's restart and the
/// cell's convergence; the figures are the median and the worst gap.
///
/// # Errors
/// A kill whose session did not survive, or a cell that did not recover.
pub async fn kills(cell: &mut RealCell, kills: usize) -> Result<Vec<Figure>, BenchError> {
    let mut done = Vec::new();
    for k in 0..kills {
        let master = find_master(cell).await?;
        let kill = one_kill(cell, master).await?;
        eprintln!(
            "chubby-bench: kill {} of {kills} (replica {master}): gap {} ms, {} errors",
            k + 1,
            kill.gap.as_millis(),
            kill.errors.len()
        );
        done.push(kill);
        // Back to three replicas, caught up, before the next kill.
        cell.spawn(master);
        let conn = cell.connect();
        let ids: Vec<usize> = (1..=cell.len()).collect();
        let at = cell
            .statuses(&conn)
            .await
            .into_iter()
            .flatten()
            .map(|s| s.applied)
            .max();
        cell.wait_converged(&conn, &ids, at.unwrap_or_default(), Duration::from_secs(60))
            .await;
        conn.close().await;
    }
    Ok(figures(&done))
}

/// The median and the worst gap of `kills`, and the errors seen.
#[must_use]
pub fn figures(kills: &[Kill]) -> Vec<Figure> {
    let mut gaps: Vec<Duration> = kills.iter().map(|k| k.gap).collect();
    gaps.sort_unstable();
    let Some(&worst) = gaps.last() else {
        return Vec::new();
    };
    let median = gaps[gaps.len() / 2];
    let errors: Vec<&String> = kills.iter().flat_map(|k| &k.errors).collect();
    let all: Vec<String> = kills
        .iter()
        .map(|k| k.gap.as_millis().to_string())
        .collect();
    let sessions = kills.iter().map(|k| k.sessions).max().unwrap_or(0);
    let detail = format!(
        "{} kills -9 of the master, each to the completion of the first write sent after \
         it (ms, in order: {}); up to {sessions} session(s) in the cell; the session survived \
         every kill; {} client-visible errors{}",
        kills.len(),
        all.join(", "),
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    vec![
        Figure::ms("fail-over gap", median, detail.clone()),
        Figure::ms("fail-over gap, worst", worst, detail.clone()),
        Figure {
            name: "fail-over: client-visible errors".to_owned(),
            #[allow(clippy::cast_precision_loss)]
            value: errors.len() as f64,
            unit: "errors",
            detail,
        },
    ]
}

/// One kill: one session writes in a loop; the master is killed with `kill -9`; the gap
/// is the time from the kill to the completion of the first write sent after it. The
/// session must survive (no expiry, same session) and hear the fail-over event; writes
/// that fail around the kill are counted.
///
/// # Errors
/// The session did not survive, or no write completed within 60 s.
pub async fn one_kill(cell: &mut RealCell, master: usize) -> Result<Kill, BenchError> {
    let file = CellFile::load(cell.cell_file())
        .map_err(|e| BenchError::Check(format!("cell file: {e}")))?;
    let client = Arc::new(session(&file).await?);
    let before = client.session();
    let handle = write_handle(&client, "failover").await?;
    let mut events = client.subscribe();
    // (sent, completed, result) of every write.
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, Result<(), String>)>();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (Arc::clone(&client), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let r = client.set_contents(handle, value(i), None).await;
                i += 1;
                let r = r.map(|_| ()).map_err(|e| e.to_string());
                if tx.send((sent, Instant::now(), r)).is_err() {
                    break;
                }
            }
        })
    };
    // Steady state first: a few hundred writes.
    let mut steady = 0;
    while steady < 200 {
        match rx.recv().await {
            Some((_, _, Ok(()))) => steady += 1,
            Some((_, _, Err(e))) => {
                return Err(BenchError::Check(format!("write before the kill: {e}")))
            }
            None => return Err(BenchError::Check("the writer stopped".into())),
        }
    }
    // Every session the new master restores must acknowledge the fail-over (or end) before
    // writes proceed: report how many there were.
    let sessions = cell.statuses(&cell.connect()).await[master - 1]
        .as_ref()
        .map_or(0, |s| s.sessions);
    let killed = Instant::now();
    cell.kill9(master);
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            // A write sent after the kill went through the new master.
            Ok(Some((sent, done, Ok(())))) if sent >= killed => break done,
            Ok(Some((_, _, Ok(())))) => {}
            Ok(Some((_, _, Err(e)))) => errors.push(e),
            Ok(None) => return Err(BenchError::Check("the writer stopped".into())),
            Err(_) => {
                return Err(BenchError::Check(
                    "no write completed within 60 s of killing the master".into(),
                ))
            }
        }
    };
    let gap = first.duration_since(killed);
    // The event arrives with the first KeepAlive the new master answers, which may be after
    // the first write.
    let heard = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::FailOver) => break true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break false,
            }
        }
    })
    .await
    .unwrap_or(false);
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let status = client.status();
    if status != SessionStatus::Safe || client.session() != before {
        return Err(BenchError::Check(format!(
            "the session did not survive the fail-over: {status:?}"
        )));
    }
    if !heard {
        return Err(BenchError::Check(
            "no fail-over event reached the client".into(),
        ));
    }
    if let Ok(client) = Arc::try_unwrap(client) {
        client.shutdown().await;
    }
    Ok(Kill {
        gap,
        errors,
        sessions,
    })
}
