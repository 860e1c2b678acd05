//! `chubby lock [--shared] [--nonblock | --timeout D] [--lock-delay D] PATH -- CMD...`:
//! runs CMD while holding the lock on PATH (created if missing), with the lock's sequencer
//! in `CHUBBY_SEQUENCER`, and stops CMD the moment the lock may be lost.
//!
//! # When CMD is stopped
//! The lock is lost when the session expires or the node is deleted. While the session is
//! in jeopardy nobody knows yet; the master frees an unrenewed lock only after the
//! session's lease *and* the lock-delay, and the local lease ends first, so CMD may go on
//! for the lock-delay (less [`TERM_GRACE`]) into jeopardy and no longer. Then, or at once
//! on a known loss, CMD gets SIGTERM, and SIGKILL after [`TERM_GRACE`].
//!
//! # Exit status
//! CMD's status (128 + signal if a signal ended it); [`EXIT_HELD`] when `--nonblock` finds
//! the lock held or in lock-delay; [`EXIT_TIMEOUT`] when `--timeout` passes first;
//! [`EXIT_LOST`] when the lock was lost and CMD stopped; 1 for other errors.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use chubby_client::client::{Client, ClientEvent, OpenOptions};
use chubby_client::conn::ClientError;
use chubby_client::protocol::client_msg::CallError;
use chubby_client::protocol::db::LOCK_DELAY_MS_DEFAULT;
use chubby_client::protocol::{Event, EventMask, LockMode, Refusal};
use tokio::sync::broadcast::error::RecvError;

use crate::ops::with_client;
use crate::CellArg;

/// `--nonblock` and the lock is held (or in lock-delay): EX_TEMPFAIL.
pub const EXIT_HELD: u8 = 75;
/// `--timeout` passed before the lock was granted (as `timeout(1)`).
pub const EXIT_TIMEOUT: u8 = 124;
/// The lock was lost while CMD ran; CMD was stopped.
pub const EXIT_LOST: u8 = 70;
/// Between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Arguments of `chubby lock`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    cell: CellArg,
    /// Take the lock shared (many holders) instead of exclusive.
    #[arg(long)]
    shared: bool,
    /// Fail at once (exit 75) if the lock is held.
    #[arg(long, conflicts_with = "timeout")]
    nonblock: bool,
    /// Give up (exit 124) if the lock is not granted within D (e.g. 10s, 500ms, 2m).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// How long the lock stays unavailable to others if this holder is lost (at most 60s;
    /// default the cell's, 15s).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    lock_delay: Option<Duration>,
    /// The lock file.
    path: String,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (try 10s, 500ms or 2m)");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

pub fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let cell = CellArg {
        cell: args.cell.cell.clone(),
    };
    with_client(&cell, |client| async move {
        let r = hold(&client, args).await;
        (client, r)
    })
}

async fn hold(client: &Client, args: LockArgs) -> anyhow::Result<ExitCode> {
    let path = args.path.clone();
    let mut o = OpenOptions::write();
    o.events = EventMask::DELETED.with(EventMask::HANDLE_INVALID);
    o.lock_delay_ms = args
        .lock_delay
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let lock_delay_ms = o.lock_delay_ms.unwrap_or(LOCK_DELAY_MS_DEFAULT);
    let mut events = client.subscribe();
    let handle = client
        .open(&path, o)
        .await
        .with_context(|| format!("lock {path}: cannot open the lock file"))?
        .handle;
    let mode = if args.shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    let granted = if args.nonblock {
        match client.try_acquire(handle, mode).await {
            Err(ClientError::Call(CallError::Refused(
                r @ (Refusal::WouldBlock | Refusal::LockDelayed { .. }),
            ))) => {
                eprintln!("chubby: lock {path}: {r} (not waiting: --nonblock)");
                client.close(handle).await;
                return Ok(ExitCode::from(EXIT_HELD));
            }
            other => other,
        }
    } else if let Some(limit) = args.timeout {
        match tokio::time::timeout(limit, client.acquire(handle, mode)).await {
            Ok(r) => r,
            Err(_) => {
                eprintln!("chubby: lock {path}: not granted within {limit:?}");
                // Closing the handle cancels the queued Acquire.
                client.close(handle).await;
                return Ok(ExitCode::from(EXIT_TIMEOUT));
            }
        }
    } else {
        client.acquire(handle, mode).await
    };
    let sequencer = granted.with_context(|| format!("lock {path}"))?;
    let Some((program, rest)) = args.cmd.split_first() else {
        bail!("no command given after --");
    };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("CHUBBY_SEQUENCER", sequencer.to_token())
        .env("CHUBBY_LOCK_PATH", &path)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let pid = child.id();
    let mut jeopardy_deadline: Option<tokio::time::Instant> = None;
    let lost = loop {
        let deadline = async {
            match jeopardy_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for the command")?;
                client.close(handle).await;
                return Ok(exit_code_of(status));
            }
            () = deadline => break "the session stayed in jeopardy for the lock-delay",
            ev = events.recv() => match ev {
                Ok(ClientEvent::Expired) => break "the session expired",
                Ok(ClientEvent::Handle { handle: h, event: Event::NodeDeleted | Event::HandleInvalid })
                    if h == handle => break "the lock file was deleted",
                Ok(ClientEvent::Jeopardy) => {
                    let margin = lock_delay_ms.saturating_sub(u64::try_from(TERM_GRACE.as_millis()).unwrap_or(0));
                    jeopardy_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(margin));
                }
                Ok(ClientEvent::Safe) => jeopardy_deadline = None,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break "the session ended",
            },
        }
    };
    eprintln!("chubby: lock {path} lost ({lost}): stopping the command");
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    client.close(handle).await;
    Ok(ExitCode::from(EXIT_LOST))
}

fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        (None, None) => ExitCode::from(1),
    }
}
