//! What a replica puts in a Paxos value: database commands tagged with who proposed them,
//! and the node's own bookkeeping entries.
//!
//! A value's commands are opaque to Paxos; the node encodes each as an [`Entry`]. The tag
//! (`origin`, `request`) lets the master that proposed a command answer the client waiting
//! for it when the command is delivered — even if it was delivered through another master's
//! phase-1 re-proposal. `origin` is a random number drawn at every start of the process, so
//! tags from an earlier run of the same replica never match a later run's requests.
//!
//! Every replica decodes the same bytes, so a value that fails to decode fails alike
//! everywhere: it is skipped (and logged) on every replica, keeping them identical.

use bincode::{Decode, Encode};
use chubby_protocol::codec::{self, DecodeError, EncodeError};
use chubby_protocol::{Instant, Slot};

use crate::db::Command;

/// One command inside a Paxos value.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Entry {
    /// A database command.
    Db {
        /// The proposing process's start nonce.
        origin: u64,
        /// Its request number within that process.
        request: u64,
        /// The command.
        cmd: Command,
    },
    /// The master's digest at `slot` (where an `Op::Checksum` was applied): every replica
    /// compares its own (PML §6.2).
    DigestCheck {
        /// The slot of the checksum command.
        slot: Slot,
        /// The master's digest there.
        digest: u64,
    },
}

impl Entry {
    /// The entry as bytes for a Paxos value.
    ///
    /// # Errors
    /// Too large for a frame (callers check sizes first).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }

    /// Decodes one command of a delivered value: of this build, or of a build before call
    /// numbers (whose encoding is a strict prefix of this one's, so neither is mistaken
    /// for the other), so that a log written by it still applies.
    ///
    /// # Errors
    /// Bytes that are not an entry of either.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        match codec::decode::<Entry>(bytes) {
            Ok(entry) => Ok(entry),
            Err(e @ DecodeError::Malformed(_)) => match codec::decode::<EntryV1>(bytes) {
                Ok(EntryV1::Db {
                    origin,
                    request,
                    epoch,
                    now,
                    op,
                }) => Ok(Entry::Db {
                    origin,
                    request,
                    cmd: Command::new(epoch, now, op),
                }),
                Ok(EntryV1::DigestCheck { slot, digest }) => {
                    Ok(Entry::DigestCheck { slot, digest })
                }
                Err(_) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The database time stamp an encoded entry carries, if any, read from its first
    /// fields only: the command itself (up to a whole file) is neither decoded nor copied.
    #[must_use]
    pub fn stamp_of(bytes: &[u8]) -> Option<Instant> {
        match codec::decode_prefix::<EntryHead>(bytes) {
            Ok(EntryHead::Db { now, .. }) => Some(now),
            _ => None,
        }
    }
}

/// The leading fields of an encoded [`Entry`]: bincode writes a struct's fields in order,
/// so these decode the variant tag, `origin`, `request` and the command's `epoch` and `now`.
/// The `entry_head_matches_entry` test keeps the two in step.
#[derive(Decode)]
enum EntryHead {
    Db {
        #[allow(dead_code)]
        origin: u64,
        #[allow(dead_code)]
        request: u64,
        #[allow(dead_code)]
        epoch: chubby_protocol::Ballot,
        now: Instant,
    },
}

/// An [`Entry`] as builds before call numbers encoded it: the command had no `call`.
#[derive(Decode)]
enum EntryV1 {
    Db {
        origin: u64,
        request: u64,
        epoch: chubby_protocol::Ballot,
        now: Instant,
        op: crate::db::Op,
    },
    DigestCheck {
        slot: Slot,
        digest: u64,
    },
}

/// The master's stamp for database commands: `max(wall clock, every stamp seen in the log)`,
/// so stamps never go backwards even when a new master's clock is behind the old one's
/// (see `db::command`). Fed with every value the replica persists or delivers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stamper {
    seen: Instant,
}

