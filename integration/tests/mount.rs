//! `chubby mount` on real cells with real tools (issue 6's acceptance): shell tools behave
//! per the mapping table; a write through one mount is read at once through another while
//! a third process reads in a tight loop; cached reads reach no replica; `flock` across
//! mounts (`-n`, blocking, `-w`, Ctrl-C) and a leader election that never has two leaders;
//! ephemeral files go with their holders and with a killed daemon's session; `kill -9` of
//! the master is only a delay for read and write loops. Every mount and process a test
//! starts is stopped when it ends, pass or fail (`Mount`'s and `RealCell`'s drops).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chubby_client::protocol::client_msg::StatusReport;
use chubby_integration::mount::{fails, fuse_available, ok, sh, Mount};
use chubby_integration::real_cell::{http_get, sample, RealCell};
use chubby_integration::test_support::{master_sessions, runtime, wait_until, ELECTION};

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every replica's status report (`None` where unreachable).
fn statuses(cell: &RealCell) -> Vec<Option<StatusReport>> {
    let rt = runtime();
    let _in_rt = rt.enter();
    let conn = cell.connect();
    rt.block_on(cell.statuses(&conn))
}

/// Client calls answered by every replica (KeepAlives and status calls not counted).
fn client_calls(cell: &RealCell) -> u64 {
    statuses(cell)
        .into_iter()
        .map(|s| s.map_or(0, |s| s.client_calls))
        .sum()
}

#[test]
fn shell_tools_behave_per_the_mapping_table() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let m = Mount::new(&cell, &[]);
    let d = m.path();
    ok(&d, "mkdir dir && echo hi > dir/f");
    assert_eq!(ok(&d, "cat dir/f"), "hi\n");
    let ls = ok(&d, "ls -l dir");
    assert!(
        ls.contains("-rw-r--r--") && ls.contains(" 3 ") && ls.contains(" f\n"),
        "{ls}"
    );
    assert_eq!(ok(&d, "stat -c '%s %F' dir/f"), "3 regular file\n");
    assert_eq!(ok(&d, "stat -c '%F' dir"), "directory\n");
    // A directory's inode number is its instance number; a file's names one version
    // (docs/mount.md): the same until the file is written, then another, while the
    // instance stays.
    let dir_ino = ok(&d, "stat -c %i dir");
    let dir_inst = ok(&d, "getfattr --only-values -n user.chubby.instance dir");
    assert_eq!(dir_ino.trim(), dir_inst.trim());
    let ino = ok(&d, "stat -c %i dir/f");
    let inst = ok(&d, "getfattr --only-values -n user.chubby.instance dir/f");
    assert_eq!(
        ok(&d, "cat dir/f && stat -c %i dir/f"),
        format!("hi\n{ino}")
    );
    ok(&d, "echo more >> dir/f");
    assert_eq!(ok(&d, "cat dir/f"), "hi\nmore\n");
    assert_ne!(
        ok(&d, "stat -c %i dir/f"),
        ino,
        "a new version, a new inode"
    );
    assert_eq!(
        ok(&d, "getfattr --only-values -n user.chubby.instance dir/f"),
        inst,
        "the same node"
    );
    ok(&d, "truncate -s 2 dir/f");
    assert_eq!(ok(&d, "cat dir/f"), "hi");
    ok(&d, "touch dir/f dir/new");
    assert_eq!(ok(&d, "stat -c %s dir/new"), "0\n");
    ok(&d, "mv dir/f dir/g");
    assert_eq!(ok(&d, "ls dir"), "g\nnew\n");
    assert_eq!(ok(&d, "cat dir/g"), "hi");
    // Extended attributes.
    let attrs = ok(&d, "getfattr -d dir/g");
    for name in [
        "user.chubby.instance=",
        "user.chubby.content_generation=",
        "user.chubby.lock_generation=",
        "user.chubby.acl_generation=\"0\"",
        "user.chubby.checksum=",
        "user.chubby.ephemeral=\"0\"",
        "user.chubby.acl.read=",
        "user.chubby.acl.write=",
        "user.chubby.acl.change=",
    ] {
        assert!(attrs.contains(name), "{name} missing from {attrs}");
    }
    ok(&d, "setfattr -n user.chubby.acl.read -v everyone dir/g");
    assert_eq!(
        ok(&d, "getfattr --only-values -n user.chubby.acl.read dir/g"),
        "everyone"
    );
    assert_eq!(
        ok(
            &d,
            "getfattr --only-values -n user.chubby.acl_generation dir/g"
        ),
        "1"
    );
    fails(
        &d,
        "setfattr -n user.chubby.instance -v 9 dir/g",
        "not permitted",
    );
    // What a Chubby cell does not have.
    fails(&d, "ln -s dir/g link", "Operation not permitted");
    fails(&d, "ln dir/g hard", "Operation not permitted");
    ok(&d, "chmod 600 dir/g"); // modes are stored (issue 19; mount_tools.rs)
    assert_eq!(ok(&d, "stat -c %a dir/g"), "600\n");
    fails(&d, "mkfifo fifo", "Operation not permitted");
    let long = "x".repeat(256);
    fails(&d, &format!("touch {long}"), "File name too long");
    // Too large: refused at write and close, the old contents intact. One descriptor
    // (python's open): a shell redirect's own dup-and-close would first commit the
    // O_TRUNC truncation, as a local file system truncates at open.
    ok(&d, "echo old > big");
    let out = sh(
        &d,
        "python3 -c \"open('big','wb').write(b'x' * 307200)\" 2>&1; echo rc=$?",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("File too large") && !text.contains("rc=0"),
        "{text}"
    );
    assert_eq!(ok(&d, "cat big"), "old\n");
    // Removal.
    fails(&d, "rmdir dir", "Directory not empty");
    fails(&d, "rm dir", "Is a directory");
    ok(&d, "rm dir/g dir/new && rmdir dir");
    fails(&d, "cat dir/g", "No such file or directory");
    assert_eq!(ok(&d, "ls"), "acl\nbig\n");
    assert!(ok(&d, "df -P .").contains("chubby"));
}

