//! The replica's Prometheus metrics (docs/operations.md lists them).
//!
//! Figures are kept and rendered on the core task, which owns everything they describe:
//! nothing is shared between threads and nothing is counted twice. The HTTP endpoint
//! (`chubby_protocol::metrics::serve`) asks the core for a page through a channel, so a
//! scrape costs the core one render (tens of microseconds, no I/O: the `process_*` figures
//! are read from `/proc` on the HTTP task), and at most 16 scrapes are served at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant as WallInstant;

use chubby_protocol::client_msg::{CallError, Reply};
use chubby_protocol::metrics::{Exposition, Histogram, COUNT_BUCKETS, LATENCY_BUCKETS};
use tokio::sync::{mpsc, oneshot};

use super::core::Core;
use crate::paxos::RoleKind;

/// A request for one page of metrics (answered by the core task).
pub(crate) type PageRequest = oneshot::Sender<String>;

/// How many own proposals are timed at once; more are not timed (a master with this many
/// commands in flight has bigger problems than a missing sample).
const TIMED_PROPOSALS_MAX: usize = 100_000;

/// The figures the core records as it works.
#[derive(Debug)]
pub(super) struct Metrics {
    /// Client calls by name and outcome.
    calls: BTreeMap<(&'static str, &'static str), u64>,
    /// Time from a call's arrival to its reply, by name (KeepAlives excluded: long polls).
    call_seconds: BTreeMap<&'static str, Histogram>,
    /// Own commands: submission time by request number.
    proposed: HashMap<u64, WallInstant>,
    /// Own commands, submission to application (a Paxos instance plus the wait for it).
    instance_seconds: Histogram,
    /// Commands per chosen value.
    batch_commands: Histogram,
    /// Each durable write of Paxos state (WAL append and fsync).
    sync_seconds: Histogram,
    snapshots_written: u64,
    snapshot_bytes: u64,
    snapshots_installed: u64,
    /// Elections this replica started (each campaign, won or not).
    elections: u64,
    backups: u64,
    backup_bytes: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            calls: BTreeMap::new(),
            call_seconds: BTreeMap::new(),
            proposed: HashMap::new(),
            instance_seconds: Histogram::new(LATENCY_BUCKETS),
            batch_commands: Histogram::new(COUNT_BUCKETS),
            sync_seconds: Histogram::new(LATENCY_BUCKETS),
            snapshots_written: 0,
            snapshot_bytes: 0,
            snapshots_installed: 0,
            elections: 0,
            backups: 0,
            backup_bytes: 0,
        }
    }
}

/// The outcome label of a reply.
fn outcome(reply: &Reply) -> &'static str {
    match reply {
        Reply::Ok(_) => "ok",
        Reply::Err(e) => match e {
            CallError::NotMaster { .. } => "not_master",
            CallError::Unavailable(_) => "unavailable",
            CallError::OutcomeUnknown(_) => "outcome_unknown",
            CallError::Refused(_) => "refused",
            CallError::BadRequest(_) => "bad_request",
            CallError::WrongEpoch { .. } => "wrong_epoch",
        },
    }
}

impl Metrics {
    /// A call named `call` that arrived at `since` is answered with `reply`.
    pub(super) fn answered(&mut self, call: &'static str, since: WallInstant, reply: &Reply) {
        *self.calls.entry((call, outcome(reply))).or_insert(0) += 1;
        if call != "KeepAlive" {
            self.call_seconds
                .entry(call)
                .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
                .observe(since.elapsed().as_secs_f64());
        }
    }

    pub(super) fn proposed(&mut self, request: u64) {
        if self.proposed.len() < TIMED_PROPOSALS_MAX {
            self.proposed.insert(request, WallInstant::now());
        }
    }

    /// An own command was applied.
    pub(super) fn own_applied(&mut self, request: u64) {
        if let Some(at) = self.proposed.remove(&request) {
            self.instance_seconds.observe(at.elapsed().as_secs_f64());
        }
    }

    /// An own command that will never be applied (rejected): not timed.
    pub(super) fn forget(&mut self, request: u64) {
        self.proposed.remove(&request);
    }

    /// Forgets timings of proposals that were lost with a mastership.
    pub(super) fn forget_proposals(&mut self) {
        self.proposed.clear();
    }

    pub(super) fn chosen_value(&mut self, commands: usize) {
        if commands > 0 {
            self.batch_commands.observe(commands as f64);
        }
    }

    pub(super) fn synced(&mut self, since: WallInstant) {
        self.sync_seconds.observe(since.elapsed().as_secs_f64());
    }

    pub(super) fn snapshot_written(&mut self, bytes: usize) {
        self.snapshots_written += 1;
        self.snapshot_bytes = bytes as u64;
    }

    pub(super) fn snapshot_installed(&mut self) {
        self.snapshots_installed += 1;
    }

    pub(super) fn election_started(&mut self) {
        self.elections += 1;
    }

    pub(super) fn backup_taken(&mut self, bytes: usize) {
        self.backups += 1;
        self.backup_bytes = bytes as u64;
    }
}

