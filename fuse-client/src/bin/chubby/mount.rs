//! `chubby mount MOUNTPOINT`: the cell's namespace as a FUSE filesystem
//! (`chubby_client::fs`), held by one session with KeepAlives.
//!
//! Without `--foreground` the command starts itself again in the background (a new
//! process group, logging to `--log`), waits until the mount is up or has failed, and
//! returns: scripts can use the mount the moment `chubby mount` exits 0. SIGTERM or Ctrl-C
//! unmounts and closes the session; after a crash of the daemon, `fusermount3 -u` or
//! `umount` clears the mount, and the next `chubby mount` clears a stale one by itself.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chubby_client::client::ClientOptions;
use chubby_client::fs::{ChubbyFs, FsOptions, OnLockLoss};
use chubby_client::idle_handles::IDLE_HANDLES_DEFAULT;
use chubby_client::session::GRACE_MS_DEFAULT;
use tracing::{info, warn};

use crate::CellArg;

/// How long the background start waits for the mount to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments of `chubby mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// An empty directory to mount the cell's namespace on.
    mountpoint: PathBuf,
    #[command(flatten)]
    cell: CellArg,
    /// Stay in the foreground, logging to stderr, until SIGTERM or Ctrl-C.
    #[arg(long)]
    foreground: bool,
    /// Let users other than the one mounting use the mount (FUSE `allow_other`; for
    /// non-root users it needs `user_allow_other` in /etc/fuse.conf). Every user acts
    /// with the mount's certificate: the cell's ACLs see one client.
    #[arg(long)]
    allow_other: bool,
    /// The log file of a background mount (default: /tmp/chubby-mount-<pid>.log).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// How long the session may be unreachable before it expires, in seconds (after its
    /// lease ends; Chubby's grace period). Meanwhile requests on the mount wait.
    #[arg(long, value_name = "SECONDS", default_value_t = GRACE_MS_DEFAULT / 1000)]
    grace: u64,
    /// Serve the mount's Prometheus metrics over HTTP at HOST:PORT (e.g. 127.0.0.1:9460):
    /// cache hits, kernel invalidations, jeopardy and session counts. No authentication:
    /// keep it on loopback.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// What happens to a process that held a lock (`flock`, `fcntl`) when the mount's
    /// session is lost (the machine was cut off past the lease and grace) and the lock
    /// with it: `eio` fences it, its descendants and every process that had the lock's file
    /// open: all their later requests on the mount fail with EIO until they exit; `signal`
    /// also sends their process groups SIGTERM, then SIGKILL 5 s later (as `consul lock`
    /// does).
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = LockLoss::Eio)]
    on_lock_loss: LockLoss,
    /// How many writable Chubby handles to keep open after their file is closed or its
    /// lock released, for the next write or lock of the same file (Chubby's handle
    /// caching): such a write then skips the Open and Close round trips, and a lock cycle
    /// also the Paxos instance that closing a lock's handle costs. Each kept handle is a
    /// small entry in the master's memory (a lock's, a record in the cell's database);
    /// 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = IDLE_HANDLES_DEFAULT)]
    idle_handles: usize,
}

/// `--on-lock-loss`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LockLoss {
    /// Fence the holders: their requests on the mount fail with EIO.
    Eio,
    /// Fence them and signal their process groups (SIGTERM, then SIGKILL).
    Signal,
}

pub fn run(args: &MountArgs) -> anyhow::Result<ExitCode> {
    let cell = args.cell.load()?;
    let mountpoint = prepare_mountpoint(&args.mountpoint)?;
    if !args.foreground {
        return start_in_background(args, &mountpoint);
    }
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("chubby-mount")
        .build()
        .context("starting the async runtime")?;
    let options = FsOptions {
        client: ClientOptions {
            grace_ms: args.grace.saturating_mul(1000),
            downstream: None,
            idle_handles: args.idle_handles,
        },
        uid: uid_of(&mountpoint),
        gid: gid_of(&mountpoint),
        mountpoint: Some(mountpoint.clone()),
        on_lock_loss: match args.on_lock_loss {
            LockLoss::Eio => OnLockLoss::Eio,
            LockLoss::Signal => OnLockLoss::Signal,
        },
    };
    let fs =
        ChubbyFs::new(cell, options, rt.handle().clone()).context("setting up the filesystem")?;
    let client = rt
        .block_on(fs.start())
        .context("cannot start a session with the cell")?;
    info!(session = client.session().0, "session started");
    drop(client);
    if let Some(addr) = &args.metrics {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr.as_str()))
            .with_context(|| format!("cannot serve metrics at {addr}"))?;
        let page_fs = fs.clone();
        rt.spawn(chubby_client::protocol::metrics::serve(
            listener,
            move || {
                let fs = page_fs.clone();
                async move { Some(fs.metrics_page().await) }
            },
        ));
        info!(addr = %addr, "metrics at http://{addr}/metrics");
    }

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("chubby".into()),
        fuser::MountOption::Subtype("chubby".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        // The kernel checks each node's mode and owner for this machine's users, as on a
        // local filesystem; the cell's ACLs are checked by the master on top
        // (docs/mount.md, "Modes, owners and times").
        fuser::MountOption::DefaultPermissions,
    ];
    if args.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(1);
    // Mounting performs the kernel's INIT synchronously: not on an async task.
    let session = fuser::Session::new(fs.clone(), &mountpoint, &config)
        .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    fs.kernel().set_notifier(session.notifier());
    let background = session.spawn().context("starting the FUSE session")?;
    info!(mountpoint = %mountpoint.display(), "mounted");
    println!("mounted the cell on {}", mountpoint.display());

    let reason = rt.block_on(wait_for_end(&background));
    info!(reason, "unmounting");
    let unmounted = unmount(background, &mountpoint);
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(12), fs.shutdown())
            .await
            .ok();
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match unmounted {
        Ok(()) => {
            info!("unmounted; session closed");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

/// Waits for SIGTERM, SIGINT, or the mount going away under us (`fusermount3 -u`).
async fn wait_for_end(background: &fuser::BackgroundSession) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot watch signals; stopping only when unmounted");
        loop {
            if background.guard.is_finished() {
                return "unmounted from outside";
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if background.guard.is_finished() {
                    return "unmounted from outside";
                }
            }
        }
    }
}

