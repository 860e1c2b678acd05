//! The cell's checkers (Chubby §2.4, §2.7–2.9; the list):
//!
//! - **stale read**: a read (cache included) returns a generation at least that of every
//!   write to the file that completed before the read began;
//! - **expiry after the client's lease**: checked where the master proposes an expiry
//!   ([`super::client`]);
//! - **one believing holder**: a client that is told it acquired the lock, while its session
//!   is safe, finds no other client acting as holder;
//! - **fenced resource**: messages lock holders send to a resource (delayed less than the
//!   lock-delay) arrive in lock-generation order — what lock-delay is for;
//! - **linearizable files**: every file's history of get, put and CAS
//!   ([`super::super::checkers::linearizable`]);
//! - **each write applied once**: every value written is unique, so a value seen (read, or
//!   answered to its writer) at two content generations was applied twice — what
//!   exactly-once calls prevent when a copy of a write is sent again.

use std::collections::BTreeMap;

use chubby_protocol::{Generation, SessionId};

use super::super::checkers::linearizable::{self, HistoryOp, RegOp, RegResult, Verdict};
use super::super::checkers::{violation, Violation};

/// A register operation as called.
#[derive(Clone, Debug)]
pub(crate) enum Pending {
    Get,
    Put(Vec<u8>),
    Cas { expected: Vec<u8>, new: Vec<u8> },
}

/// What a read returned.
#[derive(Clone, Debug)]
pub(crate) struct ReadSeen {
    pub contents: Vec<u8>,
    pub generation: Generation,
}

#[derive(Debug)]
struct Op {
    path: String,
    op: HistoryOp,
    /// Never happened (a definite failure): left out of the history.
    failed: bool,
}

/// Everything the cell checkers observe.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    /// Which client holds each session.
    pub session_of: BTreeMap<SessionId, usize>,
    ops: Vec<Op>,
    /// Per file: (completion µs, generation) of completed writes.
    writes: BTreeMap<String, Vec<(u64, Generation)>>,
    /// Clients acting as the lock's holder, with the generation they hold.
    believers: BTreeMap<usize, Generation>,
    /// The highest lock generation the resource has seen, and from whom.
    resource_max: Option<(Generation, usize)>,
    /// Every lock grant applied, by its place in the log (slot, command): its generation.
    grants: BTreeMap<(chubby_protocol::Slot, usize, usize), Generation>,
    /// The content generation each written value was seen at, per file.
    generation_of: BTreeMap<(String, Vec<u8>), Generation>,
    /// Histories checked for linearizability, and undecided ones.
    pub linearized: u64,
    pub undecided: u64,
}

impl Checks {
    pub fn begin(&mut self, client: usize, path: &str, pending: Pending, now: u64) -> usize {
        let op = match pending {
            Pending::Get => RegOp::Get,
            Pending::Put(v) => RegOp::Put(v),
            Pending::Cas { expected, new } => RegOp::Cas { expected, new },
        };
        self.ops.push(Op {
            path: path.to_owned(),
            op: HistoryOp {
                client,
                call: now,
                ret: None,
                op,
            },
            failed: false,
        });
        self.ops.len() - 1
    }

