//! Chubby's whole-file promise on real mounts under concurrency (issue 17): no reader ever
//! sees a version nobody wrote, on the writer's mount or another; one write session is one
//! version; a writer sees its own file as on a local file system; and a history of several
//! processes on two mounts (Python and shell writers, a writer that forks, readers,
//! `flock` try-locks) through a master `kill -9` is linearizable per file, with never two
//! lock holders at once.
//!
//! Every mount and process a test starts is stopped when it ends, pass or fail (`Mount`'s
//! and `RealCell`'s drops, [`Procs`]).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chubby_integration::mount::{fuse_available, ok, sh, Mount};
use chubby_integration::real_cell::RealCell;
use chubby_integration::sim::checkers::linearizable::{
    check, HistoryOp, RegOp, RegResult, Verdict,
};
use chubby_integration::test_support::{runtime, ELECTION};

/// How long each torn-read run lasts.
const TORN_RUN: Duration = Duration::from_secs(10);
/// How long the history's clients run.
const HISTORY_RUN: Duration = Duration::from_secs(30);

/// Children killed when dropped.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The contents of version `n` of a torn-read file: its number, then a filler whose
/// length depends on `n`, so that an empty, padded, cut or mixed read never parses back to
/// the same bytes.
fn version(n: u64) -> Vec<u8> {
    let fill = usize::try_from(n.wrapping_mul(37) % 300).unwrap();
    let mut v = format!("{n}:").into_bytes();
    v.extend(std::iter::repeat_n(b'x', fill));
    v.push(b'\n');
    v
}

/// The version `bytes` are, if they are exactly one.
fn parse_version(bytes: &[u8]) -> Option<u64> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    let n: u64 = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
    (version(n) == bytes).then_some(n)
}

/// What the readers of one torn-read run saw.
#[derive(Debug, Default)]
struct Seen {
    reads: u64,
    bad: Vec<String>,
}

/// Writes versions 1, 2, ... of `write_path` with `std::fs::write` (open with `O_TRUNC`,
/// write, close) while `readers` threads read `read_path` with `std::fs::read`, for
/// [`TORN_RUN`]. Every read must be exactly one version, no older than the last write
/// completed before it began, and no older than the thread's previous read.
fn torn_run(write_path: PathBuf, read_path: PathBuf, readers: usize) -> (u64, Seen) {
    std::fs::write(&write_path, version(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, path) = (Arc::clone(&stop), Arc::clone(&written), write_path);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                std::fs::write(&path, version(n))
                    .unwrap_or_else(|e| panic!("write of version {n} failed: {e}"));
                written.store(n, Ordering::SeqCst);
                // Read your writes, on the writer's own mount.
                let back = std::fs::read(&path).unwrap();
                let got = parse_version(&back);
                assert!(
                    got.is_some_and(|g| g >= n),
                    "the writer read {:?} right after writing version {n}",
                    String::from_utf8_lossy(&back)
                );
            }
            n
        })
    };
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let (stop, written, path) =
                (Arc::clone(&stop), Arc::clone(&written), read_path.clone());
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut last = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let floor = written.load(Ordering::SeqCst);
                    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read failed: {e}"));
                    seen.reads += 1;
                    match parse_version(&bytes) {
                        Some(n) if n >= floor && n >= last => last = n,
                        Some(n) => seen.bad.push(format!(
                            "stale: version {n} after version {floor} was written and {last} read"
                        )),
                        None => seen.bad.push(format!(
                            "not a version anybody wrote: {:?}",
                            String::from_utf8_lossy(&bytes)
                        )),
                    }
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(TORN_RUN);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let mut all = Seen::default();
    for t in threads {
        let s = t.join().unwrap();
        all.reads += s.reads;
        all.bad.extend(s.bad);
    }
    (writes, all)
}

