//! Snapshots and backups on the core task (PML §5.5): our own taken off the task every so many
//! slots, a peer's fetched, verified and installed, and `chubby admin backup` frozen and encoded
//! off the task.

use std::sync::Arc;

use chubby_protocol::client_msg::{CallError, Reply};
use chubby_protocol::{Ballot, NodeId, Refusal, Slot};
use tracing::{error, info, warn};

use super::core::{Core, Parked};
use super::metrics::Metrics;
use crate::db::snapshot::{SnapshotInfo, SNAPSHOT_FILE_BYTES_MAX};
use crate::db::Db;
use crate::paxos::Input;

/// Results of snapshot work done off the core task.
pub(super) enum SnapshotEvent {
    /// A backup was encoded (`chubby admin backup`); hold it and answer the caller.
    Backup {
        slot: Slot,
        bytes: Arc<Vec<u8>>,
        reply: Parked,
        /// The epoch this replica served as master when the backup was taken.
        epoch: Option<Ballot>,
    },
    /// A snapshot of our own database was written (slot, bytes), found already covered by
    /// the file (`None`), or failed.
    Written(Result<Option<(Slot, usize)>, String>),
    /// A peer's snapshot was fetched, verified and made durable, or not.
    Fetched(Result<Box<(Db, SnapshotInfo)>, String>),
}

impl Core {
    /// Starts a snapshot of the database when enough was applied since the last one. The
    /// freeze is O(1)-ish (copy-on-write); encoding, writing and dropping the copy happen
    /// on a blocking thread.
    pub(super) fn maybe_snapshot(&mut self) {
        // Not while a chosen watermark waits to be written: a snapshot ahead of the durable
        // watermark would make the next start adopt its slot as chosen without the member
        // map's completeness for it (it is written with the next batch, in 100 ms at most).
        if self.snapshotting
            || self.composite.db().applied_slot() < self.snapshot_due
            || self.planner.holds_watermark()
        {
            return;
        }
        self.snapshotting = true;
        let file = self.snapshots.clone();
        self.encode_off_task(move |slot, bytes| {
            let result = file
                .store(slot, &bytes)
                .map(|written| written.then_some((slot, bytes.len())))
                .map_err(|e| e.to_string());
            SnapshotEvent::Written(result)
        });
    }

    /// Freezes the applied database (copy-on-write, O(1)-ish here) and encodes it as a
    /// snapshot on a blocking thread; `then` runs there too, and what it returns comes back
    /// to this task ([`Core::on_snapshot_event`]). The frozen copy is dropped there as well.
    fn encode_off_task(&self, then: impl FnOnce(Slot, Vec<u8>) -> SnapshotEvent + Send + 'static) {
        let frozen = self.composite.db().freeze();
        let members = self.members.clone();
        // The member sets as of now: complete at least through the frozen slot.
        let member_sets = self.composite.paxos().membership().to_wire();
        let tx = self.snap_tx.clone();
        tokio::task::spawn_blocking(move || {
            let slot = frozen.slot();
            let bytes = frozen.encode(&members, &member_sets);
            drop(frozen);
            let _ = tx.send(then(slot, bytes));
        });
    }

    /// `chubby admin backup`: freezes the applied database now and encodes it as a snapshot
    /// off this task; the caller is answered once it is held ([`SnapshotEvent::Backup`]).
    /// The applied state is one the database really passed through, and it includes every
    /// write this master acknowledged. Sessions, handles and locks are in it too.
    pub(super) fn take_backup(&mut self, principal: &str, reply: Parked) {
        let refuse = |reply: Parked, e: CallError, m: &mut Metrics| {
            let answer = Reply::Err(e);
            m.answered(reply.call, reply.since, &answer);
            let _ = reply.tx.send(answer);
        };
        if principal != super::ADMIN_PRINCIPAL {
            return refuse(
                reply,
                CallError::Refused(Refusal::PermissionDenied),
                &mut self.metrics,
            );
        }
        if let Err(e) = self.composite.serve().check_serving(&self.view()) {
            return refuse(reply, e, &mut self.metrics);
        }
        let epoch = self.composite.serve().serving_epoch();
        self.encode_off_task(move |slot, bytes| SnapshotEvent::Backup {
            slot,
            bytes: Arc::new(bytes),
            reply,
            epoch,
        });
    }

