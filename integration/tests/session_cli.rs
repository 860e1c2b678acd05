//! Sessions, events and locks through the real `chubby` command against real replicas
//! (issue 5's acceptance): `watch` sees another client's `put`; `lock --nonblock` fails
//! with its own exit code while another `lock` holds; a `kill -9`ed holder frees the lock
//! after its lease plus lock-delay and not before; a client stopped past its lease and
//! grace loses the lock and its command is stopped, and a stopped library client loses its
//! ephemeral file and lock and learns it expired; a session survives `kill -9` of the master
//! with its lock held and sees the fail-over event. Every process a test starts is
//! killed when the test ends, pass or fail.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chubby_client::client::{Client, ClientEvent, ClientOptions, OpenOptions};
use chubby_client::protocol::client_msg::LockState;
use chubby_client::protocol::LockMode;
use chubby_client::session::SessionStatus;
use chubby_integration::real_cell::{binary, RealCell};
use chubby_integration::test_support::{runtime, ELECTION};

/// A child process killed (with everything it wrote a pid for) when dropped.
struct Proc {
    child: Child,
    pid_files: Vec<std::path::PathBuf>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for f in &self.pid_files {
            if let Ok(pid) = std::fs::read_to_string(f) {
                let _ = Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn chubby(cell: &RealCell) -> Command {
    let mut cmd = Command::new(binary("chubby"));
    cmd.env("CHUBBY_CELL", cell.cell_file());
    cmd
}

/// Waits (polling a file the command creates) until `path` exists.
fn wait_file(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < timeout,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `chubby lock [extra] PATH -- sh -c '...; exec sleep 300'`: the command writes its pid to
/// DIR/NAME.pid (so the test can kill it) and its `CHUBBY_SEQUENCER` to DIR/NAME.seq, then
/// creates the marker DIR/NAME, which says the lock is held.
fn holder(cell: &RealCell, dir: &Path, name: &str, extra: &[&str], path: &str) -> Proc {
    let pid = dir.join(format!("{name}.pid"));
    let seq = dir.join(format!("{name}.seq"));
    let marker = dir.join(name);
    let script = format!(
        "echo $$ > {}; echo \"$CHUBBY_SEQUENCER\" > {}; touch {}; exec sleep 300",
        pid.display(),
        seq.display(),
        marker.display()
    );
    let child = chubby(cell)
        .arg("lock")
        .args(extra)
        .args([path, "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Proc {
        child,
        pid_files: vec![pid],
    }
}

/// `chubby check-sequencer` on the token a holder saved in `file` prints `verdict` and
/// exits with `code`.
fn check_sequencer(cell: &RealCell, file: &Path, verdict: &str, code: i32) {
    let token = std::fs::read_to_string(file).unwrap();
    let check = chubby(cell)
        .args(["check-sequencer", token.trim()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    assert_eq!(printed.trim(), verdict, "{check:?}");
    assert_eq!(check.status.code(), Some(code));
}

#[test]
fn watch_sees_a_put_from_another_client() {
    let cell = RealCell::start(3);
    runtime().block_on(async {
        let conn = cell.connect();
        cell.wait_master(&conn, ELECTION).await;
        conn.close().await;
    });
    let put = |text: &str| {
        let out = chubby(&cell).args(["put", "/w", text]).output().unwrap();
        assert!(
            out.status.success(),
            "put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    put("one");
    let mut watch = Proc {
        child: chubby(&cell)
            .args(["watch", "/w"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
        pid_files: Vec::new(),
    };
    let stdout = watch.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(first.contains("\"watching\""), "{first}");
    put("two");
    let event = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(v["event"], "contents_modified", "{event}");
    assert_eq!(v["path"], "/w");
    let cat = chubby(&cell).args(["cat", "/w"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "two");
    let missing = chubby(&cell).args(["cat", "/nope"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("/nope") && err.contains("no such node"),
        "{err}"
    );
}

#[test]
fn nonblock_lock_fails_with_its_own_exit_code_while_another_holds_it() {
    let cell = RealCell::start(3);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let conn = cell.connect();
        cell.wait_master(&conn, ELECTION).await;
        conn.close().await;
    });
    let _holder = holder(&cell, dir.path(), "held", &[], "/l");
    wait_file(&dir.path().join("held"), Duration::from_secs(30));
    let out = chubby(&cell)
        .args(["lock", "--nonblock", "/l", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/l") && err.contains("held"), "{err}");
    // A command that needs the lock for a while gives up at its timeout.
    let started = Instant::now();
    let out = chubby(&cell)
        .args(["lock", "--timeout", "1s", "/l", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The sequencer the holder got is valid while it holds the lock, and a forged one is
    // refused before it reaches the cell.
    check_sequencer(&cell, &dir.path().join("held.seq"), "valid", 0);
    let forged = chubby(&cell)
        .args(["check-sequencer", "chubby-seq1:00"])
        .output()
        .unwrap();
    assert_eq!(forged.status.code(), Some(1), "{forged:?}");
}

#[test]
fn a_killed_holder_frees_the_lock_after_its_lease_plus_lock_delay_and_not_before() {
    const LEASE_MS: u64 = 2_000;
    const DELAY_MS: u64 = 3_000;
    let cell = RealCell::start_tuned(3, &format!("session_lease_ms = {LEASE_MS}"));
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let conn = cell.connect();
        cell.wait_master(&conn, ELECTION).await;
        conn.close().await;
    });
    let mut h = holder(&cell, dir.path(), "held", &["--lock-delay", "3s"], "/k");
    wait_file(&dir.path().join("held"), Duration::from_secs(30));
    let _ = h.child.kill(); // SIGKILL: no CloseSession, no Release
    let killed = Instant::now();
    let early = chubby(&cell)
        .args(["lock", "--nonblock", "/k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        early.status.code(),
        Some(75),
        "taken before lease + lock-delay: {early:?}"
    );
    let out = chubby(&cell)
        .args(["lock", "/k", "--", "true"])
        .output()
        .unwrap();
    let waited = killed.elapsed();
    assert!(out.status.success(), "{out:?}");
    // The master's lease for the session had at least a third of a lease left when the
    // holder died (it is renewed then), and the lock-delay starts when the lease ends.
    let floor = Duration::from_millis(DELAY_MS + LEASE_MS / 3 - 150);
    let ceiling = Duration::from_millis(DELAY_MS + LEASE_MS + 4_000);
    println!("lock free {waited:?} after the kill (floor {floor:?}, ceiling {ceiling:?})");
    assert!(waited >= floor, "freed after {waited:?}");
    assert!(waited <= ceiling, "freed only after {waited:?}");
    // The dead holder's sequencer went stale when its lock was freed.
    check_sequencer(&cell, &dir.path().join("held.seq"), "stale", 1);
}

#[test]
fn a_client_stopped_past_its_grace_loses_its_lock_and_its_command() {
    let cell = RealCell::start_tuned(3, "session_lease_ms = 1500");
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let conn = cell.connect();
        cell.wait_master(&conn, ELECTION).await;
        conn.close().await;
    });
    let pid_file = dir.path().join("held.pid");
    let script = format!(
        "echo $$ > {}; touch {}; exec sleep 300",
        pid_file.display(),
        dir.path().join("held").display()
    );
    let mut h = Proc {
        child: chubby(&cell)
            .env("CHUBBY_GRACE_MS", "1000")
            .args([
                "lock",
                "--lock-delay",
                "1s",
                "/s",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .spawn()
            .unwrap(),
        pid_files: vec![pid_file.clone()],
    };
    wait_file(&dir.path().join("held"), Duration::from_secs(30));
    let sleeper = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    let stop = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &h.pid().to_string()])
            .status()
            .unwrap()
            .success());
    };
    stop("-STOP");
    // The master expires the session after its lease, then frees the lock after the
    // lock-delay: another client gets it while the holder is still stopped.
    let out = chubby(&cell)
        .args(["lock", "--timeout", "20s", "/s", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "lock never freed: {out:?}");
    let resumed = Instant::now();
    stop("-CONT");
    let status = loop {
        if let Some(status) = h.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "holder did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(70), "exit status of a lost lock");
    let alive = Command::new("kill")
        .args(["-0", &sleeper])
        .status()
        .unwrap();
    assert!(!alive.success(), "the command outlived its lock");
}

#[test]
fn the_session_and_its_lock_survive_kill_9_of_the_master() {
    let mut cell = RealCell::start(3);
    runtime().block_on(async {
        let conn = cell.connect();
        let master = cell.wait_master(&conn, ELECTION).await;
        let file = conn.cell_file().clone();
        let client = Client::connect(&file, ClientOptions::default())
            .await
            .unwrap();
        let handle = client
            .open("/m", OpenOptions::write())
            .await
            .unwrap()
            .handle;
        let seq = client.acquire(handle, LockMode::Exclusive).await.unwrap();
        let mut events = client.subscribe();
        cell.kill9(master as usize);
        let killed = Instant::now();
        let deadline = Duration::from_secs(60);
        loop {
            let ev = tokio::time::timeout(deadline, events.recv())
                .await
                .unwrap()
                .unwrap();
            println!("{:?} after the kill: {ev:?}", killed.elapsed());
            assert_ne!(ev, ClientEvent::Expired);
            if ev == ClientEvent::FailOver {
                break;
            }
        }
        assert_eq!(
            client.lock_state(handle).await.unwrap(),
            LockState::Held(seq.clone())
        );
        assert!(client.check_sequencer(&seq).await.unwrap());
        assert_eq!(client.status(), SessionStatus::Safe);
        client.shutdown().await;
        conn.close().await;
    });
}

#[test]
fn a_client_stopped_past_its_grace_loses_its_ephemeral_files_and_locks() {
    let cell = RealCell::start_tuned(3, "session_lease_ms = 1500");
    runtime().block_on(async {
        let conn = cell.connect();
        cell.wait_master(&conn, ELECTION).await;
        conn.close().await;
    });
    let mut h = Proc {
        child: Command::new(binary("session-holder"))
            .args([
                cell.cell_file().to_str().unwrap(),
                "/presence",
                "/leader",
                "1000",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
        pid_files: Vec::new(),
    };
    let mut out = BufReader::new(h.child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "holding");
    let stat = |path: &str| chubby(&cell).args(["stat", path]).output().unwrap();
    assert!(
        stat("/presence").status.success(),
        "ephemeral file present while held"
    );
    let held = chubby(&cell)
        .args(["lock", "--nonblock", "/leader", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(held.status.code(), Some(75));
    assert!(Command::new("kill")
        .args(["-STOP", &h.pid().to_string()])
        .status()
        .unwrap()
        .success());
    // The master expires the stopped session after its lease: the ephemeral file goes, and
    // the lock frees after its lock-delay (waited for, not polled).
    let out_lock = chubby(&cell)
        .args(["lock", "--timeout", "30s", "/leader", "--", "true"])
        .output()
        .unwrap();
    assert!(out_lock.status.success(), "lock never freed: {out_lock:?}");
    let gone = stat("/presence");
    assert_eq!(
        gone.status.code(),
        Some(1),
        "ephemeral file outlived its session: {gone:?}"
    );
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no such node"));
    assert!(Command::new("kill")
        .args(["-CONT", &h.pid().to_string()])
        .status()
        .unwrap()
        .success());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "expired",
        "the client learns it lost everything"
    );
    assert_eq!(h.child.wait().unwrap().code(), Some(3));
}
