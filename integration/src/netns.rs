//! Network namespaces for partition tests: one namespace per replica and per client
//! machine, each joined by a veth pair to a bridge in a hub namespace, all on
//! `10.251.0.0/24` (replica `i` at `10.251.0.(10 + i)`, client `i` at
//! `10.251.0.(100 + i)`). Cutting a client off drops its traffic on the receiving side of
//! both directions (iptables `INPUT` in its namespace, and in every replica's); healing
//! removes the rules. Traffic never leaves the namespaces this creates; they are deleted
//! (with their veth pairs and the bridge) when dropped, pass or fail.
//!
//! Needs root, `ip` (iproute2), `nsenter` and `iptables`: [`netns_missing`] says what is
//! missing, and tests skip unless `CHUBBY_REQUIRE_FUSE=1` (CI) makes that a failure.

use std::path::PathBuf;
use std::process::Command;

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

/// A machine of the test network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// Replica `i` (from 1).
    Replica(usize),
    /// Client `i` (from 1).
    Client(usize),
}

impl Host {
    fn octet(self) -> usize {
        match self {
            Host::Replica(i) => 10 + i,
            Host::Client(i) => 100 + i,
        }
    }

    /// The host's address.
    #[must_use]
    pub fn addr(self) -> String {
        format!("10.251.0.{}", self.octet())
    }
}

/// The namespaces of a test network (see the module docs).
#[derive(Debug)]
pub struct Net {
    tag: String,
    hub: String,
    replicas: usize,
    clients: usize,
}

impl Net {
    /// A network of `replicas` replica and `clients` client namespaces.
    ///
    /// # Panics
    /// If a command fails.
    #[must_use]
    pub fn new(replicas: usize, clients: usize) -> Net {
        let tag = format!("{}", std::process::id() % 100_000);
        let hub = format!("chbhub{tag}");
        let net = Net {
            tag,
            hub,
            replicas,
            clients,
        };
        must(&["ip", "netns", "add", &net.hub]);
        net.exec_hub(&["ip", "link", "add", "br0", "type", "bridge"]);
        net.exec_hub(&["ip", "link", "set", "br0", "up"]);
        for host in net.hosts() {
            let name = net.name(host);
            must(&["ip", "netns", "add", &name]);
            let (inside, outside) = (
                format!("chb{}i{}", host.octet(), net.tag),
                format!("chb{}o{}", host.octet(), net.tag),
            );
            must(&[
                "ip", "link", "add", &inside, "netns", &name, "type", "veth", "peer", "name",
                &outside, "netns", &net.hub,
            ]);
            net.exec_hub(&["ip", "link", "set", &outside, "master", "br0"]);
            net.exec_hub(&["ip", "link", "set", &outside, "up"]);
            net.exec_must(host, &["ip", "link", "set", "lo", "up"]);
            let cidr = format!("{}/24", host.addr());
            net.exec_must(host, &["ip", "addr", "add", &cidr, "dev", &inside]);
            net.exec_must(host, &["ip", "link", "set", &inside, "up"]);
        }
        net
    }

    fn hosts(&self) -> Vec<Host> {
        (1..=self.replicas)
            .map(Host::Replica)
            .chain((1..=self.clients).map(Host::Client))
            .collect()
    }

    fn name(&self, host: Host) -> String {
        format!("chbns{}x{}", host.octet(), self.tag)
    }

    /// The path of `host`'s namespace, for `nsenter --net=`.
    #[must_use]
    pub fn path(&self, host: Host) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name(host)))
    }

    /// The replicas' addresses, replica 1 first.
    #[must_use]
    pub fn replica_addrs(&self) -> Vec<String> {
        (1..=self.replicas)
            .map(|i| Host::Replica(i).addr())
            .collect()
    }

    fn exec_hub(&self, args: &[&str]) {
        let net = format!("--net=/run/netns/{}", self.hub);
        let mut all = vec!["nsenter", net.as_str(), "--"];
        all.extend_from_slice(args);
        must(&all);
    }

    /// `args` run inside `host`'s namespace, succeeding.
    ///
    /// # Panics
    /// If it fails.
    pub fn exec_must(&self, host: Host, args: &[&str]) {
        let net = format!("--net={}", self.path(host).display());
        let mut all = vec!["nsenter", net.as_str(), "--"];
        all.extend_from_slice(args);
        must(&all);
    }

    /// Cuts client `i` off the cell: what it receives from any replica, and what every
    /// replica receives from it, is dropped.
    ///
    /// # Panics
    /// If iptables fails.
    pub fn cut(&self, i: usize) {
        self.rules(i, "-I");
    }

    /// Heals client `i`'s cut.
    ///
    /// # Panics
    /// If iptables fails.
    pub fn heal(&self, i: usize) {
        self.rules(i, "-D");
    }

    fn rules(&self, i: usize, op: &str) {
        let client = Host::Client(i);
        for r in 1..=self.replicas {
            let replica = Host::Replica(r);
            let from_replica = replica.addr();
            self.exec_must(
                client,
                &["iptables", op, "INPUT", "-s", &from_replica, "-j", "DROP"],
            );
            let from_client = client.addr();
            self.exec_must(
                replica,
                &["iptables", op, "INPUT", "-s", &from_client, "-j", "DROP"],
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in self.hosts() {
            run(&["ip", "netns", "del", &self.name(host)]);
        }
        run(&["ip", "netns", "del", &self.hub]);
    }
}
