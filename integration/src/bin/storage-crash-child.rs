//! Test helper for `tests/crash_storage.rs`: persists acceptor-like batches into a
//! `WalStorage` forever, printing `durable N` after each `persist` returned Ok. The test
//! kills it with SIGKILL at a random moment and checks that every reported batch survived.
//!
//! Batch N promises ballot round N and writes log slot N with a value derived from N; every
//! tenth batch also truncates the log through N - [`KEEP`], and the store compacts at a
//! low threshold, so kills land inside compactions too. On start it resumes after the
//! highest slot already stored.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chubby_protocol::{Ballot, NodeId, Slot, Value};
use chubby_server::paxos::{LogEntry, PersistBatch};
use chubby_server::storage::{Loaded, Storage, WalStorage};

/// Log entries kept below each truncating batch.
pub const KEEP: u64 = 30;

/// The value the test expects at slot `n`.
fn value_for(n: u64) -> Value {
    Value::commands(vec![format!("value-{n}-")
        .repeat(1 + (n % 7) as usize)
        .into_bytes()])
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: storage-crash-child DIR");
        return ExitCode::from(2);
    };
    let mut store = match WalStorage::open(&dir) {
        Ok(mut store) => {
            store.set_compact_slack(4096);
            store
        }
        Err(e) => {
            eprintln!("storage-crash-child: cannot open {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let mut next = match store.load() {
        Ok(Loaded::Empty) => 1,
        Ok(Loaded::State(state)) => state.log.keys().next_back().map_or(1, |s| s.0 + 1),
        Err(e) => {
            eprintln!("storage-crash-child: load failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    loop {
        let batch = PersistBatch {
            voter: (next == 1).then_some(true),
            promised: Some(Ballot {
                round: next,
                node: NodeId(1),
            }),
            chosen_through: Some(Slot(next)),
            truncate_through: (next % 10 == 0 && next > KEEP).then(|| Slot(next - KEEP)),
            members: None,
            entries: vec![(
                Slot(next),
                LogEntry {
                    ballot: Ballot {
                        round: next,
                        node: NodeId(1),
                    },
                    value: value_for(next),
                },
            )],
        };
        if let Err(e) = store.persist(&batch) {
            eprintln!("storage-crash-child: persist failed: {e}");
            return ExitCode::FAILURE;
        }
        let mut out = stdout.lock();
        if writeln!(out, "durable {next}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
        next += 1;
    }
}
