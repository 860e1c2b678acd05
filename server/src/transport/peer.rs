//! Replica-to-replica messaging over QUIC.
//!
//! One endpoint (one UDP socket) per replica does both jobs:
//! - **inbound**: it accepts connections offering ALPN `chubby-peer/1` with a replica
//!   certificate of the cell ([`identity::authorize_peer_connection`]; any replica id, so a
//!   replica about to be added can catch up before the cell lists it: the Paxos core counts
//!   votes only of members) and refuses everything else by closing the connection with
//!   [`CLOSE_NOT_A_PEER`]. Each unidirectional stream of an authorized
//!   connection carries length-prefixed frames; each decoded message is delivered as
//!   `(sender, msg)` where the sender comes from the certificate, never from the message.
//!   A malformed stream is stopped with [`STREAM_MALFORMED`]; the connection and its other
//!   streams go on.
//! - **outbound**: one task per peer (the configured ones, and those added by
//!   [`PeerTransport::add_peer`] when a membership change names them) owns a connection to it and sends each message on a
//!   new unidirectional stream (so messages may arrive reordered; Paxos tolerates that, and
//!   no message waits behind a large one). It checks the server is the replica it meant to
//!   reach (CN `replica-<id>`), reconnects with exponential backoff, and drops what was
//!   queued while the peer was unreachable: a Paxos message is better lost than late.
//!   A new connection *from* a peer means it probably restarted, and then our own
//!   connection to it is dead without knowing it (until the idle timeout, 3 s: long enough
//!   for the restarted replica to miss heartbeats and call a needless election). So the
//!   accepting side tells that peer's sender, which replaces a connection older than
//!   [`STALE_AFTER`] at once (the age rule keeps two fresh connections from chasing each
//!   other). A younger one is replaced once it has heard nothing for [`PEER_SILENT_AFTER`]
//!   (a live peer acknowledges our keep-alives within milliseconds), and so is any
//!   connection that falls silent: a peer restarted within a second of our connecting
//!   would otherwise miss heartbeats until the idle timeout (found when the election wait
//!   shrank to about a lease). A sender still connecting, or waiting to retry, starts a fresh attempt at
//!   once: an attempt begun while the peer was down waits for QUIC's backed-off Initial
//!   retransmission, which can come seconds after the peer is back.
//!
//! - **snapshots**: a bidirectional stream on a peer connection is a snapshot fetch
//!   ([`super::snapshot_xfer`]), answered from the replica's snapshot file.
//!
//! [`PeerTransport::send`] never blocks and never fails loudly: a full queue or a dead peer
//! drops the message (Paxos retransmits), logged at debug level per message and at warn
//! level per connection failure.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chubby_protocol::{codec, NodeId, PaxosMsg};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use super::snapshot_xfer::{self, SnapshotFetcher};
use crate::cell::ReplicaConfig;
use chubby_protocol::net::framing::{read_msg, write_frame};
use chubby_protocol::net::identity::{self, authorize_peer_connection, replica_id_of_cn};
use chubby_protocol::net::tls::{replica_client_config, server_config, Alpn, TlsIdentity};
use chubby_protocol::net::TransportError;

/// Connection close code: orderly shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Connection close code: the other end is not an authorized peer.
pub const CLOSE_NOT_A_PEER: u32 = 1;
/// Connection close code: the server is not the replica we meant to reach.
pub const CLOSE_WRONG_SERVER: u32 = 2;
/// Stream stop code: the stream carried a malformed frame.
pub const STREAM_MALFORMED: u32 = 1;
/// A new incoming connection from a peer replaces our connection to it when ours is older.
pub const STALE_AFTER: Duration = Duration::from_secs(1);
/// A connection to a peer that received nothing (not even the acknowledgement of a QUIC
/// keep-alive, sent every 100 ms of quiet) for this long is replaced: the peer died or
/// restarted. A restarted peer must hear the master's heartbeats before its first
/// election wait (about two master leases) ends; QUIC's idle timeout (3 s) is far longer.
pub const PEER_SILENT_AFTER: Duration = Duration::from_millis(400);
/// How often a sender looks at its connection for silence.
const SILENCE_CHECK: Duration = Duration::from_millis(100);

