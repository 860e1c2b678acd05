//! Creating a cell: its CA, certificates and configuration files (DESIGN §5: mutual TLS,
//! the principal is the certificate's CN).
//!
//! [`init_cell`] writes this layout (keys 0600, everything else 0644):
//!
//! ```text
//! DIR/ca.pem  DIR/ca.key                   the cell CA (keep ca.key offline in production)
//! DIR/cell.toml                            client cell file: replica client addresses +
//!                                          admin/ certificate (relative paths)
//! DIR/replica-<n>/config.toml              id, bind host, members, tls paths, data dir
//! DIR/replica-<n>/{cert.pem,key.pem}       CN replica-<n>, SAN host, serverAuth+clientAuth
//! DIR/replica-<n>/data/                    the replica's durable state; holds NEW-CELL until
//!                                          the replica's first start
//! DIR/admin/{cert.pem,key.pem}             CN admin, clientAuth
//! DIR/clients/<principal>/{cert,key}.pem   written later by [`issue_client_cert`]
//! ```
//!
//! Ports: replica `n` (from 1) has peer port `base_port + 2(n-1)` and client port one above.
//! Two ports rather than one port with two ALPNs: each endpoint then offers exactly one
//! ALPN, a client can never reach the peer accept loop, and the peer port can be firewalled
//! to the cell's hosts.
//!
//! Refuses to write into a directory that already holds files, so an existing cell's CA key
//! is never replaced by accident.

pub mod config;
pub mod pki;

/// The marker left in each founding replica's empty data directory (see [`init_cell`]).
pub const NEW_CELL_MARKER: &str = "NEW-CELL";
/// The backup a founding replica's cell is restored from (see [`restore_cell`]); consumed
/// by its first start.
pub const RESTORE_FILE: &str = "RESTORE";

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use config::{CellFile, Member, ReplicaConfig, TlsPaths, Tuning, REPLICAS_MAX, REPLICAS_MIN};
pub use pki::{CellCa, PemPair, REPLICA_CN_PREFIX};

/// Why a cell could not be created or its files loaded.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// A backup file failed its checks (`chubby cell restore`).
    #[error("{path}: not a usable chubby backup: {why}")]
    Backup {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configuration file is not valid TOML for its schema.
    #[error("{path}: bad TOML: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A configuration file parsed but says something impossible.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<CellError>,
    },
    /// The replica count is even or outside 1..=9.
    #[error(
        "a cell has an odd number of replicas between {REPLICAS_MIN} and {REPLICAS_MAX}, not {0}"
    )]
    ReplicaCount(usize),
    /// Two members share an id.
    #[error("replica id {0} is listed twice")]
    DuplicateId(u32),
    /// Two replicas share an address.
    #[error("replica address {0} is listed twice")]
    DuplicateAddress(String),
    /// Replica ids start at 1.
    #[error("replica id 0 is reserved")]
    ZeroId,
    /// The replica's own id is not in the member list.
    #[error("replica id {0} is not a member of the cell")]
    UnknownId(u32),
    /// The target directory already holds files.
    #[error("{0} already contains files: refusing to overwrite a cell")]
    NotEmpty(PathBuf),
    /// The port range does not fit in 1..=65535.
    #[error("ports from {base} for {replicas} replicas do not fit in 1..=65535")]
    Ports {
        /// The first port.
        base: u16,
        /// The replica count.
        replicas: usize,
    },
    /// A principal name that cannot be a client certificate's CN.
    #[error("principal {0:?}: {1}")]
    BadPrincipal(String, String),
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Pki(String),
    /// A `[tuning]` value out of its range.
    #[error("tuning: {0}")]
    Tuning(&'static str),
}

/// What [`init_cell`] wrote.
#[derive(Clone, Debug)]
pub struct CellLayout {
    /// The cell directory.
    pub dir: PathBuf,
    /// `DIR/ca.pem`.
    pub ca_cert: PathBuf,
    /// `DIR/ca.key`.
    pub ca_key: PathBuf,
    /// `DIR/replica-<n>/config.toml`, in id order.
    pub replica_configs: Vec<PathBuf>,
    /// `DIR/admin/` paths.
    pub admin: TlsPaths,
    /// `DIR/cell.toml`.
    pub cell_file: PathBuf,
}

/// Creates a cell of `replicas` replicas reachable at `host` (see the module docs).
///
/// # Errors
/// [`CellError::ReplicaCount`], [`CellError::Ports`], [`CellError::NotEmpty`],
/// [`CellError::Pki`] or [`CellError::Io`].
pub fn init_cell(
    dir: &Path,
    replicas: usize,
    host: &str,
    base_port: u16,
) -> Result<CellLayout, CellError> {
    init_cell_on(dir, &vec![host.to_owned(); replicas], base_port)
}