impl Core {
    /// The metrics page: what was counted, and gauges read from the state now.
    pub(super) fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let mut e = Exposition::new();
        let id = self.me.0.to_string();
        e.gauge(
            "chubby_replica_info",
            "This replica's id (label) and membership; always 1.",
            &[("replica", &id)],
            1.0,
        );
        for ((call, outcome), n) in &m.calls {
            e.counter(
                "chubby_requests_total",
                "Client calls answered by this replica, by call and outcome.",
                &[("call", call), ("outcome", outcome)],
                *n,
            );
        }
        for (call, h) in &m.call_seconds {
            e.histogram(
                "chubby_request_duration_seconds",
                "Time from a call's arrival to its reply (KeepAlives, which are long polls, \
                 excluded).",
                &[("call", call)],
                h,
            );
        }
        let status = self.status();
        let master = self.composite.paxos().role() == RoleKind::Master;
        e.gauge(
            "chubby_is_master",
            "1 while this replica is the master.",
            &[],
            f64::from(u8::from(master)),
        );
        e.gauge(
            "chubby_is_voter",
            "0 while this replica rebuilds after losing its disk (it casts no vote).",
            &[],
            f64::from(u8::from(self.composite.paxos().is_voter())),
        );
        e.gauge(
            "chubby_master_epoch",
            "The round of the master epoch the database is in.",
            &[],
            status.epoch.round as f64,
        );
        e.gauge(
            "chubby_master_lease_remaining_seconds",
            "Time left on the master lease this replica holds (0 when it holds none).",
            &[],
            status.lease_remaining_ms.unwrap_or(0) as f64 / 1000.0,
        );
        e.gauge(
            "chubby_applied_slot",
            "The last Paxos slot applied to the database.",
            &[],
            status.applied.0 as f64,
        );
        e.gauge(
            "chubby_chosen_through_slot",
            "Every slot up to here is known chosen.",
            &[],
            status.chosen_through.0 as f64,
        );
        e.gauge(
            "chubby_log_entries",
            "Entries in the Paxos log (truncated after snapshots).",
            &[],
            status.log_entries as f64,
        );
        e.gauge(
            "chubby_members",
            "Replicas in the current member set.",
            &[],
            self.composite.paxos().membership().everyone().len() as f64,
        );
        e.gauge(
            "chubby_divergence",
            "1 if a digest check found this replica's database differs from the master's.",
            &[],
            f64::from(u8::from(status.divergence.is_some())),
        );
        let counts = self.composite.db().counts();
        for (name, help, v) in [
            (
                "chubby_nodes",
                "Files and directories in the database.",
                counts.nodes,
            ),
            ("chubby_sessions", "Live client sessions.", counts.sessions),
            ("chubby_handles", "Open handles.", counts.handles),
            (
                "chubby_locks",
                "Locks held, awaited or in lock-delay.",
                counts.locks,
            ),
        ] {
            e.gauge(name, help, &[], v as f64);
        }
        e.histogram(
            "chubby_paxos_instance_seconds",
            "This replica's own commands, from submission to application.",
            &[],
            &m.instance_seconds,
        );
        e.histogram(
            "chubby_paxos_batch_commands",
            "Commands per chosen Paxos value.",
            &[],
            &m.batch_commands,
        );
        e.histogram(
            "chubby_disk_sync_seconds",
            "Each durable write of Paxos state (log append and fsync).",
            &[],
            &m.sync_seconds,
        );
        let notices = self.composite.serve().notice_counts();
        e.counter(
            "chubby_invalidations_sent_total",
            "Cache invalidation notices queued to sessions (one per session per write).",
            &[],
            notices.invalidations_sent,
        );
        e.counter(
            "chubby_invalidations_acked_total",
            "Cache invalidation notices the sessions acknowledged.",
            &[],
            notices.invalidations_acked,
        );
        e.counter(
            "chubby_writes_gated_total",
            "Writes that waited for caches to be invalidated first.",
            &[],
            notices.writes_gated,
        );
        e.counter(
            "chubby_snapshots_written_total",
            "Database snapshots this replica wrote.",
            &[],
            m.snapshots_written,
        );
        e.gauge(
            "chubby_snapshot_bytes",
            "Size of the last snapshot this replica wrote.",
            &[],
            m.snapshot_bytes as f64,
        );
        e.gauge(
            "chubby_snapshot_slot",
            "The slot the snapshot on disk covers.",
            &[],
            status.snapshot.0 as f64,
        );
        e.counter(
            "chubby_snapshots_installed_total",
            "Snapshots fetched from peers and installed.",
            &[],
            m.snapshots_installed,
        );
        e.counter(
            "chubby_elections_total",
            "Elections this replica started (won or not). A healthy cell starts none between \
             fail-overs; a rising count on a live master's cell means followers stopped \
             hearing its heartbeats within a master lease (overload, stalls, a bad network).",
            &[],
            m.elections,
        );
        e.counter(
            "chubby_backups_total",
            "Backups taken at this replica (chubby admin backup).",
            &[],
            m.backups,
        );
        e.gauge(
            "chubby_backup_bytes",
            "Size of the last backup taken here.",
            &[],
            m.backup_bytes as f64,
        );
        e.finish()
    }
}

/// The `process_*` figures, read from `/proc` on the HTTP task (not the core's).
fn process_page() -> String {
    let mut e = Exposition::new();
    e.process();
    e.finish()
}

/// Serves the replica's metrics on `listener` by asking the core through `pages`.
pub(crate) async fn serve(listener: tokio::net::TcpListener, pages: mpsc::Sender<PageRequest>) {
    chubby_protocol::metrics::serve(listener, move || {
        let pages = pages.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            pages.send(tx).await.ok()?;
            let mut page = rx.await.ok()?;
            page.push_str(&process_page());
            Some(page)
        }
    })
    .await;
}