#[test]
fn a_second_mount_on_a_busy_mount_point_fails_clearly_and_sigterm_unmounts() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let mut m = Mount::new(&cell, &[]);
    let out = Command::new(chubby_integration::real_cell::binary("chubby"))
        .arg("mount")
        .arg(m.path())
        .arg("--foreground")
        .arg("--cell")
        .arg(cell.cell_file())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already a mount point"), "{err}");
    m.signal("TERM");
    let status = m.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", m.log());
    assert!(!m.is_mounted(), "unmounted");
    assert!(m.log().contains("unmounted; session closed"), "{}", m.log());
}

#[test]
fn writes_through_one_mount_are_read_at_once_through_another() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("f"), "0").unwrap();
    // A third process reads the file on B in a tight loop; values never go back.
    let reader = Command::new("sh")
        .arg("-c")
        .arg("while :; do cat f || exit 1; echo; done")
        .current_dir(b.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = Proc(reader);
    let stdout = reader.0.stdout.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let v: u64 = line
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad read {line:?}"));
                assert!(v >= last, "the tight loop went back from {last} to {v}");
                last = v;
                seen.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };
    for i in 1..=1000u64 {
        std::fs::write(a.at("f"), i.to_string()).unwrap();
        let got = std::fs::read_to_string(b.at("f")).unwrap();
        assert_eq!(
            got,
            i.to_string(),
            "stale read on B after write {i} closed on A"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.0.kill();
    watcher.join().unwrap();
    let reads = seen.load(Ordering::Relaxed);
    assert!(reads > 100, "the tight loop read only {reads} times");
    eprintln!("1000 writes checked; the tight loop read {reads} times");
}

/// Calls the replicas answered `ok`, by call name (summed over replicas: whichever was
/// master).
fn calls_ok(cell: &RealCell, call: &str) -> f64 {
    let name = format!("chubby_requests_total{{call=\"{call}\",outcome=\"ok\"}}");
    (1..=cell.len())
        .map(|id| sample(&cell.metrics(id), &name).unwrap_or(0.0))
        .sum()
}

/// Chubby's handle caching (§2.8): a write of a file this mount wrote before, and an
/// `flock` cycle, take the handle its last user left instead of opening one, so the cell
/// sees one SetContents per write and an Acquire and a Release per cycle, with no Open or
/// Close (a write was three Paxos instances, a cycle four). A kept handle follows its node,
/// never the name: a file replaced or deleted by another mount is written afresh.
#[test]
fn writes_and_lock_cycles_reuse_kept_handles_and_never_a_replaced_file() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("f"), "0").unwrap();
    let (opens, closes) = (calls_ok(&cell, "Open"), calls_ok(&cell, "Close"));
    let sets = calls_ok(&cell, "SetContents");
    for i in 1..=20 {
        std::fs::write(a.at("f"), i.to_string()).unwrap();
    }
    assert_eq!(calls_ok(&cell, "SetContents") - sets, 20.0);
    assert_eq!(
        calls_ok(&cell, "Open") - opens,
        0.0,
        "20 writes opened handles"
    );
    assert_eq!(
        calls_ok(&cell, "Close") - closes,
        0.0,
        "20 writes closed handles"
    );
    assert_eq!(std::fs::read_to_string(b.at("f")).unwrap(), "20");

    let f = std::fs::File::open(a.at("f")).unwrap();
    f.lock().unwrap();
    f.unlock().unwrap();
    let (opens, closes) = (calls_ok(&cell, "Open"), calls_ok(&cell, "Close"));
    let (acquires, releases) = (calls_ok(&cell, "Acquire"), calls_ok(&cell, "Release"));
    for _ in 0..20 {
        f.lock().unwrap();
        f.unlock().unwrap();
    }
    assert_eq!(calls_ok(&cell, "Acquire") - acquires, 20.0);
    assert_eq!(calls_ok(&cell, "Release") - releases, 20.0);
    assert_eq!(
        calls_ok(&cell, "Open") - opens,
        0.0,
        "20 lock cycles opened handles"
    );
    assert_eq!(
        calls_ok(&cell, "Close") - closes,
        0.0,
        "20 lock cycles closed handles"
    );
    // The lock taken through a kept handle is the cell's: another mount cannot take it.
    f.lock().unwrap();
    fails(&b.path(), "flock -n f true", "");
    f.unlock().unwrap();
    ok(&b.path(), "flock -n f true");
    drop(f);

    // Replaced through B (rename over it): A's next write goes to the new file.
    std::fs::write(b.at("g"), "from b").unwrap();
    std::fs::rename(b.at("g"), b.at("f")).unwrap();
    std::fs::write(a.at("f"), "after the rename").unwrap();
    assert_eq!(
        std::fs::read_to_string(b.at("f")).unwrap(),
        "after the rename"
    );
    // Deleted through B: A's next write creates it again.
    std::fs::remove_file(b.at("f")).unwrap();
    std::fs::write(a.at("f"), "again").unwrap();
    assert_eq!(std::fs::read_to_string(b.at("f")).unwrap(), "again");
    // And a lock through A after the replacement is on the new file.
    let f = std::fs::File::open(a.at("f")).unwrap();
    f.lock().unwrap();
    fails(&b.path(), "flock -n f true", "");
    // Unlocked before the close: a close's release reaches the mount after `close`
    // returns, so B's try could race it.
    f.unlock().unwrap();
    drop(f);
    ok(&b.path(), "flock -n f true");
}

