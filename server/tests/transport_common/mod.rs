//! Shared set-up for the transport tests: a cell from `init_cell` in a temp dir, replicas on
//! ephemeral loopback ports, and a raw QUIC client for misbehaving peers.
#![allow(dead_code, clippy::unwrap_used)] // test helpers: a failure here is a test failure

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use chubby_protocol::{Ballot, NodeId, PaxosMsg, Slot};
use chubby_server::cell::{init_cell, ReplicaConfig};
use chubby_server::transport::tls::client_config;
use chubby_server::transport::{Alpn, PeerAddr, PeerConfig, PeerTransport, TlsIdentity};
use tokio::sync::mpsc;

pub const LOOPBACK: &str = "127.0.0.1";

/// A fresh cell of `n` replicas on loopback (ports in the config are not used: the tests
/// bind port 0 and wire the real ports in).
pub fn cell(dir: &Path, n: usize) -> Vec<ReplicaConfig> {
    let layout = init_cell(dir, n, LOOPBACK, 47000).unwrap();
    layout
        .replica_configs
        .iter()
        .map(|p| ReplicaConfig::load(p).unwrap())
        .collect()
}

pub fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Every member's peer address, from the sockets the test bound for them.
pub fn addresses(cfgs: &[ReplicaConfig], sockets: &[UdpSocket]) -> BTreeMap<NodeId, PeerAddr> {
    cfgs.iter()
        .zip(sockets)
        .map(|(c, s)| {
            (
                NodeId(c.id),
                PeerAddr {
                    addr: s.local_addr().unwrap(),
                    server_name: LOOPBACK.to_owned(),
                },
            )
        })
        .collect()
}

/// Starts one replica on `socket`.
pub fn start_one(
    cfg: &ReplicaConfig,
    socket: UdpSocket,
    addrs: &BTreeMap<NodeId, PeerAddr>,
) -> (PeerTransport, mpsc::Receiver<(NodeId, PaxosMsg)>) {
    let identity = TlsIdentity::load(&cfg.tls).unwrap();
    let mut pc = PeerConfig::new(NodeId(cfg.id), identity, addrs.clone());
    pc.backoff_max = Duration::from_millis(200);
    PeerTransport::with_socket(pc, socket).unwrap()
}

/// Starts replicas `ids` of `cfgs` on fresh sockets, each knowing every member's real port
/// (members not started get an address nobody listens on).
pub fn start(
    cfgs: &[ReplicaConfig],
    ids: &[u32],
) -> Vec<(PeerTransport, mpsc::Receiver<(NodeId, PaxosMsg)>)> {
    let sockets: Vec<UdpSocket> = cfgs.iter().map(|_| socket()).collect();
    let addrs = addresses(cfgs, &sockets);
    cfgs.iter()
        .zip(sockets)
        .filter(|(c, _)| ids.contains(&c.id))
        .map(|(c, s)| start_one(c, s, &addrs))
        .collect()
}

pub fn prepare(round: u64, node: u32) -> PaxosMsg {
    PaxosMsg::Prepare {
        ballot: Ballot {
            round,
            node: NodeId(node),
        },
        from_slot: Slot(1),
    }
}

/// A bare QUIC client presenting `identity` with `alpn`, connected to `addr`.
pub async fn raw_connect(
    identity: &TlsIdentity,
    alpn: Alpn,
    addr: SocketAddr,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client_config(identity, alpn).unwrap());
    let conn = ep.connect(addr, LOOPBACK).unwrap().await;
    (ep, conn)
}

/// Waits for the next delivered message, or `None` after `wait`.
pub async fn next(
    rx: &mut mpsc::Receiver<(NodeId, PaxosMsg)>,
    wait: Duration,
) -> Option<(NodeId, PaxosMsg)> {
    tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
}
