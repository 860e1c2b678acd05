//! The mount's session, and the next one after it expires (DESIGN §6: once expired,
//! handles fail with `EIO` and a new session is started for new opens).
//!
//! Every open file description records the session it was opened in; its operations fail
//! with `EIO` once that session is gone, while new lookups and opens start (or wait for)
//! the next session. No request crosses sessions (issue 18): one that arrived while a
//! session was live completes under that session or fails with `EIO` once it expired,
//! even if it has not reached the cell yet; only requests that arrive after an expiry
//! start the next session. (A process that waited through the jeopardy, say a lock
//! holder's `echo` to a data file, must not act on a session that holds none of its
//! locks.)

use std::sync::Arc;
use std::time::Duration;

use chubby_protocol::cell::CellFile;
use fuser::Errno;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::client::{Client, ClientOptions};
use crate::session::SessionStatus;

tokio::task_local! {
    /// The request being served: set around each request's task.
    pub static ARRIVAL: Arrival;
}

/// What a FUSE request's task knows of its arrival.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// The session it arrived under: its generation, and whether it had expired by then
    /// (see the module docs).
    pub session: Option<(u64, bool)>,
    /// The calling thread, as the kernel named it: checked against the fence again once a
    /// new session is started (a lock holder's request may have arrived after the expiry
    /// but before its process was fenced).
    pub caller: u32,
}

/// How long an operation waits for a new session before failing with `EIO`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a new session waits for the expired one to be retired (its locks' holders
/// fenced) before the request that wants it fails with `EIO`.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// One session of the mount: its number (1, 2, ... in the mount's life) and client.
#[derive(Clone, Debug)]
pub struct Current {
    /// Which of the mount's sessions this is.
    pub generation: u64,
    /// The session.
    pub client: Arc<Client>,
}

/// After a failed start of a session, operations fail at once for this long instead of
/// each trying again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Starts a session and opens the root directory in it: a session with no handle and no
/// calls would be closed by the master as idle, which the mount would take for expiry
/// (and its open read descriptors would fail). The handle goes with the session.
async fn connect(
    cell: &CellFile,
    options: &ClientOptions,
) -> Result<Client, crate::conn::ClientError> {
    let client = Client::connect(cell, options.clone()).await?;
    let mut root = crate::client::OpenOptions::read();
    root.kind = chubby_protocol::NodeKind::Directory;
    if let Err(e) = client.open("/", root).await {
        warn!(error = %e, "cannot hold the root open: an idle mount's session may be closed");
    }
    Ok(client)
}

/// Called with each new session.
type OnNew = Box<dyn Fn(&Current) + Send + Sync>;

