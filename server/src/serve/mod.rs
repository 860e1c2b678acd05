//! Serving client calls at the master, pure: checks, reads answered from the database
//! under the master's lease, writes gated by [`Master`] and proposed, KeepAlives parked until
//! the master answers them, and the answers of applied writes (DESIGN §4).
//!
//! ```text
//!  call (CallId) ──► on_call ──► Reply now (reads, refusals)
//!                             └► parked: KeepAlive (Master decides when), write gated
//!                                (caches invalidated first) ──► Propose {request, op}
//!  applied command ──► applied ──► Master hooks (events, late invalidations, sessions)
//!                              └► Reply to the call that proposed it
//!  tick(now, wall) ──► timed-out writes ("outcome unknown"), due KeepAlives, expiries,
//!                      idle sessions, a Noop to end due lock-delays
//! ```
//!
//! Why a module of its own: the replica process ([`crate::node`]) and the deterministic
//! simulator drive the very same logic. It owns no channel, clock, socket or disk: callers
//! name each call by a [`CallId`], pass the time in, and execute the [`ServeAction`]s
//! (send a reply, stamp and propose a command). What it needs of the Paxos replica comes in
//! a [`ReplicaView`]; the database is lent to each step.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

mod shape;

use std::collections::BTreeMap;
use std::sync::Arc;

use chubby_protocol::client_msg::{
    Answer, Call, CallError, CallNumber, MasterHint, Reply, Request,
};
use chubby_protocol::db::FILE_BYTES_MAX;
use chubby_protocol::{
    Ballot, CacheToken, HandleId, InstanceNumber, Instant, OpenMode, Refusal, SessionId, Slot,
};
use tracing::{debug, info, warn};

use crate::db::calls::Seen;
use crate::db::{Applied, Change, Command, Db, Op, Outcome};
use crate::master::{Master, MasterAction, MasterConfig, NoticeCounts};
use crate::paxos::{Rejection, RoleKind};
use shape::{handle_path, op_of, op_session, session_of};

/// The caller's name for one client call awaiting its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// What serving needs to know of the Paxos replica, read just before each step.
#[derive(Clone, Debug)]
pub struct ReplicaView {
    /// The replica's role.
    pub role: RoleKind,
    /// The master lease is held now.
    pub lease_held: bool,
    /// Where callers should go instead (the replica's master hint, resolved to an address).
    pub hint: Option<MasterHint>,
}

/// What the caller must do.
#[derive(Clone, Debug)]
pub enum ServeAction {
    /// Send `reply` to call `call`.
    Reply {
        /// The call.
        call: CallId,
        /// Its reply.
        reply: Reply,
    },
    /// Another master's epoch started in the log after this replica became master in
    /// `epoch`: its epoch is stale and every command it proposes would be refused. The
    /// caller steps the Paxos replica down ([`crate::paxos::Input::StepDown`]).
    StepDown {
        /// This replica's (stale) master epoch.
        epoch: Ballot,
    },
    /// The master decided that `session`'s lease ended and is expiring it (for observers:
    /// the simulator checks the client's own lease had ended by now; nothing to execute).
    Expiring {
        /// The session.
        session: SessionId,
    },
    /// Stamp `op` under `epoch` and submit it to Paxos as this origin's `request`; its
    /// delivery comes back through [`Serve::applied`], its rejection through
    /// [`Serve::rejected`].
    Propose {
        /// Request number (unique per origin).
        request: u64,
        /// The master's epoch.
        epoch: Ballot,
        /// The operation.
        op: Op,
        /// The client's number for the call (stamped on the command: `db::calls`).
        call: Option<CallNumber>,
    },
}

/// Settings of [`Serve`].
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Session leases and idleness.
    pub master: MasterConfig,
    /// How long a proposed write may wait to be applied before its caller hears that the
    /// outcome is unknown.
    pub request_timeout_ms: u64,
}

/// A write waiting at its gate for caches to be invalidated, or held behind earlier writes.
#[derive(Debug)]
struct Gated {
    op: Op,
    call: Option<CallId>,
    number: Option<CallNumber>,
    what: &'static str,
}

/// A write this master gated or proposed that is not yet applied.
#[derive(Debug)]
struct Flying {
    session: Option<SessionId>,
    rename: bool,
}

/// A proposed command waiting to be applied.
#[derive(Debug)]
struct Pending {
    /// Who gets the answer (none for the master's own commands).
    call: Option<CallId>,
    deadline: Instant,
    what: &'static str,
}

