//! The workloads of `chubby-bench`, each through real sessions of the client library
//! ([`Client`]) against a running cell: what an application sees, KeepAlives included.
//!
//! Every operation is checked: a workload that meets an error stops and reports it rather
//! than print a figure that hides failures.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chubby_client::client::{Client, ClientOptions, OpenOptions};
use chubby_client::conn::ClientError;
use chubby_protocol::cell::CellFile;
use chubby_protocol::client_msg::CallError;
use chubby_protocol::{HandleId, LockMode, Refusal};

use super::{Figure, Latencies};

/// Directory every workload works in.
pub const BENCH_DIR: &str = "/bench";

/// Contents written by the write workloads: small, like a lock file's or a config
/// pointer's.
const VALUE_BYTES: usize = 64;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Span of each throughput workload.
    pub span: Duration,
    /// Latency samples of the 1-client write workload.
    pub samples: usize,
    /// Clients of the many-client workloads.
    pub clients: usize,
    /// Clients contending for one lock.
    pub contenders: usize,
}

/// Why a workload stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A client call failed.
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: ClientError,
    },
    /// The cell behaved other than it must.
    #[error("{0}")]
    Check(String),
}

pub(super) fn ctx<T>(what: &str, r: Result<T, ClientError>) -> Result<T, BenchError> {
    r.map_err(|source| BenchError::Client {
        what: what.to_owned(),
        source,
    })
}

/// A session with the bench directory made.
pub(super) async fn session(cell: &CellFile) -> Result<Client, BenchError> {
    let client = ctx(
        "starting a session",
        Client::connect(cell, ClientOptions::default()).await,
    )?;
    match client.mkdir(BENCH_DIR, false).await {
        Ok(_) | Err(ClientError::Call(CallError::Refused(Refusal::Exists))) => Ok(client),
        Err(e) => ctx("creating the bench directory", Err(e)),
    }
}

/// A write handle on `/bench/<name>`.
pub(super) async fn write_handle(client: &Client, name: &str) -> Result<HandleId, BenchError> {
    let path = format!("{BENCH_DIR}/{name}");
    let opened = ctx(
        &format!("opening {path}"),
        client.open(&path, OpenOptions::write()).await,
    )?;
    Ok(opened.handle)
}

pub(super) fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.resize(VALUE_BYTES, b'.');
    v
}

/// 1-client write latency: `samples` whole-file writes (SetContents on an open handle, one
/// Paxos instance each), one at a time, after a warm-up.
///
/// # Errors
/// A failed write.
pub async fn write_latency(cell: &CellFile, s: &Settings) -> Result<Vec<Figure>, BenchError> {
    let client = session(cell).await?;
    let handle = write_handle(&client, "latency").await?;
    for i in 0..20 {
        ctx(
            "warm-up write",
            client.set_contents(handle, value(i), None).await,
        )?;
    }
    let mut lat = Latencies::default();
    for i in 0..s.samples as u64 {
        let start = Instant::now();
        ctx("write", client.set_contents(handle, value(i), None).await)?;
        lat.record(start.elapsed());
    }
    client.shutdown().await;
    let detail = format!(
        "1 client, {} writes of {VALUE_BYTES} B, one at a time",
        lat.len()
    );
    Ok(vec![
        Figure::ms("write latency p50", lat.percentile(50), detail.clone()),
        Figure::ms("write latency p99", lat.percentile(99), detail),
    ])
}

/// What each client of a throughput workload does in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loop {
    /// SetContents on its own file.
    Write,
    /// GetContentsAndStat through its handle: always a round trip to the master.
    UncachedRead,
    /// The whole file by path through the client cache.
    CachedRead,
    /// Acquire then Release of the handle's lock.
    LockCycle,
}

/// The shared state of one throughput run.
struct Run {
    deadline: Instant,
    /// Index of the client that last acquired the lock, for counting hand-offs.
    last_holder: AtomicUsize,
    handoffs: AtomicU64,
}

