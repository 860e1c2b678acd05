//! Everyday tools on a real mount (issue 19): git, rsync, tar, cp -a, sed -i, install, an
//! editor's save, and `mv` of directories, each exiting 0 with contents identical to the
//! source (`diff -r`) and modes and times kept where the tool keeps them; a deploy by
//! directory rename that readers on two mounts only ever see whole; a presence directory
//! whose ephemeral-children marker holds for files made by another mount; chmod on one
//! mount seen by another. Every mount, cell and process a test starts is stopped when it
//! ends, pass or fail.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chubby_integration::mount::{fails, fuse_available, ok, sh, Mount};
use chubby_integration::real_cell::RealCell;
use chubby_integration::test_support::wait_until;

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small source tree with modes, old times, a subdirectory and awkward names.
fn source_tree(dir: &Path) {
    ok(
        dir,
        "mkdir -p src/sub/deeper && printf 'one\\n' > src/a.txt && printf 'two\\n' > 'src/b c.txt' \
         && head -c 70000 /dev/urandom > src/sub/blob && printf 'x' > src/sub/deeper/x \
         && chmod 640 src/a.txt && chmod 755 src/sub/deeper/x && chmod 700 src/sub \
         && touch -d '2001-02-03 04:05:06' src/a.txt src/sub/blob",
    );
}

#[test]
fn git_rsync_tar_cp_sed_install_editor_and_mv_work_like_on_a_local_disk() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let m = Mount::new(&cell, &[]);
    let d = m.path();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    source_tree(l);
    let src = l.join("src");
    let src = src.display();

    // rsync -a: contents, modes and times; a second run finds nothing to do.
    ok(&d, &format!("rsync -a {src}/ rs/ && diff -r {src} rs"));
    assert_eq!(
        ok(&d, "stat -c '%a %Y' rs/a.txt rs/sub"),
        ok(l, "stat -c '%a %Y' src/a.txt src/sub")
    );
    assert_eq!(
        ok(&d, &format!("rsync -a --itemize-changes {src}/ rs/")),
        ""
    );

    // tar: extract onto the mount keeping modes and times, archive from it, round trip.
    let tar = l.join("src.tar");
    ok(l, "tar cf src.tar src");
    ok(
        &d,
        &format!(
            "mkdir tx && tar xf {} -C tx && diff -r {src} tx/src",
            tar.display()
        ),
    );
    assert_eq!(
        ok(&d, "stat -c '%a %Y' tx/src/a.txt tx/src/sub/deeper/x"),
        ok(l, "stat -c '%a %Y' src/a.txt src/sub/deeper/x")
    );
    ok(&d, &format!("tar cf {}/back.tar -C tx src", l.display()));
    ok(
        l,
        "mkdir back && tar xf back.tar -C back && diff -r src back/src",
    );

    // cp -a keeps modes and times; cp -a back out too.
    ok(&d, &format!("cp -a {src} cpa && diff -r {src} cpa"));
    assert_eq!(
        ok(&d, "stat -c '%a %Y' cpa/a.txt"),
        ok(l, "stat -c '%a %Y' src/a.txt")
    );
    ok(
        &d,
        &format!(
            "cp -a cpa {}/out && diff -r {src} {}/out",
            l.display(),
            l.display()
        ),
    );

    // git: init, add, commit, clone (of a local repository, and of the mount's one).
    let git = "git -c user.email=t@example.com -c user.name=t -c init.defaultBranch=main";
    ok(
        &d,
        &format!("mkdir repo && cd repo && {git} init -q && cp -r {src}/. . && {git} add -A && {git} commit -qm first && {git} fsck --full"),
    );
    ok(l, &format!("mkdir up && cd up && {git} init -q && echo hi > f && {git} add f && {git} commit -qm c"));
    ok(
        &d,
        &format!(
            "{git} clone -q {}/up clone && diff clone/f {}/up/f",
            l.display(),
            l.display()
        ),
    );
    ok(
        &d,
        &format!("{git} clone -q repo clone2 && diff -r --exclude=.git repo clone2"),
    );
    assert_eq!(ok(&d, "cd clone2 && git status --porcelain"), "");

    // sed -i, install -m, and an editor's save (write a swap file, rename it over).
    ok(&d, "printf 'a\\nb\\n' > s.txt && sed -i 's/a/A/' s.txt");
    assert_eq!(ok(&d, "cat s.txt"), "A\nb\n");
    ok(&d, &format!("install -m 644 {src}/sub/deeper/x inst"));
    assert_eq!(ok(&d, "stat -c %a inst"), "644\n");
    ok(
        &d,
        "printf 'old\\n' > doc && python3 -c \"import os; f=open('.doc.swp','w'); f.write('new\\n'); f.flush(); os.fsync(f.fileno()); f.close(); os.rename('.doc.swp','doc')\"",
    );
    assert_eq!(ok(&d, "cat doc && ls -a | grep -c swp || true"), "new\n0\n");

    // mv of directories, and POSIX refusals.
    ok(&d, "mv cpa moved && diff -r moved rs && test ! -e cpa");
    ok(
        &d,
        "mkdir empty && mv -T moved empty && test -f empty/sub/blob",
    );
    fails(&d, "mv -T rs empty", "not empty");
    fails(&d, "mv empty empty/sub/inside", "subdirectory of itself");
    ok(&d, "chmod 600 s.txt && chown 1:1 s.txt");
    assert_eq!(ok(&d, "stat -c '%a %u %g' s.txt"), "600 1 1\n");
    // mmap: shared mappings of read-only descriptions and private ones of any work; a
    // shared mapping of a writable description is refused with ENODEV (README, "Semantics
    // and limits"): its bytes could not be committed as one version.
    let mm = ok(
        &d,
        "printf 'hello world' > mm && python3 -c \"
import mmap, os
f = open('mm', 'r+b')
try:
    mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
    print('shared-rw mapped')
except OSError as e:
    print('shared-rw', os.strerror(e.errno))
p = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE)
print('private', p[:5].decode())
r = open('mm', 'rb')
print('shared-ro', mmap.mmap(r.fileno(), 0, prot=mmap.PROT_READ)[6:].decode())
\"",
    );
    assert_eq!(
        mm,
        "shared-rw No such device\nprivate hello\nshared-ro world\n"
    );
    eprintln!("tools: rsync, tar, cp -a, git, sed -i, install, editor save, mv all exited 0");
}

