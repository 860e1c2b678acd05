//! Test helper for `tests/session_cli.rs`: a client process that holds what a session can
//! hold — an ephemeral file and an exclusive lock — and prints `holding` once it has both,
//! then `expired` (exit 3) if its session expires. The lock's lock-delay is 1 s. The test stops it with SIGSTOP and checks
//! that the cell takes both back.
//!
//! Usage: `session-holder CELL_FILE EPHEMERAL_PATH LOCK_PATH GRACE_MS`.

use std::io::Write;
use std::process::ExitCode;

use chubby_client::client::{Client, ClientEvent, ClientOptions, OpenOptions};
use chubby_protocol::cell::CellFile;
use chubby_protocol::LockMode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cell, ephemeral, lock_path, grace] = args.as_slice() else {
        eprintln!("usage: session-holder CELL_FILE EPHEMERAL_PATH LOCK_PATH GRACE_MS");
        return ExitCode::from(2);
    };
    let Ok(grace_ms) = grace.parse() else {
        eprintln!("GRACE_MS must be a number");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let result = async {
            let file = CellFile::load(std::path::Path::new(cell)).map_err(|e| e.to_string())?;
            let client = Client::connect(
                &file,
                ClientOptions {
                    grace_ms,
                    ..ClientOptions::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut events = client.subscribe();
            let mut o = OpenOptions::write();
            o.ephemeral = true;
            client.open(ephemeral, o).await.map_err(|e| e.to_string())?;
            let mut lo = OpenOptions::write();
            lo.lock_delay_ms = Some(1_000);
            let handle = client
                .open(lock_path, lo)
                .await
                .map_err(|e| e.to_string())?
                .handle;
            client
                .acquire(handle, LockMode::Exclusive)
                .await
                .map_err(|e| e.to_string())?;
            println!("holding");
            let _ = std::io::stdout().flush();
            loop {
                match events.recv().await {
                    Ok(ClientEvent::Expired) => {
                        println!("expired");
                        return Ok(ExitCode::from(3));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        .await;
        result.unwrap_or_else(|e: String| {
            eprintln!("session-holder: {e}");
            ExitCode::from(1)
        })
    })
}
