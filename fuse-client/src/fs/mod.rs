//! `chubby mount`: the cell's namespace as a FUSE filesystem (DESIGN §6, the mapping table
//! is the contract; ../shared/STACK.md §1 for fuser's facts).
//!
//! ```text
//!  kernel ─► fuser thread: ChubbyFs::<op> parses, hands (args, reply) to a tokio task
//!                 └► Shared::<op> (async): the session's Client ─► reply
//!  master ─► Invalidate ─► Client cache ─► KernelCache (inval_inode, own thread) ─► ack
//! ```
//!
//! Handlers never block fuser's thread on anything that waits: a request the session's
//! cache or the inode table settles at once is answered there ([`fast`]); any other is
//! answered from a tokio task, so a lock wait or a slow master never stalls the mount.
//!
//! - **Inodes**: one per version of a file, one per writer ([`inodes`] says why: it is
//!   what keeps every read whole).
//! - **Reads** (`open` read-only): the description reads the version its inode stands for,
//!   pinned at open, through the page cache (`FOPEN_KEEP_CACHE`); no Chubby handle of its
//!   own (the client's cached read handles serve it, Chubby §2.7).
//! - **Writes** (`open` for writing, `create`): a private inode, a Chubby handle and a
//!   [`buffer`]; the description is `FOPEN_DIRECT_IO`, so the page cache never holds
//!   uncommitted bytes; a `close` commits what its process wrote and `fsync` everything,
//!   as one SetContents whose error is theirs; the rest is committed at release.
//! - **Locks**: see [`locks`]. **Extended attributes**: see [`xattr`].
//! - **Sessions**: see [`sessions`]; a description dies with the session it was opened in.

pub mod buffer;
pub mod errno;
mod fast;
pub mod fence;
pub mod inodes;
pub mod kernel;
pub mod locks;
pub mod metrics;
pub mod posix;
pub mod sessions;
pub mod xattr;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::MountCounters;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use chubby_protocol::client_msg::CallError;
use chubby_protocol::db::{FILE_BYTES_MAX, MODE_BITS, PATH_BYTES_MAX};
use chubby_protocol::{
    AttrChange, Creation, HandleId, InstanceNumber, LockMode, NodeKind, OpenMode, Refusal, Stat,
    TimeSet, Timespec,
};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use self::buffer::{BufferError, WriteBuffer};
use self::inodes::{child_path, parent_path, Inodes, Share, ROOT};
use self::kernel::KernelCache;
use self::locks::{Lock, LockState, Locks, SIGNAL_POLL, WHOLE_FILE_END};
use self::sessions::{Current, Sessions};
use crate::client::{Client, ClientEvent, ClientOptions, OpenOptions};
use crate::conn::ClientError;

/// How long the kernel keeps the attributes of a file version (they never change) or of a
/// directory the session's cache covers (invalidation, not the TTL, keeps those fresh).
pub const ATTR_TTL: Duration = Duration::from_secs(3600);
/// Entries are never cached by the kernel (see [`kernel`]).
const NO_TTL: Duration = Duration::ZERO;
/// How long a process's refused open is remembered, so that the kernel's retry of it (a
/// new lookup of the name right after `ESTALE`) gets what it needs.
const RETRY_TTL: Duration = Duration::from_secs(5);

/// Settings of a mount.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// The session's settings (its downstream cache is set by [`ChubbyFs::new`]).
    pub client: ClientOptions,
    /// Owner shown for every node.
    pub uid: u32,
    /// Group shown for every node.
    pub gid: u32,
    /// Where the mount is (to find the processes holding a lock file open when its lock
    /// is lost); `None`: only the process that took the lock is fenced.
    pub mountpoint: Option<std::path::PathBuf>,
    /// What happens to the processes that held a lock their session lost.
    pub on_lock_loss: OnLockLoss,
}

/// What the mount does to the processes that held a lock their session lost (see
/// [`fence`]; docs/mount.md "Locks").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnLockLoss {
    /// Fence them: every later request of theirs on the mount fails with `EIO`.
    #[default]
    Eio,
    /// Fence them and send their process groups SIGTERM, then SIGKILL after
    /// [`SIGKILL_AFTER`] (as `consul lock` does).
    Signal,
}

/// How long a signalled lock holder has to exit before SIGKILL.
pub const SIGKILL_AFTER: Duration = Duration::from_secs(5);

/// What an open file description is.
#[derive(Debug)]
enum Desc {
    /// Read-only: the version of its inode, whole. Ephemeral files get a handle, so the
    /// reader counts as an opener.
    Read {
        handle: Option<HandleId>,
        contents: Arc<Vec<u8>>,
    },
    /// Opened for writing: a handle and the buffer.
    Write { handle: HandleId, buf: WriteBuffer },
}

#[derive(Debug)]
struct File {
    path: String,
    /// The inode it is open on.
    ino: u64,
    generation: u64,
    desc: Desc,
    /// Times set (`utimensat`) while the writer held uncommitted bytes: set again after
    /// the commit, which stamps its own.
    times: Option<(Option<TimeSet>, Option<TimeSet>)>,
    /// When this writer last changed its bytes (write, truncate, fallocate): the mtime and
    /// ctime its own `fstat` shows until the commit, as a local file's would.
    modified: Option<SystemTime>,
}

impl File {
    /// True if it holds bytes not yet committed (or refused).
    fn dirty(&self) -> bool {
        matches!(&self.desc, Desc::Write { buf, .. } if buf.is_dirty())
    }
}

