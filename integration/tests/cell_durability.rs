//! The acceptor's durability rule, observed at the system-call level on a real replica
//! (issue 4's acceptance; PML §4.2, DESIGN §1a): `strace` is attached to a running
//! follower while the cell takes writes, and every Accepted reply the follower's transport
//! hands to QUIC is preceded, in the trace, by an `fdatasync`/`fsync` that completed after
//! the matching Accept arrived.
//!
//! The follower runs with the peer transport's trace logs on, so its log writes
//! (`write(2, "...peer message received ... kind=accept slot=S")` and `"...peer message
//! sent ... kind=accepted slot=S"`) appear in the same trace as its syncs. An Accept for a
//! slot the acceptor already knows chosen needs no write (its value is durable as chosen);
//! the acceptor's own trace line says so and such a reply is not judged. Skipped when
//! strace is missing, unless `CHUBBY_REQUIRE_STRACE` is set (CI sets it).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chubby_integration::real_cell::{FileWriter, RealCell, WriteOutcome};
use chubby_integration::test_support::{runtime, CONVERGE, ELECTION};

/// Stops strace on drop (SIGINT: it detaches from the replica and flushes its output).
struct Tracer(Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// What the trace shows: replies checked, and the first reply that left without a sync
/// completing after its Accept arrived.
#[derive(Debug, Default)]
struct Verdict {
    replies_checked: usize,
    syncs: usize,
    violation: Option<String>,
}

fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(name)? + name.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn judge(trace: &str) -> Verdict {
    let mut verdict = Verdict::default();
    // Slot -> syncs completed when its Accept was logged as received.
    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    for raw in trace.lines() {
        // Field values may be quoted (escaped by strace): kind=\"accept\" reads kind=accept.
        let line = raw.replace("\\\"", "").replace('"', "");
        let line = line.as_str();
        let sync_done = (line.contains("fdatasync(") || line.contains("fsync("))
            && !line.contains("<unfinished")
            || line.contains("<... fdatasync resumed>")
            || line.contains("<... fsync resumed>");
        if sync_done && line.trim_end().ends_with("= 0") {
            verdict.syncs += 1;
        } else if line.contains("peer message received") && line.contains("kind=accept ") {
            if let Some(slot) = field(line, "slot=") {
                received.entry(slot).or_insert(verdict.syncs);
            }
        } else if line.contains("accept for a slot known chosen") {
            // Its value is durable as chosen already: the reply needs no new sync.
            if let Some(slot) = field(line, "slot=") {
                received.remove(&slot);
            }
        } else if line.contains("peer message sent") && line.contains("kind=accepted ") {
            let Some(slot) = field(line, "slot=") else {
                continue;
            };
            // An Accept that arrived before strace attached is not judged.
            let Some(&syncs_then) = received.get(&slot) else {
                continue;
            };
            verdict.replies_checked += 1;
            if verdict.syncs <= syncs_then && verdict.violation.is_none() {
                verdict.violation = Some(format!(
                    "Accepted for slot {slot} sent with no sync since its Accept arrived: {line}"
                ));
            }
        }
    }
    verdict
}

#[test]
fn the_judge_catches_a_reply_before_its_sync() {
    let ok =
        "write(2, \"... peer message received me=r2 peer=r1 kind=accept slot=7\\n\", 60) = 60\n\
              fdatasync(9)                            = 0\n\
              write(2, \"... peer message sent me=r2 peer=r1 kind=accepted slot=7\\n\", 60) = 60\n";
    let v = judge(ok);
    assert_eq!((v.replies_checked, v.syncs), (1, 1));
    assert!(v.violation.is_none());
    let bad =
        "write(2, \"... peer message received me=r2 peer=r1 kind=accept slot=7\\n\", 60) = 60\n\
               write(2, \"... peer message sent me=r2 peer=r1 kind=accepted slot=7\\n\", 60) = 60\n\
               [pid 5] fdatasync(9 <unfinished ...>\n\
               [pid 5] <... fdatasync resumed>)          = 0\n";
    let v = judge(bad);
    assert_eq!(v.replies_checked, 1);
    assert!(v.violation.is_some());
}

#[test]
fn an_acceptor_syncs_before_its_reply_leaves() {
    if !chubby_integration::test_support::strace_available() {
        return;
    }
    let cell = RealCell::start_with(
        3,
        "",
        "info,chubby_server::transport::peer=trace,chubby_server::paxos::acceptor=trace",
    );
    let out = cell.cell_dir().join("follower.strace");
    runtime().block_on(async {
        let conn = cell.connect();
        let master = cell.wait_master(&conn, ELECTION).await as usize;
        let follower = cell.follower_of(master);
        let writer = FileWriter::new(&conn, "/d").await.unwrap();
        let pid = cell.pid(follower);
        let tracer = Tracer(
            Command::new("strace")
                .args([
                    "-f",
                    "-qq",
                    "-s",
                    "300",
                    "-e",
                    "trace=fdatasync,fsync,write",
                ])
                .arg("-o")
                .arg(&out)
                .arg("-p")
                .arg(pid.to_string())
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Attached once heartbeats' trace lines show up in the trace.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("peer message")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "strace never attached"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // More writes than replies required: a reply is judged only if its Accept's
        // arrival precedes it in the trace, which the traced follower's threads do not
        // always keep (CI once judged 19 replies of 20 writes, none violating; the cause
        // was not found).
        for i in 0..30 {
            assert_eq!(writer.write(i).await, WriteOutcome::Acked, "write {i}");
        }
        // The traced follower is slowed down: let it process every Accept before detaching.
        cell.wait_caught_up(&conn, master, CONVERGE).await;
        // Having applied the last slot does not mean its Accepted reply has left: the
        // transport task writes it on its own thread (CI once detached one write early).
        // Wait until the trace shows the replies, or give up and let the judge say so.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while judge(&std::fs::read_to_string(&out).unwrap_or_default()).replies_checked < 30
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(tracer);
        conn.close().await;
    });
    let trace = std::fs::read_to_string(&out).unwrap();
    let verdict = judge(&trace);
    println!(
        "BENCH acceptor-durability: {} Accepted replies checked against {} syncs",
        verdict.replies_checked, verdict.syncs
    );
    assert!(verdict.violation.is_none(), "{:?}", verdict.violation);
    assert!(
        verdict.replies_checked >= 20,
        "too few replies seen in the trace: {verdict:?}"
    );
}
