//! The README's quick start and examples, run as written (issue 7's acceptance).
//!
//! The quick start's first command is checked to be what this test runs: its build half is
//! what `cargo test` already did, and its second half, `chubby up --mount ./chubby`, is
//! started in a fresh directory standing for the clone. Then every block of the README
//! marked `<!-- readme-test -->` runs, in order, in one `bash` session in that directory
//! (as a user pastes them into one shell), and each `# prints: TEXT` comment of a block must
//! appear in that block's output. At the end Ctrl-C (SIGINT) must unmount and stop the cell.
//! Needs FUSE, `flock`, `getfattr`/`setfattr` and `curl` (CI installs them).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chubby_integration::mount::{fuse_available, mounted};
use chubby_integration::real_cell::binary;

const QUICK_START_UP: &str = "cargo build --release && target/release/chubby up --mount ./chubby";
const QUICK_START_TEST: &str = "cargo test --workspace";
const MARK: &str = "<!-- readme-test -->";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap()
}

/// The fenced `sh` block right after line `at` (the marker or a heading).
fn block_after(lines: &[&str], at: usize) -> Vec<String> {
    let start = lines[at..]
        .iter()
        .position(|l| l.trim() == "```sh")
        .map(|i| at + i + 1)
        .unwrap();
    lines[start..]
        .iter()
        .take_while(|l| l.trim() != "```")
        .map(|l| (*l).to_owned())
        .collect()
}

/// The tested blocks, in order.
fn tested_blocks(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == MARK)
        .map(|(i, _)| block_after(&lines, i))
        .collect()
}

/// What a block promises to print: the text after each `# prints: `.
fn expectations(block: &[String]) -> Vec<String> {
    block
        .iter()
        .filter_map(|l| l.split_once("# prints: ").map(|(_, t)| t.trim().to_owned()))
        .collect()
}

/// Stops what the test started, even when it fails.
struct Up {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .status();
        }
    }
}

#[test]
fn the_quick_start_and_every_example_work_as_written() {
    if !fuse_available() {
        return;
    }
    let text = readme();
    let lines: Vec<&str> = text.lines().collect();
    let quick = lines
        .iter()
        .position(|l| *l == "## Quick start")
        .expect("a Quick start section");
    let commands = block_after(&lines, quick);
    assert_eq!(
        commands,
        vec![QUICK_START_UP.to_owned(), QUICK_START_TEST.to_owned()],
        "the quick start is exactly two commands, and this test runs the first"
    );
    let blocks = tested_blocks(&text);
    assert!(blocks.len() >= 6, "{} tested blocks", blocks.len());
    // The quick start uses `chubby up`'s default ports, as a newcomer would.
    let busy: Vec<u16> = (7100..7106)
        .filter(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)).is_err())
        .collect();
    assert!(
        busy.is_empty(),
        "UDP ports {busy:?} are in use: the README's quick start needs 7100-7105 (is a \
         `chubby up` running?)"
    );

    // The clone's directory: `chubby up --mount ./chubby` as the quick start says.
    let clone = tempfile::tempdir().unwrap();
    let chubby = binary("chubby");
    let mut up = Up {
        child: None,
        mnt: clone.path().join("chubby"),
    };
    let mut child = Command::new(&chubby)
        .args(["up", "--mount", "./chubby"])
        .current_dir(clone.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    up.child = Some(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !said
        .iter()
        .any(|l: &String| l.trim_start().starts_with("stop:"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => panic!("chubby up did not come up:\n{}", said.join("\n")),
        }
    }
    let summary = said.join("\n");
    for needle in [
        "chubby is up",
        "cell file:",
        "mounted on:",
        "metrics:",
        "Ctrl-C",
    ] {
        assert!(
            summary.contains(needle),
            "{needle:?} missing from:\n{summary}"
        );
    }
    assert!(mounted(&up.mnt), "{summary}");

    // Every tested block, in one shell, as a user would paste them.
    let bin_dir = chubby.parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut script = String::from("set -eo pipefail\n");
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '@@block {i}@@'\n"));
        for line in block {
            script.push_str(line);
            script.push('\n');
        }
    }
    script.push_str("echo '@@end@@'\n");
    // `setsid` makes bash the leader of a process group of its own (it execs in place), so
    // whatever a failed block left running in the background is stopped with the group.
    let shell = Command::new("setsid")
        .args(["bash", "-c", &script])
        .current_dir(clone.path())
        .env("PATH", path)
        .env_remove("CHUBBY_CELL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = shell.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(shell.wait_with_output());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(300));
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let out = match finished {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("the README's examples did not finish within 300 s"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("@@end@@"),
        "the README's examples failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for (i, block) in blocks.iter().enumerate() {
        let marker = format!("@@block {i}@@\n");
        let begin = stdout.find(&marker).unwrap() + marker.len();
        let rest = &stdout[begin..];
        let output = &rest[..rest.find("@@").unwrap_or(rest.len())];
        for want in expectations(block) {
            assert!(
                output.contains(&want),
                "block {i} should print {want:?}:\n{}\n--- its output\n{output}",
                block.join("\n")
            );
        }
    }
    // The restore example made a new cell from the backup (its replicas were not started).
    assert!(clone
        .path()
        .join("restored-cell/replica-1/data/RESTORE")
        .exists());

    // Ctrl-C: unmounts, closing the session, then stops the replicas.
    let mut child = up.child.take().unwrap();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "chubby up did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chubby up exited with {status}");
    assert!(!mounted(&up.mnt), "still mounted after Ctrl-C");
}
