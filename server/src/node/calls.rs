//! Client calls on the core loop: checks, reads served from the database under the
//! master's lease, writes gated by [`crate::master::Master`] and proposed, KeepAlives
//! parked until the master answers them.

use std::collections::BTreeMap;
use std::sync::Arc;

use chubby_protocol::client_msg::{Answer, Call, CallError, Reply};
use chubby_protocol::db::FILE_BYTES_MAX;
use chubby_protocol::{Instant, Refusal, SessionId};
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::client_port::ClientCall;
use super::core::{Core, Pending};
use crate::db::Op;
use crate::master::{Master, MasterAction};

/// A write waiting at its gate for caches to be invalidated.
pub(super) struct Gated {
    pub op: Op,
    pub reply: Option<oneshot::Sender<Reply>>,
    pub what: &'static str,
}

/// A write this master gated or proposed that is not yet applied.
pub(super) struct Flying {
    pub session: Option<SessionId>,
    pub rename: bool,
}

/// Calls parked at the master: KeepAlives by token, gated writes by request, writes held
/// behind earlier ones, and the writes in flight.
#[derive(Default)]
pub(super) struct Parked {
    pub keepalives: BTreeMap<u64, oneshot::Sender<Reply>>,
    pub next_token: u64,
    pub gated: BTreeMap<u64, Gated>,
    pub held: Vec<Gated>,
    pub flying: BTreeMap<u64, Flying>,
}

impl Core {
    pub(super) fn on_call(&mut self, call: ClientCall) {
        let ClientCall {
            principal,
            request,
            reply,
        } = call;
        let what = request.call.name();
        let result = match request.call {
            Call::Status => Ok(Answer::Status(Box::new(self.status()))),
            Call::ChangeMembers { add, remove } => self
                .change_members(&principal, add, remove)
                .map(|()| Answer::Done),
            call => {
                if let Err(e) = self.check_epoch(request.epoch, &call) {
                    let _ = reply.send(Reply::Err(e));
                    return;
                }
                match self.session_call(&principal, call, what, reply) {
                    None => return,
                    Some((result, reply)) => {
                        let _ = reply.send(match result {
                            Ok(answer) => Reply::Ok(answer),
                            Err(e) => Reply::Err(e),
                        });
                        return;
                    }
                }
            }
        };
        let _ = reply.send(match result {
            Ok(answer) => Reply::Ok(answer),
            Err(e) => Reply::Err(e),
        });
    }

