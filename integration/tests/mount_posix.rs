//! POSIX behaviour of the mount, judged by a suite others trust (issue 19): pjdfstest
//! (crates.io, pinned in `.ci/run`) runs its groups open, mkdir, rmdir, unlink, truncate,
//! ftruncate, rename, chmod, chown, utimensat and posix_fallocate on a real mount of a real
//! 3-replica cell. Every failure must be listed, with its reason, in
//! `integration/pjdfstest/expected-failures.txt`; a listed case that passes, or a listed
//! class with no failure, fails the run too, so the list cannot go stale.
//!
//! pjdfstest switches to other users (`nobody`, `daemon`) for its permission cases, so the
//! mount runs with `--allow-other` under a traversable directory. Without pjdfstest on this
//! machine the test is skipped, unless `CHUBBY_REQUIRE_PJDFSTEST=1` (as in CI).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chubby_integration::mount::{fuse_available, Mount};
use chubby_integration::real_cell::RealCell;

const GROUPS: [&str; 11] = [
    "open",
    "mkdir",
    "rmdir",
    "unlink",
    "truncate",
    "ftruncate",
    "rename",
    "chmod",
    "chown",
    "utimensat",
    "posix_fallocate",
];

/// The pjdfstest binary: `CHUBBY_PJDFSTEST`, else `pjdfstest` on the PATH or in cargo's
/// `bin` directory (`cargo install`'s).
fn pjdfstest() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHUBBY_PJDFSTEST") {
        return Some(PathBuf::from(p));
    }
    let mut places: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        places.push(Path::new(&cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        places.push(Path::new(&home).join(".cargo/bin"));
    }
    places
        .into_iter()
        .map(|d| d.join("pjdfstest"))
        .find(|p| p.is_file())
}

/// One line of the expected-failure list.
#[derive(Debug)]
struct Expected {
    pattern: String,
    reason: String,
}

impl Expected {
    fn is_class(&self) -> bool {
        self.pattern.contains('*')
    }

    /// `*` stands for any characters.
    fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = self.pattern.split('*').collect();
        if parts.len() == 1 {
            return name == self.pattern;
        }
        let (first, last) = (parts[0], parts[parts.len() - 1]);
        if !name.starts_with(first) || name.len() < first.len() + last.len() {
            return false;
        }
        let mut rest = &name[first.len()..name.len() - last.len()];
        if !name.ends_with(last) {
            return false;
        }
        for middle in &parts[1..parts.len() - 1] {
            match rest.find(middle) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

fn expected_failures() -> Vec<Expected> {
    let text = include_str!("../pjdfstest/expected-failures.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (pattern, reason) = l
                .split_once('|')
                .unwrap_or_else(|| panic!("no reason on the line {l:?}"));
            let reason = reason.trim().to_owned();
            assert!(!reason.is_empty(), "no reason on the line {l:?}");
            Expected {
                pattern: pattern.trim().to_owned(),
                reason,
            }
        })
        .collect()
}

/// Each case's result (`ok`, `FAILED`, `skipped`) and the first line of each failure.
fn run_group(bin: &Path, config: &Path, dir: &Path, group: &str) -> Vec<(String, String, String)> {
    std::fs::create_dir(dir).unwrap();
    let out = Command::new("timeout")
        .arg("600")
        .arg(bin)
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .arg(format!("{group}::"))
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Summary:"),
        "pjdfstest did not finish the {group} group (status {:?}):\n{text}",
        out.status
    );
    let lines: Vec<&str> = text.lines().collect();
    let mut results = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(verdict), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !name.starts_with(&format!("{group}::")) {
            continue;
        }
        if matches!(verdict, "ok" | "FAILED" | "skipped") {
            let why = lines.get(i + 1).map_or("", |l| l.trim()).to_owned();
            results.push((name.to_owned(), verdict.to_owned(), why));
        }
    }
    results
}

#[test]
fn pjdfstest_groups_pass_but_for_the_listed_expected_failures() {
    if !fuse_available() {
        return;
    }
    let Some(bin) = pjdfstest() else {
        assert!(
            std::env::var("CHUBBY_REQUIRE_PJDFSTEST").as_deref() != Ok("1"),
            "CHUBBY_REQUIRE_PJDFSTEST=1 but pjdfstest is not installed"
        );
        eprintln!("SKIPPED: pjdfstest is not installed (cargo install pjdfstest)");
        return;
    };
    let expected = expected_failures();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest/pjdfstest.toml");
    let cell = RealCell::start(3);
    let m = Mount::new(&cell, &["--allow-other"]);
    let mnt = m.path();
    // Other users must reach the mount point through its temporary directory.
    let parent = mnt.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut counts = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut failed = Vec::new();
    for group in GROUPS {
        let results = run_group(&bin, &config, &mnt.join(group), group);
        let count = |v: &str| results.iter().filter(|r| r.1 == v).count();
        counts.insert(group, (count("ok"), count("FAILED"), count("skipped")));
        for (name, verdict, why) in results {
            if verdict == "FAILED" {
                if !expected.iter().any(|e| e.matches(&name)) {
                    unexpected.push(format!("{name}: {why}"));
                }
                failed.push(name);
            }
        }
    }
    for (group, (ok, bad, skipped)) in &counts {
        eprintln!("pjdfstest {group}: {ok} passed, {bad} failed (expected), {skipped} skipped");
    }
    let passing_listed: Vec<&Expected> = expected
        .iter()
        .filter(|e| !e.is_class() && !failed.contains(&e.pattern))
        .collect();
    let empty_classes: Vec<&Expected> = expected
        .iter()
        .filter(|e| e.is_class() && !failed.iter().any(|f| e.matches(f)))
        .collect();
    for e in &expected {
        let n = failed.iter().filter(|f| e.matches(f)).count();
        eprintln!("  {:<45} {n:>3} failing: {}", e.pattern, e.reason);
    }
    eprintln!(
        "expected-failure list: {} lines ({} classes), {} failures in all",
        expected.len(),
        expected.iter().filter(|e| e.is_class()).count(),
        failed.len()
    );
    assert!(
        unexpected.is_empty(),
        "failures not in integration/pjdfstest/expected-failures.txt (bugs to fix):\n{}\n\
         mount log:\n{}",
        unexpected.join("\n"),
        m.log()
    );
    assert!(
        passing_listed.is_empty() && empty_classes.is_empty(),
        "listed as expected failures but not failing (remove them): {passing_listed:?} \
         {empty_classes:?}"
    );
    let passed: usize = counts.values().map(|c| c.0).sum();
    assert!(
        passed > 100,
        "only {passed} cases passed: did the groups run?"
    );
}

#[test]
fn expected_failure_patterns_match_as_documented() {
    let class = Expected {
        pattern: "*::fifo".into(),
        reason: "r".into(),
    };
    assert!(class.matches("open::x::fifo"));
    assert!(!class.matches("open::x::fifo2"));
    let inner = Expected {
        pattern: "*eloop*".into(),
        reason: "r".into(),
    };
    assert!(inner.matches("chmod::eloop_comp"));
    assert!(!inner.matches("chmod::loop"));
    let exact = Expected {
        pattern: "open::etxtbsy".into(),
        reason: "r".into(),
    };
    assert!(exact.matches("open::etxtbsy") && !exact.is_class());
    assert!(!exact.matches("open::etxtbsy2"));
    assert!(!expected_failures().is_empty());
}