/// Commands the cell applied (the most any replica counts: each applies every one).
fn applied_commands(cell: &RealCell) -> f64 {
    (1..=cell.len())
        .map(|id| sample(&cell.metrics(id), "chubby_paxos_batch_commands_sum").unwrap_or(0.0))
        .fold(0.0, f64::max)
}

/// Chubby §2.9: handles live in the master's memory. With no handle kept by the mount
/// (`--idle-handles 0`), each write of an existing file still opens and closes a handle,
/// but those are answered from the master's memory: 20 writes are 20 Paxos commands (they
/// were 60: Open, SetContents, Close). A new file with contents is two (the create and
/// the contents; the created handle is the master's too, so its close is free: it was
/// three). A lock taken through such a handle is the cell's, and a cycle of `flock` is two
/// commands once the mount keeps the lock's handle.
#[test]
fn opens_and_closes_of_existing_files_cost_no_paxos_command() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &["--idle-handles", "0"]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("f"), "0").unwrap();
    let (opens, closes) = (calls_ok(&cell, "Open"), calls_ok(&cell, "Close"));
    let commands = applied_commands(&cell);
    for i in 1..=20 {
        std::fs::write(a.at("f"), i.to_string()).unwrap();
    }
    let spent = applied_commands(&cell) - commands;
    assert!(
        calls_ok(&cell, "Open") - opens >= 20.0 && calls_ok(&cell, "Close") - closes >= 20.0,
        "the mount kept its handles: this test needs it to open and close each time"
    );
    // 20 SetContents, and at most two of the master's own (a lock-delay Noop, a Checksum).
    assert!(
        (20.0..=22.0).contains(&spent),
        "20 writes of an existing file took {spent} Paxos commands"
    );
    assert_eq!(std::fs::read_to_string(b.at("f")).unwrap(), "20");

    let (creates, closes) = (calls_ok(&cell, "Open"), calls_ok(&cell, "Close"));
    let commands = applied_commands(&cell);
    for i in 1..=20 {
        std::fs::write(a.at(&format!("new{i}")), i.to_string()).unwrap();
    }
    let spent = applied_commands(&cell) - commands;
    assert!(
        calls_ok(&cell, "Open") - creates >= 20.0 && calls_ok(&cell, "Close") - closes >= 20.0,
        "the mount kept its handles: this test needs it to open and close each time"
    );
    assert!(
        (40.0..=42.0).contains(&spent),
        "20 new files took {spent} Paxos commands"
    );
    for i in 1..=20 {
        assert_eq!(
            std::fs::read_to_string(b.at(&format!("new{i}"))).unwrap(),
            i.to_string()
        );
    }

    let f = std::fs::File::open(b.at("f")).unwrap();
    f.lock().unwrap();
    fails(&a.path(), "flock -n f true", "");
    f.unlock().unwrap();
    let commands = applied_commands(&cell);
    for _ in 0..10 {
        f.lock().unwrap();
        f.unlock().unwrap();
    }
    let spent = applied_commands(&cell) - commands;
    assert!(
        (20.0..=22.0).contains(&spent),
        "10 flock cycles took {spent} Paxos commands"
    );
    drop(f);
    ok(&a.path(), "flock -n f true");
}

