//! The properties every simulated run must keep, one file each, each citing its source.
//! Each checker observes events as they happen and reports the first violation.

pub mod agreement;
pub mod delivery_order;
pub mod linearizable;
pub mod liveness;
pub mod promise_monotonic;
pub mod single_master;

/// A broken property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker that caught it.
    pub checker: &'static str,
    /// What happened.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.checker, self.detail)
    }
}

pub(crate) fn violation(checker: &'static str, detail: String) -> Violation {
    Violation { checker, detail }
}