/// An open description as the table holds it: what fuser's thread may know without
/// taking the description's lock.
#[derive(Debug, Clone)]
struct Slot {
    writer: bool,
    path: Arc<str>,
    file: Arc<tokio::sync::Mutex<File>>,
    /// Kernel descriptions answered with this handle: more than one when a writer's file
    /// was reopened without a lookup (`/dev/stderr`), see [`Shared::open`].
    refs: u32,
}

/// A process's open that was refused with `ESTALE`, for the kernel's retry.
#[derive(Debug)]
struct Retry {
    path: String,
    /// A writable open (its retry gets a private inode) or a read (its retry gets the
    /// contents pinned at lookup).
    write: bool,
    at: std::time::Instant,
    /// Its lookup came. An open refused again without it reached the inode without a
    /// lookup (`/proc/self/fd/N`, `/dev/stderr`, a bind mount): refusing once more would
    /// show the caller `ESTALE`, so it is let through ([`Shared::second_refusal`]).
    looked_up: bool,
}

/// Paths with a writer's release being committed: a lookup or open of one waits for it,
/// so a process that closed its writer and then opens the file on this mount sees what it
/// wrote. (The kernel queues the RELEASE before `close(2)` returns; fuser reads requests
/// in order, and the release's handler registers here before any later request runs.)
#[derive(Debug, Default)]
struct Releasing(Mutex<HashMap<Arc<str>, Releases>>);

/// The gate of one (instance, owner)'s lock calls.
type Gate = Arc<tokio::sync::Mutex<()>>;

/// A blocking wait that failed because its session ended: the session's generation, the
/// file, and the waiter's lineage (see `fence::to_fence`).
type FailedWait = (u64, String, Vec<u32>);

/// How many releases of one path are committing, and how their waiters are woken.
type Releases = (usize, Arc<tokio::sync::Notify>);

impl Releasing {
    fn begin(&self, path: &Arc<str>) {
        guard(&self.0)
            .entry(Arc::clone(path))
            .or_insert_with(|| (0, Arc::new(tokio::sync::Notify::new())))
            .0 += 1;
    }

    fn end(&self, path: &str) {
        let mut m = guard(&self.0);
        if let Some((n, notify)) = m.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                notify.notify_waiters();
                m.remove(path);
            }
        }
    }

    fn busy(&self, path: &str) -> bool {
        let m = guard(&self.0);
        !m.is_empty() && m.contains_key(path)
    }

    async fn wait(&self, path: &str) {
        loop {
            let Some(notify) = guard(&self.0).get(path).map(|(_, n)| Arc::clone(n)) else {
                return;
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.busy(path) {
                return;
            }
            notified.await;
        }
    }
}

type Entries = Vec<(u64, FileType, String)>;

/// The state every request shares.
#[derive(Debug)]
struct Shared {
    rt: Handle,
    sessions: Sessions,
    kernel: Arc<KernelCache>,
    inodes: Arc<Mutex<Inodes>>,
    files: Mutex<HashMap<u64, Slot>>,
    releasing: Releasing,
    /// Refused opens by thread id, for the kernel's retry.
    retries: Mutex<HashMap<u32, Retry>>,
    dirs: Mutex<HashMap<u64, Entries>>,
    locks: Mutex<Locks>,
    /// One call at a time changes the lock of one (instance, owner): processes sharing an
    /// open file description share its `flock`, and their calls must not interleave.
    lock_gates: Mutex<HashMap<(u64, u64), Gate>>,
    next_fh: AtomicU64,
    /// `user.chubby.lock_delay` set on files of this mount, in milliseconds, by instance.
    lock_delay: Mutex<HashMap<u64, u64>>,
    /// Open file descriptions whose lock was lost with its session: they fail with `EIO`.
    lost: Mutex<HashSet<u64>>,
    uid: u32,
    gid: u32,
    counters: MountCounters,
    fence: fence::Fence,
    mountpoint: Option<std::path::PathBuf>,
    on_lock_loss: OnLockLoss,
    /// Blocking waits that failed because their session ended: taken by the session's end, to spare the waiters from the fence.
    failed_waits: Mutex<Vec<FailedWait>>,
    /// A pause before the holders of a lost session's locks are fenced: zero, unless the
    /// tests set `CHUBBY_TEST_FENCE_DELAY_MS` (debug builds only) to widen the moment between an expiry and
    /// its fence (requests arriving then must still fail for a holder).
    fence_delay: Duration,
}

/// The filesystem (see the module docs).
#[derive(Debug, Clone)]
pub struct ChubbyFs(Arc<Shared>);

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn einval() -> Errno {
    Errno::from_i32(libc::EINVAL)
}

fn eperm() -> Errno {
    Errno::EPERM
}

fn ce(e: &ClientError) -> Errno {
    let n = errno::of(e);
    debug!(error = %e, errno = ?n, "call failed");
    n
}

fn is_refused(e: &ClientError, r: &Refusal) -> bool {
    matches!(e, ClientError::Call(CallError::Refused(x)) if x == r)
}