/// A cell file for a new client principal of `cell` (`chubby cell issue-client`).
fn client_cell_file(cell: &RealCell, principal: &str) -> std::path::PathBuf {
    let tls =
        chubby_client::protocol::cell::issue_client_cert(&cell.cell_dir(), principal).unwrap();
    let admin = chubby_client::protocol::cell::CellFile::load(cell.cell_file()).unwrap();
    let replicas: Vec<String> = admin.replicas.iter().map(|r| format!("{r:?}")).collect();
    let text = format!(
        "replicas = [{}]\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        replicas.join(", "),
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string()
    );
    let path = cell.cell_dir().join(format!("{principal}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A kept handle is used again only if the master confirms the rights an open would
/// check: a write right revoked since this mount last wrote the file fails the next
/// `open` with EACCES (the shell says so), not its close, which a shell ignores.
#[test]
fn a_kept_handle_is_not_used_again_once_its_right_is_revoked() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let admin = Mount::new(&cell, &[]);
    let web = Mount::of_cell_file(&client_cell_file(&cell, "web"), &[]);
    let (a, w) = (admin.path(), web.path());
    ok(
        &a,
        "echo web > acl/readers && echo web > acl/writers && echo 0 > f",
    );
    ok(&a, "setfattr -n user.chubby.acl.read -v readers . f");
    ok(&a, "setfattr -n user.chubby.acl.write -v writers f");
    ok(&w, "echo 1 > f && echo 2 > f");
    assert_eq!(ok(&a, "cat f"), "2\n");
    // Revoked: the ACL file no longer names `web`.
    ok(&a, "echo nobody > acl/writers");
    fails(&w, "echo 3 > f", "Permission denied");
    assert_eq!(ok(&a, "cat f"), "2\n");
    // Granted again: writes go through.
    ok(&a, "echo web > acl/writers");
    ok(&w, "echo 4 > f");
    assert_eq!(ok(&a, "cat f"), "4\n");
}

#[test]
fn cached_reads_reach_no_replica_and_writes_are_still_seen() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let b = Mount::new(&cell, &["--metrics", &metrics]);
    std::fs::write(a.at("conf"), "v1").unwrap();
    assert_eq!(std::fs::read_to_string(b.at("conf")).unwrap(), "v1");
    let before = client_calls(&cell);
    for _ in 0..10_000 {
        assert_eq!(std::fs::read(b.at("conf")).unwrap(), b"v1");
    }
    let after = client_calls(&cell);
    assert_eq!(
        after,
        before,
        "10,000 cached reads made {} calls",
        after - before
    );
    std::fs::write(a.at("conf"), "v2").unwrap();
    assert_eq!(std::fs::read_to_string(b.at("conf")).unwrap(), "v2");
    assert!(client_calls(&cell) > after, "the write reached the cell");

    // B's metrics: one safe session, its cache served reads, and A's write made it drop
    // its kernel pages.
    let page = http_get(&metrics, "/metrics");
    let get = |name: &str| sample(&page, name).unwrap_or_else(|| panic!("{name}:\n{page}"));
    assert_eq!(get("chubby_mount_sessions_total"), 1.0);
    assert_eq!(get("chubby_mount_session_state"), 0.0);
    assert!(
        get("chubby_mount_reads_total{source=\"cache\"}") >= 1.0,
        "{page}"
    );
    assert!(
        get("chubby_mount_kernel_invalidations_total") >= 1.0,
        "{page}"
    );
    assert_eq!(get("chubby_mount_jeopardy_total"), 0.0);
}

#[test]
fn flock_across_mounts() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("lock"), "").unwrap();
    // A holds until the file "go" appears.
    let hold = |m: &Mount| {
        Proc(
            Command::new("flock")
                .arg("lock")
                .arg("-c")
                .arg("touch held; while [ ! -e go ]; do sleep 0.05; done; rm go held")
                .current_dir(m.path())
                .spawn()
                .unwrap(),
        )
    };
    let mut holder = hold(&a);
    wait_until("A's flock", Duration::from_secs(10), || {
        a.at("held").exists()
    });
    fails(&b.path(), "flock -n lock -c true", "");
    // flock -w 1 gives up after about a second.
    let start = Instant::now();
    let out = sh(&b.path(), "flock -w 1 lock -c true");
    let waited = start.elapsed();
    assert!(!out.status.success());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "flock -w 1 took {waited:?}"
    );
    // Ctrl-C ends a blocked flock promptly and leaves no lock behind.
    let start = Instant::now();
    let out = sh(&b.path(), "timeout -s INT 1 flock lock -c 'echo BAD'");
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(4));
    // A blocked flock on B acquires when A's holder exits.
    let waiter = Command::new("flock")
        .arg("lock")
        .arg("-c")
        .arg("echo B-got-it")
        .current_dir(b.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Only once it is blocked in the kernel on its lock request does A's holder go.
    let wchan = format!("/proc/{}/wchan", waiter.id());
    wait_until("B's flock to block", Duration::from_secs(10), || {
        std::fs::read_to_string(&wchan).is_ok_and(|w| w.contains("request_wait_answer"))
    });
    std::fs::write(a.at("go"), "").unwrap();
    assert!(holder.0.wait().unwrap().success());
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "B-got-it\n");
    // Nothing was left behind by the interrupted waiter: the lock is free on both mounts.
    ok(&a.path(), "flock -n lock -c true");
    ok(&b.path(), "flock -n lock -c true");
    // fcntl byte ranges are refused; whole-file fcntl locks are the same Chubby lock.
    holder = hold(&a);
    wait_until("A's flock again", Duration::from_secs(10), || {
        a.at("held").exists()
    });
    let out = sh(
        &b.path(),
        "python3 -c \"import fcntl,os; f=os.open('lock',os.O_RDWR); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\"",
    );
    if out.status.code() != Some(127) {
        assert!(
            !out.status.success(),
            "a whole-file fcntl lock while A holds"
        );
    }
    std::fs::write(a.at("go"), "").unwrap();
    assert!(holder.0.wait().unwrap().success());
}