/// How to reach one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its peer-port address.
    pub addr: SocketAddr,
    /// The name its certificate is checked against (its SAN: host name or IP).
    pub server_name: String,
}

/// Everything a [`PeerTransport`] needs.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// This replica.
    pub me: NodeId,
    /// Its replica certificate, key and the cell CA.
    pub identity: TlsIdentity,
    /// The other members (an entry for `me` is ignored).
    pub peers: BTreeMap<NodeId, PeerAddr>,
    /// Messages queued per peer before [`PeerTransport::send`] drops.
    pub outbound_queue: usize,
    /// Received messages buffered before the transport stops reading (back-pressure).
    pub inbound_queue: usize,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// How long one send may wait for stream credit before the connection is replaced.
    pub send_timeout: Duration,
    /// The snapshot file served to peers that fetch one (none served when `None`).
    pub snapshot_file: Option<PathBuf>,
}

impl PeerConfig {
    /// Defaults for everything but identity and addresses.
    #[must_use]
    pub fn new(me: NodeId, identity: TlsIdentity, peers: BTreeMap<NodeId, PeerAddr>) -> Self {
        PeerConfig {
            me,
            identity,
            peers,
            outbound_queue: 1024,
            inbound_queue: 4096,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            send_timeout: Duration::from_secs(1),
            snapshot_file: None,
        }
    }

    /// Builds the config of a replica from its loaded `config.toml` (resolves host names).
    ///
    /// # Errors
    /// [`TransportError::Pem`] for unreadable certificate files, [`TransportError::Config`]
    /// for a member address that does not resolve.
    pub fn from_replica_config(cfg: &ReplicaConfig) -> Result<Self, TransportError> {
        let identity = TlsIdentity::load(&cfg.tls)?;
        let mut peers = BTreeMap::new();
        for m in cfg.members.iter().filter(|m| m.id != cfg.id) {
            let endpoint = m.peer_endpoint();
            let addr = endpoint
                .to_socket_addrs()
                .map_err(|e| TransportError::Config(format!("{endpoint}: {e}")))?
                .next()
                .ok_or_else(|| TransportError::Config(format!("{endpoint}: no address")))?;
            peers.insert(
                m.node_id(),
                PeerAddr {
                    addr,
                    server_name: m.host.clone(),
                },
            );
        }
        Ok(PeerConfig::new(NodeId(cfg.id), identity, peers))
    }
}

/// Why [`PeerTransport::send`] dropped a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not a configured peer.
    #[error("{0} is not a peer")]
    UnknownPeer(NodeId),
    /// The peer's queue is full (it is slow, or unreachable and being reconnected).
    #[error("queue to {0} is full: message dropped")]
    QueueFull(NodeId),
    /// The transport is shutting down.
    #[error("transport is shut down")]
    Closed,
}

/// The replica's peer endpoint. Dropping it closes the endpoint and stops its tasks.
#[derive(Debug)]
pub struct PeerTransport {
    me: NodeId,
    endpoint: quinn::Endpoint,
    queues: BTreeMap<NodeId, mpsc::Sender<PaxosMsg>>,
    peers: Arc<RwLock<BTreeMap<NodeId, PeerAddr>>>,
    reconnected: Reconnected,
    tasks: Vec<JoinHandle<()>>,
    outbound_queue: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    send_timeout: Duration,
}

/// Per peer: signalled when it opens a new connection to us. Created on first use, since
/// a replica we do not know yet may connect.
#[derive(Clone, Debug, Default)]
struct Reconnected(Arc<Mutex<BTreeMap<NodeId, Arc<Notify>>>>);

impl Reconnected {
    fn of(&self, id: NodeId) -> Arc<Notify> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(id).or_default().clone()
    }
}

