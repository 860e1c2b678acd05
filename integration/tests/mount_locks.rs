//! `flock` on the mount as on a local file system when processes share an open file
//! description (issue 18): the description's one lock is shared by every process holding
//! it, and their calls never hang or fail with `EDEADLK`/`ENOLCK`; an outside stressor
//! (`stress-ng --flock`, whose workers share one description) runs clean.
//!
//! Every mount and process a test starts is stopped when it ends, pass or fail.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chubby_integration::mount::{fuse_available, Mount};
use chubby_integration::real_cell::RealCell;
use chubby_integration::test_support::{master_sessions, wait_until};

/// Two processes sharing one open file description (opened, then `fork`), each looping
/// `flock(LOCK_EX)` / `flock(LOCK_UN)`; prints each one's count.
const FORK_LOOP: &str = r#"
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)
secs = float(sys.argv[2])
pid = os.fork()
n = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    fcntl.flock(fd, fcntl.LOCK_EX)
    fcntl.flock(fd, fcntl.LOCK_UN)
    n += 1
if pid == 0:
    print('child', n, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print('parent', n, flush=True)
sys.exit(1 if status else 0)
"#;

/// Waits for `child` at most `limit`, killing it if it is still running then.
fn wait_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (a hang): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The mount log's warnings.
fn warnings(m: &Mount) -> Vec<String> {
    m.log()
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn processes_sharing_a_description_share_its_flock_without_hanging() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let m = Mount::new(&cell, &[]);
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("fork_loop.py");
    std::fs::write(&script, FORK_LOOP).unwrap();
    let child = Command::new("python3")
        .arg(&script)
        .arg(m.at("L"))
        .arg("10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_within(child, Duration::from_secs(40));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the loop failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    eprintln!("fork-after-open flock loop, 10 s: {text:?}");
    assert_eq!(counts.len(), 2, "{text}");
    assert!(counts.iter().all(|&n| n >= 20), "too few rounds: {text}");
    let w = warnings(&m);
    assert!(w.is_empty(), "the mount warned: {w:#?}");
}

#[test]
fn stress_ng_flock_runs_clean() {
    if !fuse_available() {
        return;
    }
    if Command::new("stress-ng").arg("--version").output().is_err() {
        assert!(
            std::env::var("CHUBBY_REQUIRE_FUSE").as_deref() != Ok("1"),
            "stress-ng is required (CI installs it)"
        );
        eprintln!("SKIPPED: stress-ng is not installed");
        return;
    }
    let cell = RealCell::start(3);
    let m = Mount::new(&cell, &[]);
    let child = Command::new("stress-ng")
        .args([
            "--flock",
            "4",
            "-t",
            "30s",
            "--metrics-brief",
            "--temp-path",
        ])
        .arg(m.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_within(child, Duration::from_secs(90));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "stress-ng failed ({}): {text}",
        out.status
    );
    let ops = text
        .lines()
        .find(|l| l.contains("metrc") && l.contains(" flock ") && !l.contains("nanosecs"))
        .unwrap_or("(no metrics line)")
        .to_owned();
    eprintln!("stress-ng --flock 4 -t 30s on the mount: {ops}");
    assert!(text.contains("successful run completed"), "{text}");
    let w = warnings(&m);
    assert!(
        w.is_empty(),
        "the mount warned {} times: {:#?}",
        w.len(),
        &w[..w.len().min(5)]
    );
}

/// The children of process `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// True if process `pid` is blocked in `flock(2)` (syscall 73 on x86_64).
fn blocked_in_flock(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| s.split_whitespace().next() == Some("73"))
}

/// The issue's minimal form (issue 18): B holds `flock elect/L` around a late write; B is
/// cut off (`cut`), its session is lost and A takes the lock and writes; after `heal` and
/// the line `ready` in B's log, B's command writes, is fenced (EIO, the command fails),
/// and A reads its own data back.
///
/// A standby on B waits for the same lock through a descriptor its shell opened
/// (`exec 9>>elect/L; flock -w 120 9`): its wait fails with the session, but it never
/// held the lock, so it is not fenced: its shell then writes on B's next session.
///
/// Returns how long after the cut A took the lock, and B's error.
fn late_holder_is_fenced(
    a: &Mount,
    b: &Mount,
    cut: impl FnOnce(),
    heal: impl FnOnce(),
    ready: &str,
) -> (Duration, String) {
    use std::io::{BufRead, BufReader, Write};
    std::fs::create_dir(a.at("elect")).unwrap();
    std::fs::write(a.at("elect/data"), "none\n").unwrap();
    std::fs::write(a.at("elect/L"), "").unwrap();
    let out = chubby_integration::mount::sh(
        &b.path(),
        "setfattr -n user.chubby.lock_delay -v 1s elect/L",
    );
    assert!(out.status.success(), "{out:?}");
    // Each critical section logs its steps with a clock every process shares (outside the
    // mount): B's late write must fail, and nothing of B's may land inside A's section.
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("sections.log");
    let mut b_holder = Command::new("flock")
        .args([
            "elect/L",
            "sh",
            "-c",
            "echo \"B-start $(date +%s%N)\" >> \"$LOG\"; echo started; read go; \
             if echo B-late > elect/data; then echo \"B-wrote $(date +%s%N)\" >> \"$LOG\"; \
             else echo \"B-failed $(date +%s%N)\" >> \"$LOG\"; exit 1; fi",
        ])
        .env("LOG", &clock)
        .current_dir(b.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b_out = BufReader::new(b_holder.stdout.take().unwrap()).lines();
    assert_eq!(b_out.next().unwrap().unwrap(), "started");
    let standby = Command::new("sh")
        .args([
            "-c",
            "exec 9>>elect/L; flock -w 120 9 || echo wait-failed; \
             if echo standby > elect/standby; then echo wrote; else echo fenced; fi",
        ])
        .current_dir(b.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let standby_shell = standby.id();
    wait_until(
        "B's standby to wait in flock",
        Duration::from_secs(20),
        || children_of(standby_shell).into_iter().any(blocked_in_flock),
    );
    cut();
    let cut_at = Instant::now();
    let mut a_holder = Command::new("flock")
        .args([
            "-w",
            "60",
            "elect/L",
            "sh",
            "-c",
            "echo \"A-start $(date +%s%N)\" >> \"$LOG\"; echo A > elect/data; echo acquired; \
             read go; cat elect/data; echo \"A-end $(date +%s%N)\" >> \"$LOG\"",
        ])
        .env("LOG", &clock)
        .current_dir(a.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut a_out = BufReader::new(a_holder.stdout.take().unwrap()).lines();
    assert_eq!(a_out.next().unwrap().unwrap(), "acquired");
    let takeover = cut_at.elapsed();
    heal();
    wait_until(
        "B to learn its lock is lost",
        Duration::from_secs(60),
        || b.log().contains(ready),
    );
    writeln!(b_holder.stdin.take().unwrap()).unwrap();
    let b_status = b_holder.wait().unwrap();
    let mut b_err = String::new();
    std::io::Read::read_to_string(&mut b_holder.stderr.take().unwrap(), &mut b_err).unwrap();
    assert!(!b_status.success(), "B's late command succeeded");
    assert!(b_err.contains("Input/output error"), "{b_err}");
    writeln!(a_holder.stdin.take().unwrap()).unwrap();
    assert_eq!(
        a_out.next().unwrap().unwrap(),
        "A",
        "B wrote after A took the lock"
    );
    assert!(a_holder.wait().unwrap().success());
    // Other processes on B go on with a new session.
    wait_until("B's mount to serve again", Duration::from_secs(30), || {
        std::fs::read_to_string(b.at("elect/data")).is_ok_and(|d| d == "A\n")
    });
    let standby = wait_within(standby, Duration::from_secs(60));
    let standby_said = String::from_utf8_lossy(&standby.stdout).into_owned();
    assert_eq!(
        standby_said,
        "wait-failed\nwrote\n",
        "B's standby (never a holder) was fenced or kept waiting: {}",
        String::from_utf8_lossy(&standby.stderr)
    );
    let log = std::fs::read_to_string(&clock).unwrap();
    let at = |what: &str| -> Option<u128> {
        log.lines()
            .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
    };
    let (a_start, a_end) = (at("A-start").unwrap(), at("A-end").unwrap());
    assert!(at("B-wrote").is_none(), "B wrote: {log}");
    let b_failed = at("B-failed").unwrap();
    assert!(
        at("B-start").unwrap() < a_start && a_start < b_failed && b_failed < a_end,
        "unexpected order: {log}"
    );
    (takeover, b_err.trim().to_owned())
}

/// With the client machine's partition played by stopping its mount daemon past the
/// session lease and grace.
#[test]
fn a_holder_that_lost_its_lock_is_fenced_and_never_writes_after_the_new_holder() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start_tuned(3, "session_lease_ms = 3000");
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &["--grace", "1"]);
    let (takeover, err) = late_holder_is_fenced(
        &a,
        &b,
        || b.signal("STOP"),
        || b.signal("CONT"),
        "lost its lock on /elect/L",
    );
    eprintln!(
        "B's daemon stopped; A took the lock {:.1} s later; B's late write failed: {err}",
        takeover.as_secs_f64()
    );
}

/// The moment between the daemon learning of the expiry and the fence going up, widened
/// to 4 s by the daemon's test hook: B's late write arrives in it (after the expiry is
/// logged, before the holders are fenced) and must still fail, not run on a new session.
#[test]
fn a_holder_is_fenced_even_in_the_moment_before_its_fence_goes_up() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start_tuned(3, "session_lease_ms = 3000");
    let a = Mount::new(&cell, &[]);
    let b = Mount::with_env(
        &cell,
        &["--grace", "1"],
        &[("CHUBBY_TEST_FENCE_DELAY_MS", "4000")],
    );
    let (takeover, err) = late_holder_is_fenced(
        &a,
        &b,
        || b.signal("STOP"),
        || b.signal("CONT"),
        "session expired: its locks are lost",
    );
    let log = b.log();
    let (expired, fenced) = (
        log.find("session expired: its locks are lost").unwrap(),
        log.find("fencing process").unwrap(),
    );
    assert!(expired < fenced, "{log}");
    eprintln!(
        "fence delayed 4 s: A took the lock {:.1} s after B stopped; B's write in the \
         delay failed: {err}",
        takeover.as_secs_f64()
    );
}

/// `--on-lock-loss signal`: a holder whose lock went with its session is sent SIGTERM (its
/// process group), as `consul lock` does.
#[test]
fn on_lock_loss_signal_terminates_the_holders_process_group() {
    if !fuse_available() {
        return;
    }
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let cell = RealCell::start_tuned(3, "session_lease_ms = 3000");
    let b = Mount::new(&cell, &["--grace", "1", "--on-lock-loss", "signal"]);
    std::fs::write(b.at("L"), "").unwrap();
    // Its own process group: the signal must not reach this test.
    let mut holder = Command::new("flock")
        .args(["L", "sh", "-c", "echo started; exec sleep 600"])
        .current_dir(b.path())
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "started");
    b.signal("STOP");
    wait_until("B's session to expire", Duration::from_secs(30), || {
        master_sessions(&cell) == Some(0)
    });
    b.signal("CONT");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = holder.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the holder still runs: {}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.signal() == Some(libc_sigterm()) || status.code().is_some_and(|c| c != 0),
        "the holder was not terminated: {status:?}"
    );
    assert!(b.log().contains("SIGTERM"), "{}", b.log());
}

