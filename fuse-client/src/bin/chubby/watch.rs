//! `chubby watch PATH`: prints the events of PATH as JSON lines until interrupted.
//!
//! The first line, `{"path": ..., "event": "watching"}`, says the watch is in place: every
//! change after it is reported. Each later line is one object:
//! `{"path": ..., "event": "contents_modified"}`, with `"name"`
//! for child events; session events (`fail_over`, `jeopardy`, `safe`, `expired`) have no
//! path. After a `fail_over` line, events may have been lost: re-read what matters.
//! Exits 0 on Ctrl-C or SIGTERM, 1 if the session expires or the node is deleted.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use chubby_client::client::{ClientEvent, OpenOptions};
use chubby_client::protocol::{Event, EventMask};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::error::RecvError;

use crate::ops::with_client;
use crate::CellArg;

/// Arguments of `chubby watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    cell: CellArg,
    /// The file or directory to watch (a directory reports child_added, child_removed and
    /// child_modified).
    path: String,
}

pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let path = args.path;
    with_client(&args.cell, |client| async move {
        let result = async {
            let mut events = client.subscribe();
            let mut o = OpenOptions::read();
            o.events = EventMask::ALL;
            let handle = client
                .open(&path, o)
                .await
                .with_context(|| format!("watch {path}"))?
                .handle;
            let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
            let mut out = std::io::stdout();
            writeln!(out, "{}", json!({"path": path, "event": "watching"}))?;
            out.flush()?;
            let code = loop {
                let ev = tokio::select! {
                    _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
                    _ = term.recv() => break ExitCode::SUCCESS,
                    ev = events.recv() => ev,
                };
                let (line, stop) = match ev {
                    Ok(ClientEvent::Handle { handle: h, event }) if h == handle => {
                        let mut v = json!({"path": path, "event": event.name()});
                        if let Event::ChildAdded { name }
                        | Event::ChildRemoved { name }
                        | Event::ChildModified { name } = &event
                        {
                            v["name"] = json!(name);
                        }
                        (v, matches!(event, Event::NodeDeleted))
                    }
                    Ok(ClientEvent::Handle { .. }) => continue,
                    Ok(ClientEvent::FailOver) => (json!({"event": "fail_over"}), false),
                    Ok(ClientEvent::Jeopardy) => (json!({"event": "jeopardy"}), false),
                    Ok(ClientEvent::Safe) => (json!({"event": "safe"}), false),
                    Ok(ClientEvent::Expired) => (json!({"event": "expired"}), true),
                    Err(RecvError::Lagged(n)) => (json!({"event": "lost", "count": n}), false),
                    Err(RecvError::Closed) => break ExitCode::from(1),
                };
                writeln!(out, "{line}")?;
                out.flush()?;
                if stop {
                    break ExitCode::from(1);
                }
            };
            client.close(handle).await;
            Ok(code)
        }
        .await;
        (client, result)
    })
}