impl PeerTransport {
    /// Binds `addr` and starts. Must be called inside a tokio runtime.
    ///
    /// Returns the transport and the channel on which `(sender, message)` arrive.
    ///
    /// # Errors
    /// [`TransportError::Io`] if the socket cannot be bound, or a TLS configuration error.
    pub fn bind(
        config: PeerConfig,
        addr: SocketAddr,
    ) -> Result<(PeerTransport, mpsc::Receiver<(NodeId, PaxosMsg)>), TransportError> {
        let socket = std::net::UdpSocket::bind(addr)?;
        PeerTransport::with_socket(config, socket)
    }

    /// Starts on an already bound socket (lets tests learn every port before starting).
    ///
    /// # Errors
    /// As [`PeerTransport::bind`].
    pub fn with_socket(
        config: PeerConfig,
        socket: std::net::UdpSocket,
    ) -> Result<(PeerTransport, mpsc::Receiver<(NodeId, PaxosMsg)>), TransportError> {
        let server = server_config(&config.identity, &[Alpn::Peer])?;
        let client = replica_client_config(&config.identity)?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        endpoint.set_default_client_config(client);

        let me = config.me;
        let peers: BTreeMap<NodeId, PeerAddr> = config
            .peers
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_queue.max(1));
        let reconnected = Reconnected::default();
        let inbound = Inbound {
            me,
            messages: inbound_tx,
            snapshot_file: config.snapshot_file.clone().map(Arc::new),
            reconnected: reconnected.clone(),
        };
        let accept = tokio::spawn(accept_loop(endpoint.clone(), inbound));
        let mut transport = PeerTransport {
            me,
            endpoint,
            queues: BTreeMap::new(),
            peers: Arc::new(RwLock::new(BTreeMap::new())),
            reconnected,
            tasks: vec![accept],
            outbound_queue: config.outbound_queue,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            send_timeout: config.send_timeout,
        };
        for (id, addr) in peers {
            transport.add_peer(id, addr);
        }
        Ok((transport, inbound_rx))
    }

    /// Starts sending to `id` at `addr` (a member added by a membership change). A peer
    /// already known keeps its connection unless the address changed.
    pub fn add_peer(&mut self, id: NodeId, addr: PeerAddr) {
        if id == self.me {
            return;
        }
        {
            let mut peers = self
                .peers
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if peers.get(&id) == Some(&addr) {
                return;
            }
            peers.insert(id, addr.clone());
        }
        if self.queues.contains_key(&id) {
            // The old sender's task ends when its queue is dropped.
            info!(me = %self.me, peer = %id, addr = %addr.addr, "peer address changed");
        }
        let (tx, rx) = mpsc::channel(self.outbound_queue.max(1));
        self.queues.insert(id, tx);
        let sender = PeerSender {
            endpoint: self.endpoint.clone(),
            me: self.me,
            peer: id,
            addr,
            reconnected: self.reconnected.of(id),
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            send_timeout: self.send_timeout,
        };
        self.tasks.push(tokio::spawn(sender.run(rx)));
    }

    /// Whether messages to `id` have somewhere to go.
    #[must_use]
    pub fn knows(&self, id: NodeId) -> bool {
        self.queues.contains_key(&id)
    }

    /// This replica's id.
    #[must_use]
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The bound address.
    ///
    /// # Errors
    /// [`TransportError::Io`] if the socket is gone.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Queues `msg` for `to`; never blocks.
    ///
    /// # Errors
    /// [`SendError`] when the message was dropped (already logged at debug level).
    pub fn send(&self, to: NodeId, msg: PaxosMsg) -> Result<(), SendError> {
        let queue = self.queues.get(&to).ok_or(SendError::UnknownPeer(to))?;
        queue.try_send(msg).map_err(|e| {
            let err = match e {
                mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            };
            debug!(me = %self.me, peer = %to, error = %err, "dropping peer message");
            err
        })
    }

    /// A handle that fetches snapshots from peers (on connections of its own).
    #[must_use]
    pub fn snapshot_fetcher(&self) -> SnapshotFetcher {
        SnapshotFetcher {
            endpoint: self.endpoint.clone(),
            peers: self.peers.clone(),
        }
    }

    /// Closes every connection and waits (bounded by the idle timeout) for the peers to be
    /// told.
    pub async fn shutdown(mut self) {
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutdown");
        // Wait for the aborted tasks to drop their endpoint handles, so the socket is
        // released once the connections have drained.
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutdown");
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the accepting side shares between connections.
#[derive(Clone)]
struct Inbound {
    me: NodeId,
    messages: mpsc::Sender<(NodeId, PaxosMsg)>,
    snapshot_file: Option<Arc<PathBuf>>,
    reconnected: Reconnected,
}

async fn accept_loop(endpoint: quinn::Endpoint, inbound: Inbound) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, inbound.clone()));
    }
}