/// Unmounts; a busy mount (a process still inside) is detached lazily, as `umount -l`.
fn unmount(background: fuser::BackgroundSession, mountpoint: &Path) -> anyhow::Result<()> {
    if background.guard.is_finished() {
        return Ok(());
    }
    match background.umount_and_join() {
        Ok(()) => Ok(()),
        Err(e) => {
            warn!(error = %e, "unmount failed; detaching lazily");
            if !lazy_unmount(mountpoint)? {
                bail!("cannot unmount {}: {e}", mountpoint.display());
            }
            Ok(())
        }
    }
}

/// `umount -l PATH`: detaches the mount now; processes inside keep what they hold.
/// Returns whether it succeeded.
fn lazy_unmount(path: &Path) -> anyhow::Result<bool> {
    let status = std::process::Command::new("umount")
        .arg("-l")
        .arg(path)
        .status()
        .context("running umount -l")?;
    Ok(status.success())
}

/// Checks the mount point: an existing directory, not already mounted. A stale mount of
/// a crashed daemon ("Transport endpoint is not connected") is cleared.
fn prepare_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            eprintln!(
                "chubby: {} is a stale mount of a daemon that died; clearing it",
                path.display()
            );
            if !lazy_unmount(path)? {
                bail!(
                    "{} is a stale mount and `umount -l` failed: clear it with `fusermount3 -u {}`",
                    path.display(),
                    path.display()
                );
            }
        }
        Err(e) => bail!("mount point {}: {e}", path.display()),
        Ok(m) if !m.is_dir() => bail!("mount point {} is not a directory", path.display()),
        Ok(_) => {}
    }
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    if let Some(fstype) = mounted_at(&abs) {
        bail!(
            "{} is already a mount point ({fstype}): unmount it first (`fusermount3 -u {}` or \
             `umount {}`)",
            abs.display(),
            abs.display(),
            abs.display()
        );
    }
    Ok(abs)
}

/// The file system type mounted exactly at `path`, if any (from /proc/self/mountinfo).
pub(crate) fn mounted_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mnt = unescape(fields.get(4)?);
        let sep = fields.iter().position(|f| *f == "-")?;
        (mnt == want).then(|| (*fields.get(sep + 1).unwrap_or(&"?")).to_owned())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(char::from(b));
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

fn uid_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.uid())
}

fn gid_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.gid())
}

/// Runs this command again with `--foreground`, detached, and waits for the mount.
fn start_in_background(args: &MountArgs, mountpoint: &Path) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let log = args
        .log
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/chubby-mount-{}.log", std::process::id())));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening the log {}", log.display()))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount")
        .arg(mountpoint)
        .arg("--foreground")
        .arg("--grace")
        .arg(args.grace.to_string())
        .arg("--idle-handles")
        .arg(args.idle_handles.to_string())
        .arg("--on-lock-loss")
        .arg(match args.on_lock_loss {
            LockLoss::Eio => "eio",
            LockLoss::Signal => "signal",
        });
    if let Some(cell) = &args.cell.cell {
        cmd.arg("--cell").arg(cell);
    }
    if let Some(addr) = &args.metrics {
        cmd.arg("--metrics").arg(addr);
    }
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let start = Instant::now();
    loop {
        if mounted_at(mountpoint).is_some() {
            println!(
                "mounted the cell on {} (daemon pid {}, log {}); unmount with `kill {}` or \
                 `umount {}`",
                mountpoint.display(),
                child.id(),
                log.display(),
                child.id(),
                mountpoint.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait().context("watching the mount daemon")? {
            bail!(
                "the mount daemon exited ({status}) before mounting; its log {}:\n{}",
                log.display(),
                tail(&log)
            );
        }
        if start.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            bail!(
                "the mount did not come up within {} s; log {}:\n{}",
                START_TIMEOUT.as_secs(),
                log.display(),
                tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHUBBY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=warn,quinn=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
