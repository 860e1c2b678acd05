//! The comparison table of `chubby-bench --peers`: etcd, ZooKeeper and chubby measured in
//! one run, with chubby's ratio to etcd and the targets, met or not.
//!
//! chubby appears twice: through the FUSE mount driven by the peer harness's own Python
//! `fs` backend (the same code that drives etcd and ZooKeeper: like for like), and through
//! its Rust client library (what a service linking the library gets). Every target is
//! judged on both and the table says which held.

use super::peers::PeerFigures;
use super::Figure;

/// What a target asks of chubby's figure divided by etcd's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The ratio must be at least this.
    AtLeast(f64),
    /// The ratio must be at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(x) => ratio >= x,
            Target::AtMost(x) => ratio <= x,
        }
    }

    fn show(self) -> String {
        match self {
            Target::AtLeast(x) => format!("≥ {x}× etcd"),
            Target::AtMost(x) => format!("≤ {x}× etcd"),
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// What is measured, with its unit.
    pub label: String,
    /// etcd, ZooKeeper, chubby through the mount (Python), chubby's Rust client.
    pub values: [Option<f64>; 4],
    /// The target, if it sets one.
    pub target: Option<Target>,
}

fn native(figs: &[Figure], name: &str) -> Option<f64> {
    figs.iter().find(|f| f.name == name).map(|f| f.value)
}

/// The rows, from the three harness runs and chubby's own figures.
#[must_use]
pub fn rows(etcd: &PeerFigures, zk: &PeerFigures, fs: &PeerFigures, rs: &[Figure]) -> Vec<Row> {
    let row = |label: &str, get: fn(&PeerFigures) -> Option<f64>, fs_too: bool, rs_name: &str| {
        (
            label.to_owned(),
            [
                get(etcd),
                get(zk),
                if fs_too { get(fs) } else { None },
                native(rs, rs_name),
            ],
        )
    };
    let mut out = Vec::new();
    let mut push = |(label, values): (String, [Option<f64>; 4]), target| {
        out.push(Row {
            label,
            values,
            target,
        });
    };
    push(
        row(
            "write, 1 client, p50 (ms)",
            |f| f.write_p50_ms,
            true,
            "write latency p50",
        ),
        Some(Target::AtMost(0.5)),
    );
    push(
        row(
            "write, 1 client, p99 (ms)",
            |f| f.write_p99_ms,
            true,
            "write latency p99",
        ),
        None,
    );
    push(
        row(
            "writes, 16 clients (ops/s)",
            |f| f.write16_ops,
            true,
            "write throughput",
        ),
        Some(Target::AtLeast(2.0)),
    );
    push(
        row(
            "linearizable read, 1 client (ops/s)",
            |f| f.read1_ops,
            false,
            "uncached reads, 1 client",
        ),
        None,
    );
    push(
        row(
            "linearizable read, 16 clients (ops/s)",
            |f| f.read16_ops,
            false,
            "uncached reads, 16 clients",
        ),
        None,
    );
    // Cached reads through the mount against etcd's linearizable reads.
    push(
        (
            "cached read through the mount, 1 client (ops/s; etcd, ZooKeeper: linearizable \
             read)"
                .to_owned(),
            [
                etcd.read1_ops,
                zk.read1_ops,
                fs.read1_ops,
                native(rs, "mount: cached read (open+read+close)"),
            ],
        ),
        Some(Target::AtLeast(20.0)),
    );
    push(
        (
            "cached read through the mount, 16 clients (ops/s; etcd, ZooKeeper: linearizable \
             read)"
                .to_owned(),
            [etcd.read16_ops, zk.read16_ops, fs.read16_ops, None],
        ),
        Some(Target::AtLeast(20.0)),
    );
    push(
        (
            "lock acquire+release, uncontended (ops/s)".to_owned(),
            [
                etcd.lock1_ops,
                zk.lock1_ops,
                fs.lock1_ops,
                native(rs, "lock acquire+release"),
            ],
        ),
        Some(Target::AtLeast(2.0)),
    );
    push(
        row(
            "contended hand-offs, 4 clients (/s)",
            |f| f.handoffs,
            true,
            "contended lock hand-offs",
        ),
        Some(Target::AtLeast(5.0)),
    );
    push(
        row(
            "fail-over gap after kill -9 of the leader (ms)",
            |f| f.failover_ms,
            true,
            "fail-over gap",
        ),
        Some(Target::AtMost(1.0)),
    );
    push(
        row(
            "holder kill -9 -> waiter acquires (ms)",
            |f| f.expiry_ms,
            true,
            "holder kill -9 -> waiter acquires",
        ),
        None,
    );
    push(
        row(
            "server CPU per write, 16 clients (ms, replicas summed)",
            |f| f.cpu_ms_per_write,
            true,
            "replica CPU per write",
        ),
        Some(Target::AtMost(1.0)),
    );
    push(
        row(
            "server RSS under 16-client writes (MB, largest replica)",
            |f| f.rss_mb,
            true,
            "replica RSS under writes",
        ),
        Some(Target::AtMost(1.0)),
    );
    out
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The rows as a Markdown table.
#[must_use]
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| figure | etcd | ZooKeeper | chubby: mount, Python (same code) | chubby: Rust client \
         | chubby ÷ etcd (mount / Rust) | target | met (mount / Rust) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = |i: usize| match (r.values[i], r.values[0]) {
            (Some(c), Some(e)) if e > 0.0 => Some(c / e),
            _ => None,
        };
        let show_ratio = |x: Option<f64>| x.map_or("–".to_owned(), |x| format!("{x:.2}×"));
        let met = |x: Option<f64>| match (r.target, x) {
            (Some(t), Some(x)) => {
                if t.met(x) {
                    "yes"
                } else {
                    "no"
                }
            }
            _ => "–",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} / {} |\n",
            r.label,
            cell(r.values[0]),
            cell(r.values[1]),
            cell(r.values[2]),
            cell(r.values[3]),
            show_ratio(ratio(2)),
            show_ratio(ratio(3)),
            r.target.map_or("–".to_owned(), Target::show),
            met(ratio(2)),
            met(ratio(3)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets_are_judged_per_column() {
        let etcd = PeerFigures {
            write16_ops: Some(1000.0),
            write_p50_ms: Some(1.0),
            ..PeerFigures::default()
        };
        let fs = PeerFigures {
            write16_ops: Some(1500.0),
            write_p50_ms: Some(0.4),
            ..PeerFigures::default()
        };
        let rs = vec![
            Figure::rate(
                "write throughput",
                2500,
                std::time::Duration::from_secs(1),
                String::new(),
            ),
            Figure::ms(
                "write latency p50",
                std::time::Duration::from_micros(600),
                String::new(),
            ),
        ];
        let rows = rows(&etcd, &PeerFigures::default(), &fs, &rs);
        let text = markdown(&rows);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("{start}: {text}"))
                .to_owned()
        };
        let w16 = line("| writes, 16 clients");
        assert!(
            w16.contains("| 1.50× / 2.50× | ≥ 2× etcd | no / yes |"),
            "{w16}"
        );
        let p50 = line("| write, 1 client, p50");
        assert!(
            p50.contains("| 0.40× / 0.60× | ≤ 0.5× etcd | yes / no |"),
            "{p50}"
        );
        let lock = line("| lock acquire+release");
        assert!(lock.contains("| – / – |"), "{lock}");
    }
}
