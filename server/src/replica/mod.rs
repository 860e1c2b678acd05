//! One replica's pure state machine: the Paxos replica, the database, serving and the
//! master's session logic, composed in one place, so that the replica process
//! ([`crate::node`]) and the deterministic simulator drive the very same code.
//!
//! ```text
//!  peer message, tick ──► step ──► paxos::Replica ──► Vec<Action> (the shell plans and
//!                                                     executes them: plan::Plan)
//!  client call ─────────► on_call ──► Serve ──► Effect::Reply now or later
//!  housekeeping ────────► tick ────► Serve::tick, checksum proposals
//!  Action::Deliver ─────► deliver ─► decode Entry, clamp its stamp, Db::apply,
//!                                    Serve::applied, digest check ──► Effects
//!  Action::Rejected ────► rejected ─► Serve::rejected ──► Effects
//!  Action::Role ────────► role ─────► Serve::role_changed ──► Effects
//!  serving's proposals and step-downs ──► queued Paxos inputs (take_queued)
//! ```
//!
//! Why one composite: the glue between the layers (stamping proposals, decoding entries,
//! clamping stamps, checking digests, stepping down) used to be written twice, once in the
//! node's core loop and once in the simulator, and the copies drifted (the simulator skipped
//! the digest check). Nothing here does I/O, reads a clock or draws a random number: the
//! caller passes the Paxos clock (`now`) and the wall clock (`wall`, for stamps) in.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod entry;
pub mod plan;

use std::collections::BTreeMap;

use chubby_protocol::client_msg::{CallError, MasterHint, Reply, Request};
use chubby_protocol::{Ballot, Instant, MemberAddr, NodeId, Refusal, SessionId, Slot, Value};
use tracing::{debug, error, info, warn};

use crate::db::{Change, Command, Db, Op, Outcome};
use crate::paxos::{Action, ChangeRefusal, Input, Rejection, Replica, RoleKind};
use crate::serve::{CallId, ReplicaView, Serve, ServeAction, ServeConfig};
use entry::{Entry, Stamper};

/// Digests remembered for comparison with the master's.
const CHECKSUMS_KEPT: usize = 64;

/// The principal allowed to change membership (and take backups).
pub const ADMIN_PRINCIPAL: &str = "admin";

/// What the composite tells its shell, besides Paxos actions.
// Effects live for one step; boxing replies would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Effect {
    /// Send `reply` to call `call`.
    Reply {
        /// The call.
        call: CallId,
        /// Its reply.
        reply: Reply,
    },
    /// The master decided that `session`'s lease ended and is expiring it (for observers).
    Expiring {
        /// The session.
        session: SessionId,
    },
    /// A lock was granted by the command at `command` (its index in the value) of `slot`
    /// (for observers: the simulator checks lock generations only grow).
    LockGranted {
        /// The slot.
        slot: Slot,
        /// The command's index within the slot's value.
        command: usize,
        /// The lock's generation after the grant.
        generation: chubby_protocol::Generation,
    },
    /// This replica proposed its request `request` (for latency metrics).
    Proposed {
        /// The request number.
        request: u64,
    },
    /// This replica's request `request` was applied (for latency metrics).
    OwnApplied {
        /// The request number.
        request: u64,
    },
    /// This replica's request `request` will never be applied through it.
    OwnRejected {
        /// The request number.
        request: u64,
    },
    /// Mastership ended: no proposal of this replica will be answered any more.
    MastershipEnded,
}

/// Settings of [`Composite`].
#[derive(Clone, Debug)]
pub struct CompositeConfig {
    /// Serving and session settings.
    pub serve: ServeConfig,
    /// This process's start nonce: its own commands in the log carry it.
    pub origin: u64,
    /// How often the master proposes a checksum (PML §6.2), Paxos-clock milliseconds.
    pub checksum_interval_ms: u64,
    /// Client addresses of the configured replicas, for "not master" hints (members learned
    /// from membership changes carry their own).
    pub client_addrs: BTreeMap<NodeId, String>,
}

/// One replica's pure state (see the module docs).
#[derive(Debug)]
pub struct Composite {
    paxos: Replica,
    db: Db,
    serve: Serve,
    stamper: Stamper,
    cfg: CompositeConfig,
    /// Paxos inputs serving asked for (Submits, StepDowns), for the shell's next step.
    queued: Vec<Input>,
    /// This replica's digests at the slots of checksum commands.
    checksums: BTreeMap<Slot, u64>,
    /// Set when a digest differed from the master's: what differed.
    divergence: Option<String>,
    next_checksum_at: Instant,
}

