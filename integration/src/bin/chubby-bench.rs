//! `chubby-bench`: starts a 3-replica cell of real `chubby-server` processes on loopback,
//! runs the workloads of `chubby_integration::bench` through real client sessions, and
//! prints a table of figures. Build the release binaries first:
//!
//! ```text
//! cargo build --release --bins && target/release/chubby-bench
//! target/release/chubby-bench --seconds 10 --json     # longer spans, JSON lines
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chubby_integration::bench::workloads::{self, BenchError, Settings};
use chubby_integration::bench::{json_lines, table, Figure};
use chubby_integration::real_cell::{find_binary, RealCell};
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
    /// Skip the figures through a FUSE mount (they need /dev/fuse and root).
    #[arg(long)]
    skip_mount: bool,
    /// Print JSON lines ({"name","value","unit","detail"}) instead of a table.
    #[arg(long)]
    json: bool,
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
            r = run(&cli) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    match result {
        Ok(figures) => {
            if cli.json {
                print!("{}", json_lines(&figures));
            } else {
                print!("{}", table(&figures));
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("chubby-bench: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<Vec<Figure>, String> {
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
    let mut figures = Vec::new();
    let step = |name: &str, r: Result<Vec<Figure>, BenchError>| {
        r.map_err(|e| format!("{name}: {e}")).inspect(|f| {
            for fig in f {
                eprintln!("chubby-bench: {} = {:.2} {}", fig.name, fig.value, fig.unit);
            }
        })
    };
    figures.extend(step(
        "write latency",
        workloads::write_latency(&file, &settings).await,
    )?);
    figures.extend(step(
        "write throughput",
        workloads::write_throughput(&file, &settings).await,
    )?);
    figures.extend(step("reads", workloads::reads(&file, &settings).await)?);
    figures.extend(step("locks", workloads::locks(&file, &settings).await)?);
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
        // The master may have moved since the start; kill the current one.
        let master = wait_master(&cell, &conn).await?;
        figures.extend(step(
            "fail-over",
            workloads::fail_over(&mut cell, master).await,
        )?);
    }
    Ok(figures)
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
