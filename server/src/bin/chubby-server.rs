//! `chubby-server --config FILE`: runs one replica of a chubby cell.
//!
//! Create a cell's files with `chubby cell init --dir DIR --replicas 3`, then start each
//! replica with its own `DIR/replica-<n>/config.toml` (or run `chubby up` to start a local
//! cell in one go). Logs go to stderr; `RUST_LOG` or `--log` choose the level.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chubby_server::cell::ReplicaConfig;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Runs one replica of a chubby cell (Multi-Paxos over QUIC with mutual TLS).
///
/// The replica serves other replicas on its peer port (ALPN chubby-peer/1) and clients on
/// its client port (ALPN chubby/1), both from its config file. Stop it with Ctrl-C or
/// SIGTERM; a replica killed outright loses nothing it acknowledged.
#[derive(Debug, Parser)]
#[command(name = "chubby-server", version)]
struct Args {
    /// The replica's configuration, as written by `chubby cell init`
    /// (DIR/replica-<n>/config.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `chubby_server=debug`);
    /// overrides RUST_LOG.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,

    /// Shut down cleanly when standard input reaches end-of-file (used by `chubby up`, so
    /// replicas stop with their supervisor even if it is killed).
    #[arg(long, hide = true)]
    stop_on_stdin_close: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match &args.log {
        Some(f) => EnvFilter::try_new(f),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chubby-server: bad log filter: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chubby-server: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = ReplicaConfig::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stdin_closed = args.stop_on_stdin_close.then(watch_stdin);
    runtime.block_on(async move {
        let shutdown = async {
            let stdin_closed = async {
                match stdin_closed {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C still works");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
                _ = term.recv() => tracing::info!("terminated: shutting down"),
                () = stdin_closed => tracing::info!("standard input closed: shutting down"),
            }
        };
        chubby_server::node::run(cfg, shutdown).await
    })?;
    Ok(())
}

/// Signals when stdin reaches EOF (a plain thread: it must not keep the runtime alive).
fn watch_stdin() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    rx
}

/// The error and its causes, skipping a cause whose text the message already contains (our
/// errors name their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}
