//! Fencing the processes that held a lock their session lost (issue 18).
//!
//! When a session expires with locks held, the cell may already have granted those locks
//! to someone else (after the lock-delay). A process that believed it held one must not go
//! on acting as the holder: `flock L cmd` never looks at the descriptor that holds the
//! lock, so failing only that descriptor protects nothing. So every process that held
//! such a lock is *fenced*: the process that took it, every process that has the lock's
//! file open on this mount at that moment (those sharing the description, as a subshell
//! holding `9>lockfile` does), and all their descendants (`flock L cmd` runs `cmd` as a
//! child) get `EIO` for every later request on the mount, on any file, until they exit.
//! Other processes go on with the new session.
//!
//! Which processes share a taker's description cannot be read from `/proc` (only
//! `kcmp(2)` could tell, and a taker may have exited), so the processes with a lock file
//! open stand for them, with one exception: a standby. A process that was waiting for
//! one of the lost locks (blocked in `flock(2)`/`fcntl(2)` on the file when the loss is
//! handled, or whose wait ended with the session) never held it, and neither did its
//! parent, which may have opened the descriptor it waits through (`( flock 9 ) 9>L`):
//! both are spared, unless the parent is the taker of a held lock or one of its
//! ancestors (a holder's shell that runs a check taking the lock again stays fenced).
//! Anything else with the file open at that moment, a `cat L` included, is fenced.
//!
//! Processes are named by pid and start time (`/proc/<pid>/stat`), so a reused pid is
//! not taken for a fenced one; a fenced process that exited is forgotten.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing::warn;

/// A process: its pid (thread group id) and start time (clock ticks after boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    /// Thread group id.
    pub pid: u32,
    /// Start time, `/proc/<pid>/stat` field 22.
    pub start: u64,
}

/// The parent pid and start time in the text of a `/proc/<pid>/stat` file.
#[must_use]
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // "pid (comm) state ppid ..." where comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3); ppid is field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// The process group of process `pid` (`/proc/<pid>/stat` field 5).
#[must_use]
pub fn group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// The thread group id in the text of a `/proc/<pid>/status` file.
#[must_use]
pub fn parse_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The process of thread `tid`, if it is alive.
#[must_use]
pub fn process_of(tid: u32) -> Option<Proc> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let pid = parse_tgid(&status)?;
    let (_, start) = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(Proc { pid, start })
}

/// `tid`'s process and its ancestors, nearest first.
#[must_use]
pub fn lineage(tid: u32) -> Vec<Proc> {
    let mut out = Vec::new();
    let Some(first) = process_of(tid) else {
        return out;
    };
    let mut pid = first.pid;
    while pid > 1 && out.len() < 256 {
        let Some((ppid, start)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            break;
        };
        out.push(Proc { pid, start });
        pid = ppid;
    }
    out
}

/// The processes (other than this one) with a descriptor open on `file` (a path on this
/// machine, under the mount point), found through `/proc/*/fd`.
#[must_use]
pub fn openers_of(file: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| is_file(&t, file)));
        if holds {
            out.push(pid);
        }
    }
    out
}

/// A lock held when its session was lost.
#[derive(Clone, Debug)]
pub struct Lost {
    /// The thread that took it.
    pub pid: u32,
    /// The file, as a path in the cell.
    pub path: String,
    /// The taker and its ancestors (pids) when it was taken.
    pub lineage: Vec<u32>,
}

/// True if a thread of process `pid` is blocked waiting for a lock on a descriptor of
/// `file`: in `flock(2)` taking a lock without `LOCK_NB`, or in `fcntl(2)` with `F_SETLKW`
/// or `F_OFD_SETLKW` (`/proc/<pid>/task/*/syscall`: the call's number, then its arguments
/// in hex).
#[must_use]
pub fn blocked_on(pid: u32, file: &Path) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall"))
            .ok()
            .and_then(|call| waiting_fd(&call))
            .is_some_and(|fd| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|t| is_file(&t, file))
            })
    })
}

/// The descriptor of a blocking lock wait in the text of a `/proc/<tid>/syscall` file, if
/// it shows one (x86_64 call numbers; other architectures never match).
#[must_use]
pub fn waiting_fd(call: &str) -> Option<u64> {
    const FCNTL: u64 = 72;
    const FLOCK: u64 = 73;
    const F_SETLKW: u64 = 7;
    const F_OFD_SETLKW: u64 = 38;
    const LOCK_SH: u64 = 1;
    const LOCK_EX: u64 = 2;
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let mut words = call.split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    let mut arg = || u64::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok();
    let (fd, op) = (arg()?, arg()?);
    let waits = match number {
        FLOCK => op == LOCK_SH || op == LOCK_EX,
        FCNTL => op == F_SETLKW || op == F_OFD_SETLKW,
        _ => false,
    };
    waits.then_some(fd)
}

/// True if `target` (a descriptor's link in `/proc`) names `file`, deleted or not.
fn is_file(target: &Path, file: &Path) -> bool {
    target == file || target.as_os_str() == format!("{} (deleted)", file.display()).as_str()
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(ppid, _)| ppid)
}

