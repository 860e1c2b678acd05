//! Network namespaces for partition tests: a *cell* namespace holding every replica (on an
//! address of its own loopback), and one namespace per client machine, joined to the cell's
//! by a veth pair. Cutting a client off drops its traffic on the receiving side of both
//! directions (iptables `INPUT` in its namespace and in the cell's); healing removes the
//! rules. Traffic never leaves the namespaces this creates; they are deleted (with their
//! veth pairs) when dropped, pass or fail.
//!
//! Needs root, `ip` (iproute2), `nsenter` and `iptables`: [`netns_missing`] says what is
//! missing, and tests skip unless `CHUBBY_REQUIRE_FUSE=1` (CI) makes that a failure.

use std::path::PathBuf;
use std::process::Command;

/// The cell's address inside its namespace.
pub const CELL_ADDR: &str = "10.251.0.1";

/// What partition tests lack here, or `None`.
#[must_use]
pub fn netns_missing() -> Option<String> {
    for (tool, arg) in [
        ("ip", "-V"),
        ("nsenter", "--version"),
        ("iptables", "--version"),
    ] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let probe = format!("chbprobe{}", std::process::id());
    if !run(&["ip", "netns", "add", &probe]) {
        return Some("cannot create a network namespace (not root?)".into());
    }
    run(&["ip", "netns", "del", &probe]);
    None
}

fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cell namespace and its client namespaces (see the module docs).
#[derive(Debug)]
pub struct Net {
    /// Namespace names: the cell's first.
    names: Vec<String>,
    tag: String,
}

impl Net {
    /// A cell namespace with `CELL_ADDR` on its loopback, and `clients` client namespaces,
    /// client `i` (from 1) at `10.251.i.2` joined to the cell's `10.251.i.1`.
    ///
    /// # Panics
    /// If a command fails.
    #[must_use]
    pub fn new(clients: usize) -> Net {
        let tag = format!("{}", std::process::id() % 100_000);
        let cell = format!("chbcell{tag}");
        let mut net = Net {
            names: vec![cell.clone()],
            tag,
        };
        must(&["ip", "netns", "add", &cell]);
        net.exec_must(0, &["ip", "link", "set", "lo", "up"]);
        net.exec_must(
            0,
            &["ip", "addr", "add", &format!("{CELL_ADDR}/32"), "dev", "lo"],
        );
        for i in 1..=clients {
            let name = format!("chbc{i}x{}", net.tag);
            must(&["ip", "netns", "add", &name]);
            net.names.push(name.clone());
            let (here, there) = (format!("chb{i}c{}", net.tag), format!("chb{i}h{}", net.tag));
            must(&[
                "ip", "link", "add", &here, "netns", &name, "type", "veth", "peer", "name", &there,
                "netns", &cell,
            ]);
            net.exec_must(i, &["ip", "link", "set", "lo", "up"]);
            net.exec_must(
                i,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.251.{i}.2/30"),
                    "dev",
                    &here,
                ],
            );
            net.exec_must(i, &["ip", "link", "set", &here, "up"]);
            net.exec_must(
                i,
                &[
                    "ip",
                    "route",
                    "add",
                    &format!("{CELL_ADDR}/32"),
                    "via",
                    &format!("10.251.{i}.1"),
                ],
            );
            net.exec_must(
                0,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.251.{i}.1/30"),
                    "dev",
                    &there,
                ],
            );
            net.exec_must(0, &["ip", "link", "set", &there, "up"]);
        }
        net
    }

    /// The path of namespace `i` (0: the cell's), for `nsenter --net=`.
    #[must_use]
    pub fn path(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.names[i]))
    }

    /// `args` run inside namespace `i`, succeeding.
    ///
    /// # Panics
    /// If it fails.
    pub fn exec_must(&self, i: usize, args: &[&str]) {
        let net = format!("--net={}", self.path(i).display());
        let mut all = vec!["nsenter", net.as_str(), "--"];
        all.extend_from_slice(args);
        must(&all);
    }

    /// Cuts client `i` off the cell: what each side receives from the other is dropped.
    ///
    /// # Panics
    /// If iptables fails.
    pub fn cut(&self, i: usize) {
        self.exec_must(
            i,
            &["iptables", "-I", "INPUT", "-s", CELL_ADDR, "-j", "DROP"],
        );
        let client = format!("10.251.{i}.2");
        self.exec_must(0, &["iptables", "-I", "INPUT", "-s", &client, "-j", "DROP"]);
    }

    /// Heals client `i`'s cut.
    ///
    /// # Panics
    /// If iptables fails.
    pub fn heal(&self, i: usize) {
        self.exec_must(
            i,
            &["iptables", "-D", "INPUT", "-s", CELL_ADDR, "-j", "DROP"],
        );
        let client = format!("10.251.{i}.2");
        self.exec_must(0, &["iptables", "-D", "INPUT", "-s", &client, "-j", "DROP"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            run(&["ip", "netns", "del", name]);
        }
    }
}