fn libc_sigterm() -> i32 {
    15 // SIGTERM on Linux
}

/// One lock client: for `secs`, takes `L` (blocking `LOCK_EX`, or `LOCK_EX|LOCK_NB`),
/// holds it 5 ms, releases it; prints `hold <acquired µs> <released µs>` per hold and
/// `error <errno> <µs>` per failed call (CLOCK_MONOTONIC, common to all processes).
const LOCK_LOOP: &str = r#"
import errno, fcntl, os, sys, time
path, secs, blocking = sys.argv[1], float(sys.argv[2]), sys.argv[3] == 'block'
def now():
    return time.monotonic_ns() // 1000
end = time.monotonic() + secs
while time.monotonic() < end:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        print('error', e.errno, now(), flush=True)
        continue
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            print('error', e.errno, now(), flush=True)
        os.close(fd)
        continue
    acq = now()
    time.sleep(0.005)
    rel = now()
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as e:
        print('error', e.errno, now(), flush=True)
    os.close(fd)
    print('hold', acq, rel, flush=True)
"#;

#[test]
fn lock_calls_ride_through_a_master_kill() {
    if !fuse_available() {
        return;
    }
    let mut cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("L"), "").unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("lock_loop.py");
    std::fs::write(&script, LOCK_LOOP).unwrap();
    let secs: u32 = 20;
    let mut children = Vec::new();
    for (m, how) in [(&a, "try"), (&b, "try"), (&a, "block"), (&b, "block")] {
        children.push(
            Command::new("python3")
                .arg(&script)
                .arg(m.at("L"))
                .arg(secs.to_string())
                .arg(how)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let rt = chubby_integration::test_support::runtime();
    let _in_rt = rt.enter();
    let conn = cell.connect();
    let master = rt.block_on(cell.wait_master(&conn, chubby_integration::test_support::ELECTION));
    std::thread::sleep(Duration::from_secs(5));
    cell.kill9(usize::try_from(master).unwrap());
    let mut holds = Vec::new();
    let mut errors = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = wait_within(c, Duration::from_secs(u64::from(secs) + 60));
        assert!(out.status.success(), "client {i}: {}", out.status);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first().copied() {
                Some("hold") => holds.push((
                    i,
                    f[1].parse::<u64>().unwrap(),
                    f[2].parse::<u64>().unwrap(),
                )),
                Some("error") => errors.push((i, line.to_owned())),
                _ => panic!("client {i}: {line}"),
            }
        }
    }
    eprintln!(
        "lock loops through the kill of master {master}: {} holds, {} errors",
        holds.len(),
        errors.len()
    );
    assert!(errors.is_empty(), "lock calls failed: {errors:?}");
    assert!(holds.len() >= 20, "too few holds: {}", holds.len());
    holds.sort_by_key(|h| h.1);
    let mut latest: Option<(usize, u64, u64)> = None;
    for &(c, acq, rel) in &holds {
        if let Some((c0, a0, r0)) = latest {
            assert!(
                acq >= r0,
                "two holders: {c0} [{a0}, {r0}] and {c} [{acq}, {rel}]"
            );
        }
        if latest.is_none_or(|(_, _, r0)| rel > r0) {
            latest = Some((c, acq, rel));
        }
    }
}