/// The processes to fence for the locks `held` lost with a session on the mount at
/// `mountpoint` (see the module docs); `waiters` are the lineages of the waits lost with
/// it, by path. Takers first; pids may repeat.
#[must_use]
pub fn to_fence(
    mountpoint: Option<&Path>,
    held: &[Lost],
    waiters: &[(String, Vec<u32>)],
) -> Vec<u32> {
    let mut out: Vec<u32> = held.iter().map(|l| l.pid).collect();
    let Some(mnt) = mountpoint else {
        return out;
    };
    // Never spared: the takers' processes and their ancestors.
    let holders: HashSet<u32> = held
        .iter()
        .flat_map(|l| l.lineage.iter().copied())
        .collect();
    for lost in held {
        // Spared for this file: its waiters and their parents.
        let mut spared: HashSet<u32> = waiters
            .iter()
            .filter(|(path, _)| *path == lost.path)
            .flat_map(|(_, line)| line.iter().take(2).copied())
            .collect();
        let file = mnt.join(lost.path.trim_start_matches('/'));
        let openers = openers_of(&file);
        for &pid in &openers {
            if blocked_on(pid, &file) {
                spared.insert(pid);
                spared.extend(parent_of(pid));
            }
        }
        out.extend(
            openers
                .into_iter()
                .filter(|pid| holders.contains(pid) || !spared.contains(pid)),
        );
    }
    out
}

/// The fenced processes of a mount (see the module docs).
#[derive(Debug, Default)]
pub struct Fence {
    holders: Mutex<HashSet<Proc>>,
    active: AtomicBool,
    /// Fenced processes already named in the log.
    logged: Mutex<HashSet<u32>>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fence {
    /// Fences the processes `tids` (threads or processes; the dead are skipped); returns
    /// those fenced.
    pub fn fence(&self, tids: &[u32]) -> Vec<Proc> {
        let procs: Vec<Proc> = tids.iter().filter_map(|&t| process_of(t)).collect();
        if !procs.is_empty() {
            guard(&self.holders).extend(procs.iter().copied());
            self.active.store(true, Ordering::Release);
        }
        procs
    }

    /// True if the caller `tid` is a fenced process or one of their descendants. Costs
    /// nothing while nobody is fenced; otherwise a few reads of `/proc`.
    pub fn is_fenced(&self, tid: u32, path: impl FnOnce() -> String) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let line = lineage(tid);
        let mut holders = guard(&self.holders);
        let hit = line.iter().find(|p| holders.contains(p)).copied();
        // Forget the fenced that exited.
        holders.retain(|h| process_of(h.pid) == Some(*h));
        if holders.is_empty() {
            self.active.store(false, Ordering::Release);
        }
        drop(holders);
        let Some(holder) = hit else {
            return false;
        };
        let me = line.first().map_or(tid, |p| p.pid);
        if guard(&self.logged).insert(me) {
            warn!(
                pid = me,
                holder = holder.pid,
                path = %path(),
                "process {me} is fenced: it (or its ancestor {}) held a lock its session \
                 lost; its requests on the mount fail with EIO until it exits",
                holder.pid
            );
        }
        true
    }

    /// True while any process is fenced.
    #[must_use]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_are_parsed() {
        let stat = "4242 (a (b) c) S 17 4242 17 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    98765 1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((17, 98765)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_tgid("Name:\tx\nTgid:\t77\nPid:\t78\n"), Some(77));
        assert_eq!(parse_tgid("Name:\tx\n"), None);
    }

    #[test]
    fn only_blocking_lock_calls_count_as_waits() {
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        let at = |call: &str| waiting_fd(call);
        assert_eq!(
            at("73 0x9 0x2 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"),
            Some(9),
            "LOCK_EX"
        );
        assert_eq!(
            at("73 0x9 0x1 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"),
            Some(9),
            "LOCK_SH"
        );
        assert_eq!(
            at("73 0x9 0x6 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"),
            None,
            "LOCK_NB"
        );
        assert_eq!(
            at("73 0x9 0x8 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"),
            None,
            "LOCK_UN"
        );
        assert_eq!(
            at("72 0x3 0x7 0x7ffc 0x0 0x0 0x0 0x7ffc 0x7f00"),
            Some(3),
            "F_SETLKW"
        );
        assert_eq!(
            at("72 0x3 0x26 0x7ffc 0x0 0x0 0x0 0x7ffc 0x7f00"),
            Some(3),
            "OFD"
        );
        assert_eq!(
            at("72 0x3 0x5 0x7ffc 0x0 0x0 0x0 0x7ffc 0x7f00"),
            None,
            "F_GETLK"
        );
        assert_eq!(at("0 0x3 0x7 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"), None, "read");
        assert_eq!(at("running"), None);
        assert_eq!(at("-1 0x7ffc 0x7f00"), None);
    }

    #[test]
    fn a_fenced_process_and_its_children_are_fenced_others_not() {
        let fence = Fence::default();
        let me = std::process::id();
        assert!(!fence.is_fenced(me, String::new));
        // A child of this process: fencing the child leaves this process alone.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fenced = fence.fence(&[child.id()]);
        assert_eq!(fenced.len(), 1);
        assert!(fence.active());
        assert!(fence.is_fenced(child.id(), String::new));
        assert!(!fence.is_fenced(me, String::new), "a parent is not fenced");
        // Fencing this process fences its child (a descendant).
        fence.fence(&[me]);
        assert!(fence.is_fenced(me, String::new));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            fence.fence(&[child.id()]).is_empty(),
            "a process that is gone is not fenced"
        );
    }
}
