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
//!
//! # Files
//! - `mod.rs`: the shared state ([`ChubbyFs`], `Shared`, the open file descriptions) and
//!   the helpers every operation uses (paths, attributes, entries, handles, retries).
//! - `adapter.rs`: fuser's callbacks, answered on fuser's thread or spawned onto the runtime.
//! - `file_ops.rs`: lookups and attributes, opens, whole-file buffers, creations, removals
//!   and renames.
//! - `lock_ops.rs`: `flock(2)` and `fcntl` locks as cell-wide Chubby locks, and what a lost
//!   session does to their holders.
//! - `xattr_ops.rs`: reading and setting a node's Chubby metadata through `user.chubby.*`.
//! - [`buffer`]: the write buffer of an open file description (pure).
//! - [`errno`]: the errno of each client error and refusal.
//! - `fast.rs`: answers on fuser's own thread for requests the session's cache settles.
//! - [`fence`]: fencing the processes that held a lock their session lost.
//! - [`inodes`]: the inode table, one inode per version of a file and per writer (pure).
//! - [`kernel`]: the kernel's cache as the session's downstream cache.
//! - [`locks`]: the lock table: `flock(2)` and whole-file `fcntl(2)` locks as Chubby locks.
//! - [`metrics`]: the mount's own Prometheus metrics.
//! - [`posix`]: modes, owners and times between the kernel's SETATTR and the cell's SetAttr
//!   (pure).
//! - [`sessions`]: the mount's session, and the next one after it expires.
//! - [`xattr`]: the extended attributes a mount shows, their names and values.

mod adapter;
pub mod buffer;
pub mod errno;
mod fast;
pub mod fence;
mod file_ops;
pub mod inodes;
pub mod kernel;
mod lock_ops;
pub mod locks;
pub mod metrics;
pub mod posix;
pub mod sessions;
pub mod xattr;
mod xattr_ops;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::MountCounters;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use chubby_protocol::client_msg::CallError;
use chubby_protocol::db::PATH_BYTES_MAX;
use chubby_protocol::{HandleId, NodeKind, Refusal, Stat, TimeSet, Timespec};
use fuser::{Errno, FileAttr, FileType, INodeNo, Request};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use self::adapter::signal_groups;
use self::buffer::WriteBuffer;
use self::inodes::{child_path, Inodes};
use self::kernel::KernelCache;
use self::locks::{Lock, LockState, Locks};
use self::sessions::{Current, Sessions};
use crate::client::{Client, ClientEvent, ClientOptions};
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

    /// The generation of the current session, if there is one (a reader without a handle
    /// needs none).
    fn session_generation(&self) -> u64 {
        self.sessions.current().map_or(0, |c| c.generation)
    }
}
