//! `chubby-bench --soak`: many clients write for minutes while a CPU hog keeps every core
//! busy. A master lease of 300 ms buys a fail-over in well under a second; this shows it
//! does not also buy elections on a loaded machine (issue 21: zero elections, zero sessions
//! lost). The figures come from the replicas' own metrics (`chubby_elections_total`, the
//! epoch) and from every client's session and events.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chubby_client::client::ClientEvent;
use chubby_client::session::SessionStatus;
use chubby_protocol::cell::CellFile;

use super::workloads::{session, value, write_handle, BenchError};
use super::{Figure, Latencies};
use crate::real_cell::{sample, RealCell};

/// One busy-looping shell per core, killed when dropped.
struct CpuHogs(Vec<Child>);

impl CpuHogs {
    fn start(n: usize) -> Result<CpuHogs, BenchError> {
        let mut hogs = CpuHogs(Vec::new());
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| BenchError::Check(format!("cannot start a CPU hog: {e}")))?;
            hogs.0.push(child);
        }
        Ok(hogs)
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Elections started and the epoch, summed over the replicas' metrics pages.
fn elections_and_epochs(cell: &RealCell) -> (f64, Vec<f64>) {
    let mut elections = 0.0;
    let mut epochs = Vec::new();
    for id in 1..=cell.len() {
        let page = cell.metrics(id);
        elections += sample(&page, "chubby_elections_total").unwrap_or(0.0);
        epochs.push(sample(&page, "chubby_master_epoch").unwrap_or(0.0));
    }
    (elections, epochs)
}

/// What one soaking client saw.
struct ClientRun {
    writes: u64,
    latencies: Latencies,
    errors: Vec<String>,
    lost: bool,
    jeopardy: u64,
}

/// `clients` sessions write their own files for `span` beside a CPU hog on every core.
///
/// # Errors
/// A session that could not start; elections or lost sessions are figures, and also
/// an error after the figures are printed (the caller decides).
pub async fn soak(
    cell: &RealCell,
    clients: usize,
    span: Duration,
) -> Result<Vec<Figure>, BenchError> {
    let file = CellFile::load(cell.cell_file())
        .map_err(|e| BenchError::Check(format!("cell file: {e}")))?;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let (elections_before, epochs_before) = elections_and_epochs(cell);
    let hogs = CpuHogs::start(cores)?;
    let start = Instant::now();
    let deadline = start + span;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let client = Arc::new(session(&file).await?);
        let handle = write_handle(&client, &format!("soak-{i}")).await?;
        tasks.push(tokio::spawn(async move {
            let id = client.session();
            let mut events = client.subscribe();
            let mut run = ClientRun {
                writes: 0,
                latencies: Latencies::default(),
                errors: Vec::new(),
                lost: false,
                jeopardy: 0,
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                match client.set_contents(handle, value(run.writes), None).await {
                    Ok(_) => {
                        run.latencies.record(t.elapsed());
                        run.writes += 1;
                    }
                    Err(e) => run.errors.push(e.to_string()),
                }
                while let Ok(ev) = events.try_recv() {
                    match ev {
                        ClientEvent::Jeopardy => run.jeopardy += 1,
                        ClientEvent::Expired => run.lost = true,
                        _ => {}
                    }
                }
            }
            run.lost |= client.status() != SessionStatus::Safe || client.session() != id;
            if let Ok(client) = Arc::try_unwrap(client) {
                client.shutdown().await;
            }
            run
        }));
    }
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(
            task.await
                .map_err(|e| BenchError::Check(format!("a soak client failed: {e}")))?,
        );
    }
    let took = start.elapsed();
    drop(hogs);
    let (elections_after, epochs_after) = elections_and_epochs(cell);
    let elections = elections_after - elections_before;
    let epoch_moved = epochs_before.iter().zip(&epochs_after).any(|(b, a)| a != b);
    let lost = runs.iter().filter(|r| r.lost).count();
    let jeopardy: u64 = runs.iter().map(|r| r.jeopardy).sum();
    let errors: Vec<&String> = runs.iter().flat_map(|r| &r.errors).collect();
    let mut all = Latencies::default();
    for r in &runs {
        all.merge(&r.latencies);
    }
    let writes: u64 = runs.iter().map(|r| r.writes).sum();
    let detail = format!(
        "{clients} clients writing their own files for {:.0} s beside {cores} busy-looping \
         shells (one per core); epoch {}",
        took.as_secs_f64(),
        if epoch_moved { "changed" } else { "unchanged" }
    );
    let count = |name: &str, v: f64, unit: &'static str, detail: String| Figure {
        name: name.to_owned(),
        value: v,
        unit,
        detail,
    };
    let figures = vec![
        Figure::rate("soak: writes", writes, took, detail.clone()),
        Figure::ms("soak: write p50", all.percentile(50), detail.clone()),
        Figure::ms("soak: write p99", all.percentile(99), detail.clone()),
        Figure::ms("soak: slowest write", all.percentile(100), detail.clone()),
        count("soak: elections", elections, "count", detail.clone()),
        #[allow(clippy::cast_precision_loss)]
        count("soak: sessions lost", lost as f64, "count", detail.clone()),
        #[allow(clippy::cast_precision_loss)]
        count(
            "soak: jeopardy events",
            jeopardy as f64,
            "count",
            detail.clone(),
        ),
        #[allow(clippy::cast_precision_loss)]
        count(
            "soak: client-visible errors",
            errors.len() as f64,
            "count",
            errors
                .first()
                .map_or_else(|| detail.clone(), |e| format!("{detail}; first: {e}")),
        ),
    ];
    Ok(figures)
}
