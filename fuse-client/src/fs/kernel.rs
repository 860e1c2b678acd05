//! The kernel's cache as the session's downstream cache (DESIGN §6; ../shared/STACK.md
//! §1b): what the master invalidates leaves the kernel before the session acknowledges it.
//!
//! What the kernel may hold, and why it is never stale:
//! - **pages and attributes of file versions** ([`super::inodes`]): an inode stands for
//!   one version, whose contents and attributes never change, so nothing it holds can go
//!   stale; what keeps a later `open` from reading an old version is that the name is
//!   looked up again (below), and the lookup hands out the current version's inode from
//!   the session's cache, which the master invalidates before any write completes. Their
//!   pages are still dropped here when their path changes, to give back the memory.
//! - **attributes of directories** with a long TTL, filled only from data the session's
//!   cache covers, and dropped here with `inval_inode` before the invalidation is
//!   acknowledged (a GETATTR in flight is ignored by the kernel once the inode's
//!   attributes were invalidated after it was sent).
//! - **no dentries**: entry TTLs are zero, so every path walk asks the daemon, which
//!   answers from the session's cache without a round trip. `inval_entry` would take the
//!   parent directory's lock, which the kernel holds during our own create, unlink or
//!   rename, while the master waits for this very acknowledgement: a deadlock.
//!
//! Notifications go out from one dedicated thread, never from a FUSE request's path
//! (that deadlocks on the request's own page). Nothing a notification waits for waits for
//! the session: a READ holds its page locked until answered, and READs are answered from
//! the description's pinned version at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use fuser::{INodeNo, Notifier};
use tracing::{debug, warn};

use super::inodes::Inodes;
use crate::client::DownstreamCache;

/// Inodes to drop, and whom to tell when done.
type Job = (Vec<u64>, Option<mpsc::Sender<()>>);

/// Counters, for the mount's metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// `inval_inode` calls made.
    pub inode_invalidations: u64,
    /// Whole flushes (fail-over, jeopardy, expiry).
    pub flushes: u64,
}

/// The kernel cache of one mount (see the module docs).
#[derive(Debug)]
pub struct KernelCache {
    notifier: OnceLock<Notifier>,
    inodes: Arc<Mutex<Inodes>>,
    jobs: Mutex<mpsc::Sender<Job>>,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KernelCache {
    /// A kernel cache over `inodes`, with its notification thread started. Until
    /// [`KernelCache::set_notifier`] (the mount is up) nothing is sent.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn new(inodes: Arc<Mutex<Inodes>>) -> std::io::Result<Arc<KernelCache>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let cache = Arc::new(KernelCache {
            notifier: OnceLock::new(),
            inodes,
            jobs: Mutex::new(tx),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&cache);
        std::thread::Builder::new()
            .name("chubby-inval".into())
            .spawn(move || {
                while let Ok((inos, done)) = rx.recv() {
                    if let Some(cache) = weak.upgrade() {
                        for ino in &inos {
                            cache.drop_inode(*ino);
                        }
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(cache)
    }

    /// The mount is up: notifications can be sent.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> KernelStats {
        KernelStats {
            inode_invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }

    /// Drops `ino`'s attributes and pages soon, without waiting (a writer's inode whose
    /// base turned out newer than the version the kernel was shown).
    pub fn drop_soon(&self, ino: u64) {
        let _ = guard(&self.jobs).send((vec![ino], None));
    }

    fn drop_inode(&self, ino: u64) {
        let Some(n) = self.notifier.get() else { return };
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
            // The mount is going away, or the kernel refused: nothing more we can do.
            debug!(ino, error = %e, "inval_inode failed");
        }
    }

    /// Runs `inos` through the notification thread; waits if `wait`.
    fn run(&self, inos: Vec<u64>, wait: bool) {
        if inos.is_empty() || self.notifier.get().is_none() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let sent = guard(&self.jobs).send((inos, wait.then_some(tx)));
        if sent.is_err() {
            warn!("the kernel invalidation thread is gone");
            return;
        }
        if wait {
            let _ = rx.recv();
        }
    }
}

impl DownstreamCache for KernelCache {
    fn invalidate(&self, paths: &[String]) {
        let inos = guard(&self.inodes).inos_of(paths);
        debug!(
            ?paths,
            inodes = inos.len(),
            "dropping from the kernel cache"
        );
        self.run(inos, true);
    }

    fn invalidate_all(&self, urgent: bool) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let all = guard(&self.inodes).all();
        debug!(
            inodes = all.len(),
            urgent, "dropping everything from the kernel cache"
        );
        self.run(all, !urgent);
    }
}
