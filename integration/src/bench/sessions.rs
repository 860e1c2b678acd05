//! `chubby-bench --sessions N,N,...`: how many sessions one cell holds and what each costs
//! the master (issue 22, Chubby §3.1: a master served 90,000 clients at once).
//!
//! The load is real sessions, set up and kept as the client library keeps them: each one is
//! created by the master (a `CreateSession` write), opens two handles on existing files (kept
//! in the master's memory), caches three paths (a `GetContentsAndStat` and two `StatPath`s,
//! each recording the session as a cacher at the master), and then sends a KeepAlive as soon
//! as the previous one is answered (the master parks it and answers it 8 s later with 12 s
//! more lease, or at once with a notice). So the master does for each load session all the
//! work it does for a client's session. What is shared: up to [`SESSIONS_PER_CONN`] sessions
//! use one QUIC connection to the master (a connection carries at most 100 requests at once,
//! and each session's parked KeepAlive holds one), so the master keeps far fewer
//! connections, and answers far fewer QUIC pings (a client's connection pings every 100 ms
//! when quiet), than it would for as many separate client machines. Chubby's answer to that
//! cost is its proxies (Chubby §3.1), which issue 22 builds next.
//!
//! While each count of sessions is held, a separate client (the library, its own session
//! and connection, on a thread and runtime of its own so that it never waits behind the
//! load's tasks) writes its own file at a steady pace and then reads a cached file as fast
//! as it can, so that the cost of the sessions to everyone else shows as latency. (With
//! the client on the load's runtime, its write p99 at 100,000 sessions was 39 ms while the
//! master answered every write within 5 ms: the replies waited behind bursts of KeepAlive
//! answers in this process.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chubby_client::client::{Client, OpenOptions};
use chubby_client::conn::{CellConn, ClientError};
use chubby_protocol::client_msg::{Answer, Call, CallError, Reply, Request};
use chubby_protocol::{Ballot, Refusal, SessionId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::workloads::{ctx, session, value, write_handle, BenchError};
use super::{proc_cpu_seconds, proc_rss_mb, Figure, Latencies};
use crate::real_cell::{sample, RealCell};

/// Load sessions per QUIC connection (below the 100 requests a connection carries at once:
/// a parked KeepAlive each, and room for setup calls).
pub const SESSIONS_PER_CONN: usize = 80;
/// Connections of the load per QUIC endpoint (UDP socket).
const CONNS_PER_ENDPOINT: usize = 32;
/// Load sessions being set up at once.
const SETUP_PARALLEL: usize = 256;
/// Files each load session opens a handle on (the first one it also reads, and caches).
const OPENED: [&str; 2] = ["/load/opened-0", "/load/opened-1"];
/// Paths each load session caches the metadata of.
const CACHED: [&str; 2] = ["/load/cached-0", "/load/cached-1"];
/// How long a call of the load may take.
const CALL: Duration = Duration::from_secs(30);
/// The separate client's writes per second while sessions are held.
const PROBE_WRITES_PER_S: u64 = 25;
/// How long the separate client reads its cached file, after its writes.
const PROBE_READS: Duration = Duration::from_secs(1);
/// Set-up failures (of those asked) past which the count is not raised further.
const SETUP_FAILURES_MAX: f64 = 0.01;

/// What the load's sessions saw.
#[derive(Default)]
struct Counters {
    established: AtomicU64,
    setup_failed: AtomicU64,
    lost: AtomicU64,
    keepalives: AtomicU64,
    keepalive_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn note(&self, what: String) {
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(what);
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A load session set up: its connection, id, epoch and lease.
type SetUp = (Arc<CellConn>, SessionId, Ballot, u64);

/// The load: its connections, and a task per session keeping it alive (aborted when
/// dropped).
struct Load {
    /// The master's index in the cell file.
    master: usize,
    conns: Vec<Arc<CellConn>>,
    keepers: JoinSet<()>,
    counters: Arc<Counters>,
    asked: usize,
}

impl Load {
    fn new(master: usize) -> Load {
        Load {
            master,
            conns: Vec::new(),
            keepers: JoinSet::new(),
            counters: Arc::new(Counters::default()),
            asked: 0,
        }
    }

    /// The connection for the `i`-th session, made on first use.
    fn conn_for(&mut self, base: &CellConn, i: usize) -> Result<Arc<CellConn>, ClientError> {
        let k = i / SESSIONS_PER_CONN;
        while self.conns.len() <= k {
            // A fresh endpoint every CONNS_PER_ENDPOINT connections, sharing it otherwise.
            let conn = match self.conns.last() {
                Some(last) if !self.conns.len().is_multiple_of(CONNS_PER_ENDPOINT) => {
                    last.sibling()
                }
                _ => CellConn::new(base.cell_file())?,
            };
            self.conns.push(Arc::new(conn));
        }
        Ok(Arc::clone(&self.conns[k]))
    }

    /// Sets up sessions until `target` were asked for; returns how long it took.
    ///
    /// # Errors
    /// A connection that cannot be made (certificates, addresses).
    async fn grow(&mut self, base: &CellConn, target: usize) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let gate = Arc::new(Semaphore::new(SETUP_PARALLEL));
        let mut setting_up = JoinSet::new();
        while self.asked < target {
            let conn = ctx("connecting the load", self.conn_for(base, self.asked))?;
            self.asked += 1;
            let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
                break;
            };
            let counters = Arc::clone(&self.counters);
            setting_up.spawn(async move {
                let r = set_up(&conn).await;
                drop(permit);
                match r {
                    Ok((session, epoch, lease_ms)) => {
                        counters.established.fetch_add(1, Ordering::Relaxed);
                        Some((conn, session, epoch, lease_ms))
                    }
                    Err(e) => {
                        counters.setup_failed.fetch_add(1, Ordering::Relaxed);
                        counters.note(format!("setting up a session: {e}"));
                        None
                    }
                }
            });
            while let Some(done) = setting_up.try_join_next() {
                self.keep(done);
            }
            if self.asked.is_multiple_of(10_000) {
                eprintln!(
                    "chubby-bench: sessions: {} asked, {} set up, {} failed, {:.0} s",
                    self.asked,
                    self.counters.established.load(Ordering::Relaxed),
                    self.counters.setup_failed.load(Ordering::Relaxed),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        while let Some(done) = setting_up.join_next().await {
            self.keep(done);
        }
        Ok(start.elapsed())
    }

    fn keep(&mut self, done: Result<Option<SetUp>, tokio::task::JoinError>) {
        if let Ok(Some((conn, session, epoch, lease_ms))) = done {
            let counters = Arc::clone(&self.counters);
            self.keepers.spawn(keep_alive(
                conn,
                self.master,
                session,
                epoch,
                lease_ms,
                counters,
            ));
        }
    }
}

/// One load session: created, two handles opened, three paths cached. Returns the session,
/// the epoch and the lease.
async fn set_up(conn: &CellConn) -> Result<(SessionId, Ballot, u64), String> {
    let unexpected = |what: &str, a: &Answer| format!("{what}: unexpected answer {a:?}");
    let (session, epoch, lease_ms) = match conn.call(Call::CreateSession).await {
        Ok(Answer::Session {
            session,
            epoch,
            lease_ms,
        }) => (session, epoch, lease_ms),
        Ok(other) => return Err(unexpected("CreateSession", &other)),
        Err(e) => return Err(format!("CreateSession: {e}")),
    };
    let call = |c: Call| conn.call_in(Some(epoch), c, CALL);
    for (i, path) in OPENED.iter().enumerate() {
        let args = OpenOptions::read().into_args(session, path);
        let handle = match call(Call::Open(args)).await {
            Ok(Answer::Opened { handle, .. }) => handle,
            Ok(other) => return Err(unexpected("Open", &other)),
            Err(e) => return Err(format!("Open {path}: {e}")),
        };
        if i == 0 {
            match call(Call::GetContentsAndStat { session, handle }).await {
                Ok(Answer::Contents { .. }) => {}
                Ok(other) => return Err(unexpected("GetContentsAndStat", &other)),
                Err(e) => return Err(format!("GetContentsAndStat {path}: {e}")),
            }
        }
    }
    for path in CACHED {
        let stat = Call::StatPath {
            session,
            path: path.to_owned(),
        };
        match call(stat).await {
            Ok(Answer::Stat { stat: Some(_), .. }) => {}
            Ok(other) => return Err(unexpected("StatPath", &other)),
            Err(e) => return Err(format!("StatPath {path}: {e}")),
        }
    }
    Ok((session, epoch, lease_ms))
}

/// Keeps one load session alive as the client library does: the next KeepAlive goes as
/// soon as the last is answered, acknowledging every notice it carried. It goes straight
/// to the master (replica `master`, counted from 0): the library's watch for a silent
/// master polls its connection every 50 ms per waiting call, which is nothing for one
/// session and two million wake-ups a second for 100,000, and nothing here kills it.
async fn keep_alive(
    conn: Arc<CellConn>,
    master: usize,
    session: SessionId,
    mut epoch: Ballot,
    lease_ms: u64,
    counters: Arc<Counters>,
) {
    let mut acked = 0;
    loop {
        let request = Request {
            epoch: Some(epoch),
            call: Call::KeepAlive { session, acked },
            number: None,
        };
        let reply = conn
            .call_replica(master, &request, Duration::from_millis(lease_ms))
            .await
            .and_then(|r| match r {
                Reply::Ok(answer) => Ok(answer),
                Reply::Err(e) => Err(ClientError::Call(e)),
            });
        match reply {
            Ok(Answer::KeepAlive(reply)) => {
                counters.keepalives.fetch_add(1, Ordering::Relaxed);
                if let Some(last) = reply.notices.last() {
                    acked = last.seq;
                }
                continue;
            }
            Ok(other) => {
                counters.note(format!("KeepAlive: unexpected answer {other:?}"));
            }
            Err(ClientError::Call(CallError::WrongEpoch { current })) => {
                epoch = current;
                acked = 0;
                continue;
            }
            Err(ClientError::Call(CallError::Refused(Refusal::SessionExpired))) => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                counters.note(format!("session {} expired", session.0));
                return;
            }
            Err(e) => counters.note(format!("KeepAlive: {e}")),
        }
        counters.keepalive_errors.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The master's KeepAlives answered so far.
fn keepalives_answered(cell: &RealCell, master: usize) -> f64 {
    sample(
        &cell.metrics(master),
        "chubby_requests_total{call=\"KeepAlive\",outcome=\"ok\"}",
    )
    .unwrap_or(0.0)
}

/// The files the load opens and caches, and the separate client's.
async fn prepare(client: &Client) -> Result<(), BenchError> {
    match client.mkdir("/load", false).await {
        Ok(_) | Err(ClientError::Call(CallError::Refused(Refusal::Exists))) => {}
        Err(e) => return ctx("creating /load", Err(e)),
    }
    for path in OPENED.iter().chain(CACHED.iter()) {
        ctx(
            &format!("writing {path}"),
            client.put(path, value(0), None).await,
        )?;
    }
    Ok(())
}

/// What the separate client saw while the sessions were held.
struct Probe {
    writes: Latencies,
    reads: u64,
    read_span: Duration,
}

/// Writes at a steady pace for `span`, then reads a cached file for [`PROBE_READS`].
async fn probe(client: &Client, span: Duration) -> Result<Probe, BenchError> {
    let handle = write_handle(client, "sessions-probe").await?;
    let mut writes = Latencies::default();
    let pace = Duration::from_millis(1000 / PROBE_WRITES_PER_S);
    let start = tokio::time::Instant::now();
    let mut next = start;
    let mut i = 0u64;
    while next.duration_since(start) < span {
        tokio::time::sleep_until(next).await;
        let t = Instant::now();
        ctx(
            "probe write",
            client.set_contents(handle, value(i), None).await,
        )?;
        writes.record(t.elapsed());
        i += 1;
        next += pace;
    }
    ctx("probe close", client.try_close(handle).await)?;
    let (path, mut reads) = (CACHED[0], 0u64);
    let t = Instant::now();
    while t.elapsed() < PROBE_READS {
        ctx("probe read", client.get(path).await)?;
        reads += 1;
    }
    Ok(Probe {
        writes,
        reads,
        read_span: t.elapsed(),
    })
}

/// A separate client on a thread and current-thread runtime of its own: asked for a
/// span, it answers with what it measured.
struct ProbeThread {
    ask: tokio::sync::mpsc::Sender<(
        Duration,
        tokio::sync::oneshot::Sender<Result<Probe, BenchError>>,
    )>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeThread {
    /// Starts the client and has it write the files the load opens and caches.
    async fn start(file: chubby_protocol::cell::CellFile) -> Result<ProbeThread, BenchError> {
        let (ask, mut asked) = tokio::sync::mpsc::channel::<(
            Duration,
            tokio::sync::oneshot::Sender<Result<Probe, BenchError>>,
        )>(1);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::Check(format!("cannot start the probe's runtime: {e}")))?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let client = match session(&file).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let prepared = prepare(&client).await;
                let ok = prepared.is_ok();
                let _ = ready_tx.send(prepared);
                if ok {
                    while let Some((span, reply)) = asked.recv().await {
                        let _ = reply.send(probe(&client, span).await);
                    }
                }
                client.shutdown().await;
            });
        });
        let probe = ProbeThread {
            ask,
            thread: Some(thread),
        };
        match ready.await {
            Ok(r) => r.map(|()| probe),
            Err(_) => Err(BenchError::Check("the probe's thread ended".into())),
        }
    }

    async fn measure(&self, span: Duration) -> Result<Probe, BenchError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || BenchError::Check("the probe's thread ended".into());
        self.ask.send((span, tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for ProbeThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; it shuts its session down.
        let (closed, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.ask, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Holds 0, then each count of `counts` sessions (in rising order) on the cell for `hold`
/// each, and measures. Stops raising the count once sessions fail to be set up or are
/// lost, and says so.
///
/// # Errors
/// The separate client's failures (the load's own are figures).
pub async fn sessions(
    cell: &RealCell,
    master: usize,
    counts: &[usize],
    hold: Duration,
) -> Result<Vec<Figure>, BenchError> {
    let file = chubby_protocol::cell::CellFile::load(cell.cell_file())
        .map_err(|e| BenchError::Check(format!("cell file: {e}")))?;
    let probe = ProbeThread::start(file.clone()).await?;
    let base = ctx("connecting the load", CellConn::new(&file))?;
    // Replica ids count from 1 in the cell file's order.
    let mut load = Load::new(master.saturating_sub(1));
    let mut figures = Vec::new();
    let pid = cell.pid(master);
    let me = std::process::id();
    let mut baseline_rss = None;
    let mut counts: Vec<usize> = counts.to_vec();
    counts.sort_unstable();
    counts.dedup();
    for n in std::iter::once(0).chain(counts) {
        let took = load.grow(&base, n).await?;
        let c = Arc::clone(&load.counters);
        let established = c.established.load(Ordering::Relaxed);
        let failed = c.setup_failed.load(Ordering::Relaxed);
        // Settle: every new session's first KeepAlive is parked.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (ka0, cpu0, my_cpu0) = (
            keepalives_answered(cell, master),
            proc_cpu_seconds(pid).unwrap_or(0.0),
            proc_cpu_seconds(me).unwrap_or(0.0),
        );
        let lost0 = c.lost.load(Ordering::Relaxed);
        let t = Instant::now();
        let p = probe.measure(hold).await?;
        let span = t.elapsed().as_secs_f64();
        let (ka1, cpu1, my_cpu1) = (
            keepalives_answered(cell, master),
            proc_cpu_seconds(pid).unwrap_or(0.0),
            proc_cpu_seconds(me).unwrap_or(0.0),
        );
        let rss = proc_rss_mb(pid).unwrap_or(0.0);
        let base_rss = *baseline_rss.get_or_insert(rss);
        let replicas: Vec<String> = (1..=cell.len())
            .map(|id| format!("r{id} {:.0} MB", proc_rss_mb(cell.pid(id)).unwrap_or(0.0)))
            .collect();
        let lost = c.lost.load(Ordering::Relaxed);
        let ka_errors = c.keepalive_errors.load(Ordering::Relaxed);
        let held = established.saturating_sub(lost);
        #[allow(clippy::cast_precision_loss)]
        let per_session = |v: f64| if held > 0 { v / held as f64 } else { 0.0 };
        let label = format!("{n} sessions");
        let detail = format!(
            "{n} asked, {established} set up ({failed} failed) in {:.1} s, {lost} lost \
             ({} during the hold), {ka_errors} KeepAlive errors; {} load connections; \
             held {span:.0} s; replicas' RSS {}; this process {:.0} MB, {:.0}% of a core{}",
            took.as_secs_f64(),
            lost - lost0,
            load.conns.len(),
            replicas.join(", "),
            proc_rss_mb(me).unwrap_or(0.0),
            (my_cpu1 - my_cpu0) / span * 100.0,
            c.first_error()
                .map_or_else(String::new, |e| format!("; first error: {e}")),
        );
        // The whole story once per count, on its first line; the rest say what they are.
        let fig = |name: &str, value: f64, unit: &'static str, what: &str| Figure {
            name: format!("{label}: {name}"),
            value,
            unit,
            detail: if name == "held" {
                detail.clone()
            } else {
                what.to_owned()
            },
        };
        let probe_detail = format!(
            "a separate client, {} writes at {PROBE_WRITES_PER_S}/s of its own file while \
             the sessions are held",
            p.writes.len()
        );
        #[allow(clippy::cast_precision_loss)]
        let first = figures.len();
        #[allow(clippy::cast_precision_loss)]
        figures.extend([
            fig("held", held as f64, "sessions", ""),
            fig(
                "master KeepAlives",
                (ka1 - ka0) / span,
                "ops/s",
                "KeepAlives the master answered",
            ),
            fig(
                "master CPU",
                (cpu1 - cpu0) / span * 100.0,
                "% core",
                "user+system CPU of the master process",
            ),
            fig(
                "master CPU per session",
                per_session((cpu1 - cpu0) / span * 1e6),
                "us/s",
                "the master's CPU over the sessions held (the separate client's share included)",
            ),
            fig(
                "master RSS",
                rss,
                "MB",
                "resident memory of the master process",
            ),
            fig(
                "master RSS per session",
                per_session((rss - base_rss) * 1024.0),
                "KB",
                "the master's resident memory over that with no sessions, per session held",
            ),
            Figure::ms(
                &format!("{label}: write p50"),
                p.writes.percentile(50),
                probe_detail.clone(),
            ),
            Figure::ms(
                &format!("{label}: write p99"),
                p.writes.percentile(99),
                probe_detail,
            ),
            Figure::rate(
                &format!("{label}: cached reads"),
                p.reads,
                p.read_span,
                "the separate client reading a file by path from its cache, 1 s".to_owned(),
            ),
        ]);
        for f in &figures[first..] {
            eprintln!("chubby-bench: {} = {:.2} {}", f.name, f.value, f.unit);
        }
        #[allow(clippy::cast_precision_loss)]
        let failing = failed as f64 > SETUP_FAILURES_MAX * n.max(1) as f64;
        if lost > 0 || failing {
            figures.push(Figure {
                name: format!("stopped at {n} sessions"),
                value: 0.0,
                unit: "",
                detail: format!(
                    "not raised further: {lost} sessions lost, {failed} failed to be set up{}",
                    c.first_error()
                        .map_or_else(String::new, |e| format!("; first error: {e}"))
                ),
            });
            break;
        }
    }
    load.keepers.abort_all();
    drop(probe);
    Ok(figures)
}
