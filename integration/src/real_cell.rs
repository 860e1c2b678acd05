//! A cell of real `chubby-server` processes on loopback, for tests (DESIGN §8 "real
//! processes"). Every process a [`RealCell`] starts is killed when it is dropped, so a
//! failing test leaves nothing running; its files live in a temporary directory.
//!
//! The binaries are the workspace's own (`target/<profile>/chubby-server`, `chubby`), found
//! beside the test executable; `cargo test --workspace` builds them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chubby_client::client::{Client, ClientOptions, OpenOptions};
use chubby_client::conn::{CellConn, ClientError};
use chubby_protocol::cell::{init_cell, CellFile};
use chubby_protocol::client_msg::{ReplicaRole, StatusReport};
use chubby_protocol::{Creation, Slot};

/// Where the workspace's binaries are: beside the test executable's `deps/` directory.
///
/// # Panics
/// If the binary was not built (with a message saying how to build it).
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    match find_binary(name) {
        Ok(path) => path,
        Err(why) => panic!("{why}"),
    }
}

/// Like [`binary`], an error saying how to build it instead of a panic.
///
/// # Errors
/// The binary is not beside this executable.
pub fn find_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable's path: {e}"))?;
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .ok_or_else(|| format!("no directory around {}", exe.display()))?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --bins` (with --release for a release \
             build; cargo test --workspace builds it too)",
            path.display()
        ))
    }
}

/// A running (or partly running) cell.
#[derive(Debug)]
pub struct RealCell {
    dir: tempfile::TempDir,
    configs: Vec<PathBuf>,
    children: Vec<Option<Child>>,
    cell_file: PathBuf,
    /// The network namespace of each replica (empty: this process's).
    netns: Vec<PathBuf>,
}

impl RealCell {
    /// Creates a cell of `replicas` replicas on free loopback ports and starts them all.
    ///
    /// # Panics
    /// If the cell cannot be created or a process cannot start.
    #[must_use]
    pub fn start(replicas: usize) -> RealCell {
        RealCell::start_tuned(replicas, "")
    }

    /// Like [`RealCell::start`], with `tuning` (lines of the `[tuning]` section, e.g.
    /// `"snapshot_every_entries = 50"`) added to every replica's `config.toml`.
    ///
    /// # Panics
    /// As [`RealCell::start`].
    #[must_use]
    pub fn start_tuned(replicas: usize, tuning: &str) -> RealCell {
        let filter = std::env::var("CHUBBY_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
        RealCell::start_with(replicas, tuning, &filter)
    }

    /// Like [`RealCell::start_tuned`], every replica logging with filter `log_filter`.
    ///
    /// # Panics
    /// As [`RealCell::start`].
    #[must_use]
    pub fn start_with(replicas: usize, tuning: &str, log_filter: &str) -> RealCell {
        RealCell::start_in(None, replicas, tuning, log_filter)
    }

    /// Like [`RealCell::start_with`], the cell's temporary directory made inside `parent`
    /// (the system's temporary directory if `None`): where the replicas' stores are
    /// synced matters to a benchmark.
    ///
    /// # Panics
    /// As [`RealCell::start`].
    #[must_use]
    pub fn start_in(
        parent: Option<&Path>,
        replicas: usize,
        tuning: &str,
        log_filter: &str,
    ) -> RealCell {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::tempdir(),
        }
        .expect("temp dir");
        let cell_dir = dir.path().join("cell");
        let base = free_port_range(2 * replicas);
        let layout = init_cell(&cell_dir, replicas, "127.0.0.1", base).expect("cell init");
        RealCell::launch(dir, layout, tuning, log_filter)
    }

    /// Like [`RealCell::start_tuned`], each replica of `net` running in its own network
    /// namespace, at its address there (see [`crate::netns`]).
    ///
    /// # Panics
    /// As [`RealCell::start`].
    #[must_use]
    pub fn start_in_netns(tuning: &str, net: &crate::netns::Net) -> RealCell {
        let dir = tempfile::tempdir().expect("temp dir");
        let cell_dir = dir.path().join("cell");
        let hosts = net.replica_addrs();
        let base = free_port_range(2 * hosts.len());
        let layout =
            chubby_protocol::cell::init_cell_on(&cell_dir, &hosts, base).expect("cell init");
        let filter = std::env::var("CHUBBY_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
        let netns = (1..=hosts.len())
            .map(|i| net.path(crate::netns::Host::Replica(i)))
            .collect();
        RealCell::launch_in(dir, layout, tuning, &filter, netns)
    }

    /// A new cell founded from `backup` (`chubby cell restore`'s library call), started.
    ///
    /// # Panics
    /// As [`RealCell::start`], or if the backup is refused.
    #[must_use]
    pub fn start_restored(replicas: usize, backup: &Path) -> RealCell {
        let dir = tempfile::tempdir().expect("temp dir");
        let cell_dir = dir.path().join("cell");
        let base = free_port_range(2 * replicas);
        let layout = chubby_protocol::cell::restore_cell(
            &cell_dir,
            &vec!["127.0.0.1".to_owned(); replicas],
            base,
            backup,
        )
        .expect("cell restore");
        // At info: the restore is logged, and tests look for it.
        RealCell::launch(dir, layout, "", "info")
    }

    fn launch(
        dir: tempfile::TempDir,
        layout: chubby_protocol::cell::CellLayout,
        tuning: &str,
        log_filter: &str,
    ) -> RealCell {
        RealCell::launch_in(dir, layout, tuning, log_filter, Vec::new())
    }

    fn launch_in(
        dir: tempfile::TempDir,
        layout: chubby_protocol::cell::CellLayout,
        tuning: &str,
        log_filter: &str,
        netns: Vec<PathBuf>,
    ) -> RealCell {
        let replicas = layout.replica_configs.len();
        if !tuning.is_empty() {
            for path in &layout.replica_configs {
                let mut text = std::fs::read_to_string(path).expect("read config");
                text.push_str(&format!("\n[tuning]\n{tuning}\n"));
                std::fs::write(path, text).expect("write config");
            }
        }
        let mut cell = RealCell {
            configs: layout.replica_configs.clone(),
            children: (0..replicas).map(|_| None).collect(),
            cell_file: layout.cell_file,
            dir,
            netns,
        };
        for i in 1..=replicas {
            cell.spawn_logging(i, log_filter);
        }
        cell
    }

    /// Replica `id`'s metrics page (`GET /metrics` at the address in its config).
    ///
    /// # Panics
    /// If the config names no metrics address or the page cannot be fetched.
    #[must_use]
    pub fn metrics(&self, id: usize) -> String {
        let cfg = chubby_protocol::cell::ReplicaConfig::load(&self.configs[id - 1])
            .expect("replica config");
        let addr = cfg.metrics.expect("a metrics address in the config");
        http_get(&addr, "/metrics")
    }

    /// Number of replicas.
    #[must_use]
    pub fn len(&self) -> usize {
        self.configs.len()
    }

    /// True for a cell of no replicas (never).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    /// The cell directory (`cell init`'s DIR).
    #[must_use]
    pub fn cell_dir(&self) -> PathBuf {
        self.dir.path().join("cell")
    }

    /// The client cell file.
    #[must_use]
    pub fn cell_file(&self) -> &Path {
        &self.cell_file
    }

    /// Replica `id`'s directory (`replica-<id>`).
    #[must_use]
    pub fn replica_dir(&self, id: usize) -> PathBuf {
        self.cell_dir().join(format!("replica-{id}"))
    }

    /// Replica `id`'s log file (appended across restarts).
    #[must_use]
    pub fn log_path(&self, id: usize) -> PathBuf {
        self.replica_dir(id).join("server.log")
    }

    /// Replica `id`'s log so far.
    #[must_use]
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts replica `id` (1-based).
    ///
    /// # Panics
    /// If it is running already or cannot be started.
    pub fn spawn(&mut self, id: usize) {
        // CHUBBY_TEST_LOG (e.g. `info,chubby_server::paxos=debug`) turns up every replica's
        // log when chasing a failure.
        let filter = std::env::var("CHUBBY_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
        self.spawn_logging(id, &filter);
    }

    /// Starts replica `id` with log filter `filter` (e.g. `info,chubby_server::x=trace`).
    ///
    /// # Panics
    /// As [`RealCell::spawn`].
    pub fn spawn_logging(&mut self, id: usize, filter: &str) {
        assert!(self.children[id - 1].is_none(), "replica {id} is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let mut cmd = match self.netns.get(id - 1) {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(binary("chubby-server"));
                c
            }
            None => Command::new(binary("chubby-server")),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.configs[id - 1])
            .arg("--log")
            .arg(filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start chubby-server");
        self.children[id - 1] = Some(child);
    }

    /// Issues replica `id` (the next id, `len() + 1`) for this running cell with `chubby
    /// cell issue-replica`'s library call, on free loopback ports, and starts it; returns
    /// its peer address. It is warm, not a member, until `chubby admin add-replica`.
    ///
    /// # Panics
    /// If `id` is not the next id, or issuing or starting fails.
    pub fn issue_and_start(&mut self, id: usize) -> String {
        assert_eq!(id, self.len() + 1, "replicas are issued in id order");
        let port = free_port_range(2);
        let id32 = u32::try_from(id).expect("small id");
        let cfg = chubby_protocol::cell::issue_replica(&self.cell_dir(), id32, "127.0.0.1", port)
            .expect("issue replica");
        self.configs.push(cfg);
        self.children.push(None);
        self.spawn(id);
        format!("127.0.0.1:{port}")
    }

    /// The process id of running replica `id`.
    ///
    /// # Panics
    /// If it is not running.
    #[must_use]
    pub fn pid(&self, id: usize) -> u32 {
        self.children[id - 1]
            .as_ref()
            .map(std::process::Child::id)
            .expect("replica is running")
    }

    /// Replica `id`'s config file.
    #[must_use]
    pub fn config_path(&self, id: usize) -> &Path {
        &self.configs[id - 1]
    }

    /// The first replica that is not `master`.
    #[must_use]
    pub fn follower_of(&self, master: usize) -> usize {
        (1..=self.len())
            .find(|&i| i != master)
            .expect("a cell of more than one replica")
    }

    /// Waits until replica `id`'s log contains `needle` (a line may be written just after
    /// the event a test observed); returns the log.
    ///
    /// # Panics
    /// After `timeout`, printing the log.
    pub async fn wait_log(&self, id: usize, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.log(id);
            if log.contains(needle) {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {id} never logged {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every replica applied at least what `master` has applied now, with one
    /// digest; returns the slot.
    ///
    /// # Panics
    /// If `master` does not answer, or after `timeout`.
    pub async fn wait_caught_up(&self, conn: &CellConn, master: usize, timeout: Duration) -> Slot {
        let applied = self.statuses(conn).await[master - 1]
            .clone()
            .expect("the master answers its status")
            .applied;
        let all: Vec<usize> = (1..=self.len()).collect();
        self.wait_converged(conn, &all, applied, timeout).await
    }

    /// `kill -9` replica `id` and reaps it.
    pub fn kill9(&mut self, id: usize) {
        if let Some(mut child) = self.children[id - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process of replica `id`, if running.
    pub fn child(&mut self, id: usize) -> Option<&mut Child> {
        self.children[id - 1].as_mut()
    }

    /// A client connection presenting the admin certificate.
    ///
    /// # Panics
    /// If the cell file is unusable.
    #[must_use]
    pub fn connect(&self) -> CellConn {
        let cell = CellFile::load(&self.cell_file).expect("cell file");
        CellConn::new(&cell).expect("client")
    }

    /// Every replica's status (`None` where unreachable), in id order.
    pub async fn statuses(&self, conn: &CellConn) -> Vec<Option<StatusReport>> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            out.push(conn.status_of(i).await.ok());
        }
        out
    }

    /// Waits until some replica is master with a lease and serving; returns its id.
    ///
    /// # Panics
    /// After `timeout` without one.
    pub async fn wait_master(&self, conn: &CellConn, timeout: Duration) -> u32 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for s in self.statuses(conn).await.into_iter().flatten() {
                if s.role == ReplicaRole::Master && s.lease_remaining_ms.is_some() {
                    return s.id.0;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no master within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until replica `id` is reachable and votes (is not rebuilding).
    ///
    /// # Panics
    /// After `timeout`.
    pub async fn wait_voting(&self, conn: &CellConn, id: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(s) = conn.status_of(id - 1).await {
                if s.role != ReplicaRole::Rebuilding {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {id} still rebuilding after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every replica in `ids` has applied the same slot (at least `at_least`)
    /// and reports the same digest; returns that slot.
    ///
    /// # Panics
    /// After `timeout`, printing the statuses seen.
    pub async fn wait_converged(
        &self,
        conn: &CellConn,
        ids: &[usize],
        at_least: Slot,
        timeout: Duration,
    ) -> Slot {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let all = self.statuses(conn).await;
            let chosen: Vec<_> = ids.iter().map(|&i| all[i - 1].clone()).collect();
            if let Some(first) = chosen.first().and_then(Option::as_ref) {
                let same = chosen.iter().all(|s| {
                    s.as_ref()
                        .is_some_and(|s| s.applied == first.applied && s.digest == first.digest)
                });
                if same && first.applied >= at_least {
                    return first.applied;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas {ids:?} did not converge within {timeout:?}: {:#?}",
                chosen
                    .iter()
                    .map(|s| s.as_ref().map(|s| (s.id, s.role, s.applied, s.digest)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RealCell {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show what each replica logged, for the report.
            for id in 1..=self.len() {
                let log = self.log(id);
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                eprintln!("---- replica {id} log (last {} lines) ----", tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The body of `GET path` from `addr` (HTTP/1.1, one request), or a panic saying why.
///
/// # Panics
/// If the connection fails or the status is not 200.
#[must_use]
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path} at {addr}: {head}"
    );
    body.to_owned()
}

/// The value of the sample `name` (with its labels exactly as written, e.g.
/// `x_total{a="b"}`) in a metrics page.
#[must_use]
pub fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `count` consecutive UDP ports (and TCP ports of the same numbers) that are free right now (a race with other processes is
/// possible but unlikely in the high range).
fn free_port_range(count: usize) -> u16 {
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into());
    for _ in 0..1000 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        // Below Linux's ephemeral range (32768 up), so a client socket bound to port 0 by
        // a test running alongside cannot take a port between this check and the replica's
        // bind.
        let base = 20_000 + u16::try_from((seed >> 33) % 12_000).unwrap_or(0);
        let all_free = (0..count).all(|k| {
            u16::try_from(k)
                .ok()
                .and_then(|k| base.checked_add(k))
                .is_some_and(|p| {
                    // UDP for QUIC; TCP too, for the metrics served at the client port's
                    // number.
                    std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
                        && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                })
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port range");
}

/// Checks every write's outcome against what the cell holds now: an acknowledged write is
/// present, a failed one absent, an unknown one either. Returns `(acknowledged, unknown)`.
///
/// # Panics
/// On a lost acknowledged write, a present failed one, or a read that fails.
pub async fn check_outcomes(
    writer: &FileWriter,
    outcomes: &std::collections::BTreeMap<u64, WriteOutcome>,
) -> (usize, usize) {
    let (mut acked, mut unknown) = (0, 0);
    for (i, outcome) in outcomes {
        let got = writer.read(&writer.path_of(*i)).await.expect("read back");
        match outcome {
            WriteOutcome::Acked => {
                acked += 1;
                assert_eq!(
                    got,
                    Some(FileWriter::contents_of(*i)),
                    "acknowledged write {i} lost"
                );
            }
            WriteOutcome::Unknown(_) => {
                unknown += 1;
                if let Some(c) = got {
                    assert_eq!(c, FileWriter::contents_of(*i));
                }
            }
            WriteOutcome::Failed(why) => {
                // Refused, or never sent: nothing was done.
                assert_eq!(got, None, "failed write {i} ({why}) is present");
            }
        }
    }
    (acked, unknown)
}

/// A writer that creates one file per write, so every acknowledged write can be checked
/// afterwards. It holds a real session ([`Client`]) with KeepAlives, so it follows the
/// master through fail-overs.
#[derive(Debug)]
pub struct FileWriter {
    client: Client,
    dir: String,
}

/// What became of one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Acknowledged: it must be there.
    Acked,
    /// Refused or never sent: nothing was done.
    Failed(String),
    /// Sent, no answer: it may or may not be there.
    Unknown(String),
}

impl FileWriter {
    /// Starts a session on `conn`'s cell and creates directory `dir`.
    ///
    /// # Errors
    /// The cell's answer.
    pub async fn new(conn: &CellConn, dir: &str) -> Result<FileWriter, ClientError> {
        let client = Client::connect(conn.cell_file(), ClientOptions::default()).await?;
        match client.mkdir(dir, false).await {
            Ok(_)
            | Err(ClientError::Call(chubby_protocol::client_msg::CallError::Refused(
                chubby_protocol::Refusal::Exists,
            ))) => {}
            Err(e) => return Err(e),
        }
        Ok(FileWriter {
            client,
            dir: dir.to_owned(),
        })
    }

    /// The writer's session.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The path of write number `i`.
    #[must_use]
    pub fn path_of(&self, i: u64) -> String {
        format!("{}/w{i}", self.dir)
    }

    /// The contents of write number `i`.
    #[must_use]
    pub fn contents_of(i: u64) -> Vec<u8> {
        format!("write {i}\n").into_bytes()
    }

    /// Write number `i`: creates its file with its contents (the handle stays open).
    pub async fn write(&self, i: u64) -> WriteOutcome {
        let mut o = OpenOptions::write();
        o.creation = Creation::Must;
        o.contents = Self::contents_of(i);
        match self.client.open(&self.path_of(i), o).await {
            Ok(_) => WriteOutcome::Acked,
            Err(
                e @ (ClientError::Lost { .. }
                | ClientError::Call(chubby_protocol::client_msg::CallError::OutcomeUnknown(_))),
            ) => WriteOutcome::Unknown(e.to_string()),
            Err(e) => WriteOutcome::Failed(e.to_string()),
        }
    }

    /// Reads file `path` back (`None` if it does not exist).
    ///
    /// # Errors
    /// The cell's answer, other than "not found".
    pub async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ClientError> {
        match self.client.get(path).await {
            Ok((contents, _)) => Ok(Some(contents.as_ref().clone())),
            Err(ClientError::Call(chubby_protocol::client_msg::CallError::Refused(
                chubby_protocol::Refusal::NotFound,
            ))) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
