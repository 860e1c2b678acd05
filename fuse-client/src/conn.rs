//! Talking to a cell: QUIC connections to its replicas, one request per stream, and master
//! discovery (DESIGN §6: ask any replica; a non-master names the master).
//!
//! [`CellConn::call`] finds the master and retries only where that is safe: a request that
//! never left (no connection, no stream) or that a replica answered with "not the master"
//! or "unavailable" (both mean nothing was done). Once a write has been sent, a lost
//! connection is reported as [`ClientError::Lost`]: the write may or may not have been
//! applied, and only the caller knows whether retrying is harmless.
//!
//! # Noticing a dead master
//! A master killed with a call in flight sends nothing more, and QUIC's idle timeout (3 s)
//! is far longer than a fail-over (about one 300 ms master lease). So while a call waits
//! for the master, [`CellConn`] watches the connection: client connections send a QUIC
//! keep-alive every [`CLIENT_KEEP_ALIVE`] of quiet, which a live replica acknowledges at
//! once, so nothing received for [`SILENT_AFTER`] means the master may be gone. The client
//! then asks the other replicas who is master; only when one names another replica does it
//! give the call up (as [`ClientError::Lost`]: the caller decides what to resend) and go to
//! the new master. A master that is merely slow (a loaded machine) keeps its calls: no
//! other replica can be elected while its lease runs, so none is named.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use chubby_protocol::cell::CellFile;
use chubby_protocol::client_msg::{Answer, Call, CallError, Reply, Request, StatusReport};
use chubby_protocol::net::framing::{read_msg, write_msg};
pub use chubby_protocol::net::tls::CLIENT_KEEP_ALIVE;
use chubby_protocol::net::tls::{chubby_client_config, TlsIdentity};
use tokio::time::Instant;

