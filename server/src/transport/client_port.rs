//! The client endpoint (ALPN `chubby/1`): one [`Request`] and one [`Reply`] per
//! bidirectional stream, handed to the node's core loop.
//!
//! The principal is the verified client certificate's CN; rustls has already refused
//! certificates that the cell CA did not sign, and connections without one. A malformed
//! request gets a [`CallError::BadRequest`] reply on its stream and ends only that stream.

use std::net::SocketAddr;
use std::sync::Arc;

use chubby_protocol::client_msg::{CallError, Reply, Request};
use chubby_protocol::net::framing::{read_frame, write_msg, FrameError};
use chubby_protocol::net::identity::peer_certificate;
use chubby_protocol::net::tls::{server_config, Alpn, TlsIdentity};
use chubby_protocol::net::TransportError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Connection close code: the client's certificate is unusable.
pub const CLOSE_BAD_CERTIFICATE: u32 = 3;

/// A request on its way to the core, with the channel for its answer.
#[derive(Debug)]
pub struct ClientCall {
    /// The caller's principal (certificate CN).
    pub principal: String,
    /// The request.
    pub request: Request,
    /// Where the answer goes; dropped if the caller went away.
    pub reply: oneshot::Sender<Reply>,
}

/// The running client endpoint.
#[derive(Debug)]
pub struct ClientPort {
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
}

impl ClientPort {
    /// Binds `addr` and starts accepting; calls arrive on the returned channel.
    ///
    /// # Errors
    /// The socket cannot be bound (e.g. the port is in use) or the TLS config is unusable.
    pub fn bind(
        identity: &TlsIdentity,
        addr: SocketAddr,
        queue: usize,
    ) -> Result<(ClientPort, mpsc::Receiver<ClientCall>), TransportError> {
        let server = server_config(identity, &[Alpn::Client])?;
        let socket = std::net::UdpSocket::bind(addr)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let task = tokio::spawn(accept_loop(endpoint.clone(), tx));
        Ok((ClientPort { endpoint, task }, rx))
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket is gone.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"replica shutting down");
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, calls: mpsc::Sender<ClientCall>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, calls.clone()));
    }
}

async fn serve_connection(incoming: quinn::Incoming, calls: mpsc::Sender<ClientCall>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // No certificate, or one from another CA: rustls refused the handshake and the
            // client got the TLS alert.
            warn!(%remote, error = %e, "client handshake refused");
            return;
        }
    };
    let principal = match peer_certificate(&conn) {
        Ok(cert) => cert.common_name,
        Err(why) => {
            warn!(%remote, reason = %why, "refusing client connection");
            conn.close(CLOSE_BAD_CERTIFICATE.into(), why.to_string().as_bytes());
            return;
        }
    };
    debug!(%remote, %principal, "client connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(send, recv, principal.clone(), calls.clone()));
            }
            Err(e) => {
                debug!(%remote, %principal, error = %e, "client connection ended");
                return;
            }
        }
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    principal: String,
    calls: mpsc::Sender<ClientCall>,
) {
    // Not `read_msg`: a request of an earlier build (no call number) decodes too.
    let request = match read_frame(&mut recv).await {
        Ok(Some(frame)) => Request::decode(&frame).map(Some).map_err(FrameError::from),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let reply = match request {
        Ok(Some(request)) => {
            let (tx, rx) = oneshot::channel();
            let call = ClientCall {
                principal: principal.clone(),
                request,
                reply: tx,
            };
            if calls.send(call).await.is_err() {
                Reply::Err(CallError::Unavailable("replica is shutting down".into()))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Reply::Err(CallError::Unavailable("replica is shutting down".into()))
                })
            }
        }
        Ok(None) => return,
        Err(e) => {
            warn!(%principal, error = %e, "malformed client request");
            Reply::Err(CallError::BadRequest(e.to_string()))
        }
    };
    if let Err(e) = write_msg(&mut send, &reply).await {
        debug!(%principal, error = %e, "client went away before its reply");
        return;
    }
    let _ = send.finish();
}