/// Like [`init_cell`], replica `n` on `hosts[n-1]` (a cell spread over several machines):
/// its certificate names that host, and the others reach it there. Ports are assigned as
/// for one host.
///
/// # Errors
/// As [`init_cell`].
pub fn init_cell_on(dir: &Path, hosts: &[String], base_port: u16) -> Result<CellLayout, CellError> {
    let replicas = hosts.len();
    config::validate_replica_count(replicas)?;
    let members = plan_members(hosts, base_port)?;
    ensure_empty_dir(dir)?;

    let cell_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "chubby".to_owned());
    let (ca, ca_pair) = CellCa::generate(&cell_name)?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    write_public(&ca_cert, &ca_pair.cert_pem)?;
    write_secret(&ca_key, &ca_pair.key_pem)?;

    let mut replica_configs = Vec::with_capacity(replicas);
    for m in &members {
        let rdir = dir.join(format!("{REPLICA_CN_PREFIX}{}", m.id));
        create_dir(&rdir)?;
        create_dir(&rdir.join("data"))?;
        // A founding member formats its empty store as a voter only when this marker is
        // present; an empty store without it is a lost disk (chubby-server storage::disk).
        write_public(
            &rdir.join("data").join(NEW_CELL_MARKER),
            "founding member of a new cell: the first start formats the store as a voter\n",
        )?;
        let pair = ca.issue_replica(m.id, &m.host)?;
        write_pair(&rdir, &pair)?;
        let cfg = replica_config(m.id, &m.host, members.clone(), false);
        let path = rdir.join("config.toml");
        write_public(&path, &to_toml(&cfg)?)?;
        replica_configs.push(path);
    }

    let admin_dir = dir.join("admin");
    create_dir(&admin_dir)?;
    write_pair(&admin_dir, &ca.issue_client("admin")?)?;
    let cell = CellFile {
        replicas: members.iter().map(Member::client_endpoint).collect(),
        tls: TlsPaths {
            ca: PathBuf::from("ca.pem"),
            cert: PathBuf::from("admin/cert.pem"),
            key: PathBuf::from("admin/key.pem"),
        },
    };
    let cell_file = dir.join("cell.toml");
    write_public(&cell_file, &to_toml(&cell)?)?;

    Ok(CellLayout {
        dir: dir.to_owned(),
        ca_cert,
        ca_key,
        replica_configs,
        admin: TlsPaths {
            ca: dir.join("ca.pem"),
            cert: admin_dir.join("cert.pem"),
            key: admin_dir.join("key.pem"),
        },
        cell_file,
    })
}

/// Creates a new cell like [`init_cell`] whose founding replicas start from the backup in
/// `backup` (written by `chubby admin backup`): the backup is checked (header and
/// checksum; the replicas check its contents again before using it) and copied into each
/// replica's data directory as [`RESTORE_FILE`].
///
/// # Errors
/// [`CellError::Backup`] for a file that is not a whole, intact backup, and those of
/// [`init_cell`]. Nothing is created when the backup is refused.
pub fn restore_cell(
    dir: &Path,
    hosts: &[String],
    base_port: u16,
    backup: &Path,
) -> Result<CellLayout, CellError> {
    let bytes = std::fs::read(backup).map_err(|source| CellError::Io {
        path: backup.to_owned(),
        source,
    })?;
    check_backup(&bytes).map_err(|why| CellError::Backup {
        path: backup.to_owned(),
        why,
    })?;
    let layout = init_cell_on(dir, hosts, base_port)?;
    // The marker names the backup, so a founder whose copy went missing refuses to start
    // instead of founding an empty database (two such founders would be a majority).
    let crc = u32::from_le_bytes([bytes[17], bytes[18], bytes[19], bytes[20]]);
    for cfg in &layout.replica_configs {
        let data = cfg.parent().unwrap_or(dir).join("data");
        write_new(&data.join(RESTORE_FILE), &bytes, 0o600)?;
        let marker = data.join(NEW_CELL_MARKER);
        std::fs::write(&marker, restore_marker(crc)).map_err(|source| CellError::Io {
            path: marker.clone(),
            source,
        })?;
    }
    Ok(layout)
}

/// The new-cell marker of a founder that must start from the backup with header CRC
/// `crc` (see [`restore_cell`]).
#[must_use]
pub fn restore_marker(crc: u32) -> String {
    format!("founding member of a cell restored from a backup\n{RESTORE_MARKER_KEY} {crc:08x}\n")
}

/// The key of the marker line naming the backup's CRC.
pub const RESTORE_MARKER_KEY: &str = "restore-crc32";

