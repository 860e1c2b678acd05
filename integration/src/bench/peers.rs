//! The side-by-side half of `chubby-bench --peers DIR`: runs the peer harness
//! (`../shared/bench/peers`: etcd 3.4 and ZooKeeper 3.8 from Debian packages, Python
//! clients) against fresh 3-member clusters, and its `fs` backend against a FUSE mount of
//! our cell, so that one Python workload drives all three systems; then reads the figures
//! back out of its JSON.
//!
//! The harness is used as it is: `cluster.py` starts and stops the peers (fresh data each
//! time), `bench.py` measures. What it needs of our cell (the replicas' pids, which one is
//! master, how to restart a killed one) it gets through its documented environment hooks,
//! served by the two small scripts [`FsHooks`] writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The tests run on every system (the harness's list without `lockc_watchnext`, an
/// etcd-only variant).
pub const TESTS: &str = "idle,write1,write16,read1,read16,lock1,lockc,failover,expiry";

/// The harness kills the leader 3 times per fail-over test (`failover_reps`, not a
/// command-line option): runs of `--tests failover` this many times over give ≥ 10 kills per
/// system, as issue 21 asks (the first run's 3 and 3 more per extra run).
pub const FAILOVER_EXTRA_RUNS: usize = 3;

/// Where the harness and its Python are.
#[derive(Debug, Clone)]
pub struct Harness {
    dir: PathBuf,
    python: PathBuf,
    results: PathBuf,
}

impl Harness {
    /// The harness in `dir`, with the virtualenv its `setup.sh` made.
    ///
    /// # Errors
    /// The scripts or the virtualenv are missing (the message says what to run).
    pub fn locate(dir: &Path) -> Result<Harness, String> {
        for script in ["bench.py", "cluster.py", "setup.sh"] {
            if !dir.join(script).is_file() {
                return Err(format!(
                    "{} has no {script}: --peers names the peer harness directory \
                     (../shared/bench/peers)",
                    dir.display()
                ));
            }
        }
        let base = PathBuf::from(
            std::env::var("PEERBENCH_DIR").unwrap_or_else(|_| "/tmp/peerbench".to_owned()),
        );
        let python = base.join("venv/bin/python");
        if !python.is_file() {
            return Err(format!(
                "{} is missing: run `bash {}/setup.sh` first (it installs etcd and ZooKeeper \
                 from Debian's packages and the Python clients)",
                python.display(),
                dir.display()
            ));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let results = base.join("results").join(format!("chubby-bench-{stamp}"));
        std::fs::create_dir_all(&results).map_err(|e| format!("{}: {e}", results.display()))?;
        Ok(Harness {
            dir: dir.to_owned(),
            python,
            results,
        })
    }

    /// Where the JSON results go.
    #[must_use]
    pub fn results(&self) -> &Path {
        &self.results
    }

    fn cluster(&self, verb: &str, system: &str, fresh: bool) -> Result<(), String> {
        let mut cmd = Command::new("python3");
        cmd.arg(self.dir.join("cluster.py")).arg(verb).arg(system);
        if fresh {
            cmd.arg("--fresh");
        }
        let status = cmd
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .map_err(|e| format!("cluster.py: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cluster.py {verb} {system} failed ({status})"))
        }
    }

    /// Runs `bench.py --system SYSTEM --tests TESTS` (a fresh cluster first for etcd and
    /// zk, stopped after) and returns its JSON. `env` is given to bench.py (the `fs` hooks).
    ///
    /// # Errors
    /// The cluster did not start, bench.py failed or wrote no JSON.
    pub fn run(
        &self,
        system: &str,
        tests: &str,
        tag: &str,
        scale: f64,
        env: &[(String, String)],
    ) -> Result<Value, String> {
        let peer = system == "etcd" || system == "zk";
        if peer {
            // A member left from an earlier, interrupted run would hold the ports.
            self.cluster("stop", system, false)?;
            self.cluster("start", system, true)?;
        }
        let out = self.results.join(format!("{system}-{tag}.json"));
        let status = Command::new("timeout")
            .arg("1500")
            .arg(&self.python)
            .arg(self.dir.join("bench.py"))
            .args(["--system", system, "--tests", tests, "--tag", tag])
            .arg("--scale")
            .arg(scale.to_string())
            .arg("--out")
            .arg(&out)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(std::io::stderr()))
            .status();
        if peer {
            self.cluster("stop", system, false)?;
        }
        let status = status.map_err(|e| format!("bench.py: {e}"))?;
        if !status.success() {
            return Err(format!("bench.py --system {system} failed ({status})"));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", out.display()))
    }
}