    pub(super) fn on_snapshot_event(&mut self, event: SnapshotEvent) {
        let every = self.cfg.tuning.snapshot_every_entries;
        match event {
            SnapshotEvent::Backup {
                slot,
                bytes,
                reply,
                epoch,
            } => {
                if epoch.is_none() || self.composite.serve().serving_epoch() != epoch {
                    // Mastership moved while it was encoded: only the master holds one.
                    let answer = Reply::Err(CallError::Unavailable(
                        "mastership changed while the backup was taken: take it again".into(),
                    ));
                    self.metrics.answered(reply.call, reply.since, &answer);
                    let _ = reply.tx.send(answer);
                    return;
                }
                info!(replica = self.me.0, %slot, bytes = bytes.len(), "backup taken");
                self.metrics.backup_taken(bytes.len());
                let answer = Reply::Ok(chubby_protocol::client_msg::Answer::Backup {
                    slot,
                    bytes: bytes.len() as u64,
                });
                self.backup = Some((slot, bytes));
                self.metrics.answered(reply.call, reply.since, &answer);
                let _ = reply.tx.send(answer);
            }
            SnapshotEvent::Written(Ok(None)) => {
                // A fetched snapshot at least as new landed first; it set the next due slot.
                self.snapshotting = false;
            }
            SnapshotEvent::Written(Ok(Some((slot, bytes)))) => {
                self.snapshotting = false;
                self.metrics.snapshot_written(bytes);
                self.snapshot_due = self.snapshot_due.max(Slot(slot.0 + every));
                let through = Slot(slot.0.saturating_sub(self.cfg.tuning.log_keep_entries));
                info!(replica = self.me.0, %slot, bytes, truncate_through = %through,
                    "snapshot written");
                self.inputs.push(Input::SnapshotTaken { slot: through });
            }
            SnapshotEvent::Written(Err(e)) => {
                self.snapshotting = false;
                self.snapshot_due = Slot(self.composite.db().applied_slot().0 + every);
                error!(replica = self.me.0, error = %e,
                    "cannot write a snapshot: the log is not truncated; retrying later");
            }
            SnapshotEvent::Fetched(Ok(fetched)) => {
                let (db, info) = *fetched;
                let slot = info.slot;
                if slot > self.composite.db().applied_slot() {
                    let old = self.composite.install(db);
                    // Freeing a large database takes milliseconds: not on this task.
                    tokio::task::spawn_blocking(move || drop(old));
                    self.snapshot_due = Slot(slot.0 + every);
                    self.metrics.snapshot_installed();
                    info!(replica = self.me.0, %slot, digest = self.composite.db().digest().0,
                        "installed a peer's snapshot");
                }
                self.inputs.push(Input::SnapshotInstalled {
                    slot,
                    members: info.member_sets,
                });
            }
            SnapshotEvent::Fetched(Err(e)) => {
                warn!(replica = self.me.0, error = %e, "snapshot fetch failed");
                self.inputs.push(Input::SnapshotFetchFailed);
            }
        }
    }

    /// Fetches `from`'s snapshot, verifies it and makes it durable, off this task.
    pub(super) fn fetch_snapshot(&mut self, from: NodeId, after: Slot) {
        let fetcher = self.transport.snapshot_fetcher();
        let file = self.snapshots.clone();
        let tx = self.snap_tx.clone();
        tokio::spawn(async move {
            let result = async {
                let bytes = fetcher
                    .fetch(from, after, SNAPSHOT_FILE_BYTES_MAX)
                    .await
                    .map_err(|e| format!("fetching from {from}: {e}"))?;
                tokio::task::spawn_blocking(move || {
                    let (db, info) = Db::restore(&bytes)
                        .map_err(|e| format!("snapshot from {from} refused: {e}"))?;
                    if info.slot <= after {
                        return Err(format!(
                            "snapshot from {from} covers slot {} only; we have {after}",
                            info.slot
                        ));
                    }
                    file.store(info.slot, &bytes).map_err(|e| e.to_string())?;
                    Ok(Box::new((db, info)))
                })
                .await
                .map_err(|e| format!("snapshot thread: {e}"))?
            }
            .await;
            let _ = tx.send(SnapshotEvent::Fetched(result));
        });
    }
}
