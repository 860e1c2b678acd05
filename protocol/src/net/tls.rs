//! rustls and quinn configurations for the cell's mutual TLS (DESIGN §5, STACK §2).
//!
//! Every config is built with the ring provider passed explicitly, so no process-default
//! provider is consulted (and none can panic). TLS 1.3 only. Servers require a client
//! certificate signed by the cell CA; clients verify the server against the same CA and
//! the server name (a SAN of the replica certificate).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::TransportError;
use crate::cell::TlsPaths;

/// The protocols a connection can speak, chosen by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// Replica to replica: Paxos messages.
    Peer,
    /// Client to replica: the Chubby API.
    Client,
}

impl Alpn {
    /// The ALPN identifier on the wire.
    #[must_use]
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::Peer => b"chubby-peer/1",
            Alpn::Client => b"chubby/1",
        }
    }
}

/// QUIC keep-alive between replicas: a replica hears from a live peer at least this often
/// (the keep-alive's acknowledgement, when no Paxos message flows), so a connection to a
/// peer that died or restarted is noticed as silent within a few of these (see
/// `chubby_server::transport::peer`), well inside the 300 ms master lease.
pub const KEEP_ALIVE: Duration = Duration::from_millis(100);
/// QUIC keep-alive of a client's connections to replicas: a client waiting for the master
/// hears from a live one at least this often (the keep-alive's acknowledgement), so a
/// silent master is suspected within a few of these (`chubby_client::conn::SILENT_AFTER`).
/// The replica does not ping its clients: theirs keep the connection (and any NAT state)
/// alive, and a cell with many sessions would otherwise spend its time on pings.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_millis(100);
/// QUIC idle timeout (the effective one is the minimum of both sides'): 15 keep-alives,
/// long enough not to drop a connection over a short burst of loss, short enough that a dead
/// peer's connection is replaced within a few leases. Paxos never waits for it: its own
/// timers decide liveness; this only bounds how long a dead connection is kept. It also
/// bounds a handshake to an unreachable address.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent unidirectional streams a peer may open (one per Paxos message).
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 256;

/// A party's certificate chain and key, and the cell CA it trusts.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The cell CA.
    pub ca: CertificateDer<'static>,
    /// This party's certificate (first) and any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// This party's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Loads PEM files written by [`crate::cell::init_cell`].
    ///
    /// # Errors
    /// [`TransportError::Pem`] naming the file that is missing or does not parse.
    pub fn load(paths: &TlsPaths) -> Result<TlsIdentity, TransportError> {
        let ca = CertificateDer::from_pem_file(&paths.ca).map_err(pem_err(&paths.ca))?;
        let chain = CertificateDer::pem_file_iter(&paths.cert)
            .map_err(pem_err(&paths.cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(&paths.cert))?;
        if chain.is_empty() {
            return Err(TransportError::Pem(format!(
                "{}: no certificate",
                paths.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(pem_err(&paths.key))?;
        Ok(TlsIdentity { ca, chain, key })
    }

    /// Builds an identity from PEM text.
    ///
    /// # Errors
    /// [`TransportError::Pem`].
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<TlsIdentity, TransportError> {
        let text_err = |what: &'static str| {
            move |e: rustls::pki_types::pem::Error| TransportError::Pem(format!("{what}: {e}"))
        };
        let ca = CertificateDer::from_pem_slice(ca.as_bytes()).map_err(text_err("CA"))?;
        let chain =
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).map_err(text_err("certificate"))?];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(text_err("key"))?;
        Ok(TlsIdentity { ca, chain, key })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }
}

fn pem_err(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TransportError + '_ {
    move |e| TransportError::Pem(format!("{}: {e}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC transport parameters of replica-to-replica connections (see [`KEEP_ALIVE`],
/// [`IDLE_TIMEOUT`]).
#[must_use]
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    transport_config_with(Some(KEEP_ALIVE))
}

/// The transport parameters of one side of a connection: `keep_alive` for the pings it
/// sends itself (`None`: it relies on the other side's).
fn transport_config_with(keep_alive: Option<Duration>) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive);
    // 3 s is far below the 2^62 ms VarInt bound, so the conversion cannot fail; fall back to
    // quinn's default rather than unwrap.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_uni_streams(MAX_CONCURRENT_UNI_STREAMS.into());
    Arc::new(t)
}

/// A server config that demands a client certificate from the cell CA and offers `alpns`.
///
/// # Errors
/// [`TransportError::Tls`] if the identity's key does not match or the CA is unusable.
pub fn server_config(
    identity: &TlsIdentity,
    alpns: &[Alpn],
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider.clone())
        .build()
        .map_err(|e| TransportError::Config(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = alpns.iter().map(|a| a.id().to_vec()).collect();
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Config(format!("QUIC server crypto: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Clients ping their replicas; a replica pings only its peers.
    let pings_itself = alpns.contains(&Alpn::Peer);
    config.transport_config(transport_config_with(pings_itself.then_some(KEEP_ALIVE)));
    Ok(config)
}

/// A client config presenting `identity` and offering exactly `alpn`.
///
/// # Errors
/// [`TransportError::Tls`] if the identity's key does not match or the CA is unusable.
pub fn client_config(
    identity: &TlsIdentity,
    alpn: Alpn,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(identity.roots()?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.id().to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Config(format!("QUIC client crypto: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(match alpn {
        Alpn::Peer => transport_config(),
        Alpn::Client => transport_config_with(Some(CLIENT_KEEP_ALIVE)),
    });
    Ok(config)
}

/// The config a replica uses to reach its peers (presents its replica certificate).
///
/// # Errors
/// As [`client_config`].
pub fn replica_client_config(
    identity: &TlsIdentity,
) -> Result<quinn::ClientConfig, TransportError> {
    client_config(identity, Alpn::Peer)
}

/// The config a Chubby client uses to reach replicas (presents its client certificate).
///
/// # Errors
/// As [`client_config`].
pub fn chubby_client_config(identity: &TlsIdentity) -> Result<quinn::ClientConfig, TransportError> {
    client_config(identity, Alpn::Client)
}
