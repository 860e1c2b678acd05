//! `chubby`: the operator's and user's command for a chubby cell.
//!
//! Subcommands: `cell init` (create a cell's CA, certificates and configs), `cell
//! issue-replica` (a replica to add to a running cell), `up` (run a local cell of child
//! `chubby-server` processes), `status` (every replica's view), `admin add-replica` and
//! `admin remove-replica` (membership changes), the node commands `ls`, `cat`, `put`,
//! `rm`, `mkdir`, `mv`, `stat`, `acl`, `check-sequencer` (ops.rs), `watch`, `lock` and
//! `mount` (the FUSE filesystem). Every
//! command that talks to a cell takes `--cell DIR/cell.toml` or the `CHUBBY_CELL`
//! environment variable.

mod admin;
mod backup;
mod cell;
mod lock;
mod mount;
mod ops;
mod status;
mod up;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chubby_client::protocol::cell::CellFile;
use clap::{Parser, Subcommand};

/// chubby: a Paxos lock service whose namespace you can mount.
#[derive(Debug, Parser)]
#[command(name = "chubby", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or manage a cell's files.
    #[command(subcommand)]
    Cell(cell::CellCommand),
    /// Run a whole local cell (initialising it if needed) until Ctrl-C.
    Up(up::UpArgs),
    /// Show each replica's role, epoch, applied slot, lag and the master's lease.
    Status(status::StatusArgs),
    /// Add or remove replicas of a running cell.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Print the events of a node as JSON lines until interrupted.
    Watch(watch::WatchArgs),
    /// Run a command while holding a lock (exit 75: held, 124: timed out, 70: lost).
    Lock(lock::LockArgs),
    /// Mount the cell's namespace as a filesystem (FUSE), held by one session.
    Mount(mount::MountArgs),
    #[command(flatten)]
    Ops(ops::OpsCommand),
}

/// Where the cell file comes from, shared by every command that talks to a cell.
#[derive(Debug, clap::Args)]
pub struct CellArg {
    /// The client cell file written by `chubby cell init` (DIR/cell.toml).
    #[arg(long, env = "CHUBBY_CELL", value_name = "FILE")]
    pub cell: Option<PathBuf>,
}

impl CellArg {
    /// Loads the cell file, or says how to name one.
    fn load(&self) -> anyhow::Result<CellFile> {
        let path = self.cell.as_ref().context(
            "no cell given: pass --cell DIR/cell.toml or set CHUBBY_CELL (create one with \
             `chubby cell init --dir DIR` or `chubby up`)",
        )?;
        Ok(CellFile::load(path)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cell(cmd) => cell::run(cmd),
        Command::Up(args) => up::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Admin(cmd) => admin::run(cmd),
        Command::Watch(args) => watch::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Mount(args) => mount::run(&args),
        Command::Ops(cmd) => ops::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chubby: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A small runtime for commands that talk to the cell.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
