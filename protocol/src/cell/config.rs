//! The files that describe a cell: a replica's `config.toml` and the client's `cell.toml`.
//!
//! Relative paths inside a file are resolved against the directory holding that file, so a
//! cell directory can be moved or copied to another host as a whole. Every loader validates
//! what it read and names the file in its error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::NodeId;
use serde::{Deserialize, Serialize};

use super::CellError;

/// The smallest and largest number of replicas a cell may have (DESIGN §7).
pub const REPLICAS_MIN: usize = 1;
/// See [`REPLICAS_MIN`].
pub const REPLICAS_MAX: usize = 9;

/// Where a certificate, its key and the cell CA are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cell CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate (PEM).
    pub cert: PathBuf,
    /// This party's private key (PEM, 0600).
    pub key: PathBuf,
}

impl TlsPaths {
    fn resolved(&self, base: &Path) -> TlsPaths {
        TlsPaths {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }
}

/// One member of the cell, as every replica's config lists it.
///
/// Each replica has two UDP ports: `peer_port` serves only ALPN `chubby-peer/1` (replica
/// to replica), `client_port` only `chubby/1` (clients).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The replica's id (its certificate's CN is `replica-<id>`).
    pub id: u32,
    /// The host others reach it at; also the SAN of its certificate.
    pub host: String,
    /// UDP port for replicas.
    pub peer_port: u16,
    /// UDP port for clients.
    pub client_port: u16,
}

impl Member {
    /// The id as the Paxos core knows it.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        NodeId(self.id)
    }

    /// `host:peer_port`.
    #[must_use]
    pub fn peer_endpoint(&self) -> String {
        join_host_port(&self.host, self.peer_port)
    }

    /// `host:client_port`.
    #[must_use]
    pub fn client_endpoint(&self) -> String {
        join_host_port(&self.host, self.client_port)
    }
}

/// `host:port`, bracketing IPv6 literals.
#[must_use]
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A replica's `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Which member this replica is.
    pub id: u32,
    /// The address both endpoints bind (the member entry's host, or e.g. `0.0.0.0`).
    pub bind_host: String,
    /// The replica's durable state.
    pub data_dir: PathBuf,
    /// Where Prometheus metrics are served over plain HTTP (`HOST:PORT`, TCP; absent: not
    /// served). `chubby cell init` puts them on `127.0.0.1` at the client port's number.
    /// No authentication: keep it on loopback or a private network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Its certificate, key and the cell CA.
    pub tls: TlsPaths,
    /// Every member of the cell, this replica included: the founding members, or (with
    /// `join`) the replicas known when this one was issued, to contact first.
    pub members: Vec<Member>,
    /// This replica was added to a running cell (`chubby cell issue-replica`): it learns the
    /// member sets from its peers and votes once `chubby admin add-replica` made it a member.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// Optional knobs; omitted from the file when all are defaults.
    #[serde(default, skip_serializing_if = "Tuning::is_default")]
    pub tuning: Tuning,
}

/// Optional replica knobs (`[tuning]` in `config.toml`). Timing of the Paxos lease and
/// elections is not here on purpose: every replica must agree on it, and DESIGN §7's
/// defaults are what production wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// How often the master asks every replica to compare database digests (PML §6.2).
    pub checksum_interval_ms: u64,
    /// How long a proposed write may wait to be chosen before its caller is told the
    /// outcome is unknown.
    pub request_timeout_ms: u64,
    /// A database snapshot is written after this many slots were applied since the last
    /// one; the Paxos log is then truncated (PML §5.5).
    pub snapshot_every_entries: u64,
    /// Log entries kept below a snapshot, so a peer that lags a little catches up from the
    /// log instead of fetching a whole snapshot.
    pub log_keep_entries: u64,
    /// How long each KeepAlive reply extends a client session's lease (Chubby §2.8: 12 s).
    /// Every replica should have the same value: a new master extends every session by its
    /// own lease, which must cover what the previous master promised.
    pub session_lease_ms: u64,
    /// A session with no open handles that makes no call for this long is closed.
    pub session_idle_ms: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            checksum_interval_ms: 60_000,
            request_timeout_ms: 10_000,
            snapshot_every_entries: 10_000,
            log_keep_entries: 1_000,
            session_lease_ms: 12_000,
            session_idle_ms: 60_000,
        }
    }
}

