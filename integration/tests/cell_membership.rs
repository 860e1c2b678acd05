//! Membership changes of a running cell with real processes (issue 4's acceptance): grow a
//! 3-replica cell to 5 and shrink it back to 3 while a client writes, through the operator's
//! real commands (`chubby cell issue-replica`'s library call, `chubby admin add-replica`,
//! `chubby admin remove-replica`, `chubby status --json`). The shrink removes the master
//! itself and another founder, so the cell ends up led by replicas that joined later.
//! Checked: every acknowledged write is present afterwards, the cell was never without a
//! master for more than one election (at most one new epoch), and the remaining replicas
//! converge on one digest. The longest gap between acknowledged writes is printed.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chubby_client::conn::CellConn;
use chubby_integration::real_cell::{binary, check_outcomes, FileWriter, RealCell, WriteOutcome};
use chubby_integration::test_support::{runtime, CONVERGE, ELECTION};
use chubby_protocol::cell::CellFile;
use chubby_protocol::client_msg::ReplicaRole;
use chubby_protocol::Slot;

/// Runs `chubby admin ARGS --cell FILE` (it returns once the change is in effect).
async fn admin(cell_file: PathBuf, args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(binary("chubby"))
            .arg("admin")
            .args(&args)
            .arg("--cell")
            .arg(&cell_file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "chubby admin {args:?} failed: {text}");
        text
    })
    .await
    .unwrap()
}

/// `chubby status --json` through the real command.
fn status_json(cell_file: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(binary("chubby"))
        .args(["status", "--json", "--cell"])
        .arg(cell_file)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The members in effect per `chubby status --json`, once a master with a lease answers
/// (a master renews its lease after learning a change, and a removed master's successor
/// needs an election).
async fn members_in_effect(cell_file: &std::path::Path) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + ELECTION;
    loop {
        let v = status_json(cell_file);
        if let Some(members) = v["members"].as_array() {
            return members
                .iter()
                .map(|m| usize::try_from(m.as_u64().unwrap()).unwrap())
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no master with a lease: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_running_cell_grows_to_five_and_shrinks_to_three_under_writes() {
    let mut cell = RealCell::start(3);
    let rt = runtime();
    rt.block_on(async {
        let conn = Arc::new(cell.connect());
        let first = cell.wait_master(&conn, ELECTION).await as usize;
        let writer = Arc::new(FileWriter::new(&conn, "/grow").await.unwrap());

        // A client writing all along, and a sampler noting every epoch a master serves in.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let outcomes = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let gaps = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let load = {
            let (writer, outcomes, gaps, stop) =
                (writer.clone(), outcomes.clone(), gaps.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut last_ack = tokio::time::Instant::now();
                let mut i = 0u64;
                while !*stop.borrow() {
                    let outcome = writer.write(i).await;
                    if outcome == WriteOutcome::Acked {
                        let gap = last_ack.elapsed();
                        let mut g = gaps.lock().unwrap();
                        *g = (*g).max(gap);
                        last_ack = tokio::time::Instant::now();
                    }
                    outcomes.lock().unwrap().insert(i, outcome);
                    i += 1;
                }
            })
        };
        let cell_file = cell.cell_file().to_owned();
        let epochs = {
            let (stop, cell_file) = (stop_rx.clone(), cell_file.clone());
            tokio::spawn(async move {
                let mut seen = BTreeSet::new();
                while !*stop.borrow() {
                    // The cell file grows as replicas are issued: read it anew each time.
                    let file = CellFile::load(&cell_file).unwrap();
                    let conn = CellConn::new(&file).unwrap();
                    for i in 0..file.replicas.len() {
                        if let Ok(s) = conn.status_of(i).await {
                            if s.role == ReplicaRole::Master && s.lease_remaining_ms.is_some() {
                                seen.insert(s.epoch);
                            }
                        }
                    }
                    conn.close().await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                seen
            })
        };

        // Grow: 4 and 5 start warm, then join one at a time.
        for id in [4usize, 5] {
            let addr = cell.issue_and_start(id);
            let out = admin(
                cell_file.clone(),
                vec!["add-replica".into(), "--id".into(), id.to_string(), "--addr".into(), addr],
            )
            .await;
            println!("{}", out.trim());
            let fresh = cell.connect();
            cell.wait_voting(&fresh, id, CONVERGE).await;
            fresh.close().await;
        }
        assert_eq!(members_in_effect(&cell_file).await, vec![1, 2, 3, 4, 5]);

        // Shrink: remove the master, then another founder.
        let fresh = cell.connect();
        let master = cell.wait_master(&fresh, ELECTION).await as usize;
        fresh.close().await;
        let remove = |id: usize| {
            admin(
                cell_file.clone(),
                vec!["remove-replica".into(), "--id".into(), id.to_string()],
            )
        };
        let said = remove(master).await;
        println!("{}", said.trim());
        assert!(
            said.contains(&format!("replica {master} may be stopped now")),
            "remove-replica says when the removed replica may be stopped: {said}"
        );
        // Then a founder that is not the new master (removing that too would cost a second
        // election, which is not what this test measures).
        let fresh = cell.connect();
        let successor = cell.wait_master(&fresh, ELECTION).await as usize;
        fresh.close().await;
        let other = (1..=3).find(|&i| i != master && i != successor).unwrap();
        println!("{}", remove(other).await.trim());
        let remaining: Vec<usize> = (1..=5).filter(|i| *i != master && *i != other).collect();
        let members = members_in_effect(&cell_file).await;
        assert_eq!(members, remaining);
        let fresh = cell.connect();
        let leader = cell.wait_master(&fresh, ELECTION).await as usize;
        fresh.close().await;
        assert!(remaining.contains(&leader), "master {leader} is a member");

        // Keep writing a little under the new set, then stop and check everything.
        let until = outcomes.lock().unwrap().len() + 30;
        while outcomes.lock().unwrap().len() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_tx.send(true).unwrap();
        load.await.unwrap();
        let epochs = epochs.await.unwrap();
        for id in [master, other] {
            cell.kill9(id);
        }
        let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
        let (acked, unknown) = check_outcomes(&writer, &outcomes).await;
        let fresh = cell.connect();
        let slot = cell.wait_converged(&fresh, &remaining, Slot(1), CONVERGE).await;
        fresh.close().await;
        println!(
            "BENCH membership 3->5->3 under writes: {acked} acknowledged writes all present, \
             {unknown} unknown; longest gap between acknowledged writes {} ms; epochs seen {epochs:?}; \
             first master {first}, last master {leader}; replicas {remaining:?} converged at {slot}",
            gaps.lock().unwrap().as_millis()
        );
        assert!(acked >= 50, "the client kept writing ({acked} acknowledged)");
        assert!(
            epochs.len() <= 2,
            "more than one election while changing members: epochs {epochs:?}"
        );
        conn.close().await;
    });
}