#[test]
fn a_flock_leader_election_never_has_two_leaders() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("leader"), "").unwrap();
    let rounds = 100;
    let script = format!(
        "for i in $(seq {rounds}); do flock leader -c '\
           echo $ID > leader-id; \
           n=$(cat leader-id); [ \"$n\" = \"$ID\" ] || {{ echo \"TWO LEADERS: $ID saw $n\"; exit 3; }}; \
           cat leader-id > /dev/null; \
           n=$(cat leader-id); [ \"$n\" = \"$ID\" ] || {{ echo \"TWO LEADERS: $ID saw $n\"; exit 3; }}' || exit $?; \
         done"
    );
    let procs: Vec<Proc> = [(&a, "a1"), (&a, "a2"), (&b, "b1")]
        .into_iter()
        .map(|(m, id)| {
            Proc(
                Command::new("sh")
                    .arg("-c")
                    .arg(&script)
                    .env("ID", id)
                    .current_dir(m.path())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for mut p in procs {
        let status = p.0.wait().unwrap();
        let mut out = String::new();
        if let Some(mut s) = p.0.stdout.take() {
            std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        }
        assert!(status.success(), "{status}: {out}");
    }
}

#[test]
fn ephemeral_files_go_with_their_holders() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start_tuned(3, "session_lease_ms = 4000");
    let mut a = Mount::new(&cell, &["--grace", "1"]);
    let b = Mount::new(&cell, &[]);
    ok(
        &a.path(),
        "mkdir members && setfattr -n user.chubby.ephemeral -v 1 members",
    );
    // Held open by a process: there while it lives, gone when it exits.
    let holder = Proc(
        Command::new("sh")
            .arg("-c")
            .arg("exec 3> members/one; exec sleep 60")
            .current_dir(a.path())
            .spawn()
            .unwrap(),
    );
    wait_until("members/one on B", Duration::from_secs(10), || {
        b.at("members/one").exists()
    });
    assert_eq!(
        ok(
            &b.path(),
            "getfattr --only-values -n user.chubby.ephemeral members/one"
        ),
        "1"
    );
    drop(holder);
    wait_until("members/one to go", Duration::from_secs(10), || {
        !b.at("members/one").exists()
    });
    // Held by a process whose mount daemon is killed: gone once the session lease ends.
    let _holder = Proc(
        Command::new("sh")
            .arg("-c")
            .arg("exec 3> members/two; exec sleep 60")
            .current_dir(a.path())
            .spawn()
            .unwrap(),
    );
    wait_until("members/two on B", Duration::from_secs(10), || {
        b.at("members/two").exists()
    });
    let killed = Instant::now();
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(10));
    wait_until("members/two to go", ELECTION, || {
        !b.at("members/two").exists()
    });
    eprintln!(
        "members/two went {:?} after the daemon's kill -9",
        killed.elapsed()
    );
    a.clear_stale();
    // The permanent directory stays.
    assert!(b.at("members").is_dir());
}

