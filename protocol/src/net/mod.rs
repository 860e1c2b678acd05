//! Networking shared by replicas and clients (DESIGN §5; quinn 0.11 + rustls 0.23 with ring,
//! STACK §2). Compiled only with the `net` feature, so the pure cores that use this crate
//! for its data types never pull in sockets.
//!
//! - [`tls`]: rustls/quinn configs. Servers demand a certificate from the cell CA; ALPN
//!   `chubby-peer/1` for replicas, `chubby/1` for clients; keep-alive 200 ms and idle timeout
//!   3 s, well inside the 1 s master lease and the 12 s session lease.
//! - [`identity`]: the principal of a connection is its verified certificate's CN; a peer
//!   must be `replica-<member>` with a replica certificate.
//! - [`framing`]: `[u32 BE length][version byte + bincode]`, bounded before allocation.
//!
//! Nothing here panics on input a peer controls: a bad frame ends that stream, a bad
//! certificate ends that connection, and both are logged.

pub mod framing;
pub mod identity;
pub mod tls;

use crate::NodeId;

pub use framing::FrameError;
pub use identity::PeerRefusal;
pub use tls::{Alpn, TlsIdentity};

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A certificate or key file is missing or unreadable.
    #[error("PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Some other configuration problem.
    #[error("configuration: {0}")]
    Config(String),
    /// A connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// A connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// A frame could not be written or read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The other end's certificate is unusable.
    #[error("refused: {0}")]
    Refused(PeerRefusal),
    /// The server reached is another replica than the one meant.
    #[error("expected replica {expected}, reached {common_name:?}")]
    WrongServer {
        /// The replica meant.
        expected: NodeId,
        /// The CN presented.
        common_name: String,
    },
    /// An operation took too long.
    #[error("timed out")]
    Timeout,
    /// Reading a whole stream failed (reset by the other end, too long, connection lost).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadToEndError),
}