/// The frame checks of a snapshot or backup: magic, format, length and CRC-32 of the body
/// (the layout is in chubby-server's `db::snapshot`).
///
/// # Errors
/// What is wrong, in words.
pub fn check_backup(bytes: &[u8]) -> Result<(), String> {
    use crate::db::{SNAPSHOT_BYTES_MAX, SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_OLDEST, SNAPSHOT_MAGIC};
    const HEADER: usize = 8 + 1 + 8 + 4;
    if bytes.len() < HEADER {
        return Err(format!("{} bytes: shorter than a header", bytes.len()));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err("not a chubby backup (no CHBYSNAP header)".into());
    }
    if !(SNAPSHOT_FORMAT_OLDEST..=SNAPSHOT_FORMAT).contains(&bytes[8]) {
        return Err(format!(
            "snapshot format {} (this build reads formats {SNAPSHOT_FORMAT_OLDEST} to \
             {SNAPSHOT_FORMAT})",
            bytes[8]
        ));
    }
    if bytes.len() - HEADER > SNAPSHOT_BYTES_MAX {
        return Err("larger than any snapshot this build reads".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[9..17]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[17..21]);
    let body = &bytes[HEADER..];
    if u64::from_le_bytes(len) != body.len() as u64 {
        return Err(format!(
            "truncated or padded: the header says {} body bytes, the file has {}",
            u64::from_le_bytes(len),
            body.len()
        ));
    }
    if crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch: the file is corrupt".into());
    }
    Ok(())
}

/// Issues a client certificate for `principal` with the CA of the cell in `dir`, written to
/// `DIR/clients/<principal>/{cert.pem,key.pem}`.
///
/// # Errors
/// [`CellError::BadPrincipal`], [`CellError::NotEmpty`] if that principal already has a
/// certificate, or the I/O and PKI errors.
pub fn issue_client_cert(dir: &Path, principal: &str) -> Result<TlsPaths, CellError> {
    pki::validate_principal(principal)?;
    let ca = CellCa::from_pem(
        &read_string(&dir.join("ca.pem"))?,
        &read_string(&dir.join("ca.key"))?,
    )?;
    let cdir = dir.join("clients").join(principal);
    ensure_empty_dir(&cdir)?;
    write_pair(&cdir, &ca.issue_client(principal)?)?;
    Ok(TlsPaths {
        ca: dir.join("ca.pem"),
        cert: cdir.join("cert.pem"),
        key: cdir.join("key.pem"),
    })
}