impl Stamper {
    /// Notes the stamps in a value's encoded commands (undecodable ones are ignored: they
    /// are skipped on apply too).
    pub fn observe(&mut self, commands: &[Vec<u8>]) {
        for stamp in commands.iter().filter_map(|bytes| Entry::stamp_of(bytes)) {
            self.note(stamp);
        }
    }

    /// Notes one stamp seen in the log.
    pub fn note(&mut self, stamp: Instant) {
        self.seen = self.seen.max(stamp);
    }

    /// A stamp for a new command at wall-clock time `wall`.
    #[must_use]
    pub fn stamp(&mut self, wall: Instant) -> Instant {
        self.seen = self.seen.max(wall);
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Op;
    use chubby_protocol::Ballot;

    fn db_entry(now: u64) -> Vec<u8> {
        Entry::Db {
            origin: 7,
            request: 1,
            cmd: Command::new(Ballot::ZERO, Instant(now), Op::Noop),
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn stamps_never_go_below_what_the_log_holds() {
        let mut s = Stamper::default();
        s.observe(&[db_entry(5_000), b"garbage".to_vec()]);
        assert_eq!(
            s.stamp(Instant(1_000)),
            Instant(5_000),
            "clock behind the log"
        );
        assert_eq!(s.stamp(Instant(9_000)), Instant(9_000));
        assert_eq!(
            s.stamp(Instant(8_000)),
            Instant(9_000),
            "clock stepped back"
        );
    }

    #[test]
    fn entry_head_matches_entry() {
        let bytes = db_entry(4_242);
        assert_eq!(Entry::stamp_of(&bytes), Some(Instant(4_242)));
        let check = Entry::DigestCheck {
            slot: Slot(1),
            digest: 2,
        };
        assert_eq!(Entry::stamp_of(&check.encode().unwrap()), None);
        assert_eq!(Entry::stamp_of(b"\x01"), None);
    }

    #[test]
    fn entries_round_trip() {
        let e = Entry::DigestCheck {
            slot: Slot(4),
            digest: 99,
        };
        assert_eq!(Entry::decode(&e.encode().unwrap()).unwrap(), e);
        assert!(Entry::decode(b"\x01\xff\xff").is_err());
        let numbered = Entry::Db {
            origin: 7,
            request: 1,
            cmd: Command {
                call: Some(chubby_protocol::client_msg::CallNumber {
                    number: 9,
                    done_below: 8,
                }),
                ..Command::new(Ballot::ZERO, Instant(3), Op::Noop)
            },
        };
        assert_eq!(
            Entry::decode(&numbered.encode().unwrap()).unwrap(),
            numbered
        );
    }

    /// A log written by a build before call numbers still applies: its entries decode,
    /// unnumbered; and a cut entry of either build is refused, not misread.
    #[test]
    fn entries_of_the_build_before_call_numbers_decode() {
        #[derive(bincode::Encode)]
        enum Old {
            Db {
                origin: u64,
                request: u64,
                epoch: Ballot,
                now: Instant,
                op: Op,
            },
        }
        let op = Op::Close {
            session: chubby_protocol::SessionId(4),
            handle: chubby_protocol::HandleId(5),
        };
        let bytes = codec::encode(&Old::Db {
            origin: 7,
            request: 2,
            epoch: Ballot::ZERO,
            now: Instant(11),
            op: op.clone(),
        })
        .unwrap();
        let want = Entry::Db {
            origin: 7,
            request: 2,
            cmd: Command::new(Ballot::ZERO, Instant(11), op),
        };
        assert_eq!(Entry::decode(&bytes).unwrap(), want);
        assert_eq!(Entry::stamp_of(&bytes), Some(Instant(11)));
        let new = want.encode().unwrap();
        for cut in 1..new.len() - 1 {
            assert!(Entry::decode(&new[..cut]).is_err(), "cut at {cut}");
        }
    }
}