fn assert_whole(what: &str, writes: u64, seen: &Seen) {
    eprintln!(
        "{what}: {writes} writes, {} reads checked, {} bad",
        seen.reads,
        seen.bad.len()
    );
    assert!(writes >= 20, "{what}: only {writes} writes");
    assert!(seen.reads >= 100, "{what}: only {} reads", seen.reads);
    assert!(
        seen.bad.is_empty(),
        "{what}: {} of {} reads were not whole, current versions; the first: {:#?}",
        seen.bad.len(),
        seen.reads,
        &seen.bad[..seen.bad.len().min(10)]
    );
}

#[test]
fn every_read_is_one_whole_version_on_the_writers_mount_and_across_mounts() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    let (writes, seen) = torn_run(a.at("same"), a.at("same"), 2);
    assert_whole("same mount", writes, &seen);
    let (writes, seen) = torn_run(a.at("across"), b.at("across"), 2);
    assert_whole("across mounts", writes, &seen);
}

#[test]
fn shell_redirects_never_show_the_truncation() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    let d = a.path();
    ok(&d, "echo 'port = 0' > config");
    // A deploy loop rewriting a config with shell redirects, and readers with `cat` on
    // both mounts: no empty read, and every read one of the lines written.
    let mut procs = Procs::default();
    let script = "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo \"port = $i\" > config; done";
    let writer = Command::new("sh")
        .args(["-c", script])
        .current_dir(&d)
        .spawn()
        .unwrap();
    procs.0.push(writer);
    let reader = |dir: PathBuf| {
        std::thread::spawn(move || {
            let out = Command::new("sh")
                .args([
                    "-c",
                    "i=0; while [ $i -lt 400 ]; do i=$((i+1)); cat config; echo '|'; done",
                ])
                .current_dir(dir)
                .stdout(Stdio::piped())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let readers = [reader(a.path()), reader(b.path())];
    let status = procs.0[0].wait().unwrap();
    assert!(status.success(), "the redirect loop failed: {status}");
    let mut reads = 0;
    for r in readers {
        let out = r.join().unwrap();
        let parts: Vec<&str> = out.split("|\n").collect();
        assert_eq!(parts.len(), 401, "every cat ran: {out}");
        assert_eq!(parts[400], "", "output ends with a separator");
        for read in &parts[..400] {
            reads += 1;
            let n = read
                .strip_prefix("port = ")
                .and_then(|r| r.strip_suffix('\n'))
                .and_then(|n| n.parse::<u32>().ok());
            assert!(
                n.is_some_and(|n| n <= 300),
                "a `cat` read {read:?}, which no redirect wrote"
            );
        }
    }
    eprintln!("shell redirects: 300 writes, {reads} cat reads, all whole");
}

/// `user.chubby.content_generation` of `f` in `dir`.
fn generation(dir: &Path, f: &str) -> u64 {
    ok(
        dir,
        &format!("getfattr --only-values -n user.chubby.content_generation {f}"),
    )
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn one_version_per_write_session_and_the_writer_sees_its_own_file() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let d = a.path();
    ok(&d, "echo start > f && echo abc > src");
    // Each write session raises the generation by exactly one and commits what it wrote.
    let sessions: [(&str, &str); 8] = [
        ("echo x > f", "x\n"),
        ("sh -c 'echo a; echo b' > f", "a\nb\n"),
        ("printf 'p %s\\n' q > f", "p q\n"),
        ("cat src > f", "abc\n"),
        ("python3 -c \"open('f','w').write('py')\"", "py"),
        (
            // A writer that forks and execs with its descriptor open: the child's close
            // (close-on-exec) is not the end of the write.
            "python3 -c \"import subprocess\nf=open('f','w'); f.write('half1-'); f.flush()\n\
             subprocess.run(['true']); f.write('half2'); f.close()\"",
            "half1-half2",
        ),
        ("echo more >> f", "half1-half2more\n"),
        (": > f", ""),
    ];
    for (cmd, want) in sessions {
        let before = generation(&d, "f");
        ok(&d, cmd);
        // Read on the same mount right after the writer's close returned.
        assert_eq!(ok(&d, "cat f"), want, "after `{cmd}`");
        assert_eq!(generation(&d, "f"), before + 1, "`{cmd}` made one version");
    }
    ok(&d, "truncate -s 0 f");
    assert_eq!(ok(&d, "stat -c %s f"), "0\n");

    // The issue's repro, as written: a local file system prints 3.
    let out = ok(
        &d,
        "printf %1000s >f; python3 -c \"import os;fd=os.open('f',os.O_RDWR|os.O_TRUNC);\
         os.lseek(fd,0,2);os.write(fd,b'abc');os.close(fd)\"; stat -c %s f",
    );
    assert_eq!(out, "3\n");

    // The writer's descriptor: fstat, lseek(SEEK_END), ftruncate both ways, O_APPEND and
    // reads through a read-write descriptor show its uncommitted contents; nobody else's
    // view changes until its close.
    let script = r#"
import os
p = 'w'
open(p, 'w').write('abc')
fd = os.open(p, os.O_RDWR)
os.ftruncate(fd, 10)
assert os.fstat(fd).st_size == 10, os.fstat(fd).st_size
assert os.pread(fd, 20, 0) == b'abc' + b'\0' * 7
assert os.stat(p).st_size == 3, 'another descriptor saw the writer'
assert open(p, 'rb').read() == b'abc'
os.ftruncate(fd, 2)
assert os.lseek(fd, 0, os.SEEK_END) == 2
os.write(fd, b'Z')
assert os.fstat(fd).st_size == 3
os.close(fd)
assert open(p, 'rb').read() == b'abZ'
fd = os.open(p, os.O_WRONLY | os.O_APPEND)
os.write(fd, b'++')
assert os.fstat(fd).st_size == 5
os.close(fd)
assert open(p, 'rb').read() == b'abZ++'
# An unlinked file a descriptor still holds.
r = os.open(p, os.O_RDONLY)
w = os.open(p, os.O_RDWR)
os.write(w, b'AB')
os.unlink(p)
assert os.fstat(r).st_size == 5 and os.fstat(w).st_size == 5
assert os.read(r, 100) == b'abZ++'
os.fsync(w)
os.fsync(r)
os.close(w)
os.close(r)
assert not os.path.exists(p)
print('ok')
"#;
    std::fs::write(d.join("check.py"), script).unwrap();
    assert_eq!(ok(&d, "python3 check.py"), "ok\n");

    // Opens that reach a writer's inode without a lookup (`/dev/stderr`, `/proc/self/fd`)
    // are never refused: they share the writer's file, as on a local file system.
    ok(&d, "sh -c 'echo err > /dev/stderr; echo out' 2> f");
    assert_eq!(ok(&d, "cat f"), "err\n");
    let script = r#"
import os
fd = os.open('g', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(fd, b'hello')
r = os.open('/proc/self/fd/%d' % fd, os.O_RDONLY)
os.read(r, 100)
os.close(r)
w = os.open('/proc/self/fd/%d' % fd, os.O_WRONLY | os.O_APPEND)
os.write(w, b'+more')
os.close(w)
os.close(fd)
assert open('g', 'rb').read() == b'hello+more', open('g', 'rb').read()
# O_TRUNC truncates, read-only or not.
os.close(os.open('g', os.O_RDONLY | os.O_TRUNC))
assert open('g', 'rb').read() == b''
print('ok')
"#;
    std::fs::write(d.join("reopen.py"), script).unwrap();
    assert_eq!(ok(&d, "python3 reopen.py"), "ok\n");
    // An unchanged file keeps its inode number from one process to the next.
    let first = ok(&d, "stat -c %i src");
    assert_eq!(ok(&d, "cat src >/dev/null; stat -c %i src"), first);
    assert_eq!(ok(&d, "stat -c %i src"), first);

    // A write over the size limit fails and leaves the file as it was.
    ok(&d, "echo keep > f");
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'z'; 300 * 1024]).unwrap();
    let out = sh(&d, &format!("cat {} > f", big.path().display()));
    assert!(!out.status.success(), "an oversized write succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File too large"),
        "{out:?}"
    );
    assert_eq!(ok(&d, "cat f"), "keep\n");

    // Listings hold every name, whatever bytes sort around '/'.
    ok(
        &d,
        "mkdir dir && touch dir/a dir/a-b dir/a.txt 'dir/a b' dir/a+ dir/é",
    );
    assert_eq!(ok(&d, "ls dir"), "a\na b\na+\na-b\na.txt\né\n");
    ok(&d, "rm -r dir");
}