/// Chubby §2.9 steps 6–8: a file held open across the master's `kill -9` is written at
/// its close through the handle the old master kept in its memory, which the mount
/// announces again to the new master; a reader's open file reads on.
#[test]
fn files_held_open_across_a_master_kill_are_written_and_read_through_announced_handles() {
    if !fuse_available() {
        return;
    }
    let mut cell = RealCell::start(3);
    let a = Mount::new(&cell, &["--idle-handles", "0"]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("f"), "before").unwrap();
    let rt = runtime();
    let _in_rt = rt.enter();
    let conn = cell.connect();
    let master = rt.block_on(cell.wait_master(&conn, ELECTION));
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(a.at("f"))
        .unwrap();
    let mut r = std::fs::File::open(a.at("f")).unwrap();
    w.write_all(b"after the fail-over").unwrap();
    cell.kill9(usize::try_from(master).unwrap());
    let new_master = rt.block_on(cell.wait_master(&conn, ELECTION));
    assert_ne!(new_master, master);
    w.sync_all()
        .expect("the write through the open file failed after the fail-over");
    drop(w);
    assert_eq!(
        std::fs::read_to_string(b.at("f")).unwrap(),
        "after the fail-over"
    );
    let mut seen = String::new();
    r.read_to_string(&mut seen).unwrap();
    assert!(
        seen == "after the fail-over" || seen == "before",
        "the open reader read {seen:?}"
    );
    let page = cell.metrics(usize::try_from(new_master).unwrap());
    let announced = "chubby_requests_total{call=\"Reannounce\",outcome=\"ok\"}";
    assert!(
        sample(&page, announced).unwrap_or(0.0) >= 1.0,
        "no handle was announced again to the new master"
    );
}