/// The `fs` backend's hooks for our cell: a script printing the master's pid and one
/// restarting a killed replica, over pid files `DIR/pids/<id>`.
#[derive(Debug)]
pub struct FsHooks {
    dir: PathBuf,
}

impl FsHooks {
    /// Writes the scripts and pid files in `dir` for the cell whose cell file and replica
    /// configs are given, its replicas running as `pids` (id order), started by `server`.
    ///
    /// # Errors
    /// A file could not be written.
    pub fn new(
        dir: &Path,
        chubby: &Path,
        server: &Path,
        cell_file: &Path,
        configs: &[PathBuf],
        pids: &[u32],
    ) -> Result<FsHooks, String> {
        let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        let pid_dir = dir.join("pids");
        std::fs::create_dir_all(&pid_dir).map_err(|e| io(&pid_dir, e))?;
        for (i, pid) in pids.iter().enumerate() {
            let f = pid_dir.join((i + 1).to_string());
            std::fs::write(&f, format!("{pid}\n")).map_err(|e| io(&f, e))?;
        }
        let leader = format!(
            "#!/bin/sh\n# Prints the pid of the cell's master (waits up to 25 s for one: the \
             harness gives it 30).\n\
             for i in $(seq 250); do\n\
             m=$({chubby} status --json --cell {cell} 2>/dev/null | python3 -c \
             'import json,sys; m=json.load(sys.stdin).get(\"master\"); print(m if m else \"\")' \
             2>/dev/null)\n\
             if [ -n \"$m\" ]; then cat {pids}/$m; exit 0; fi\n\
             sleep 0.1\ndone\nexit 1\n",
            chubby = q(chubby),
            cell = q(cell_file),
            pids = q(&pid_dir),
        );
        let mut restore = format!(
            "#!/bin/sh\n# Restarts the replica whose pid was $1 and records its new pid.\n\
             n=\"\"\nfor f in {pids}/*; do [ \"$(cat \"$f\")\" = \"$1\" ] && n=$(basename \"$f\"); done\n\
             [ -n \"$n\" ] || exit 1\ncase $n in\n",
            pids = q(&pid_dir)
        );
        for (i, cfg) in configs.iter().enumerate() {
            restore.push_str(&format!("{} ) cfg={} ;;\n", i + 1, q(cfg)));
        }
        restore.push_str(&format!(
            "esac\nsetsid {server} --config \"$cfg\" --log warn >>{log} 2>&1 </dev/null &\n\
             echo $! > {pids}/$n\n",
            server = q(server),
            log = q(&dir.join("restarted.log")),
            pids = q(&pid_dir),
        ));
        for (name, text) in [("leader.sh", leader), ("restore.sh", restore)] {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| io(&p, e))?;
        }
        Ok(FsHooks {
            dir: dir.to_owned(),
        })
    }

    /// The environment for bench.py's `fs` backend rooted at `root`.
    #[must_use]
    pub fn env(&self, root: &Path) -> Vec<(String, String)> {
        let pids = self.pids();
        let labels: Vec<String> = pids
            .iter()
            .enumerate()
            .map(|(i, p)| format!("r{}:{p}", i + 1))
            .collect();
        vec![
            ("PEERBENCH_FS_ROOT".into(), root.display().to_string()),
            ("PEERBENCH_FS_PIDS".into(), labels.join(",")),
            (
                "PEERBENCH_FS_LEADER_PID_CMD".into(),
                format!("sh {}", q(&self.dir.join("leader.sh"))),
            ),
            (
                "PEERBENCH_FS_RESTORE_CMD".into(),
                format!("sh {} \"$1\"", q(&self.dir.join("restore.sh"))),
            ),
        ]
    }

    /// The replicas' pids now (restarted ones included), in id order.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for id in 1.. {
            let f = self.dir.join("pids").join(id.to_string());
            match std::fs::read_to_string(&f) {
                Ok(t) => out.push(t.trim().parse().unwrap_or(0)),
                Err(_) => break,
            }
        }
        out
    }
}

