//! `chubby-bench` end to end with tiny spans: it starts its own cell of real processes, runs
//! every workload (the fail-over one kills the master) and prints every figure. Figures are
//! not judged here (DESIGN §8: speed is reported by the benchmark, not asserted by tests);
//! that it runs, measures what it claims and stops its cell is.

use std::process::Command;

#[test]
fn bench_prints_every_figure_and_stops_its_cell() {
    let out = Command::new(env!("CARGO_BIN_EXE_chubby-bench"))
        .args([
            "--seconds",
            "0.3",
            "--samples",
            "20",
            "--clients",
            "3",
            "--contenders",
            "2",
            "--kills",
            "2",
            "--json",
        ])
        .output()
        .expect("run chubby-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chubby-bench failed:\n{stdout}\n{stderr}"
    );
    let figures: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let names: Vec<&str> = figures.iter().filter_map(|f| f["name"].as_str()).collect();
    for want in [
        "write latency p50",
        "write latency p99",
        "write throughput",
        "uncached reads, 1 client",
        "uncached reads, 3 clients",
        "cached reads, 1 client",
        "lock acquire+release",
        "contended lock hand-offs",
        "fail-over gap",
        "fail-over gap, worst",
        "fail-over: client-visible errors",
    ] {
        assert!(names.contains(&want), "no {want:?} in {names:?}");
    }
    for f in &figures {
        let v = f["value"].as_f64().expect("a number");
        if f["unit"] == "errors" {
            // The session survives every kill and what was in flight is resent.
            assert!(v == 0.0, "figure {f}: errors seen");
        } else {
            assert!(v > 0.0, "figure {f} is not positive");
        }
    }
    let fail_over = figures
        .iter()
        .find(|f| f["name"] == "fail-over gap")
        .expect("fail-over figure");
    assert!(
        fail_over["detail"]
            .as_str()
            .is_some_and(|d| d.contains("session survived")),
        "{fail_over}"
    );
    // The cell it started is gone: no process names its directory.
    let up = stderr
        .lines()
        .find(|l| l.contains("cell up in "))
        .expect("the bench says where its cell is");
    let dir = up
        .split("cell up in ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("a directory");
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains(dir)),
        "a replica of {dir} outlived the bench:\n{ps}"
    );
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
}

#[test]
fn the_soak_counts_elections_and_lost_sessions() {
    // Seconds, not minutes: that the soak runs its hog, counts from the replicas' metrics
    // and exits 0 only without elections or lost sessions; `--soak 300` is the real one.
    let (figures, stdout) = run_json(&["--soak", "3", "--clients", "2"]);
    let value = |name: &str| value_of(&figures, name, &stdout);
    assert!(value("soak: writes") > 0.0, "{stdout}");
    assert_eq!(value("soak: elections"), 0.0, "{stdout}");
    assert_eq!(value("soak: sessions lost"), 0.0, "{stdout}");
    assert_eq!(value("soak: client-visible errors"), 0.0, "{stdout}");
    // The busy loops are gone with the bench.
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("while :; do :; done"),
        "a CPU hog outlived the soak"
    );
}

#[test]
fn the_session_load_holds_its_sessions_and_the_master_counts_their_keepalives() {
    // Hundreds, not a hundred thousand: that the load sets up real sessions over shared
    // connections (200 sessions is three connections), keeps every one alive through more
    // than one KeepAlive period (the master answers a parked KeepAlive 8 s after it
    // arrives), and that the master's own counters show their KeepAlives and handles.
    let (figures, stdout) = run_json(&["--sessions", "50,200", "--hold", "9"]);
    let value = |name: &str| value_of(&figures, name, &stdout);
    assert_eq!(value("0 sessions: held"), 0.0, "{stdout}");
    assert_eq!(value("50 sessions: held"), 50.0, "{stdout}");
    assert_eq!(value("200 sessions: held"), 200.0, "{stdout}");
    // Each of the 200 sessions had its parked KeepAlive answered once in the 9 s held.
    assert!(
        value("200 sessions: master KeepAlives") * 9.0 >= 200.0,
        "{stdout}"
    );
    assert!(
        value("200 sessions: master RSS per session") > 0.0,
        "{stdout}"
    );
    assert!(value("200 sessions: write p99") > 0.0, "{stdout}");
    assert!(
        !figures.iter().any(|f| f["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("stopped at"))),
        "{stdout}"
    );
    let held = figures
        .iter()
        .find(|f| f["name"] == "200 sessions: held")
        .and_then(|f| f["detail"].as_str())
        .unwrap_or_default();
    assert!(
        held.contains(" 0 lost") && held.contains("3 load connections"),
        "{held}"
    );
}

/// Runs `chubby-bench ARGS --json`, asserting it succeeds; its figures and its output.
fn run_json(args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chubby-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run chubby-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chubby-bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    let figures = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (figures, stdout)
}

/// The value of figure `name`.
fn value_of(figures: &[serde_json::Value], name: &str, stdout: &str) -> f64 {
    figures
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["value"].as_f64())
        .unwrap_or_else(|| panic!("no {name:?} in {stdout}"))
}
