//! Files and directories on the mount: lookups and attributes, opens, whole-file buffers
//! committed at close, creations, removals and renames.

use super::*;

use super::buffer::BufferError;
use super::inodes::{parent_path, Share, ROOT};
use crate::client::OpenOptions;
use chubby_protocol::db::{FILE_BYTES_MAX, MODE_BITS};
use chubby_protocol::{AttrChange, Creation, InstanceNumber, OpenMode};
use fuser::FopenFlags;

impl Shared {
    /// The stat of `path` if it is the node `ino` stands for; `ENOENT` if the path is gone
    /// or names another node now.
    pub(super) async fn stat_of(
        &self,
        client: &Client,
        ino: u64,
        path: &str,
    ) -> Result<(Stat, bool), Errno> {
        let want = self.instance_of(ino)?;
        let (stat, covered) = client.stat_covered(path).await.map_err(|e| ce(&e))?;
        match stat {
            Some(s) if s.instance.0 == want => Ok((s, covered)),
            _ => Err(Errno::ENOENT),
        }
    }

    pub(super) async fn lookup(
        &self,
        parent: u64,
        name: &OsStr,
        pid: u32,
    ) -> Result<(FileAttr, Duration), Errno> {
        let path = self.child(parent, name)?;
        self.releasing.wait(&path).await;
        let cur = self.session().await?;
        let stat = cur
            .client
            .stat(&path)
            .await
            .map_err(|e| ce(&e))?
            .ok_or(Errno::ENOENT)?;
        if stat.kind == NodeKind::File {
            let retry = self.retry_of(pid, &path);
            if retry.is_some() {
                self.looked_up(pid);
            }
            match retry {
                // A writer whose open was refused: an inode of its own.
                Some(true) => {
                    let ino = guard(&self.inodes).lookup_private(&path, &stat);
                    return Ok((self.attr(ino, &stat), NO_TTL));
                }
                // A reader whose open was refused (the file changed under it): an inode
                // of its own holding the current version, so that its open cannot miss
                // it again.
                Some(false) => {
                    let (contents, stat) = cur.client.get(&path).await.map_err(|e| ce(&e))?;
                    let ino = guard(&self.inodes).lookup_pinned(&path, &stat, contents);
                    return Ok((self.attr(ino, &stat), ATTR_TTL));
                }
                None => {}
            }
        }
        let contents = cur
            .client
            .cached_contents(&path)
            .filter(|(_, s)| {
                s.instance == stat.instance && s.content_generation == stat.content_generation
            })
            .map(|(c, _)| c);
        Ok(self.entry(&path, &stat, contents))
    }

    pub(super) async fn getattr(&self, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        let file = guard(&self.inodes).file(ino);
        if let Some(f) = file {
            return Ok(match f.share {
                Share::Private(Some(fh)) => {
                    let mut attr = self.writer_attr(ino, fh, &f.stat).await;
                    if !self.fresh_version_stat(&f.path, &f.stat).await.1 {
                        attr.nlink = 0;
                    }
                    (attr, NO_TTL)
                }
                Share::Private(None) => (self.attr(ino, &f.stat), NO_TTL),
                // A version's contents never change; its mode, owner and times may, and
                // the session's cache (which the master invalidates) has the latest.
                Share::Current => {
                    let (stat, linked) = self.fresh_version_stat(&f.path, &f.stat).await;
                    guard(&self.inodes).attrs_changed(&f.path, &stat);
                    let mut attr = self.attr(ino, &stat);
                    if !linked {
                        attr.nlink = 0; // unlinked while open, as fstat shows it
                        return Ok((attr, NO_TTL));
                    }
                    (attr, ATTR_TTL)
                }
                Share::Old => {
                    let mut attr = self.attr(ino, &f.stat);
                    if !self.fresh_version_stat(&f.path, &f.stat).await.1 {
                        attr.nlink = 0;
                        return Ok((attr, NO_TTL));
                    }
                    (attr, ATTR_TTL)
                }
            });
        }
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let (stat, covered) = self.stat_of(&cur.client, ino, &path).await?;
        metrics::bump(if covered {
            &self.counters.attrs_cached
        } else {
            &self.counters.attrs_uncached
        });
        Ok((
            self.attr(ino, &stat),
            if covered { ATTR_TTL } else { NO_TTL },
        ))
    }

