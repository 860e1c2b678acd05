//! Linearizability of one file's client history (Wing & Gong's search, with Lowe's
//! memoisation of visited configurations).
//!
//! The file is a register of contents. Operations: `Get` returns the contents; `Put`
//! replaces them; `Cas` replaces them if they equal the contents the client expected (our
//! CAS names a generation; every write's contents are unique and bump the generation by
//! one, so the generation the client saw identifies the contents it saw) and else reports
//! a mismatch. An operation whose outcome the client never learned (a time-out, "outcome
//! unknown") may take effect at any point after its call, or never.
//!
//! The search linearises, one at a time, an operation that may come first: one called
//! before every remaining completed operation returned. It succeeds when every completed
//! operation is linearised; it backtracks on a result the register could not give.

use std::collections::HashSet;

/// What was done.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    /// Read the contents.
    Get,
    /// Write contents.
    Put(Vec<u8>),
    /// Write `new` if the contents are `expected`.
    Cas {
        /// Contents expected.
        expected: Vec<u8>,
        /// Contents to write.
        new: Vec<u8>,
    },
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegResult {
    /// A `Get`'s contents.
    Value(Vec<u8>),
    /// A `Put` or `Cas` applied.
    Done,
    /// A `Cas` found other contents.
    Mismatch,
}

/// One operation of the history (times in true µs).
#[derive(Clone, Debug)]
pub struct HistoryOp {
    /// Which client (for reports).
    pub client: usize,
    /// When it was called.
    pub call: u64,
    /// When its result arrived, with the result; `None`: unknown.
    pub ret: Option<(u64, RegResult)>,
    /// The operation.
    pub op: RegOp,
}

/// Applies `op` to `state`: the new state and the result the register gives.
fn step(state: &[u8], op: &RegOp) -> (Vec<u8>, RegResult) {
    match op {
        RegOp::Get => (state.to_vec(), RegResult::Value(state.to_vec())),
        RegOp::Put(v) => (v.clone(), RegResult::Done),
        RegOp::Cas { expected, new } => {
            if state == expected.as_slice() {
                (new.clone(), RegResult::Done)
            } else {
                (state.to_vec(), RegResult::Mismatch)
            }
        }
    }
}

/// Budget of configurations visited before the check gives up (reported, not failed).
pub const VISIT_BUDGET: usize = 2_000_000;

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearisation exists.
    Linearizable,
    /// None exists; the message describes the history's shape.
    NotLinearizable(String),
    /// The search ran out of budget.
    Undecided,
}