/// Serving state of one replica (see the module docs).
#[derive(Debug)]
pub struct Serve {
    cfg: ServeConfig,
    /// This replica's origin: its own commands in the log carry it.
    origin: u64,
    next_request: u64,
    pending: BTreeMap<u64, Pending>,
    /// Set while master: the epoch it became master with.
    master_epoch: Option<Ballot>,
    /// The master's NewEpoch was applied: it may serve.
    serving: bool,
    /// The session logic, while serving.
    master: Option<Master>,
    /// KeepAlives parked at the master, by the token given to [`Master::keepalive`].
    keepalives: BTreeMap<u64, CallId>,
    next_token: u64,
    gated: BTreeMap<u64, Gated>,
    held: Vec<Gated>,
    flying: BTreeMap<u64, Flying>,
    /// The lock-delay deadline a Noop was last proposed for.
    noop_for: Option<Instant>,
    /// What earlier masterships of this replica told sessions.
    retired: NoticeCounts,
}

impl Serve {
    /// A replica that is not (yet) master.
    #[must_use]
    pub fn new(cfg: ServeConfig, origin: u64) -> Serve {
        Serve {
            cfg,
            origin,
            next_request: 1,
            pending: BTreeMap::new(),
            master_epoch: None,
            serving: false,
            master: None,
            keepalives: BTreeMap::new(),
            next_token: 0,
            gated: BTreeMap::new(),
            held: Vec::new(),
            flying: BTreeMap::new(),
            noop_for: None,
            retired: NoticeCounts::default(),
        }
    }

    /// This replica's origin number.
    #[must_use]
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The epoch this replica serves as master, once its NewEpoch was applied.
    #[must_use]
    pub fn serving_epoch(&self) -> Option<Ballot> {
        self.master_epoch.filter(|_| self.serving)
    }

    /// What this replica's masterships told sessions, in all.
    #[must_use]
    pub fn notice_counts(&self) -> NoticeCounts {
        self.retired + self.master.as_ref().map(Master::counts).unwrap_or_default()
    }

    /// The session logic, while serving.
    #[must_use]
    pub fn master(&self) -> Option<&Master> {
        self.master.as_ref()
    }

    /// Master, epoch started, lease held: may answer from the database and propose.
    ///
    /// # Errors
    /// `NotMaster` (with the hint) or `Unavailable` saying why.
    pub fn check_serving(&self, v: &ReplicaView) -> Result<(), CallError> {
        if v.role != RoleKind::Master {
            return Err(CallError::NotMaster {
                master: v.hint.clone(),
            });
        }
        if !self.serving {
            return Err(CallError::Unavailable(
                "the master is starting its epoch; retry shortly".into(),
            ));
        }
        if !v.lease_held {
            return Err(CallError::Unavailable(
                "the master's lease lapsed; retry shortly".into(),
            ));
        }
        Ok(())
    }