    /// The current metadata of the version `stat` of the file at `path`: from the
    /// session (its cache, mostly) if the node is still that version, else `stat`; and
    /// whether `path` still names that node (false once it is deleted or moved away).
    pub(super) async fn fresh_version_stat(&self, path: &str, stat: &Stat) -> (Stat, bool) {
        let Some(cur) = self.sessions.current() else {
            return (stat.clone(), true);
        };
        match cur.client.stat(path).await {
            Ok(Some(s))
                if s.instance == stat.instance
                    && s.content_generation == stat.content_generation =>
            {
                (s, true)
            }
            Ok(Some(s)) => (stat.clone(), s.instance == stat.instance),
            Ok(None) => (stat.clone(), false),
            Err(_) => (stat.clone(), true),
        }
    }

    /// A writer's inode as its writer sees it: the buffer's size once it has one.
    pub(super) async fn writer_attr(&self, ino: u64, fh: u64, stat: &Stat) -> FileAttr {
        let mut attr = self.attr(ino, stat);
        if let Ok(file) = self.file(fh) {
            let file = file.lock().await;
            if let Desc::Write { buf, .. } = &file.desc {
                if let Some(data) = buf.contents() {
                    attr.size = data.len() as u64;
                    attr.blocks = attr.size.div_ceil(512);
                }
                if let Some(t) = file.modified.filter(|_| buf.is_dirty()) {
                    attr.mtime = t.max(attr.mtime);
                    attr.ctime = t.max(attr.ctime);
                }
            }
        }
        attr
    }