/// Deploying by `mv release.new current` is one Paxos write: readers on two mounts list
/// `current` either missing or whole, never half-moved, and read only whole releases.
#[test]
fn a_deploy_by_directory_rename_is_whole_to_readers_on_every_mount() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    let files = ["app.toml", "db.toml", "web.toml", "z-last.toml"];
    ok(&a.path(), "mkdir old");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [a.path(), b.path(), b.path()]
        .into_iter()
        .map(|dir| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut whole, mut missing) = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    match std::fs::read_dir(dir.join("current")) {
                        Ok(entries) => {
                            let mut names: Vec<String> = entries
                                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                                .collect();
                            names.sort();
                            if names.is_empty() {
                                // Moved away between the open and the listing: the old
                                // directory, gone from this name, lists nothing.
                                missing += 1;
                                continue;
                            }
                            assert_eq!(names, files, "a half-moved release was listed");
                            whole += 1;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing += 1,
                        Err(e) => panic!("listing current: {e}"),
                    }
                    if let Ok(text) = std::fs::read_to_string(dir.join("current/app.toml")) {
                        assert!(text.starts_with("release = "), "read {text:?}");
                    }
                }
                (whole, missing)
            })
        })
        .collect();
    let releases = 40;
    for n in 0..releases {
        let stage = format!(
            "mkdir rel.new && for f in {} ; do echo \"release = {n}\" > rel.new/$f; done",
            files.join(" ")
        );
        ok(&a.path(), &stage);
        ok(&a.path(), "mv rel.new current");
        ok(&a.path(), &format!("mv current old/{n}"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = 0;
    for r in readers {
        let (whole, missing) = r.join().unwrap();
        eprintln!("reader: {whole} whole listings, {missing} without a release");
        seen += whole;
    }
    assert!(seen > 0, "no reader ever saw a release");
    assert_eq!(
        ok(&b.path(), "ls old | wc -l").trim(),
        releases.to_string(),
        "every release moved whole"
    );
    assert_eq!(ok(&b.path(), "cat old/7/db.toml"), "release = 7\n");
}

/// A directory marked ephemeral-children (the xattr, replicated) makes files another
/// mount creates in it ephemeral: they go with that mount's session. chmod on one mount
/// is seen at once on the other.
#[test]
fn a_presence_directory_is_ephemeral_for_every_mount() {
    if !fuse_available() {
        return;
    }
    let cell = RealCell::start(3);
    let a = Mount::new(&cell, &[]);
    let b = Mount::new(&cell, &[]);
    ok(
        &a.path(),
        "mkdir members && setfattr -n user.chubby.ephemeral -v 1 members",
    );
    assert_eq!(
        ok(
            &b.path(),
            "getfattr --only-values -n user.chubby.ephemeral members"
        ),
        "1"
    );
    // A process on B holds its presence file open.
    let holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3> members/host-b; echo ready; read line")
        .current_dir(b.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder = Proc(holder);
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready, "ready\n");
    assert_eq!(
        ok(
            &a.path(),
            "getfattr --only-values -n user.chubby.ephemeral members/host-b"
        ),
        "1",
        "a file B created in the marked directory is ephemeral"
    );
    drop(holder); // its last handle closes
    wait_until("host-b to vanish", Duration::from_secs(20), || {
        !sh(&a.path(), "test -e members/host-b").status.success()
    });
    // A file created after the marker is cleared is permanent.
    ok(
        &a.path(),
        "setfattr -x user.chubby.ephemeral members && echo x > members/keep",
    );
    assert_eq!(
        ok(
            &b.path(),
            "getfattr --only-values -n user.chubby.ephemeral members/keep"
        ),
        "0"
    );
    // chmod and touch on A, seen by B without waiting.
    ok(
        &a.path(),
        "chmod 604 members/keep && touch -d '1999-12-31 23:59:59' members/keep",
    );
    assert_eq!(
        ok(&b.path(), "stat -c '%a %Y' members/keep"),
        "604 946684799\n"
    );
}