    /// Serves one session call (everything but `Status` and `ChangeMembers`, which need the
    /// replica itself). The reply comes as a [`ServeAction::Reply`] now or later.
    #[allow(clippy::too_many_arguments)]
    pub fn on_call(
        &mut self,
        v: &ReplicaView,
        db: &Db,
        now: Instant,
        principal: &str,
        request: Request,
        call_id: CallId,
        out: &mut Vec<ServeAction>,
    ) {
        let reply = |out: &mut Vec<ServeAction>, r: Result<Answer, CallError>| {
            out.push(ServeAction::Reply {
                call: call_id,
                reply: match r {
                    Ok(a) => Reply::Ok(a),
                    Err(e) => Reply::Err(e),
                },
            });
        };
        if let Err(e) = self.check_epoch(v, request.epoch, &request.call) {
            return reply(out, Err(e));
        }
        let call = request.call;
        let number = request.number;
        let what = call.name();
        if let Some(session) = session_of(&call) {
            let keepalive = matches!(call, Call::KeepAlive { .. });
            if let Err(e) = self.check_session(db, principal, session, now, keepalive) {
                return reply(out, Err(e));
            }
        }
        let refused = CallError::Refused;
        let kept = session_of(&call)
            .zip(call.handle())
            .and_then(|(session, handle)| {
                let master = self.master.as_ref()?;
                master.kept().get(session, handle).cloned()
            });
        let answer = match call {
            Call::KeepAlive { session, acked } => {
                let token = self.next_token;
                self.next_token += 1;
                self.keepalives.insert(token, call_id);
                let mut acts = Vec::new();
                if let Some(m) = &mut self.master {
                    m.keepalive(session, acked, token, now, &mut acts);
                }
                self.master_actions(v, db, now, acts, out);
                return;
            }
            Call::GetContentsAndStat { session, handle } => db
                .read_in(session, handle, kept.as_ref())
                .map_err(refused)
                .map(|(stat, contents)| {
                    let path = handle_path(db, session, handle, kept.as_ref());
                    let cache = self.cache_token(session, path);
                    Answer::Contents {
                        contents: contents.as_ref().clone(),
                        stat,
                        cache,
                    }
                }),
            Call::GetStat { session, handle } => {
                let stat = db.stat_in(session, handle, kept.as_ref());
                stat.map_err(refused).map(|stat| {
                    let path = handle_path(db, session, handle, kept.as_ref());
                    let cache = self.cache_token(session, path);
                    Answer::Stat {
                        stat: Some(stat),
                        cache,
                    }
                })
            }
            Call::StatPath { session, path } => db
                .stat_path_checked(session, &path)
                .map_err(refused)
                .map(|stat| {
                    let cache = self.cache_token(session, Some(Arc::from(path.as_str())));
                    Answer::Stat { stat, cache }
                }),
            // Listings are not cached (their children's metadata would need invalidating
            // with every child write): no token, and the session is not recorded.
            Call::ReadDir { session, handle } => db
                .read_dir_in(session, handle, kept.as_ref())
                .map_err(refused)
                .map(|children| Answer::Dir {
                    children,
                    cache: None,
                }),
            Call::GetSequencer { session, handle } => db
                .lock_state_in(session, handle, kept.as_ref())
                .map_err(refused)
                .map(Answer::Lock),
            Call::LockHolders { session, path } => db
                .lock_holders_checked(session, &path)
                .map_err(refused)
                .map(|(mode, holders)| Answer::Holders { mode, holders }),
            Call::CheckSequencer { sequencer } => {
                Ok(Answer::SequencerValid(db.check_sequencer(&sequencer)))
            }
            Call::Reopen {
                session,
                handle,
                path,
            } => db
                .reopen_in(session, handle, &path, kept.as_ref())
                .map_err(refused)
                .map(|stat| Answer::Stat {
                    stat: Some(stat),
                    cache: None,
                }),
            Call::Reannounce {
                session,
                handle,
                path,
                instance,
                mode,
                lock_delay_ms,
            } => self.reannounce(db, session, handle, &path, instance, mode, lock_delay_ms),
            Call::Close { session, handle }
                if handle.is_volatile() && db.handle(session, handle).is_none() =>
            {
                // Kept in memory only: nothing to tell the log (Chubby §2.9). Closing a
                // handle an earlier master kept is a no-op too: it went with that master.
                if let Some(m) = &mut self.master {
                    m.kept_mut().remove(session, handle);
                }
                Ok(Answer::Done)
            }
            call => match op_of(principal, call) {
                Ok(op) => {
                    // A copy of a numbered call the log already answered: that answer,
                    // with no Paxos round (`db::calls`).
                    let seen = number
                        .zip(op.session())
                        .map(|(n, s)| (n.number, db.call_seen(s, n.number)));
                    match seen {
                        Some((_, Seen::Answered(result))) => {
                            debug!(what, "a call sent again: answered from its record");
                            (*result).map(|o| self.answer_of(&o)).map_err(refused)
                        }
                        Some((n, Seen::Forgotten)) => {
                            Err(refused(Refusal::CallForgotten { number: n }))
                        }
                        Some((_, Seen::New)) | None if op_too_large(&op) => {
                            Err(refused(Refusal::TooLarge))
                        }
                        Some((_, Seen::New)) | None => match self.in_memory(db, op) {
                            InMemory::Answered(answer) => answer,
                            InMemory::Write(op) => {
                                self.write(v, db, now, op, Some(call_id), number, what, out);
                                return;
                            }
                        },
                    }
                }
                Err(e) => Err(e),
            },
        };
        reply(out, answer);
    }

    /// What the master's memory does with a write call's operation (`master/kept.rs`):
    /// an Open of an existing node that needs nothing of the log is answered from it; a
    /// call on a handle kept there carries the handle into the log; the rest go on as
    /// they are.
    fn in_memory(&mut self, db: &Db, op: Op) -> InMemory {
        let Some(master) = &mut self.master else {
            return InMemory::Write(op);
        };
        if let Op::Open(args) = op {
            return match db.open_in_memory(&args) {
                // It may create, or names an ephemeral node: the log decides. The handle
                // stays here unless the node turns out ephemeral (`Op::OpenKept`).
                Ok(None)
                    if args.events == chubby_protocol::EventMask::NONE
                        && !args.ephemeral
                        && master.kept().may_open(args.session) =>
                {
                    let handle = master.kept_mut().fresh_id(args.session);
                    InMemory::Write(Op::OpenKept { handle, args })
                }
                Ok(None) => InMemory::Write(Op::Open(args)),
                Err(refusal) => InMemory::Answered(Err(CallError::Refused(refusal))),
                Ok(Some(_)) if !master.kept().may_open(args.session) => {
                    InMemory::Answered(Err(CallError::Refused(Refusal::TooMany)))
                }
                Ok(Some((handle, stat))) => {
                    let id = master.kept_mut().open(handle);
                    debug!(handle = id.0, "open answered from the master's memory");
                    InMemory::Answered(Ok(Answer::Opened {
                        handle: id,
                        created: false,
                        stat,
                    }))
                }
            };
        }
        let Some(session) = op.session() else {
            return InMemory::Write(op);
        };
        match op.handle_call() {
            // Not here: an earlier master's (the client announces it again) or closed.
            Some((handle, _))
                if handle.is_volatile()
                    && db.handle(session, handle).is_none()
                    && master.kept().get(session, handle).is_none() =>
            {
                InMemory::Answered(Err(CallError::Refused(Refusal::BadHandle)))
            }
            // Carries its kept handle once it is proposed (`Serve::with_kept`).
            _ => InMemory::Write(op),
        }
    }

