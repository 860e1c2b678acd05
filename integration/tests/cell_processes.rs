//! Real `chubby-server` processes on loopback (issue 4's acceptance): elections in 3- and
//! 5-replica cells, replication to every replica, `kill -9` of the master and of a follower
//! under load, and the `chubby status` command. Every process is killed by the test's
//! `RealCell` when it ends, pass or fail.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chubby_client::conn::CellConn;
use chubby_integration::real_cell::{binary, check_outcomes, FileWriter, RealCell, WriteOutcome};
use chubby_integration::test_support::{runtime, CONVERGE, ELECTION};
use chubby_protocol::Slot;

/// Elects, writes `writes` files through the master, checks every replica applied them
/// with equal digests, and checks `chubby status --json`.
fn elect_and_replicate(replicas: usize, writes: u64) {
    let cell = RealCell::start(replicas);
    runtime().block_on(async {
        let conn = cell.connect();
        let master = cell.wait_master(&conn, ELECTION).await;
        let writer = FileWriter::new(&conn, "/r").await.unwrap();
        for i in 0..writes {
            assert_eq!(writer.write(i).await, WriteOutcome::Acked, "write {i}");
        }
        let ids: Vec<usize> = (1..=replicas).collect();
        let slot = cell
            .wait_converged(&conn, &ids, Slot(writes), CONVERGE)
            .await;
        for i in 0..writes {
            let got = writer.read(&writer.path_of(i)).await.unwrap();
            assert_eq!(got, Some(FileWriter::contents_of(i)), "file {i}");
        }
        println!("{replicas} replicas: master {master}, all applied {slot} with one digest");
        conn.close().await;

        // The operator's view, through the real command.
        let out = std::process::Command::new(binary("chubby"))
            .args(["status", "--json", "--cell"])
            .arg(cell.cell_file())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["master"].as_u64(), Some(u64::from(master)), "{v}");
        assert!(v["epoch"].is_object(), "{v}");
        let reps = v["replicas"].as_array().unwrap();
        assert_eq!(reps.len(), replicas);
        for (i, r) in reps.iter().enumerate() {
            assert_eq!(r["id"].as_u64(), Some(i as u64 + 1), "{r}");
            assert_eq!(r["reachable"], true, "{r}");
            assert!(r["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
            let role = r["role"].as_str().unwrap();
            assert_eq!(role == "master", i as u64 + 1 == u64::from(master), "{r}");
            assert!(r["applied"].as_u64().unwrap() >= slot.0, "{r}");
        }
    });
}

#[test]
fn three_replicas_elect_and_replicate() {
    elect_and_replicate(3, 20);
}

#[test]
fn five_replicas_elect_and_replicate() {
    elect_and_replicate(5, 20);
}

/// Writes continuously from a task; returns each write's outcome.
async fn write_until(
    writer: Arc<FileWriter>,
    stop: tokio::sync::watch::Receiver<bool>,
    progress: tokio::sync::mpsc::UnboundedSender<(u64, WriteOutcome, tokio::time::Instant)>,
) {
    let mut i = 0;
    while !*stop.borrow() {
        let outcome = writer.write(i).await;
        let _ = progress.send((i, outcome, tokio::time::Instant::now()));
        i += 1;
    }
}

#[test]
fn master_kill9_under_load_loses_no_acknowledged_write() {
    let mut cell = RealCell::start(3);
    let rt = runtime();
    rt.block_on(async {
        let conn = Arc::new(cell.connect());
        let old = cell.wait_master(&conn, ELECTION).await;
        let writer = Arc::new(FileWriter::new(&conn, "/load").await.unwrap());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(write_until(writer.clone(), stop_rx, tx));

        let mut outcomes = BTreeMap::new();
        // Steady load first.
        while outcomes.len() < 50 {
            let (i, o, _) = rx.recv().await.unwrap();
            outcomes.insert(i, o);
        }
        cell.kill9(old as usize);
        let killed_at = tokio::time::Instant::now();
        println!("killed master {old}");
        // The first write acknowledged after the kill measures the gap.
        let gap = loop {
            let (i, o, at) = rx.recv().await.unwrap();
            let acked = o == WriteOutcome::Acked;
            outcomes.insert(i, o);
            if acked && at > killed_at {
                break at - killed_at;
            }
            assert!(killed_at.elapsed() < Duration::from_secs(60), "no write succeeded after the kill");
        };
        let new = cell.wait_master(&conn, ELECTION).await;
        assert_ne!(new, old, "the killed replica cannot be master");
        println!("BENCH master-kill-9: gap from kill to next acknowledged write {} ms (new master {new})", gap.as_millis());
        while outcomes.len() < 150 {
            let (i, o, _) = rx.recv().await.unwrap();
            outcomes.insert(i, o);
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        while let Ok((i, o, _)) = rx.try_recv() {
            outcomes.insert(i, o);
        }

        let (acked, unknown) = check_outcomes(&writer, &outcomes).await;
        println!("{acked} acknowledged writes all present; {unknown} with unknown outcome");
        assert!(acked >= 100);
        // Exactly-once calls (issue 21): the exclusive create in flight at the kill is sent
        // again with its number and answered once, with its true outcome; none is left
        // unknown or refused `Exists` because its first copy was applied.
        let failed: Vec<_> = outcomes
            .iter()
            .filter(|(_, o)| **o != WriteOutcome::Acked)
            .collect();
        assert!(failed.is_empty(), "writes not acknowledged: {failed:?}");
        assert_eq!(unknown, 0);
        conn.close().await;
    });
}

/// Picks a follower of the master of a 3-replica cell and makes `writes` acknowledged
/// writes under `dir`; returns `(master, follower, writer)`.
async fn master_follower_and_writes(
    cell: &RealCell,
    conn: &CellConn,
    dir: &str,
    writes: u64,
) -> (usize, usize, FileWriter) {
    let master = cell.wait_master(conn, ELECTION).await as usize;
    let follower = cell.follower_of(master);
    let writer = FileWriter::new(conn, dir).await.unwrap();
    for i in 0..writes {
        assert_eq!(writer.write(i).await, WriteOutcome::Acked, "write {i}");
    }
    (master, follower, writer)
}

/// Makes writes `range` (each must be acknowledged), then waits until all three replicas
/// applied what the master had applied, with one digest.
async fn write_then_converge(
    cell: &RealCell,
    conn: &CellConn,
    writer: &FileWriter,
    master: usize,
    range: std::ops::Range<u64>,
) -> Slot {
    for i in range {
        assert_eq!(writer.write(i).await, WriteOutcome::Acked, "write {i}");
    }
    cell.wait_caught_up(conn, master, CONVERGE).await
}

#[test]
fn follower_kill9_and_restart_catches_up() {
    let mut cell = RealCell::start(3);
    runtime().block_on(async {
        let conn = cell.connect();
        let (master, follower, writer) = master_follower_and_writes(&cell, &conn, "/f", 10).await;
        cell.kill9(follower);
        // The cell keeps writing with a follower down; it catches up after its restart.
        for i in 10..50 {
            assert_eq!(writer.write(i).await, WriteOutcome::Acked, "write {i}");
        }
        cell.spawn(follower);
        let slot = write_then_converge(&cell, &conn, &writer, master, 50..60).await;
        println!("follower {follower} caught up to {slot} after kill -9 and restart");
        assert!(cell
            .log(follower)
            .contains("resuming from the data directory"));
        // The master replaced its dead connection when the follower connected anew or the
        // connection fell silent, so the restarted follower heard heartbeats in time and
        // called no election.
        assert_eq!(cell.wait_master(&conn, ELECTION).await as usize, master);
        let master_log = cell.log(master);
        assert!(
            !master_log.contains("stepped down"),
            "a follower restart cost the master its mastership:\n{master_log}"
        );
        // Replaced because the follower connected anew, or because the old connection fell
        // silent (a restart within a second of the cell's start).
        assert!(
            master_log.contains("replacing our connection to it"),
            "{master_log}"
        );
        conn.close().await;
    });
}

#[test]
fn a_follower_behind_the_truncated_log_catches_up_through_a_snapshot() {
    // PML §5.5 / issue 4: snapshots every 40 slots, 10 log entries kept below each. A
    // follower stopped while the cell writes past several snapshots finds its peers' logs
    // truncated beyond it: it fetches a snapshot, installs it, then catches up from the log.
    let mut cell = RealCell::start_tuned(3, "snapshot_every_entries = 40\nlog_keep_entries = 10");
    runtime().block_on(async {
        let conn = cell.connect();
        let (master, follower, writer) = master_follower_and_writes(&cell, &conn, "/s", 5).await;
        cell.kill9(follower);
        for i in 5..150 {
            assert_eq!(writer.write(i).await, WriteOutcome::Acked, "write {i}");
        }
        let status = cell.statuses(&conn).await[master - 1].clone().unwrap();
        assert!(status.snapshot > Slot(40), "master snapshotted: {status:?}");
        assert!(
            status.log_entries < 100,
            "master's log truncated: {} entries for {} applied",
            status.log_entries,
            status.applied
        );
        cell.spawn(follower);
        let slot = write_then_converge(&cell, &conn, &writer, master, 150..160).await;
        let log = cell.log(follower);
        let fetch = log
            .find("fetching its snapshot")
            .unwrap_or_else(|| panic!("no snapshot fetch in the follower's log:\n{log}"));
        let installed = log[fetch..]
            .find("installed a peer's snapshot")
            .expect("snapshot installed");
        assert!(log[fetch + installed..].contains("snapshot installed: catching up from the log"));
        for i in (0..160).step_by(7) {
            let contents = writer.read(&writer.path_of(i)).await.unwrap();
            assert_eq!(contents, Some(FileWriter::contents_of(i)), "file {i}");
        }
        println!("follower {follower} caught up through a snapshot to {slot}");
        assert_eq!(
            cell.wait_master(&conn, ELECTION).await as usize,
            master,
            "the follower's return cost the master its mastership"
        );

        // A restart resumes from its own snapshot plus the log after it.
        cell.kill9(follower);
        cell.spawn(follower);
        let slot = write_then_converge(&cell, &conn, &writer, master, 160..165).await;
        assert!(cell
            .log(follower)
            .contains("database restored from its snapshot"));
        println!("follower {follower} restarted from its snapshot and converged at {slot}");
        conn.close().await;
    });
}

#[test]
fn wiped_follower_rebuilds_before_it_votes() {
    let mut cell = RealCell::start(3);
    runtime().block_on(async {
        let conn = cell.connect();
        let (master, follower, writer) =
            master_follower_and_writes(&cell, &conn, "/wipe", 20).await;
        cell.kill9(follower);
        std::fs::remove_dir_all(cell.replica_dir(follower).join("data")).unwrap();
        cell.spawn(follower);
        let slot = write_then_converge(&cell, &conn, &writer, master, 20..30).await;
        // Catching up can finish before the rebuild rule is met: wait for it to vote again.
        cell.wait_voting(&conn, follower, CONVERGE).await;
        let log = cell
            .wait_log(follower, "rebuild complete: voting again", CONVERGE)
            .await;
        let wiped_at = log.find("empty data directory").expect("wipe reported");
        let waiting_at = log[wiped_at..]
            .find("rebuild: bounds known; waiting for a new instance")
            .expect("rebuild bounds logged");
        let voting_at = log[wiped_at..]
            .find("rebuild complete: voting again")
            .expect("rebuild completion logged");
        assert!(
            waiting_at < voting_at,
            "voted before a new instance completed:\n{log}"
        );
        let after_wipe = &log[wiped_at..wiped_at + voting_at];
        assert!(
            !after_wipe.contains("starting election"),
            "campaigned while rebuilding:\n{log}"
        );
        println!("wiped follower {follower} rebuilt and converged at {slot}");
        conn.close().await;
    });
}

/// A flipped bit in a follower's stored log (inside a synced frame, as a disk would do it) is
/// caught at start-up by the write-ahead log's checksums, reported loudly, and the replica
/// rebuilds from its peers under the no-vote rule (PML §5.1). sled 0.34.7, the store before,
/// took such a byte for the torn end of its log and silently dropped acknowledged state.
#[test]
fn corrupt_follower_store_is_detected_reported_and_recovered() {
    let mut cell = RealCell::start(3);
    runtime().block_on(async {
        let conn = cell.connect();
        let (master, follower, writer) =
            master_follower_and_writes(&cell, &conn, "/corrupt", 20).await;
        cell.wait_converged(&conn, &[1, 2, 3], Slot(20), CONVERGE)
            .await;
        cell.kill9(follower);
        let flipped = flip_byte_of(&cell.replica_dir(follower).join("data/paxos"), b"write 7\n");
        assert!(flipped, "no stored copy of a known value found to corrupt");
        cell.spawn(follower);
        write_then_converge(&cell, &conn, &writer, master, 20..30).await;
        let log = cell.log(follower);
        assert!(
            log.contains("CORRUPT STORE"),
            "corruption not reported:\n{log}"
        );
        assert!(log.contains("rebuild complete: voting again"), "{log}");
        conn.close().await;
    });
}

/// Flips one bit inside the first stored occurrence of `needle` in any file under `dir`.
fn flip_byte_of(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                bytes[at + 1] ^= 0x20;
                std::fs::write(&path, bytes).unwrap();
                return true;
            }
        }
    }
    false
}