/// One client of the history (run by `python3`): for a while, on random files of its
/// mount, whole-file writes of unique values (Python `open('w')`, a shell redirect, or a
/// Python write with a fork+exec in the middle), whole-file reads, and `flock` try-locks
/// held briefly; each operation one JSON line with its call and return times
/// (CLOCK_MONOTONIC, µs, common to every process).
const CLIENT: &str = r#"
import fcntl, json, os, random, subprocess, sys, time
mnt, cid, secs, nfiles, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rnd = random.Random(cid)
log = open(out, 'w')
def now():
    return time.monotonic_ns() // 1000
def rec(**kw):
    kw['c'] = cid
    log.write(json.dumps(kw) + '\n')
end = time.monotonic() + secs
n = 0
while time.monotonic() < end:
    f = rnd.randrange(nfiles)
    path = os.path.join(mnt, 'f%d' % f)
    r = rnd.random()
    if r < 0.35:
        n += 1
        val = 'c%d-%d:' % (cid, n) + '.' * rnd.choice([0, 3, 40, 200, 3000])
        how = rnd.choice(['py', 'py', 'sh', 'fork'])
        t0 = now()
        try:
            if how == 'py':
                with open(path, 'w') as fh:
                    fh.write(val)
            elif how == 'sh':
                subprocess.run(['sh', '-c', 'printf %s "$1" > "$2"', 'sh', val, path], check=True)
            else:
                with open(path, 'w') as fh:
                    half = len(val) // 2
                    fh.write(val[:half])
                    fh.flush()
                    subprocess.run(['true'], check=True)
                    fh.write(val[half:])
            rec(f=f, op='put', v=val, how=how, call=t0, ret=now())
        except Exception as e:
            rec(f=f, op='put', v=val, how=how, call=t0, ret=None, err=str(e))
    elif r < 0.9:
        t0 = now()
        try:
            with open(path, 'rb') as fh:
                v = fh.read().decode('latin-1')
            rec(f=f, op='get', v=v, call=t0, ret=now())
        except Exception as e:
            rec(f=f, op='get', v=None, call=t0, ret=None, err=str(e))
    else:
        try:
            fd = os.open(os.path.join(mnt, 'L'), os.O_RDONLY)
        except OSError as e:
            rec(op='lockerr', err=str(e))
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError as e:
            rec(op='lockerr', err=str(e))
            os.close(fd)
            continue
        acq = now()
        time.sleep(0.02)
        rel = now()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        rec(op='hold', acq=acq, rel=rel)
