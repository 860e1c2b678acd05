//! The simulator must be shown to catch bugs (PML §6.3: "deliberately leaving known protocol
//! bugs in and confirming the test caught them"). Each test plants one bug and requires a
//! violation, of the checker that guards against it, within a fixed seed budget.
#![allow(clippy::unwrap_used)]

use chubby_integration::sim::{run, SimOptions};
use chubby_server::paxos::Bugs;

/// Sweeps seeds with `bug` on until a violation; returns the checkers that fired.
fn hunt(bug: &str, budget: u64) -> (u64, String) {
    let mut bugs = Bugs::default();
    assert!(bugs.enable(bug));
    for seed in 0..budget {
        let mut options = SimOptions::new(seed);
        options.bugs = bugs;
        if let Some(v) = run(&options).violation {
            return (seed, v.checker.to_string());
        }
    }
    panic!("bug {bug} went unnoticed for {budget} seeds");
}

#[test]
fn reply_before_persist_is_caught() {
    let (seed, checker) = hunt("reply-before-persist", 60);
    assert!(
        ["delivery_order", "promise_monotonic", "agreement"].contains(&checker.as_str()),
        "seed {seed}: {checker}"
    );
}

#[test]
fn acceptor_ignoring_the_lease_is_caught() {
    let (seed, checker) = hunt("acceptor-ignores-lease", 200);
    assert_eq!(checker, "single_master", "seed {seed}");
}

#[test]
fn skipping_the_no_vote_rule_is_caught() {
    let (seed, checker) = hunt("skip-no-vote-rule", 200);
    assert!(
        ["agreement", "delivery_order"].contains(&checker.as_str()),
        "seed {seed}: {checker}"
    );
}

/// Like [`hunt`], for `sim cell` with the client-level bug `bug`.
fn hunt_cell(bug: &str, budget: u64) -> (u64, String) {
    let mut bugs = chubby_integration::sim::cell::CellBugs::default();
    assert!(bugs.enable(bug));
    for seed in 0..budget {
        let mut options = SimOptions::new(seed);
        options.cell = Some(bugs);
        if let Some(v) = run(&options).violation {
            return (seed, v.checker.to_string());
        }
    }
    panic!("bug {bug} went unnoticed for {budget} seeds");
}

#[test]
fn a_client_acknowledging_before_dropping_its_cache_is_caught() {
    let (seed, checker) = hunt_cell("client-acks-before-drop", 50);
    assert!(
        ["stale_read", "linearizable"].contains(&checker.as_str()),
        "seed {seed}: {checker}"
    );
}

#[test]
fn a_master_not_waiting_for_caches_is_caught() {
    let (seed, checker) = hunt_cell("master-skips-cache-wait", 50);
    assert!(
        ["stale_read", "linearizable"].contains(&checker.as_str()),
        "seed {seed}: {checker}"
    );
}

#[test]
fn ignoring_lock_delay_is_caught() {
    let (seed, checker) = hunt_cell("lock-delay-ignored", 400);
    assert_eq!(checker, "fenced_resource", "seed {seed}");
}
