//! Numbering a session's calls for exactly-once delivery (protocol `client_msg`, "Exactly
//! once"; the server's `db::calls`), pure so that the library and the simulator's clients
//! number alike.
//!
//! Every call that changes the database gets the next number, and keeps it however often
//! it is sent (after a lost connection, to the next master after a fail-over). With each
//! copy goes `done_below`: the lowest number still awaiting its answer, so the master may
//! forget every outcome below it. A call given up (its future dropped) leaves the set at
//! once: a late copy of it is then refused as forgotten, never applied twice.

use std::collections::BTreeSet;

use chubby_protocol::client_msg::{Call, CallNumber};

/// The numbers of one session's calls.
#[derive(Clone, Debug)]
pub struct CallNumbers {
    next: u64,
    in_flight: BTreeSet<u64>,
}

impl Default for CallNumbers {
    fn default() -> Self {
        CallNumbers {
            next: 1,
            in_flight: BTreeSet::new(),
        }
    }
}

impl CallNumbers {
    /// A new session's: its first call is number 1.
    #[must_use]
    pub fn new() -> CallNumbers {
        CallNumbers::default()
    }

    /// Numbers a new call; it awaits its answer until [`CallNumbers::end`].
    pub fn begin(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        self.in_flight.insert(n);
        n
    }

    /// What a copy of call `number` carries, now.
    #[must_use]
    pub fn stamp(&self, number: u64) -> CallNumber {
        let lowest = self.in_flight.first().copied().unwrap_or(self.next);
        CallNumber {
            number,
            done_below: lowest.min(number),
        }
    }

    /// Call `number` has its answer (or was given up).
    pub fn end(&mut self, number: u64) {
        self.in_flight.remove(&number);
    }

    /// Calls awaiting their answers.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// True for the calls that are numbered: those that change the database on behalf of
    /// a live session. Reads are repeatable as they are; CreateSession has no session yet,
    /// and CloseSession ends the records with the session (a copy sent again is refused
    /// `SessionExpired`, which is what it wanted).
    #[must_use]
    pub fn numbered(call: &Call) -> bool {
        match call {
            Call::Open(_)
            | Call::Close { .. }
            | Call::SetContents { .. }
            | Call::Delete { .. }
            | Call::SetAcl { .. }
            | Call::Acquire { .. }
            | Call::TryAcquire { .. }
            | Call::Release { .. }
            | Call::SetSequencer { .. }
            | Call::Rename { .. }
            | Call::SetAttr { .. } => true,
            Call::Status
            | Call::CreateSession
            | Call::GetContentsAndStat { .. }
            | Call::ChangeMembers { .. }
            | Call::KeepAlive { .. }
            | Call::CloseSession { .. }
            | Call::GetStat { .. }
            | Call::ReadDir { .. }
            | Call::StatPath { .. }
            | Call::GetSequencer { .. }
            | Call::LockHolders { .. }
            | Call::CheckSequencer { .. }
            | Call::Backup
            | Call::BackupRead { .. }
            | Call::Reopen { .. }
            | Call::Reannounce { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `done_below` is the lowest number still awaited, never above the call's own, and
    /// moves past a call only once it ended.
    #[test]
    fn done_below_trails_the_oldest_call_awaiting_its_answer() {
        let mut n = CallNumbers::new();
        let a = n.begin();
        let b = n.begin();
        assert_eq!((a, b), (1, 2));
        assert_eq!(n.stamp(b).done_below, 1, "a still awaits its answer");
        n.end(a);
        assert_eq!(n.stamp(b).done_below, 2);
        let c = n.begin();
        assert_eq!(n.stamp(c).done_below, 2, "b still awaits its answer");
        n.end(b);
        assert_eq!(n.stamp(c).done_below, 3);
        assert_eq!(n.stamp(c).number, 3);
        n.end(c);
        assert_eq!(n.in_flight(), 0);
        let d = n.begin();
        assert_eq!(n.stamp(d).done_below, d);
    }
}