impl ChubbyFs {
    /// A filesystem over a cell; its first session starts with [`ChubbyFs::start`].
    ///
    /// # Errors
    /// The invalidation thread could not be started.
    pub fn new(
        cell: chubby_protocol::cell::CellFile,
        mut options: FsOptions,
        rt: Handle,
    ) -> std::io::Result<ChubbyFs> {
        let inodes = Arc::new(Mutex::new(Inodes::new()));
        let kernel = KernelCache::new(Arc::clone(&inodes))?;
        options.client.downstream = Some(Arc::clone(&kernel) as _);
        let shared = Arc::new(Shared {
            rt,
            sessions: Sessions::new(cell, options.client),
            kernel,
            inodes,
            files: Mutex::new(HashMap::new()),
            releasing: Releasing::default(),
            retries: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            locks: Mutex::new(Locks::default()),
            lock_gates: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            lock_delay: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
            uid: options.uid,
            gid: options.gid,
            counters: MountCounters::default(),
            fence: fence::Fence::default(),
            mountpoint: options.mountpoint,
            on_lock_loss: options.on_lock_loss,
            failed_waits: Mutex::new(Vec::new()),
            fence_delay: if cfg!(debug_assertions) {
                std::env::var("CHUBBY_TEST_FENCE_DELAY_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(Duration::ZERO, Duration::from_millis)
            } else {
                Duration::ZERO
            },
        });
        let weak = Arc::downgrade(&shared);
        shared.sessions.on_new(Box::new(move |c: &Current| {
            if let Some(shared) = weak.upgrade() {
                metrics::bump(&shared.counters.sessions);
                let rt = shared.rt.clone();
                // Subscribed before the task runs: an expiry cannot slip by unseen.
                let events = c.client.subscribe();
                rt.spawn(watch_session(shared, c.clone(), events));
            }
        }));
        Ok(ChubbyFs(shared))
    }

    /// Starts the first session (before mounting, so a cell that cannot be reached is
    /// reported at once).
    ///
    /// # Errors
    /// The cell could not be reached.
    pub async fn start(&self) -> Result<Arc<Client>, ClientError> {
        Ok(self.0.sessions.start().await?.client)
    }

    /// The kernel cache (to give it the notifier once mounted, and for its counters).
    #[must_use]
    pub fn kernel(&self) -> Arc<KernelCache> {
        Arc::clone(&self.0.kernel)
    }

    /// The mount's metrics page (Prometheus text).
    pub async fn metrics_page(&self) -> String {
        let state = match self.0.sessions.current().map(|c| c.client.status()) {
            Some(crate::session::SessionStatus::Safe) => 0,
            Some(crate::session::SessionStatus::Jeopardy) => 1,
            _ => 2,
        };
        metrics::render(&self.0.counters, &self.0.kernel.stats(), state)
    }

    /// Ends the session (after unmounting).
    pub async fn shutdown(&self) {
        self.0.sessions.shutdown().await;
    }

    fn spawn<F>(&self, req: &Request, f: impl FnOnce(Arc<Shared>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // The session the request arrived under: it never completes under another.
        let arrival = self.0.sessions.arrival(req.pid());
        let fut = f(Arc::clone(&self.0));
        self.0.rt.spawn(sessions::ARRIVAL.scope(arrival, fut));
    }

    /// True (and the request is to fail with `EIO`) if the caller is fenced.
    fn fenced(&self, req: &Request, ino: u64) -> bool {
        self.0.fence.active()
            && self.0.fence.is_fenced(req.pid(), || {
                guard(&self.0.inodes).path(ino).unwrap_or_default()
            })
    }
}

/// Closes `handle` for sure: a close that does not reach a master is tried again (with a
/// growing pause) while the session lives, since a handle left open would keep its lock
/// held, or its ephemeral file alive, for the rest of the session.
async fn close_surely(client: &Client, handle: HandleId) {
    let mut pause = Duration::from_millis(100);
    loop {
        match client.try_close(handle).await {
            Ok(()) | Err(ClientError::Call(CallError::Refused(_))) => return,
            Err(e) => {
                if client.status() == crate::session::SessionStatus::Expired {
                    return; // the handle went with the session
                }
                warn!(handle = handle.0, error = %e, "close failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Handles a session's end: its locks are lost, their holders fenced (see [`fence`]),
/// and the session retired so that the next may start ([`Sessions::retire`]).
async fn watch_session(
    shared: Arc<Shared>,
    current: Current,
    mut events: tokio::sync::broadcast::Receiver<ClientEvent>,
) {
    // A session may expire before it is announced (its first lease ran out while it
    // was being set up): no event would come.
    let mut born_expired = current.client.status() == crate::session::SessionStatus::Expired;
    loop {
        let mut event = if born_expired {
            born_expired = false;
            Ok(ClientEvent::Expired)
        } else {
            events.recv().await
        };
        if matches!(
            event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
        ) && current.client.status() == crate::session::SessionStatus::Expired
        {
            // Events were dropped: the expiry may have been among them.
            event = Ok(ClientEvent::Expired);
        }
        match event {
            Ok(ClientEvent::Jeopardy) => {
                metrics::bump(&shared.counters.jeopardy);
                warn!(
                    generation = current.generation,
                    "session in jeopardy: the mount's requests wait, its kernel cache was dropped"
                );
            }
            Ok(ClientEvent::Safe) => info!(generation = current.generation, "session safe"),
            ev @ (Ok(ClientEvent::Expired)
            | Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                if matches!(ev, Ok(ClientEvent::Expired)) {
                    warn!(
                        generation = current.generation,
                        "session expired: its locks are lost; fencing their holders"
                    );
                    if !shared.fence_delay.is_zero() {
                        tokio::time::sleep(shared.fence_delay).await;
                    }
                }
                let lost = guard(&shared.locks).lose_session(current.generation);
                shared.prune_lock_gates();
                // Closed: the session was shut down (unmount), not lost.
                if matches!(ev, Ok(ClientEvent::Expired)) {
                    metrics::bump(&shared.counters.expired);
                    shared
                        .counters
                        .locks_lost
                        .fetch_add(lost.len() as u64, Ordering::Relaxed);
                }
                guard(&shared.lost).extend(lost.iter().map(|l| l.fh));
                if matches!(ev, Ok(ClientEvent::Expired)) {
                    let (held, waiting): (Vec<&Lock>, Vec<&Lock>) = lost
                        .iter()
                        .partition(|l| matches!(l.state, LockState::Held(_)));
                    let held: Vec<fence::Lost> = held
                        .iter()
                        .map(|l| fence::Lost {
                            pid: l.pid,
                            path: l.path.clone(),
                            lineage: l.lineage.clone(),
                        })
                        .collect();
                    let mut waiters: Vec<(String, Vec<u32>)> = waiting
                        .iter()
                        .map(|l| (l.path.clone(), l.lineage.clone()))
                        .collect();
                    guard(&shared.failed_waits).retain(|(generation, path, lineage)| {
                        if *generation == current.generation {
                            waiters.push((path.clone(), lineage.clone()));
                        }
                        *generation > current.generation
                    });
                    if !held.is_empty() {
                        let s = Arc::clone(&shared);
                        // /proc is read off the runtime.
                        let _ = tokio::task::spawn_blocking(move || {
                            s.fence_holders(&held, &waiters);
                        })
                        .await;
                    }
                }
                for l in lost {
                    let held = matches!(l.state, LockState::Held(_));
                    warn!(
                        pid = l.pid,
                        path = %l.path,
                        held,
                        "process {} lost its lock on {}: the session expired; its file \
                         descriptors now fail with EIO",
                        l.pid,
                        l.path
                    );
                }
                shared.sessions.retire(current.generation);
                return;
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
        }
    }
}

impl Shared {
    /// Fences the processes that held the locks `held`, and signals them if so
    /// configured (see [`fence`] for who is fenced and who is spared; `waiters` are the
    /// lineages of the processes whose waits for a lock went with the session).
    fn fence_holders(&self, held: &[fence::Lost], waiters: &[(String, Vec<u32>)]) {
        let tids = fence::to_fence(self.mountpoint.as_deref(), held, waiters);
        let fenced = self.fence.fence(&tids);
        for p in &fenced {
            warn!(
                pid = p.pid,
                "fencing process {}: it held a lock its session lost, or had its file open", p.pid
            );
        }
        if self.on_lock_loss == OnLockLoss::Signal {
            signal_groups(&fenced);
        }
    }

    /// The session for the request being served ([`Sessions::get`]), unless its caller
    /// is fenced: checked again here, since a lock holder's request that arrived after
    /// the expiry, before the fence went up, waited for the next session until the
    /// expired one was retired (and its holders fenced).
    async fn session(&self) -> Result<Current, Errno> {
        let cur = self.sessions.get().await?;
        let caller = sessions::ARRIVAL.try_with(|a| a.caller).ok();
        if let Some(caller) = caller {
            if self.fence.active() && self.fence.is_fenced(caller, || String::from("(any)")) {
                return Err(Errno::EIO);
            }
        }
        Ok(cur)
    }

    fn path(&self, ino: u64) -> Result<String, Errno> {
        guard(&self.inodes).path(ino).ok_or(Errno::ENOENT)
    }

    /// The instance `ino` stands for: what locks and per-file settings are keyed by, the
    /// same for every version's inode.
    fn instance_of(&self, ino: u64) -> Result<u64, Errno> {
        guard(&self.inodes).instance(ino).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<String, Errno> {
        let name = errno::check(name)?;
        let path = child_path(&self.path(parent)?, name);
        if path.len() > PATH_BYTES_MAX {
            return Err(Errno::from_i32(libc::ENAMETOOLONG));
        }
        Ok(path)
    }

    /// The attributes of `stat` as inode `ino`: the node's stored mode, owner (the
    /// mount's user if it has none) and POSIX times (docs/mount.md, "Modes, owners and
    /// times").
    fn attr(&self, ino: u64, stat: &Stat) -> FileAttr {
        let (kind, nlink) = match stat.kind {
            NodeKind::Directory => (
                FileType::Directory,
                u32::try_from(stat.subdirs.saturating_add(2)).unwrap_or(u32::MAX),
            ),
            NodeKind::File => (FileType::RegularFile, 1),
        };
        let p = &stat.posix;
        let (uid, gid) = p.owner.unwrap_or((self.uid, self.gid));
        FileAttr {
            ino: INodeNo(ino),
            size: stat.size_bytes,
            blocks: stat.size_bytes.div_ceil(512),
            atime: posix::system_time(p.atime),
            mtime: posix::system_time(p.mtime),
            ctime: posix::system_time(p.ctime),
            crtime: posix::system_time(Timespec::from_instant(stat.ctime)),
            kind,
            perm: posix::perm(p.mode),
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Hands the kernel the inode for `stat` at `path` (a directory's, or the current
    /// version's, keeping `contents` of that very version if given): its attributes and
    /// their TTL.
    fn entry(
        &self,
        path: &str,
        stat: &Stat,
        contents: Option<Arc<Vec<u8>>>,
    ) -> (FileAttr, Duration) {
        match stat.kind {
            NodeKind::Directory => {
                let ino = guard(&self.inodes).lookup_dir(stat.instance.0, path);
                (self.attr(ino, stat), NO_TTL)
            }
            NodeKind::File => {
                let ino = guard(&self.inodes).lookup_file(path, stat, contents);
                (self.attr(ino, stat), ATTR_TTL)
            }
        }
    }

    fn insert_file(&self, fh: u64, file: File) {
        let slot = Slot {
            writer: matches!(file.desc, Desc::Write { .. }),
            path: Arc::from(file.path.as_str()),
            file: Arc::new(tokio::sync::Mutex::new(file)),
            refs: 1,
        };
        guard(&self.files).insert(fh, slot);
    }

    fn insert_writer(
        &self,
        fh: u64,
        path: String,
        ino: u64,
        generation: u64,
        handle: HandleId,
        buf: WriteBuffer,
    ) {
        let desc = Desc::Write { handle, buf };
        self.insert_file(
            fh,
            File {
                path,
                ino,
                generation,
                desc,
                times: None,
                modified: None,
            },
        );
    }

    fn new_fh(&self, file: File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.insert_file(fh, file);
        fh
    }

    fn file(&self, fh: u64) -> Result<Arc<tokio::sync::Mutex<File>>, Errno> {
        if guard(&self.lost).contains(&fh) {
            return Err(Errno::EIO); // its lock went with its session
        }
        guard(&self.files)
            .get(&fh)
            .map(|s| Arc::clone(&s.file))
            .ok_or(Errno::from_i32(libc::EBADF))
    }

    /// Remembers that `pid`'s open of `path` was refused with `ESTALE`, and returns that
    /// error: the kernel looks the name up again and retries once.
    fn stale(&self, pid: u32, path: &str, write: bool) -> Errno {
        let mut r = guard(&self.retries);
        r.retain(|_, x| x.at.elapsed() < RETRY_TTL);
        // Callers outside the daemon's pid namespace all arrive as pid 0: no record, and
        // their retry's lookup gets the ordinary answer.
        if pid != 0 {
            r.insert(
                pid,
                Retry {
                    path: path.to_owned(),
                    write,
                    at: std::time::Instant::now(),
                    looked_up: false,
                },
            );
        }
        debug!(
            pid,
            path, write, "open refused with ESTALE: the kernel retries it"
        );
        Errno::from_i32(libc::ESTALE)
    }

    /// The retry `pid` owes for `path`: `Some(true)` a writer's, `Some(false)` a reader's.
    fn retry_of(&self, pid: u32, path: &str) -> Option<bool> {
        let r = guard(&self.retries);
        if r.is_empty() {
            return None;
        }
        r.get(&pid)
            .filter(|x| x.path == path && x.at.elapsed() < RETRY_TTL)
            .map(|x| x.write)
    }

    /// The retry's lookup for `pid` came.
    fn looked_up(&self, pid: u32) {
        if let Some(x) = guard(&self.retries).get_mut(&pid) {
            x.looked_up = true;
        }
    }

    /// True if `pid`'s open of `path` was refused just before and no lookup came since:
    /// this is the kernel's retry of an open that reached its inode without a lookup.
    fn second_refusal(&self, pid: u32, path: &str) -> bool {
        let r = guard(&self.retries);
        !r.is_empty()
            && r.get(&pid)
                .is_some_and(|x| x.path == path && !x.looked_up && x.at.elapsed() < RETRY_TTL)
    }

    /// `pid` opens something: any retry it owed is done.
    fn retried(&self, pid: u32) {
        let mut r = guard(&self.retries);
        if !r.is_empty() {
            r.remove(&pid);
        }
    }

    /// The stat of `path` if it is the node `ino` stands for; `ENOENT` if the path is gone
    /// or names another node now.
    async fn stat_of(&self, client: &Client, ino: u64, path: &str) -> Result<(Stat, bool), Errno> {
        let want = self.instance_of(ino)?;
        let (stat, covered) = client.stat_covered(path).await.map_err(|e| ce(&e))?;
        match stat {
            Some(s) if s.instance.0 == want => Ok((s, covered)),
            _ => Err(Errno::ENOENT),
        }
    }

    async fn lookup(
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

    async fn getattr(&self, ino: u64) -> Result<(FileAttr, Duration), Errno> {
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
    async fn fresh_version_stat(&self, path: &str, stat: &Stat) -> (Stat, bool) {
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
    async fn writer_attr(&self, ino: u64, fh: u64, stat: &Stat) -> FileAttr {
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
    async fn ensure_base(
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

    async fn truncate(&self, ino: u64, fh: Option<u64>, size: u64) -> Result<FileAttr, Errno> {
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
    async fn fallocate(
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
    async fn setattr(
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

    /// The generation of the current session, if there is one (a reader without a handle
    /// needs none).
    fn session_generation(&self) -> u64 {
        self.sessions.current().map_or(0, |c| c.generation)
    }

    async fn open(&self, ino: u64, flags: i32, pid: u32) -> Result<(u64, FopenFlags), Errno> {
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
        let mut o = OpenOptions::write();
        o.creation = Creation::Never;
        let opened = client.open(&path, o).await.map_err(|e| ce(&e))?;
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
    async fn share_writer(&self, ino: u64, flags: i32) -> Option<u64> {
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
    async fn open_read(
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
    async fn open_read_current(&self, ino: u64, path: String) -> Result<(u64, FopenFlags), Errno> {
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
    async fn creation(
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

    async fn create(
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

    async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
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

    async fn write(
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
    async fn commit(&self, fh: u64, owner: Option<u64>) -> Result<(), Errno> {
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
    async fn release(
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
        let handle = match &file.desc {
            Desc::Write { handle, .. } => Some(*handle),
            Desc::Read { handle, .. } => *handle,
        };
        if let Some(handle) = handle {
            if let Ok(client) = self.sessions.of(file.generation).await {
                close_surely(&client, handle).await;
            }
        }
        guard(&self.inodes).closed(file.ino);
    }

    async fn opendir(&self, ino: u64) -> Result<u64, Errno> {
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

    async fn mkdir(
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

    async fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
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

    async fn rename(
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

    async fn getxattr(&self, ino: u64, name: &OsStr, pid: u32) -> Result<Vec<u8>, Errno> {
        let no_data = Errno::NO_XATTR;
        let Some(n) = name.to_str().and_then(xattr::Name::parse) else {
            return Err(no_data);
        };
        let path = self.path(ino)?;
        match n {
            xattr::Name::LockDelay => {
                let key = self.instance_of(ino)?;
                return guard(&self.lock_delay)
                    .get(&key)
                    .map(|ms| ms.to_string().into_bytes())
                    .ok_or(no_data);
            }
            xattr::Name::Sequencer => {
                let key = self.instance_of(ino)?;
                return guard(&self.locks)
                    .sequencer(key, pid)
                    .map(|s| s.to_token().into_bytes())
                    .ok_or(no_data);
            }
            _ => {}
        }
        let cur = self.session().await?;
        let stat = if n == xattr::Name::LockGeneration {
            // Lock state is never cached (crate::cache): ask the master.
            let want = self.instance_of(ino)?;
            match cur.client.stat_fresh(&path).await.map_err(|e| ce(&e))? {
                Some(s) if s.instance.0 == want => s,
                _ => return Err(Errno::ENOENT),
            }
        } else {
            self.stat_of(&cur.client, ino, &path).await?.0
        };
        if n == xattr::Name::Ephemeral && stat.ephemeral_children {
            return Ok(b"1".to_vec());
        }
        xattr::value(n, &stat)
            .map(String::into_bytes)
            .ok_or(no_data)
    }

    async fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let (stat, _) = self.stat_of(&cur.client, ino, &path).await?;
        let key = stat.instance.0;
        let has_seq = guard(&self.locks).sequencer(key, 0).is_some();
        let mut names = xattr::names(stat.kind, has_seq);
        if !guard(&self.lock_delay).contains_key(&key) {
            names.retain(|n| *n != xattr::Name::LockDelay);
        }
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.full().as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    async fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8]) -> Result<(), Errno> {
        let Some(n) = name.to_str().and_then(xattr::Name::parse) else {
            return Err(Errno::from_i32(libc::ENOTSUP));
        };
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let (stat, _) = self.stat_of(&cur.client, ino, &path).await?;
        match n {
            xattr::Name::AclRead | xattr::Name::AclWrite | xattr::Name::AclChange => {
                let v = std::str::from_utf8(value)
                    .map_err(|_| einval())?
                    .trim()
                    .to_owned();
                let mut acl = stat.acl.clone();
                match n {
                    xattr::Name::AclRead => acl.read = v,
                    xattr::Name::AclWrite => acl.write = v,
                    _ => acl.change_acl = v,
                }
                cur.client
                    .set_acl(&path, acl, None)
                    .await
                    .map_err(|e| ce(&e))?;
                Ok(())
            }
            xattr::Name::LockDelay if stat.kind == NodeKind::File => {
                let ms = xattr::parse_lock_delay(value).map_err(|e| {
                    warn!(path, error = %e, "bad user.chubby.lock_delay");
                    einval()
                })?;
                guard(&self.lock_delay).insert(stat.instance.0, ms);
                Ok(())
            }
            xattr::Name::Ephemeral if stat.kind == NodeKind::Directory => {
                let on = xattr::parse_flag(value).map_err(|_| einval())?;
                self.set_ephemeral_children(&cur.client, &path, stat.instance, on)
                    .await
            }
            _ => Err(eperm()),
        }
    }

    async fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), Errno> {
        let Some(n) = name.to_str().and_then(xattr::Name::parse) else {
            return Err(Errno::NO_XATTR);
        };
        let path = self.path(ino)?;
        match n {
            xattr::Name::LockDelay => guard(&self.lock_delay)
                .remove(&self.instance_of(ino)?)
                .map(|_| ())
                .ok_or(Errno::NO_XATTR),
            xattr::Name::Ephemeral => {
                let cur = self.session().await?;
                let (stat, _) = self.stat_of(&cur.client, ino, &path).await?;
                if !stat.ephemeral_children {
                    return Err(Errno::NO_XATTR);
                }
                self.set_ephemeral_children(&cur.client, &path, stat.instance, false)
                    .await
            }
            _ => Err(eperm()),
        }
    }

    /// Sets or clears a directory's replicated ephemeral-children marker.
    async fn set_ephemeral_children(
        &self,
        client: &Client,
        path: &str,
        instance: InstanceNumber,
        on: bool,
    ) -> Result<(), Errno> {
        let change = AttrChange {
            ephemeral_children: Some(on),
            ..AttrChange::default()
        };
        client
            .set_attr(path, Some(instance), change)
            .await
            .map_err(|e| ce(&e))?;
        info!(path, on, "ephemeral-children marker set");
        Ok(())
    }

    /// The mode of a lock on the file of `ino` held by another client of the cell that
    /// conflicts with `mode` (`F_GETLK`), if any.
    async fn remote_conflict(&self, ino: u64, mode: LockMode) -> Result<Option<LockMode>, Errno> {
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let (held, holders) = cur.client.lock_holders(&path).await.map_err(|e| ce(&e))?;
        let mine = cur.client.session();
        let others = holders.iter().any(|(session, _)| *session != mine);
        Ok(held.filter(|h| others && (mode == LockMode::Exclusive || *h == LockMode::Exclusive)))
    }

    /// The gate of `owner`'s lock on `instance` (see `lock_gates`).
    fn lock_gate(&self, instance: u64, owner: u64) -> Gate {
        Arc::clone(
            guard(&self.lock_gates)
                .entry((instance, owner))
                .or_default(),
        )
    }

    /// Forgets every gate nobody uses and no lock needs any more (after a session's locks
    /// were lost together).
    fn prune_lock_gates(&self) {
        // Gates before locks, as in `lock_gate_done`.
        let mut gates = guard(&self.lock_gates);
        let locks = guard(&self.locks);
        gates.retain(|(instance, owner), g| {
            Arc::strong_count(g) > 1 || locks.holds(*instance, *owner)
        });
    }

    /// Forgets a gate nobody uses and no lock needs any more.
    fn lock_gate_done(&self, instance: u64, owner: u64, gate: Gate) {
        drop(gate);
        let mut gates = guard(&self.lock_gates);
        if gates
            .get(&(instance, owner))
            .is_some_and(|g| Arc::strong_count(g) == 1)
            && !guard(&self.locks).holds(instance, owner)
        {
            gates.remove(&(instance, owner));
        }
    }

    /// Releases `owner`'s lock on the file of `ino`. A wait in progress (another process
    /// of the same open file description is blocked taking the lock) goes on, unless
    /// `cancel`: the description or the process is closing the file.
    async fn unlock(&self, ino: u64, owner: u64, cancel: bool) {
        let Ok(instance) = self.instance_of(ino) else {
            return;
        };
        self.unlock_instance(instance, owner, cancel).await;
    }

    /// [`Shared::unlock`] of the file `instance`.
    ///
    /// Never waits for the owner's gate: an unlock by one process of a description while
    /// another converts its lock (and waits for the new mode) is served at once, as on a
    /// local file system. The entry is removed only if it is still the one seen (a
    /// conversion may have replaced it: the unlock then came first).
    async fn unlock_instance(&self, instance: u64, owner: u64, cancel: bool) {
        let (handle, state) = {
            let locks = guard(&self.locks);
            match locks.get(instance, owner) {
                Some(l) => (l.handle, l.state.clone()),
                None => return,
            }
        };
        match state {
            // Nothing is held yet: the wait goes on (another process of the description
            // is taking the lock), unless the file is being closed.
            LockState::Waiting if !cancel => {}
            LockState::Waiting | LockState::Held(_) => {
                let lock = {
                    let mut locks = guard(&self.locks);
                    if self.session_ended(locks.get(instance, owner)) {
                        return;
                    }
                    locks.remove_if(instance, owner, handle)
                };
                self.close_lock(lock).await;
            }
        }
    }

    /// Removes `owner`'s lock (or wait) on `instance` and closes its handle.
    async fn drop_lock(&self, instance: u64, owner: u64) {
        let lock = {
            let mut locks = guard(&self.locks);
            if self.session_ended(locks.get(instance, owner)) {
                return;
            }
            locks.remove(instance, owner)
        };
        self.close_lock(lock).await;
    }

    /// True if `lock`'s session expired: the entry is left for the session's end
    /// (`watch_session`), which fences its holders. (Removed by an unlock in the moment
    /// before, it would take its holder out of the fence: `flock -u` by a process sharing
    /// the description, while another goes on writing.) The lock is gone at the cell
    /// either way.
    fn session_ended(&self, lock: Option<&Lock>) -> bool {
        lock.is_some_and(|l| {
            self.sessions.current().is_some_and(|c| {
                c.generation == l.generation
                    && c.client.status() == crate::session::SessionStatus::Expired
            })
        })
    }

    /// Closes the handle of a lock removed from the table (which gives it up at the cell).
    async fn close_lock(&self, lock: Option<Lock>) {
        if let Some(l) = lock {
            if let Ok(client) = self.sessions.of(l.generation).await {
                close_surely(&client, l.handle).await;
            }
            debug!(path = %l.path, pid = l.pid, "lock released");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
    ) -> Result<(), Errno> {
        if typ == libc::F_UNLCK {
            self.unlock(ino, owner, false).await;
            return Ok(());
        }
        if guard(&self.lost).contains(&fh) {
            return Err(Errno::EIO);
        }
        if start != 0 || end != WHOLE_FILE_END {
            return Err(Errno::from_i32(libc::ENOLCK)); // Chubby locks are whole-file
        }
        // Locks are the file's, whichever version's inode they are taken through.
        let instance = self.instance_of(ino)?;
        let mode = if typ == libc::F_RDLCK {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        let waiting = matches!(
            guard(&self.locks).get(instance, owner).map(|l| &l.state),
            Some(LockState::Waiting)
        );
        if waiting && !sleep {
            // Another process of this description waits for the lock: it is held elsewhere.
            return Err(Errno::from_i32(libc::EWOULDBLOCK));
        }
        let gate = self.lock_gate(instance, owner);
        if !sleep {
            // LOCK_NB never waits, not even for another process of this description that
            // is converting or taking the lock (it would wait for a holder elsewhere).
            let result = match gate.try_lock() {
                Ok(_turn) => {
                    self.take_lock(ino, instance, fh, owner, mode, pid, false)
                        .await
                }
                Err(_) => Err(Errno::from_i32(libc::EWOULDBLOCK)),
            };
            self.lock_gate_done(instance, owner, gate);
            return result;
        }
        let result = async {
            // A blocking wait for the gate ends with EINTR on a signal, like the wait
            // for the lock itself.
            let turn = gate.lock();
            tokio::pin!(turn);
            let _turn = loop {
                tokio::select! {
                    g = &mut turn => break g,
                    () = tokio::time::sleep(SIGNAL_POLL) => {
                        if locks::signal_pending(pid) {
                            return Err(Errno::from_i32(libc::EINTR));
                        }
                    }
                }
            };
            self.take_lock(ino, instance, fh, owner, mode, pid, true)
                .await
        }
        .await;
        self.lock_gate_done(instance, owner, gate);
        result
    }

    /// Takes `owner`'s lock on `instance` (through the inode `ino`), its gate held.
    #[allow(clippy::too_many_arguments)]
    async fn take_lock(
        &self,
        ino: u64,
        instance: u64,
        fh: u64,
        owner: u64,
        mode: LockMode,
        pid: u32,
        sleep: bool,
    ) -> Result<(), Errno> {
        let existing = guard(&self.locks).get(instance, owner).cloned();
        if let Some(l) = existing {
            match l.state {
                // Held by this description (or process) already, maybe through another
                // process sharing it.
                LockState::Held(_) if l.mode == mode => return Ok(()),
                // A conversion: like flock(2), not atomic. (A wait left over cannot be
                // here: its caller held the gate.)
                LockState::Held(_) | LockState::Waiting => self.drop_lock(instance, owner).await,
            }
        }
        let path = self.path(ino)?;
        let cur = self.session().await?;
        let client = &cur.client;
        let mut o = OpenOptions::write();
        o.creation = Creation::Never;
        o.lock_delay_ms = guard(&self.lock_delay).get(&instance).copied();
        let opened = client.open(&path, o).await.map_err(|e| ce(&e))?;
        let handle = opened.handle;
        if opened.stat.instance.0 != instance {
            client.close(handle).await;
            return Err(Errno::ENOENT);
        }
        let lock = Lock {
            handle,
            fh,
            generation: cur.generation,
            mode,
            pid,
            path: path.clone(),
            state: LockState::Waiting,
            lineage: fence::lineage(pid).iter().map(|p| p.pid).collect(),
        };
        if !sleep {
            return match client.try_acquire(handle, mode).await {
                Ok(seq) => {
                    let mut held = lock;
                    held.state = LockState::Held(seq);
                    // Recorded only while the session lives: once it expired (its status
                    // is published before its end is handled), a lock recorded now would
                    // escape the session's end, and its taker the fence.
                    let mut locks = guard(&self.locks);
                    if client.status() == crate::session::SessionStatus::Expired {
                        drop(locks);
                        return Err(Errno::EIO);
                    }
                    locks.insert(instance, owner, held);
                    Ok(())
                }
                Err(e) => {
                    client.close(handle).await;
                    Err(ce(&e))
                }
            };
        }
        guard(&self.locks).insert(instance, owner, lock);
        let acquire = client.acquire(handle, mode);
        tokio::pin!(acquire);
        let outcome = loop {
            tokio::select! {
                r = &mut acquire => break Some(r),
                () = tokio::time::sleep(SIGNAL_POLL) => {
                    if locks::signal_pending(pid) {
                        break None;
                    }
                }
            }
        };
        match outcome {
            Some(Ok(seq)) => {
                if guard(&self.locks).granted(instance, owner, handle, seq) {
                    debug!(path, pid, "lock granted");
                    Ok(())
                } else {
                    // Unlocked while waiting (the owner closed the file).
                    client.close(handle).await;
                    Err(Errno::from_i32(libc::ENOLCK))
                }
            }
            Some(Err(e)) => {
                // A wait that ended with its session: its waiter is a standby, not a
                // holder, whichever of this and the session's end (`watch_session`) runs
                // first. Recorded before the caller is answered, and in the same critical
                // section as the removal, so that the session's end sees one or the other.
                {
                    let mut locks = guard(&self.locks);
                    let lock = locks.remove_if(instance, owner, handle);
                    if client.status() == crate::session::SessionStatus::Expired {
                        if let Some(l) = lock {
                            guard(&self.failed_waits).push((cur.generation, l.path, l.lineage));
                        }
                    }
                }
                client.close(handle).await;
                warn!(path, pid, error = %e, "lock wait failed");
                let n = ce(&e);
                Err(if n == Errno::EIO {
                    Errno::from_i32(libc::ENOLCK)
                } else {
                    n
                })
            }
            None => {
                // A signal: give up the wait (closing the handle also returns a grant
                // that raced it), and let the caller see EINTR.
                guard(&self.locks).remove_if(instance, owner, handle);
                client.close(handle).await;
                debug!(path, pid, "lock wait interrupted by a signal");
                Err(Errno::from_i32(libc::EINTR))
            }
        }
    }
}

/// `data[offset..offset + size]`, clipped to `data`.
fn slice(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

fn buffer_errno(e: BufferError) -> Errno {
    match e {
        BufferError::TooLarge => Errno::from_i32(libc::EFBIG),
        BufferError::NeedsBase => Errno::EIO,
    }
}

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
fn signal_groups(procs: &[fence::Proc]) {
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

fn send_signal(signal: &str, target: &str) {
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
fn answer(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if size < len {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}
