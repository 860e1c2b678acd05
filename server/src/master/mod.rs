//! The master's session logic (Chubby §2.5, §2.7–2.9; DESIGN §4), pure: no clock, no I/O.
//!
//! ```text
//!  KeepAlive(session, acked) ──► acks: drop delivered notices, open write gates
//!                              └► park the call; answer it early if notices wait,
//!                                 else a third of a lease before the lease would end
//!  a write ──► gate_write(paths) ──► invalidate every session caching a path
//!                                   (and every session that has not yet acknowledged
//!                                   the fail-over notice) ─► Propose once all acked or
//!                                   their leases ended
//!  a cacheable read ──► served_read(session, path) ─► a CacheToken, and the session is
//!                        recorded as caching the path (unless a write to it is in flight)
//!  applied changes ──► notices: events by handle mask, lock grants, ended waits
//!  tick(now) ──► reply to due KeepAlives; ExpireSession for ended leases; close idle
//! ```
//!
//! Its caller ([`crate::serve`]) owns the calls; this module names them by the token the
//! caller gives each parked KeepAlive, and names writes by the caller's request number.
//!
//! # Why the write waits before it is proposed
//! A write first invalidates, then is proposed and applied. While it is in flight its
//! paths are *uncachable*: reads of them are served but not recorded, and their answers
//! carry no cache token. So once the write is applied no client holds the old value:
//! every holder acknowledged dropping it, or its lease (and so its client's shorter local
//! lease) ended. Invalidating after the apply instead would let a reader that missed the
//! cache see the new value while another still reads the old one from its cache.
//!
//! # Fail-over (Chubby §2.9)
//! A new master knows every session from the database ([`Master::new`]); it gives each a
//! fresh lease (at least what the previous master can have promised, since that master's
//! Paxos lease ended before this one began), and a [`Notice::FailOver`] numbered 1. It
//! cannot know what they cache, so until a session acknowledges that notice, every write
//! waits for it as if it cached every path, and its reads are not cacheable. Other calls
//! proceed at once (the paper's steps 4–7 block them all; only writes need to wait for
//! the caches to be flushed). Handles of existing nodes live in this master's memory
//! (`kept.rs`): clients announce them again to the next master (step 8). Locks, and the
//! handles that hold them or open ephemeral nodes, live in the database and need no
//! re-creation; ephemeral files of sessions that never come back vanish when those
//! sessions expire, one lease after the fail-over (step 9).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

mod kept;
mod notify;
#[cfg(test)]
mod tests;

pub use kept::KeptHandles;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chubby_protocol::{
    Ballot, CacheToken, Instant, KeepAliveReply, Notice, Numbered, Refusal, SessionId,
};

use crate::db::Db;

/// The master's session settings (DESIGN §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterConfig {
    /// How long each KeepAlive reply extends a session's lease (Chubby §2.8: 12 s).
    pub session_lease_ms: u64,
    /// A session with no handles that makes no call for this long is closed (Chubby §2.8:
    /// "a minute").
    pub session_idle_ms: u64,
    /// A deliberate bug for the simulator's self-test (only with the `bug-injection`
    /// feature): writes are proposed without waiting for caches to be invalidated.
    pub bug_skip_cache_wait: bool,
}

impl Default for MasterConfig {
    fn default() -> MasterConfig {
        MasterConfig {
            session_lease_ms: 12_000,
            session_idle_ms: 60_000,
            bug_skip_cache_wait: false,
        }
    }
}