/// Issues replica `id` for the running cell in `dir`, to be added with `chubby admin
/// add-replica`: its certificate, `DIR/replica-<id>/config.toml` (with `join = true` and
/// every replica found in the other replicas' configs as first contacts) and an empty data
/// directory without the new-cell marker. Its client address is appended to `DIR/cell.toml`.
/// Returns the config's path.
///
/// # Errors
/// [`CellError::NotEmpty`] if replica `id` was already issued, a zero id or a port clash
/// with a known replica ([`CellError::DuplicateId`], [`CellError::Ports`]), or the I/O and
/// PKI errors.
pub fn issue_replica(
    dir: &Path,
    id: u32,
    host: &str,
    peer_port: u16,
) -> Result<PathBuf, CellError> {
    if id == 0 {
        return Err(CellError::ZeroId);
    }
    let client_port =
        peer_port
            .checked_add(1)
            .filter(|_| peer_port != 0)
            .ok_or(CellError::Ports {
                base: peer_port,
                replicas: 1,
            })?;
    let ca = CellCa::from_pem(
        &read_string(&dir.join("ca.pem"))?,
        &read_string(&dir.join("ca.key"))?,
    )?;
    let mut members: Vec<Member> = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| CellError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path().join("config.toml");
        let is_replica = entry
            .file_name()
            .to_string_lossy()
            .starts_with(REPLICA_CN_PREFIX);
        if !is_replica || !path.exists() {
            continue;
        }
        let cfg = ReplicaConfig::load(&path)?;
        for m in cfg.members {
            if !members.iter().any(|k| k.id == m.id) {
                members.push(m);
            }
        }
    }
    if members.iter().any(|m| m.id == id) {
        return Err(CellError::DuplicateId(id));
    }
    let clash = members.iter().any(|m| {
        m.host == host
            && [m.peer_port, m.client_port]
                .iter()
                .any(|p| *p == peer_port || *p == client_port)
    });
    if clash {
        return Err(CellError::Ports {
            base: peer_port,
            replicas: 1,
        });
    }
    let me = Member {
        id,
        host: host.to_owned(),
        peer_port,
        client_port,
    };
    members.push(me.clone());
    members.sort_by_key(|m| m.id);
    let rdir = dir.join(format!("{REPLICA_CN_PREFIX}{id}"));
    ensure_empty_dir(&rdir)?;
    create_dir(&rdir.join("data"))?;
    // Like a founder, a new replica never promised anything: its first start formats its
    // store as a voter (it still votes only where a chosen change made it a member). A
    // later empty store is a lost disk and rebuilds before voting.
    write_public(
        &rdir.join("data").join(NEW_CELL_MARKER),
        "new replica of a running cell: the first start formats the store as a voter\n",
    )?;
    write_pair(&rdir, &ca.issue_replica(id, host)?)?;
    let cfg = replica_config(id, host, members, true);
    let path = rdir.join("config.toml");
    write_public(&path, &to_toml(&cfg)?)?;
    let cell_path = dir.join("cell.toml");
    if let Ok(text) = std::fs::read_to_string(&cell_path) {
        if let Ok(mut cell) = toml::from_str::<CellFile>(&text) {
            let endpoint = me.client_endpoint();
            if !cell.replicas.contains(&endpoint) {
                cell.replicas.push(endpoint);
                // Replaced whole (written beside, then renamed), never left half written.
                let tmp = dir.join("cell.toml.new");
                let _ = std::fs::remove_file(&tmp);
                write_public(&tmp, &to_toml(&cell)?)?;
                std::fs::rename(&tmp, &cell_path).map_err(|source| CellError::Io {
                    path: cell_path.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(path)
}

/// A replica's `config.toml` as the cell directory lays it out: data, certificate and key
/// beside it, the CA one level up.
fn replica_config(id: u32, host: &str, members: Vec<Member>, join: bool) -> ReplicaConfig {
    ReplicaConfig {
        id,
        bind_host: host.to_owned(),
        data_dir: PathBuf::from("data"),
        metrics: members
            .iter()
            .find(|m| m.id == id)
            .map(|m| format!("127.0.0.1:{}", m.client_port)),
        tls: TlsPaths {
            ca: PathBuf::from("../ca.pem"),
            cert: PathBuf::from("cert.pem"),
            key: PathBuf::from("key.pem"),
        },
        members,
        join,
        tuning: config::Tuning::default(),
    }
}

fn plan_members(hosts: &[String], base_port: u16) -> Result<Vec<Member>, CellError> {
    let replicas = hosts.len();
    let ports_err = CellError::Ports {
        base: base_port,
        replicas,
    };
    if base_port == 0 {
        return Err(ports_err);
    }
    let mut members = Vec::with_capacity(replicas);
    for (n, host) in hosts.iter().enumerate() {
        let offset = u16::try_from(2 * n).map_err(|_| CellError::Ports {
            base: base_port,
            replicas,
        })?;
        let peer_port = base_port.checked_add(offset);
        let client_port = peer_port.and_then(|p| p.checked_add(1));
        let (Some(peer_port), Some(client_port)) = (peer_port, client_port) else {
            return Err(ports_err);
        };
        let id = u32::try_from(n + 1).map_err(|_| CellError::ReplicaCount(replicas))?;
        members.push(Member {
            id,
            host: host.clone(),
            peer_port,
            client_port,
        });
    }
    Ok(members)
}

fn ensure_empty_dir(dir: &Path) -> Result<(), CellError> {
    let io = |source| CellError::Io {
        path: dir.to_owned(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CellError::NotEmpty(dir.to_owned()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

fn create_dir(dir: &Path) -> Result<(), CellError> {
    std::fs::create_dir(dir).map_err(|source| CellError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn to_toml<T: serde::Serialize>(value: &T) -> Result<String, CellError> {
    toml::to_string_pretty(value).map_err(|e| CellError::Pki(format!("serialising TOML: {e}")))
}

fn write_pair(dir: &Path, pair: &PemPair) -> Result<(), CellError> {
    write_public(&dir.join("cert.pem"), &pair.cert_pem)?;
    write_secret(&dir.join("key.pem"), &pair.key_pem)
}

fn write_public(path: &Path, text: &str) -> Result<(), CellError> {
    write_new(path, text.as_bytes(), 0o644)
}

/// Keys are created 0600 from the start (not chmod-ed afterwards), so they are never
/// readable by others, even briefly.
fn write_secret(path: &Path, text: &str) -> Result<(), CellError> {
    write_new(path, text.as_bytes(), 0o600)
}

fn write_new(path: &Path, text: &[u8], mode: u32) -> Result<(), CellError> {
    let io = |source| CellError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read_string(path: &Path) -> Result<String, CellError> {
    std::fs::read_to_string(path).map_err(|source| CellError::Io {
        path: path.to_owned(),
        source,
    })
}
