//! `chubby ls|cat|put|rm|mkdir|mv|stat|acl|check-sequencer`: one session per command, one
//! call (or a few) each, and an error that names the path and the reason.
//!
//! Exit codes: 0 success; 1 the cell refused or could not be reached (the message says
//! which); 2 bad usage; `check-sequencer` exits 1 when the token is stale.

use std::future::Future;
use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use chubby_client::client::{Client, ClientOptions};
use chubby_client::protocol::cell::CellFile;
use chubby_client::protocol::db::Sequencer;
use chubby_client::protocol::{AclNames, Generation, NodeKind, Stat};
use serde_json::json;

use crate::CellArg;

/// The node commands.
#[derive(Debug, clap::Subcommand)]
pub enum OpsCommand {
    /// List a directory: one name per line, directories with a trailing '/'.
    Ls {
        #[command(flatten)]
        cell: CellArg,
        /// The directory.
        path: String,
        /// Long form: kind, size, content generation, ephemeral flag, name.
        #[arg(short, long)]
        long: bool,
    },
    /// Print a file's contents.
    Cat {
        #[command(flatten)]
        cell: CellArg,
        /// The file.
        path: String,
    },
    /// Write a file whole (atomically), creating it if missing.
    Put {
        #[command(flatten)]
        cell: CellArg,
        /// The file.
        path: String,
        /// The new contents; read from stdin when omitted.
        contents: Option<String>,
        /// Write only if the file's content generation is N (compare-and-swap).
        #[arg(long, value_name = "N")]
        if_generation: Option<u64>,
    },
    /// Delete a file or an empty directory.
    Rm {
        #[command(flatten)]
        cell: CellArg,
        /// The node.
        path: String,
    },
    /// Create a directory.
    Mkdir {
        #[command(flatten)]
        cell: CellArg,
        /// The directory.
        path: String,
        /// Create missing parents too, and succeed if it exists.
        #[arg(short, long)]
        parents: bool,
        /// Mark it so that every node created in it, by any client or mount, is
        /// ephemeral (a presence directory); also for an existing directory with -p.
        #[arg(long)]
        ephemeral_children: bool,
    },
    /// Move a file, or a directory with everything under it, atomically (one Paxos
    /// write), replacing a file or an empty directory at the target.
    Mv {
        #[command(flatten)]
        cell: CellArg,
        /// The file or directory.
        from: String,
        /// Its new path.
        to: String,
    },
    /// Print all metadata of a node (lock generation fresh from the master).
    Stat {
        #[command(flatten)]
        cell: CellArg,
        /// The node.
        path: String,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show or change a node's ACL names (files under /acl listing principals).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Check a sequencer token (as `chubby lock` puts in CHUBBY_SEQUENCER): prints
    /// "valid" and exits 0, or "stale" and exits 1.
    CheckSequencer {
        #[command(flatten)]
        cell: CellArg,
        /// The token.
        token: String,
    },
}

/// `chubby acl`.
#[derive(Debug, clap::Subcommand)]
pub enum AclCommand {
    /// Print the read, write and change-ACL names.
    Get {
        #[command(flatten)]
        cell: CellArg,
        /// The node.
        path: String,
    },
    /// Replace ACL names (those not given stay).
    Set {
        #[command(flatten)]
        cell: CellArg,
        /// The node.
        path: String,
        /// Who may read.
        #[arg(long)]
        read: Option<String>,
        /// Who may write, delete and lock.
        #[arg(long)]
        write: Option<String>,
        /// Who may change the ACL names.
        #[arg(long)]
        change: Option<String>,
    },
}

/// Runs `body` with a session on the cell, ending the session afterwards. The session's
/// grace period is 45 s, or `CHUBBY_GRACE_MS` milliseconds.
pub fn with_client<F, Fut>(cell: &CellArg, body: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = (Client, anyhow::Result<ExitCode>)>,
{
    let file: CellFile = cell.load()?;
    let mut options = ClientOptions::default();
    if let Ok(text) = std::env::var("CHUBBY_GRACE_MS") {
        options.grace_ms = text
            .parse()
            .with_context(|| format!("CHUBBY_GRACE_MS={text:?} is not a number of milliseconds"))?;
    }
    crate::runtime()?.block_on(async {
        let client = Client::connect(&file, options)
            .await
            .context("cannot start a session with the cell")?;
        let (client, result) = body(client).await;
        client.shutdown().await;
        result
    })
}

pub fn run(cmd: OpsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OpsCommand::Ls { cell, path, long } => with_client(&cell, |c| async move {
            let r = ls(&c, &path, long).await;
            (c, r)
        }),
        OpsCommand::Cat { cell, path } => with_client(&cell, |c| async move {
            let r = async {
                let (contents, _) = c.get(&path).await.with_context(|| format!("cat {path}"))?;
                std::io::stdout().write_all(&contents)?;
                Ok(ExitCode::SUCCESS)
            }
            .await;
            (c, r)
        }),
        OpsCommand::Put {
            cell,
            path,
            contents,
            if_generation,
        } => {
            let contents = match contents {
                Some(text) => text.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the contents from stdin")?;
                    buf
                }
            };
            with_client(&cell, |c| async move {
                let r = c
                    .put(&path, contents, if_generation.map(Generation))
                    .await
                    .with_context(|| format!("put {path}"))
                    .map(|stat| {
                        eprintln!("{path}: content generation {}", stat.content_generation.0);
                        ExitCode::SUCCESS
                    });
                (c, r)
            })
        }
        OpsCommand::Rm { cell, path } => with_client(&cell, |c| async move {
            let r = c
                .delete(&path)
                .await
                .with_context(|| format!("rm {path}"))
                .map(|()| ExitCode::SUCCESS);
            (c, r)
        }),
        OpsCommand::Mkdir {
            cell,
            path,
            parents,
            ephemeral_children,
        } => with_client(&cell, |c| async move {
            let r = async {
                mkdir(&c, &path, parents).await?;
                if ephemeral_children {
                    let change = chubby_client::protocol::AttrChange {
                        ephemeral_children: Some(true),
                        ..Default::default()
                    };
                    c.set_attr(&path, None, change)
                        .await
                        .with_context(|| format!("marking {path} ephemeral-children"))?;
                }
                Ok(ExitCode::SUCCESS)
            }
            .await;
            (c, r)
        }),
        OpsCommand::Mv { cell, from, to } => with_client(&cell, |c| async move {
            let r = c
                .rename(&from, &to)
                .await
                .with_context(|| format!("mv {from} {to}"))
                .map(|_| ExitCode::SUCCESS);
            (c, r)
        }),
        OpsCommand::Stat { cell, path, json } => with_client(&cell, |c| async move {
            let r = async {
                let stat = fresh_stat(&c, &path, "stat").await?;
                print_stat(&path, &stat, json);
                Ok(ExitCode::SUCCESS)
            }
            .await;
            (c, r)
        }),
        OpsCommand::Acl(AclCommand::Get { cell, path }) => with_client(&cell, |c| async move {
            let r = async {
                let stat = fresh_stat(&c, &path, "acl get").await?;
                println!("read: {}", stat.acl.read);
                println!("write: {}", stat.acl.write);
                println!("change: {}", stat.acl.change_acl);
                Ok(ExitCode::SUCCESS)
            }
            .await;
            (c, r)
        }),
        OpsCommand::Acl(AclCommand::Set {
            cell,
            path,
            read,
            write,
            change,
        }) => with_client(&cell, |c| async move {
            let r = async {
                let stat = fresh_stat(&c, &path, "acl set").await?;
                let acl = AclNames {
                    read: read.unwrap_or(stat.acl.read),
                    write: write.unwrap_or(stat.acl.write),
                    change_acl: change.unwrap_or(stat.acl.change_acl),
                };
                c.set_acl(&path, acl, Some(stat.acl_generation))
                    .await
                    .with_context(|| format!("acl set {path}"))?;
                Ok(ExitCode::SUCCESS)
            }
            .await;
            (c, r)
        }),
        OpsCommand::CheckSequencer { cell, token } => {
            let seq = Sequencer::from_token(&token)?;
            with_client(&cell, |c| async move {
                let r = c
                    .check_sequencer(&seq)
                    .await
                    .context("check-sequencer")
                    .map(|valid| {
                        println!("{}", if valid { "valid" } else { "stale" });
                        if valid {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        }
                    });
                (c, r)
            })
        }
    }
}

