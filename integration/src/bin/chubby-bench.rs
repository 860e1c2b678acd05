//! `chubby-bench`: starts a 3-replica cell of real `chubby-server` processes on loopback,
//! runs the workloads of `chubby_integration::bench` through real client sessions, and
//! prints a table of figures. Build the release binaries first:
//!
//! ```text
//! cargo build --release --bins && target/release/chubby-bench
//! target/release/chubby-bench --seconds 10 --json     # longer spans, JSON lines
//! bash ../shared/bench/peers/setup.sh                 # once: etcd, ZooKeeper, Python clients
//! target/release/chubby-bench --peers ../shared/bench/peers   # side by side, in one run
//! ```
//!
//! With `--peers`, the run is interleaved: etcd (the harness, fresh 3-member cluster), then
//! chubby through its Rust client, then ZooKeeper, then chubby through its mount driven by
//! the harness's own Python `fs` backend; the comparison table (Markdown) follows chubby's
//! own figures on standard output.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chubby_integration::bench::workloads::{self, BenchError, Settings};
use chubby_integration::bench::{
    compare, failover, json_lines, peers, proc_cpu_seconds, proc_rss_mb, sessions, soak, table,
    Figure,
};
use chubby_integration::real_cell::{find_binary, sample, RealCell};
use chubby_protocol::cell::CellFile;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "chubby-bench",
    about = "Measure a local 3-replica chubby cell: write latency and throughput, cached and \
             uncached reads, lock round trips and hand-offs, and the fail-over gap",
    long_about = "Starts a cell of real chubby-server processes (beside this executable; build \
                  them with `cargo build --release --bins`) on loopback, with every replica's \
                  store in a temporary directory under --dir (synced to disk as in production), \
                  runs each workload through real client sessions and prints one line per \
                  figure. The cell is stopped at the end, also on Ctrl-C."
)]
struct Cli {
    /// Seconds each throughput workload runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Writes timed for the 1-client latency figures.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    samples: u64,
    /// Clients of the many-client workloads.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: u64,
    /// Clients contending for one lock.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=64))]
    contenders: u64,
    /// Directory for the cell's files (default: the system's temporary directory). Put it
    /// on the disk you want measured: every write is synced before it is acknowledged.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip the fail-over measurement (it kills the master).
    #[arg(long)]
    skip_failover: bool,
    /// How many times the fail-over measurement kills the master (each killed replica is
    /// restarted and caught up before the next kill); the figures are the median and the
    /// worst gap.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    kills: u64,
    /// Instead of the figures: the soak. --clients sessions write their own files for this
    /// many seconds beside a busy loop on every core; prints writes, latencies, elections
    /// and lost sessions, and exits non-zero if there was any election or lost session.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    soak: Option<u64>,
    /// Instead of the figures: hold 0, then each of these counts of sessions on the cell
    /// (comma-separated, e.g. 1000,10000,50000,100000) for --hold seconds each, and print
    /// per count the sessions held and lost, the master's KeepAlive rate, CPU and RSS (and
    /// per session), the replicas' RSS, and a separate client's write p50/p99 and cached
    /// reads while they are held. Each load session does what a client's does at the master:
    /// it is created by a write, opens two handles, caches three paths and sends a KeepAlive
    /// as soon as the last is answered. They share QUIC connections, 80 per connection (a
    /// connection carries at most 100 requests at once), so the master keeps fewer
    /// connections and answers fewer QUIC pings than it would for as many client machines.
    /// The count stops rising once sessions are lost or fail to be set up, and the output
    /// says why.
    #[arg(long, value_name = "N,...", value_delimiter = ',',
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    sessions: Vec<u64>,
    /// Seconds each count of --sessions is held and measured.
    #[arg(long, value_name = "SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    hold: u64,
    /// Skip the figures through a FUSE mount (they need /dev/fuse and root).
    #[arg(long)]
    skip_mount: bool,
    /// Print JSON lines ({"name","value","unit","detail"}) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure etcd and ZooKeeper with the peer harness in DIR
    /// (../shared/bench/peers; run its setup.sh once), and chubby through its mount with the
    /// harness's Python `fs` backend, and print the side-by-side table.
    #[arg(long, value_name = "DIR")]
    peers: Option<PathBuf>,
    /// Scale of the peer harness's operation counts (1.0: its defaults, about 3 minutes
    /// per system).
    #[arg(long, default_value_t = 1.0)]
    peer_scale: f64,
    /// Extra runs of the peer harness's fail-over test per system (3 kills of the leader
    /// each, after the 3 of the main run): the default gives 12 kills, for a median and a
    /// worst case like chubby's own `--kills`.
    #[arg(long, default_value_t = peers::FAILOVER_EXTRA_RUNS)]
    peer_failover_runs: usize,
    /// Log filter of the replicas and this process (e.g. `info`).
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    if !(cli.seconds > 0.0 && cli.seconds <= 3600.0) {
        eprintln!("chubby-bench: --seconds must be above 0 and at most 3600");
        return ExitCode::from(2);
    }
    if let Some(dir) = cli.dir.as_ref().filter(|d| !d.is_dir()) {
        eprintln!("chubby-bench: --dir {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    if let Err(why) = find_binary("chubby-server") {
        eprintln!("chubby-bench: {why}");
        return ExitCode::from(2);
    }
    if !(cli.peer_scale > 0.0 && cli.peer_scale <= 10.0) {
        eprintln!("chubby-bench: --peer-scale must be above 0 and at most 10");
        return ExitCode::from(2);
    }
    let harness = match cli.peers.as_deref().map(peers::Harness::locate).transpose() {
        Ok(h) => h,
        Err(why) => {
            eprintln!("chubby-bench: {why}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chubby-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(&cli, harness.as_ref()) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    match result {
        Ok((figures, comparison)) => {
            if cli.json {
                print!("{}", json_lines(&figures));
            } else {
                print!("{}", table(&figures));
            }
            if let Some(text) = comparison {
                println!();
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("chubby-bench: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the harness for `system` on a blocking thread.
async fn harness_run(
    h: &peers::Harness,
    system: &'static str,
    scale: f64,
    failover_runs: usize,
) -> Result<peers::PeerFigures, String> {
    let h = h.clone();
    eprintln!("chubby-bench: peer harness: {system} ...");
    tokio::task::spawn_blocking(move || {
        let first = h.run(system, peers::TESTS, "run1", scale, &[])?;
        let mut extra = Vec::new();
        for i in 0..failover_runs {
            eprintln!(
                "chubby-bench: peer harness: {system}, fail-over run {} ...",
                i + 2
            );
            extra.push(h.run(system, "failover", &format!("fo{}", i + 2), scale, &[])?);
        }
        Ok(peers::PeerFigures::of(system, &first).with_failovers(&extra))
    })
    .await
    .map_err(|e| format!("{system}: {e}"))?
}

/// The machine, for the table's heading.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_owned(), |k| k.trim().to_owned());
    format!("{cores} cores ({cpu}), Linux {kernel}")
}

async fn run(
    cli: &Cli,
    harness: Option<&peers::Harness>,
) -> Result<(Vec<Figure>, Option<String>), String> {
    let scale = cli.peer_scale;
    let etcd = match harness {
        Some(h) => Some(harness_run(h, "etcd", scale, cli.peer_failover_runs).await?),
        None => None,
    };
    let settings = Settings {
        span: Duration::from_secs_f64(cli.seconds),
        samples: usize::try_from(cli.samples).unwrap_or(usize::MAX),
        clients: usize::try_from(cli.clients).unwrap_or(16),
        contenders: usize::try_from(cli.contenders).unwrap_or(4),
    };
    // Dropped on every return (and when the select above drops this future): the replicas
    // are killed and their files removed.
    let mut cell = RealCell::start_in(cli.dir.as_deref(), 3, "", &cli.log);
    let conn = cell.connect();
    let master = wait_master(&cell, &conn).await?;
    eprintln!(
        "chubby-bench: 3-replica cell up in {}, master is replica {master}",
        cell.cell_dir().display()
    );
    let file = CellFile::load(cell.cell_file()).map_err(|e| format!("cell file: {e}"))?;
    if let Some(secs) = cli.soak {
        let clients = usize::try_from(cli.clients).unwrap_or(16);
        eprintln!("chubby-bench: soak: {clients} clients for {secs} s beside a CPU hog ...");
        let figs = soak::soak(&cell, clients, Duration::from_secs(secs))
            .await
            .map_err(|e| format!("soak: {e}"))?;
        let of = |name: &str| {
            figs.iter()
                .find(|f| f.name == name)
                .map_or(0.0, |f| f.value)
        };
        let (elections, lost) = (of("soak: elections"), of("soak: sessions lost"));
        if elections > 0.0 || lost > 0.0 {
            print!(
                "{}",
                if cli.json {
                    json_lines(&figs)
                } else {
                    table(&figs)
                }
            );
            return Err(format!(
                "soak: {elections} election(s) and {lost} lost session(s); there must be none"
            ));
        }
        return Ok((figs, None));
    }
    if !cli.sessions.is_empty() {
        let counts: Vec<usize> = cli
            .sessions
            .iter()
            .map(|&n| usize::try_from(n).unwrap_or(usize::MAX))
            .collect();
        eprintln!(
            "chubby-bench: sessions: holding {counts:?} sessions for {} s each ...",
            cli.hold
        );
        let figs = sessions::sessions(&cell, master, &counts, Duration::from_secs(cli.hold))
            .await
            .map_err(|e| format!("sessions: {e}"))?;
        return Ok((figs, None));
    }
    let mut figures = Vec::new();
    let step = |name: &str, r: Result<Vec<Figure>, BenchError>| {
        r.map_err(|e| format!("{name}: {e}")).inspect(|f| {
            for fig in f {
                eprintln!("chubby-bench: {} = {:.2} {}", fig.name, fig.value, fig.unit);
            }
        })
    };
    // Where a write's time goes, from the replicas' own metrics (sums and counts before and
    // after the 1-client writes).
    let sums = |cell: &RealCell| -> Vec<(f64, f64)> {
        (1..=cell.len())
            .map(|id| {
                let page = cell.metrics(id);
                let get = |n: &str| sample(&page, n).unwrap_or(0.0);
                (
                    get("chubby_disk_sync_seconds_sum"),
                    get("chubby_disk_sync_seconds_count"),
                )
            })
            .collect()
    };
    let master_page = |cell: &RealCell| {
        let page = cell.metrics(master);
        let get = |n: &str| sample(&page, n).unwrap_or(0.0);
        (
            get("chubby_paxos_instance_seconds_sum"),
            get("chubby_paxos_instance_seconds_count"),
            get("chubby_request_duration_seconds_sum{call=\"SetContents\"}"),
            get("chubby_request_duration_seconds_count{call=\"SetContents\"}"),
        )
    };
    let (syncs_before, master_before) = (sums(&cell), master_page(&cell));
    let latency = step(
        "write latency",
        workloads::write_latency(&file, &settings).await,
    )?;
    let (syncs_after, master_after) = (sums(&cell), master_page(&cell));
    let mean_ms = |sum: f64, n: f64| if n > 0.0 { sum / n * 1000.0 } else { 0.0 };
    let sync: Vec<String> = syncs_before
        .iter()
        .zip(&syncs_after)
        .enumerate()
        .map(|(i, (b, a))| {
            format!(
                "r{} {:.3} ({} syncs)",
                i + 1,
                mean_ms(a.0 - b.0, a.1 - b.1),
                a.1 - b.1
            )
        })
        .collect();
    let detail = format!(
        "means over the 1-client writes, from the replicas' metrics: master's call {:.3} ms, \
         its Paxos instance (submitted to applied) {:.3} ms, disk sync per replica (ms) {}",
        mean_ms(
            master_after.2 - master_before.2,
            master_after.3 - master_before.3
        ),
        mean_ms(
            master_after.0 - master_before.0,
            master_after.1 - master_before.1
        ),
        sync.join(", ")
    );
    eprintln!("chubby-bench: {detail}");
    figures.push(Figure {
        name: "write: master-side share".to_owned(),
        value: mean_ms(
            master_after.2 - master_before.2,
            master_after.3 - master_before.3,
        ),
        unit: "ms",
        detail,
    });
    figures.extend(latency);
    let pids: Vec<u32> = (1..=cell.len()).map(|id| cell.pid(id)).collect();
    let cpu = |pids: &[u32]| -> f64 { pids.iter().filter_map(|p| proc_cpu_seconds(*p)).sum() };
    let cpu_before = cpu(&pids);
    let tput = step(
        "write throughput",
        workloads::write_throughput(&file, &settings).await,
    )?;
    let cpu_used = cpu(&pids) - cpu_before;
    let rss = pids
        .iter()
        .filter_map(|p| proc_rss_mb(*p))
        .fold(0.0, f64::max);
    if let Some(w) = tput.first() {
        let writes = w.value * settings.span.as_secs_f64();
        if writes > 0.0 {
            figures.push(Figure {
                name: "replica CPU per write".to_owned(),
                value: cpu_used / writes * 1000.0,
                unit: "ms",
                detail: format!(
                    "user+system CPU of the 3 replicas during the {}-client writes, per write",
                    settings.clients
                ),
            });
        }
    }
    figures.push(Figure {
        name: "replica RSS under writes".to_owned(),
        value: rss,
        unit: "MB",
        detail: "largest replica, right after the many-client writes".to_owned(),
    });
    figures.extend(tput);
    figures.extend(step("reads", workloads::reads(&file, &settings).await)?);
    figures.extend(step("locks", workloads::locks(&file, &settings).await)?);
    figures.extend(step(
        "holder expiry",
        workloads::holder_expiry(cell.cell_file()).await,
    )?);
    if !cli.skip_mount {
        match chubby_integration::mount::fuse_missing() {
            Some(why) => eprintln!("chubby-bench: no mount figures: {why}"),
            None => {
                find_binary("chubby")?;
                let (cell_file, span) = (cell.cell_file().to_owned(), settings.span);
                let figs = tokio::task::spawn_blocking(move || {
                    chubby_integration::bench::mount::figures(&cell_file, span)
                })
                .await
                .map_err(|e| format!("mount: {e}"))?
                .map_err(|e| format!("mount: {e}"))?;
                for fig in &figs {
                    eprintln!("chubby-bench: {} = {:.2} {}", fig.name, fig.value, fig.unit);
                }
                figures.extend(figs);
            }
        }
    }
    if !cli.skip_failover {
        figures.extend(step(
            "fail-over",
            failover::kills(&mut cell, usize::try_from(cli.kills).unwrap_or(10)).await,
        )?);
    }
    let Some(h) = harness else {
        return Ok((figures, None));
    };
    let zk = harness_run(h, "zk", scale, cli.peer_failover_runs).await?;
    let fs = fs_run(h, &cell, scale, cli.peer_failover_runs).await?;
    let etcd = etcd.unwrap_or_default();
    let rows = compare::rows(&etcd, &zk, &fs, &figures);
    let violations: Vec<String> = [("etcd", &etcd), ("ZooKeeper", &zk), ("chubby mount", &fs)]
        .iter()
        .filter(|(_, f)| f.violations.is_some_and(|v| v > 0.0))
        .map(|(n, f)| format!("{n}: {:?}", f.violations))
        .collect();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut text = format!(
        "Side by side, measured in one run on {date}, {}: etcd 3.4 and ZooKeeper 3.8 (3 \
         members each, fresh, fsync on) driven by the peer harness's Python clients; chubby \
         (3 replicas, fsync on) through its FUSE mount driven by the same harness code \
         (`fs` backend) and through its Rust client. Session lease 12 s; the Rust client's \
         expiry figure uses lock-delay 1 s. Harness JSON: {}\n\n",
        machine(),
        h.results().display()
    );
    text.push_str(&compare::markdown(&rows));
    text.push_str(&compare::failover_lines(&etcd, &zk, &fs));
    if !violations.is_empty() {
        text.push_str(&format!(
            "\nMUTUAL-EXCLUSION VIOLATIONS: {}\n",
            violations.join(", ")
        ));
    }
    Ok((figures, Some(text)))
}

/// The harness's `fs` backend on a mount of `cell`, with its hooks (replica pids, the
/// master's pid, restarting a killed replica). Restarted replicas are stopped afterwards.
async fn fs_run(
    h: &peers::Harness,
    cell: &RealCell,
    scale: f64,
    failover_runs: usize,
) -> Result<peers::PeerFigures, String> {
    let work = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let configs: Vec<PathBuf> = (1..=cell.len())
        .map(|id| cell.config_path(id).to_owned())
        .collect();
    let pids: Vec<u32> = (1..=cell.len()).map(|id| cell.pid(id)).collect();
    let hooks = peers::FsHooks::new(
        work.path(),
        &find_binary("chubby")?,
        &find_binary("chubby-server")?,
        cell.cell_file(),
        &configs,
        &pids,
    )?;
    let cell_file = cell.cell_file().to_owned();
    let h = h.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mount = chubby_integration::mount::Mount::of_cell_file(&cell_file, &[]);
        let root = mount.at("peerbench");
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        eprintln!("chubby-bench: peer harness: fs on the chubby mount ...");
        let first = h.run("fs", peers::TESTS, "run1", scale, &hooks.env(&root));
        let mut extra = Vec::new();
        for i in 0..failover_runs {
            if first.is_err() {
                break;
            }
            eprintln!(
                "chubby-bench: peer harness: fs, fail-over run {} ...",
                i + 2
            );
            match h.run(
                "fs",
                "failover",
                &format!("fo{}", i + 2),
                scale,
                &hooks.env(&root),
            ) {
                Ok(j) => extra.push(j),
                Err(e) => {
                    eprintln!("chubby-bench: fs fail-over run {}: {e}", i + 2);
                    break;
                }
            }
        }
        // Replicas the harness restarted are not the cell's children: stop them here.
        for pid in hooks.pids() {
            if !pids.contains(&pid) && pid != 0 {
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .status();
            }
        }
        drop(mount);
        first.map(|j| peers::PeerFigures::of("fs", &j).with_failovers(&extra))
    })
    .await
    .map_err(|e| format!("fs: {e}"))?;
    drop(work);
    result
}

async fn wait_master(
    cell: &RealCell,
    conn: &chubby_client::conn::CellConn,
) -> Result<usize, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for s in cell.statuses(conn).await.into_iter().flatten() {
            if s.role == chubby_protocol::client_msg::ReplicaRole::Master
                && s.lease_remaining_ms.is_some()
            {
                return usize::try_from(s.id.0).map_err(|e| e.to_string());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("no master within 30 s of starting the cell".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
