//! `chubby admin backup FILE`: a consistent, checksummed copy of the cell's database.
//!
//! The master freezes its applied state (one the database really passed through, with
//! every write it acknowledged) and encodes it as a snapshot; this command reads it in
//! chunks, checks the whole file's checksum, and only then renames it into place, synced.
//! If mastership moves while the chunks are read, the backup is taken again (three tries).
//! `chubby cell restore --from FILE` founds a new cell from it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use chubby_client::conn::CellConn;
use chubby_client::protocol::cell::check_backup;
use chubby_client::protocol::client_msg::{Answer, Call};
use chubby_client::protocol::Slot;

use crate::CellArg;

/// Arguments of `chubby admin backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub cell: CellArg,
    /// Where to write the backup (replaced only once a complete, verified copy is on
    /// disk).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

const TRIES: usize = 3;

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let cell = args.cell.load()?;
    let file = args.file;
    let (slot, bytes) = crate::runtime()?.block_on(async {
        let conn = CellConn::new(&cell)?;
        let result = fetch(&conn).await;
        conn.close().await;
        result
    })?;
    check_backup(&bytes)
        .map_err(|why| anyhow::anyhow!("the backup read from the master is unusable: {why}"))?;
    write_synced(&file, &bytes)?;
    println!(
        "backup of slot {slot}: {} bytes written to {}",
        bytes.len(),
        file.display()
    );
    println!(
        "  restore it as a new cell: chubby cell restore --from {} --dir NEWDIR",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn fetch(conn: &CellConn) -> anyhow::Result<(Slot, Vec<u8>)> {
    let mut last = None;
    for _ in 0..TRIES {
        let (slot, total) = match conn.call(Call::Backup).await.context("taking a backup")? {
            Answer::Backup { slot, bytes } => (slot, bytes),
            other => bail!("unexpected answer to Backup: {other:?}"),
        };
        match read_all(conn, slot, total).await {
            Ok(bytes) => return Ok((slot, bytes)),
            // Another master, or another backup replaced it: take it again.
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no backup taken")))
}

async fn read_all(conn: &CellConn, slot: Slot, total: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    while (bytes.len() as u64) < total {
        let offset = bytes.len() as u64;
        match conn
            .call(Call::BackupRead { slot, offset })
            .await
            .with_context(|| format!("reading the backup at byte {offset}"))?
        {
            Answer::BackupBytes(chunk) if !chunk.is_empty() => bytes.extend_from_slice(&chunk),
            Answer::BackupBytes(_) => bail!("the backup ended at {offset} of {total} bytes"),
            other => bail!("unexpected answer to BackupRead: {other:?}"),
        }
    }
    if bytes.len() as u64 != total {
        bail!("read {} bytes of a {total}-byte backup", bytes.len());
    }
    Ok(bytes)
}

/// Writes `FILE.tmp`, syncs it, renames it over `FILE` and syncs the directory.
fn write_synced(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("{}", file.display()))?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}", dir.display()))?;
    Ok(())
}