log.close()
"#;

/// Files the history's clients share.
const FILES: usize = 2;

#[test]
fn a_history_of_six_processes_on_two_mounts_is_linearizable() {
    history_of_six_processes_on_two_mounts(false);
}

/// Failed once in 7 runs (in CI) before exactly-once calls: a whole-file write in flight
/// when the master died was resent to the next master, and when its first copy had been
/// applied and another client's write landed in between, the copy applied it a second time
/// (a reader saw A, B, A). Calls are numbered now, and the next master answers the copy from
/// the log's record of the first (docs/sessions.md, "Exactly once").
#[test]
fn a_history_of_six_processes_on_two_mounts_through_a_master_kill_is_linearizable() {
    history_of_six_processes_on_two_mounts(true);
}

/// Six clients on two mounts for `HISTORY_RUN`, the master killed halfway if `kill`; each
/// file's history must be linearizable and the lock holds never overlap.
fn history_of_six_processes_on_two_mounts(kill: bool) {
    if !fuse_available() {
        return;
    }
    let mut cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    for f in 0..FILES {
        std::fs::write(a.at(&format!("f{f}")), "init").unwrap();
    }
    std::fs::write(a.at("L"), "").unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let mut procs = Procs::default();
    let mut logs = Vec::new();
    for cid in 0..6 {
        let mnt = if cid % 2 == 0 { a.path() } else { b.path() };
        let log = work.path().join(format!("c{cid}.jsonl"));
        let child = Command::new("python3")
            .arg(&script)
            .arg(&mnt)
            .arg(cid.to_string())
            .arg(HISTORY_RUN.as_secs().to_string())
            .arg(FILES.to_string())
            .arg(&log)
            .spawn()
            .unwrap();
        procs.0.push(child);
        logs.push(log);
    }
    // Kill the master in the middle.
    let rt = runtime();
    let _in_rt = rt.enter();
    let conn = cell.connect();
    let master = rt.block_on(cell.wait_master(&conn, ELECTION));
    std::thread::sleep(HISTORY_RUN / 2);
    if kill {
        cell.kill9(usize::try_from(master).unwrap());
    }
    let halfway = Instant::now();
    for c in &mut procs.0 {
        let status = c.wait().unwrap();
        assert!(status.success(), "a client failed: {status}");
    }
    eprintln!(
        "master {master} {}; clients done {:.1} s after halfway",
        if kill { "killed halfway" } else { "left alone" },
        halfway.elapsed().as_secs_f64()
    );

    let mut histories: HashMap<usize, Vec<HistoryOp>> = HashMap::new();
    let mut written: HashMap<usize, HashSet<Vec<u8>>> = HashMap::new();
    let mut holds = Vec::new();
    let (mut puts, mut gets, mut unknown, mut failed_reads, mut lock_errors) = (0, 0, 0, 0, 0);
    let mut by_how: HashMap<String, u64> = HashMap::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let client = usize::try_from(v["c"].as_u64().unwrap()).unwrap();
            let call = v["call"].as_u64();
            let ret = v["ret"].as_u64();
            match v["op"].as_str().unwrap() {
                "put" => {
                    let f = usize::try_from(v["f"].as_u64().unwrap()).unwrap();
                    let val = v["v"].as_str().unwrap().as_bytes().to_vec();
                    *by_how
                        .entry(v["how"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                    written.entry(f).or_default().insert(val.clone());
                    puts += 1;
                    if ret.is_none() {
                        unknown += 1;
                    }
                    histories.entry(f).or_default().push(HistoryOp {
                        client,
                        call: call.unwrap(),
                        ret: ret.map(|t| (t, RegResult::Done)),
                        op: RegOp::Put(val),
                    });
                }
                "get" => {
                    let f = usize::try_from(v["f"].as_u64().unwrap()).unwrap();
                    let (Some(ret), Some(val)) = (ret, v["v"].as_str()) else {
                        failed_reads += 1;
                        continue;
                    };
                    gets += 1;
                    // Latin-1 round trip: one char per byte.
                    let bytes: Vec<u8> = val.chars().map(|c| c as u32 as u8).collect();
                    histories.entry(f).or_default().push(HistoryOp {
                        client,
                        call: call.unwrap(),
                        ret: Some((ret, RegResult::Value(bytes))),
                        op: RegOp::Get,
                    });
                }
                "hold" => holds.push((
                    client,
                    v["acq"].as_u64().unwrap(),
                    v["rel"].as_u64().unwrap(),
                )),
                "lockerr" => lock_errors += 1,
                other => panic!("unknown op {other}"),
            }
        }
    }
    eprintln!(
        "history: {puts} writes ({unknown} with unknown outcome; by kind {by_how:?}), \
         {gets} reads ({failed_reads} failed), {} lock holds ({lock_errors} lock errors)",
        holds.len()
    );
    assert!(puts >= 300 && gets >= 300, "too short a history");
    assert!(holds.len() >= 10, "too few lock holds: {}", holds.len());

    // No value nobody wrote.
    for (f, ops) in &histories {
        let wrote = &written[f];
        for op in ops {
            if let Some((_, RegResult::Value(v))) = &op.ret {
                assert!(
                    v.as_slice() == b"init" || wrote.contains(v),
                    "client {} read a value nobody wrote to f{f}: {:?}",
                    op.client,
                    String::from_utf8_lossy(v)
                );
            }
        }
    }
    // Per file, a linearisation exists (so no stale read either).
    for (f, ops) in &histories {
        match check(b"init", ops) {
            Verdict::Linearizable => {}
            v => {
                // Kept for a post-mortem: the clients' logs, and the stale reads found.
                let kept =
                    std::env::temp_dir().join(format!("chubby-history-{}", std::process::id()));
                let _ = std::fs::create_dir_all(&kept);
                for log in &logs {
                    if let Some(name) = log.file_name() {
                        let _ = std::fs::copy(log, kept.join(name));
                    }
                }
                panic!(
                    "f{f}'s history of {} operations: {v:?}; stale reads: {:#?}; logs kept in {}",
                    ops.len(),
                    stale_reads(ops),
                    kept.display()
                );
            }
        }
    }
    // Never two lock holders: the holds (from flock's return to the unlock's call) of
    // different clients never overlap.
    holds.sort_by_key(|&(_, acq, _)| acq);
    let mut latest: Option<(usize, u64, u64)> = None;
    for &(c, acq, rel) in &holds {
        if let Some((c0, a0, r0)) = latest {
            assert!(
                acq >= r0,
                "two lock holders: client {c0} held [{a0}, {r0}] µs and client {c} [{acq}, {rel}]"
            );
        }
        if latest.is_none_or(|(_, _, r0)| rel > r0) {
            latest = Some((c, acq, rel));
        }
    }
}