    /// `value` was seen in `path` at `generation` (by `client`, at `now`): it must be the
    /// generation it was seen at before, if any.
    fn seen_at(
        &mut self,
        path: &str,
        value: &[u8],
        generation: Generation,
        client: usize,
        now: u64,
    ) -> Result<(), Violation> {
        if value.is_empty() {
            return Ok(()); // the initial contents, and nothing else, are empty
        }
        let key = (path.to_owned(), value.to_vec());
        match self.generation_of.get(&key) {
            Some(g) if *g != generation => Err(violation(
                "write_applied_once",
                format!(
                    "{path}: value {:?} seen by client {client} at {now}us at generation {}, \
                     and before at generation {}: one write applied twice",
                    String::from_utf8_lossy(value),
                    generation.0,
                    g.0
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.generation_of.insert(key, generation);
                Ok(())
            }
        }
    }

    pub fn read_done(&mut self, h: usize, now: u64, seen: ReadSeen) -> Result<(), Violation> {
        let (path, client) = (self.ops[h].path.clone(), self.ops[h].op.client);
        self.seen_at(&path, &seen.contents, seen.generation, client, now)?;
        let op = &mut self.ops[h];
        op.op.ret = Some((now, RegResult::Value(seen.contents)));
        let began = op.op.call;
        let newest_before = self
            .writes
            .get(&op.path)
            .into_iter()
            .flatten()
            .filter(|(done, _)| *done < began)
            .map(|(_, g)| *g)
            .max();
        match newest_before {
            Some(g) if seen.generation < g => Err(violation(
                "stale_read",
                format!(
                    "client {} read {} at generation {} at {now}us, but a write of generation \
                     {} completed before the read began at {began}us",
                    op.op.client, op.path, seen.generation.0, g.0
                ),
            )),
            _ => Ok(()),
        }
    }

    pub fn write_done(
        &mut self,
        h: usize,
        now: u64,
        generation: Generation,
    ) -> Result<(), Violation> {
        let op = &mut self.ops[h];
        op.op.ret = Some((now, RegResult::Done));
        self.writes
            .entry(op.path.clone())
            .or_default()
            .push((now, generation));
        let value = match &op.op.op {
            RegOp::Put(v) | RegOp::Cas { new: v, .. } => v.clone(),
            RegOp::Get => return Ok(()),
        };
        let (path, client) = (op.path.clone(), op.op.client);
        self.seen_at(&path, &value, generation, client, now)
    }

    pub fn cas_mismatch(&mut self, h: usize, now: u64) {
        self.ops[h].op.ret = Some((now, RegResult::Mismatch));
    }

    /// The operation may or may not have happened.
    pub fn unknown(&mut self, h: usize) {
        self.ops[h].op.ret = None;
    }

    /// The operation certainly did not happen.
    pub fn failed(&mut self, h: usize) {
        self.ops[h].failed = true;
    }

    /// A grant of the lock was applied at `at` (slot, command, change) on some replica: every
    /// replica that applies that command grants the same generation, and grants in log
    /// order carry strictly increasing generations.
    pub fn lock_granted(
        &mut self,
        at: (chubby_protocol::Slot, usize, usize),
        generation: Generation,
    ) -> Result<(), Violation> {
        if let Some(&g) = self.grants.get(&at) {
            if g != generation {
                return Err(violation(
                    "lock_generations",
                    format!(
                        "replicas applying the grant at {at:?} disagree: generation {} and {}",
                        g.0, generation.0
                    ),
                ));
            }
            return Ok(());
        }
        let before = self.grants.range(..at).next_back().map(|(k, g)| (*k, *g));
        let after = self.grants.range(at..).next().map(|(k, g)| (*k, *g));
        self.grants.insert(at, generation);
        match (before, after) {
            (Some((k, g)), _) if g >= generation => Err(violation(
                "lock_generations",
                format!(
                    "the grant at {at:?} has generation {}, not above {} granted earlier at {k:?}",
                    generation.0, g.0
                ),
            )),
            (_, Some((k, g))) if g <= generation => Err(violation(
                "lock_generations",
                format!(
                    "the grant at {at:?} has generation {}, not below {} granted later at {k:?}",
                    generation.0, g.0
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `client` now acts as the lock's holder; `acting(c)` says whether another believer
    /// `c` may still act on it (its local lease has not ended: a stopped or cut-off client
    /// finds its lease over before it acts again).
    pub fn lock_belief_starts(
        &mut self,
        client: usize,
        generation: Generation,
        now: u64,
        acting: impl Fn(usize) -> bool,
    ) -> Result<(), Violation> {
        let other = self
            .believers
            .iter()
            .find(|(c, _)| **c != client && acting(**c))
            .map(|(c, g)| (*c, *g));
        self.believers.insert(client, generation);
        match other {
            Some((c, g)) => Err(violation(
                "lock_exclusive",
                format!(
                    "client {client} acquired the lock (generation {}) at {now}us while client \
                     {c} still acts as its holder (generation {})",
                    generation.0, g.0
                ),
            )),
            None => Ok(()),
        }
    }

    pub fn lock_belief_ends(&mut self, client: usize) {
        self.believers.remove(&client);
    }

    pub fn resource(
        &mut self,
        client: usize,
        generation: Generation,
        sent: u64,
        now: u64,
    ) -> Result<(), Violation> {
        match self.resource_max {
            Some((max, from)) if generation < max => Err(violation(
                "fenced_resource",
                format!(
                    "a message client {client} sent at {sent}us as holder of lock generation {} \
                     reached the resource at {now}us, after one from client {from} holding \
                     generation {}",
                    generation.0, max.0
                ),
            )),
            _ => {
                if self.resource_max.is_none_or(|(m, _)| generation > m) {
                    self.resource_max = Some((generation, client));
                }
                Ok(())
            }
        }
    }

    /// Checks every file's history; the first non-linearizable one is the violation.
    pub fn linearizability(&mut self) -> Result<(), Violation> {
        let mut by_path: BTreeMap<&str, Vec<HistoryOp>> = BTreeMap::new();
        for op in self.ops.iter().filter(|o| !o.failed) {
            by_path.entry(&op.path).or_default().push(op.op.clone());
        }
        for (path, history) in by_path {
            match linearizable::check(b"", &history) {
                Verdict::Linearizable => self.linearized += 1,
                Verdict::Undecided => self.undecided += 1,
                Verdict::NotLinearizable(why) => {
                    return Err(violation("linearizable", format!("{path}: {why}")))
                }
            }
        }
        Ok(())
    }
}