impl Composite {
    /// A replica around `paxos` (loaded from its store) and `db` (restored from its snapshot
    /// or new).
    #[must_use]
    pub fn new(cfg: CompositeConfig, paxos: Replica, db: Db) -> Composite {
        let mut stamper = Stamper::default();
        stamper.note(db.now());
        Composite {
            serve: Serve::new(cfg.serve.clone(), cfg.origin),
            next_checksum_at: Instant(cfg.checksum_interval_ms),
            paxos,
            db,
            stamper,
            cfg,
            queued: Vec::new(),
            checksums: BTreeMap::new(),
            divergence: None,
        }
    }

    // ---- Read access for shells, status and checkers. ----

    /// The Paxos replica.
    #[must_use]
    pub fn paxos(&self) -> &Replica {
        &self.paxos
    }

    /// The applied database.
    #[must_use]
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Serving state.
    #[must_use]
    pub fn serve(&self) -> &Serve {
        &self.serve
    }

    /// This process's origin number.
    #[must_use]
    pub fn origin(&self) -> u64 {
        self.cfg.origin
    }

    /// The last digest this replica computed at a checksum command: (slot, digest).
    #[must_use]
    pub fn last_checksum(&self) -> Option<(Slot, u64)> {
        self.checksums.last_key_value().map(|(s, d)| (*s, *d))
    }

    /// What differed, if this replica's database was found to diverge from the master's.
    #[must_use]
    pub fn divergence(&self) -> Option<&str> {
        self.divergence.as_deref()
    }

    /// Replica `id`'s client address: learned from a membership change, else configured.
    #[must_use]
    pub fn hint_of(&self, id: NodeId) -> Option<MasterHint> {
        if let Some(a) = self.paxos.membership().addrs().get(&id) {
            return Some(MasterHint {
                id,
                addr: chubby_protocol::cell::config::join_host_port(&a.host, a.client_port),
            });
        }
        self.cfg.client_addrs.get(&id).map(|addr| MasterHint {
            id,
            addr: addr.clone(),
        })
    }

    /// What serving needs of the Paxos replica at `now`.
    #[must_use]
    pub fn view(&self, now: Instant) -> ReplicaView {
        ReplicaView {
            role: self.paxos.role(),
            lease_held: self.paxos.lease_until(now).is_some(),
            hint: self.paxos.master_hint().and_then(|id| self.hint_of(id)),
        }
    }

    // ---- Paxos. ----

    /// Steps the Paxos replica with `input` at `now`. Stamps of values it persists (a new
    /// master's re-proposals among them) bound the stamps this replica gives later.
    pub fn step(&mut self, now: Instant, input: Input, out: &mut Vec<Action>) {
        let from = out.len();
        self.paxos.step(now, input, out);
        for action in &out[from..] {
            if let Action::Persist(batch) = action {
                for (_, entry) in &batch.entries {
                    self.stamper.observe(&entry.value.commands);
                }
            }
        }
    }

    /// Paxos inputs serving asked for since the last call (proposals, step-downs), in
    /// order: the shell steps them next.
    pub fn take_queued(&mut self) -> Vec<Input> {
        std::mem::take(&mut self.queued)
    }

    /// Whether serving asked for Paxos inputs not yet taken.
    #[must_use]
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    // ---- Actions that reach the application. ----