/// Runs `kind` on every `(client, handle, path)` until the span ends; returns the count of
/// completed operations and the clients.
async fn run_loop(
    clients: Vec<(Client, HandleId, String)>,
    kind: Loop,
    span: Duration,
) -> Result<(u64, Duration, Vec<Client>, u64), BenchError> {
    let start = Instant::now();
    let run = Arc::new(Run {
        deadline: start + span,
        last_holder: AtomicUsize::new(usize::MAX),
        handoffs: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for (me, (client, handle, path)) in clients.into_iter().enumerate() {
        let run = Arc::clone(&run);
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            let result = loop {
                if Instant::now() >= run.deadline {
                    break Ok(());
                }
                let r = match kind {
                    Loop::Write => client
                        .set_contents(handle, value(count), None)
                        .await
                        .map(|_| ()),
                    Loop::UncachedRead => client.read(handle).await.map(|_| ()),
                    Loop::CachedRead => client.get(&path).await.map(|_| ()),
                    Loop::LockCycle => match client.acquire(handle, LockMode::Exclusive).await {
                        Ok(_) => {
                            if run.last_holder.swap(me, Ordering::SeqCst) != me {
                                run.handoffs.fetch_add(1, Ordering::Relaxed);
                            }
                            client.release(handle).await
                        }
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = r {
                    break Err(e);
                }
                count += 1;
            };
            (client, count, result)
        }));
    }
    let mut total = 0;
    let mut clients = Vec::new();
    let mut failure = None;
    for task in tasks {
        let (client, count, result) = task
            .await
            .map_err(|e| BenchError::Check(format!("a client task failed: {e}")))?;
        total += count;
        clients.push(client);
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    let span = start.elapsed();
    if let Some(e) = failure {
        for c in clients {
            c.shutdown().await;
        }
        return ctx(&format!("{kind:?}"), Err(e));
    }
    Ok((total, span, clients, run.handoffs.load(Ordering::Relaxed)))
}

/// `n` sessions, each with a write handle on `/bench/<prefix>` (shared) or
/// `/bench/<prefix>-<i>` (own).
async fn sessions_with_handles(
    cell: &CellFile,
    n: usize,
    prefix: &str,
    shared: bool,
) -> Result<Vec<(Client, HandleId, String)>, BenchError> {
    let mut out = Vec::new();
    for i in 0..n {
        let client = session(cell).await?;
        let name = if shared {
            prefix.to_owned()
        } else {
            format!("{prefix}-{i}")
        };
        let handle = write_handle(&client, &name).await?;
        out.push((client, handle, format!("{BENCH_DIR}/{name}")));
    }
    Ok(out)
}

async fn shutdown_all(clients: Vec<Client>) {
    for c in clients {
        c.shutdown().await;
    }
}

/// Many-client write throughput: `clients` sessions each writing its own file in a loop.
///
/// # Errors
/// A failed write.
pub async fn write_throughput(cell: &CellFile, s: &Settings) -> Result<Vec<Figure>, BenchError> {
    let clients = sessions_with_handles(cell, s.clients, "tput", false).await?;
    let (count, span, clients, _) = run_loop(clients, Loop::Write, s.span).await?;
    shutdown_all(clients).await;
    Ok(vec![Figure::rate(
        "write throughput",
        count,
        span,
        format!(
            "{} clients, own file each, {VALUE_BYTES} B, {:.1} s",
            s.clients,
            span.as_secs_f64()
        ),
    )])
}

/// Read throughput: uncached reads (a round trip to the master each) with 1 and `clients`
/// sessions, and cached reads (answered by the client's cache) with 1 session.
///
/// # Errors
/// A failed read, or cached reads that were not answered from the cache.
pub async fn reads(cell: &CellFile, s: &Settings) -> Result<Vec<Figure>, BenchError> {
    let mut figures = Vec::new();
    let writer = session(cell).await?;
    let handle = write_handle(&writer, "read").await?;
    ctx(
        "writing the read file",
        writer.set_contents(handle, value(0), None).await,
    )?;
    writer.shutdown().await;
    let mut counts = vec![1];
    if s.clients > 1 {
        counts.push(s.clients);
    }
    for n in counts {
        let clients = sessions_with_handles(cell, n, "read", true).await?;
        let (count, span, clients, _) = run_loop(clients, Loop::UncachedRead, s.span).await?;
        shutdown_all(clients).await;
        figures.push(Figure::rate(
            &format!(
                "uncached reads, {n} client{}",
                if n == 1 { "" } else { "s" }
            ),
            count,
            span,
            format!(
                "GetContentsAndStat round trips to the master, {:.1} s",
                span.as_secs_f64()
            ),
        ));
    }
    let clients = sessions_with_handles(cell, 1, "read", true).await?;
    let (count, span, clients, _) = run_loop(clients, Loop::CachedRead, s.span).await?;
    let stats = clients.first().map(Client::cache_stats).unwrap_or_default();
    shutdown_all(clients).await;
    if stats.hits + 1 < count {
        return Err(BenchError::Check(format!(
            "cached reads: {count} reads but only {} cache hits",
            stats.hits
        )));
    }
    figures.push(Figure::rate(
        "cached reads, 1 client",
        count,
        span,
        format!(
            "whole file by path from the client cache ({} hits, {} misses), {:.1} s",
            stats.hits,
            stats.misses,
            span.as_secs_f64()
        ),
    ));
    Ok(figures)
}

/// Lock round trips: one session acquiring and releasing an uncontended lock, then
/// `contenders` sessions contending for one lock (each acquisition by another session than
/// the last holder is a hand-off).
///
/// # Errors
/// A failed lock call.
pub async fn locks(cell: &CellFile, s: &Settings) -> Result<Vec<Figure>, BenchError> {
    let clients = sessions_with_handles(cell, 1, "lock-alone", true).await?;
    let (count, span, clients, _) = run_loop(clients, Loop::LockCycle, s.span).await?;
    shutdown_all(clients).await;
    let mut figures = vec![Figure::rate(
        "lock acquire+release",
        count,
        span,
        format!("1 client, uncontended, {:.1} s", span.as_secs_f64()),
    )];
    let clients = sessions_with_handles(cell, s.contenders, "lock-contended", true).await?;
    let (count, span, clients, handoffs) = run_loop(clients, Loop::LockCycle, s.span).await?;
    shutdown_all(clients).await;
    figures.push(Figure::rate(
        "contended lock hand-offs",
        handoffs,
        span,
        format!(
            "{} clients on one lock, {count} acquisitions, {:.1} s",
            s.contenders,
            span.as_secs_f64()
        ),
    ));
    Ok(figures)
}

/// Session death as a lock holder's: a `session-holder` process takes an exclusive lock
/// (lock-delay 1 s), a waiter queues behind it, the holder is killed with `kill -9`. The
/// master releases the lock when the holder's session lease (12 s, from its last
/// KeepAlive) ends, and grants it to the waiter when the lock-delay has passed.
///
/// # Errors
/// The holder did not start, or the waiter was never granted the lock.
pub async fn holder_expiry(cell_path: &std::path::Path) -> Result<Vec<Figure>, BenchError> {
    use std::io::BufRead;
    let file = CellFile::load(cell_path).map_err(|e| BenchError::Check(format!("{e}")))?;
    let bin = crate::real_cell::find_binary("session-holder").map_err(BenchError::Check)?;
    let waiter = Arc::new(session(&file).await?);
    let lock_path = format!("{BENCH_DIR}/expiry-lock");
    let mut holder = std::process::Command::new(bin)
        .arg(cell_path)
        .arg(format!("{BENCH_DIR}/expiry-holder"))
        .arg(&lock_path)
        .arg("1000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Check(format!("session-holder: {e}")))?;
    let stdout = holder.stdout.take();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        line
    })
    .await
    .unwrap_or_default();
    let kill = |h: &mut std::process::Child| {
        let _ = h.kill();
        let _ = h.wait();
    };
    if line.trim() != "holding" {
        kill(&mut holder);
        return Err(BenchError::Check(format!("session-holder said {line:?}")));
    }
    let handle = write_handle(&waiter, "expiry-lock").await?;
    let acquire = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.acquire(handle, LockMode::Exclusive).await })
    };
    // The waiter is queued at the master before the holder dies.
    let queued = Instant::now();
    loop {
        match waiter.lock_state(handle).await {
            Ok(chubby_protocol::client_msg::LockState::Waiting) => break,
            _ if queued.elapsed() > Duration::from_secs(10) => {
                kill(&mut holder);
                return Err(BenchError::Check("the waiter never queued".into()));
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let killed = Instant::now();
    kill(&mut holder);
    let granted = tokio::time::timeout(Duration::from_secs(60), acquire).await;
    let took = killed.elapsed();
    match granted {
        Ok(Ok(Ok(_))) => {}
        other => {
            return Err(BenchError::Check(format!(
                "the waiter was not granted the lock: {other:?}"
            )))
        }
    }
    if let Ok(w) = Arc::try_unwrap(waiter) {
        w.shutdown().await;
    }
    Ok(vec![Figure::ms(
        "holder kill -9 -> waiter acquires",
        took,
        "the dead holder's session ends when its lease lapses: the master answers its \
         parked KeepAlive 8 s after it arrived with 12 s more, so up to 20 s after the kill; \
         then its lock-delay of 1 s (default 15 s)"
            .to_owned(),
    )])
}
