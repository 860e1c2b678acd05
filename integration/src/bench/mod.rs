//! The benchmark behind `chubby-bench`: workloads run against a real cell of
//! `chubby-server` processes on loopback through the client library, and the figures they
//! print (DESIGN §8: speed is shown by benchmarks that print figures, never by timed tests).
//!
//! [`workloads`] holds the workloads through the library, [`mount`] those through a real
//! `chubby mount`; [`peers`] runs the etcd/ZooKeeper harness (and its Python `fs` backend on
//! our mount) and [`compare`] makes the side-by-side table; this module the measuring:
//! latency samples with percentiles, counted operations over a fixed span, and the table.

pub mod compare;
pub mod failover;
pub mod mount;
pub mod peers;
pub mod sessions;
pub mod soak;
pub mod workloads;

/// CPU time (user + system) process `pid` has used, in seconds (`/proc`, USER_HZ = 100).
#[must_use]
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some(ticks as f64 / 100.0)
}

/// Resident memory of process `pid`, in MB (`/proc/PID/status` VmRSS).
#[must_use]
pub fn proc_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

use std::time::Duration;

/// Latency samples of one workload.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// Records one operation's latency.
    pub fn record(&mut self, d: Duration) {
        self.samples.push(d);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.samples.extend_from_slice(&other.samples);
    }

    /// Number of samples.
    #[must_use]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True if nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `p`-th percentile (nearest rank, `p` in 0..=100); zero without samples.
    #[must_use]
    pub fn percentile(&self, p: u32) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        // Nearest rank: the smallest sample with at least p% of samples at or below it.
        let rank = (n * p.min(100) as usize).div_ceil(100).max(1);
        sorted[rank - 1]
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The value, in `unit`.
    pub value: f64,
    /// Unit of `value` (`ms`, `ops/s`, ...).
    pub unit: &'static str,
    /// How it was measured (clients, samples, span, caveats).
    pub detail: String,
}

impl Figure {
    /// A latency figure in milliseconds.
    #[must_use]
    pub fn ms(name: &str, d: Duration, detail: String) -> Figure {
        Figure {
            name: name.to_owned(),
            value: d.as_secs_f64() * 1000.0,
            unit: "ms",
            detail,
        }
    }

    /// A rate: `count` operations in `span`.
    #[must_use]
    pub fn rate(name: &str, count: u64, span: Duration, detail: String) -> Figure {
        let secs = span.as_secs_f64();
        Figure {
            name: name.to_owned(),
            #[allow(clippy::cast_precision_loss)]
            value: if secs > 0.0 { count as f64 / secs } else { 0.0 },
            unit: "ops/s",
            detail,
        }
    }
}

/// The figures as an aligned text table.
#[must_use]
pub fn table(figures: &[Figure]) -> String {
    let width = figures.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in figures {
        let value = if f.value >= 100.0 {
            format!("{:.0}", f.value)
        } else {
            format!("{:.2}", f.value)
        };
        out.push_str(&format!(
            "{:<width$}  {:>10} {:<6} {}\n",
            f.name, value, f.unit, f.detail
        ));
    }
    out
}

/// The figures as one JSON object per line.
#[must_use]
pub fn json_lines(figures: &[Figure]) -> String {
    let mut out = String::new();
    for f in figures {
        let line = serde_json::json!({
            "name": f.name,
            "value": f.value,
            "unit": f.unit,
            "detail": f.detail,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile(50), Duration::ZERO);
        for ms in (1..=100).rev() {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile(50), Duration::from_millis(50));
        assert_eq!(l.percentile(99), Duration::from_millis(99));
        assert_eq!(l.percentile(100), Duration::from_millis(100));
        assert_eq!(l.percentile(0), Duration::from_millis(1));
        let mut one = Latencies::default();
        one.record(Duration::from_millis(7));
        assert_eq!(one.percentile(99), Duration::from_millis(7));
    }

    #[test]
    fn rates_and_table() {
        let f = Figure::rate("writes", 500, Duration::from_secs(2), "x".into());
        assert!((f.value - 250.0).abs() < 1e-9);
        let zero = Figure::rate("none", 5, Duration::ZERO, String::new());
        assert!(zero.value.abs() < f64::EPSILON);
        let t = table(&[
            f,
            Figure::ms("lat", Duration::from_micros(1500), "y".into()),
        ]);
        assert!(t.contains("writes") && t.contains("250 ops/s"), "{t}");
        assert!(t.contains("1.50 ms"), "{t}");
    }
}
