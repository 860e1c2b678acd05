//! Certificates at a real replica's ports (issue 4's acceptance; DESIGN §1a): a client with
//! no certificate, a client with a certificate from another cell's CA, and a client
//! certificate presented at the peer port are each refused with an error that says why,
//! the replica logs the refusal, and it goes on serving its own clients.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chubby_client::conn::CellConn;
use chubby_integration::real_cell::RealCell;
use chubby_integration::test_support::{runtime, ELECTION};
use chubby_protocol::cell::{init_cell, CellFile, ReplicaConfig, TlsPaths};
use chubby_protocol::net::tls::{client_config, Alpn, TlsIdentity};

fn endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// A client config that trusts the cell's CA but presents no certificate.
fn no_certificate_config(ca_pem: &std::path::Path) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![Alpn::Client.id().to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// How the replica ended a connection opened with `config` to `addr` (after the handshake,
/// which a TLS 1.3 client may finish before the server has checked its certificate).
async fn refusal(config: quinn::ClientConfig, addr: SocketAddr) -> quinn::ConnectionError {
    let endpoint = endpoint(config);
    let result = match endpoint.connect(addr, "127.0.0.1").unwrap().await {
        Err(e) => e,
        Ok(conn) => {
            // Try to use it: a refused connection fails, an accepted one would not close.
            if let Ok(mut send) = conn.open_uni().await {
                let _ = send.write_all(b"hello").await;
            }
            tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .expect("the replica did not close the connection")
        }
    };
    endpoint.close(0u32.into(), b"done");
    result
}

#[test]
fn clients_without_a_cell_certificate_are_refused_with_clear_errors() {
    let cell = RealCell::start(1);
    let tmp = tempfile::tempdir().unwrap();
    let other = init_cell(&tmp.path().join("other"), 1, "127.0.0.1", 40_000).unwrap();
    let cell_file = CellFile::load(cell.cell_file()).unwrap();
    let replica = ReplicaConfig::load(&cell.replica_dir(1).join("config.toml")).unwrap();
    let client_addr: SocketAddr = cell_file.replicas[0].parse().unwrap();
    let peer_addr: SocketAddr = replica.members[0].peer_endpoint().parse().unwrap();
    runtime().block_on(async {
        let good = cell.connect();
        cell.wait_master(&good, ELECTION).await;

        // A certificate from another cell's CA (the client trusts this cell's CA).
        let foreign = CellFile {
            replicas: cell_file.replicas.clone(),
            tls: TlsPaths {
                ca: cell_file.tls.ca.clone(),
                cert: other.admin.cert.clone(),
                key: other.admin.key.clone(),
            },
        };
        let conn = CellConn::new(&foreign).unwrap();
        let err = conn.status_of(0).await.unwrap_err().to_string();
        assert!(
            err.contains("refused this client's TLS handshake (unknown CA)")
                && err.contains("issued by this cell's CA"),
            "{err}"
        );
        conn.close().await;

        // A client that trusts another CA refuses the replica instead, and says so.
        let lost = CellFile {
            replicas: cell_file.replicas.clone(),
            tls: other.admin.clone(),
        };
        let conn = CellConn::new(&lost).unwrap();
        let err = conn.status_of(0).await.unwrap_err().to_string();
        assert!(
            err.contains("this client refused the replica's certificate"),
            "{err}"
        );
        conn.close().await;

        // No certificate at all: TLS alert 116, certificate required.
        let err = refusal(no_certificate_config(&cell_file.tls.ca), client_addr).await;
        match &err {
            quinn::ConnectionError::ConnectionClosed(close) => {
                assert_eq!(
                    close.error_code,
                    quinn::TransportErrorCode::crypto(116),
                    "{err}"
                );
            }
            other => panic!("expected a TLS refusal, got {other}"),
        }

        // This cell's admin (client) certificate presented at the peer port as a peer.
        let admin = TlsIdentity::load(&cell_file.tls).unwrap();
        let err = refusal(client_config(&admin, Alpn::Peer).unwrap(), peer_addr).await;
        match &err {
            quinn::ConnectionError::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason);
                assert!(reason.contains("\"admin\" is not a replica"), "{reason}");
            }
            other => panic!("expected the peer port to refuse a client, got {other}"),
        }

        // The replica logged every refusal and still serves its own clients.
        let log = cell.wait_log(1, "refusing peer connection", ELECTION).await;
        assert!(
            log.matches("client handshake refused").count() >= 2,
            "{log}"
        );
        let status = good.status_of(0).await.unwrap();
        assert_eq!(status.id.0, 1);
        good.close().await;
    });
}