#[test]
fn killing_the_master_is_only_a_delay_for_read_and_write_loops() {
    if !fuse_available() {
        return;
    }
    let mut cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("n"), "0").unwrap();
    let rt = runtime();
    let _in_rt = rt.enter();
    let conn = cell.connect();
    let master = rt.block_on(cell.wait_master(&conn, ELECTION));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, path) = (Arc::clone(&stop), Arc::clone(&written), a.at("n"));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                std::fs::write(&path, i.to_string())
                    .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
                written.store(i, Ordering::Relaxed);
            }
        })
    };
    let reader = {
        let (stop, written, path) = (Arc::clone(&stop), Arc::clone(&written), b.at("n"));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let floor = written.load(Ordering::Relaxed);
                let v: u64 = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read failed: {e}"))
                    .parse()
                    .unwrap();
                assert!(v >= floor, "stale: read {v} after write {floor} completed");
                reads += 1;
            }
            reads
        })
    };
    wait_until("writes before the kill", Duration::from_secs(20), || {
        written.load(Ordering::Relaxed) >= 20
    });
    let at_kill = written.load(Ordering::Relaxed);
    cell.kill9(usize::try_from(master).unwrap());
    wait_until("writes after the kill", Duration::from_secs(60), || {
        written.load(Ordering::Relaxed) >= at_kill + 20
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let reads = reader.join().unwrap();
    eprintln!(
        "{} writes and {reads} reads across the kill of master {master}",
        written.load(Ordering::Relaxed)
    );
}

#[test]
fn a_lock_lost_with_its_session_fails_its_descriptor_with_eio() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start_tuned(3, "session_lease_ms = 3000");
    let a = Mount::new(&cell, &["--grace", "1"]);
    std::fs::write(a.at("lock"), "x").unwrap();
    ok(&a.path(), "setfattr -n user.chubby.lock_delay -v 1s lock");
    // A process takes the lock through a descriptor and keeps reading through it.
    let script = [
        "import fcntl, os, sys, time",
        "f = open('lock', 'rb', buffering=0)",
        "fcntl.flock(f, fcntl.LOCK_EX)",
        "print('locked', flush=True)",
        "while True:",
        "    try:",
        "        os.pread(f.fileno(), 10, 0)",
        "    except OSError as e:",
        "        print('error', e.errno, flush=True)",
        "        sys.exit(0)",
        "    time.sleep(0.05)",
    ]
    .join("\n");
    let mut holder = Proc(
        Command::new("python3")
            .arg("-c")
            .arg(&script)
            .current_dir(a.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(holder.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "locked");
    assert_eq!(master_sessions(&cell), Some(1));
    // The daemon stops answering; the master expires its session (lease 3 s).
    a.signal("STOP");
    wait_until("the session to expire at the master", ELECTION, || {
        master_sessions(&cell) == Some(0)
    });
    a.signal("CONT");
    // The daemon learns its session is gone: the lock's descriptor fails with EIO...
    let line = lines.next().unwrap().unwrap();
    assert_eq!(line, format!("error {}", libc_eio()), "{}", a.log());
    assert!(holder.0.wait().unwrap().success());
    // ...the daemon says which process lost which lock...
    wait_until("the log line", Duration::from_secs(10), || {
        a.log().contains("lost its lock on /lock")
    });
    // ...and the mount goes on with a new session, where the lock is free once its
    // lock-delay (1 s, set above) has passed.
    std::fs::write(a.at("after"), "y").unwrap();
    assert_eq!(std::fs::read_to_string(a.at("after")).unwrap(), "y");
    ok(&a.path(), "flock -w 10 lock -c true");
}

fn libc_eio() -> i32 {
    5 // EIO on Linux
}

/// Stops a mount daemon found by its mount point, and clears the mount point.
struct UnmountOnDrop(std::path::PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let pattern = format!("mount {} --foreground", self.0.display());
        let _ = Command::new("pkill")
            .arg("-TERM")
            .arg("-f")
            .arg(&pattern)
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// Six consecutive free UDP ports (a 3-replica cell's).
fn free_ports() -> u16 {
    let seed = u64::from(std::process::id()).wrapping_mul(2_654_435_761);
    for k in 0..500u64 {
        let base = 40_000 + u16::try_from((seed + k * 97) % 8_000).unwrap();
        if (0..6).all(|i| std::net::UdpSocket::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

#[test]
fn chubby_up_mounts_the_cell_and_ctrl_c_unmounts_then_stops_it() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("chubby");
    let up = Command::new(chubby_integration::real_cell::binary("chubby"))
        .arg("up")
        .arg("--dir")
        .arg(tmp.path().join("cell"))
        .arg("--base-port")
        .arg(free_ports().to_string())
        .arg("--mount")
        .arg(&mnt)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = Proc(up);
    // If the test fails, the mount daemon (a child of `chubby up`) is stopped too.
    let _cleanup = UnmountOnDrop(mnt.clone());
    let mut out = BufReader::new(up.0.stdout.take().unwrap()).lines();
    let mounted = loop {
        let line = out.next().expect("chubby up ended").unwrap();
        if line.starts_with("mounted the cell on") {
            break line;
        }
    };
    assert!(mounted.contains("chubby"), "{mounted}");
    assert!(chubby_integration::mount::mounted(
        &std::fs::canonicalize(&mnt).unwrap()
    ));
    ok(&mnt, "mkdir svc && echo 'port = 8080' > svc/config");
    assert_eq!(ok(&mnt, "cat svc/config"), "port = 8080\n");
    // Ctrl-C: the mount goes first (its session closed), then the replicas.
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(up.0.id().to_string())
        .status();
    let status = up.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!chubby_integration::mount::mounted(
        &std::fs::canonicalize(&mnt).unwrap()
    ));
    let log = std::fs::read_to_string(tmp.path().join("cell/mount.log")).unwrap();
    assert!(log.contains("unmounted; session closed"), "{log}");
}
