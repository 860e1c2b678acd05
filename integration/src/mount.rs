//! Real mounts for tests and the benchmark: a `chubby mount --foreground` child process on
//! a temporary directory, stopped (SIGTERM, then SIGKILL and a lazy unmount) when dropped,
//! pass or fail.
//!
//! Mounting needs `/dev/fuse` and root (or `fusermount3`). Where they are missing,
//! [`fuse_available`] says why and mount tests skip, unless `CHUBBY_REQUIRE_FUSE=1` (CI sets
//! it) makes the skip a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::real_cell::{binary, RealCell};

/// How long a mount may take to come up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why mounts cannot be made here, or `None` if they can.
#[must_use]
pub fn fuse_missing() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Some("/dev/fuse cannot be opened (not root?)".into());
    }
    None
}

/// True if mount tests can run; otherwise prints why and returns false, or panics when
/// `CHUBBY_REQUIRE_FUSE=1`.
///
/// # Panics
/// Mounts are required and impossible.
#[must_use]
pub fn fuse_available() -> bool {
    match fuse_missing() {
        None => true,
        Some(why) => {
            assert!(
                std::env::var("CHUBBY_REQUIRE_FUSE").as_deref() != Ok("1"),
                "CHUBBY_REQUIRE_FUSE=1 but mounts are impossible: {why}"
            );
            eprintln!("SKIPPED: FUSE mounts are impossible here: {why}");
            false
        }
    }
}

/// A mounted cell (see the module docs).
#[derive(Debug)]
pub struct Mount {
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Mount {
    /// Mounts `cell` with extra `chubby mount` arguments, waiting until it is up.
    ///
    /// # Panics
    /// If the mount does not come up.
    #[must_use]
    pub fn new(cell: &RealCell, extra: &[&str]) -> Mount {
        Mount::of_cell_file(cell.cell_file(), extra)
    }

    /// Mounts the cell of `cell_file`.
    ///
    /// # Panics
    /// If the mount does not come up.
    #[must_use]
    pub fn of_cell_file(cell_file: &Path, extra: &[&str]) -> Mount {
        Mount::in_netns(cell_file, extra, None)
    }

    /// Mounts the cell of `cell_file` with its daemon in the network namespace `netns`
    /// (`nsenter --net`: the mount itself is seen by every process here).
    ///
    /// # Panics
    /// If the mount does not come up.
    #[must_use]
    pub fn in_netns(cell_file: &Path, extra: &[&str], netns: Option<&Path>) -> Mount {
        Mount::start(cell_file, extra, netns, &[])
    }

    /// Mounts `cell` with extra arguments and extra environment for the daemon (the
    /// tests' hooks, such as `CHUBBY_TEST_FENCE_DELAY_MS`).
    ///
    /// # Panics
    /// If the mount does not come up.
    #[must_use]
    pub fn with_env(cell: &RealCell, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        Mount::start(cell.cell_file(), extra, None, env)
    }

    fn start(
        cell_file: &Path,
        extra: &[&str],
        netns: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Mount {
        let dir = tempfile::tempdir().expect("temp dir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let log = dir.path().join("mount.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(binary("chubby"));
                c
            }
            None => Command::new(binary("chubby")),
        };
        let child = cmd
            .arg("mount")
            .arg(&mnt)
            .arg("--foreground")
            .arg("--cell")
            .arg(cell_file)
            .args(extra)
            .envs(env.iter().copied())
            .env(
                "CHUBBY_LOG",
                std::env::var("CHUBBY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start chubby mount");
        let mut m = Mount {
            child: Some(child),
            dir,
            log,
        };
        let start = Instant::now();
        while !m.is_mounted() {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("chubby mount exited ({status}):\n{}", m.log());
            }
            assert!(
                start.elapsed() < MOUNT_TIMEOUT,
                "the mount did not come up:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// The mount point.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// `name` under the mount point.
    #[must_use]
    pub fn at(&self, name: &str) -> PathBuf {
        self.path().join(name.trim_start_matches('/'))
    }

    /// The daemon's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's pid.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True if the mount point is mounted now.
    #[must_use]
    pub fn is_mounted(&self) -> bool {
        mounted(&self.path())
    }

    /// Sends `signal` (e.g. `"TERM"`, `"KILL"`, `"STOP"`) to the daemon.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits for the daemon to exit (after a signal), returning its exit status.
    ///
    /// # Panics
    /// If it does not exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().expect("the daemon");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < timeout, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Clears the mount point after the daemon died (as an operator would).
    pub fn clear_stale(&self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.path())
            .stderr(Stdio::null())
            .status();
    }
}

/// True if `path` is a mount point (from /proc/self/mountinfo).
#[must_use]
pub fn mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(want) = path.to_str() else {
        return false;
    };
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- mount {} log (last {} lines) ----",
                self.path().display(),
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // Signal first: `signal` finds the daemon through `self.child`.
        self.signal("CONT");
        self.signal("TERM");
        if let Some(mut child) = self.child.take() {
            let start = Instant::now();
            let mut clean = false;
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(status)) = child.try_wait() {
                    clean = status.success();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if !clean || std::env::var_os("CHUBBY_MOUNT_LOG").is_some() {
                eprintln!(
                    "---- mount {} (stopped clean: {clean}) log ----\n{}",
                    self.path().display(),
                    self.log()
                );
            }
        }
        if self.is_mounted() {
            self.clear_stale();
        }
    }
}

/// Runs `script` with `sh` in directory `dir` (a mount, usually).
///
/// # Panics
/// If `sh` cannot be run.
#[must_use]
pub fn sh(dir: &Path, script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh")
}

/// Runs `script`, asserting success; returns its stdout.
///
/// # Panics
/// If it fails (with its output).
pub fn ok(dir: &Path, script: &str) -> String {
    let out = sh(dir, script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script`, asserting failure with `needle` in its stderr.
///
/// # Panics
/// If it succeeds, or says something else.
pub fn fails(dir: &Path, script: &str, needle: &str) {
    let out = sh(dir, script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`{script}` succeeded");
    assert!(
        err.contains(needle),
        "`{script}`: expected {needle:?} in {err:?}"
    );
}