/// Is `history` (of one register starting with contents `initial`) linearisable?
#[must_use]
pub fn check(initial: &[u8], history: &[HistoryOp]) -> Verdict {
    // Unknown reads change nothing and constrain nothing.
    let ops: Vec<&HistoryOp> = history
        .iter()
        .filter(|h| h.ret.is_some() || h.op != RegOp::Get)
        .collect();
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let completed = ops.iter().filter(|h| h.ret.is_some()).count();
    let mut seen: HashSet<(Vec<u64>, Vec<u8>)> = HashSet::new();
    // Depth-first, iterative: (done set, state, completed done count).
    let mut stack: Vec<(Vec<u64>, Vec<u8>, usize)> = vec![(vec![0; words], initial.to_vec(), 0)];
    let mut visits = 0usize;
    while let Some((done, state, ndone)) = stack.pop() {
        if ndone == completed {
            return Verdict::Linearizable;
        }
        visits += 1;
        if visits > VISIT_BUDGET {
            return Verdict::Undecided;
        }
        let is_done = |k: usize| done[k / 64] & (1 << (k % 64)) != 0;
        // The earliest return among remaining completed operations bounds who may go next.
        let horizon = (0..n)
            .filter(|&k| !is_done(k))
            .filter_map(|k| ops[k].ret.as_ref().map(|(t, _)| *t))
            .min()
            .unwrap_or(u64::MAX);
        // Pushed last-first, so the earliest-called candidate is tried first.
        for k in (0..n)
            .rev()
            .filter(|&k| !is_done(k) && ops[k].call <= horizon)
        {
            let (next, result) = step(&state, &ops[k].op);
            let fits = match &ops[k].ret {
                Some((_, r)) => *r == result,
                None => true,
            };
            if !fits {
                continue;
            }
            let mut d = done.clone();
            d[k / 64] |= 1 << (k % 64);
            let nd = ndone + usize::from(ops[k].ret.is_some());
            if seen.insert((d.clone(), next.clone())) {
                stack.push((d, next, nd));
            }
        }
    }
    let unknown = n - completed;
    Verdict::NotLinearizable(format!(
        "no linearisation of {n} operations ({completed} completed, {unknown} unknown) from \
         contents {:?}",
        String::from_utf8_lossy(initial)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<(u64, RegResult)>, op: RegOp) -> HistoryOp {
        HistoryOp {
            client: 0,
            call,
            ret,
            op,
        }
    }
    fn v(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn sequential_histories() {
        let ok = [
            op(0, Some((1, RegResult::Done)), RegOp::Put(v("a"))),
            op(2, Some((3, RegResult::Value(v("a")))), RegOp::Get),
        ];
        assert_eq!(check(b"", &ok), Verdict::Linearizable);
        let stale = [
            op(0, Some((1, RegResult::Done)), RegOp::Put(v("a"))),
            op(2, Some((3, RegResult::Value(v("")))), RegOp::Get),
        ];
        assert!(matches!(check(b"", &stale), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        let h = [
            op(0, Some((10, RegResult::Done)), RegOp::Put(v("a"))),
            op(1, Some((9, RegResult::Value(v("")))), RegOp::Get),
            op(2, Some((8, RegResult::Value(v("a")))), RegOp::Get),
        ];
        assert_eq!(check(b"", &h), Verdict::Linearizable);
        // Once a read returned the new value, a read that starts later cannot see the old.
        let h = [
            op(0, Some((10, RegResult::Done)), RegOp::Put(v("a"))),
            op(1, Some((2, RegResult::Value(v("a")))), RegOp::Get),
            op(3, Some((4, RegResult::Value(v("")))), RegOp::Get),
        ];
        assert!(matches!(check(b"", &h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let took = [
            op(0, None, RegOp::Put(v("a"))),
            op(5, Some((6, RegResult::Value(v("a")))), RegOp::Get),
        ];
        assert_eq!(check(b"", &took), Verdict::Linearizable);
        let did_not = [
            op(0, None, RegOp::Put(v("a"))),
            op(5, Some((6, RegResult::Value(v("")))), RegOp::Get),
        ];
        assert_eq!(check(b"", &did_not), Verdict::Linearizable);
        // But not before it was called.
        let early = [
            op(5, Some((6, RegResult::Value(v("a")))), RegOp::Get),
            op(7, None, RegOp::Put(v("a"))),
        ];
        assert!(matches!(check(b"", &early), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn cas_outcomes() {
        let h = [
            op(0, Some((1, RegResult::Done)), RegOp::Put(v("a"))),
            op(
                2,
                Some((3, RegResult::Done)),
                RegOp::Cas {
                    expected: v("a"),
                    new: v("b"),
                },
            ),
            op(
                4,
                Some((5, RegResult::Mismatch)),
                RegOp::Cas {
                    expected: v("a"),
                    new: v("c"),
                },
            ),
            op(6, Some((7, RegResult::Value(v("b")))), RegOp::Get),
        ];
        assert_eq!(check(b"", &h), Verdict::Linearizable);
        let wrong = [
            op(0, Some((1, RegResult::Done)), RegOp::Put(v("a"))),
            op(
                2,
                Some((3, RegResult::Mismatch)),
                RegOp::Cas {
                    expected: v("a"),
                    new: v("b"),
                },
            ),
        ];
        assert!(matches!(check(b"", &wrong), Verdict::NotLinearizable(_)));
    }
}