/// Runs `chubby-server --config cfg` expecting it to refuse to start; returns its stderr.
fn refused_start(cfg: &std::path::Path) -> String {
    use std::process::{Command, Stdio};
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(binary("chubby-server"))
        .arg("--config")
        .arg(cfg)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    // A refused start exits at once; one that wrongly starts is killed, not waited on forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.is_some_and(|s| !s.success()),
        "started with {} ({status:?})",
        cfg.display()
    );
    std::fs::read_to_string(stderr.path()).unwrap()
}

#[test]
fn bad_starts_are_refused_with_clear_errors() {
    let mut cell = RealCell::start(1);
    let dir = cell.replica_dir(1);
    let cfg = dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();

    // The data directory is in use: replica 1 is running from it.
    runtime().block_on(async {
        let conn = cell.connect();
        cell.wait_master(&conn, ELECTION).await;
        conn.close().await;
    });
    let err = refused_start(&cfg);
    assert!(
        err.contains("in use by another running chubby-server"),
        "{err}"
    );
    cell.kill9(1);

    // Its peer port is taken by another program.
    let loaded = chubby_protocol::cell::ReplicaConfig::load(&cfg).unwrap();
    let port = loaded.me().unwrap().peer_port;
    let squatter = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let err = refused_start(&cfg);
    assert!(
        err.contains(&format!("cannot bind the peer port 127.0.0.1:{port}")),
        "{err}"
    );
    drop(squatter);

    // A malformed file names itself.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "id = \"one\"\n").unwrap();
    let err = refused_start(&bad);
    assert!(err.contains("bad.toml"), "{err}");

    // Another cell's certificate.
    let other = tempfile::tempdir().unwrap();
    chubby_protocol::cell::init_cell(&other.path().join("c"), 1, "127.0.0.1", 40_500).unwrap();
    let foreign = dir.join("foreign.toml");
    let other_ca = other.path().join("c/ca.pem");
    std::fs::write(
        &foreign,
        text.replace("../ca.pem", other_ca.to_str().unwrap()),
    )
    .unwrap();
    // (Today the start is refused because the CA's fingerprint does not match the data
    // directory's cell-id; checking the replica certificate's signature against the CA at
    // start is still to do.)
    let err = refused_start(&foreign);
    assert!(
        err.contains("certificate") || err.contains("another cell"),
        "{err}"
    );

    // Another cell's data directory (same CA check, different cell id).
    let other_data = other.path().join("c/replica-1/data");
    std::fs::write(other_data.join("cell-id"), "0123456789abcdef\n").unwrap();
    let misplaced = dir.join("misplaced.toml");
    std::fs::write(
        &misplaced,
        text.replace(
            "data_dir = \"data\"",
            &format!("data_dir = {:?}", other_data.to_str().unwrap()),
        ),
    )
    .unwrap();
    let err = refused_start(&misplaced);
    assert!(err.contains("belongs to another cell"), "{err}");
}
