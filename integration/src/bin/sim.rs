//! `sim`: the deterministic simulator's command line.
//!
//! ```text
//! sim paxos --seeds 2000            # sweep seeds 0..2000; last line: seeds: N, violations: V ...
//! sim paxos --seed 17               # replay one seed with a full event trace
//! sim paxos --seeds 300 --bug lease-from-receipt   # prove a checker catches a planted bug
//! sim cell --seeds 1000             # the whole cell: database, sessions, caches, clients
//! sim cell --seeds 200 --bug master-skips-cache-wait
//! sim paxos --seeds 500 --membership always   # every seed adds and removes replicas
//! ```

use std::process::ExitCode;

use chubby_integration::sim::cell::CellBugs;
use chubby_integration::sim::{self, RunStats, SimOptions};
use chubby_server::paxos::Bugs;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sim",
    about = "chubby's deterministic simulator: seeded runs of whole cells with faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate the replicated log (Multi-Paxos) under crashes, disk loss, partitions, loss,
    /// duplication, reordering and clock drift, checking agreement, delivery order, promise
    /// durability, single master lease and liveness after healing.
    Paxos(PaxosArgs),
    /// Simulate the whole cell: every replica runs the database and the master's session
    /// logic over the replicated log, and clients with sessions, KeepAlives, caches and
    /// locks read, write, compare-and-swap and lock files while replicas crash, partitions
    /// come and go and clients pause past their grace. Checks, besides the log's
    /// properties: no stale read (cache included), expiry only after the client's local
    /// lease ended, one lock holder at a time, a fenced resource sees holders in order
    /// (lock-delay), and linearizable file histories.
    Cell(PaxosArgs),
}

#[derive(clap::Args, Debug)]
struct PaxosArgs {
    /// Number of seeds to sweep, starting at --start.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay exactly one seed, printing every event.
    #[arg(long)]
    seed: Option<u64>,
    /// Cell size (3 or 5); random per seed if omitted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=9))]
    replicas: Option<u64>,
    /// Inject a deliberate bug (repeatable). paxos: reply-before-persist,
    /// acceptor-ignores-lease, lease-from-receipt, skip-no-vote-rule,
    /// snapshot-drops-members, phase2-founders-set. cell: those, and
    /// client-acks-before-drop, master-skips-cache-wait, lock-delay-ignored,
    /// forget-call-outcomes.
    #[arg(long = "bug")]
    bugs: Vec<String>,
    /// Draw clock rates beyond the drift bound the lease math assumes (a negative test).
    #[arg(long)]
    drift_beyond_bound: bool,
    /// Stop the sweep at the first violation.
    #[arg(long)]
    fail_fast: bool,
    /// Simulated milliseconds of faults before healing.
    #[arg(long, default_value_t = 20_000)]
    safety_ms: u64,
    /// Simulated milliseconds after healing, in which progress is required.
    #[arg(long, default_value_t = 40_000)]
    liveness_ms: u64,
    /// Membership changes during faults: `auto` (half the seeds add and remove replicas,
    /// the master included), `always` or `never`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    membership: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A core assertion is a finding, not a crash of the sweep: one line, then on to the seed
    // report below.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let (mode, args) = match cli.command {
        Command::Paxos(args) => ("paxos", args),
        Command::Cell(args) => ("cell", args),
    };
    let mut bugs = Bugs::default();
    let mut cell_bugs = CellBugs::default();
    for name in &args.bugs {
        let known = bugs.enable(name) || (mode == "cell" && cell_bugs.enable(name));
        if !known {
            let mut names = Bugs::NAMES.to_vec();
            if mode == "cell" {
                names.extend(CellBugs::NAMES);
            }
            eprintln!("sim: unknown bug '{name}'; known: {}", names.join(", "));
            return ExitCode::from(2);
        }
    }
    let options = |seed: u64| SimOptions {
        seed,
        replicas: args.replicas.map(|n| n as usize),
        bugs,
        drift_beyond_bound: args.drift_beyond_bound,
        trace: args.seed.is_some(),
        safety_ms: args.safety_ms,
        liveness_ms: args.liveness_ms,
        cell: (mode == "cell").then_some(cell_bugs),
        membership: match args.membership.as_str() {
            "always" => Some(true),
            "never" => Some(false),
            _ => None,
        },
    };
    let reproduce = |seed: u64| {
        let mut line =
            format!("cargo run --release -p chubby-integration --bin sim -- {mode} --seed {seed}");
        if let Some(n) = args.replicas {
            line.push_str(&format!(" --replicas {n}"));
        }
        for bug in &args.bugs {
            line.push_str(&format!(" --bug {bug}"));
        }
        if args.drift_beyond_bound {
            line.push_str(" --drift-beyond-bound");
        }
        if args.membership != "auto" {
            line.push_str(&format!(" --membership {}", args.membership));
        }
        line
    };
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.start..args.start + args.seeds).collect(),
    };
    let mut total = RunStats::default();
    let mut violations = 0u64;
    for &seed in &seeds {
        let outcome = match std::panic::catch_unwind(|| sim::run(&options(seed))) {
            Ok(outcome) => outcome,
            Err(_) => {
                violations += 1;
                println!("PANIC seed={seed}: a core assertion failed");
                println!("REPRODUCE: {}", reproduce(seed));
                if args.fail_fast {
                    break;
                }
                continue;
            }
        };
        total.add(&outcome.stats);
        if let Some(v) = &outcome.violation {
            violations += 1;
            println!("VIOLATION seed={seed}: {v}");
            println!("REPRODUCE: {}", reproduce(seed));
            if args.fail_fast {
                break;
            }
        }
    }
    println!(
        "seeds: {}, violations: {violations}; {}",
        seeds.len(),
        total.summary()
    );
    if total.cell.undecided > 0 {
        // A history the search gave up on is unverified: not a pass.
        println!(
            "UNDECIDED: {} file histories exceeded the linearizability search budget",
            total.cell.undecided
        );
        return ExitCode::FAILURE;
    }
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
