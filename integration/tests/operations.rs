//! Operator essentials on real `chubby-server` processes (issue 7): every replica's
//! Prometheus metrics, and `chubby admin backup` / `chubby cell restore` proving that a
//! restored cell holds the same data. Every process is stopped by its test's `RealCell`.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::process::Command;

use chubby_client::client::{Client, ClientOptions};
use chubby_integration::real_cell::{binary, sample, FileWriter, RealCell, WriteOutcome};
use chubby_integration::test_support::{runtime, CONVERGE, ELECTION};
use chubby_protocol::{Slot, Stat};

#[test]
fn every_replica_serves_prometheus_metrics() {
    let cell = RealCell::start(3);
    let writes = 20;
    let master = runtime().block_on(async {
        let conn = cell.connect();
        let master = cell.wait_master(&conn, ELECTION).await;
        let writer = FileWriter::new(&conn, "/m").await.unwrap();
        for i in 0..writes {
            assert_eq!(writer.write(i).await, WriteOutcome::Acked, "write {i}");
        }
        cell.wait_converged(&conn, &[1, 2, 3], Slot(writes), CONVERGE)
            .await;
        conn.close().await;
        master as usize
    });
    let page = cell.metrics(master);
    let get = |page: &str, name: &str| {
        sample(page, name).unwrap_or_else(|| panic!("no sample {name} in:\n{page}"))
    };
    assert_eq!(get(&page, "chubby_is_master"), 1.0);
    // Each write opened (and created) a file: an Open call answered ok.
    assert!(
        get(&page, "chubby_requests_total{call=\"Open\",outcome=\"ok\"}") >= writes as f64,
        "{page}"
    );
    assert!(get(&page, "chubby_disk_sync_seconds_count") > 0.0, "{page}");
    assert!(
        get(&page, "chubby_paxos_instance_seconds_count") >= writes as f64,
        "{page}"
    );
    assert!(
        get(&page, "chubby_paxos_batch_commands_count") > 0.0,
        "{page}"
    );
    assert!(get(&page, "chubby_sessions") >= 1.0, "{page}");
    assert!(get(&page, "chubby_nodes") >= writes as f64, "{page}");
    assert!(
        get(&page, "chubby_master_lease_remaining_seconds") > 0.0,
        "{page}"
    );
    assert!(get(&page, "process_resident_memory_bytes") > 1e6, "{page}");
    assert!(page.contains("# TYPE chubby_request_duration_seconds histogram"));
    for id in (1..=3).filter(|id| *id != master) {
        let page = cell.metrics(id);
        assert_eq!(get(&page, "chubby_is_master"), 0.0, "replica {id}");
        assert!(
            get(&page, "chubby_applied_slot") >= writes as f64,
            "replica {id}: {page}"
        );
    }
}

/// Everything a client can see of a node that a backup must carry over.
fn view(stat: &Stat) -> String {
    format!(
        "{:?} eph={} inst={:?} gens={:?}/{:?}/{:?} sum={:?} size={} acl={:?}",
        stat.kind,
        stat.ephemeral,
        stat.instance,
        stat.content_generation,
        stat.lock_generation,
        stat.acl_generation,
        stat.checksum,
        stat.size_bytes,
        stat.acl
    )
}

/// Every node under `/` with its contents (files) and what its stat shows.
async fn dump(client: &Client) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec!["/".to_owned()];
    while let Some(dir) = todo.pop() {
        for (name, stat) in client.list(&dir).await.unwrap() {
            let path = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            let contents = if stat.kind == chubby_protocol::NodeKind::Directory {
                todo.push(path.clone());
                Vec::new()
            } else {
                client.get(&path).await.unwrap().0.as_ref().clone()
            };
            out.insert(path, (view(&stat), contents));
        }
    }
    out
}

fn chubby(args: &[&str]) -> std::process::Output {
    Command::new(binary("chubby")).args(args).output().unwrap()
}

#[test]
fn a_restored_cell_holds_the_same_data() {
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("cell.backup");
    let cell = RealCell::start(3);
    let before = runtime().block_on(async {
        let conn = cell.connect();
        cell.wait_master(&conn, ELECTION).await;
        let client = Client::connect(conn.cell_file(), ClientOptions::default())
            .await
            .unwrap();
        client.mkdir("/svc", false).await.unwrap();
        client.mkdir("/svc/db", false).await.unwrap();
        for i in 0..30 {
            let body = format!("config {i}\n").repeat(i + 1);
            client
                .put(&format!("/svc/db/f{i}"), body.into_bytes(), None)
                .await
                .unwrap();
        }
        // Content generations above one, and a non-default ACL.
        for round in 0..3 {
            client
                .put(
                    "/svc/leader",
                    format!("replica-{round}\n").into_bytes(),
                    None,
                )
                .await
                .unwrap();
        }
        client
            .put("/acl/ops", b"admin\n".to_vec(), None)
            .await
            .unwrap();
        let mut acl = client.stat("/svc/db/f0").await.unwrap().unwrap().acl;
        acl.write = "ops".to_owned();
        client.set_acl("/svc/db/f0", acl, None).await.unwrap();
        let before = dump(&client).await;
        client.shutdown().await;
        conn.close().await;
        before
    });
    assert!(before.len() > 30, "{before:?}");

    let cell_file = cell.cell_file().to_str().unwrap().to_owned();
    let out = chubby(&[
        "admin",
        "backup",
        "--cell",
        &cell_file,
        backup.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("bytes written to"), "{said}");
    drop(cell);

    // A damaged backup is refused, naming the problem, and creates nothing.
    let mut bytes = std::fs::read(&backup).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let bad = work.path().join("bad.backup");
    std::fs::write(&bad, &bytes).unwrap();
    let refused_dir = work.path().join("refused");
    let out = chubby(&[
        "cell",
        "restore",
        "--from",
        bad.to_str().unwrap(),
        "--dir",
        refused_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        !refused_dir.exists(),
        "nothing created for a refused backup"
    );

    let restored = RealCell::start_restored(3, &backup);
    let after = runtime().block_on(async {
        let conn = restored.connect();
        restored.wait_master(&conn, ELECTION).await;
        let client = Client::connect(conn.cell_file(), ClientOptions::default())
            .await
            .unwrap();
        let after = dump(&client).await;
        // The restored cell is live: it takes writes.
        client
            .put("/svc/after", b"restored\n".to_vec(), None)
            .await
            .unwrap();
        client.shutdown().await;
        conn.close().await;
        after
    });
    assert_eq!(
        before, after,
        "the restored cell differs from the backed-up one"
    );
    for id in 1..=3 {
        let log = restored.log(id);
        assert!(log.contains("founding this cell from a backup"), "{log}");
    }
    // The backup was consumed by the first start.
    assert!(!restored
        .replica_dir(1)
        .join("data")
        .join(chubby_protocol::cell::RESTORE_FILE)
        .exists());
}
