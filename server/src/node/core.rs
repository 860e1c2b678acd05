//! The core loop: owns the Paxos replica, the database, the store and the transport, and
//! runs every input through them in one task (see the module docs of [`super`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chubby_protocol::cell::ReplicaConfig;
use chubby_protocol::client_msg::{CallError, MasterHint, ReplicaRole, Reply, StatusReport};
use chubby_protocol::{Ballot, Instant, MemberAddr, NodeId, PaxosMsg, Refusal, Slot, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::client_port::ClientCall;
use super::entry::{Entry, Stamper};
use super::metrics::{Metrics, PageRequest};
use super::snapshot_file::SnapshotFile;
use super::NodeError;
use crate::db::snapshot::{SnapshotInfo, SNAPSHOT_FILE_BYTES_MAX};
use crate::db::{Command, Db, Op, Outcome};
use crate::master::MasterConfig;
use crate::paxos::{Action, ChangeRefusal, Input, PersistBatch, Rejection, Replica, RoleKind};
use crate::serve::{CallId, Serve, ServeConfig};
use crate::storage::{Storage, WalStorage};
use crate::transport::{PeerAddr, PeerTransport};

/// Inputs stepped before the actions they caused are executed (bounds a group commit).
const INPUTS_PER_ROUND: usize = 1024;
/// Housekeeping period: request time-outs, lock-delay Noops, checksum requests.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// Digests remembered for comparison with the master's.
const CHECKSUMS_KEPT: usize = 64;
/// How long a batch that only raises the chosen watermark may wait for the next sync.
const CHOSEN_LAG_MAX: Duration = Duration::from_millis(100);

/// What [`Core::new`] needs.
pub(super) struct CoreParts {
    pub cfg: ReplicaConfig,
    pub replica: Replica,
    pub db: Db,
    pub storage: WalStorage,
    pub transport: PeerTransport,
    pub origin: u64,
    pub snapshots: SnapshotFile,
    pub members: Vec<NodeId>,
}

/// A call whose reply is not sent yet: where to, and what to count it as.
pub(super) struct Parked {
    pub tx: oneshot::Sender<Reply>,
    pub call: &'static str,
    pub since: std::time::Instant,
}

/// Results of snapshot work done off the core task.
enum SnapshotEvent {
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

pub(super) struct Core {
    pub(super) cfg: ReplicaConfig,
    pub(super) me: NodeId,
    pub(super) replica: Replica,
    pub(super) db: Db,
    storage: Option<WalStorage>,
    transport: PeerTransport,
    stamper: Stamper,
    origin: u64,
    /// Client calls served (pure; see crate::serve).
    pub(super) serve: Serve,
    /// Reply channels of calls serving has not answered yet.
    pub(super) replies: BTreeMap<CallId, Parked>,
    /// What the metrics endpoint shows.
    pub(super) metrics: Metrics,
    /// The last backup taken here, read in chunks by `chubby admin backup`.
    pub(super) backup: Option<(Slot, Arc<Vec<u8>>)>,
    pub(super) next_call: u64,
    /// Client calls served, KeepAlives and status calls not counted (StatusReport).
    pub(super) client_calls: u64,
    start: tokio::time::Instant,
    pub(super) inputs: Vec<Input>,
    actions: Vec<Action>,
    checksums: BTreeMap<Slot, u64>,
    divergence: Option<String>,
    next_checksum_at: Instant,
    snapshots: SnapshotFile,
    members: Vec<NodeId>,
    /// A snapshot of our own is being written.
    snapshotting: bool,
    /// The next own snapshot is due once this slot is applied.
    snapshot_due: Slot,
    snap_tx: mpsc::UnboundedSender<SnapshotEvent>,
    snap_rx: Option<mpsc::UnboundedReceiver<SnapshotEvent>>,
    /// The addresses learned from membership changes that the transport was given.
    peer_addrs: BTreeMap<NodeId, MemberAddr>,
    /// A batch raising only the chosen watermark, not yet synced, and since when (see
    /// `round`): it is written with the next batch, or after [`CHOSEN_LAG_MAX`].
    lazy: Option<(PersistBatch, std::time::Instant)>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(super) fn new(parts: CoreParts) -> Core {
        let me = NodeId(parts.cfg.id);
        let checksum_every = parts.cfg.tuning.checksum_interval_ms;
        let (snap_tx, snap_rx) = mpsc::unbounded_channel();
        let mut stamper = Stamper::default();
        stamper.note(parts.db.now());
        let snapshot_due =
            Slot(parts.snapshots.latest().0 + parts.cfg.tuning.snapshot_every_entries);
        Core {
            me,
            replica: parts.replica,
            db: parts.db,
            storage: Some(parts.storage),
            transport: parts.transport,
            stamper,
            origin: parts.origin,
            serve: Serve::new(
                ServeConfig {
                    master: MasterConfig {
                        session_lease_ms: parts.cfg.tuning.session_lease_ms,
                        session_idle_ms: parts.cfg.tuning.session_idle_ms,
                        ..MasterConfig::default()
                    },
                    request_timeout_ms: parts.cfg.tuning.request_timeout_ms,
                },
                parts.origin,
            ),
            replies: BTreeMap::new(),
            metrics: Metrics::default(),
            backup: None,
            next_call: 0,
            client_calls: 0,
            start: tokio::time::Instant::now(),
            inputs: Vec::new(),
            actions: Vec::new(),
            checksums: BTreeMap::new(),
            divergence: None,
            next_checksum_at: Instant(checksum_every),
            snapshots: parts.snapshots,
            members: parts.members,
            snapshotting: false,
            snapshot_due,
            snap_tx,
            snap_rx: Some(snap_rx),
            peer_addrs: BTreeMap::new(),
            lazy: None,
            cfg: parts.cfg,
        }
    }

    /// Milliseconds since this process started: the Paxos clock.
    pub(super) fn now(&self) -> Instant {
        let ms = self.start.elapsed().as_millis();
        Instant(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Wall-clock milliseconds since the Unix epoch: the database's clock, before stamping.
    fn wall() -> Instant {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Instant(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    pub(super) async fn run(
        mut self,
        mut peer_rx: mpsc::Receiver<(NodeId, PaxosMsg)>,
        mut client_rx: mpsc::Receiver<ClientCall>,
        mut pages_rx: mpsc::Receiver<PageRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NodeError> {
        tokio::pin!(shutdown);
        let mut snap_rx = self
            .snap_rx
            .take()
            .ok_or_else(|| NodeError::Internal("core started twice".into()))?;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first step happens at once: it starts the election timer.
        self.inputs.push(Input::Tick);
        let result = loop {
            if self.inputs.is_empty() {
                let deadline = self
                    .replica
                    .next_deadline()
                    .map(|at| self.start + Duration::from_millis(at.0));
                let timer = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut shutdown => break Ok(()),
                    msg = peer_rx.recv() => match msg {
                        Some((from, msg)) => self.inputs.push(Input::Peer { from, msg }),
                        None => break Err(NodeError::Internal("peer transport stopped".into())),
                    },
                    call = client_rx.recv() => match call {
                        Some(call) => self.on_call(call),
                        None => break Err(NodeError::Internal("client port stopped".into())),
                    },
                    () = timer => self.inputs.push(Input::Tick),
                    Some(event) = snap_rx.recv() => self.on_snapshot_event(event),
                    _ = housekeeping.tick() => self.housekeeping(),
                    Some(page) = pages_rx.recv() => {
                        let _ = page.send(self.render_metrics());
                    }
                }
            }
            // Take whatever else is ready, so one sync covers it all.
            while self.inputs.len() < INPUTS_PER_ROUND {
                if let Ok((from, msg)) = peer_rx.try_recv() {
                    self.inputs.push(Input::Peer { from, msg });
                } else if let Ok(call) = client_rx.try_recv() {
                    self.on_call(call);
                } else {
                    break;
                }
            }
            if let Err(e) = self.round().await {
                break Err(e);
            }
        };
        if let Err(e) = &result {
            error!(replica = self.me.0, error = %e, "replica stopping on a fatal error");
        }
        if let Some((batch, _)) = self.lazy.take() {
            if result.is_ok() {
                if let Err(e) = self.persist(batch).await {
                    warn!(replica = self.me.0, error = %e, "cannot record the chosen watermark at stop");
                }
            }
        }
        let mut out = Vec::new();
        let view = self.view();
        self.serve.stop(&view, &mut out);
        self.serve_actions(out);
        self.transport.shutdown().await;
        result
    }

    /// Steps every queued input, then executes the actions: one merged sync first.
    async fn round(&mut self) -> Result<(), NodeError> {
        let now = self.now();
        for input in std::mem::take(&mut self.inputs) {
            self.replica.step(now, input, &mut self.actions);
        }
        // Under a steady stream of inputs the loop never waits on the timer: tick here so
        // timers still fire.
        if self.replica.next_deadline().is_some_and(|d| d <= now) {
            self.replica.step(now, Input::Tick, &mut self.actions);
        }
        let actions = std::mem::take(&mut self.actions);
        let mut batch: Option<PersistBatch> = None;
        let mut rest = Vec::with_capacity(actions.len());
        // Sends that come before any Persist holding a vote go before the sync: the core
        // orders a Persist before every Send that depends on it (a master's Accept precedes
        // its own acceptance, so the two replicas' syncs overlap).
        let mut barrier = false;
        for action in actions {
            match action {
                Action::Send { to, msg } if !barrier => {
                    // Loss is tolerated by Paxos; the transport logs drops.
                    let _ = self.transport.send(to, msg);
                }
                Action::Persist(b) => {
                    barrier |= !b.raises_only_chosen();
                    // Values re-proposed by a new master pass through here before they
                    // are delivered: their stamps bound the ones it gives (entry.rs).
                    for (_, entry) in &b.entries {
                        self.stamper.observe(&entry.value.commands);
                    }
                    match &mut batch {
                        Some(merged) => merged.merge(b),
                        None => batch = Some(b),
                    }
                }
                other => rest.push(other),
            }
        }
        let batch = match (self.lazy.take(), batch) {
            (Some((mut held, since)), b) => {
                if let Some(b) = b {
                    held.merge(b);
                }
                Some((held, since))
            }
            (None, b) => b.map(|b| (b, std::time::Instant::now())),
        };
        if let Some((batch, since)) = batch {
            if batch.raises_only_chosen() && since.elapsed() < CHOSEN_LAG_MAX {
                // Nothing in it is a vote or an entry: what it says (these slots are chosen)
                // stays true whether or not it is on disk, so it need not delay the
                // deliveries and replies behind it. It goes to disk with the next batch.
                self.lazy = Some((batch, since));
            } else {
                self.persist(batch).await?;
            }
        }
        for action in rest {
            match action {
                Action::Persist(_) => {}
                Action::Send { to, msg } => {
                    // Loss is tolerated by Paxos; the transport logs drops.
                    let _ = self.transport.send(to, msg);
                }
                Action::Deliver { slot, value } => self.deliver(slot, &value),
                Action::Rejected { command, reason } => self.rejected(&command, &reason),
                Action::Role { role, epoch } => self.role_changed(role, epoch),
                Action::FetchSnapshot { from, after } => self.fetch_snapshot(from, after),
            }
        }
        self.maybe_snapshot();
        self.sync_peers();
        Ok(())
    }

    /// Gives the transport every replica address a membership change taught us.
    fn sync_peers(&mut self) {
        if self.replica.membership().addrs() == &self.peer_addrs {
            return;
        }
        let addrs = self.replica.membership().addrs().clone();
        for (id, addr) in &addrs {
            if self.peer_addrs.get(id) == Some(addr) || *id == self.me {
                continue;
            }
            let endpoint =
                chubby_protocol::cell::config::join_host_port(&addr.host, addr.peer_port);
            match std::net::ToSocketAddrs::to_socket_addrs(&endpoint).map(|mut a| a.next()) {
                Ok(Some(sock)) => {
                    info!(replica = self.me.0, peer = id.0, addr = %endpoint, "peer address learned from a membership change");
                    self.transport.add_peer(
                        *id,
                        PeerAddr {
                            addr: sock,
                            server_name: addr.host.clone(),
                        },
                    );
                }
                Ok(None) | Err(_) => {
                    warn!(replica = self.me.0, peer = id.0, addr = %endpoint, "cannot resolve a new member's address");
                }
            }
        }
        self.peer_addrs = addrs;
    }

    // ---- Snapshots (PML §5.5): taken off this task, fetched from peers. ----

    /// Starts a snapshot of the database when enough was applied since the last one. The
    /// freeze is O(1)-ish (copy-on-write); encoding, writing and dropping the copy happen
    /// on a blocking thread.
    fn maybe_snapshot(&mut self) {
        // Not while a chosen watermark waits to be written: a snapshot ahead of the durable
        // watermark would make the next start adopt its slot as chosen without the member
        // map's completeness for it (it is written with the next batch, in 100 ms at most).
        if self.snapshotting || self.db.applied_slot() < self.snapshot_due || self.lazy.is_some() {
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
        let frozen = self.db.freeze();
        let members = self.members.clone();
        let tx = self.snap_tx.clone();
        tokio::task::spawn_blocking(move || {
            let slot = frozen.slot();
            let bytes = frozen.encode(&members);
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
        if let Err(e) = self.serve.check_serving(&self.view()) {
            return refuse(reply, e, &mut self.metrics);
        }
        let epoch = self.serve.serving_epoch();
        self.encode_off_task(move |slot, bytes| SnapshotEvent::Backup {
            slot,
            bytes: Arc::new(bytes),
            reply,
            epoch,
        });
    }

    fn on_snapshot_event(&mut self, event: SnapshotEvent) {
        let every = self.cfg.tuning.snapshot_every_entries;
        match event {
            SnapshotEvent::Backup {
                slot,
                bytes,
                reply,
                epoch,
            } => {
                if epoch.is_none() || self.serve.serving_epoch() != epoch {
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
                self.snapshot_due = Slot(self.db.applied_slot().0 + every);
                error!(replica = self.me.0, error = %e,
                    "cannot write a snapshot: the log is not truncated; retrying later");
            }
            SnapshotEvent::Fetched(Ok(fetched)) => {
                let (db, info) = *fetched;
                let slot = info.slot;
                if slot > self.db.applied_slot() {
                    let old = std::mem::replace(&mut self.db, db);
                    // Freeing a large database takes milliseconds: not on this task.
                    tokio::task::spawn_blocking(move || drop(old));
                    self.stamper.note(self.db.now());
                    self.checksums.clear();
                    self.snapshot_due = Slot(slot.0 + every);
                    self.metrics.snapshot_installed();
                    info!(replica = self.me.0, %slot, digest = self.db.digest().0,
                        "installed a peer's snapshot");
                }
                self.inputs.push(Input::SnapshotInstalled { slot });
            }
            SnapshotEvent::Fetched(Err(e)) => {
                warn!(replica = self.me.0, error = %e, "snapshot fetch failed");
                self.inputs.push(Input::SnapshotFetchFailed);
            }
        }
    }

    /// Fetches `from`'s snapshot, verifies it and makes it durable, off this task.
    fn fetch_snapshot(&mut self, from: NodeId, after: Slot) {
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

    async fn persist(&mut self, batch: PersistBatch) -> Result<(), NodeError> {
        let mut storage = self
            .storage
            .take()
            .ok_or_else(|| NodeError::Internal("store lost by an earlier failure".into()))?;
        let since = std::time::Instant::now();
        let (storage, result) = tokio::task::spawn_blocking(move || {
            let result = storage.persist(&batch);
            (storage, result)
        })
        .await
        .map_err(|e| NodeError::Internal(format!("storage thread: {e}")))?;
        self.storage = Some(storage);
        self.metrics.synced(since);
        result.map_err(NodeError::Storage)
    }

    // ---- Deliveries: apply to the database, answer parked calls. ----

    fn deliver(&mut self, slot: Slot, value: &Value) {
        self.metrics.chosen_value(value.commands.len());
        if value.commands.is_empty() {
            self.db.advance_slot(slot);
        }
        for bytes in &value.commands {
            match Entry::decode(bytes) {
                Ok(Entry::Db {
                    origin,
                    request,
                    cmd,
                }) => {
                    self.stamper.note(cmd.now);
                    self.apply(slot, origin, request, cmd);
                }
                Ok(Entry::DigestCheck { slot: at, digest }) => {
                    self.db.advance_slot(slot);
                    self.check_digest(at, digest);
                }
                Err(e) => {
                    // Every replica decodes the same bytes and skips them alike.
                    error!(%slot, error = %e, "undecodable command in the log: skipped");
                    self.db.advance_slot(slot);
                }
            }
        }
    }

    fn apply(&mut self, slot: Slot, origin: u64, request: u64, mut cmd: Command) {
        if cmd.now < self.db.now() {
            // Deterministic on every replica (a function of the log alone), so it cannot
            // make replicas diverge; it can only happen if a master mis-stamped.
            warn!(%slot, stamp = %cmd.now, db_now = %self.db.now(), "command stamped in the past: clamped");
            cmd.now = self.db.now();
        }
        let applied = self.db.apply(slot, &cmd);
        let own = (origin == self.origin).then_some(request);
        if let Some(request) = own {
            self.metrics.own_applied(request);
        }
        let view = self.view();
        let now = self.now();
        let mut out = Vec::new();
        self.serve
            .applied(&view, &self.db, now, slot, own, &cmd, &applied, &mut out);
        self.serve_actions(out);
        match (&cmd.op, &applied.result) {
            (Op::NewEpoch, Ok(_)) => {
                info!(replica = self.me.0, epoch = %cmd.epoch, %slot, "database epoch started");
            }
            (Op::Checksum, Ok(Outcome::Checksum { digest })) => {
                self.checksums.insert(slot, digest.0);
                while self.checksums.len() > CHECKSUMS_KEPT {
                    self.checksums.pop_first();
                }
                if self.serve.serving_epoch() == Some(cmd.epoch) {
                    self.submit(Entry::DigestCheck {
                        slot,
                        digest: digest.0,
                    });
                }
            }
            _ => {}
        }
    }

    fn check_digest(&mut self, at: Slot, master_digest: u64) {
        match self.checksums.get(&at) {
            Some(&mine) if mine == master_digest => {
                debug!(%at, digest = mine, "database digest matches the master's");
            }
            Some(&mine) => {
                let what = format!(
                    "at slot {at} this replica's digest is {mine:016x}, the master's {master_digest:016x}"
                );
                error!(replica = self.me.0, divergence = %what, "DATABASE DIVERGENCE");
                self.divergence = Some(what);
            }
            None => debug!(%at, "no digest of mine at that slot (started later)"),
        }
    }

    fn rejected(&mut self, command: &[u8], reason: &Rejection) {
        let Ok(Entry::Db {
            origin,
            request,
            cmd,
        }) = Entry::decode(command)
        else {
            return;
        };
        if origin != self.origin {
            return;
        }
        self.metrics.forget(request);
        let view = self.view();
        let now = self.now();
        let mut out = Vec::new();
        self.serve
            .rejected(&view, &self.db, now, request, &cmd.op, reason, &mut out);
        self.serve_actions(out);
    }

    fn role_changed(&mut self, role: RoleKind, epoch: Option<Ballot>) {
        if role == RoleKind::Master {
            info!(
                replica = self.me.0,
                ?epoch,
                "became master; starting the epoch"
            );
        } else if self.serve.serving_epoch().is_some() {
            warn!(replica = self.me.0, ?role, "lost mastership");
        }
        if role != RoleKind::Master {
            self.metrics.forget_proposals();
            // A backup is only read at the master that took it.
            self.backup = None;
        }
        let view = self.view();
        let mut out = Vec::new();
        self.serve.role_changed(&view, role, epoch, &mut out);
        self.serve_actions(out);
    }

    // ---- Client calls (the rest is in calls.rs). ----

    /// `chubby admin add-replica` / `remove-replica`: proposes the newest member set with
    /// one replica added or removed.
    pub(super) fn change_members(
        &mut self,
        principal: &str,
        add: Option<MemberAddr>,
        remove: Option<NodeId>,
    ) -> Result<(), CallError> {
        if principal != super::ADMIN_PRINCIPAL {
            return Err(CallError::Refused(Refusal::PermissionDenied));
        }
        self.serve.check_serving(&self.view())?;
        let mut members: Vec<NodeId> = self.replica.membership().newest().to_vec();
        let mut addrs = Vec::new();
        match (add, remove) {
            (Some(addr), None) => {
                if members.contains(&addr.id) {
                    return Err(CallError::BadRequest(format!(
                        "replica {} is already a member",
                        addr.id.0
                    )));
                }
                members.push(addr.id);
                addrs.push(addr);
            }
            (None, Some(id)) => {
                if !members.contains(&id) {
                    return Err(CallError::BadRequest(format!(
                        "replica {} is not a member",
                        id.0
                    )));
                }
                members.retain(|m| *m != id);
            }
            _ => {
                return Err(CallError::BadRequest(
                    "a change adds or removes exactly one replica".into(),
                ))
            }
        }
        members.sort();
        let now = self.now();
        let result = self
            .replica
            .propose_change(now, members.clone(), addrs, &mut self.actions);
        match result {
            Ok(()) => {
                info!(replica = self.me.0, members = ?members, "membership change proposed");
                Ok(())
            }
            Err(ChangeRefusal::NotMaster { hint }) => Err(CallError::NotMaster {
                master: hint.and_then(|id| self.hint_of(id)),
            }),
            Err(e @ ChangeRefusal::Pending) => Err(CallError::Unavailable(e.to_string())),
            Err(ChangeRefusal::Invalid(why)) => Err(CallError::BadRequest(why)),
        }
    }

    /// Stamps `op` under `epoch` and queues it for proposal as request `request`.
    pub(super) fn submit_command_as(&mut self, request: u64, epoch: Ballot, op: Op) {
        self.metrics.proposed(request);
        let cmd = Command {
            epoch,
            now: self.stamper.stamp(Self::wall()),
            op,
        };
        self.submit(Entry::Db {
            origin: self.origin,
            request,
            cmd,
        });
    }

    fn submit(&mut self, entry: Entry) {
        match entry.encode() {
            Ok(command) => self.inputs.push(Input::Submit { command }),
            Err(e) => error!(error = %e, "cannot encode a command: dropped"),
        }
    }

    // ---- Housekeeping. ----

    fn housekeeping(&mut self) {
        let view = self.view();
        let now = self.now();
        let mut out = Vec::new();
        self.serve
            .tick(&view, &self.db, now, Self::wall(), &mut out);
        if now >= self.next_checksum_at && self.serve.serving_epoch().is_some() {
            self.next_checksum_at = now.plus_ms(self.cfg.tuning.checksum_interval_ms);
            self.serve.propose_own(Op::Checksum, &mut out);
        }
        self.serve_actions(out);
    }

    // ---- Status. ----

    /// Replica `id`'s client address: learned from a membership change, else configured.
    pub(super) fn hint_of(&self, id: NodeId) -> Option<MasterHint> {
        if let Some(a) = self.replica.membership().addrs().get(&id) {
            return Some(MasterHint {
                id,
                addr: chubby_protocol::cell::config::join_host_port(&a.host, a.client_port),
            });
        }
        self.cfg
            .members
            .iter()
            .find(|m| m.id == id.0)
            .map(|m| MasterHint {
                id,
                addr: m.client_endpoint(),
            })
    }

    pub(super) fn status(&self) -> StatusReport {
        let now = self.now();
        let role = if !self.replica.is_voter() {
            ReplicaRole::Rebuilding
        } else {
            match self.replica.role() {
                RoleKind::Follower => ReplicaRole::Follower,
                RoleKind::Candidate => ReplicaRole::Candidate,
                RoleKind::Master => ReplicaRole::Master,
            }
        };
        StatusReport {
            id: self.me,
            role,
            epoch: self.db.epoch(),
            master: self.replica.master_hint().and_then(|id| self.hint_of(id)),
            lease_remaining_ms: self
                .replica
                .lease_until(now)
                .map(|until| until.ms_since(now)),
            applied: self.db.applied_slot(),
            chosen_through: self.replica.chosen_through(),
            known_chosen: self.replica.known_chosen_through(),
            snapshot: self.snapshots.latest(),
            log_entries: self.replica.log_len() as u64,
            digest: self.db.digest().0,
            last_checksum: self.checksums.last_key_value().map(|(s, d)| (*s, *d)),
            divergence: self.divergence.clone(),
            members: {
                let mut ids = self.replica.membership().everyone();
                ids.extend(self.cfg.members.iter().map(|m| NodeId(m.id)));
                ids.extend(self.replica.membership().addrs().keys().copied());
                ids.into_iter().filter_map(|id| self.hint_of(id)).collect()
            },
            member_sets: self.replica.membership().to_wire().sets,
            sessions: self.db.sessions().count() as u64,
            client_calls: self.client_calls,
        }
    }
}