async fn serve_connection(incoming: quinn::Incoming, inbound: Inbound) {
    let me = inbound.me;
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // A certificate from another CA ends here (the TLS alert tells the client).
            warn!(%me, %remote, error = %e, "peer handshake failed");
            return;
        }
    };
    let from = match authorize_peer_connection(&conn, None) {
        Ok(from) => from,
        Err(why) => {
            warn!(%me, %remote, reason = %why, "refusing peer connection");
            conn.close(CLOSE_NOT_A_PEER.into(), why.to_string().as_bytes());
            return;
        }
    };
    debug!(%me, peer = %from, %remote, "peer connected");
    // Only a connection that carries messages is the peer's sender starting over; a
    // snapshot fetch (bidirectional streams only) says nothing about our connection.
    let mut announced = false;
    loop {
        let ended = tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(stream) => {
                    if !announced {
                        announced = true;
                        inbound.reconnected.of(from).notify_one();
                    }
                    tokio::spawn(read_stream(stream, me, from, inbound.messages.clone()));
                    None
                }
                Err(e) => Some(e),
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let file = inbound.snapshot_file.clone();
                    tokio::spawn(snapshot_xfer::serve(send, recv, file, me, from));
                    None
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = ended {
            debug!(%me, peer = %from, error = %e, "peer connection ended");
            return;
        }
    }
}