impl MasterConfig {
    /// How long before a lease ends the master answers a parked KeepAlive: a third of a
    /// lease, so a 12 s lease is renewed every 8 s and the client's last reply leaves it
    /// about 4 s in hand.
    fn reply_before_ms(&self) -> u64 {
        self.session_lease_ms / 3
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterAction {
    /// Answer the KeepAlive parked under `token`.
    ReplyKeepAlive {
        /// The shell's token for it.
        token: u64,
        /// The answer.
        reply: Result<KeepAliveReply, Refusal>,
    },
    /// Every cache of the gated write `request` is gone: propose it now.
    Propose {
        /// The shell's request number.
        request: u64,
    },
    /// The session's lease ended: propose ExpireSession.
    Expire {
        /// The session.
        session: SessionId,
    },
    /// The session has been idle (no handles, no calls) too long: propose CloseSession.
    CloseIdle {
        /// The session.
        session: SessionId,
    },
}

/// One live session as the master sees it.
#[derive(Debug)]
struct Live {
    lease_until: Instant,
    /// The parked KeepAlive's token, and when it arrived.
    parked: Option<(u64, Instant)>,
    /// The number of the last notice queued.
    last_seq: u64,
    /// Notices not yet acknowledged, in order.
    outbox: Vec<Numbered>,
    last_call: Instant,
    /// ExpireSession or CloseSession was proposed: calls are refused.
    ending: bool,
    /// Paths it is recorded as caching (an idle session is closed only when zero).
    caching: usize,
}

/// A write waiting for invalidations to be acknowledged.
#[derive(Debug)]
struct Gate {
    /// Session → the notice number it must acknowledge.
    waits: BTreeMap<SessionId, u64>,
}

/// What masters told sessions, for metrics (counted by each master; the serving layer sums
/// them over this replica's masterships).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoticeCounts {
    /// Invalidation notices queued, one per session per write.
    pub invalidations_sent: u64,
    /// Invalidation notices the sessions acknowledged.
    pub invalidations_acked: u64,
    /// Writes that had to wait for caches to be invalidated.
    pub writes_gated: u64,
}

impl std::ops::Add for NoticeCounts {
    type Output = NoticeCounts;
    fn add(self, o: NoticeCounts) -> NoticeCounts {
        NoticeCounts {
            invalidations_sent: self.invalidations_sent + o.invalidations_sent,
            invalidations_acked: self.invalidations_acked + o.invalidations_acked,
            writes_gated: self.writes_gated + o.writes_gated,
        }
    }
}

/// The master's session state (see the module docs).
#[derive(Debug)]
pub struct Master {
    cfg: MasterConfig,
    epoch: Ballot,
    sessions: BTreeMap<SessionId, Live>,
    /// Path → sessions that may cache it.
    cachers: BTreeMap<Arc<str>, BTreeSet<SessionId>>,
    /// Path → writes touching it that are gated or proposed but not yet applied.
    in_flight: BTreeMap<Arc<str>, u32>,
    /// Request → the paths it holds in flight.
    writes: BTreeMap<u64, Vec<Arc<str>>>,
    gates: BTreeMap<u64, Gate>,
    /// Sessions that have not acknowledged the fail-over notice (number 1).
    flushing: BTreeSet<SessionId>,
    /// Path → sessions told to drop it by an Invalidate notice they have not acknowledged
    /// → the highest such notice's number: an index of the outboxes, so that a write finds
    /// who may still hold a path it touches without a look at every session (that scan
    /// made each write cost O(sessions): 53% of the master's CPU, and its lease lapsed,
    /// while `chubby-bench --sessions 100000` set its sessions up).
    unacked: BTreeMap<Arc<str>, BTreeMap<SessionId, u64>>,
    counts: NoticeCounts,
    /// Handles kept in memory only (`kept.rs`).
    kept: KeptHandles,
}

impl Master {
    /// A master that took over at `now` in `epoch`, with the sessions recorded in `db`.
    #[must_use]
    pub fn new(cfg: MasterConfig, epoch: Ballot, now: Instant, db: &Db) -> Master {
        let mut master = Master {
            cfg,
            epoch,
            sessions: BTreeMap::new(),
            cachers: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            writes: BTreeMap::new(),
            gates: BTreeMap::new(),
            flushing: BTreeSet::new(),
            unacked: BTreeMap::new(),
            counts: NoticeCounts::default(),
            kept: KeptHandles::new(epoch),
        };
        let ids: Vec<SessionId> = db.sessions().map(|(id, _)| *id).collect();
        for id in ids {
            master.add_session(id, now);
            master.push_notice(id, Notice::FailOver);
            master.flushing.insert(id);
        }
        master
    }

    /// The handles kept in memory only (`kept.rs`).
    #[must_use]
    pub fn kept(&self) -> &KeptHandles {
        &self.kept
    }

    /// The handles kept in memory only, to change.
    pub fn kept_mut(&mut self) -> &mut KeptHandles {
        &mut self.kept
    }

    /// The client epoch this master serves.
    #[must_use]
    pub fn epoch(&self) -> Ballot {
        self.epoch
    }

    /// Live sessions (for status).
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// What this master told sessions so far.
    #[must_use]
    pub fn counts(&self) -> NoticeCounts {
        self.counts
    }

    /// Sessions that have not yet acknowledged the fail-over notice.
    #[must_use]
    pub fn flushing_count(&self) -> usize {
        self.flushing.len()
    }