    /// Master, serving, and the call carries this master's client epoch (Chubby §2.9
    /// step 1) unless it may go without one.
    fn check_epoch(
        &self,
        epoch: Option<chubby_protocol::Ballot>,
        call: &Call,
    ) -> Result<(), CallError> {
        self.check_serving()?;
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

    /// Serves a call that needs the master. Returns `None` when the reply was parked
    /// (a write proposed or gated, a KeepAlive), else the answer and the channel.
    #[allow(clippy::too_many_lines)]
    fn session_call(
        &mut self,
        principal: &str,
        call: Call,
        what: &'static str,
        reply: oneshot::Sender<Reply>,
    ) -> Option<(Result<Answer, CallError>, oneshot::Sender<Reply>)> {
        let now = self.now();
        if let Some(session) = session_of(&call) {
            let keepalive = matches!(call, Call::KeepAlive { .. });
            if let Err(e) = self.check_session(principal, session, now, keepalive) {
                return Some((Err(e), reply));
            }
        }
        let refused = |r: Refusal| CallError::Refused(r);
        let op = match call {
            Call::KeepAlive { session, acked } => {
                let token = self.parked.next_token;
                self.parked.next_token += 1;
                self.parked.keepalives.insert(token, reply);
                let mut acts = Vec::new();
                if let Some(m) = &mut self.master {
                    m.keepalive(session, acked, token, now, &mut acts);
                }
                self.master_actions(acts);
                return None;
            }
            Call::GetContentsAndStat { session, handle } => {
                let read = self.db.read(session, handle).map_err(refused);
                let result = read.map(|(stat, contents)| {
                    let cache = self.cache_token(session, handle_path(&self.db, session, handle));
                    Answer::Contents {
                        contents: contents.as_ref().clone(),
                        stat,
                        cache,
                    }
                });
                return Some((result, reply));
            }
            Call::GetStat { session, handle } => {
                let result = self.db.stat(session, handle).map_err(refused).map(|stat| {
                    let cache = self.cache_token(session, handle_path(&self.db, session, handle));
                    Answer::Stat {
                        stat: Some(stat),
                        cache,
                    }
                });
                return Some((result, reply));
            }
            Call::StatPath { session, path } => {
                let result = self
                    .db
                    .stat_path_checked(session, &path)
                    .map_err(refused)
                    .map(|stat| {
                        let cache = self.cache_token(session, Some(Arc::from(path.as_str())));
                        Answer::Stat { stat, cache }
                    });
                return Some((result, reply));
            }
            Call::ReadDir { session, handle } => {
                // Listings are not cached (their children's metadata would need invalidating
                // with every child write): no token, and the session is not recorded.
                let result = self.db.read_dir(session, handle).map_err(refused);
                let result = result.map(|children| Answer::Dir {
                    children,
                    cache: None,
                });
                return Some((result, reply));
            }
            Call::GetSequencer { session, handle } => {
                let result = self.db.lock_state(session, handle).map_err(refused);
                return Some((result.map(Answer::Lock), reply));
            }
            Call::CheckSequencer { sequencer } => {
                let valid = self.db.check_sequencer(&sequencer);
                return Some((Ok(Answer::SequencerValid(valid)), reply));
            }
            Call::CreateSession => Op::CreateSession {
                principal: principal.to_owned(),
            },
            Call::CloseSession { session } => Op::CloseSession { session },
            Call::Open(open) => {
                if open.contents.len() > FILE_BYTES_MAX {
                    return Some((Err(refused(Refusal::TooLarge)), reply));
                }
                Op::Open(Box::new(open))
            }
            Call::Close { session, handle } => Op::Close { session, handle },
            Call::SetContents {
                session,
                handle,
                contents,
                expected,
            } => {
                if contents.len() > FILE_BYTES_MAX {
                    return Some((Err(refused(Refusal::TooLarge)), reply));
                }
                Op::SetContents {
                    session,
                    handle,
                    contents,
                    expected,
                }
            }
            Call::Delete { session, handle } => Op::Delete { session, handle },
            Call::SetAcl {
                session,
                handle,
                acl,
                expected,
            } => Op::SetAcl {
                session,
                handle,
                acl,
                expected,
            },
            Call::Acquire {
                session,
                handle,
                mode,
            } => Op::Acquire {
                session,
                handle,
                mode,
            },
            Call::TryAcquire {
                session,
                handle,
                mode,
            } => Op::TryAcquire {
                session,
                handle,
                mode,
            },
            Call::Release { session, handle } => Op::Release { session, handle },
            Call::SetSequencer {
                session,
                handle,
                sequencer,
            } => Op::SetSequencer {
                session,
                handle,
                sequencer,
            },
            Call::Rename { session, from, to } => Op::Rename { session, from, to },
            Call::Status | Call::ChangeMembers { .. } => {
                return Some((
                    Err(CallError::BadRequest("not a session call".into())),
                    reply,
                ));
            }
        };
        self.write(op, Some(reply), what);
        None
    }

    /// The token that lets `session` cache what it read at `path` (see
    /// [`Master::served_read`]).
    fn cache_token(
        &mut self,
        session: SessionId,
        path: Option<Arc<str>>,
    ) -> Option<chubby_protocol::CacheToken> {
        let path = path?;
        self.master.as_mut()?.served_read(session, &path)
    }

    /// The caller must own the session it names (a session id is not a capability), and
    /// the master must still serve it.
    fn check_session(
        &mut self,
        principal: &str,
        session: SessionId,
        now: Instant,
        keepalive: bool,
    ) -> Result<(), CallError> {
        match self.db.session(session) {
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

    /// Proposes a write once the master has invalidated every cache it touches. `reply`
    /// gets the outcome (none for the master's own ExpireSession and CloseSession).
    pub(super) fn write(
        &mut self,
        op: Op,
        reply: Option<oneshot::Sender<Reply>>,
        what: &'static str,
    ) {
        if self.must_wait(&op) {
            debug!(
                what,
                "write waits for an earlier write that changes what it touches"
            );
            self.parked.held.push(Gated { op, reply, what });
            return;
        }
        let request = self.next_request;
        self.next_request += 1;
        let now = self.now();
        let mut acts = Vec::new();
        let open = match &mut self.master {
            Some(master) => {
                let touched = self.db.touched_paths(&op, |p| master.is_busy(p));
                master.gate_write(request, touched, now, &mut acts)
            }
            None => true,
        };
        self.parked.flying.insert(
            request,
            Flying {
                session: op_session(&op),
                rename: matches!(op, Op::Rename { .. }),
            },
        );
        if open {
            self.propose_as(request, op, reply, what);
        } else {
            debug!(what, request, "write waits for cache invalidations");
            self.parked.gated.insert(request, Gated { op, reply, what });
        }
        self.master_actions(acts);
    }

    /// True if `op`'s touched paths cannot be predicted until earlier writes are applied:
    /// a Rename in flight moves handles (so a handle's path may change), and a session's
    /// own writes in flight may give it handles its end must account for.
    fn must_wait(&self, op: &Op) -> bool {
        let renaming = || self.parked.flying.values().any(|f| f.rename);
        match op {
            Op::SetContents { .. } | Op::SetAcl { .. } | Op::Delete { .. } | Op::Close { .. } => {
                renaming()
            }
            Op::CloseSession { session } | Op::ExpireSession { session } => {
                renaming()
                    || self
                        .parked
                        .flying
                        .values()
                        .any(|f| f.session == Some(*session))
            }
            _ => false,
        }
    }

    /// Write `request` was applied or will never be: its paths may be cached again, and
    /// writes held behind it are looked at again.
    pub(super) fn write_done(&mut self, request: u64) {
        if let Some(m) = &mut self.master {
            m.write_applied(request);
        }
        if self.parked.flying.remove(&request).is_some() && !self.parked.held.is_empty() {
            for g in std::mem::take(&mut self.parked.held) {
                self.write(g.op, g.reply, g.what);
            }
        }
    }

    fn propose_as(
        &mut self,
        request: u64,
        op: Op,
        reply: Option<oneshot::Sender<Reply>>,
        what: &'static str,
    ) {
        let epoch = self.master_epoch.unwrap_or_default();
        self.submit_command_as(request, epoch, op);
        let deadline = self.now().plus_ms(self.cfg.tuning.request_timeout_ms);
        self.pending.insert(
            request,
            Pending {
                reply,
                deadline,
                what,
            },
        );
    }

    /// Executes what the master asked for.
    pub(super) fn master_actions(&mut self, acts: Vec<MasterAction>) {
        for act in acts {
            match act {
                MasterAction::ReplyKeepAlive { token, reply } => {
                    if let Some(tx) = self.parked.keepalives.remove(&token) {
                        // A lease granted after the Paxos lease lapsed could outlast what a
                        // new master (elected once it lapsed) grants the same session.
                        let holds = self.replica.lease_until(self.now()).is_some();
                        let _ = tx.send(match reply {
                            Ok(_) if !holds => Reply::Err(CallError::Unavailable(
                                "the master's lease lapsed; retry shortly".into(),
                            )),
                            Ok(r) => Reply::Ok(Answer::KeepAlive(r)),
                            Err(refusal) => Reply::Err(CallError::Refused(refusal)),
                        });
                    }
                }
                MasterAction::Propose { request } => {
                    if let Some(g) = self.parked.gated.remove(&request) {
                        self.propose_as(request, g.op, g.reply, g.what);
                    }
                }
                MasterAction::Expire { session } => {
                    info!(
                        replica = self.me.0,
                        session = session.0,
                        "session lease ended: expiring it"
                    );
                    self.write(Op::ExpireSession { session }, None, "ExpireSession");
                }
                MasterAction::CloseIdle { session } => {
                    info!(
                        replica = self.me.0,
                        session = session.0,
                        "session idle: closing it"
                    );
                    self.write(Op::CloseSession { session }, None, "CloseSession");
                }
            }
        }
    }

    /// The master's periodic work: due KeepAlives, ended leases, idle sessions.
    pub(super) fn master_tick(&mut self) {
        let now = self.now();
        if self.replica.lease_until(now).is_none() {
            // No lease, no promises: nothing is answered or expired until it is back (or
            // mastership is lost and this state dropped).
            return;
        }
        let mut acts = Vec::new();
        if let Some(m) = &mut self.master {
            let db = &self.db;
            m.tick(
                now,
                |s| db.session(s).is_some_and(|x| !x.handles.is_empty()),
                &mut acts,
            );
        }
        self.master_actions(acts);
    }

    /// Mastership ended: calls parked here can no longer be served. Gated writes were
    /// never proposed, so nothing of them happened.
    pub(super) fn drop_master(&mut self) {
        if self.master.take().is_none() {
            return;
        }
        let hint = self.replica.master_hint().and_then(|id| self.hint_of(id));
        for (_, tx) in std::mem::take(&mut self.parked.keepalives) {
            let _ = tx.send(Reply::Err(CallError::NotMaster {
                master: hint.clone(),
            }));
        }
        self.parked.flying.clear();
        let held = std::mem::take(&mut self.parked.held);
        for g in std::mem::take(&mut self.parked.gated)
            .into_values()
            .chain(held)
        {
            if let Some(tx) = g.reply {
                let _ = tx.send(Reply::Err(CallError::NotMaster {
                    master: hint.clone(),
                }));
            }
        }
    }

    /// The master began serving: build its session state from the database.
    pub(super) fn start_master(&mut self, epoch: chubby_protocol::Ballot) {
        let now = self.now();
        let master = Master::new(self.master_cfg.clone(), epoch, now, &self.db);
        info!(
            replica = self.me.0,
            sessions = master.session_count(),
            "sessions restored: each has a new lease and a fail-over notice"
        );
        self.master = Some(master);
    }
}

/// The session a database operation acts for, if any.
fn op_session(op: &Op) -> Option<SessionId> {
    match op {
        Op::Open(args) => Some(args.session),
        Op::CloseSession { session }
        | Op::ExpireSession { session }
        | Op::Close { session, .. }
        | Op::SetContents { session, .. }
        | Op::Delete { session, .. }
        | Op::SetAcl { session, .. }
        | Op::Acquire { session, .. }
        | Op::TryAcquire { session, .. }
        | Op::Release { session, .. }
        | Op::SetSequencer { session, .. }
        | Op::Rename { session, .. } => Some(*session),
        Op::NewEpoch | Op::CreateSession { .. } | Op::Noop | Op::Checksum => None,
    }
}

/// The session a call names, if any.
fn session_of(call: &Call) -> Option<SessionId> {
    match call {
        Call::Open(args) => Some(args.session),
        Call::Close { session, .. }
        | Call::GetContentsAndStat { session, .. }
        | Call::SetContents { session, .. }
        | Call::Delete { session, .. }
        | Call::KeepAlive { session, .. }
        | Call::CloseSession { session }
        | Call::GetStat { session, .. }
        | Call::ReadDir { session, .. }
        | Call::StatPath { session, .. }
        | Call::SetAcl { session, .. }
        | Call::Acquire { session, .. }
        | Call::TryAcquire { session, .. }
        | Call::Release { session, .. }
        | Call::GetSequencer { session, .. }
        | Call::SetSequencer { session, .. }
        | Call::Rename { session, .. } => Some(*session),
        Call::Status
        | Call::CreateSession
        | Call::ChangeMembers { .. }
        | Call::CheckSequencer { .. } => None,
    }
}

fn handle_path(
    db: &crate::db::Db,
    session: SessionId,
    handle: chubby_protocol::HandleId,
) -> Option<Arc<str>> {
    db.handle(session, handle).map(|h| Arc::clone(&h.path))
}
