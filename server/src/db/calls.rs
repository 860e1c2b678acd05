//! Exactly-once session calls: the outcome of every numbered call, kept in the replicated
//! database beside the command that produced it (issue 21; docs/sessions.md "Exactly
//! once").
//!
//! # Why here
//! A call in flight when its master dies is sent again to the next master. Whether its
//! first copy was applied is known only to the log, so the record must be in the state
//! the log builds: a master's memory dies with it. Every replica applies the same
//! commands in the same order, so every replica holds the same records, and the next
//! master answers the copy sent again from them.
//!
//! # The rule, applied with each numbered command (session `s`, number `n`, `done_below`)
//! 1. Outcomes of `s` numbered below `done_below` are dropped; `floor(s)` rises to it.
//! 2. `n` below `floor(s)`: refused [`Refusal::CallForgotten`], nothing applied. A copy that
//!    arrives after its session had the answer (or after the bound dropped it) is never
//!    applied a second time.
//! 3. `n` recorded: its recorded result is the answer; nothing applied.
//! 4. Otherwise the command is applied and its result recorded under `n`.
//!
//! # Bounds
//! A session's client numbers its calls and acknowledges every answer it has through
//! `done_below`, so its records are the calls it has in flight. A client that never
//! acknowledges is held to [`CALL_RECORDS_PER_SESSION_MAX`]: beyond it the oldest record
//! goes and the floor rises past it (only that client's own resends can suffer). The
//! records of a session go with it.
//!
//! # Invariants
//! - Every recorded number of a session is at or above its floor.
//! - A session has a window entry iff it has records or a floor above zero, and the
//!   window's count is its number of records, at most the bound.

use std::collections::BTreeMap;
use std::ops::Bound;

use bincode::{Decode, Encode};
use chubby_protocol::db::fnv1a64;
use chubby_protocol::{Refusal, SessionId};

use super::cow_map::{CowMap, EntryDigest, FieldHasher};
use super::{ensure, Outcome};

/// Outcomes one session may have recorded at once (far above the calls a client has in
/// flight: the mount's are bounded by the kernel's FUSE queue).
pub const CALL_RECORDS_PER_SESSION_MAX: u64 = 1_000;

/// A numbered call's result as applied.
pub type CallResult = Result<Outcome, Refusal>;

/// What the records say of a numbered call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not seen: apply it.
    New,
    /// Applied before, with this result.
    Answered(Box<CallResult>),
    /// Below the session's floor: answered before and forgotten.
    Forgotten,
}

/// A session's window of numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
struct Window {
    /// Numbers below this are forgotten.
    floor: u64,
    /// Records held.
    count: u64,
}

impl EntryDigest<SessionId> for Window {
    fn entry_digest(id: &SessionId, w: &Window) -> u64 {
        FieldHasher::new("call-window")
            .u64(id.0)
            .u64(w.floor)
            .u64(w.count)
            .finish()
    }
}

/// One recorded result.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
struct Recorded(CallResult);

impl EntryDigest<(SessionId, u64)> for Recorded {
    fn entry_digest(key: &(SessionId, u64), r: &Recorded) -> u64 {
        let bytes = bincode::encode_to_vec(&r.0, bincode::config::standard())
            .expect("encoding into memory has no failure mode");
        let h = FieldHasher::new("call").u64(key.0 .0).u64(key.1).finish();
        fnv1a64(h, &bytes)
    }
}

/// The records of every session.
#[derive(Clone, Debug, Default, Encode, Decode)]
pub struct Calls {
    windows: CowMap<SessionId, Window>,
    results: CowMap<(SessionId, u64), Recorded>,
}

impl Calls {
    /// Step 1 of the rule: `session` has every answer below `done_below`.
    pub fn acknowledge(&mut self, session: SessionId, done_below: u64) {
        let floor = self.windows.get(&session).map_or(0, |w| w.floor);
        if done_below <= floor {
            return;
        }
        let mut dropped = 0;
        while let Some((&key, _)) = self
            .results
            .first_in(Bound::Included(&(session, floor)), &(session, done_below))
        {
            self.results.remove(&key);
            dropped += 1;
        }
        let count = self.windows.get(&session).map_or(0, |w| w.count) - dropped;
        self.windows.insert(
            session,
            Window {
                floor: done_below,
                count,
            },
        );
    }

    /// Steps 2 and 3 of the rule.
    #[must_use]
    pub fn seen(&self, session: SessionId, number: u64) -> Seen {
        if number < self.windows.get(&session).map_or(0, |w| w.floor) {
            return Seen::Forgotten;
        }
        match self.results.get(&(session, number)) {
            Some(r) => Seen::Answered(Box::new(r.0.clone())),
            None => Seen::New,
        }
    }

    /// Step 4: `number` of `session` was applied with `result`. Keeps the bound by
    /// dropping the session's oldest record.
    pub fn record(&mut self, session: SessionId, number: u64, result: CallResult) {
        let mut w = self
            .windows
            .get(&session)
            .copied()
            .unwrap_or(Window { floor: 0, count: 0 });
        debug_assert!(number >= w.floor, "recording a forgotten number");
        if self
            .results
            .insert((session, number), Recorded(result))
            .is_none()
        {
            w.count += 1;
        }
        if w.count > CALL_RECORDS_PER_SESSION_MAX {
            if let Some((&key, _)) = self
                .results
                .first_in(Bound::Included(&(session, 0)), &(session, u64::MAX))
            {
                self.results.remove(&key);
                w.count -= 1;
                w.floor = key.1 + 1;
            }
        }
        self.windows.insert(session, w);
    }

    /// The session ended: its records go.
    pub fn end_session(&mut self, session: SessionId) {
        if self.windows.remove(&session).is_none() {
            return;
        }
        while let Some((&key, _)) = self
            .results
            .first_in(Bound::Included(&(session, 0)), &(session, u64::MAX))
        {
            self.results.remove(&key);
        }
    }

    /// How many results are recorded, in all.
    #[must_use]
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// True if none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Sessions that have a window.
    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.windows.iter().map(|(s, _)| *s)
    }

    /// A digest of the records: O(1), from the running sums.
    #[must_use]
    pub fn digest(&self) -> u64 {
        FieldHasher::new("calls")
            .u64(self.windows.sum())
            .u64(self.results.sum())
            .finish()
    }

    /// Checks the invariants of the module docs.
    ///
    /// # Errors
    /// The first broken one, described.
    pub fn validate(&self) -> Result<(), String> {
        self.windows.validate()?;
        self.results.validate()?;
        let mut counts: BTreeMap<SessionId, u64> = BTreeMap::new();
        for ((session, number), _) in self.results.iter() {
            let w = self
                .windows
                .get(session)
                .ok_or_else(|| format!("call {number} of session {session:?} has no window"))?;
            ensure!(
                *number >= w.floor,
                "call {number} of session {session:?} below its floor {}",
                w.floor
            );
            *counts.entry(*session).or_default() += 1;
        }
        for (session, w) in self.windows.iter() {
            let have = counts.get(session).copied().unwrap_or(0);
            ensure!(
                w.count == have,
                "session {session:?} counts {} calls but has {have}",
                w.count
            );
            ensure!(
                w.count <= CALL_RECORDS_PER_SESSION_MAX,
                "session {session:?} holds {} calls",
                w.count
            );
        }
        Ok(())
    }
}
