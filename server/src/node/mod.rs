//! The async shell: one replica process around the pure [`crate::replica::Composite`]
//! (DESIGN §1, §2).
//!
//! ```text
//!  peer port (chubby-peer/1) ─► PeerTransport ─┐
//!  client port (chubby/1) ───► ClientPort ─────┼─► core loop (one task, owns everything)
//!  timers (Paxos deadline, housekeeping) ──────┘     │ step every ready input
//!                                                    │ merge all Persists → ONE sync
//!                                                    ▼ (spawn_blocking, fdatasync)
//!                                       then, in order: Send · Deliver → Db::apply
//!                                       → replies to parked client calls · Role changes
//! ```
//!
//! Client calls are served by the pure [`crate::serve::Serve`] inside the composite;
//! `calls.rs` keeps their reply channels and sends the replies it asks for.
//!
//! # Files
//! - `mod.rs`: start-up: the certificate and addresses checked, the data directory opened,
//!   the ports bound, the core built and run.
//! - `core.rs`: the core loop and its round: inputs stepped, actions executed, the one sync.
//! - `calls.rs`: client calls: reply channels, and what serving asks for done.
//! - `snapshots.rs`: snapshots and backups, taken, fetched and encoded off the core task.
//! - `status.rs`: `chubby status` reports and role-change logs.
//! - `metrics.rs`: the replica's Prometheus metrics.
//!
//! The client listener is [`crate::transport::client_port`]; the data directory and the
//! snapshot file are [`crate::storage::disk`] and [`crate::storage::snapshot_file`].
//!
//! # Ordering (the Persist-before-Send contract)
//! The core loop gathers every input that is ready, steps the replica with each, and then
//! executes the actions in the order the pure [`crate::replica::plan::Planner`] gives (the
//! simulator executes the same plan): sends that precede any vote-holding `Persist`, then
//! all `Persist` batches merged into one and made durable (moving a Persist earlier is
//! always allowed), then every other action in its original order. So no message leaves
//! before the state it reports is on disk, and a burst of Accepts costs one sync (group
//! commit).
//!
//! # Reads
//! The master answers reads from its applied database, with no Paxos round, while it holds
//! its lease and after its `NewEpoch` command was applied (so every write of earlier
//! masters is in its database).
//!
//! # Time
//! Paxos runs on a monotonic clock (milliseconds since this process started). Database
//! commands are stamped with wall-clock milliseconds through [`crate::replica::entry::Stamper`], which never
//! goes below a stamp already in the log.
mod calls;
mod core;
mod metrics;
mod snapshots;
mod status;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use chubby_protocol::cell::{CellError, ReplicaConfig};
use chubby_protocol::net::identity::{describe_certificate, replica_id_of_cn};
use chubby_protocol::net::tls::TlsIdentity;
use chubby_protocol::net::TransportError;
use chubby_protocol::{NodeId, Slot};
use tracing::info;

use crate::db::{Db, DbConfig};
use crate::paxos::{self, Replica};
use crate::storage::{disk, StorageError};
use crate::transport::{PeerConfig, PeerTransport};

pub use crate::transport::client_port::{ClientCall, ClientPort};
pub use disk::StartKind;

/// The principal with every right in a new cell's database (`/acl/admin`).
pub use crate::replica::ADMIN_PRINCIPAL;