async fn read_stream(
    mut stream: quinn::RecvStream,
    me: NodeId,
    from: NodeId,
    inbound: mpsc::Sender<(NodeId, PaxosMsg)>,
) {
    loop {
        match read_msg::<PaxosMsg, _>(&mut stream).await {
            Ok(Some(msg)) => {
                // At trace level these two lines let an strace of a replica show each
                // reply leaving only after the sync that made its vote durable.
                trace!(%me, peer = %from, kind = %msg.kind(), slot = msg.slot().map_or(0, |s| s.0),
                    "peer message received");
                if inbound.send((from, msg)).await.is_err() {
                    return; // the replica stopped listening
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(%me, peer = %from, error = %e, "dropping malformed peer stream");
                let _ = stream.stop(STREAM_MALFORMED.into());
                return;
            }
        }
    }
}

struct PeerSender {
    endpoint: quinn::Endpoint,
    me: NodeId,
    peer: NodeId,
    addr: PeerAddr,
    reconnected: Arc<Notify>,
    backoff_min: Duration,
    backoff_max: Duration,
    send_timeout: Duration,
}

impl PeerSender {
    async fn run(self, mut queue: mpsc::Receiver<PaxosMsg>) {
        let (me, peer) = (self.me, self.peer);
        let mut delay = self.backoff_min;
        loop {
            // A peer that connects to us is up: an attempt begun while it was down may wait
            // seconds for QUIC's backed-off handshake retransmission, so start over at once.
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                () = self.reconnected.notified() => {
                    info!(%me, %peer, "peer connected to us while we were connecting: connecting again at once");
                    delay = self.backoff_min;
                    continue;
                }
            };
            let conn = match attempt {
                Ok(conn) => {
                    delay = self.backoff_min;
                    conn
                }
                Err(e) => {
                    let dropped = drain(&mut queue);
                    warn!(%me, %peer, addr = %self.addr.addr, error = %e, dropped,
                        retry_in_ms = delay.as_millis(), "cannot reach peer");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => delay = (delay * 2).min(self.backoff_max),
                        () = self.reconnected.notified() => delay = self.backoff_min,
                    }
                    continue;
                }
            };
            // An empty stream announces this connection as our message sender's, so the
            // peer replaces its own connection to us if that is older (we restarted?).
            if let Ok(mut hello) = conn.open_uni().await {
                let _ = hello.finish();
            }
            let connected_at = tokio::time::Instant::now();
            let mut check = tokio::time::interval(SILENCE_CHECK);
            let (mut seen, mut heard) = (conn.stats().udp_rx.datagrams, connected_at);
            loop {
                let msg = tokio::select! {
                    msg = queue.recv() => msg,
                    reason = conn.closed() => {
                        warn!(%me, %peer, reason = %reason, "peer connection lost");
                        break;
                    }
                    _ = check.tick() => {
                        let now_seen = conn.stats().udp_rx.datagrams;
                        if now_seen != seen {
                            (seen, heard) = (now_seen, tokio::time::Instant::now());
                            continue;
                        }
                        if heard.elapsed() < PEER_SILENT_AFTER {
                            continue;
                        }
                        info!(%me, %peer, silent_ms = heard.elapsed().as_millis(),
                            "peer silent (restarted or gone?): replacing our connection to it");
                        conn.close(CLOSE_SHUTDOWN.into(), b"silent");
                        break;
                    }
                    () = self.reconnected.notified() => {
                        if connected_at.elapsed() < STALE_AFTER {
                            continue;
                        }
                        info!(%me, %peer, "peer connected anew (restarted?): replacing our connection to it");
                        conn.close(CLOSE_SHUTDOWN.into(), b"replaced");
                        break;
                    }
                };
                let Some(msg) = msg else {
                    conn.close(CLOSE_SHUTDOWN.into(), b"shutdown");
                    return;
                };
                let frame = match codec::encode(&msg) {
                    Ok(frame) => frame,
                    Err(e) => {
                        warn!(%me, %peer, error = %e, "cannot encode peer message: dropped");
                        continue;
                    }
                };
                let sent = tokio::time::timeout(self.send_timeout, send_frame(&conn, &frame)).await;
                let failure = match sent {
                    Ok(Ok(())) => {
                        trace!(%me, %peer, kind = %msg.kind(), slot = msg.slot().map_or(0, |s| s.0),
                            "peer message sent");
                        continue;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => TransportError::Timeout,
                };
                warn!(%me, %peer, error = %failure, "send to peer failed: reconnecting");
                conn.close(CLOSE_SHUTDOWN.into(), b"reconnecting");
                break;
            }
        }
    }

    async fn connect(&self) -> Result<quinn::Connection, TransportError> {
        connect_peer(&self.endpoint, self.peer, &self.addr).await
    }
}

/// Connects to `peer` and checks the server is that replica (CN `replica-<peer>`).
pub(super) async fn connect_peer(
    endpoint: &quinn::Endpoint,
    peer: NodeId,
    addr: &PeerAddr,
) -> Result<quinn::Connection, TransportError> {
    let conn = endpoint.connect(addr.addr, &addr.server_name)?.await?;
    let cert = identity::peer_certificate(&conn).map_err(TransportError::Refused)?;
    if replica_id_of_cn(&cert.common_name) != Some(peer) {
        conn.close(CLOSE_WRONG_SERVER.into(), b"not the replica expected");
        return Err(TransportError::WrongServer {
            expected: peer,
            common_name: cert.common_name,
        });
    }
    Ok(conn)
}

async fn send_frame(conn: &quinn::Connection, frame: &[u8]) -> Result<(), TransportError> {
    let mut stream = conn.open_uni().await?;
    write_frame(&mut stream, frame).await?;
    stream
        .finish()
        .map_err(|e| TransportError::Config(format!("finishing stream: {e}")))?;
    Ok(())
}

/// Drops everything queued; returns how many messages that was.
fn drain(queue: &mut mpsc::Receiver<PaxosMsg>) -> usize {
    let mut n = 0;
    while queue.try_recv().is_ok() {
        n += 1;
    }
    n
}