    fn add_session(&mut self, id: SessionId, now: Instant) {
        self.sessions.insert(
            id,
            Live {
                lease_until: now.plus_ms(self.cfg.session_lease_ms),
                parked: None,
                last_seq: 0,
                outbox: Vec::new(),
                last_call: now,
                ending: false,
                caching: 0,
            },
        );
    }

    /// A session was created (its CreateSession applied): its lease starts now. Returns
    /// the lease granted, in ms.
    pub fn session_created(&mut self, id: SessionId, now: Instant) -> u64 {
        if !self.sessions.contains_key(&id) {
            self.add_session(id, now);
        }
        self.cfg.session_lease_ms
    }

    /// Refuses calls on a session this master does not serve (never created, ended, or
    /// being ended); otherwise notes the call unless it is a KeepAlive (a session that only
    /// keeps itself alive is idle).
    ///
    /// # Errors
    /// `SessionExpired`.
    pub fn check_session(
        &mut self,
        id: SessionId,
        now: Instant,
        keepalive: bool,
    ) -> Result<(), Refusal> {
        match self.sessions.get_mut(&id) {
            Some(live) if !live.ending => {
                if !keepalive {
                    live.last_call = now;
                }
                Ok(())
            }
            _ => Err(Refusal::SessionExpired),
        }
    }

    /// The ExpireSession or CloseSession this master proposed for `id` was not proposed
    /// after all (the log's queue was full): the next tick decides again.
    pub fn end_failed(&mut self, id: SessionId) {
        if let Some(live) = self.sessions.get_mut(&id) {
            live.ending = false;
        }
    }

    /// A write applied: any path it changed that was not announced at its gate (a
    /// misprediction) is invalidated now, late, and logged by the caller. Returns those
    /// paths. `request` is `None` for a command this master did not gate.
    pub fn late_invalidations(
        &mut self,
        request: Option<u64>,
        changed: &[Arc<str>],
        now: Instant,
        out: &mut Vec<MasterAction>,
    ) -> Vec<Arc<str>> {
        let announced = request.and_then(|r| self.writes.get(&r));
        let missed: Vec<Arc<str>> = changed
            .iter()
            .filter(|p| announced.is_none_or(|a| !a.contains(p)))
            .filter(|p| self.cachers.contains_key(*p))
            .cloned()
            .collect();
        self.invalidate_cachers(&missed, now, out);
        missed
    }

    /// A KeepAlive: acknowledges notices up to `acked` and parks under `token` (any older
    /// parked call of the session is answered now). Answered at once if notices wait.
    pub fn keepalive(
        &mut self,
        id: SessionId,
        acked: u64,
        token: u64,
        now: Instant,
        out: &mut Vec<MasterAction>,
    ) {
        let Some(live) = self.sessions.get_mut(&id).filter(|l| !l.ending) else {
            out.push(MasterAction::ReplyKeepAlive {
                token,
                reply: Err(Refusal::SessionExpired),
            });
            return;
        };
        let invalidations = live
            .outbox
            .iter()
            .filter(|n| n.seq <= acked && matches!(n.notice, Notice::Invalidate { .. }))
            .count();
        self.counts.invalidations_acked += invalidations as u64;
        Self::unindex(&mut self.unacked, id, &live.outbox, acked);
        live.outbox.retain(|n| n.seq > acked);
        if let Some((old, arrived)) = live.parked.replace((token, now)) {
            // A newer call replaces it (the client gave up on the old one).
            let reply = Self::reply_of(&self.cfg, live, now, arrived);
            out.push(MasterAction::ReplyKeepAlive { token: old, reply });
        }
        let has_notices = !live.outbox.is_empty();
        self.acked(id, acked, out);
        if has_notices {
            self.answer(id, now, out);
        }
    }

    /// Records that `id` processed every notice up to `acked`: opens gates that waited
    /// only for it.
    fn acked(&mut self, id: SessionId, acked: u64, out: &mut Vec<MasterAction>) {
        if acked >= 1 {
            self.flushing.remove(&id);
        }
        let mut open = Vec::new();
        for (request, gate) in &mut self.gates {
            if gate.waits.get(&id).is_some_and(|seq| *seq <= acked) {
                gate.waits.remove(&id);
            }
            if gate.waits.is_empty() {
                open.push(*request);
            }
        }
        for request in open {
            self.gates.remove(&request);
            out.push(MasterAction::Propose { request });
        }
    }

