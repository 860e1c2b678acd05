//! QUIC transport with mutual TLS (DESIGN §5; quinn 0.11 + rustls 0.23 with ring, STACK §2).
//!
//! - [`tls`]: rustls/quinn configs. Servers demand a certificate from the cell CA; ALPN
//!   `chubby-peer/1` for replicas, `chubby/1` for clients; keep-alive 200 ms and idle timeout
//!   3 s, well inside the 1 s master lease and the 12 s session lease.
//! - [`identity`]: the principal of a connection is its verified certificate's CN; a peer
//!   must be `replica-<member>` with a replica certificate.
//! - [`framing`]: `[u32 BE length][version byte + bincode]`, bounded before allocation.
//! - [`peer`]: [`PeerTransport`], Paxos messages between replicas.
//! - [`snapshot_xfer`]: snapshot fetches between replicas (PML §5.5 catch-up).
//! - [`client_port`]: [`client_port::ClientPort`], the client endpoint (`chubby/1`): one
//!   request and one reply per stream, handed to the node's core loop.
//!
//! Nothing here panics on input a peer controls: a bad frame ends that stream, a bad
//! certificate ends that connection, and both are logged.

pub mod client_port;
pub mod peer;
pub mod snapshot_xfer;

pub use chubby_protocol::net::{
    framing, identity, tls, Alpn, FrameError, PeerRefusal, TlsIdentity, TransportError,
};
pub use peer::{PeerAddr, PeerConfig, PeerTransport, SendError};
pub use snapshot_xfer::SnapshotFetcher;