/// The mount's sessions (see the module docs).
pub struct Sessions {
    cell: CellFile,
    options: ClientOptions,
    current: Mutex<Option<Current>>,
    /// A copy of `current` for [`Sessions::of`], which must not wait behind a start.
    snapshot: std::sync::Mutex<Option<Current>>,
    /// When the last start failed.
    failed_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Set by [`Sessions::shutdown`]: no session is started after it (a request racing the
    /// unmount would otherwise open one that nobody closes, and a new master would wait a
    /// lease for it after a fail-over).
    closed: std::sync::atomic::AtomicBool,
    /// Called with each new session (to watch its events).
    on_new: std::sync::Mutex<Option<OnNew>>,
    /// The latest session retired: its end handled (lost locks' holders fenced). The
    /// next session is not started before, so no request of a holder can run in it
    /// unfenced.
    retired: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions with the cell; the first starts with [`Sessions::start`].
    #[must_use]
    pub fn new(cell: CellFile, options: ClientOptions) -> Sessions {
        Sessions {
            cell,
            options,
            current: Mutex::new(None),
            snapshot: std::sync::Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            on_new: std::sync::Mutex::new(None),
            retired: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Records that session `generation`'s end has been handled: the next one may start.
    pub fn retire(&self, generation: u64) {
        self.retired.send_if_modified(|r| {
            let newer = generation > *r;
            if newer {
                *r = generation;
            }
            newer
        });
    }

    /// Calls `f` with every new session.
    pub fn on_new(&self, f: OnNew) {
        *self
            .on_new
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(f);
    }

    /// Starts the first session.
    ///
    /// # Errors
    /// The cell could not be reached.
    pub async fn start(&self) -> Result<Current, crate::conn::ClientError> {
        let mut cur = self.current.lock().await;
        let client = connect(&self.cell, &self.options).await?;
        let c = Current {
            generation: 1,
            client: Arc::new(client),
        };
        self.install(&mut cur, &c);
        Ok(c)
    }

    fn install(&self, cur: &mut Option<Current>, c: &Current) {
        self.announce(c);
        *cur = Some(c.clone());
        *self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c.clone());
    }

    fn announce(&self, c: &Current) {
        if let Some(f) = self
            .on_new
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            f(c);
        }
    }

    /// What a request of thread `caller` arriving now records (see [`ARRIVAL`]).
    #[must_use]
    pub fn arrival(&self, caller: u32) -> Arrival {
        Arrival {
            session: self
                .current()
                .map(|c| (c.generation, c.client.status() == SessionStatus::Expired)),
            caller,
        }
    }

    /// The session new operations use: the current one unless it expired, else a new one;
    /// for a request that arrived under a live session, that session or `EIO`.
    ///
    /// # Errors
    /// `EIO` if no new session could be started in time, or the request's session ended.
    pub async fn get(&self) -> Result<Current, Errno> {
        let mut cur = self.current.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Errno::EIO);
        }
        if let Ok(Some((generation, false))) = ARRIVAL.try_with(|a| a.session) {
            return match cur.as_ref() {
                Some(c)
                    if c.generation == generation
                        && c.client.status() != SessionStatus::Expired =>
                {
                    Ok(c.clone())
                }
                _ => {
                    debug!(
                        generation,
                        "the request's session ended before it was served"
                    );
                    Err(Errno::EIO)
                }
            };
        }
        if let Some(c) = cur.as_ref() {
            if c.client.status() != SessionStatus::Expired {
                return Ok(c.clone());
            }
        }
        let recent_failure = self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER);
        if recent_failure {
            debug!("no session: the last start failed moments ago");
            return Err(Errno::EIO);
        }
        let generation = cur.as_ref().map_or(1, |c| c.generation + 1);
        // The expired session's end must be handled first (see `retired`).
        let mut retired = self.retired.subscribe();
        let previous = generation - 1;
        let handled = tokio::time::timeout(RETIRE_TIMEOUT, retired.wait_for(|r| *r >= previous));
        if !matches!(handled.await, Ok(Ok(_))) {
            // As after a failed start: the requests queued behind this one fail at once.
            *self
                .failed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(tokio::time::Instant::now());
            warn!(
                previous,
                "the expired session's end is not handled yet: no new session"
            );
            return Err(Errno::EIO);
        }
        let attempt = connect(&self.cell, &self.options);
        let result = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await;
        if !matches!(result, Ok(Ok(_))) {
            *self
                .failed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(tokio::time::Instant::now());
        }
        match result {
            Ok(Ok(client)) => {
                info!(
                    generation,
                    session = client.session().0,
                    "new session after the previous one expired"
                );
                let c = Current {
                    generation,
                    client: Arc::new(client),
                };
                self.install(&mut cur, &c);
                Ok(c)
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot start a new session");
                Err(Errno::EIO)
            }
            Err(_) => {
                warn!("cannot start a new session: no answer in time");
                Err(Errno::EIO)
            }
        }
    }

    /// The latest session, whatever its state (none before the first start).
    #[must_use]
    pub fn current(&self) -> Option<Current> {
        self.snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The session `generation`, if it is still the current one and not expired.
    ///
    /// # Errors
    /// `EIO`: that session is gone (its handles and locks with it).
    pub async fn of(&self, generation: u64) -> Result<Arc<Client>, Errno> {
        let cur = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match cur.as_ref() {
            Some(c)
                if c.generation == generation && c.client.status() != SessionStatus::Expired =>
            {
                Ok(Arc::clone(&c.client))
            }
            _ => Err(Errno::EIO),
        }
    }

    /// Ends the current session (unmount).
    pub async fn shutdown(&self) {
        let cur = {
            let mut cur = self.current.lock().await;
            self.closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            *self
                .snapshot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            cur.take()
        };
        if let Some(c) = cur {
            c.client.shutdown().await;
        }
    }
}