    /// `op` as it is to be proposed now: a call on a handle only this master's memory
    /// has carries the handle as it is *now* ([`Op::WithHandle`]). Done when the write
    /// leaves `must_wait`, not when the call arrived, so that a Rename applied meanwhile
    /// has moved the handle first.
    fn with_kept(&self, db: &Db, op: Op) -> Op {
        let (Some(master), Some(session)) = (&self.master, op.session()) else {
            return op;
        };
        let Some((handle, _)) = op.handle_call() else {
            return op;
        };
        if !handle.is_volatile() || db.handle(session, handle).is_some() {
            return op;
        }
        match master.kept().get(session, handle) {
            Some(desc) => Op::WithHandle {
                handle,
                desc: desc.clone(),
                op: Box::new(op),
            },
            // Closed while the write waited: the log refuses it (BadHandle).
            None => op,
        }
    }

    /// Reannounce (Chubby §2.9 steps 6–8): keeps a handle an earlier master kept, after
    /// the checks an Open would make.
    #[allow(clippy::too_many_arguments)]
    fn reannounce(
        &mut self,
        db: &Db,
        session: SessionId,
        handle: HandleId,
        path: &str,
        instance: InstanceNumber,
        mode: OpenMode,
        lock_delay_ms: Option<u64>,
    ) -> Result<Answer, CallError> {
        let refused = CallError::Refused;
        let stat = |stat| Answer::Stat {
            stat: Some(stat),
            cache: None,
        };
        if db.handle(session, handle).is_some() {
            // The log keeps it (a lock or a sequencer made it last): nothing to keep.
            return db.reopen(session, handle, path).map(stat).map_err(refused);
        }
        let (desc, st) = db
            .reannounce_check(session, handle, path, instance, mode, lock_delay_ms)
            .map_err(refused)?;
        let Some(master) = &mut self.master else {
            return Err(CallError::Unavailable("not serving".into()));
        };
        let kept = master.kept_mut();
        if kept.get(session, handle).is_none() && !kept.may_open(session) {
            return Err(refused(Refusal::TooMany));
        }
        if kept.reannounce(handle, desc) {
            debug!(handle = handle.0, "handle announced again");
            Ok(stat(st))
        } else {
            Err(refused(Refusal::BadHandle))
        }
    }

    /// Master, serving, and the call carries this master's client epoch (Chubby §2.9
    /// step 1) unless it may go without one.
    fn check_epoch(
        &self,
        v: &ReplicaView,
        epoch: Option<Ballot>,
        call: &Call,
    ) -> Result<(), CallError> {
        self.check_serving(v)?;
        let Some(master) = &self.master else {
            return Err(CallError::Unavailable(
                "the master is starting its epoch; retry shortly".into(),
            ));
        };
        if call.needs_no_epoch() && epoch.is_none() {
            return Ok(());
        }
        if epoch != Some(master.epoch()) {
            return Err(CallError::WrongEpoch {
                current: master.epoch(),
            });
        }
        Ok(())
    }

    /// The token that lets `session` cache what it read at `path` (see
    /// [`Master::served_read`]).
    fn cache_token(&mut self, session: SessionId, path: Option<Arc<str>>) -> Option<CacheToken> {
        let path = path?;
        self.master.as_mut()?.served_read(session, &path)
    }

    /// The caller must own the session it names (a session id is not a capability), and
    /// the master must still serve it.
    fn check_session(
        &mut self,
        db: &Db,
        principal: &str,
        session: SessionId,
        now: Instant,
        keepalive: bool,
    ) -> Result<(), CallError> {
        match db.session(session) {
            None => return Err(CallError::Refused(Refusal::SessionExpired)),
            Some(s) if s.principal != principal => {
                return Err(CallError::Refused(Refusal::BadHandle))
            }
            Some(_) => {}
        }
        match &mut self.master {
            Some(m) => m
                .check_session(session, now, keepalive)
                .map_err(CallError::Refused),
            None => Err(CallError::Unavailable("not serving".into())),
        }
    }

