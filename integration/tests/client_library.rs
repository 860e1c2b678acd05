//! The client library's handle calls against a real cell: names relative to a directory
//! handle (`Client::open_at`) and `Client::poison` (Chubby §2.6), which fails a handle's
//! outstanding and later calls without closing it and withdraws a queued Acquire.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use chubby_client::client::{Client, ClientOptions, OpenOptions};
use chubby_client::conn::ClientError;
use chubby_client::protocol::client_msg::CallError;
use chubby_client::protocol::{LockMode, NodeKind, Refusal};
use chubby_integration::real_cell::RealCell;
use chubby_integration::test_support::{runtime, ELECTION};

async fn client(cell: &RealCell) -> Client {
    let conn = cell.connect();
    Client::connect(conn.cell_file(), ClientOptions::default())
        .await
        .unwrap()
}

fn refusal(r: Result<impl std::fmt::Debug, ClientError>) -> Refusal {
    match r {
        Err(ClientError::Call(CallError::Refused(refusal))) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn names_resolve_relative_to_a_directory_handle() {
    let cell = RealCell::start(3);
    runtime().block_on(async {
        cell.wait_master(&cell.connect(), ELECTION).await;
        let c = client(&cell).await;
        c.mkdir("/d", false).await.unwrap();
        let mut o = OpenOptions::read();
        o.kind = NodeKind::Directory;
        let dir = c.open("/d", o).await.unwrap().handle;
        let mut w = OpenOptions::write();
        w.contents = b"relative\n".to_vec();
        let file = c.open_at(dir, "x", w.clone()).await.unwrap();
        assert!(file.created);
        assert_eq!(
            c.get("/d/x").await.unwrap().0.as_slice(),
            b"relative\n",
            "the file was created under the directory"
        );
        assert_eq!(
            refusal(c.open_at(dir, "/abs", w.clone()).await),
            Refusal::InvalidPath
        );
        assert_eq!(
            refusal(c.open_at(dir, "../x", w.clone()).await),
            Refusal::InvalidPath,
            "the master refuses what the name resolves to"
        );
        assert_eq!(
            refusal(c.open_at(file.handle, "y", w.clone()).await),
            Refusal::BadHandle,
            "a file handle is no directory"
        );
        c.close(dir).await;
        assert_eq!(
            refusal(c.open_at(dir, "x", w).await),
            Refusal::BadHandle,
            "a closed directory handle resolves nothing"
        );
        c.shutdown().await;
    });
}

#[test]
fn poison_fails_a_waiting_acquire_and_later_calls_and_withdraws_the_wait() {
    let cell = RealCell::start(3);
    runtime().block_on(async {
        cell.wait_master(&cell.connect(), ELECTION).await;
        let (a, b, c) = (
            client(&cell).await,
            client(&cell).await,
            client(&cell).await,
        );
        let ha = a.open("/l", OpenOptions::write()).await.unwrap().handle;
        a.try_acquire(ha, LockMode::Exclusive).await.unwrap();
        let hb = b.open("/l", OpenOptions::write()).await.unwrap().handle;
        let b = std::sync::Arc::new(b);
        let waiter = {
            let b = std::sync::Arc::clone(&b);
            tokio::spawn(async move { b.acquire(hb, LockMode::Exclusive).await })
        };
        // The Acquire is queued at the master once b's handle shows as waiting.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = b.lock_state(hb).await.unwrap();
            if state == chubby_client::protocol::client_msg::LockState::Waiting {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never queued: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.poison(hb);
        let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiting acquire ends at once")
            .unwrap();
        assert!(
            matches!(waited, Err(ClientError::Poisoned { handle }) if handle == hb.0),
            "{waited:?}"
        );
        assert!(matches!(
            b.read(hb).await,
            Err(ClientError::Poisoned { .. })
        ));
        assert!(matches!(
            b.set_contents(hb, b"x".to_vec(), None).await,
            Err(ClientError::Poisoned { .. })
        ));
        // Close still works, and the session is unharmed.
        b.close(hb).await;
        assert_eq!(b.get("/l").await.unwrap().0.as_slice(), b"");
        // The withdrawn wait is not granted: once a releases, another client gets the lock.
        a.release(ha).await.unwrap();
        let hc = c.open("/l", OpenOptions::write()).await.unwrap().handle;
        c.try_acquire(hc, LockMode::Exclusive)
            .await
            .expect("the lock went to nobody else");
        a.shutdown().await;
        c.shutdown().await;
        if let Ok(b) = std::sync::Arc::try_unwrap(b) {
            b.shutdown().await;
        }
    });
}

/// Found in review: `shutdown` of a session in jeopardy (no replica answers) must not wait
/// for the session to be safe again; it closes what it can and returns.
#[test]
fn shutdown_in_jeopardy_returns() {
    let mut cell = RealCell::start_tuned(3, "session_lease_ms = 1000");
    runtime().block_on(async {
        cell.wait_master(&cell.connect(), ELECTION).await;
        let c = client(&cell).await;
        let mut events = c.subscribe();
        for id in 1..=3 {
            cell.kill9(id);
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(chubby_client::client::ClientEvent::Jeopardy) = events.recv().await {
                    break;
                }
            }
        })
        .await
        .expect("jeopardy once no replica answers");
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), c.shutdown())
            .await
            .expect("shutdown returns in jeopardy");
        // Two CloseSession attempts of 5 s each at most, not the 45 s grace.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    });
}
