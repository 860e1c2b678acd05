//! The kernel's cache as the session's downstream cache (DESIGN §6; ../shared/STACK.md
//! §1b): what the master invalidates leaves the kernel before the session acknowledges it.
//!
//! What the kernel may hold, and why it is never stale:
//! - **pages** of files opened for reading (`FOPEN_KEEP_CACHE`) and **attributes** with a
//!   long TTL, each filled only from data the session's cache covers (so the master will
//!   invalidate it before it changes), and dropped here with `inval_inode` before the
//!   invalidation is acknowledged. A reply racing an invalidation is safe: a READ in flight
//!   holds its page locked, which `inval_inode` waits for; a GETATTR in flight is ignored by
//!   the kernel once the inode's attributes were invalidated after it was sent.
//! - **no dentries**: entry TTLs are zero, so every path walk asks the daemon, which
//!   answers from the session's cache without a round trip. `inval_entry` would take the
//!   parent directory's lock, which the kernel holds during our own create, unlink or
//!   rename, while the master waits for this very acknowledgement: a deadlock.
//!
//! Notifications go out from one dedicated thread, never from a FUSE request's path
//! (that deadlocks on the request's own page). An urgent flush (the local lease ended)
//! drops idle inodes there and each inode with a READ in flight on its own thread, since
//! that READ may be waiting for the session to be safe again.

use std::collections::HashMap;
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
    /// READs being answered, per inode.
    reads: Mutex<HashMap<u64, u32>>,
    /// Inodes the notification thread is dropping now.
    invalidating: Mutex<std::collections::HashSet<u64>>,
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
            reads: Mutex::new(HashMap::new()),
            invalidating: Mutex::new(std::collections::HashSet::new()),
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
                        guard(&cache.invalidating).extend(inos.iter().copied());
                        for ino in &inos {
                            cache.drop_inode(*ino);
                            guard(&cache.invalidating).remove(ino);
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

    /// True while the notification thread is dropping `ino` (or has it queued in the job
    /// it is running).
    #[must_use]
    pub fn is_invalidating(&self, ino: u64) -> bool {
        guard(&self.invalidating).contains(&ino)
    }

    /// A READ of `ino` is being answered until the guard drops.
    pub fn reading(self: &Arc<KernelCache>, ino: u64) -> ReadGuard {
        *guard(&self.reads).entry(ino).or_default() += 1;
        ReadGuard {
            cache: Arc::clone(self),
            ino,
        }
    }

    /// Drops `ino`'s pages and attributes soon, without waiting (data handed to the kernel
    /// that the session's cache does not cover).
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
        let busy: Vec<u64> = {
            let reads = guard(&self.reads);
            all.iter()
                .copied()
                .filter(|i| reads.contains_key(i))
                .collect()
        };
        let idle: Vec<u64> = all.into_iter().filter(|i| !busy.contains(i)).collect();
        debug!(
            idle = idle.len(),
            busy = busy.len(),
            urgent,
            "dropping everything from the kernel cache"
        );
        let mut threads = Vec::new();
        if self.notifier.get().is_some() {
            for ino in busy {
                let notifier = self.notifier.get().cloned();
                let t = std::thread::Builder::new()
                    .name("chubby-inval-busy".into())
                    .spawn(move || {
                        if let Some(n) = notifier {
                            let _ = n.inval_inode(INodeNo(ino), 0, 0);
                        }
                    });
                match t {
                    Ok(t) => threads.push(t),
                    Err(e) => warn!(ino, error = %e, "cannot start an invalidation thread"),
                }
            }
        }
        self.run(idle, !urgent);
        if !urgent {
            for t in threads {
                let _ = t.join();
            }
        }
    }
}

/// See [`KernelCache::reading`].
#[derive(Debug)]
pub struct ReadGuard {
    cache: Arc<KernelCache>,
    ino: u64,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut reads = guard(&self.cache.reads);
        if let Some(n) = reads.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                reads.remove(&self.ino);
            }
        }
    }
}
