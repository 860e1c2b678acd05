//! `chubby up`: a whole local cell for trying chubby out — initialised if needed, each
//! replica a child `chubby-server` process logging to `DIR/replica-<n>/server.log`, all
//! stopped cleanly on Ctrl-C (or when `chubby up` itself is killed: each child watches its
//! stdin and stops when the pipe closes). With `--mount DIR` it also mounts the cell on DIR
//! (a child `chubby mount --foreground`), unmounted first when the cell stops.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use chubby_client::conn::CellConn;
use chubby_client::protocol::cell::{init_cell, CellFile};
use chubby_client::protocol::client_msg::ReplicaRole;

/// Arguments of `chubby up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The cell directory; created with `chubby cell init` defaults if it holds no cell.
    #[arg(long, default_value = "chubby-cell", value_name = "DIR")]
    dir: PathBuf,
    /// Replicas of a newly created cell (odd, 1 to 9).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Host of a newly created cell.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// First UDP port of a newly created cell.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// The chubby-server binary (default: the one beside this `chubby`, else from PATH).
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Also mount the cell's namespace on this directory (created if missing; needs
    /// FUSE: /dev/fuse, and root or the fuse3 package).
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
}

pub fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.mount {
        check_fuse()?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the mount point {}", dir.display()))?;
    }
    let cell_file = args.dir.join("cell.toml");
    if cell_file.exists() {
        println!("using the cell in {}", args.dir.display());
    } else {
        init_cell(&args.dir, args.replicas, &args.host, args.base_port)?;
        println!(
            "created a {}-replica cell in {}",
            args.replicas,
            args.dir.display()
        );
    }
    let configs = replica_configs(&args.dir)?;
    let server = server_binary(args.server.as_deref())?;
    let mut children = Vec::new();
    for cfg in &configs {
        let rdir = cfg.parent().unwrap_or(Path::new("."));
        let log_path = rdir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = std::process::Command::new(&server)
            .arg("--config")
            .arg(cfg)
            .arg("--stop-on-stdin-close")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        println!(
            "started {} (pid {}), log {}",
            cfg.display(),
            child.id(),
            log_path.display()
        );
        children.push(child);
    }
    let mut mount = None;
    let result = crate::runtime()?.block_on(supervise(
        &cell_file,
        &mut children,
        args.mount.as_deref(),
        &mut mount,
    ));
    if let Some(m) = mount.as_mut() {
        unmount(m);
    }
    stop(&mut children);
    result
}

/// Says what is missing for `--mount`, and how to get it.
fn check_fuse() -> anyhow::Result<()> {
    let hint = "install FUSE (Debian/Ubuntu: `apt-get install fuse3`); in a container, pass                 --device /dev/fuse --cap-add SYS_ADMIN; or run `chubby up` without --mount";
    anyhow::ensure!(
        Path::new("/dev/fuse").exists(),
        "--mount needs FUSE, and /dev/fuse does not exist: {hint}"
    );
    let root = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    let helper = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| Path::new(p).exists());
    anyhow::ensure!(
        root || helper,
        "--mount needs FUSE: /dev/fuse cannot be opened by this user and fusermount3 is not          installed: {hint}"
    );
    Ok(())
}

/// Starts `chubby mount DIR --foreground` for the cell and waits until it is mounted.
fn start_mount(cell_file: &Path, dir: &Path) -> anyhow::Result<Child> {
    let log_path = cell_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("mount.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut child = std::process::Command::new(exe)
        .arg("mount")
        .arg(dir)
        .arg("--foreground")
        .arg("--cell")
        .arg(cell_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting chubby mount")?;
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let start = std::time::Instant::now();
    while crate::mount::mounted_at(&abs).is_none() {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "chubby mount exited ({status}) before mounting; see {}",
                log_path.display()
            );
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            anyhow::bail!(
                "the mount did not come up in 30 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "mounted the cell on {} (log {})",
        abs.display(),
        log_path.display()
    );
    Ok(child)
}

/// Asks the mount to unmount and close its session (SIGTERM), waiting up to 15 s.
fn unmount(child: &mut Child) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn supervise(
    cell_file: &Path,
    children: &mut [Child],
    mount_dir: Option<&Path>,
    mount: &mut Option<Child>,
) -> anyhow::Result<ExitCode> {
    let cell = CellFile::load(cell_file)?;
    let conn = CellConn::new(&cell)?;
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            for i in 0..conn.replica_addrs().len() {
                if let Ok(s) = conn.status_of(i).await {
                    if s.role == ReplicaRole::Master && s.lease_remaining_ms.is_some() {
                        return s.id;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let master = match waited {
        Ok(id) => format!("master is replica {}", id.0),
        Err(_) => "no master elected after 30 s: see the server.log files".to_owned(),
    };
    conn.close().await;
    let mut mounted = None;
    if let Some(dir) = mount_dir {
        *mount = Some(start_mount(cell_file, dir)?);
        mounted = Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()));
    }
    let cell_abs = std::fs::canonicalize(cell_file).unwrap_or_else(|_| cell_file.to_owned());
    let bin = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .map_or_else(String::new, |d| d.display().to_string());
    println!("\nchubby is up: {} replicas, {master}", children.len());
    println!("  cell file:  {}", cell_abs.display());
    if let Some(m) = &mounted {
        println!(
            "  mounted on: {}   (try: ls {} ; echo hi > {}/hello)",
            m.display(),
            m.display(),
            m.display()
        );
    }
    let metrics: Vec<String> = cell_file
        .parent()
        .and_then(|dir| replica_configs(dir).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| chubby_client::protocol::cell::ReplicaConfig::load(c).ok())
        .filter_map(|c| c.metrics.map(|a| format!("http://{a}/metrics")))
        .collect();
    if !metrics.is_empty() {
        println!("  metrics:    {}", metrics.join(" "));
    }
    println!("  in another shell:");
    println!(
        "    export PATH={bin}:$PATH CHUBBY_CELL={}",
        cell_abs.display()
    );
    println!("    chubby status");
    if mounted.is_some() {
        println!(
            "  stop:       Ctrl-C here: unmounts (closing the session), then stops the replicas"
        );
    } else {
        println!("  stop:       Ctrl-C here: stops the replicas");
    }
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("stopping the cell");
                return Ok(ExitCode::SUCCESS);
            }
            _ = poll.tick() => {
                if let Some(m) = mount.as_mut() {
                    if let Ok(Some(status)) = m.try_wait() {
                        println!("the mount (pid {}) exited: {status}; stopping the cell", m.id());
                        *mount = None;
                        return Ok(ExitCode::FAILURE);
                    }
                }
                for child in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        println!("replica (pid {}) exited: {status}; stopping the cell", child.id());
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
        }
    }
}

/// Closes every child's stdin (each then shuts down cleanly), waits up to 10 s, then kills.
fn stop(children: &mut [Child]) {
    for child in children.iter_mut() {
        drop(child.stdin.take());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn replica_configs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path().join("config.toml");
        let is_replica = path
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n.to_string_lossy().starts_with("replica-"));
        if is_replica && path.exists() {
            configs.push(path);
        }
    }
    configs.sort();
    anyhow::ensure!(
        !configs.is_empty(),
        "{} holds no replica-<n>/config.toml",
        dir.display()
    );
    Ok(configs)
}

fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("chubby-server")))
        .filter(|p| p.exists());
    Ok(beside.unwrap_or_else(|| PathBuf::from("chubby-server")))
}