/// With a real partition: each replica and each mount in its own network namespace, and B
/// cut off by drops on the receiving side of both directions, then healed.
#[test]
fn a_partitioned_flock_holder_never_writes_after_the_new_holder() {
    if !fuse_available() {
        return;
    }
    if let Some(why) = chubby_integration::netns::netns_missing() {
        assert!(
            std::env::var("CHUBBY_REQUIRE_FUSE").as_deref() != Ok("1"),
            "partition tests are required: {why}"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    use chubby_integration::netns::{Host, Net};
    // Declared first, dropped last: after the mounts and the cell inside it.
    let net = Net::new(3, 2);
    let cell = RealCell::start_in_netns("session_lease_ms = 3000", &net);
    let a = Mount::in_netns(cell.cell_file(), &[], Some(&net.path(Host::Client(1))));
    let b = Mount::in_netns(
        cell.cell_file(),
        &["--grace", "2"],
        Some(&net.path(Host::Client(2))),
    );
    let (takeover, err) = late_holder_is_fenced(
        &a,
        &b,
        || net.cut(2),
        || net.heal(2),
        "lost its lock on /elect/L",
    );
    eprintln!(
        "partition: A took the lock {:.1} s after B was cut off; after healing, B's late \
         write failed: {err}",
        takeover.as_secs_f64()
    );
}

/// `F_GETLK` on `path`: the type reported and the pid (one line).
const GETLK: &str = r#"
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
want = fcntl.F_WRLCK if sys.argv[2] == 'w' else fcntl.F_RDLCK
arg = struct.pack('hhqqixxxx', want, 0, 0, 0, 0)
t, _, _, _, pid = struct.unpack('hhqqixxxx', fcntl.fcntl(fd, fcntl.F_GETLK, arg))
print({fcntl.F_RDLCK: 'read', fcntl.F_WRLCK: 'write', fcntl.F_UNLCK: 'free'}[t], pid)
"#;

#[test]
fn f_getlk_sees_a_holder_anywhere_in_the_cell() {
    if !fuse_available() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    std::fs::write(a.at("L"), "").unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("getlk.py");
    std::fs::write(&script, GETLK).unwrap();
    let getlk = |m: &Mount, want: &str| {
        let out = Command::new("python3")
            .arg(&script)
            .arg(m.at("L"))
            .arg(want)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(getlk(&b, "w"), "free 0");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, sys\nfd = os.open('L', os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX)\n\
             print('held', flush=True)\nsys.stdin.readline()",
        ])
        .current_dir(a.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "held");
    // On the holder's mount, with its pid; on another, with pid 0 (not known there).
    assert_eq!(getlk(&a, "w"), format!("write {}", holder.id()));
    assert_eq!(getlk(&b, "w"), "write 0");
    assert_eq!(
        getlk(&b, "r"),
        "write 0",
        "an exclusive holder blocks readers too"
    );
    writeln!(holder.stdin.take().unwrap()).unwrap();
    assert!(holder.wait().unwrap().success());
    assert_eq!(getlk(&b, "w"), "free 0");
}

/// Open file description locks (`F_OFD_SETLK`): per description, refused to another, and
/// gone at the description's last close, through a read-only or a read-write descriptor.
const OFD: &str = r#"
import errno, fcntl, os, struct
lk = lambda t: struct.pack('hhqqixxxx', t, 0, 0, 0, 0)
for flags, t in ((os.O_RDWR, fcntl.F_WRLCK), (os.O_RDONLY, fcntl.F_RDLCK)):
    a = os.open('O', flags)
    b = os.open('O', os.O_RDWR)
    fcntl.fcntl(a, fcntl.F_OFD_SETLK, lk(t))
    try:
        fcntl.fcntl(b, fcntl.F_OFD_SETLK, lk(fcntl.F_WRLCK))
        raise SystemExit('a second description took a held OFD lock')
    except OSError as e:
        assert e.errno in (errno.EAGAIN, errno.EACCES), e
    os.close(a)
    fcntl.fcntl(b, fcntl.F_OFD_SETLKW, lk(fcntl.F_WRLCK))
    fcntl.fcntl(b, fcntl.F_OFD_SETLK, lk(fcntl.F_UNLCK))
    os.close(b)
print('ok')
"#;

#[test]
fn ofd_locks_are_per_description_and_go_at_its_last_close() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let m = Mount::new(&cell, &[]);
    std::fs::write(m.at("O"), "x").unwrap();
    std::fs::write(m.at("ofd.py"), OFD).unwrap();
    let child = Command::new("python3")
        .arg("ofd.py")
        .current_dir(m.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_within(child, Duration::from_secs(60));
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