/// `p` quoted for `sh`.
fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// A path into a JSON value (`None` if any step is missing or not a number at the end).
fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[xs.len() / 2])
}

/// The fail-over reps of one run's results: each kill's gap (ms), the kills with no write
/// after them, and the failed writes in all (`None` without a fail-over test).
fn failover_reps(r: &Value) -> (Vec<f64>, usize, Option<f64>) {
    let Some(reps) = r["failover"]["reps"].as_array() else {
        return (Vec::new(), 0, None);
    };
    let gaps: Vec<f64> = reps
        .iter()
        .filter_map(|x| x["gap_kill_to_first_ok_ms"].as_f64())
        .collect();
    let stuck = reps.len() - gaps.len();
    let errors = reps
        .iter()
        .filter_map(|x| x["writes_failed"].as_f64())
        .sum::<f64>();
    (gaps, stuck, Some(errors))
}

/// The figures of one bench.py run that the comparison table uses.
#[derive(Clone, Debug, Default)]
pub struct PeerFigures {
    /// 1-client write p50 and p99, ms (client on the leader; `fs`: the mount).
    pub write_p50_ms: Option<f64>,
    /// See `write_p50_ms`.
    pub write_p99_ms: Option<f64>,
    /// 16-client writes, ops/s.
    pub write16_ops: Option<f64>,
    /// Linearizable reads, 1 client on the leader, ops/s (`fs`: open+read+close).
    pub read1_ops: Option<f64>,
    /// Linearizable reads, 16 clients, ops/s.
    pub read16_ops: Option<f64>,
    /// Uncontended acquire+release, ops/s.
    pub lock1_ops: Option<f64>,
    /// Contended hand-offs among 4 clients, per second.
    pub handoffs: Option<f64>,
    /// Mutual-exclusion violations seen in the contended test.
    pub violations: Option<f64>,
    /// Median fail-over gap, ms.
    pub failover_ms: Option<f64>,
    /// The worst fail-over gap, ms.
    pub failover_worst_ms: Option<f64>,
    /// Every kill's gap, ms, in order (kills whose client never wrote again are left out
    /// and counted in `failover_stuck`).
    pub failover_gaps_ms: Vec<f64>,
    /// Kills after which the client never wrote again within the harness's 40 s.
    pub failover_stuck: usize,
    /// Failed writes the client saw around the kills, in all (the harness's client gives
    /// each write 200 ms).
    pub failover_errors: Option<f64>,
    /// Median time from the holder's kill -9 to the waiter's acquisition, ms.
    pub expiry_ms: Option<f64>,
    /// Server CPU per 16-client write, ms (all servers summed).
    pub cpu_ms_per_write: Option<f64>,
    /// Largest server RSS under 16-client writes, MB.
    pub rss_mb: Option<f64>,
}