    /// A value was chosen at `slot` and is delivered here (exactly once per slot, in
    /// order): its commands are decoded and applied, and serving answers what waited.
    pub fn deliver(
        &mut self,
        now: Instant,
        wall: Instant,
        slot: Slot,
        value: &Value,
        effects: &mut Vec<Effect>,
    ) {
        if value.commands.is_empty() {
            self.db.advance_slot(slot);
        }
        for (index, bytes) in value.commands.iter().enumerate() {
            match Entry::decode(bytes) {
                Ok(Entry::Db {
                    origin,
                    request,
                    cmd,
                }) => {
                    self.stamper.note(cmd.now);
                    self.apply(now, wall, slot, index, origin, request, cmd, effects);
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

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        now: Instant,
        wall: Instant,
        slot: Slot,
        index: usize,
        origin: u64,
        request: u64,
        mut cmd: Command,
        effects: &mut Vec<Effect>,
    ) {
        if cmd.now < self.db.now() {
            // Deterministic on every replica (a function of the log alone), so it cannot
            // make replicas diverge; it can only happen if a master mis-stamped.
            warn!(%slot, stamp = %cmd.now, db_now = %self.db.now(), "command stamped in the past: clamped");
            cmd.now = self.db.now();
        }
        let applied = self.db.apply(slot, &cmd);
        for change in &applied.changes {
            if let Change::LockAcquired { sequencer, .. } = change {
                effects.push(Effect::LockGranted {
                    slot,
                    command: index,
                    generation: sequencer.lock_generation,
                });
            }
        }
        let own = (origin == self.cfg.origin).then_some(request);
        if let Some(request) = own {
            effects.push(Effect::OwnApplied { request });
        }
        let view = self.view(now);
        let mut out = Vec::new();
        self.serve
            .applied(&view, &self.db, now, slot, own, &cmd, &applied, &mut out);
        self.serve_actions(wall, out, effects);
        match (&cmd.op, &applied.result) {
            (Op::NewEpoch, Ok(_)) => {
                info!(epoch = %cmd.epoch, %slot, "database epoch started");
            }
            (Op::Checksum, Ok(Outcome::Checksum { digest })) => {
                // Digests are compared by slot, and one value may carry several checksum
                // commands (found by `sim cell` once it drove this code): only the first of
                // a slot counts, on every replica alike, and only it is sent for checking.
                if self.checksums.contains_key(&slot) {
                    return;
                }
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
                error!(divergence = %what, "DATABASE DIVERGENCE");
                self.divergence = Some(what);
            }
            None => debug!(%at, "no digest of mine at that slot (started later)"),
        }
    }

    /// A command submitted here will never be chosen through this replica.
    pub fn rejected(
        &mut self,
        now: Instant,
        wall: Instant,
        command: &[u8],
        reason: &Rejection,
        effects: &mut Vec<Effect>,
    ) {
        let Ok(Entry::Db {
            origin,
            request,
            cmd,
        }) = Entry::decode(command)
        else {
            return;
        };
        if origin != self.cfg.origin {
            return;
        }
        effects.push(Effect::OwnRejected { request });
        let view = self.view(now);
        let mut out = Vec::new();
        self.serve
            .rejected(&view, &self.db, now, request, &cmd.op, reason, &mut out);
        self.serve_actions(wall, out, effects);
    }

    /// The Paxos replica's role changed.
    pub fn role_changed(
        &mut self,
        now: Instant,
        wall: Instant,
        role: RoleKind,
        epoch: Option<Ballot>,
        effects: &mut Vec<Effect>,
    ) {
        if role != RoleKind::Master {
            effects.push(Effect::MastershipEnded);
        }
        let view = self.view(now);
        let mut out = Vec::new();
        self.serve.role_changed(&view, role, epoch, &mut out);
        self.serve_actions(wall, out, effects);
    }

    // ---- Clients, time, snapshots. ----

    /// Serves one session call (everything but the replica-level calls the shell answers:
    /// status, backups, membership changes).
    pub fn on_call(
        &mut self,
        now: Instant,
        wall: Instant,
        principal: &str,
        request: Request,
        call: CallId,
        effects: &mut Vec<Effect>,
    ) {
        let view = self.view(now);
        let mut out = Vec::new();
        self.serve
            .on_call(&view, &self.db, now, principal, request, call, &mut out);
        self.serve_actions(wall, out, effects);
    }

    /// Housekeeping at `now`: timed-out writes, due KeepAlives, expiries, lock-delay
    /// no-ops, and the master's periodic checksum.
    pub fn tick(&mut self, now: Instant, wall: Instant, effects: &mut Vec<Effect>) {
        let view = self.view(now);
        let mut out = Vec::new();
        self.serve.tick(&view, &self.db, now, wall, &mut out);
        if now >= self.next_checksum_at && self.serve.serving_epoch().is_some() {
            self.next_checksum_at = now.plus_ms(self.cfg.checksum_interval_ms);
            self.serve.propose_own(Op::Checksum, &mut out);
        }
        self.serve_actions(wall, out, effects);
    }

    /// The replica stops: every waiting call hears why.
    pub fn stop(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let view = self.view(now);
        let mut out = Vec::new();
        self.serve.stop(&view, &mut out);
        // Nothing proposed now would be stepped: the wall clock does not matter.
        self.serve_actions(Instant::ZERO, out, effects);
        self.queued.clear();
    }

    /// Replaces the database with a peer's snapshot (newer than what was applied); returns
    /// the old one, for the shell to drop where that is cheap.
    pub fn install(&mut self, db: Db) -> Db {
        let old = std::mem::replace(&mut self.db, db);
        self.stamper.note(self.db.now());
        self.checksums.clear();
        old
    }

    /// `chubby admin add-replica` / `remove-replica`: proposes the newest member set with
    /// one replica added or removed.
    ///
    /// # Errors
    /// Refused for a principal other than the admin, when not serving, and for a change
    /// that is not exactly one replica added or removed.
    pub fn change_members(
        &mut self,
        now: Instant,
        principal: &str,
        add: Option<MemberAddr>,
        remove: Option<NodeId>,
        out: &mut Vec<Action>,
    ) -> Result<(), CallError> {
        if principal != ADMIN_PRINCIPAL {
            return Err(CallError::Refused(Refusal::PermissionDenied));
        }
        self.serve.check_serving(&self.view(now))?;
        let mut members: Vec<NodeId> = self.paxos.membership().newest().to_vec();
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
        match self.propose_members(now, members.clone(), addrs, out) {
            Ok(()) => {
                info!(members = ?members, "membership change proposed");
                Ok(())
            }
            Err(ChangeRefusal::NotMaster { hint }) => Err(CallError::NotMaster {
                master: hint.and_then(|id| self.hint_of(id)),
            }),
            Err(e @ ChangeRefusal::Pending) => Err(CallError::Unavailable(e.to_string())),
            Err(ChangeRefusal::Invalid(why)) => Err(CallError::BadRequest(why)),
        }
    }

    /// Proposes `members` (the newest set with one replica added or removed) to Paxos
    /// directly. [`Self::change_members`] is the admin call's path; a shell that runs the
    /// replicated log alone (the simulator's `sim paxos`) changes membership through here.
    ///
    /// # Errors
    /// [`ChangeRefusal`]: not the master, another change pending, or not a one-replica
    /// change.
    pub fn propose_members(
        &mut self,
        now: Instant,
        members: Vec<NodeId>,
        addrs: Vec<MemberAddr>,
        out: &mut Vec<Action>,
    ) -> Result<(), ChangeRefusal> {
        self.paxos.propose_change(now, members, addrs, out)
    }

    // ---- Glue. ----

    /// Executes what serving asked for: replies become effects, proposals are stamped and
    /// queued for Paxos, a step-down is queued too.
    fn serve_actions(&mut self, wall: Instant, out: Vec<ServeAction>, effects: &mut Vec<Effect>) {
        for action in out {
            match action {
                ServeAction::Reply { call, reply } => effects.push(Effect::Reply { call, reply }),
                ServeAction::Expiring { session } => effects.push(Effect::Expiring { session }),
                ServeAction::StepDown { epoch } => self.queued.push(Input::StepDown { epoch }),
                ServeAction::Propose {
                    request,
                    epoch,
                    op,
                    call,
                } => {
                    effects.push(Effect::Proposed { request });
                    let cmd = Command {
                        epoch,
                        now: self.stamper.stamp(wall),
                        op,
                        call,
                    };
                    self.submit(Entry::Db {
                        origin: self.cfg.origin,
                        request,
                        cmd,
                    });
                }
            }
        }
    }

    fn submit(&mut self, entry: Entry) {
        match entry.encode() {
            Ok(command) => self.queued.push(Input::Submit { command }),
            Err(e) => error!(error = %e, "cannot encode a command: dropped"),
        }
    }

    /// Structural invariants of every layer; cheap enough to run after every step in the
    /// simulator.
    ///
    /// # Panics
    /// When an invariant is broken: that is a bug.
    pub fn check_invariants(&self) {
        self.paxos.check_invariants();
        self.serve.check_invariants();
        assert!(
            self.db.applied_slot() <= self.paxos.delivered()
                || self.paxos.delivered() == Slot::ZERO,
            "database applied beyond what Paxos delivered"
        );
        assert!(
            self.checksums.len() <= CHECKSUMS_KEPT,
            "checksums over their bound"
        );
    }
}

#[cfg(test)]
mod tests;
