//! The mount's figures (issue 6): cached reads through the kernel page cache, write+close
//! of a whole file, and `flock` acquire+release, each through a real `chubby mount` of the
//! benchmark's cell with ordinary system calls (`std::fs`, `File::lock`).

use std::path::Path;
use std::time::{Duration, Instant};

use super::Figure;
use crate::mount::Mount;

/// Runs `op` repeatedly for `span`, returning how many times it ran.
fn repeat(span: Duration, mut op: impl FnMut(u64) -> Result<(), String>) -> Result<u64, String> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < span {
        op(n)?;
        n += 1;
    }
    Ok(n)
}

/// The three figures, measured on a mount of the cell `cell_file`. Blocking: run it on a
/// thread of its own.
///
/// # Errors
/// A failed system call on the mount.
pub fn figures(cell_file: &Path, span: Duration) -> Result<Vec<Figure>, String> {
    let m = Mount::of_cell_file(cell_file, &[]);
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    let conf = m.at("bench-mount-conf");
    std::fs::write(&conf, b"port = 8080\n").map_err(err("writing the config file"))?;
    // Warm: the first read fills the session's cache and the page cache.
    std::fs::read(&conf).map_err(err("reading the config file"))?;
    let reads = repeat(span, |_| {
        let got = std::fs::read(&conf).map_err(err("cached read"))?;
        if got.len() == 12 {
            Ok(())
        } else {
            Err(format!("cached read returned {} bytes", got.len()))
        }
    })?;
    let mut out = vec![Figure::rate(
        "mount: cached read (open+read+close)",
        reads,
        span,
        "1 process, `std::fs::read` of a 12-byte file in the page cache".into(),
    )];
    let data = m.at("bench-mount-data");
    let writes = repeat(span, |i| {
        std::fs::write(&data, format!("value {i}\n")).map_err(err("write+close"))
    })?;
    out.push(Figure::rate(
        "mount: write+close",
        writes,
        span,
        "1 process, `std::fs::write` (open, write, close: one SetContents)".into(),
    ));
    let lock_path = m.at("bench-mount-lock");
    std::fs::write(&lock_path, b"").map_err(err("creating the lock file"))?;
    let f = std::fs::File::open(&lock_path).map_err(err("opening the lock file"))?;
    let locks = repeat(span, |_| {
        f.lock().map_err(err("flock LOCK_EX"))?;
        f.unlock().map_err(err("flock LOCK_UN"))
    })?;
    out.push(Figure::rate(
        "mount: flock acquire+release",
        locks,
        span,
        "1 process, flock(LOCK_EX) then flock(LOCK_UN), uncontended".into(),
    ));
    drop(f);
    drop(m);
    Ok(out)
}