impl PeerFigures {
    /// Adds the fail-over reps of further `--tests failover` runs (`extra`: their JSON) to
    /// the figures of the first.
    #[must_use]
    pub fn with_failovers(mut self, extra: &[Value]) -> PeerFigures {
        for v in extra {
            let (gaps, stuck, errors) = failover_reps(&v["results"]);
            self.failover_gaps_ms.extend(gaps);
            self.failover_stuck += stuck;
            self.failover_errors = match (self.failover_errors, errors) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        self.failover_ms = median(self.failover_gaps_ms.clone());
        self.failover_worst_ms = self.failover_gaps_ms.iter().copied().reduce(f64::max);
        self
    }

    /// Reads the figures out of bench.py's JSON for `system`.
    #[must_use]
    pub fn of(system: &str, v: &Value) -> PeerFigures {
        let r = &v["results"];
        let target = if system == "fs" { "local" } else { "leader" };
        let write16 = num(r, &["write16", "ops_per_s"]);
        let cpu_pct = num(r, &["write16", "server_resources", "cpu_pct_total"]);
        let rss = r["write16"]["server_resources"]["servers"]
            .as_object()
            .map(|s| {
                s.values()
                    .filter_map(|x| x["rss_mb_max"].as_f64())
                    .fold(0.0, f64::max)
            })
            .filter(|m| *m > 0.0);
        let reps = |test: &str, key: &str| {
            median(
                r[test]["reps"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x[key].as_f64()).collect())
                    .unwrap_or_default(),
            )
        };
        let failover = failover_reps(r);
        PeerFigures {
            write_p50_ms: num(r, &["write1", target, "p50_ms"]),
            write_p99_ms: num(r, &["write1", target, "p99_ms"]),
            write16_ops: write16,
            read1_ops: num(r, &["read1", "linearizable", target, "ops_per_s"]),
            read16_ops: num(r, &["read16", "linearizable", "ops_per_s"]),
            lock1_ops: num(r, &["lock1", target, "ops_per_s"]),
            handoffs: num(r, &["lockc", "handoffs_per_s"]),
            violations: num(r, &["lockc", "mutual_exclusion_violations"]),
            failover_ms: median(failover.0.clone()),
            failover_worst_ms: failover.0.iter().copied().reduce(f64::max),
            failover_gaps_ms: failover.0,
            failover_stuck: failover.1,
            failover_errors: failover.2,
            expiry_ms: reps("expiry", "kill_to_acquire_ms"),
            // CPU % of one core over the window, at `write16` ops/s: ms of CPU per write.
            cpu_ms_per_write: match (cpu_pct, write16) {
                (Some(c), Some(w)) if w > 0.0 => Some(c / 100.0 * 1000.0 / w),
                _ => None,
            },
            rss_mb: rss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_harness_json() {
        let v: Value = serde_json::json!({"results": {
            "write1": {"leader": {"p50_ms": 0.9, "p99_ms": 4.0}, "follower": {"p50_ms": 1.1}},
            "write16": {"ops_per_s": 1800.0, "server_resources": {"cpu_pct_total": 72.0,
                "servers": {"a": {"rss_mb_max": 51.0}, "b": {"rss_mb_max": 53.0}}}},
            "read1": {"linearizable": {"leader": {"ops_per_s": 2400.0}}},
            "read16": {"linearizable": {"ops_per_s": 2800.0}},
            "lock1": {"leader": {"ops_per_s": 450.0}},
            "lockc": {"handoffs_per_s": 40.0, "mutual_exclusion_violations": 0},
            "failover": {"reps": [{"gap_kill_to_first_ok_ms": 1500.0},
                                  {"gap_kill_to_first_ok_ms": 1000.0},
                                  {"gap_kill_to_first_ok_ms": 2000.0}]},
            "expiry": {"reps": [{"kill_to_acquire_ms": 8900.0}, {"error": "x"}]}
        }});
        let f = PeerFigures::of("etcd", &v);
        assert_eq!(f.write_p50_ms, Some(0.9));
        assert_eq!(f.write16_ops, Some(1800.0));
        assert_eq!(f.read1_ops, Some(2400.0));
        assert_eq!(f.handoffs, Some(40.0));
        assert_eq!(f.failover_ms, Some(1500.0));
        assert_eq!(f.expiry_ms, Some(8900.0));
        assert_eq!(f.rss_mb, Some(53.0));
        let cpu = f.cpu_ms_per_write.unwrap();
        assert!((cpu - 0.4).abs() < 1e-9, "{cpu}");
        // The fs backend reports its single-client figures under "local".
        let fs: Value = serde_json::json!({"results": {"write1": {"local": {"p50_ms": 3.0}}}});
        assert_eq!(PeerFigures::of("fs", &fs).write_p50_ms, Some(3.0));
        assert_eq!(PeerFigures::of("fs", &fs).read1_ops, None);
    }
}