    /// Stops waiting for `id` anywhere (its lease ended or it is gone).
    fn forget_waits(&mut self, id: SessionId, out: &mut Vec<MasterAction>) {
        self.flushing.remove(&id);
        self.acked(id, u64::MAX, out);
        let caching = self
            .sessions
            .get_mut(&id)
            .map_or(0, |l| std::mem::take(&mut l.caching));
        if caching > 0 {
            for set in self.cachers.values_mut() {
                set.remove(&id);
            }
            self.cachers.retain(|_, set| !set.is_empty());
        }
    }

    /// Answers the parked KeepAlive of `id`, if any, extending its lease.
    fn answer(&mut self, id: SessionId, now: Instant, out: &mut Vec<MasterAction>) {
        let Some(live) = self.sessions.get_mut(&id) else {
            return;
        };
        if let Some((token, arrived)) = live.parked.take() {
            let reply = Self::reply_of(&self.cfg, live, now, arrived);
            out.push(MasterAction::ReplyKeepAlive { token, reply });
        }
    }

    /// The reply to a KeepAlive that arrived at `arrived`. The lease granted is counted
    /// from then, not from now: the client counts it from when it sent the call (which is
    /// earlier still), so its local lease never outlasts this one; counted from now, a
    /// KeepAlive parked for two thirds of a lease would leave the client only a third of
    /// a lease before the next answer, which comes a full two thirds later (jeopardy
    /// every cycle).
    fn reply_of(
        cfg: &MasterConfig,
        live: &mut Live,
        now: Instant,
        arrived: Instant,
    ) -> Result<KeepAliveReply, Refusal> {
        // The lease only moves forward (Chubby §2.8).
        live.lease_until = live.lease_until.max(now.plus_ms(cfg.session_lease_ms));
        Ok(KeepAliveReply {
            lease_ms: live.lease_until.ms_since(arrived),
            notices: live.outbox.clone(),
        })
    }

    /// Queues a notice for `id` and answers its parked KeepAlive at once. Returns its
    /// number (0 if the session is unknown).
    fn push_notice(&mut self, id: SessionId, notice: Notice) -> u64 {
        let Some(live) = self.sessions.get_mut(&id) else {
            return 0;
        };
        live.last_seq += 1;
        let seq = live.last_seq;
        if let Notice::Invalidate { paths } = &notice {
            for path in paths {
                self.unacked
                    .entry(Arc::from(path.as_str()))
                    .or_default()
                    .insert(id, seq);
            }
        }
        live.outbox.push(Numbered { seq, notice });
        seq
    }

    /// Takes the Invalidate notices of `outbox` numbered up to `acked` out of the index.
    fn unindex(
        unacked: &mut BTreeMap<Arc<str>, BTreeMap<SessionId, u64>>,
        id: SessionId,
        outbox: &[Numbered],
        acked: u64,
    ) {
        for n in outbox.iter().filter(|n| n.seq <= acked) {
            let Notice::Invalidate { paths } = &n.notice else {
                continue;
            };
            for path in paths {
                if let Some(holders) = unacked.get_mut(path.as_str()) {
                    if holders.get(&id).is_some_and(|seq| *seq <= acked) {
                        holders.remove(&id);
                    }
                    if holders.is_empty() {
                        unacked.remove(path.as_str());
                    }
                }
            }
        }
    }

    /// Queues a notice and answers the session's parked KeepAlive.
    fn notify(&mut self, id: SessionId, notice: Notice, now: Instant, out: &mut Vec<MasterAction>) {
        if self.push_notice(id, notice) != 0 {
            self.answer(id, now, out);
        }
    }

    /// Sends every session recorded as caching one of `paths` one Invalidate notice for
    /// those paths (answering its parked KeepAlive) and forgets the records. Returns, per
    /// session, the notice number it must acknowledge.
    fn invalidate_cachers(
        &mut self,
        paths: &[Arc<str>],
        now: Instant,
        out: &mut Vec<MasterAction>,
    ) -> BTreeMap<SessionId, u64> {
        let mut per_session: BTreeMap<SessionId, Vec<String>> = BTreeMap::new();
        for path in paths {
            for s in self.cachers.remove(path).unwrap_or_default() {
                if let Some(live) = self.sessions.get_mut(&s) {
                    live.caching = live.caching.saturating_sub(1);
                }
                per_session.entry(s).or_default().push(path.to_string());
            }
        }
        let mut waits = BTreeMap::new();
        for (s, paths) in per_session {
            let seq = self.push_notice(s, Notice::Invalidate { paths });
            if seq != 0 {
                self.counts.invalidations_sent += 1;
                waits.insert(s, seq);
                self.answer(s, now, out);
            }
        }
        waits
    }

