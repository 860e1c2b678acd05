//! PeerTransport over real QUIC on loopback: delivery both ways, refusal of non-replica
//! certificates, and malformed frames that end only their own stream.

mod transport_common;

use std::time::Duration;

use chubby_protocol::codec::{self, FRAME_BYTES_MAX, WIRE_VERSION};
use chubby_protocol::NodeId;
use chubby_server::cell::init_cell;
use chubby_server::transport::framing::write_frame;
use chubby_server::transport::peer::{CLOSE_NOT_A_PEER, STREAM_MALFORMED};
use chubby_server::transport::{Alpn, SendError, TlsIdentity};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use transport_common::*;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn two_replicas_exchange_messages_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = cell(dir.path(), 3);
    // Replica 3 is configured but down: sends to it must drop, never block.
    let mut started = start(&cfgs, &[1, 2]);
    let (t2, mut rx2) = started.pop().unwrap();
    let (t1, mut rx1) = started.pop().unwrap();

    t1.send(NodeId(2), prepare(1, 1)).unwrap();
    assert_eq!(next(&mut rx2, WAIT).await, Some((NodeId(1), prepare(1, 1))));
    t2.send(NodeId(1), prepare(2, 2)).unwrap();
    assert_eq!(next(&mut rx1, WAIT).await, Some((NodeId(2), prepare(2, 2))));

    // Many messages, both directions at once: all arrive (order across streams is free).
    for i in 0..50 {
        t1.send(NodeId(2), prepare(100 + i, 1)).unwrap();
        t2.send(NodeId(1), prepare(200 + i, 2)).unwrap();
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..50 {
        got2.push(next(&mut rx2, WAIT).await.unwrap());
        got1.push(next(&mut rx1, WAIT).await.unwrap());
    }
    assert!(got2.iter().all(|(from, _)| *from == NodeId(1)));
    assert!(got1.iter().all(|(from, _)| *from == NodeId(2)));

    // The dead peer and unknown ids: no blocking, clear errors.
    for i in 0..5000 {
        let r = t1.send(NodeId(3), prepare(i, 1));
        assert!(matches!(r, Ok(()) | Err(SendError::QueueFull(_))), "{r:?}");
    }
    assert_eq!(
        t1.send(NodeId(7), prepare(1, 1)),
        Err(SendError::UnknownPeer(NodeId(7)))
    );
    assert_eq!(
        t1.send(NodeId(1), prepare(1, 1)),
        Err(SendError::UnknownPeer(NodeId(1)))
    );
    // And the live link still works after that.
    t1.send(NodeId(2), prepare(9, 1)).unwrap();
    assert_eq!(next(&mut rx2, WAIT).await, Some((NodeId(1), prepare(9, 1))));

    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = cell(dir.path(), 3);
    let sockets: Vec<std::net::UdpSocket> = cfgs.iter().map(|_| socket()).collect();
    let addrs = addresses(&cfgs, &sockets);
    let mut sockets = sockets.into_iter();
    let (t1, _rx1) = start_one(&cfgs[0], sockets.next().unwrap(), &addrs);
    let (t2, mut rx2) = start_one(&cfgs[1], sockets.next().unwrap(), &addrs);
    t1.send(NodeId(2), prepare(1, 1)).unwrap();
    assert_eq!(next(&mut rx2, WAIT).await, Some((NodeId(1), prepare(1, 1))));

    // Replica 2 goes away; sends to it are dropped without blocking.
    t2.shutdown().await;
    drop(rx2);
    for i in 0..10 {
        let _ = t1.send(NodeId(2), prepare(10 + i, 1));
    }

    // It comes back on the same address: replica 1 reconnects by itself.
    let addr2 = addrs[&NodeId(2)].addr;
    let rebind_deadline = tokio::time::Instant::now() + WAIT;
    let rebound = loop {
        // The old endpoint frees its socket once its connections have drained.
        match std::net::UdpSocket::bind(addr2) {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < rebind_deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (t2, mut rx2) = start_one(&cfgs[1], rebound, &addrs);
    let deadline = tokio::time::Instant::now() + WAIT;
    let got = loop {
        let _ = t1.send(NodeId(2), prepare(99, 1));
        if let Some(got) = next(&mut rx2, Duration::from_millis(200)).await {
            break got;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
    };
    assert_eq!(got.0, NodeId(1));
    t1.shutdown().await;
    t2.shutdown().await;
}

/// Opens a uni stream, writes a valid frame and finishes it.
async fn send_valid(conn: &quinn::Connection) -> Result<(), Box<dyn std::error::Error>> {
    let mut s = conn.open_uni().await?;
    write_frame(&mut s, &codec::encode(&prepare(5, 2))?).await?;
    s.finish()?;
    Ok(())
}

fn assert_refused_as_not_a_peer(err: &quinn::ConnectionError) {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_NOT_A_PEER.into(), "{close:?}");
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn client_certificate_cannot_act_as_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = cell(dir.path(), 3);
    let (t1, mut rx1) = start(&cfgs, &[1]).pop().unwrap();
    let addr = t1.local_addr().unwrap();

    // The admin certificate (CN admin, clientAuth only), offering chubby-peer/1.
    let admin = TlsIdentity::load(&init_layout_admin(dir.path())).unwrap();
    let (_ep, conn) = raw_connect(&admin, Alpn::Peer, addr).await;
    let conn = conn.expect("TLS 1.3: the client's handshake completes before refusal");
    let _ = send_valid(&conn).await;
    assert_refused_as_not_a_peer(&conn.closed().await);

    // A certificate forged with CN replica-2 but only clientAuth, signed by the real CA.
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key).unwrap()).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "replica-2");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let forged = TlsIdentity::from_pem(&ca_pem, &cert.pem(), &key.serialize_pem()).unwrap();
    let (_ep2, conn) = raw_connect(&forged, Alpn::Peer, addr).await;
    let conn = conn.unwrap();
    let _ = send_valid(&conn).await;
    assert_refused_as_not_a_peer(&conn.closed().await);

    // A replica certificate of another cell (right CN, wrong CA): TLS refuses it.
    let other = tempfile::tempdir().unwrap();
    let other_cfgs = cell(other.path(), 3);
    let mut stranger = TlsIdentity::load(&other_cfgs[1].tls).unwrap();
    stranger.ca = TlsIdentity::load(&cfgs[1].tls).unwrap().ca; // so it trusts our server
    let (_ep3, conn) = raw_connect(&stranger, Alpn::Peer, addr).await;
    if let Ok(conn) = conn {
        let _ = send_valid(&conn).await;
        let err = conn.closed().await;
        assert!(
            matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
            "expected a TLS alert, got {err:?}"
        );
    }

    // None of those messages was delivered.
    assert_eq!(next(&mut rx1, QUIET).await, None);
    t1.shutdown().await;
}

