//! The cell's certificates (rcgen 0.14, ECDSA P-256; ../shared/STACK.md §2).
//!
//! One CA per cell signs everything. What a certificate may do is written into it twice, so
//! that neither check alone carries the security of the cell:
//! - **replica** certificates: CN `replica-<n>`, extended key usage serverAuth + clientAuth,
//!   SAN = the host the replica listens on (DNS name or IP address);
//! - **client** certificates (the admin is the client `admin`): CN = the principal,
//!   extended key usage clientAuth only, no SAN.
//!
//! A client certificate therefore can neither serve as a replica (a connecting replica's
//! rustls verifier demands serverAuth) nor be accepted on the peer port (the transport
//! demands CN `replica-<member>` *and* serverAuth; see `transport::identity`).
//! [`issue_client`] refuses principals that start with `replica-`.
//!
//! Validity is rcgen's default (1975 to 4096): no expiry and no rotation yet.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::CellError;

/// The CN prefix that marks a replica certificate.
pub const REPLICA_CN_PREFIX: &str = "replica-";

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key (secret: written 0600).
    pub key_pem: String,
}

/// The cell CA, able to sign.
pub struct CellCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CellCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellCa").finish_non_exhaustive()
    }
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CellError {
    move |e| CellError::Pki(format!("{what}: {e}"))
}

impl CellCa {
    /// Generates a new self-signed CA named after the cell.
    ///
    /// # Errors
    /// [`CellError::Pki`] if rcgen fails.
    pub fn generate(cell_name: &str) -> Result<(CellCa, PemPair), CellError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("CA params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("chubby cell CA {cell_name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(params, key).map_err(rcgen_err("CA cert"))?;
        let cert_pem = ca.pem();
        let pair = PemPair {
            cert_pem: cert_pem.clone(),
            key_pem,
        };
        // Re-read the issuer from its own PEM so that CellCa owns an `Issuer<'static, _>`.
        let ca = CellCa::from_pem(&cert_pem, &pair.key_pem)?;
        Ok((ca, pair))
    }

    /// Loads a CA written by [`CellCa::generate`].
    ///
    /// # Errors
    /// [`CellError::Pki`] if either PEM does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CellCa, CellError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("CA key PEM"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(rcgen_err("CA cert PEM"))?;
        Ok(CellCa {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn sign(&self, params: &CertificateParams) -> Result<PemPair, CellError> {
        let key = KeyPair::generate().map_err(rcgen_err("leaf key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("signing"))?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the certificate of replica `id`, valid for `host` (a DNS name or an IP).
    ///
    /// # Errors
    /// [`CellError::Pki`] if `host` is not a valid DNS name or IP, or rcgen fails.
    pub fn issue_replica(&self, id: u32, host: &str) -> Result<PemPair, CellError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("replica params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{REPLICA_CN_PREFIX}{id}"));
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.try_into()
                    .map_err(|e| CellError::Pki(format!("host {host:?}: {e}")))?,
            ),
        };
        params.subject_alt_names = vec![san];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(&params)
    }

    /// Issues a client certificate for `principal`.
    ///
    /// # Errors
    /// [`CellError::BadPrincipal`] for an empty principal, one with characters outside
    /// `[A-Za-z0-9._@-]`, or one starting with `replica-`; [`CellError::Pki`] if rcgen fails.
    pub fn issue_client(&self, principal: &str) -> Result<PemPair, CellError> {
        validate_principal(principal)?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("client params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, principal.to_owned());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params)
    }
}

/// Checks that `principal` can name a client (it also becomes a directory name).
///
/// # Errors
/// [`CellError::BadPrincipal`] with the reason.
pub fn validate_principal(principal: &str) -> Result<(), CellError> {
    let bad = |why: &str| CellError::BadPrincipal(principal.to_owned(), why.to_owned());
    if principal.is_empty() || principal.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if principal.starts_with(REPLICA_CN_PREFIX) {
        return Err(bad("the prefix replica- is reserved for replicas"));
    }
    if principal.starts_with('.') {
        return Err(bad("must not start with a dot"));
    }
    if !principal
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
    {
        return Err(bad("only ASCII letters, digits and . _ @ - are allowed"));
    }
    Ok(())
}