    /// Gives a writer's buffer the file's current contents if it needs them. If they are
    /// newer than the version the writer's inode was shown with, its attributes are
    /// dropped from the kernel, so that `fstat` asks again (the buffer's size).
    pub(super) async fn ensure_base(
        &self,
        client: &Client,
        handle: HandleId,
        buf: &mut WriteBuffer,
        ino: Option<u64>,
    ) -> Result<(), Errno> {
        if buf.needs_base() {
            let (contents, stat) = client.read(handle).await.map_err(|e| ce(&e))?;
            buf.set_base(contents);
            if let Some(ino) = ino {
                let shown = guard(&self.inodes).file(ino).map(|f| f.stat);
                if shown.is_some_and(|s| s.content_generation != stat.content_generation) {
                    self.kernel.drop_soon(ino);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn truncate(
        &self,
        ino: u64,
        fh: Option<u64>,
        size: u64,
    ) -> Result<FileAttr, Errno> {
        if let Some(fh) = fh {
            let file = self.file(fh)?;
            let mut file = file.lock().await;
            let client = self.sessions.of(file.generation).await?;
            if let Desc::Write { handle, buf } = &mut file.desc {
                if size > 0 {
                    self.ensure_base(&client, *handle, buf, Some(ino)).await?;
                }
                buf.truncate(size).map_err(buffer_errno)?;
                let now = SystemTime::now();
                file.modified = Some(now);
                // The writer's own inode: its size is the buffer's.
                let stat = guard(&self.inodes).file(ino).map(|f| f.stat);
                let Some(stat) = stat else {
                    return Err(Errno::ENOENT);
                };
                let mut attr = self.attr(ino, &stat);
                attr.size = size;
                attr.blocks = size.div_ceil(512);
                attr.mtime = now.max(attr.mtime);
                attr.ctime = now.max(attr.ctime);
                return Ok(attr);
            }
        }
        // truncate(2) by path: read, cut, write back through a handle of our own.
        let Some(node) = guard(&self.inodes).file(ino) else {
            return Err(if self.path(ino).is_ok() {
                Errno::from_i32(libc::EISDIR)
            } else {
                Errno::ENOENT
            });
        };
        let cur = self.session().await?;
        let mut o = OpenOptions::write();
        o.creation = Creation::Never;
        let opened = cur.client.open(&node.path, o).await.map_err(|e| ce(&e))?;
        let handle = opened.handle;
        let result = async {
            if opened.stat.instance != node.stat.instance {
                return Err(Errno::ENOENT);
            }
            let mut buf = WriteBuffer::new(false, false, false);
            if size > 0 {
                self.ensure_base(&cur.client, handle, &mut buf, None)
                    .await?;
            }
            buf.truncate(size).map_err(buffer_errno)?;
            let contents = buf.to_commit().map_err(buffer_errno)?.unwrap_or_default();
            cur.client
                .set_contents(handle, contents, None)
                .await
                .map_err(|e| ce(&e))?;
            // The new version has an inode of its own, which the next lookup hands out;
            // this one keeps its version's size (readers share it).
            Ok(self.attr(ino, &node.stat))
        }
        .await;
        cur.client.close(handle).await;
        result
    }

    /// FALLOCATE: plain allocation (`posix_fallocate`) extends a writer's buffer with
    /// zeros up to `offset + length` (within the 256 KiB limit: `EFBIG`); with
    /// `FALLOC_FL_KEEP_SIZE` there is nothing to do (contents are whole buffers). Punching
    /// holes and the other modes are `EOPNOTSUPP`, as on filesystems without them.
    pub(super) async fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let end = offset
            .checked_add(length)
            .ok_or(Errno::from_i32(libc::EFBIG))?;
        if end > FILE_BYTES_MAX as u64 {
            return Err(Errno::from_i32(libc::EFBIG));
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Ok(());
        }
        let size = {
            let file = self.file(fh)?;
            let mut file = file.lock().await;
            let client = self.sessions.of(file.generation).await?;
            let Desc::Write { handle, buf } = &mut file.desc else {
                return Err(Errno::EBADF);
            };
            self.ensure_base(&client, *handle, buf, Some(ino)).await?;
            buf.contents().map_or(0, |c| c.len() as u64)
        };
        if end > size {
            self.truncate(ino, Some(fh), end).await?;
        }
        Ok(())
    }

    /// SETATTR: a size (truncation), then mode, owner and times in one SetAttr (write
    /// permission under the ACLs; the kernel has checked POSIX permissions for the local
    /// user). Times set on a file whose writer still holds uncommitted bytes are set again
    /// after its commit, which would otherwise stamp its own.
    pub(super) async fn setattr(
        &self,
        ino: u64,
        a: posix::SetAttr,
        fh: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let mut attr = match a.size {
            Some(size) => Some(self.truncate(ino, fh, size).await?),
            None => None,
        };
        let file = guard(&self.inodes).file(ino);
        let (path, shown) = match file {
            Some(f) => (f.path, Some((f.stat, f.share))),
            None => (self.path(ino)?, None),
        };
        let instance = self.instance_of(ino)?;
        let cur = self.session().await?;
        let (owner_now, mode_now) = match &shown {
            Some((stat, _)) => (stat.posix.owner, stat.posix.mode),
            None => {
                let (stat, _) = self.stat_of(&cur.client, ino, &path).await?;
                (stat.posix.owner, stat.posix.mode)
            }
        };
        let change = a.change(owner_now.unwrap_or((self.uid, self.gid)));
        if change == AttrChange::default() {
            return match attr {
                Some(attr) => Ok(attr),
                None => Ok(self.getattr(ino).await?.0),
            };
        }
        let stat = cur
            .client
            .set_attr(&path, Some(InstanceNumber(instance)), change)
            .await
            .map_err(|e| ce(&e))?;
        debug!(
            path,
            mode = format!("{:o}->{:o}", mode_now, stat.posix.mode),
            "attributes set"
        );
        guard(&self.inodes).attrs_changed(&path, &stat);
        if let Some((_, Share::Private(Some(fh)))) = shown {
            if change.atime.is_some() || change.mtime.is_some() {
                if let Ok(file) = self.file(fh) {
                    let mut file = file.lock().await;
                    if file.dirty() {
                        file.times = Some((change.atime, change.mtime));
                    }
                }
            }
        }
        let mut fresh = self.attr(ino, &stat);
        if let Some(before) = attr.take() {
            fresh.size = before.size;
            fresh.blocks = before.blocks;
        } else if let Some((_, Share::Private(Some(fh)))) = shown {
            let w = self.writer_attr(ino, fh, &stat).await;
            fresh.size = w.size;
            fresh.blocks = w.blocks;
        } else if let Some((old, _)) = &shown {
            // A version inode keeps its version's size.
            fresh.size = old.size_bytes;
            fresh.blocks = old.size_bytes.div_ceil(512);
        }
        Ok(fresh)
    }

    pub(super) async fn open(
        &self,
        ino: u64,
        flags: i32,
        pid: u32,
    ) -> Result<(u64, FopenFlags), Errno> {
        let path = self.path(ino)?;
        let second = self.second_refusal(pid, &path);
        self.retried(pid);
        // `O_TRUNC` truncates the kernel's inode even read-only: a writer's open.
        if flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC == 0 {
            return self.open_read(ino, path, pid, second).await;
        }
        let Some(node) = guard(&self.inodes).file(ino) else {
            return Err(Errno::from_i32(libc::EISDIR));
        };
        if second {
            if let Some(shared) = self.share_writer(ino, flags).await {
                return Ok((shared, FopenFlags::FOPEN_DIRECT_IO));
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if !second && guard(&self.inodes).claimable(ino).is_err() {
            return Err(self.stale(pid, &path, true));
        }
        let cur = self.session().await?;
        let client = &cur.client;
        // A handle kept from the file's last writer or locker when `path` still names
        // the inode's instance (no Open at the cell), else a new one.
        let opened = client
            .open_writer(&path, node.stat.instance, None)
            .await
            .map_err(|e| ce(&e))?;
        if opened.stat.kind == NodeKind::Directory {
            client.close(opened.handle).await;
            return Err(Errno::from_i32(libc::EISDIR));
        }
        if opened.stat.instance != node.stat.instance {
            // Replaced since the lookup: the retry looks the name up again.
            client.close(opened.handle).await;
            return Err(if second {
                Errno::ENOENT
            } else {
                self.stale(pid, &path, true)
            });
        }
        let claimed = if second {
            guard(&self.inodes).force_claim(ino, fh)
        } else {
            guard(&self.inodes).claim(ino, fh)
        };
        if claimed.is_err() {
            client.close(opened.handle).await;
            return Err(self.stale(pid, &path, true));
        }
        let buf = WriteBuffer::new(
            flags & libc::O_APPEND != 0,
            flags & libc::O_TRUNC != 0,
            false,
        );
        self.insert_writer(fh, path, ino, cur.generation, opened.handle, buf);
        Ok((fh, FopenFlags::FOPEN_DIRECT_IO))
    }

    /// A writable reopen of a writer's inode without a lookup (`echo err > /dev/stderr`
    /// into the writer's file): the new description writes the writer's buffer, as two
    /// descriptions of one file do on a local file system, through the writer's handle.
    /// `None` if `ino` is not a writer's.
    pub(super) async fn share_writer(&self, ino: u64, flags: i32) -> Option<u64> {
        let Some(Share::Private(Some(owner))) = guard(&self.inodes).file(ino).map(|f| f.share)
        else {
            return None;
        };
        let file = {
            let mut files = guard(&self.files);
            let slot = files.get_mut(&owner).filter(|s| s.writer)?;
            slot.refs += 1;
            Arc::clone(&slot.file)
        };
        guard(&self.inodes).opened(ino);
        if flags & libc::O_TRUNC != 0 {
            if let Desc::Write { buf, .. } = &mut file.lock().await.desc {
                let _ = buf.truncate(0);
            }
        }
        debug!(
            ino,
            owner, "a writer's file reopened: the description shares its buffer"
        );
        Some(owner)
    }

    /// A read-only open: the version `ino` stands for, pinned for the description.
    pub(super) async fn open_read(
        &self,
        ino: u64,
        path: String,
        pid: u32,
        second: bool,
    ) -> Result<(u64, FopenFlags), Errno> {
        if second {
            return self.open_read_current(ino, path).await;
        }
        // A refusal: a writer's inode (its dentry was stale) or a version newer than the
        // inode's; the retry's lookup gets the current version.
        let refused = |r: inodes::Refused| match r {
            inodes::Refused::IsDir => Errno::from_i32(libc::EISDIR),
            inodes::Refused::Unknown => Errno::ENOENT,
            inodes::Refused::Stale => self.stale(pid, &path, false),
        };
        let opened = guard(&self.inodes).open_read(ino);
        let contents = match opened.map_err(refused)? {
            Some(c) => c,
            None => {
                let cur = self.session().await?;
                let (contents, stat) = match cur.client.get(&path).await {
                    Ok(x) => x,
                    // Gone since the lookup: the retry's lookup says so.
                    Err(e) if is_refused(&e, &Refusal::NotFound) => {
                        return Err(self.stale(pid, &path, false))
                    }
                    Err(e) => return Err(ce(&e)),
                };
                metrics::bump(&self.counters.reads_uncached);
                let pinned = guard(&self.inodes).pin_and_open(ino, &contents, &stat);
                pinned.map_err(refused)?
            }
        };
        let ephemeral = guard(&self.inodes)
            .file(ino)
            .is_some_and(|f| f.stat.ephemeral);
        let (handle, generation) = if ephemeral {
            // The reader must count as an opener of an ephemeral file.
            let opened = async {
                let cur = self.session().await?;
                let h = cur
                    .client
                    .open(&path, OpenOptions::read())
                    .await
                    .map_err(|e| ce(&e))?;
                Ok::<_, Errno>((Some(h.handle), cur.generation))
            }
            .await;
            match opened {
                Ok(x) => x,
                Err(e) => {
                    guard(&self.inodes).closed(ino);
                    return Err(e);
                }
            }
        } else {
            (None, self.session_generation())
        };
        let fh = self.new_fh(File {
            path,
            ino,
            generation,
            desc: Desc::Read { handle, contents },
            times: None,
            modified: None,
        });
        Ok((fh, FopenFlags::FOPEN_KEEP_CACHE))
    }

    /// A read-only open that reached an inode without a lookup and was refused once (see
    /// [`Retry::looked_up`]): it reads the current version, whole, with direct I/O, since
    /// the inode's pages and size may be another version's or a writer's.
    pub(super) async fn open_read_current(
        &self,
        ino: u64,
        path: String,
    ) -> Result<(u64, FopenFlags), Errno> {
        let cur = self.session().await?;
        let (contents, _) = cur.client.get(&path).await.map_err(|e| ce(&e))?;
        guard(&self.inodes).opened(ino);
        let fh = self.new_fh(File {
            path,
            ino,
            generation: cur.generation,
            desc: Desc::Read {
                handle: None,
                contents,
            },
            times: None,
            modified: None,
        });
        Ok((fh, FopenFlags::FOPEN_DIRECT_IO))
    }

    /// The mode and owner of a node `who` creates in the directory `dir` with `mode`
    /// (umask applied by the kernel), and whether it is to be ephemeral because `dir` is:
    /// a set-group-ID directory gives its group, and to directories its set-group-ID bit,
    /// as on a local filesystem.
    pub(super) async fn creation(
        &self,
        client: &Client,
        dir: &str,
        mode: u32,
        who: (u32, u32),
        kind: NodeKind,
    ) -> (u32, (u32, u32), bool) {
        let parent = client.stat(dir).await.ok().flatten();
        let ephemeral = parent.as_ref().is_some_and(|p| p.ephemeral);
        let (mut mode, mut owner) = (mode & MODE_BITS, who);
        if let Some(p) = parent.filter(|p| p.posix.mode & 0o2000 != 0) {
            owner.1 = p.posix.owner.map_or(self.gid, |o| o.1);
            if kind == NodeKind::Directory {
                mode |= 0o2000;
            }
        }
        (mode, owner, ephemeral)
    }

    pub(super) async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: (u32, u32, u32),
    ) -> Result<(FileAttr, u64), Errno> {
        let (uid, gid, pid) = who;
        let path = self.child(parent, name)?;
        self.retried(pid);
        let cur = self.session().await?;
        let (mode, owner, dir_ephemeral) = self
            .creation(
                &cur.client,
                parent_path(&path),
                mode,
                (uid, gid),
                NodeKind::File,
            )
            .await;
        let o = OpenOptions {
            mode: OpenMode::READ_WRITE,
            creation: if flags & libc::O_EXCL != 0 {
                Creation::Must
            } else {
                Creation::IfMissing
            },
            kind: NodeKind::File,
            ephemeral: dir_ephemeral,
            create_mode: Some(mode),
            create_owner: Some(owner),
            ..OpenOptions::read()
        };
        let opened = cur.client.open(&path, o).await.map_err(|e| ce(&e))?;
        if opened.stat.kind == NodeKind::Directory {
            cur.client.close(opened.handle).await;
            return Err(Errno::from_i32(libc::EISDIR));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let ino = guard(&self.inodes).created(&path, &opened.stat, fh);
        let buf = WriteBuffer::new(
            flags & libc::O_APPEND != 0,
            !opened.created && flags & libc::O_TRUNC != 0,
            opened.created,
        );
        if opened.created && opened.stat.ephemeral {
            debug!(path, "created ephemeral");
        }
        let mut attr = self.attr(ino, &opened.stat);
        if !opened.created && flags & libc::O_TRUNC != 0 {
            attr.size = 0;
            attr.blocks = 0;
        }
        self.insert_writer(fh, path, ino, cur.generation, opened.handle, buf);
        Ok((attr, fh))
    }

    pub(super) async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self.file(fh)?;
        let mut file = file.lock().await;
        let (generation, ino) = (file.generation, file.ino);
        match &mut file.desc {
            Desc::Write { handle, buf } => {
                let client = self.sessions.of(generation).await?;
                self.ensure_base(&client, *handle, buf, Some(ino)).await?;
                // Uncommitted bytes: direct I/O, never in the page cache.
                Ok(slice(buf.contents().unwrap_or_default(), offset, size).to_vec())
            }
            Desc::Read { contents, .. } => Ok(slice(contents, offset, size).to_vec()),
        }
    }

    pub(super) async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        owner: Option<u64>,
    ) -> Result<u32, Errno> {
        let file = self.file(fh)?;
        let mut file = file.lock().await;
        let client = self.sessions.of(file.generation).await?;
        let ino = file.ino;
        match &mut file.desc {
            Desc::Write { handle, buf } => {
                if buf.needs_base() {
                    self.ensure_base(&client, *handle, buf, Some(ino)).await?;
                }
                let n = buf.write(offset, data, owner).map_err(buffer_errno)?;
                file.modified = Some(SystemTime::now());
                u32::try_from(n).map_err(|_| einval())
            }
            Desc::Read { .. } => Err(Errno::from_i32(libc::EBADF)),
        }
    }

    /// Sends a dirty buffer as one SetContents: at a FLUSH by `owner` only what that
    /// process wrote ([`WriteBuffer::commits_at_flush`]); with `None` (fsync, release)
    /// whatever is dirty.
    pub(super) async fn commit(&self, fh: u64, owner: Option<u64>) -> Result<(), Errno> {
        let file = self.file(fh)?;
        let mut file = file.lock().await;
        let generation = file.generation;
        let path = file.path.clone();
        let ino = file.ino;
        let Desc::Write { handle, buf } = &mut file.desc else {
            return Ok(());
        };
        if owner.is_some_and(|o| !buf.commits_at_flush(o)) {
            return Ok(());
        }
        let Some(contents) = buf.to_commit().map_err(buffer_errno)? else {
            return Ok(());
        };
        let client = self.sessions.of(generation).await?;
        let len = contents.len();
        match client.set_contents(*handle, contents, None).await {
            Ok(stat) => {
                buf.committed();
                guard(&self.inodes).committed(ino, &stat);
                debug!(path, len, generation = stat.content_generation.0, "written");
                if let Some((atime, mtime)) = file.times.take() {
                    let change = AttrChange {
                        atime,
                        mtime,
                        ..AttrChange::default()
                    };
                    if let Err(e) = client.set_attr(&path, Some(stat.instance), change).await {
                        warn!(path, error = %e, "times set before the write was committed were lost");
                    }
                }
                Ok(())
            }
            // The file was deleted while open: as on a local file system, its bytes go
            // nowhere and the writer is not told. (Renamed is another matter: reported.)
            Err(e)
                if is_refused(&e, &Refusal::NotFound)
                    && matches!(client.stat_fresh(&path).await, Ok(None)) =>
            {
                buf.committed();
                debug!(path, len, "written to a deleted file: dropped");
                Ok(())
            }
            Err(e) => {
                // Reported to this caller: not sent again at release.
                buf.abandon();
                warn!(path, error = %e, "write failed");
                Err(ce(&e))
            }
        }
    }

    /// Releases a description; `barrier` is the path whose lookups wait for its commit
    /// (see [`Releasing`]), lifted as soon as that is done.
    pub(super) async fn release(
        &self,
        ino: u64,
        fh: u64,
        flock_owner: Option<u64>,
        barrier: Option<Arc<str>>,
        fenced: bool,
    ) {
        let slot = guard(&self.files).get(&fh).cloned();
        if slot.as_ref().is_some_and(|s| s.writer) && !fenced && !guard(&self.lost).contains(&fh) {
            // What no close committed (a truncation nobody wrote after, bytes a process
            // wrote and left to its children) goes now, after the last close, and before
            // the description's flock goes.
            match self.commit(fh, None).await {
                Ok(()) => {}
                // Reported to the writer already (at its write); the file is unchanged.
                Err(e) if e == Errno::from_i32(libc::EFBIG) => {
                    debug!(path = ?slot.as_ref().map(|s| &s.path), "oversized write dropped");
                }
                Err(e) => {
                    let path = slot.as_ref().map(|s| Arc::clone(&s.path));
                    warn!(?path, errno = ?e, "the write left at release failed");
                }
            }
        }
        if let Some(path) = barrier {
            self.releasing.end(&path);
        }
        if let Some(owner) = flock_owner {
            self.unlock(ino, owner, true).await;
        }
        // OFD locks (`F_OFD_SETLK`) go at the description's last close too; the kernel
        // leaves them to us without naming them. (A process's fcntl locks taken through it
        // went at that process's close.)
        let left = guard(&self.locks).of_fh(fh);
        for (instance, owner) in left {
            self.unlock_instance(instance, owner, true).await;
        }
        guard(&self.lost).remove(&fh);
        let Some(slot) = slot else { return };
        guard(&self.files).remove(&fh);
        let file = slot.file.lock().await;
        let (handle, writer) = match &file.desc {
            Desc::Write { handle, .. } => (Some(*handle), true),
            Desc::Read { handle, .. } => (*handle, false),
        };
        if let Some(handle) = handle {
            if let Ok(client) = self.sessions.of(file.generation).await {
                // A writer's handle is kept for the file's next writer or locker (not one
                // on an ephemeral file: its last close must reach the cell).
                let node = guard(&self.inodes)
                    .file(file.ino)
                    .map(|f| (f.stat.instance, f.stat.ephemeral));
                let kept = writer
                    && !fenced
                    && node.is_some_and(|(instance, ephemeral)| {
                        client.keep(handle, instance, None, ephemeral)
                    });
                if !kept {
                    close_surely(&client, handle).await;
                }
            }
        }
        guard(&self.inodes).closed(file.ino);
    }

    pub(super) async fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let children = cur.client.list(&path).await.map_err(|e| ce(&e))?;
        let parent_ino = if ino == ROOT {
            ROOT
        } else {
            match cur.client.stat(parent_path(&path)).await {
                Ok(Some(s)) => s.instance.0,
                _ => ROOT,
            }
        };
        let mut entries: Entries = vec![
            (ino, FileType::Directory, ".".into()),
            (parent_ino, FileType::Directory, "..".into()),
        ];
        let inodes = guard(&self.inodes);
        for (name, stat) in children {
            let kind = match stat.kind {
                NodeKind::Directory => FileType::Directory,
                NodeKind::File => FileType::RegularFile,
            };
            entries.push((inodes.listed(&stat), kind, name));
        }
        drop(inodes);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        guard(&self.dirs).insert(fh, entries);
        Ok(fh)
    }

    pub(super) async fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        who: (u32, u32),
    ) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        let cur = self.session().await?;
        let (mode, owner, ephemeral) = self
            .creation(
                &cur.client,
                parent_path(&path),
                mode,
                who,
                NodeKind::Directory,
            )
            .await;
        let o = OpenOptions {
            creation: Creation::Must,
            kind: NodeKind::Directory,
            ephemeral,
            create_mode: Some(mode),
            create_owner: Some(owner),
            ..OpenOptions::write()
        };
        let opened = cur.client.open(&path, o).await.map_err(|e| ce(&e))?;
        cur.client.close(opened.handle).await;
        Ok(self.entry(&path, &opened.stat, None).0)
    }

    pub(super) async fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        let cur = self.session().await?;
        let stat = cur
            .client
            .stat_fresh(&path)
            .await
            .map_err(|e| ce(&e))?
            .ok_or(Errno::ENOENT)?;
        match (stat.kind, dir) {
            (NodeKind::Directory, false) => return Err(Errno::from_i32(libc::EISDIR)),
            (NodeKind::File, true) => return Err(Errno::from_i32(libc::ENOTDIR)),
            _ => {}
        }
        cur.client.delete(&path).await.map_err(|e| ce(&e))?;
        Ok(())
    }

    pub(super) async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        if flags != 0 {
            return Err(einval()); // RENAME_NOREPLACE / EXCHANGE / WHITEOUT
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let cur = self.session().await?;
        cur.client.rename(&from, &to).await.map_err(|e| ce(&e))?;
        Ok(())
    }
}

/// `data[offset..offset + size]`, clipped to `data`.
pub(super) fn slice(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

pub(super) fn buffer_errno(e: BufferError) -> Errno {
    match e {
        BufferError::TooLarge => Errno::from_i32(libc::EFBIG),
        BufferError::NeedsBase => Errno::EIO,
    }
}
