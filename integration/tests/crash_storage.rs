//! Durability of the acceptor's write-ahead log under `kill -9` (PML §4.2: an acceptor's
//! state is flushed before it replies; STYLE §9.5 "durability" row; sled's own crash tests
//! as the model), and corruption of its file detected, never used (PML §5.1).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chubby_protocol::Slot;
use chubby_server::storage::{Loaded, Storage, StorageError, WalStorage};

const CHILD: &str = env!("CARGO_BIN_EXE_storage-crash-child");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chubby-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Kills the child after it has reported some durable batches and returns the highest.
fn run_and_kill(dir: &std::path::Path, reports_before_kill: u64) -> u64 {
    let mut child = Command::new(CHILD)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut last = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("durable ").and_then(|n| n.parse().ok()) {
                last = n;
                let _ = tx.send(n);
            }
        }
        last
    });
    // Wait (on events, not time) until the child reported the wanted number of batches.
    let mut seen = 0;
    while seen < reports_before_kill {
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            break;
        }
        seen += 1;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn acknowledged_batches_survive_kill_9_a_hundred_times() {
    let dir = temp_dir("crash");
    let mut durable_max = 0;
    let mut lcg = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..100 {
        lcg = lcg
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let reports = 1 + (lcg >> 33) % 40;
        let reported = run_and_kill(&dir, reports);
        durable_max = durable_max.max(reported);
        let mut store = WalStorage::open(&dir).unwrap();
        let Loaded::State(state) = store
            .load()
            .unwrap_or_else(|e| panic!("round {round}: load failed: {e}"))
        else {
            panic!("round {round}: store empty after {durable_max} durable batches");
        };
        assert!(
            state.promised.round >= durable_max,
            "round {round}: promise {} < reported {durable_max}",
            state.promised
        );
        // The child truncates through N - 30 at every tenth batch N.
        let kept_from = state.truncated_through.0 + 1;
        assert!(
            kept_from + 40 > durable_max,
            "round {round}: truncated through {} with {durable_max} durable",
            state.truncated_through
        );
        for n in kept_from..=durable_max {
            let entry = state
                .log
                .get(&Slot(n))
                .unwrap_or_else(|| panic!("round {round}: slot {n} lost"));
            assert_eq!(entry.ballot.round, n);
            assert!(entry.value.commands[0].starts_with(format!("value-{n}-").as_bytes()));
        }
    }
    assert!(
        durable_max >= 100,
        "the child made progress: {durable_max} batches"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_flipped_byte_in_the_log_file_is_reported_never_used() {
    // PML §5.1: "we store the checksum of the contents of each file in the file". The byte is
    // flipped in the file itself, as a disk would (sled 0.34.7 took such a byte for the
    // torn end of its log and silently dropped everything after it).
    let dir = temp_dir("flip");
    run_and_kill(&dir, 40);
    let path = WalStorage::file_path(&dir);
    let mut raw = std::fs::read(&path).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    std::fs::write(&path, &raw).unwrap();
    let mut store = WalStorage::open(&dir).unwrap();
    match store.load() {
        Err(StorageError::Corrupt { key, reason }) => {
            assert_eq!(key, "wal");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("corruption not reported: {other:?}"),
    }
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sync_happens_before_the_reply() {
    // DESIGN §1a: prove the fsync happens before the acknowledgement, by tracing the child's
    // system calls: every "durable N" write to stdout follows an fdatasync/fsync.
    if !chubby_integration::test_support::strace_available() {
        return;
    }
    let dir = temp_dir("strace");
    let trace = dir.with_extension("trace");
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=fsync,fdatasync,write", "-o"])
        .arg(&trace)
        .arg(CHILD)
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..20 {
        lines.next().unwrap().unwrap();
    }
    // Closing the pipe makes the child's next acknowledgement fail, so it exits, and strace
    // exits with it. (Killing strace would only detach the child and leave it running.)
    drop(lines);
    let status = child.wait().unwrap();
    assert!(
        status.code().is_some(),
        "strace ended by a signal: {status}"
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut synced_since_reply = false;
    let mut replies = 0;
    for line in text.lines() {
        if line.contains("fdatasync(") || line.contains("fsync(") {
            synced_since_reply = true;
        } else if line.contains("write(1, \"durable ") && !line.contains("= -1") {
            // (A write that failed, after the test closed the pipe, is no reply.)
            assert!(
                synced_since_reply,
                "a reply was written with no sync before it:\n{line}"
            );
            synced_since_reply = false;
            replies += 1;
        }
    }
    assert!(replies >= 20, "saw {replies} replies in the trace");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&trace);
}
