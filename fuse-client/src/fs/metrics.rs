//! The mount's own Prometheus metrics (`chubby mount --metrics ADDR`; docs/operations.md).
//!
//! Counters are atomics bumped by the request tasks; the page is rendered on demand from
//! them, the kernel cache's counters and the session's state.

use std::sync::atomic::{AtomicU64, Ordering};

use chubby_protocol::metrics::Exposition;

/// What the mount counts as it serves.
#[derive(Debug, Default)]
pub struct MountCounters {
    /// READs answered from contents the session's cache covers (no round trip).
    pub reads_cached: AtomicU64,
    /// READs whose contents came from the master (not covered by the cache).
    pub reads_uncached: AtomicU64,
    /// GETATTR/LOOKUP answers covered by the cache (given an attribute TTL).
    pub attrs_cached: AtomicU64,
    /// GETATTR/LOOKUP answers from the master.
    pub attrs_uncached: AtomicU64,
    /// Times the session went into jeopardy.
    pub jeopardy: AtomicU64,
    /// Sessions started (the first, and one after each expiry).
    pub sessions: AtomicU64,
    /// Sessions that expired.
    pub expired: AtomicU64,
    /// Locks lost with an expired session.
    pub locks_lost: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Bumps a counter.
pub(crate) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// The page, from the counters, the kernel cache's figures and the session's state
/// (0 safe, 1 jeopardy, 2 expired or none).
pub(crate) fn render(
    c: &MountCounters,
    kernel: &super::kernel::KernelStats,
    session_state: u8,
) -> String {
    let mut e = Exposition::new();
    for (source, v) in [("cache", &c.reads_cached), ("cell", &c.reads_uncached)] {
        e.counter(
            "chubby_mount_reads_total",
            "READ requests by where their contents came from: the session's cache (no round \
             trip) or the cell.",
            &[("source", source)],
            get(v),
        );
    }
    for (source, v) in [("cache", &c.attrs_cached), ("cell", &c.attrs_uncached)] {
        e.counter(
            "chubby_mount_attrs_total",
            "Attribute answers (GETATTR, LOOKUP) by source; cached ones are given a kernel \
             attribute lifetime.",
            &[("source", source)],
            get(v),
        );
    }
    e.counter(
        "chubby_mount_kernel_invalidations_total",
        "Kernel page-cache invalidations of single files (server invalidations applied).",
        &[],
        kernel.inode_invalidations,
    );
    e.counter(
        "chubby_mount_kernel_flushes_total",
        "Whole kernel-cache flushes (fail-over, jeopardy, expiry).",
        &[],
        kernel.flushes,
    );
    e.counter(
        "chubby_mount_jeopardy_total",
        "Times the session went into jeopardy (lease ran out without a KeepAlive reply).",
        &[],
        get(&c.jeopardy),
    );
    e.counter(
        "chubby_mount_sessions_total",
        "Sessions started: the first and one after each expiry.",
        &[],
        get(&c.sessions),
    );
    e.counter(
        "chubby_mount_sessions_expired_total",
        "Sessions that expired.",
        &[],
        get(&c.expired),
    );
    e.counter(
        "chubby_mount_locks_lost_total",
        "flock/fcntl locks lost because their session expired.",
        &[],
        get(&c.locks_lost),
    );
    e.gauge(
        "chubby_mount_session_state",
        "The session now: 0 safe, 1 jeopardy, 2 expired or not started.",
        &[],
        f64::from(session_state),
    );
    e.process();
    e.finish()
}