    /// Proposes a write once the master has invalidated every cache it touches. `call`
    /// gets the outcome (none for the master's own ExpireSession and CloseSession).
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        v: &ReplicaView,
        db: &Db,
        now: Instant,
        op: Op,
        call: Option<CallId>,
        number: Option<CallNumber>,
        what: &'static str,
        out: &mut Vec<ServeAction>,
    ) {
        if self.must_wait(&op) {
            debug!(
                what,
                "write waits for an earlier write that changes what it touches"
            );
            self.held.push(Gated {
                op,
                call,
                number,
                what,
            });
            return;
        }
        let op = self.with_kept(db, op);
        let request = self.next_request;
        self.next_request += 1;
        let mut acts = Vec::new();
        let open = match &mut self.master {
            Some(master) => {
                let touched = db.touched_paths(&op, |p| master.is_busy(p));
                master.gate_write(request, touched, now, &mut acts)
            }
            None => true,
        };
        self.flying.insert(
            request,
            Flying {
                session: op_session(&op),
                rename: matches!(op, Op::Rename { .. }),
            },
        );
        if open {
            self.propose_as(request, op, call, number, what, now, out);
        } else {
            debug!(what, request, "write waits for cache invalidations");
            self.gated.insert(
                request,
                Gated {
                    op,
                    call,
                    number,
                    what,
                },
            );
        }
        self.master_actions(v, db, now, acts, out);
    }

    /// True if `op`'s touched paths cannot be predicted until earlier writes are applied:
    /// a Rename in flight moves handles (so a handle's path may change), a session's own
    /// writes in flight may give it handles its end must account for, and a Rename's
    /// subtree is only known once every earlier write (which may create in it) is applied.
    fn must_wait(&self, op: &Op) -> bool {
        let renaming = || self.flying.values().any(|f| f.rename);
        match op {
            Op::WithHandle { op, .. } => self.must_wait(op),
            Op::Rename { .. } => !self.flying.is_empty(),
            Op::SetContents { .. } | Op::SetAcl { .. } | Op::Delete { .. } | Op::Close { .. } => {
                renaming()
            }
            Op::CloseSession { session } | Op::ExpireSession { session } => {
                renaming() || self.flying.values().any(|f| f.session == Some(*session))
            }
            // These name their node by path (and instance), not by a handle a Rename moves,
            // or touch no cached path: their touched paths are known now.
            Op::NewEpoch
            | Op::CreateSession { .. }
            | Op::Open(_)
            | Op::OpenKept { .. }
            | Op::Acquire { .. }
            | Op::TryAcquire { .. }
            | Op::Release { .. }
            | Op::SetSequencer { .. }
            | Op::SetAttr { .. }
            | Op::Noop
            | Op::Checksum => false,
        }
    }

    /// Write `request` was applied or will never be: its paths may be cached again, and
    /// writes held behind it are looked at again.
    fn write_done(
        &mut self,
        v: &ReplicaView,
        db: &Db,
        now: Instant,
        request: u64,
        out: &mut Vec<ServeAction>,
    ) {
        if let Some(m) = &mut self.master {
            m.write_applied(request);
        }
        if self.flying.remove(&request).is_some() && !self.held.is_empty() {
            for g in std::mem::take(&mut self.held) {
                self.write(v, db, now, g.op, g.call, g.number, g.what, out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn propose_as(
        &mut self,
        request: u64,
        op: Op,
        call: Option<CallId>,
        number: Option<CallNumber>,
        what: &'static str,
        now: Instant,
        out: &mut Vec<ServeAction>,
    ) {
        let epoch = self.master_epoch.unwrap_or_default();
        out.push(ServeAction::Propose {
            request,
            epoch,
            op,
            call: number,
        });
        self.pending.insert(
            request,
            Pending {
                call,
                deadline: now.plus_ms(self.cfg.request_timeout_ms),
                what,
            },
        );
    }

    /// Proposes one of the master's own commands (`Checksum`, ...) under its epoch; none
    /// unless serving. Returns its request number. Nobody waits for its answer.
    pub fn propose_own(&mut self, op: Op, out: &mut Vec<ServeAction>) -> Option<u64> {
        let epoch = self.serving_epoch()?;
        Some(self.propose_untracked(epoch, op, out))
    }

    fn propose_untracked(&mut self, epoch: Ballot, op: Op, out: &mut Vec<ServeAction>) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        out.push(ServeAction::Propose {
            request,
            epoch,
            op,
            call: None,
        });
        request
    }

    /// Executes what the master asked for.
    fn master_actions(
        &mut self,
        v: &ReplicaView,
        db: &Db,
        now: Instant,
        acts: Vec<MasterAction>,
        out: &mut Vec<ServeAction>,
    ) {
        for act in acts {
            match act {
                MasterAction::ReplyKeepAlive { token, reply } => {
                    if let Some(call) = self.keepalives.remove(&token) {
                        // A lease granted after the Paxos lease lapsed could outlast what a
                        // new master (elected once it lapsed) grants the same session.
                        let reply = match reply {
                            Ok(_) if !v.lease_held => Reply::Err(CallError::Unavailable(
                                "the master's lease lapsed; retry shortly".into(),
                            )),
                            Ok(r) => Reply::Ok(Answer::KeepAlive(r)),
                            Err(refusal) => Reply::Err(CallError::Refused(refusal)),
                        };
                        out.push(ServeAction::Reply { call, reply });
                    }
                }
                MasterAction::Propose { request } => {
                    if let Some(g) = self.gated.remove(&request) {
                        self.propose_as(request, g.op, g.call, g.number, g.what, now, out);
                    }
                }
                MasterAction::Expire { session } => {
                    info!(session = session.0, "session lease ended: expiring it");
                    out.push(ServeAction::Expiring { session });
                    let op = Op::ExpireSession { session };
                    self.write(v, db, now, op, None, None, "ExpireSession", out);
                }
                MasterAction::CloseIdle { session } => {
                    info!(session = session.0, "session idle: closing it");
                    let op = Op::CloseSession { session };
                    self.write(v, db, now, op, None, None, "CloseSession", out);
                }
            }
        }
    }

    /// Periodic work: writes not applied in time are answered "outcome unknown"; while
    /// serving with the lease, due KeepAlives are answered, ended leases expired and idle
    /// sessions closed, and a `Noop` is proposed when a lock-delay is due at `wall` (the
    /// clock commands are stamped with).
    pub fn tick(
        &mut self,
        v: &ReplicaView,
        db: &Db,
        now: Instant,
        wall: Instant,
        out: &mut Vec<ServeAction>,
    ) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for request in expired {
            if let Some(p) = self.pending.remove(&request) {
                warn!(what = p.what, "write not chosen in time: outcome unknown");
                if let Some(call) = p.call {
                    out.push(ServeAction::Reply {
                        call,
                        reply: Reply::Err(CallError::OutcomeUnknown(
                            "not chosen in time (mastership may have moved); it may still be \
                             applied"
                                .into(),
                        )),
                    });
                }
            }
        }
        if !self.serving || !v.lease_held {
            // No lease, no promises: nothing is answered or expired until it is back (or
            // mastership is lost and this state dropped).
            return;
        }
        let mut acts = Vec::new();
        if let Some(m) = &mut self.master {
            m.tick(
                now,
                |s| db.session(s).is_some_and(|x| !x.handles.is_empty()),
                &mut acts,
            );
        }
        self.master_actions(v, db, now, acts, out);
        // End due lock-delays on time: they end at the first command stamped after them.
        if let Some(due) = db.next_deadline() {
            if wall >= due && self.noop_for != Some(due) {
                self.noop_for = Some(due);
                self.propose_own(Op::Noop, out);
            }
        }
    }

    /// Command `cmd` (this origin's `request` if `own`) was applied to `db` at `slot` with
    /// result `applied`: the master learns what changed, the caller gets its answer, and a
    /// master whose NewEpoch this was begins serving.
    #[allow(clippy::too_many_arguments)]
    pub fn applied(
        &mut self,
        v: &ReplicaView,
        db: &Db,
        now: Instant,
        slot: Slot,
        own: Option<u64>,
        cmd: &Command,
        applied: &Applied,
        out: &mut Vec<ServeAction>,
    ) {
        let mut acts = Vec::new();
        if let Some(master) = &mut self.master {
            let changed = changed_paths(&applied.changes);
            let missed = master.late_invalidations(own, &changed, now, &mut acts);
            if !missed.is_empty() {
                tracing::error!(
                    what = cmd.op.name(),
                    ?missed,
                    "a write changed cached paths it did not announce: invalidated late"
                );
            }
            if let Ok(Outcome::SessionCreated { session }) = &applied.result {
                master.session_created(*session, now);
            }
            master.applied(&cmd.op, &applied.changes, db, now, &mut acts);
            if let Op::WithHandle { handle, desc, .. } = &cmd.op {
                if db.handle(desc.session, *handle).is_some() {
                    // A lock or a sequencer made the log keep it: its copy rules now.
                    master.kept_mut().remove(desc.session, *handle);
                }
            }
            if let (
                Op::OpenKept { handle, args },
                Ok(Outcome::Opened {
                    handle: answered,
                    stat,
                    ..
                }),
            ) = (&cmd.op, &applied.result)
            {
                // Opened under a volatile id; the log kept it only if the node is
                // ephemeral. The handle answered must be this command's own: a copy of a
                // call the log already answered (sent again before the first was applied)
                // is answered with the first copy's handle, and keeping this id too would
                // hold a handle nobody knows until the session ends. Over the session's
                // bound (opens in flight each passed it), it is not kept: its first use is
                // refused, and announcing it again is refused TooMany.
                if answered == handle
                    && db.handle(args.session, *handle).is_none()
                    && master.kept().may_open(args.session)
                {
                    match db.reannounce_check(
                        args.session,
                        *handle,
                        &args.path,
                        stat.instance,
                        args.mode,
                        args.lock_delay_ms,
                    ) {
                        Ok((desc, _)) => {
                            if !master.kept_mut().reannounce(*handle, desc) {
                                warn!(
                                    handle = handle.0,
                                    "an opened handle's id is another handle's here: not kept"
                                );
                            }
                        }
                        Err(refusal) => {
                            debug!(?refusal, "an opened handle is not kept: its node went");
                        }
                    }
                }
            }
        }
        if let Some(request) = own {
            self.write_done(v, db, now, request, out);
        }
        self.master_actions(v, db, now, acts, out);
        if let (Op::NewEpoch, Ok(_)) = (&cmd.op, &applied.result) {
            if let Some(mine) = self.master_epoch.filter(|m| *m != cmd.epoch) {
                // Found by `sim cell`: a master that kept its role through a boost while
                // another replica led and began an epoch would otherwise serve on with an
                // epoch the database refuses, wedging the cell.
                if cmd.epoch > mine {
                    warn!(%mine, theirs = %cmd.epoch, "another master's epoch began after ours");
                    out.push(ServeAction::StepDown { epoch: mine });
                }
            }
            if self.master_epoch == Some(cmd.epoch) {
                self.serving = true;
                let master = Master::new(self.cfg.master.clone(), cmd.epoch, now, db);
                info!(
                    epoch = %cmd.epoch,
                    %slot,
                    sessions = master.session_count(),
                    "master is serving; sessions restored, each with a new lease and a \
                     fail-over notice"
                );
                if let Some(old) = self.master.replace(master) {
                    self.retired = self.retired + old.counts();
                }
            }
        }
        let Some(request) = own else { return };
        let Some(p) = self.pending.remove(&request) else {
            return;
        };
        let Some(call) = p.call else { return };
        let reply = match &applied.result {
            Ok(outcome) => Reply::Ok(self.answer_of(outcome)),
            Err(Refusal::StaleEpoch { .. }) => Reply::Err(CallError::Unavailable(
                "the master changed before the write was applied; it was not applied".into(),
            )),
            Err(refusal) => Reply::Err(CallError::Refused(refusal.clone())),
        };
        debug!(what = p.what, %slot, "write applied");
        out.push(ServeAction::Reply { call, reply });
    }

    /// This origin's command `request` (`op`) will never be chosen through this replica.
    #[allow(clippy::too_many_arguments)]
    pub fn rejected(
        &mut self,
        v: &ReplicaView,
        db: &Db,
        now: Instant,
        request: u64,
        op: &Op,
        reason: &Rejection,
        out: &mut Vec<ServeAction>,
    ) {
        if let (Some(master), Op::ExpireSession { session } | Op::CloseSession { session }) =
            (&mut self.master, op)
        {
            master.end_failed(*session);
        }
        self.write_done(v, db, now, request, out);
        if let Some(p) = self.pending.remove(&request) {
            let Some(call) = p.call else { return };
            let err = match reason {
                Rejection::NotMaster { .. } => CallError::NotMaster {
                    master: v.hint.clone(),
                },
                Rejection::Busy => CallError::Unavailable("the master's queue is full".into()),
            };
            out.push(ServeAction::Reply {
                call,
                reply: Reply::Err(err),
            });
        }
    }

    /// The replica's role changed: a new master proposes its NewEpoch (it serves once that
    /// is applied); any other role ends serving.
    pub fn role_changed(
        &mut self,
        v: &ReplicaView,
        role: RoleKind,
        epoch: Option<Ballot>,
        out: &mut Vec<ServeAction>,
    ) {
        match (role, epoch) {
            (RoleKind::Master, Some(epoch)) => {
                info!(%epoch, "became master; starting the epoch");
                self.drop_master(v, out);
                self.master_epoch = Some(epoch);
                self.serving = false;
                self.noop_for = None;
                self.propose_untracked(epoch, Op::NewEpoch, out);
            }
            (role, _) => {
                self.drop_master(v, out);
                if self.master_epoch.take().is_some() {
                    warn!(?role, "lost mastership");
                } else {
                    debug!(?role, "role changed");
                }
                self.serving = false;
            }
        }
    }

    /// Mastership ended: calls parked here can no longer be served. Gated writes were
    /// never proposed, so nothing of them happened.
    fn drop_master(&mut self, v: &ReplicaView, out: &mut Vec<ServeAction>) {
        let Some(old) = self.master.take() else {
            return;
        };
        self.retired = self.retired + old.counts();
        let not_master = || {
            Reply::Err(CallError::NotMaster {
                master: v.hint.clone(),
            })
        };
        for (_, call) in std::mem::take(&mut self.keepalives) {
            out.push(ServeAction::Reply {
                call,
                reply: not_master(),
            });
        }
        self.flying.clear();
        let held = std::mem::take(&mut self.held);
        for g in std::mem::take(&mut self.gated).into_values().chain(held) {
            if let Some(call) = g.call {
                out.push(ServeAction::Reply {
                    call,
                    reply: not_master(),
                });
            }
        }
    }

    /// The replica stops: every waiting call hears that its outcome is unknown or that
    /// this replica no longer serves.
    pub fn stop(&mut self, v: &ReplicaView, out: &mut Vec<ServeAction>) {
        for (_, p) in std::mem::take(&mut self.pending) {
            if let Some(call) = p.call {
                out.push(ServeAction::Reply {
                    call,
                    reply: Reply::Err(CallError::OutcomeUnknown(
                        "the replica stopped before the write was chosen".into(),
                    )),
                });
            }
        }
        self.drop_master(v, out);
    }

    /// Serving state agrees with itself and with the master's; cheap enough for the
    /// simulator to call after every step.
    ///
    /// # Panics
    /// When an invariant is broken: that is a bug in this module.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.master.is_some(),
            self.serving,
            "session logic exists exactly while serving"
        );
        if let Some(master) = &self.master {
            assert_eq!(
                Some(master.epoch()),
                self.master_epoch,
                "the session logic serves another epoch"
            );
            master.check_invariants();
        } else {
            assert!(
                self.keepalives.is_empty(),
                "KeepAlives parked while not serving"
            );
            assert!(self.gated.is_empty(), "writes gated while not serving");
            assert!(self.held.is_empty(), "writes held while not serving");
            assert!(self.flying.is_empty(), "writes flying while not serving");
        }
        for request in self.gated.keys() {
            assert!(
                self.flying.contains_key(request),
                "gated write {request} is not counted as flying"
            );
        }
        for request in self.flying.keys().chain(self.pending.keys()) {
            assert!(
                *request < self.next_request,
                "request {request} not yet issued"
            );
        }
        for token in self.keepalives.keys() {
            assert!(
                *token < self.next_token,
                "KeepAlive token {token} not yet issued"
            );
        }
    }

    fn answer_of(&self, outcome: &Outcome) -> Answer {
        match outcome {
            Outcome::SessionCreated { session } => Answer::Session {
                session: *session,
                epoch: self.master_epoch.unwrap_or_default(),
                lease_ms: self.cfg.master.session_lease_ms,
            },
            Outcome::Opened {
                handle,
                created,
                stat,
            } => Answer::Opened {
                handle: *handle,
                created: *created,
                stat: stat.clone(),
            },
            Outcome::ContentsSet { stat }
            | Outcome::AclSet { stat }
            | Outcome::AttrsSet { stat }
            | Outcome::Renamed { stat } => Answer::Written { stat: stat.clone() },
            Outcome::Acquired { sequencer } => Answer::Acquired {
                sequencer: sequencer.clone(),
            },
            Outcome::Queued => Answer::Queued,
            Outcome::EpochStarted
            | Outcome::SessionEnded
            | Outcome::Closed
            | Outcome::Deleted
            | Outcome::Released
            | Outcome::SequencerSet
            | Outcome::Noop
            | Outcome::Checksum { .. } => Answer::Done,
        }
    }
}

