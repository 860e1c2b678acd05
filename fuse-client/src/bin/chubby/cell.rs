//! `chubby cell init`: the CA, replica and admin certificates, replica configs and the
//! client cell file; `chubby cell restore`: the same, for a cell founded from a backup.

use std::path::PathBuf;
use std::process::ExitCode;

use chubby_client::protocol::cell::{
    init_cell_on, issue_client_cert, issue_replica, restore_cell, CellLayout,
};

/// Cell management.
#[derive(Debug, clap::Subcommand)]
pub enum CellCommand {
    /// Create a new cell in DIR: CA, one certificate and config.toml per replica
    /// (DIR/replica-<n>/), an admin certificate and the client cell file DIR/cell.toml.
    Init(InitArgs),
    /// Create a new cell in DIR (as `init` does) whose replicas start from the backup FILE
    /// written by `chubby admin backup`: the same files, directories, contents, ACLs and
    /// generation numbers. The new cell has its own CA: clients need its cell.toml.
    Restore {
        /// The backup file.
        #[arg(long = "from", value_name = "FILE")]
        from: PathBuf,
        #[command(flatten)]
        init: InitArgs,
    },
    /// Issue a client certificate for PRINCIPAL with the cell's CA
    /// (written to DIR/clients/PRINCIPAL/).
    IssueClient {
        /// The cell directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The principal (the certificate's CN), e.g. a user or service name.
        principal: String,
    },
    /// Issue replica ID for the running cell in DIR, to be added with `chubby admin
    /// add-replica`: its certificate and DIR/replica-<ID>/config.toml (join mode), and its
    /// client address in DIR/cell.toml.
    IssueReplica {
        /// The cell directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The new replica's id (not used by any replica before).
        #[arg(long)]
        id: u32,
        /// Host (name or IP) it listens on and is reached at.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Its peer UDP port; the client port is the next one.
        #[arg(long)]
        port: u16,
    },
}

/// Arguments of `chubby cell init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create the cell in (must be empty or absent).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Number of replicas: odd, 1 to 9 (3 to try it, 5 for production).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Host (name or IP) the replicas listen on and are reached at.
    #[arg(long, default_value = "127.0.0.1", conflicts_with = "hosts")]
    pub host: String,
    /// One host per replica, comma-separated (a cell on several machines: replica n on the
    /// n-th host; its certificate names it). Sets the number of replicas.
    #[arg(long, value_delimiter = ',', value_name = "HOST,HOST,...")]
    pub hosts: Vec<String>,
    /// First UDP port; replica n uses base+2(n-1) for peers and the next one for clients.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
}

impl InitArgs {
    /// Each replica's host.
    fn hosts(&self) -> Vec<String> {
        if self.hosts.is_empty() {
            vec![self.host.clone(); self.replicas]
        } else {
            self.hosts.clone()
        }
    }
}

pub fn run(cmd: CellCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CellCommand::Init(args) => {
            let hosts = args.hosts();
            let layout = init_cell_on(&args.dir, &hosts, args.base_port)?;
            println!(
                "created a {}-replica cell in {}",
                hosts.len(),
                layout.dir.display()
            );
            print_layout(&layout);
        }
        CellCommand::Restore { from, init: args } => {
            let hosts = args.hosts();
            let layout = restore_cell(&args.dir, &hosts, args.base_port, &from)?;
            println!(
                "created a {}-replica cell in {} from the backup {}; its replicas start from \
                 it (each checks it again before using it)",
                hosts.len(),
                layout.dir.display(),
                from.display()
            );
            print_layout(&layout);
        }
        CellCommand::IssueReplica {
            dir,
            id,
            host,
            port,
        } => {
            let cfg = issue_replica(&dir, id, &host, port)?;
            println!("issued replica {id} at {host}:{port}");
            println!("  start it:   chubby-server --config {}", cfg.display());
            println!(
                "  then add it: chubby admin add-replica --id {id} --addr {}",
                chubby_client::protocol::cell::config::join_host_port(&host, port)
            );
        }
        CellCommand::IssueClient { dir, principal } => {
            let paths = issue_client_cert(&dir, &principal)?;
            println!("certificate for {principal:?}: {}", paths.cert.display());
            println!("key:                        {}", paths.key.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_layout(layout: &CellLayout) {
    for cfg in &layout.replica_configs {
        println!(
            "  start a replica:  chubby-server --config {}",
            cfg.display()
        );
    }
    println!(
        "  use the cell:     export CHUBBY_CELL={}",
        layout.cell_file.display()
    );
    println!("keep {} offline in production", layout.ca_key.display());
}
