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
            "20s",
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
    eprintln!("stress-ng --flock 4 -t 20s on the mount: {ops}");
    assert!(text.contains("successful run completed"), "{text}");
    let w = warnings(&m);
    assert!(
        w.is_empty(),
        "the mount warned {} times: {:#?}",
        w.len(),
        &w[..w.len().min(5)]
    );
}