impl Tuning {
    /// True when every knob has its default (so the section is not written).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Tuning::default()
    }

    /// Checks every knob's range.
    ///
    /// # Errors
    /// [`CellError::Tuning`] naming the first knob out of range.
    pub fn validate(&self) -> Result<(), CellError> {
        let check = |ok: bool, what: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(CellError::Tuning(what))
            }
        };
        check(
            self.checksum_interval_ms >= 100,
            "checksum_interval_ms must be at least 100",
        )?;
        check(
            self.request_timeout_ms >= 100,
            "request_timeout_ms must be at least 100",
        )?;
        check(
            self.snapshot_every_entries >= 1,
            "snapshot_every_entries must be at least 1",
        )?;
        check(
            (300..=60_000).contains(&self.session_lease_ms),
            "session_lease_ms must be between 300 and 60000",
        )?;
        check(
            self.session_idle_ms >= 1_000,
            "session_idle_ms must be at least 1000",
        )
    }
}

impl ReplicaConfig {
    /// This replica's own member entry.
    ///
    /// # Errors
    /// [`CellError::UnknownId`] if `id` is not a member (impossible after [`Self::load`]).
    pub fn me(&self) -> Result<&Member, CellError> {
        self.members
            .iter()
            .find(|m| m.id == self.id)
            .ok_or(CellError::UnknownId(self.id))
    }

    /// Checks the member list: odd size within 1..=9, ids unique and non-zero, `id` listed.
    ///
    /// # Errors
    /// The first violation found.
    pub fn validate(&self) -> Result<(), CellError> {
        if self.join {
            // The replicas known when it was issued: any number, the count is not a quorum.
            if self.members.is_empty() || self.members.len() > 2 * REPLICAS_MAX {
                return Err(CellError::ReplicaCount(self.members.len()));
            }
        } else {
            validate_replica_count(self.members.len())?;
        }
        let mut ids = BTreeSet::new();
        for m in &self.members {
            if m.id == 0 {
                return Err(CellError::ZeroId);
            }
            if !ids.insert(m.id) {
                return Err(CellError::DuplicateId(m.id));
            }
        }
        self.me()?;
        self.tuning.validate()
    }

    /// Reads, validates and resolves (relative paths against the file's directory) a
    /// replica configuration.
    ///
    /// # Errors
    /// [`CellError::Io`] if the file cannot be read, [`CellError::Toml`] if it does not
    /// parse, or the validation error.
    pub fn load(path: &Path) -> Result<ReplicaConfig, CellError> {
        let mut cfg: ReplicaConfig = read_toml(path)?;
        cfg.validate().map_err(|e| CellError::Invalid {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        let base = parent_dir(path);
        cfg.data_dir = base.join(&cfg.data_dir);
        cfg.tls = cfg.tls.resolved(&base);
        Ok(cfg)
    }
}

/// A client's `cell.toml`: where the replicas are and which certificate to present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellFile {
    /// `host:client_port` of every replica.
    pub replicas: Vec<String>,
    /// The CA, and the client's certificate and key.
    pub tls: TlsPaths,
}

impl CellFile {
    /// Reads, checks (1..=9 replicas, odd, no duplicates) and resolves a cell file.
    ///
    /// # Errors
    /// As [`ReplicaConfig::load`].
    pub fn load(path: &Path) -> Result<CellFile, CellError> {
        let mut cell: CellFile = read_toml(path)?;
        let invalid = |e| CellError::Invalid {
            path: path.to_owned(),
            source: Box::new(e),
        };
        // Any number: a cell that is growing or shrinking has an even count for a while.
        if cell.replicas.is_empty() || cell.replicas.len() > 2 * REPLICAS_MAX {
            return Err(invalid(CellError::ReplicaCount(cell.replicas.len())));
        }
        let mut seen = BTreeSet::new();
        for r in &cell.replicas {
            if !seen.insert(r) {
                return Err(invalid(CellError::DuplicateAddress(r.clone())));
            }
        }
        cell.tls = cell.tls.resolved(&parent_dir(path));
        Ok(cell)
    }
}

/// Odd, within [`REPLICAS_MIN`]..=[`REPLICAS_MAX`].
///
/// # Errors
/// [`CellError::ReplicaCount`].
pub fn validate_replica_count(n: usize) -> Result<(), CellError> {
    if (REPLICAS_MIN..=REPLICAS_MAX).contains(&n) && n % 2 == 1 {
        Ok(())
    } else {
        Err(CellError::ReplicaCount(n))
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CellError> {
    let text = std::fs::read_to_string(path).map_err(|source| CellError::Io {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| CellError::Toml {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
