//! The kernel adapter: fuser's callbacks, each answered on fuser's thread or spawned onto the
//! runtime; the work is in file_ops.rs, lock_ops.rs and xattr_ops.rs.

use super::*;

use super::locks::WHOLE_FILE_END;
use chubby_protocol::LockMode;
use fuser::{
    FileHandle, FopenFlags, Generation, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, TimeOrNow, WriteFlags,
};

impl fuser::Filesystem for ChubbyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        config
            // ATOMIC_O_TRUNC: O_TRUNC arrives with OPEN (the buffer starts empty) instead
            // of as a SETATTR without a file handle, which would empty the file at once.
            .add_capabilities(
                InitFlags::FUSE_FLOCK_LOCKS
                    | InitFlags::FUSE_POSIX_LOCKS
                    | InitFlags::FUSE_ATOMIC_O_TRUNC,
            )
            .map_err(|missing| {
                std::io::Error::other(format!("the kernel lacks FUSE lock support: {missing:?}"))
            })?;
        // RELEASEs (and readahead READs) are background requests: past this many in flight
        // the kernel holds them back, and a later lookup could overtake a release whose
        // commit it must wait for (see `Releasing`). Releases are answered at once.
        let _ = config.set_max_background(256);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if self.fenced(req, parent.0) {
            reply.error(Errno::EIO);
            return;
        }
        let pid = req.pid();
        if let Some((attr, ttl)) = self.0.fast_lookup(parent.0, name, pid) {
            reply.entry_with_ttls(&ttl, &NO_TTL, &attr, Generation(0));
            return;
        }
        let name = name.to_owned();
        self.spawn(req, |s| async move {
            match s.lookup(parent.0, &name, pid).await {
                Ok((attr, ttl)) => reply.entry_with_ttls(&ttl, &NO_TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        guard(&self.0.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        if let Some((attr, ttl)) = self.0.fast_getattr(ino.0) {
            reply.attr(&ttl, &attr);
            return;
        }
        self.spawn(req, |s| async move {
            match s.getattr(ino.0).await {
                Ok((attr, ttl)) => reply.attr(&ttl, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        self.spawn(req, |s| async move {
            let a = posix::SetAttr {
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            };
            match s.setattr(ino.0, a, fh.map(|f| f.0)).await {
                Ok(attr) => reply.attr(&NO_TTL, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    // Calls a Chubby file has no use for, answered quietly (fuser's defaults log a warning
    // for each; Python's open() alone sends an ioctl). ENOSYS makes the kernel fall back to
    // its generic code and stop asking.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        self.spawn(req, |s| async move {
            answer(reply, s.fallocate(ino.0, fh.0, offset, length, mode).await);
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        reply.ok(); // the master checks ACLs on every call; mode bits mean nothing here
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(einval());
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(eperm());
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        if self.fenced(req, parent.0) {
            reply.error(Errno::EIO);
            return;
        }
        let name = name.to_owned();
        let who = (req.uid(), req.gid());
        self.spawn(req, |s| async move {
            match s.mkdir(parent.0, &name, mode, who).await {
                Ok(attr) => reply.entry_with_ttls(&NO_TTL, &NO_TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.fenced(req, parent.0) {
            reply.error(Errno::EIO);
            return;
        }
        let name = name.to_owned();
        self.spawn(req, |s| async move {
            answer(reply, s.remove(parent.0, &name, false).await);
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.fenced(req, parent.0) {
            reply.error(Errno::EIO);
            return;
        }
        let name = name.to_owned();
        self.spawn(req, |s| async move {
            answer(reply, s.remove(parent.0, &name, true).await);
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(eperm());
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.fenced(req, parent.0) {
            reply.error(Errno::EIO);
            return;
        }
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let flags = flags.bits();
        self.spawn(req, |s| async move {
            answer(
                reply,
                s.rename(parent.0, &name, newparent.0, &newname, flags)
                    .await,
            );
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(eperm());
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        let pid = req.pid();
        if let Some((fh, f)) = self.0.fast_open(ino.0, flags.0, pid) {
            reply.opened(FileHandle(fh), f);
            return;
        }
        self.spawn(req, |s| async move {
            match s.open(ino.0, flags.0, pid).await {
                Ok((fh, f)) => reply.opened(FileHandle(fh), f),
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        let _ = ino;
        if let Some(data) = self.0.fast_read(fh.0, offset, size) {
            metrics::bump(&self.0.counters.reads_cached);
            reply.data(&data);
            return;
        }
        self.spawn(req, |s| async move {
            match s.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        let data = data.to_vec();
        let owner = lock_owner.map(|o| o.0);
        self.spawn(req, |s| async move {
            match s.write(fh.0, offset, &data, owner).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        if self.0.fast_flush(ino.0, fh.0, lock_owner.0) {
            reply.ok();
            return;
        }
        self.spawn(req, |s| async move {
            // Commit first (what this process wrote; everything, if it holds an fcntl lock
            // on the file): a process that writes under its fcntl lock and closes must
            // not let the next holder in before its write landed.
            let owner = (!s.holds_lock(ino.0, lock_owner.0)).then_some(lock_owner.0);
            let committed = s.commit(fh.0, owner).await;
            // fcntl locks go at any close by their process.
            s.unlock(ino.0, lock_owner.0, true).await;
            answer(reply, committed);
        });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.0.fast_release(ino.0, fh.0, lock_owner.map(|o| o.0)) {
            reply.ok();
            return;
        }
        // A description sharing another's handle: only the last one releases it.
        {
            let mut files = guard(&self.0.files);
            if let Some(slot) = files.get_mut(&fh.0).filter(|s| s.refs > 1) {
                slot.refs -= 1;
                drop(files);
                guard(&self.0.inodes).closed(ino.0);
                reply.ok();
                if let Some(owner) = lock_owner.map(|o| o.0) {
                    self.spawn(req, |s| async move { s.unlock(ino.0, owner, true).await });
                }
                return;
            }
        }
        // A fenced process's bytes are never committed.
        let fenced = self.fenced(req, ino.0);
        // A writer's release that may commit: lookups of its path wait for the commit from
        // now on (requests after this one are handled after this registration).
        let barrier = guard(&self.0.files)
            .get(&fh.0)
            .filter(|s| s.writer && s.file.try_lock().map_or(true, |f| f.dirty()))
            .map(|s| Arc::clone(&s.path));
        if let Some(path) = &barrier {
            self.0.releasing.begin(path);
        }
        // Answered at once: the kernel does not wait for it, and a RELEASE held open would
        // hold back later background requests (readahead READs among them).
        reply.ok();
        self.spawn(req, |s| async move {
            s.release(ino.0, fh.0, lock_owner.map(|o| o.0), barrier, fenced)
                .await;
        });
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        self.spawn(req, |s| async move {
            answer(reply, s.commit(fh.0, None).await);
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        self.spawn(req, |s| async move {
            match s.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        let dirs = guard(&self.0.dirs);
        let Some(entries) = dirs.get(&fh.0) else {
            drop(dirs);
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        drop(dirs);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guard(&self.0.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // every change is durable once its call returned
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let namelen = u32::try_from(chubby_protocol::db::NAME_BYTES_MAX).unwrap_or(255);
        reply.statfs(0, 0, 0, 0, 0, 4096, namelen, 4096);
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        let (name, value) = (name.to_owned(), value.to_vec());
        self.spawn(req, |s| async move {
            answer(reply, s.setxattr(ino.0, &name, &value).await);
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        if name.to_str().and_then(xattr::Name::parse).is_none() {
            reply.error(Errno::NO_XATTR); // security.capability etc., at once
            return;
        }
        let name = name.to_owned();
        let pid = req.pid();
        self.spawn(req, |s| async move {
            match s.getxattr(ino.0, &name, pid).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(e),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        self.spawn(req, |s| async move {
            match s.listxattr(ino.0).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(e),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        let name = name.to_owned();
        self.spawn(req, |s| async move {
            answer(reply, s.removexattr(ino.0, &name).await);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if self.fenced(req, parent.0) {
            reply.error(Errno::EIO);
            return;
        }
        let name = name.to_owned();
        let who = (req.uid(), req.gid(), req.pid());
        self.spawn(req, |s| async move {
            match s.create(parent.0, &name, mode, flags, who).await {
                Ok((attr, fh)) => reply.created(
                    &NO_TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_DIRECT_IO,
                ),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        let mode = if typ == libc::F_RDLCK {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        let type_of = |m: LockMode| match m {
            LockMode::Shared => libc::F_RDLCK,
            LockMode::Exclusive => libc::F_WRLCK,
        };
        // A holder on this mount, with its process.
        let key = guard(&self.0.inodes).instance(ino.0).unwrap_or(ino.0);
        let local = guard(&self.0.locks)
            .conflict(key, lock_owner.0, mode)
            .map(|l| (type_of(l.mode), l.pid));
        if let Some((t, pid)) = local {
            reply.locked(0, WHOLE_FILE_END, t, pid);
            return;
        }
        // Anywhere else in the cell: the master knows (its process is not known here:
        // pid 0).
        self.spawn(req, |s| async move {
            match s.remote_conflict(ino.0, mode).await {
                Ok(Some(held)) => reply.locked(0, WHOLE_FILE_END, type_of(held), 0),
                Ok(None) => reply.locked(0, 0, libc::F_UNLCK, 0),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        if self.fenced(req, ino.0) {
            reply.error(Errno::EIO);
            return;
        }
        self.spawn(req, |s| async move {
            answer(
                reply,
                s.setlk(ino.0, fh.0, lock_owner.0, start, end, typ, pid, sleep)
                    .await,
            );
        });
    }
}

/// Sends SIGTERM to the process groups of `procs` (never the mount's own), and SIGKILL
/// [`SIGKILL_AFTER`] later to those still there. (Through kill(1): this crate has no
/// unsafe code.)
pub(super) fn signal_groups(procs: &[fence::Proc]) {
    let own = fence::group_of(std::process::id());
    let mut groups = Vec::new();
    for p in procs {
        let Some(pgid) = fence::group_of(p.pid) else {
            continue;
        };
        if pgid > 1 && Some(pgid) != own && !groups.contains(&pgid) {
            groups.push(pgid);
            warn!(
                pgid,
                pid = p.pid,
                "sending SIGTERM to the lock holder's process group"
            );
            send_signal("TERM", &format!("-{pgid}"));
        }
    }
    let procs = procs.to_vec();
    let spawned = std::thread::Builder::new()
        .name("chubby-lock-loss".into())
        .spawn(move || {
            std::thread::sleep(SIGKILL_AFTER);
            for p in procs {
                if fence::process_of(p.pid) == Some(p) {
                    warn!(pid = p.pid, "the lock holder is still running: SIGKILL");
                    send_signal("KILL", &p.pid.to_string());
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the SIGKILL timer");
    }
}

pub(super) fn send_signal(signal: &str, target: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !sent.is_ok_and(|s| s.success()) {
        warn!(signal, target, "kill failed");
    }
}

/// Answers an operation that returns nothing but success or an errno.
pub(super) fn answer(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if size < len {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}