/// The node's metadata from the master; a missing node is an error naming `what` and the
/// path.
async fn fresh_stat(c: &Client, path: &str, what: &str) -> anyhow::Result<Stat> {
    c.stat_fresh(path)
        .await
        .with_context(|| format!("{what} {path}"))?
        .with_context(|| format!("{what} {path}: no such node"))
}

async fn ls(c: &Client, path: &str, long: bool) -> anyhow::Result<ExitCode> {
    let children = c.list(path).await.with_context(|| format!("ls {path}"))?;
    let mut out = std::io::stdout().lock();
    for (name, stat) in children {
        let slash = if stat.kind == NodeKind::Directory {
            "/"
        } else {
            ""
        };
        if long {
            let kind = if stat.kind == NodeKind::Directory {
                'd'
            } else {
                '-'
            };
            let eph = if stat.ephemeral { 'e' } else { '-' };
            writeln!(
                out,
                "{kind}{eph} {:>8} gen {:>6}  {name}{slash}",
                stat.size_bytes, stat.content_generation.0
            )?;
        } else {
            writeln!(out, "{name}{slash}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn mkdir(c: &Client, path: &str, parents: bool) -> anyhow::Result<ExitCode> {
    use chubby_client::conn::ClientError;
    use chubby_client::protocol::client_msg::CallError;
    use chubby_client::protocol::Refusal;
    let exists =
        |e: &ClientError| matches!(e, ClientError::Call(CallError::Refused(Refusal::Exists)));
    if !parents {
        c.mkdir(path, false)
            .await
            .with_context(|| format!("mkdir {path}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut prefix = String::new();
    for name in path.split('/').filter(|n| !n.is_empty()) {
        prefix.push('/');
        prefix.push_str(name);
        match c.mkdir(&prefix, false).await {
            Ok(_) => {}
            Err(e) if exists(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("mkdir {prefix}")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stat(path: &str, s: &Stat, as_json: bool) {
    let kind = match s.kind {
        NodeKind::File => "file",
        NodeKind::Directory => "directory",
    };
    if as_json {
        let v = json!({
            "path": path,
            "kind": kind,
            "ephemeral": s.ephemeral,
            "instance": s.instance.0,
            "content_generation": s.content_generation.0,
            "lock_generation": s.lock_generation.0,
            "acl_generation": s.acl_generation.0,
            "checksum": format!("{:016x}", s.checksum.0),
            "size": s.size_bytes,
            "ctime_ms": s.ctime.0,
            "mtime_ms": s.mtime.0,
            "acl": {"read": s.acl.read, "write": s.acl.write, "change": s.acl.change_acl},
            "ephemeral_children": s.ephemeral_children,
            "mode": format!("{:04o}", s.posix.mode),
            "owner": s.posix.owner.map(|(u, g)| json!({"uid": u, "gid": g})),
            "posix_times": {
                "atime": format!("{}.{:09}", s.posix.atime.secs, s.posix.atime.nanos),
                "mtime": format!("{}.{:09}", s.posix.mtime.secs, s.posix.mtime.nanos),
                "ctime": format!("{}.{:09}", s.posix.ctime.secs, s.posix.ctime.nanos),
            },
        });
        println!("{v}");
        return;
    }
    println!("path: {path}");
    println!("kind: {kind}");
    println!("ephemeral: {}", s.ephemeral);
    println!("instance: {}", s.instance.0);
    println!("content_generation: {}", s.content_generation.0);
    println!("lock_generation: {}", s.lock_generation.0);
    println!("acl_generation: {}", s.acl_generation.0);
    println!("checksum: {:016x}", s.checksum.0);
    println!("size: {}", s.size_bytes);
    println!("ctime_ms: {}", s.ctime.0);
    println!("mtime_ms: {}", s.mtime.0);
    println!(
        "acl: read={} write={} change={}",
        s.acl.read, s.acl.write, s.acl.change_acl
    );
    println!("ephemeral_children: {}", s.ephemeral_children);
    println!("mode: {:04o}", s.posix.mode);
    match s.posix.owner {
        Some((u, g)) => println!("owner: {u}:{g}"),
        None => println!("owner: (none: shown as the mounting user)"),
    }
    for (name, t) in [
        ("atime", s.posix.atime),
        ("mtime", s.posix.mtime),
        ("ctime", s.posix.ctime),
    ] {
        println!("posix_{name}: {}.{:09}", t.secs, t.nanos);
    }
}