/// Reads that returned a value older than one whose write completed after that value's
/// write and before the read began (or `init` after any completed write): each as (read's
/// client, call µs, value read's head, the newer write's client, its return µs).
fn stale_reads(ops: &[HistoryOp]) -> Vec<(usize, u64, String, usize, u64)> {
    let head = |v: &[u8]| String::from_utf8_lossy(&v[..v.len().min(12)]).into_owned();
    let writes: Vec<(&HistoryOp, &[u8], u64)> = ops
        .iter()
        .filter_map(|o| match (&o.op, &o.ret) {
            (RegOp::Put(v), Some((ret, _))) => Some((o, v.as_slice(), *ret)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for r in ops {
        let Some((_, RegResult::Value(v))) = &r.ret else {
            continue;
        };
        // When the value read was written (its write's call); `init` before everything.
        let written_at = if v.as_slice() == b"init" {
            Some(0)
        } else {
            writes
                .iter()
                .find(|(_, w, _)| *w == v.as_slice())
                .map(|(o, _, _)| o.call)
        };
        let Some(written_at) = written_at else {
            continue;
        };
        if let Some((newer, _, ret)) = writes
            .iter()
            .find(|(o, w, ret)| *w != v.as_slice() && o.call > written_at && *ret < r.call)
        {
            let _ = written_at;
            out.push((r.client, r.call, head(v), newer.client, *ret));
            if out.len() >= 5 {
                break;
            }
        }
    }
    out
}