fn init_layout_admin(dir: &std::path::Path) -> chubby_server::cell::TlsPaths {
    chubby_server::cell::TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("admin/cert.pem"),
        key: dir.join("admin/key.pem"),
    }
}

#[tokio::test]
async fn malformed_frames_end_only_their_stream() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = cell(dir.path(), 3);
    let (t1, mut rx1) = start(&cfgs, &[1]).pop().unwrap();
    let addr = t1.local_addr().unwrap();
    // Replica 2's real certificate, driven by hand.
    let r2 = TlsIdentity::load(&cfgs[1].tls).unwrap();
    let (_ep, conn) = raw_connect(&r2, Alpn::Peer, addr).await;
    let conn = conn.unwrap();

    // 1. A length prefix over the limit, body never sent: the server stops the stream.
    let mut too_long = conn.open_uni().await.unwrap();
    let over = u32::try_from(FRAME_BYTES_MAX + 1).unwrap();
    too_long.write_all(&over.to_be_bytes()).await.unwrap();
    let mut max = conn.open_uni().await.unwrap();
    max.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    // 2. An unknown version byte.
    let mut bad_version = conn.open_uni().await.unwrap();
    write_frame(&mut bad_version, &[WIRE_VERSION + 1, 0, 1, 2])
        .await
        .unwrap();
    bad_version.finish().unwrap();
    // 3. The right version, then garbage.
    let mut garbage = conn.open_uni().await.unwrap();
    write_frame(&mut garbage, &[WIRE_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    garbage.finish().unwrap();
    // 4. A valid frame followed by trailing bytes inside the frame.
    let mut trailing = codec::encode(&prepare(1, 2)).unwrap();
    trailing.push(0);
    let mut s = conn.open_uni().await.unwrap();
    write_frame(&mut s, &trailing).await.unwrap();
    s.finish().unwrap();
    // 5. A truncated frame.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&[0, 0, 0, 10, WIRE_VERSION]).await.unwrap();
    s.finish().unwrap();

    assert_eq!(
        tokio::time::timeout(WAIT, too_long.stopped())
            .await
            .unwrap()
            .unwrap(),
        Some(STREAM_MALFORMED.into())
    );
    assert_eq!(
        tokio::time::timeout(WAIT, max.stopped())
            .await
            .unwrap()
            .unwrap(),
        Some(STREAM_MALFORMED.into())
    );

    // The connection and endpoint still serve: a good message on a new stream arrives,
    // attributed to replica 2 by its certificate.
    send_valid(&conn).await.unwrap();
    assert_eq!(next(&mut rx1, WAIT).await, Some((NodeId(2), prepare(5, 2))));
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    // Nothing from the malformed streams was delivered.
    assert_eq!(next(&mut rx1, QUIET).await, None);

    t1.shutdown().await;
}

#[test]
fn init_cell_is_usable_for_transport_identities() {
    let dir = tempfile::tempdir().unwrap();
    let layout = init_cell(dir.path(), 1, LOOPBACK, 47000).unwrap();
    TlsIdentity::load(&layout.admin).unwrap();
}