/// How long one request may take on one replica before it counts as unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A replica that just failed a request is not tried again, even when another names it as
/// master, for this long (replicas keep naming a dead master until they elect a new one;
/// following them back costs a connection timeout each time).
pub const SUSPECT_FOR: Duration = Duration::from_secs(3);
/// How long [`CellConn::call`] keeps looking for a master that can serve.
pub const FIND_MASTER_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection to the master that received nothing for this long, with a call waiting,
/// makes the client ask the other replicas whether another one is master (two and a half
/// keep-alives: a live replica acknowledges each within QUIC's 25 ms ack delay).
pub const SILENT_AFTER: Duration = Duration::from_millis(250);
/// How often a waiting call looks at its connection.
const SILENCE_CHECK: Duration = Duration::from_millis(50);
/// How long asking one other replica who is master may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest pause between attempts to find a master that serves (a fail-over ends
/// within a lease or two; waiting longer between attempts would add to it).
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cell file or certificates are unusable.
    #[error("{0}")]
    Setup(String),
    /// The request could not be delivered to that replica (nothing was done).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The replica.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The request was sent but no reply came: it may or may not have been applied.
    #[error("lost the connection to {addr} after sending: outcome unknown ({reason})")]
    Lost {
        /// The replica.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The replica answered with an error.
    #[error("{0}")]
    Call(#[from] CallError),
    /// The handle was poisoned ([`crate::client::Client::poison`]): its operations fail until
    /// it is closed; a write cut short this way may still have been applied.
    #[error("handle {handle} is poisoned: its calls fail until it is closed")]
    Poisoned {
        /// The handle.
        handle: u64,
    },
    /// No replica could serve within the time allowed.
    #[error("no master could serve within {waited_ms} ms; last error: {last}")]
    NoMaster {
        /// How long we tried.
        waited_ms: u64,
        /// The last error seen.
        last: String,
    },
}

/// How a call to the master failed: on its own, or because another replica was named
/// master while the connection was silent.
enum Superseded {
    No(ClientError),
    By {
        new_master: usize,
        lost: ClientError,
    },
}

/// Connection close code: the client left a silent replica for another master.
pub const CLOSE_SUPERSEDED: u32 = 3;

#[derive(Debug)]
struct ReplicaSlot {
    endpoint: String,
    addr: SocketAddr,
    server_name: String,
    conn: Option<quinn::Connection>,
    /// When a request to it last failed (unreachable, or lost after sending).
    failed_at: Option<Instant>,
}

/// Connections to the replicas of one cell.
#[derive(Debug)]
pub struct CellConn {
    cell: CellFile,
    endpoint: quinn::Endpoint,
    replicas: Mutex<Vec<ReplicaSlot>>,
    master: Mutex<Option<usize>>,
}

impl CellConn {
    /// Prepares connections to the replicas of `cell` (connects lazily). Must be called in
    /// a tokio runtime.
    ///
    /// # Errors
    /// [`ClientError::Setup`]: unreadable certificates, an address that does not resolve.
    pub fn new(cell: &CellFile) -> Result<CellConn, ClientError> {
        let identity = TlsIdentity::load(&cell.tls).map_err(|e| {
            ClientError::Setup(format!(
                "client certificate {} / key {} / CA {}: {e}",
                cell.tls.cert.display(),
                cell.tls.key.display(),
                cell.tls.ca.display()
            ))
        })?;
        let config =
            chubby_client_config(&identity).map_err(|e| ClientError::Setup(e.to_string()))?;
        let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Setup(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(config);
        let mut replicas = Vec::with_capacity(cell.replicas.len());
        for endpoint_str in &cell.replicas {
            replicas.push(resolve(endpoint_str)?);
        }
        Ok(CellConn {
            cell: cell.clone(),
            endpoint,
            replicas: Mutex::new(replicas),
            master: Mutex::new(None),
        })
    }

    /// Connections of their own to the same replicas over `self`'s QUIC endpoint (one
    /// UDP socket for both), for a process that runs many sessions: each QUIC connection
    /// carries at most 100 requests at once, and a session's parked KeepAlive holds one
    /// (`chubby-bench --sessions`).
    #[must_use]
    pub fn sibling(&self) -> CellConn {
        let replicas = lock(&self.replicas)
            .iter()
            .map(|r| ReplicaSlot {
                endpoint: r.endpoint.clone(),
                addr: r.addr,
                server_name: r.server_name.clone(),
                conn: None,
                failed_at: None,
            })
            .collect();
        CellConn {
            cell: self.cell.clone(),
            endpoint: self.endpoint.clone(),
            replicas: Mutex::new(replicas),
            master: Mutex::new(*lock(&self.master)),
        }
    }

    /// The cell file this connection was made from.
    #[must_use]
    pub fn cell_file(&self) -> &CellFile {
        &self.cell
    }

    /// The replicas' client addresses, in cell-file order.
    #[must_use]
    pub fn replica_addrs(&self) -> Vec<String> {
        lock(&self.replicas)
            .iter()
            .map(|r| r.endpoint.clone())
            .collect()
    }

    /// Asks replica `index` (cell-file order) for its status.
    ///
    /// # Errors
    /// Unreachable, or a reply that is not a status.
    pub async fn status_of(&self, index: usize) -> Result<StatusReport, ClientError> {
        match self
            .call_replica(index, &Request::unbound(Call::Status), CALL_TIMEOUT)
            .await?
        {
            Reply::Ok(Answer::Status(report)) => Ok(*report),
            Reply::Ok(other) => Err(ClientError::Setup(format!("unexpected answer {other:?}"))),
            Reply::Err(e) => Err(ClientError::Call(e)),
        }
    }

    /// Sends `call` to the master, finding it first if needed.
    ///
    /// # Errors
    /// The master's refusal, [`ClientError::Lost`] after a send, or
    /// [`ClientError::NoMaster`] when no replica could serve in [`FIND_MASTER_TIMEOUT`].
    pub async fn call(&self, call: Call) -> Result<Answer, ClientError> {
        self.call_in(None, call, CALL_TIMEOUT).await
    }

    /// Like [`CellConn::call`], with the client epoch the call carries and how long to
    /// wait for its reply once sent (a KeepAlive is held at the master for most of a
    /// lease; a write may wait for other clients' caches to be invalidated).
    ///
    /// # Errors
    /// As [`CellConn::call`].
    pub async fn call_in(
        &self,
        epoch: Option<chubby_protocol::Ballot>,
        call: Call,
        reply_timeout: Duration,
    ) -> Result<Answer, ClientError> {
        self.call_numbered(epoch, call, None, reply_timeout).await
    }

    /// Like [`CellConn::call_in`], with the call's number in its session (protocol
    /// `client_msg`, "Exactly once").
    ///
    /// # Errors
    /// As [`CellConn::call`].
    pub async fn call_numbered(
        &self,
        epoch: Option<chubby_protocol::Ballot>,
        call: Call,
        number: Option<chubby_protocol::client_msg::CallNumber>,
        reply_timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let request = Request {
            epoch,
            call,
            number,
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut next = 0usize;
        loop {
            let cached = *lock(&self.master);
            let target = match cached {
                Some(m) => m,
                None => self.pick(next),
            };
            let failure = match self.call_master(target, &request, reply_timeout).await {
                Ok(Reply::Ok(answer)) => {
                    *lock(&self.master) = Some(target);
                    self.set_failed(target, None);
                    return Ok(answer);
                }
                Ok(Reply::Err(CallError::NotMaster { master: Some(hint) })) => {
                    let index = self.index_of(&hint.addr)?;
                    if index != target && !self.suspect(index) {
                        *lock(&self.master) = Some(index);
                        continue;
                    }
                    *lock(&self.master) = None;
                    format!(
                        "{} names {} as master, which is not serving",
                        target_name(self, target),
                        hint.addr
                    )
                }
                Ok(Reply::Err(e @ (CallError::NotMaster { .. } | CallError::Unavailable(_)))) => {
                    *lock(&self.master) = None;
                    e.to_string()
                }
                Ok(Reply::Err(e)) => return Err(ClientError::Call(e)),
                Err(Superseded::No(e @ ClientError::Unreachable { .. })) => {
                    *lock(&self.master) = None;
                    self.set_failed(target, Some(Instant::now()));
                    e.to_string()
                }
                Err(Superseded::By { new_master, lost }) => {
                    // Another replica serves: go there next, and leave the silent one be.
                    self.set_failed(target, Some(Instant::now()));
                    *lock(&self.master) = Some(new_master);
                    return Err(lost);
                }
                Err(Superseded::No(e)) => {
                    if matches!(e, ClientError::Lost { .. }) {
                        *lock(&self.master) = None;
                        self.set_failed(target, Some(Instant::now()));
                    }
                    return Err(e);
                }
            };
            next = target + 1;
            if started.elapsed() >= FIND_MASTER_TIMEOUT {
                return Err(ClientError::NoMaster {
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    last: failure,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_PAUSE_MAX);
        }
    }

    /// The first replica from `next` on (cyclically) that has not failed recently, or
    /// `next`'s if all have.
    fn pick(&self, next: usize) -> usize {
        let count = lock(&self.replicas).len().max(1);
        (0..count)
            .map(|i| (next + i) % count)
            .find(|i| !self.suspect(*i))
            .unwrap_or(next % count)
    }

    fn suspect(&self, index: usize) -> bool {
        lock(&self.replicas)
            .get(index)
            .and_then(|r| r.failed_at)
            .is_some_and(|at| at.elapsed() < SUSPECT_FOR)
    }

    fn set_failed(&self, index: usize, at: Option<Instant>) {
        if let Some(r) = lock(&self.replicas).get_mut(index) {
            r.failed_at = at;
        }
    }

    fn index_of(&self, endpoint: &str) -> Result<usize, ClientError> {
        let mut replicas = lock(&self.replicas);
        if let Some(i) = replicas.iter().position(|r| r.endpoint == endpoint) {
            return Ok(i);
        }
        // A master the cell file does not list (added later): remember it.
        replicas.push(resolve(endpoint)?);
        Ok(replicas.len() - 1)
    }

    /// [`CellConn::call_replica`] to the replica believed master, giving the call up if
    /// its connection falls silent and another replica is named master meanwhile (module
    /// docs, "Noticing a dead master").
    async fn call_master(
        &self,
        index: usize,
        request: &Request,
        reply_timeout: Duration,
    ) -> Result<Reply, Superseded> {
        let conn = match self.connection(index).await {
            Ok((_, conn)) => conn,
            Err(e) => return Err(Superseded::No(e)),
        };
        tokio::select! {
            reply = self.call_replica(index, request, reply_timeout) => reply.map_err(Superseded::No),
            (new_master, why) = self.superseded(index, &conn) => {
                self.forget(index);
                // Every other call waiting on that replica learns it at once too.
                conn.close(CLOSE_SUPERSEDED.into(), b"another replica is master");
                Err(Superseded::By {
                    new_master,
                    lost: ClientError::Lost {
                        addr: target_name(self, index),
                        reason: why,
                    },
                })
            }
        }
    }

    /// Resolves once `conn` (to replica `index`) has been silent for [`SILENT_AFTER`] and
    /// another replica names a master other than `index`: with that master's index, and
    /// words for the log.
    async fn superseded(&self, index: usize, conn: &quinn::Connection) -> (usize, String) {
        let mut seen = conn.stats().udp_rx.datagrams;
        let mut heard = Instant::now();
        loop {
            tokio::time::sleep(SILENCE_CHECK).await;
            let now_seen = conn.stats().udp_rx.datagrams;
            if now_seen != seen {
                seen = now_seen;
                heard = Instant::now();
                continue;
            }
            let silent = heard.elapsed();
            if silent < SILENT_AFTER {
                continue;
            }
            if let Some((new_master, named_by)) = self.other_master(index).await {
                let why = format!(
                    "nothing heard from it for {} ms, and {named_by} names {} as master",
                    silent.as_millis(),
                    target_name(self, new_master)
                );
                tracing::info!(replica = %target_name(self, index), %why, "leaving a silent master");
                return (new_master, why);
            }
        }
    }

    /// Asks every replica but `index` who is master; the first that names another one,
    /// as `(its index, the replica that named it)`.
    async fn other_master(&self, index: usize) -> Option<(usize, String)> {
        let count = lock(&self.replicas).len();
        let target = target_name(self, index);
        for i in (0..count).filter(|&i| i != index) {
            let status = Request::unbound(Call::Status);
            let asked =
                tokio::time::timeout(PROBE_TIMEOUT, self.call_replica(i, &status, PROBE_TIMEOUT))
                    .await;
            let Ok(Ok(Reply::Ok(Answer::Status(report)))) = asked else {
                continue;
            };
            let Some(hint) = report.master.filter(|m| m.addr != target) else {
                continue;
            };
            if let Ok(new_master) = self.index_of(&hint.addr) {
                return Some((new_master, target_name(self, i)));
            }
        }
        None
    }

    /// One request to one replica, on a fresh stream of a cached connection.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] before the request left, [`ClientError::Lost`] after.
    pub async fn call_replica(
        &self,
        index: usize,
        request: &Request,
        reply_timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let (addr, conn) = self.connection(index).await?;
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.clone(),
            reason,
        };
        let (mut send, mut recv) = match tokio::time::timeout(CALL_TIMEOUT, conn.open_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => {
                self.forget(index);
                return Err(unreachable(describe_connection_error(&e)));
            }
            Err(_) => {
                self.forget(index);
                return Err(unreachable("timed out opening a stream".into()));
            }
        };
        write_msg(&mut send, request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = send.finish();
        let lost = |reason: String| ClientError::Lost {
            addr: addr.clone(),
            reason,
        };
        match tokio::time::timeout(reply_timeout, read_msg::<Reply, _>(&mut recv)).await {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => {
                self.forget(index);
                Err(lost("the replica closed the stream without a reply".into()))
            }
            Ok(Err(e)) => {
                self.forget(index);
                let reason = match conn.close_reason() {
                    Some(why) => describe_connection_error(&why),
                    None => e.to_string(),
                };
                Err(lost(reason))
            }
            Err(_) => {
                self.forget(index);
                Err(lost(format!(
                    "no reply within {} ms",
                    reply_timeout.as_millis()
                )))
            }
        }
    }

    async fn connection(&self, index: usize) -> Result<(String, quinn::Connection), ClientError> {
        let (endpoint, addr, server_name, cached) = {
            let replicas = lock(&self.replicas);
            let r = replicas.get(index).ok_or_else(|| {
                ClientError::Setup(format!("no replica number {index} in the cell file"))
            })?;
            (
                r.endpoint.clone(),
                r.addr,
                r.server_name.clone(),
                r.conn.clone(),
            )
        };
        if let Some(conn) = cached.filter(|c| c.close_reason().is_none()) {
            return Ok((endpoint, conn));
        }
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: endpoint.clone(),
            reason,
        };
        let connecting = self
            .endpoint
            .connect(addr, &server_name)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = match tokio::time::timeout(CALL_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unreachable(describe_connection_error(&e))),
            Err(_) => return Err(unreachable("connection timed out".into())),
        };
        if let Some(r) = lock(&self.replicas).get_mut(index) {
            r.conn = Some(conn.clone());
        }
        Ok((endpoint, conn))
    }

    fn forget(&self, index: usize) {
        if let Some(r) = lock(&self.replicas).get_mut(index) {
            r.conn = None;
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

fn target_name(conn: &CellConn, index: usize) -> String {
    lock(&conn.replicas)
        .get(index)
        .map_or_else(|| format!("replica #{index}"), |r| r.endpoint.clone())
}

/// Turns a connection error into words an operator can act on; a refused certificate
/// surfaces here, on the first request (DESIGN §1a). TLS alerts travel as QUIC crypto
/// errors (`0x100 + alert`): a close from the replica means it refused us, a local
/// transport error that we refused it.
fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code) {
            Some(alert) => format!(
                "the replica refused this client's TLS handshake ({alert}): present a client \
                 certificate issued by this cell's CA (`chubby cell issue-client`)"
            ),
            None => e.to_string(),
        },
        quinn::ConnectionError::TransportError(t) => match tls_alert(t.code) {
            Some(alert) => format!(
                "this client refused the replica's certificate ({alert}: {}): is the cell \
                 file's CA this cell's CA?",
                t.reason
            ),
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// The TLS alert a QUIC crypto error code carries (RFC 9001 §4.8), by name when known.
fn tls_alert(code: quinn::TransportErrorCode) -> Option<String> {
    const NAMES: [(u8, &str); 8] = [
        (40, "handshake failure"),
        (42, "bad certificate"),
        (43, "unsupported certificate"),
        (45, "certificate expired"),
        (46, "certificate unknown"),
        (48, "unknown CA"),
        (116, "certificate required"),
        (120, "no application protocol"),
    ];
    let raw = u64::from(code);
    if !(0x100..0x200).contains(&raw) {
        return None;
    }
    let alert = u8::try_from(raw - 0x100).ok()?;
    Some(NAMES.iter().find(|(n, _)| *n == alert).map_or_else(
        || format!("TLS alert {alert}"),
        |(_, name)| (*name).to_owned(),
    ))
}

fn resolve(endpoint: &str) -> Result<ReplicaSlot, ClientError> {
    let addr = endpoint
        .to_socket_addrs()
        .map_err(|e| ClientError::Setup(format!("replica address {endpoint}: {e}")))?
        .next()
        .ok_or_else(|| {
            ClientError::Setup(format!("replica address {endpoint} resolves to nothing"))
        })?;
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    Ok(ReplicaSlot {
        endpoint: endpoint.to_owned(),
        addr,
        server_name: host.to_owned(),
        conn: None,
        failed_at: None,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