    /// True if a write touching `path` is gated or in flight.
    #[must_use]
    pub fn is_busy(&self, path: &str) -> bool {
        self.in_flight.contains_key(path)
    }

    /// A write `request` that touches `paths` is about to be proposed. Returns true if it
    /// may be proposed now; otherwise [`MasterAction::Propose`] comes once every cache of
    /// those paths is gone. Either way the paths stay uncachable until
    /// [`Master::write_applied`].
    pub fn gate_write(
        &mut self,
        request: u64,
        paths: Vec<Arc<str>>,
        now: Instant,
        out: &mut Vec<MasterAction>,
    ) -> bool {
        for path in &paths {
            *self.in_flight.entry(Arc::clone(path)).or_insert(0) += 1;
        }
        let mut waits = self.invalidate_cachers(&paths, now, out);
        if !paths.is_empty() {
            for s in &self.flushing {
                waits.entry(*s).or_insert(1);
            }
        }
        // A session told to drop one of these paths for an earlier write, and that has
        // not yet acknowledged, still holds the old data: this write waits for it too (it
        // is no longer among the cachers, and the earlier write may still be gated).
        // A session being ended is not waited for: its lease ended (its client's cache went
        // with it), or it was idle with nothing to drop (see `tick`).
        for path in &paths {
            for (s, seq) in self.unacked.get(path).into_iter().flatten() {
                if self.sessions.get(s).is_some_and(|l| !l.ending) {
                    let w = waits.entry(*s).or_insert(0);
                    *w = (*w).max(*seq);
                }
            }
        }
        self.writes.insert(request, paths);
        if waits.is_empty() || (cfg!(feature = "bug-injection") && self.cfg.bug_skip_cache_wait) {
            return true;
        }
        self.gates.insert(request, Gate { waits });
        self.counts.writes_gated += 1;
        false
    }

    /// The write `request` was applied (or will never be): its paths may be cached again.
    pub fn write_applied(&mut self, request: u64) {
        self.gates.remove(&request);
        for path in self.writes.remove(&request).unwrap_or_default() {
            if let Some(n) = self.in_flight.get_mut(&path) {
                *n -= 1;
                if *n == 0 {
                    self.in_flight.remove(&path);
                }
            }
        }
    }

    /// A read of `path` was served to `id`: returns the token that lets the client cache
    /// it, and records the session as caching it — unless a write to the path is in
    /// flight or the session has not flushed since the fail-over.
    pub fn served_read(&mut self, id: SessionId, path: &str) -> Option<CacheToken> {
        if self.in_flight.contains_key(path) || self.flushing.contains(&id) {
            return None;
        }
        let live = self.sessions.get_mut(&id).filter(|l| !l.ending)?;
        let seq = live.last_seq;
        let added = match self.cachers.get_mut(path) {
            Some(set) => set.insert(id),
            None => self
                .cachers
                .insert(Arc::from(path), std::iter::once(id).collect())
                .is_none(),
        };
        if added {
            live.caching += 1;
        }
        Some(CacheToken {
            epoch: self.epoch,
            seq,
        })
    }

    /// The session ended in the database (expired or closed): forget it, failing its
    /// parked KeepAlive.
    pub fn session_ended(&mut self, id: SessionId, out: &mut Vec<MasterAction>) {
        self.kept.session_ended(id);
        self.forget_waits(id, out);
        if let Some(live) = self.sessions.remove(&id) {
            Self::unindex(&mut self.unacked, id, &live.outbox, u64::MAX);
            if let Some((token, _)) = live.parked {
                out.push(MasterAction::ReplyKeepAlive {
                    token,
                    reply: Err(Refusal::SessionExpired),
                });
            }
        }
    }