/// Why a replica could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Loading the configuration file failed.
    #[error(transparent)]
    Cell(#[from] CellError),
    /// The certificate, key or CA could not be loaded or does not fit this replica.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A port could not be bound.
    #[error("cannot bind the {what} port {addr}: {source}")]
    Bind {
        /// Peer or client.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: TransportError,
    },
    /// The data directory cannot be used.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// A write to the store failed; the replica stops rather than guess what is durable.
    #[error("storage failed, stopping: {0}")]
    Storage(#[from] StorageError),
    /// An internal task failed.
    #[error("internal: {0}")]
    Internal(String),
}

/// A replica's identity and resolved addresses, checked before anything binds.
#[derive(Debug)]
struct Prepared {
    cfg: ReplicaConfig,
    identity: TlsIdentity,
    cell_id: String,
    peer_addr: SocketAddr,
    client_addr: SocketAddr,
}

fn prepare(cfg: ReplicaConfig) -> Result<Prepared, NodeError> {
    let identity = TlsIdentity::load(&cfg.tls).map_err(|e| {
        NodeError::Certificate(format!(
            "{e} (files: cert {}, key {}, CA {})",
            cfg.tls.cert.display(),
            cfg.tls.key.display(),
            cfg.tls.ca.display()
        ))
    })?;
    let leaf = identity.chain.first().ok_or_else(|| {
        NodeError::Certificate("the certificate file holds no certificate".into())
    })?;
    let cert = describe_certificate(leaf).map_err(|e| NodeError::Certificate(e.to_string()))?;
    if replica_id_of_cn(&cert.common_name) != Some(NodeId(cfg.id)) {
        return Err(NodeError::Certificate(format!(
            "{} is issued to {:?}, but this configuration is replica {}: use replica-{}'s \
             certificate",
            cfg.tls.cert.display(),
            cert.common_name,
            cfg.id,
            cfg.id
        )));
    }
    if !cert.server_auth {
        return Err(NodeError::Certificate(format!(
            "{} is a client certificate, not a replica certificate",
            cfg.tls.cert.display()
        )));
    }
    let me = cfg.me()?.clone();
    let resolve = |port: u16| -> Result<SocketAddr, NodeError> {
        let endpoint = chubby_protocol::cell::config::join_host_port(&cfg.bind_host, port);
        endpoint
            .to_socket_addrs()
            .map_err(|e| NodeError::Config(format!("bind address {endpoint}: {e}")))?
            .next()
            .ok_or_else(|| {
                NodeError::Config(format!("bind address {endpoint} resolves to nothing"))
            })
    };
    let peer_addr = resolve(me.peer_port)?;
    let client_addr = resolve(me.client_port)?;
    Ok(Prepared {
        cell_id: disk::cell_id(&identity.ca),
        cfg,
        identity,
        peer_addr,
        client_addr,
    })
}

/// Runs replica `cfg` until `shutdown` completes or a fatal error.
///
/// # Errors
/// A start-up failure (bad configuration or certificate, a port in use, a data directory of
/// another cell, a store held by another process) or a fatal runtime failure (a sync that
/// failed).
pub async fn run(
    cfg: ReplicaConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let prepared = prepare(cfg)?;
    let cfg = &prepared.cfg;
    let me = NodeId(cfg.id);
    let data_dir: PathBuf = cfg.data_dir.clone();
    // Blocking, once, before anything else runs on this runtime.
    let opened = disk::open(&data_dir, &prepared.cell_id)?;
    // After the store: a second start of a running replica is told its data directory is in
    // use, not that its metrics port is.
    let metrics_listener = match &cfg.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .map_err(|e| {
                    NodeError::Config(format!(
                        "cannot serve metrics at {addr} (`metrics` in the config): {e}"
                    ))
                })?;
            info!(replica = cfg.id, addr = %addr, "metrics at http://{addr}/metrics");
            Some(listener)
        }
        None => None,
    };
    match &opened.kind {
        StartKind::Resumed => info!(
            replica = cfg.id,
            promised = %opened.state.promised,
            chosen_through = %opened.state.chosen_through,
            log_entries = opened.state.log.len(),
            voter = opened.state.voter,
            "resuming from the data directory"
        ),
        StartKind::Founded if cfg.join => info!(
            replica = cfg.id,
            "first start of a replica joining a running cell: catching up from its peers; it \
             votes once `chubby admin add-replica` made it a member"
        ),
        StartKind::Founded => info!(replica = cfg.id, "first start of a founding member"),
        StartKind::Empty => tracing::warn!(
            replica = cfg.id,
            dir = %data_dir.display(),
            "empty data directory: rebuilding from peers; no vote until a new instance completes"
        ),
        StartKind::Corrupt(what) => tracing::error!(
            replica = cfg.id,
            corruption = %what,
            "store was corrupt and has been discarded; rebuilding from peers"
        ),
    }

    let mut members: Vec<NodeId> = cfg.members.iter().map(|m| NodeId(m.id)).collect();
    if cfg.join {
        // Not a founder: the others are contacts; the member sets come from them.
        members.retain(|&id| id != me);
    }
    members.sort();
    let mut pcfg = paxos::Config::new(me, members);
    pcfg.joining = cfg.join;
    pcfg.seed = random_seed();
    pcfg.validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let members = pcfg.members.clone();
    let (db, applied, member_sets) = match opened.snapshot {
        Some((db, info)) => {
            info!(replica = cfg.id, slot = %info.slot, digest = db.digest().0,
                "database restored from its snapshot");
            (db, info.slot, info.member_sets)
        }
        None => (
            Db::new(DbConfig::new(ADMIN_PRINCIPAL))
                .map_err(|e| NodeError::Config(e.to_string()))?,
            Slot::ZERO,
            chubby_protocol::MemberSets::default(),
        ),
    };
    let replica = Replica::new(pcfg, opened.state, applied)
        .map_err(|e| NodeError::Config(format!("cannot start the Paxos replica: {e}")))?
        .with_snapshot_members(&member_sets);

    let mut peer_cfg = PeerConfig::from_replica_config(cfg)
        .map_err(|e| NodeError::Config(format!("peers: {e}")))?;
    peer_cfg.snapshot_file = Some(opened.snapshots.path());
    let (transport, peer_rx) =
        PeerTransport::bind(peer_cfg, prepared.peer_addr).map_err(|source| NodeError::Bind {
            what: "peer",
            addr: prepared.peer_addr,
            source,
        })?;
    let (client_port, client_rx) =
        match ClientPort::bind(&prepared.identity, prepared.client_addr, 4096) {
            Ok(bound) => bound,
            Err(source) => {
                transport.shutdown().await;
                return Err(NodeError::Bind {
                    what: "client",
                    addr: prepared.client_addr,
                    source,
                });
            }
        };
    info!(
        replica = cfg.id,
        peer = %prepared.peer_addr,
        client = %prepared.client_addr,
        members = cfg.members.len(),
        "replica started"
    );

    let core = core::Core::new(core::CoreParts {
        cfg: cfg.clone(),
        replica,
        db,
        storage: opened.storage,
        transport,
        origin: random_seed(),
        snapshots: opened.snapshots,
        members,
    });
    let (pages_tx, pages_rx) = tokio::sync::mpsc::channel(8);
    let metrics_task = metrics_listener.map(|l| tokio::spawn(metrics::serve(l, pages_tx)));
    let result = core.run(peer_rx, client_rx, pages_rx, shutdown).await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    client_port.shutdown().await;
    info!(replica = cfg.id, "replica stopped");
    result
}

/// A seed that differs between processes and starts: wall-clock nanoseconds mixed with the
/// process id. Used for election jitter and request tags, never for anything that must
/// replay.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    paxos::rng::SplitMix64::new((nanos as u64) ^ (u64::from(std::process::id()) << 32)).next_u64()
}
