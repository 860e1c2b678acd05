//! Who is on the other end of a connection: the principal is the CN of the certificate the
//! TLS handshake already verified against the cell CA (DESIGN §5).
//!
//! A peer (ALPN `chubby-peer/1`) must be a configured member: CN `replica-<id>` with
//! `<id>` in canonical decimal *and* the serverAuth extended key usage, which only replica
//! certificates carry (`cell::pki`). A client certificate therefore never acts as a peer,
//! even one whose CN was forged to look like a replica's by some other issuing tool.

use std::collections::BTreeSet;

use crate::NodeId;
use quinn::crypto::rustls::HandshakeData;
use rustls::pki_types::CertificateDer;

use super::tls::Alpn;
use crate::cell::REPLICA_CN_PREFIX;

/// What the verified peer certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name: the principal.
    pub common_name: String,
    /// Whether the certificate may authenticate a server (replica certificates only).
    pub server_auth: bool,
}

/// Why a connection was refused as a peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// No certificate (cannot happen with the cell's server config, which demands one).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate could not be parsed or has no single CN.
    #[error("unusable certificate: {0}")]
    BadCertificate(String),
    /// The connection did not negotiate `chubby-peer/1`.
    #[error("ALPN is not chubby-peer/1")]
    WrongAlpn,
    /// The CN is not `replica-<n>`.
    #[error("principal {0:?} is not a replica")]
    NotAReplica(String),
    /// The CN names a replica, but the certificate lacks serverAuth.
    #[error("principal {0:?} lacks the replica certificate usage (serverAuth)")]
    NotAReplicaCertificate(String),
    /// The CN names a replica that is not a member (or names this replica itself).
    #[error("replica {0} is not a peer of this cell")]
    NotAMember(NodeId),
}

/// Parses `replica-<n>` (canonical decimal, no sign, no leading zero, n >= 1).
#[must_use]
pub fn replica_id_of_cn(cn: &str) -> Option<NodeId> {
    let digits = cn.strip_prefix(REPLICA_CN_PREFIX)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !canonical {
        return None;
    }
    digits.parse::<u32>().ok().map(NodeId)
}

/// Reads the CN and serverAuth usage out of a DER certificate.
///
/// # Errors
/// [`PeerRefusal::BadCertificate`] if it does not parse or has no single UTF-8 CN.
pub fn describe_certificate(der: &CertificateDer<'_>) -> Result<PeerCertificate, PeerRefusal> {
    let bad = |why: String| PeerRefusal::BadCertificate(why);
    let (_, x509) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    let mut cns = x509.subject().iter_common_name();
    let cn = cns
        .next()
        .ok_or_else(|| bad("no common name".to_owned()))?
        .as_str()
        .map_err(|e| bad(format!("common name: {e}")))?
        .to_owned();
    if cns.next().is_some() {
        return Err(bad("more than one common name".to_owned()));
    }
    let server_auth = x509
        .extended_key_usage()
        .map_err(|e| bad(format!("extended key usage: {e}")))?
        .is_some_and(|eku| eku.value.server_auth);
    Ok(PeerCertificate {
        common_name: cn,
        server_auth,
    })
}

/// The verified certificate of the other end of `conn`.
///
/// # Errors
/// [`PeerRefusal::NoCertificate`] or [`PeerRefusal::BadCertificate`].
pub fn peer_certificate(conn: &quinn::Connection) -> Result<PeerCertificate, PeerRefusal> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(PeerRefusal::NoCertificate)?;
    let leaf = certs.first().ok_or(PeerRefusal::NoCertificate)?;
    describe_certificate(leaf)
}

/// The ALPN the handshake settled on.
#[must_use]
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|any| any.downcast::<HandshakeData>().ok())
        .and_then(|hd| hd.protocol)
}

/// Decides whether a certificate is a replica's, and (with `members`) one of them. Without
/// `members` any replica certificate of the cell CA passes: a replica about to be added
/// must reach the cell before the cell lists it.
///
/// # Errors
/// The [`PeerRefusal`] saying why not.
pub fn authorize_replica(
    cert: &PeerCertificate,
    members: Option<&BTreeSet<NodeId>>,
) -> Result<NodeId, PeerRefusal> {
    let id = replica_id_of_cn(&cert.common_name)
        .ok_or_else(|| PeerRefusal::NotAReplica(cert.common_name.clone()))?;
    if !cert.server_auth {
        return Err(PeerRefusal::NotAReplicaCertificate(
            cert.common_name.clone(),
        ));
    }
    if members.is_some_and(|m| !m.contains(&id)) {
        return Err(PeerRefusal::NotAMember(id));
    }
    Ok(id)
}

/// Authorizes an accepted connection as a peer: ALPN `chubby-peer/1` and a replica
/// certificate (of one of `members`, when given).
///
/// # Errors
/// The [`PeerRefusal`] saying why not.
pub fn authorize_peer_connection(
    conn: &quinn::Connection,
    members: Option<&BTreeSet<NodeId>>,
) -> Result<NodeId, PeerRefusal> {
    if negotiated_alpn(conn).as_deref() != Some(Alpn::Peer.id()) {
        return Err(PeerRefusal::WrongAlpn);
    }
    authorize_replica(&peer_certificate(conn)?, members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_cn_parsing_is_canonical() {
        assert_eq!(replica_id_of_cn("replica-1"), Some(NodeId(1)));
        assert_eq!(replica_id_of_cn("replica-9"), Some(NodeId(9)));
        for bad in [
            "replica-",
            "replica-0",
            "replica-01",
            "replica-+1",
            "replica--1",
            "replica-1x",
            "Replica-1",
            "admin",
            "replica-99999999999",
        ] {
            assert_eq!(replica_id_of_cn(bad), None, "{bad}");
        }
    }

    #[test]
    fn authorization_needs_member_cn_and_server_auth() {
        let members: BTreeSet<_> = [NodeId(2), NodeId(3)].into();
        let cert = |cn: &str, server_auth| PeerCertificate {
            common_name: cn.to_owned(),
            server_auth,
        };
        assert_eq!(
            authorize_replica(&cert("replica-2", true), Some(&members)),
            Ok(NodeId(2))
        );
        assert_eq!(
            authorize_replica(&cert("replica-2", false), Some(&members)),
            Err(PeerRefusal::NotAReplicaCertificate("replica-2".into()))
        );
        assert_eq!(
            authorize_replica(&cert("replica-4", true), Some(&members)),
            Err(PeerRefusal::NotAMember(NodeId(4)))
        );
        assert_eq!(
            authorize_replica(&cert("alice", true), Some(&members)),
            Err(PeerRefusal::NotAReplica("alice".into()))
        );
        // Any replica of the CA may reach a cell that does not list it yet; a client
        // certificate still may not.
        assert_eq!(
            authorize_replica(&cert("replica-4", true), None),
            Ok(NodeId(4))
        );
        assert_eq!(
            authorize_replica(&cert("replica-4", false), None),
            Err(PeerRefusal::NotAReplicaCertificate("replica-4".into()))
        );
    }
}