    /// Time passes: answer KeepAlives that are due, end sessions whose lease ended, close
    /// idle ones. `has_handles` tells whether a session has open handles in the database
    /// (those kept in this master's memory count too).
    pub fn tick(
        &mut self,
        now: Instant,
        has_handles: impl Fn(SessionId) -> bool,
        out: &mut Vec<MasterAction>,
    ) {
        let before = self.cfg.reply_before_ms();
        let mut due = Vec::new();
        let mut ended = Vec::new();
        let mut idle = Vec::new();
        for (id, live) in &self.sessions {
            if live.ending {
                continue;
            }
            if live.parked.is_some() && now.plus_ms(before) >= live.lease_until {
                // Answered even if the lease ran out meanwhile (a stalled loop): the client
                // is alive and asking, and a longer lease is always safe.
                due.push(*id);
            } else if live.lease_until <= now {
                ended.push(*id);
            } else if live.caching == 0
                && !live.outbox.iter().any(|n| {
                    // It may still serve something from its cache until it acknowledges.
                    matches!(n.notice, Notice::Invalidate { .. } | Notice::FailOver)
                })
                && now.ms_since(live.last_call) >= self.cfg.session_idle_ms
                && !has_handles(*id)
                && self.kept.count(*id) == 0
            {
                idle.push(*id);
            }
        }
        for id in due {
            self.answer(id, now, out);
        }
        for id in ended {
            self.end(id, out);
            out.push(MasterAction::Expire { session: id });
        }
        for id in idle {
            self.end(id, out);
            out.push(MasterAction::CloseIdle { session: id });
        }
    }

    /// The session and cache state agree with itself; cheap enough for the simulator to
    /// call after every step. The one that matters most: no path is both recorded as
    /// cached and written (a write in flight invalidated every cacher first, and reads
    /// are not cached while it flies).
    ///
    /// # Panics
    /// When an invariant is broken: that is a bug in this module.
    pub fn check_invariants(&self) {
        self.kept.check_invariants();
        for (path, sessions) in &self.cachers {
            assert!(!sessions.is_empty(), "empty cacher set for {path}");
            assert!(
                !self.in_flight.contains_key(path),
                "{path} is recorded as cached while a write to it is in flight"
            );
            for s in sessions {
                let live = self.sessions.get(s);
                assert!(
                    live.is_some_and(|l| !l.ending),
                    "session {s:?} caches {path} but is gone or ending"
                );
            }
        }
        for (id, live) in &self.sessions {
            let cached = self.cachers.values().filter(|set| set.contains(id)).count();
            assert_eq!(live.caching, cached, "session {id:?}'s caching count");
            assert!(
                !(live.ending && live.parked.is_some()),
                "ending session {id:?} holds a parked KeepAlive"
            );
            assert!(
                live.outbox.windows(2).all(|w| w[0].seq < w[1].seq),
                "session {id:?}'s notices out of order"
            );
            assert!(
                live.outbox.last().is_none_or(|n| n.seq <= live.last_seq),
                "session {id:?} holds a notice numbered past its last"
            );
        }
        for s in &self.flushing {
            assert!(
                self.sessions.contains_key(s),
                "flushing {s:?} is not a session"
            );
        }
        let mut unacked: BTreeMap<&str, BTreeMap<SessionId, u64>> = BTreeMap::new();
        for (id, live) in &self.sessions {
            for n in &live.outbox {
                if let Notice::Invalidate { paths } = &n.notice {
                    for p in paths {
                        unacked.entry(p).or_default().insert(*id, n.seq);
                    }
                }
            }
        }
        assert!(
            unacked.len() == self.unacked.len()
                && unacked
                    .iter()
                    .zip(&self.unacked)
                    .all(|((p, a), (q, b))| *p == &**q && a == b),
            "the index of unacknowledged invalidations differs from the outboxes"
        );
        let mut counted: BTreeMap<&str, u32> = BTreeMap::new();
        for paths in self.writes.values() {
            for p in paths {
                *counted.entry(p).or_insert(0) += 1;
            }
        }
        assert_eq!(
            counted.len(),
            self.in_flight.len(),
            "paths in flight differ from the writes' paths"
        );
        for (path, n) in &self.in_flight {
            assert_eq!(counted.get(&**path), Some(n), "in-flight count of {path}");
        }
        for request in self.gates.keys() {
            assert!(
                self.writes.contains_key(request),
                "gate of write {request} that holds no paths"
            );
        }
    }

    /// Marks a session as ending: it caches nothing from now on (its lease ended, or it
    /// is idle with nothing cached that matters) and its calls are refused.
    fn end(&mut self, id: SessionId, out: &mut Vec<MasterAction>) {
        self.forget_waits(id, out);
        if let Some(live) = self.sessions.get_mut(&id) {
            live.ending = true;
            if let Some((token, _)) = live.parked.take() {
                out.push(MasterAction::ReplyKeepAlive {
                    token,
                    reply: Err(Refusal::SessionExpired),
                });
            }
        }
    }
}
