//! Snapshot fetches between replicas (PML §5.5 catch-up).
//!
//! A replica whose peers truncated their logs past what it needs fetches a peer's snapshot:
//! it opens a connection of its own (authorized like any peer connection), one
//! bidirectional stream, writes one frame holding the slot it already has, finishes, and
//! reads the peer's snapshot file to the end of the stream. The bytes carry their own
//! magic, length and checksum, which the receiver verifies (`db::snapshot`) before using
//! any of them: this module only moves bytes, bounded by the caller's limit.
//!
//! The serving side reads its snapshot file whole. Writers replace that file by rename, so
//! a read sees one complete snapshot, never a half-written one. No snapshot to give: the
//! stream is reset with [`STREAM_NO_SNAPSHOT`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chubby_protocol::net::framing::{read_msg, write_msg};
use chubby_protocol::net::TransportError;
use chubby_protocol::{NodeId, Slot};
use tracing::{debug, info, warn};

use super::peer::{connect_peer, PeerAddr, CLOSE_SHUTDOWN, STREAM_MALFORMED};

/// Stream reset code: this replica has no snapshot to give.
pub const STREAM_NO_SNAPSHOT: u32 = 2;

/// Fetches snapshots from the peers of one replica (see the module docs).
#[derive(Clone, Debug)]
pub struct SnapshotFetcher {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) peers: Arc<std::sync::RwLock<BTreeMap<NodeId, PeerAddr>>>,
}

impl SnapshotFetcher {
    /// The bytes of `from`'s snapshot file; `after` tells it what we already have (for its
    /// log). At most `limit` bytes are accepted.
    ///
    /// # Errors
    /// `from` is not a peer, cannot be reached or is not who it should be; it has no
    /// snapshot (the stream is reset); the snapshot exceeds `limit`; the connection fails.
    pub async fn fetch(
        &self,
        from: NodeId,
        after: Slot,
        limit: usize,
    ) -> Result<Vec<u8>, TransportError> {
        let addr = self
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&from)
            .cloned()
            .ok_or_else(|| TransportError::Config(format!("{from} is not a peer")))?;
        let conn = connect_peer(&self.endpoint, from, &addr).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_msg(&mut send, &after).await?;
        send.finish()
            .map_err(|e| TransportError::Config(format!("finishing stream: {e}")))?;
        let bytes = recv.read_to_end(limit).await;
        conn.close(CLOSE_SHUTDOWN.into(), b"snapshot fetched");
        Ok(bytes?)
    }
}

/// Answers one fetch on a peer connection with the bytes of `file`.
pub(super) async fn serve(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    file: Option<Arc<PathBuf>>,
    me: NodeId,
    from: NodeId,
) {
    let after = match read_msg::<Slot, _>(&mut recv).await {
        Ok(Some(after)) => after,
        Ok(None) => {
            debug!(%me, peer = %from, "empty snapshot request");
            let _ = send.reset(STREAM_MALFORMED.into());
            return;
        }
        Err(e) => {
            warn!(%me, peer = %from, error = %e, "malformed snapshot request");
            let _ = recv.stop(STREAM_MALFORMED.into());
            let _ = send.reset(STREAM_MALFORMED.into());
            return;
        }
    };
    let Some(path) = file else {
        let _ = send.reset(STREAM_NO_SNAPSHOT.into());
        return;
    };
    let bytes = match tokio::fs::read(path.as_path()).await {
        Ok(bytes) => bytes,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::NotFound {
                debug!(%me, peer = %from, "snapshot asked for, but none taken yet");
            } else {
                warn!(%me, peer = %from, path = %path.display(), error = %e,
                    "cannot read the snapshot file to serve it");
            }
            let _ = send.reset(STREAM_NO_SNAPSHOT.into());
            return;
        }
    };
    info!(%me, peer = %from, %after, bytes = bytes.len(), "sending a snapshot to a lagging peer");
    if let Err(e) = send.write_all(&bytes).await {
        warn!(%me, peer = %from, error = %e, "snapshot transfer broken off");
        return;
    }
    let _ = send.finish();
    // Keep the stream until the peer has everything (or the connection ends).
    let _ = send.stopped().await;
}
