//! The `chubby` command without a running cell: help, missing cell, `cell init`.

use std::process::Command;

fn chubby() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chubby"));
    cmd.env_remove("CHUBBY_CELL");
    cmd
}

#[test]
fn help_names_the_subcommands() {
    let out = chubby().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["cell", "up", "status"] {
        assert!(text.contains(sub), "{sub} missing from:\n{text}");
    }
}

#[test]
fn status_without_a_cell_says_how_to_name_one() {
    let out = chubby().arg("status").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cell") && err.contains("CHUBBY_CELL"),
        "{err}"
    );
}

#[test]
fn cell_init_writes_a_cell_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let run = || {
        chubby()
            .args([
                "cell",
                "init",
                "--replicas",
                "3",
                "--base-port",
                "40100",
                "--dir",
            ])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "cell.toml",
        "ca.pem",
        "replica-1/config.toml",
        "replica-3/data/NEW-CELL",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let again = run();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("refusing to overwrite"), "{err}");

    let even = chubby()
        .args(["cell", "init", "--replicas", "4", "--dir"])
        .arg(tmp.path().join("even"))
        .output()
        .unwrap();
    assert!(!even.status.success());
    assert!(String::from_utf8_lossy(&even.stderr).contains("odd number"));
}