/// What [`Serve::in_memory`] made of a write call.
enum InMemory {
    /// Answered from the master's memory.
    Answered(Result<Answer, CallError>),
    /// To be proposed.
    Write(Op),
}

/// A file write over the size limit (refused before it is proposed).
fn op_too_large(op: &Op) -> bool {
    match op {
        Op::Open(args) | Op::OpenKept { args, .. } => args.contents.len() > FILE_BYTES_MAX,
        Op::SetContents { contents, .. } => contents.len() > FILE_BYTES_MAX,
        Op::WithHandle { op, .. } => op_too_large(op),
        Op::NewEpoch
        | Op::CreateSession { .. }
        | Op::CloseSession { .. }
        | Op::ExpireSession { .. }
        | Op::Close { .. }
        | Op::Delete { .. }
        | Op::SetAcl { .. }
        | Op::Acquire { .. }
        | Op::TryAcquire { .. }
        | Op::Release { .. }
        | Op::SetSequencer { .. }
        | Op::Rename { .. }
        | Op::SetAttr { .. }
        | Op::Noop
        | Op::Checksum => false,
    }
}

/// Every path whose cached state a command's changes altered.
fn changed_paths(changes: &[Change]) -> Vec<Arc<str>> {
    let mut out = Vec::new();
    for c in changes {
        match c {
            Change::Created { path, .. }
            | Change::ContentsChanged { path, .. }
            | Change::AclChanged { path, .. }
            | Change::AttrsChanged { path, .. }
            | Change::Deleted { path, .. } => out.push(Arc::clone(path)),
            Change::Renamed { from, to, .. } => {
                out.push(Arc::clone(from));
                out.push(Arc::clone(to));
            }
            Change::ChildrenChanged { dir } => out.push(Arc::clone(dir)),
            // Lock state and handles are not cached by clients; a session's end comes
            // with a Deleted change for each ephemeral node it held.
            Change::LockAcquired { .. }
            | Change::LockReleased { .. }
            | Change::LockConflict { .. }
            | Change::WaitEnded { .. }
            | Change::HandleClosed { .. }
            | Change::SessionEnded { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
