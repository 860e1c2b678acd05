//! The async client library for Rust programs (Chubby §2.6–2.9; DESIGN §6): one session
//! with a cell, kept alive by a background KeepAlive task, a consistent cache, events, and
//! the calls of the Chubby API.
//!
//! ```text
//!  Client::connect ─► CreateSession ─► spawn keepalive_loop ──► KeepAlive (long poll)
//!                                          │  reply: renew the local lease; apply every
//!                                          │  notice (invalidate → cache, events → channel,
//!                                          │  grants → waiting acquire) and ack it on the
//!                                          │  next KeepAlive
//!                                          └► local lease ends: Jeopardy (cache emptied and
//!                                             disabled, calls wait) → Safe | Expired
//!  Client::get/stat/list ─► cache hit, or the master (installing the reply if its token
//!                           allows)
//!  every other call ─► the master, with the client epoch; a WrongEpoch reply flushes the
//!                      cache and retries with the new epoch
//! ```
//!
//! The session's rules (lease, jeopardy, epochs, notices, the cache's coherence) live in
//! the pure [`ClientSession`], which the simulator's clients drive too; this module is its
//! async shell: it sends what the session asks, feeds it replies and time, and acts on its
//! [`SessionEvent`]s (lock waiters, read handles, events, the downstream cache).
//!
//! Calls made while the session is in jeopardy wait until it is safe again, and fail with
//! [`ClientError::Call`]`(Refused(SessionExpired))` once it expired; after that every call
//! fails the same way (the suffix-loss property of Chubby §2.8): create a new
//! [`Client`] to start over.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chubby_protocol::cell::CellFile;
use chubby_protocol::client_msg::{Answer, Call, CallError, LockState};
use chubby_protocol::db::OpenArgs;
use chubby_protocol::events::WaitEnd;
use chubby_protocol::{
    AclNames, Ballot, Creation, Event, EventMask, Generation, HandleId, InstanceNumber, LockMode,
    NodeKind, OpenMode, Refusal, Sequencer, SessionId, Stat,
};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cache::{Cache, CacheStats};
use crate::conn::{CellConn, ClientError};
use crate::idle_handles::{IdleHandles, IdleKey, IDLE_HANDLES_DEFAULT};
use crate::session::{
    CallNumbers, ClientSession, SessionConfig, SessionEvent, SessionStatus, Transition,
    GRACE_MS_DEFAULT,
};

/// Read handles kept open for cached reads (Chubby §2.7 handle caching).
const CACHED_HANDLES_MAX: usize = 1024;
/// How long [`Client::shutdown`] waits for the master to close the session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed KeepAlive before the next try.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(100);

/// Settings of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The grace period after the local lease ends (default 45 s).
    pub grace_ms: u64,
    /// A second cache downstream of this one (the kernel's, for `chubby mount`), told of
    /// every invalidation before it is acknowledged.
    pub downstream: Option<Arc<dyn DownstreamCache>>,
    /// Writable handles kept open for the next writer or locker of their node
    /// ([`crate::idle_handles`]; default 256, 0 keeps none).
    pub idle_handles: usize,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            grace_ms: GRACE_MS_DEFAULT,
            downstream: None,
            idle_handles: IDLE_HANDLES_DEFAULT,
        }
    }
}

/// A cache fed from this client's cache (the kernel's page and attribute cache under a
/// mount). The rule of [`crate::cache`] extends to it: the master counts a write done only
/// once every session caching its paths acknowledged the invalidation, and this client
/// acknowledges only after [`DownstreamCache::invalidate`] returned. Both methods run on
/// a blocking thread and may block.
pub trait DownstreamCache: Send + Sync + std::fmt::Debug + 'static {
    /// Drop what is held for `paths`; returns once it is gone.
    fn invalidate(&self, paths: &[String]);
    /// Drop everything (fail-over, a new epoch, jeopardy, expiry). `urgent` calls (the
    /// local lease ended) are not awaited by the KeepAlive task, which must go on to save
    /// the session; the others are, like [`DownstreamCache::invalidate`].
    fn invalidate_all(&self, urgent: bool);
}

/// What one KeepAlive reply's notices ask of the downstream cache, and the notice that
/// may be acknowledged once it is done.
#[derive(Debug)]
struct Downstream {
    epoch: Ballot,
    seq: u64,
    paths: Vec<String>,
    all: bool,
}

/// What the application hears about (Chubby §2.5, §2.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// An event on a handle whose mask asked for it.
    Handle {
        /// The handle.
        handle: HandleId,
        /// What happened.
        event: Event,
    },
    /// A new master took over: the cache was flushed; other events may have been lost.
    FailOver,
    /// The local lease ended: the cache is off and calls wait.
    Jeopardy,
    /// The session survived.
    Safe,
    /// The session is gone: handles and locks with it.
    Expired,
}

/// How to open a node.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Rights the handle needs.
    pub mode: OpenMode,
    /// May or must the node be created.
    pub creation: Creation,
    /// Kind of node to create.
    pub kind: NodeKind,
    /// Create it ephemeral.
    pub ephemeral: bool,
    /// Initial contents of a created file.
    pub contents: Vec<u8>,
    /// ACL names of a created node (default: the parent's).
    pub acl: Option<AclNames>,
    /// Lock-delay of the handle (default: the cell's).
    pub lock_delay_ms: Option<u64>,
    /// Events to deliver.
    pub events: EventMask,
    /// Permission bits of a created node (default: 0644 for files, 0755 for directories).
    pub create_mode: Option<u32>,
    /// Owner and group ids of a created node (default: none, shown as the mount's user).
    pub create_owner: Option<(u32, u32)>,
}

impl OpenOptions {
    /// Read an existing node.
    #[must_use]
    pub fn read() -> OpenOptions {
        OpenOptions {
            mode: OpenMode::READ,
            creation: Creation::Never,
            kind: NodeKind::File,
            ephemeral: false,
            contents: Vec::new(),
            acl: None,
            lock_delay_ms: None,
            events: EventMask::NONE,
            create_mode: None,
            create_owner: None,
        }
    }

    /// Read, write and lock a file, creating it empty if missing.
    #[must_use]
    pub fn write() -> OpenOptions {
        OpenOptions {
            mode: OpenMode::READ_WRITE,
            creation: Creation::IfMissing,
            ..OpenOptions::read()
        }
    }

    /// The Open call's arguments for `path` in `session`.
    #[must_use]
    pub fn into_args(self, session: SessionId, path: &str) -> OpenArgs {
        OpenArgs {
            session,
            path: path.to_owned(),
            mode: self.mode,
            creation: self.creation,
            kind: self.kind,
            ephemeral: self.ephemeral,
            contents: self.contents,
            acl: self.acl,
            lock_delay_ms: self.lock_delay_ms,
            events: self.events,
            create_mode: self.create_mode,
            create_owner: self.create_owner,
        }
    }
}

/// A successful Open.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The handle.
    pub handle: HandleId,
    /// True if the node was created.
    pub created: bool,
    /// Its metadata.
    pub stat: Stat,
}

struct State {
    /// The session's rules and cache (pure).
    session: ClientSession,
    /// Handles whose Acquire is queued at the master.
    lock_waiters: HashMap<HandleId, oneshot::Sender<Result<Sequencer, Refusal>>>,
    /// Paths of the directory handles this client opened (for [`Client::open_at`]).
    dirs: HashMap<HandleId, String>,
    /// Read handles kept for cached reads, by path, with the instance they were opened on.
    read_handles: HashMap<String, (HandleId, InstanceNumber)>,
    /// Handles dropped from `read_handles` or `idle` that still need a Close.
    to_close: Vec<HandleId>,
    /// Writable handles kept for the next writer or locker of their node.
    idle: IdleHandles,
    /// What the open handles the master keeps in its memory only record, to announce them
    /// again to a new master (Chubby §2.9; [`HandleId::is_volatile`]).
    announced: HashMap<HandleId, Announce>,
}

/// What a handle kept in the master's memory records, for [`Call::Reannounce`].
#[derive(Clone, Debug)]
struct Announce {
    path: String,
    instance: InstanceNumber,
    mode: OpenMode,
    lock_delay_ms: Option<u64>,
}

struct Inner {
    conn: CellConn,
    session: SessionId,
    state: Mutex<State>,
    status: watch::Sender<SessionStatus>,
    events: broadcast::Sender<ClientEvent>,
    /// Handles poisoned and not yet closed.
    poisoned: watch::Sender<HashSet<HandleId>>,
    /// `shutdown` closes the session: its end is expected, not news.
    closing: std::sync::atomic::AtomicBool,
    /// The numbers of the session's calls that change the database.
    numbers: Mutex<CallNumbers>,
    start: tokio::time::Instant,
    downstream: Option<Arc<dyn DownstreamCache>>,
    /// Work for the downstream worker, in notice order.
    downstream_jobs: Option<tokio::sync::mpsc::UnboundedSender<Downstream>>,
    /// Signalled when `ack_ready` moved.
    ack_moved: tokio::sync::Notify,
}

/// A session with a cell (see the module docs).
pub struct Client {
    inner: Arc<Inner>,
    keepalive: JoinHandle<()>,
    /// The downstream worker, if there is a downstream cache.
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.inner.session)
            .finish_non_exhaustive()
    }
}

fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// Acts on what a step of the session asked for.
    fn react(&self, state: &mut State, events: Vec<SessionEvent>) {
        for event in events {
            match event {
                SessionEvent::Transition(t) => self.transition(state, t),
                SessionEvent::Invalidated { paths } => {
                    for p in &paths {
                        if let Some((h, _)) = state.read_handles.remove(p) {
                            state.to_close.push(h);
                        }
                    }
                }
                SessionEvent::FailOver => {
                    let dropped: Vec<HandleId> =
                        state.read_handles.drain().map(|(_, (h, _))| h).collect();
                    state.to_close.extend(dropped);
                    self.emit(ClientEvent::FailOver);
                }
                SessionEvent::NewEpoch(epoch) => {
                    info!(session = self.session.0, epoch = %epoch, "new master epoch: cache flushed");
                    self.flush_downstream_now();
                }
                SessionEvent::Downstream {
                    epoch,
                    seq,
                    paths,
                    all,
                } => {
                    let work = Downstream {
                        epoch,
                        seq,
                        paths,
                        all,
                    };
                    match &self.downstream_jobs {
                        Some(jobs) => {
                            if jobs.send(work).is_err() {
                                warn!("the downstream worker is gone: notices stay unacknowledged");
                            }
                        }
                        None => state.session.downstream_done(epoch, seq),
                    }
                }
                SessionEvent::LockGranted { handle, sequencer } => {
                    if let Some(w) = state.lock_waiters.remove(&handle) {
                        let _ = w.send(Ok(sequencer));
                    }
                }
                SessionEvent::LockWaitEnded { handle, reason } => {
                    if let Some(w) = state.lock_waiters.remove(&handle) {
                        let refusal = match reason {
                            WaitEnd::NodeDeleted => Refusal::NotFound,
                            WaitEnd::SessionEnded => Refusal::SessionExpired,
                            WaitEnd::Cancelled | WaitEnd::HandleClosed => Refusal::NotHeld,
                        };
                        let _ = w.send(Err(refusal));
                    }
                }
                SessionEvent::Event { handle, event } => {
                    self.emit(ClientEvent::Handle { handle, event });
                }
            }
        }
    }

    /// The session's status changed (the cache already follows it).
    fn transition(&self, state: &mut State, t: Transition) {
        // Published first: whoever learns of the transition below (a lock waiter failed,
        // an event) must find `status()` already telling it. `send_replace`, not `send`:
        // `send` stores nothing while no receiver exists, and `status()` would go on
        // reporting the old state.
        self.status.send_replace(state.session.status());
        match t {
            Transition::Jeopardy => {
                self.flush_downstream_now();
                warn!(
                    session = self.session.0,
                    "session in jeopardy: cache disabled, calls wait"
                );
                self.emit(ClientEvent::Jeopardy);
            }
            Transition::Safe => {
                info!(session = self.session.0, "session safe again");
                self.emit(ClientEvent::Safe);
            }
            Transition::Expired => {
                self.flush_downstream_now();
                state.read_handles.clear();
                state.to_close.clear();
                state.announced.clear();
                for (_, w) in state.lock_waiters.drain() {
                    let _ = w.send(Err(Refusal::SessionExpired));
                }
                if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
                    debug!(session = self.session.0, "session closed");
                } else {
                    warn!(session = self.session.0, "session expired");
                }
                self.emit(ClientEvent::Expired);
            }
        }
    }

    /// Time passed: the local lease may have ended.
    fn tick(&self, state: &mut State) {
        let mut events = Vec::new();
        state.session.tick(self.now_ms(), &mut events);
        self.react(state, events);
    }

    /// The master said the session is gone.
    fn ended_by_master(&self, state: &mut State) {
        let mut events = Vec::new();
        state.session.ended_by_master(&mut events);
        self.react(state, events);
    }

    /// Starts dropping everything downstream without waiting (see
    /// [`DownstreamCache::invalidate_all`]).
    fn flush_downstream_now(&self) {
        if let (Some(d), Ok(rt)) = (&self.downstream, tokio::runtime::Handle::try_current()) {
            let d = Arc::clone(d);
            rt.spawn_blocking(move || d.invalidate_all(true));
        }
    }

    /// A call carried an old epoch: a new master took over. If `current` is not newer than
    /// ours it is ignored (epochs only grow: a late answer from an older master must not
    /// move us back) after a short pause, so a deposed master still answering is not
    /// hammered.
    async fn new_epoch(&self, current: Ballot) {
        {
            let mut state = lock(&self.state);
            let mut events = Vec::new();
            if state.session.wrong_epoch(current, &mut events) {
                self.react(&mut state, events);
                return;
            }
        }
        tokio::time::sleep(KEEPALIVE_RETRY).await;
    }
}

/// The downstream worker: applies each KeepAlive reply's downstream work in order, and
/// only then lets its notices be acknowledged.
async fn downstream_worker(
    inner: Arc<Inner>,
    cache: Arc<dyn DownstreamCache>,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Downstream>,
) {
    while let Some(job) = jobs.recv().await {
        if job.all || !job.paths.is_empty() {
            let cache = Arc::clone(&cache);
            let (all, paths) = (job.all, job.paths);
            let done = tokio::task::spawn_blocking(move || {
                if all {
                    cache.invalidate_all(false);
                } else {
                    cache.invalidate(&paths);
                }
            })
            .await;
            if let Err(e) = done {
                warn!(error = %e, "the downstream cache's invalidation failed");
            }
        }
        lock(&inner.state)
            .session
            .downstream_done(job.epoch, job.seq);
        inner.ack_moved.notify_one();
    }
}

/// Waits until every processed notice may be acknowledged, or until the local lease is
/// near its end: then the KeepAlive goes out with what may be acknowledged so far, to keep
/// the session (the master answers it at once, since notices wait).
async fn await_acknowledgeable(inner: &Inner) {
    loop {
        let (ready, deadline) = {
            let state = lock(&inner.state);
            (
                state.session.acknowledgeable(),
                state.session.ack_deadline(),
            )
        };
        if ready || inner.now_ms() >= deadline {
            return;
        }
        let at = inner.start + Duration::from_millis(deadline);
        tokio::select! {
            () = inner.ack_moved.notified() => {}
            () = tokio::time::sleep_until(at) => return,
        }
    }
}

/// The KeepAlive task: one long poll after another until the session expires.
async fn keepalive_loop(inner: Arc<Inner>) {
    loop {
        await_acknowledgeable(&inner).await;
        let (epoch, call, lease_ms) = {
            let mut state = lock(&inner.state);
            let Some((epoch, call)) = state.session.keepalive(inner.now_ms()) else {
                return; // expired
            };
            (epoch, call, state.session.lease_ms())
        };
        let ka = inner
            .conn
            .call_in(Some(epoch), call, Duration::from_millis(lease_ms));
        tokio::pin!(ka);
        let result = loop {
            let deadline = lock(&inner.state).session.next_deadline();
            let Some(deadline) = deadline else { return };
            let at = inner.start + Duration::from_millis(deadline);
            tokio::select! {
                r = &mut ka => break r,
                () = tokio::time::sleep_until(at) => {
                    let mut state = lock(&inner.state);
                    inner.tick(&mut state);
                    if state.session.status() == SessionStatus::Expired {
                        return;
                    }
                }
            }
        };
        match result {
            Ok(Answer::KeepAlive(reply)) => {
                let to_close = {
                    let mut state = lock(&inner.state);
                    // Notices are applied in order; the next KeepAlive acknowledges them
                    // only once the downstream cache dropped what they name. An answer
                    // for an epoch no longer followed is ignored.
                    let mut events = Vec::new();
                    state.session.keepalive_answered(reply, &mut events);
                    inner.react(&mut state, events);
                    let to_close = std::mem::take(&mut state.to_close);
                    for h in &to_close {
                        state.announced.remove(h);
                    }
                    to_close
                };
                if !to_close.is_empty() {
                    tokio::spawn(close_all(Arc::clone(&inner), epoch, to_close));
                }
            }
            Ok(other) => {
                lock(&inner.state).session.keepalive_failed();
                warn!(?other, "unexpected answer to a KeepAlive");
            }
            Err(ClientError::Call(CallError::WrongEpoch { current })) => {
                lock(&inner.state).session.keepalive_failed();
                inner.new_epoch(current).await;
            }
            Err(ClientError::Call(CallError::Refused(Refusal::SessionExpired))) => {
                let mut state = lock(&inner.state);
                inner.ended_by_master(&mut state);
                return;
            }
            Err(e) => {
                lock(&inner.state).session.keepalive_failed();
                debug!(error = %e, "KeepAlive failed; retrying");
                tokio::time::sleep(KEEPALIVE_RETRY).await;
            }
        }
    }
}

/// Releases `handle`'s lock or queued Acquire after a poison, following epoch changes, for
/// a few attempts.
async fn withdraw(inner: Arc<Inner>, session: SessionId, handle: HandleId) {
    for _ in 0..3 {
        let epoch = lock(&inner.state).session.epoch();
        let call = Call::Release { session, handle };
        match inner
            .conn
            .call_in(Some(epoch), call, Duration::from_secs(5))
            .await
        {
            Ok(_) | Err(ClientError::Call(CallError::Refused(_))) => return,
            Err(ClientError::Call(CallError::WrongEpoch { current })) => {
                inner.new_epoch(current).await;
            }
            Err(e) => {
                debug!(handle = handle.0, error = %e, "withdrawing a poisoned wait failed; retrying");
                tokio::time::sleep(KEEPALIVE_RETRY).await;
            }
        }
    }
}

/// Closes handles the cache no longer needs (best effort: a handle that cannot be closed
/// goes with its session).
async fn close_all(inner: Arc<Inner>, epoch: Ballot, handles: Vec<HandleId>) {
    for handle in handles {
        let call = Call::Close {
            session: inner.session,
            handle,
        };
        if let Err(e) = inner
            .conn
            .call_in(Some(epoch), call, Duration::from_secs(5))
            .await
        {
            debug!(handle = handle.0, error = %e, "closing a cached read handle failed");
        }
    }
}

impl Client {
    /// Connects to the cell and starts a session.
    ///
    /// # Errors
    /// The cell file's certificates are unusable, or no master answered.
    pub async fn connect(cell: &CellFile, options: ClientOptions) -> Result<Client, ClientError> {
        let conn = CellConn::new(cell)?;
        // The lease is timed from when the call was first sent (the master may have
        // started it on any attempt). A session whose answer took its whole lease or more
        // (replicas unreachable, a master being elected) would be in jeopardy, or expired,
        // at once: it is closed and another is asked for.
        let mut attempts = 0;
        let (start, session, epoch, lease_ms) = loop {
            let start = tokio::time::Instant::now();
            let (session, epoch, lease_ms) = match conn.call(Call::CreateSession).await? {
                Answer::Session {
                    session,
                    epoch,
                    lease_ms,
                } => (session, epoch, lease_ms),
                other => return Err(unexpected(&other)),
            };
            attempts += 1;
            let took = start.elapsed();
            if took.as_millis() < u128::from(lease_ms) || attempts >= 5 {
                break (start, session, epoch, lease_ms);
            }
            warn!(
                session = session.0,
                took_ms = took.as_millis(),
                lease_ms,
                "the new session's answer took its whole lease: closing it, asking for another"
            );
            // Best effort: one left open would hold up a new master for its lease.
            let close = conn.call_in(Some(epoch), Call::CloseSession { session }, CLOSE_TIMEOUT);
            if !matches!(tokio::time::timeout(CLOSE_TIMEOUT, close).await, Ok(Ok(_))) {
                debug!(session = session.0, "the unused session will expire");
            }
        };
        let state = State {
            // Its clock starts when the CreateSession was first sent (`start`).
            session: ClientSession::new(
                session,
                epoch,
                lease_ms,
                0,
                SessionConfig {
                    grace_ms: options.grace_ms,
                    downstream: options.downstream.is_some(),
                    bug_acks_before_drop: false,
                },
            ),
            lock_waiters: HashMap::new(),
            dirs: HashMap::new(),
            read_handles: HashMap::new(),
            to_close: Vec::new(),
            idle: IdleHandles::new(options.idle_handles),
            announced: HashMap::new(),
        };
        let (status, _) = watch::channel(SessionStatus::Safe);
        let (events, _) = broadcast::channel(4096);
        let (poisoned, _) = watch::channel(HashSet::new());
        let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            conn,
            session,
            state: Mutex::new(state),
            status,
            events,
            poisoned,
            closing: std::sync::atomic::AtomicBool::new(false),
            start,
            downstream_jobs: options.downstream.is_some().then_some(jobs_tx),
            downstream: options.downstream,
            ack_moved: tokio::sync::Notify::new(),
            numbers: Mutex::new(CallNumbers::new()),
        });
        info!(session = session.0, epoch = %epoch, lease_ms, "session started");
        let keepalive = tokio::spawn(keepalive_loop(Arc::clone(&inner)));
        let worker = inner.downstream.as_ref().map(|cache| {
            tokio::spawn(downstream_worker(
                Arc::clone(&inner),
                Arc::clone(cache),
                jobs_rx,
            ))
        });
        Ok(Client {
            inner,
            keepalive,
            worker,
        })
    }

    /// The session's id.
    #[must_use]
    pub fn session(&self) -> SessionId {
        self.inner.session
    }

    /// Where the session stands.
    #[must_use]
    pub fn status(&self) -> SessionStatus {
        *self.inner.status.borrow()
    }

    /// A stream of events (handle events, fail-over, jeopardy, safe, expired).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// A receiver of the session's status.
    #[must_use]
    pub fn status_watch(&self) -> watch::Receiver<SessionStatus> {
        self.inner.status.subscribe()
    }

    /// Cache counters.
    #[must_use]
    pub fn cache_stats(&self) -> CacheStats {
        lock(&self.inner.state).session.cache().stats()
    }

    /// The connection (for status calls).
    #[must_use]
    pub fn conn(&self) -> &CellConn {
        &self.inner.conn
    }

    /// Runs `f` on the cache if the local lease still holds now (checked here, not only by
    /// the KeepAlive task's timer, which a busy runtime may run late).
    fn cached<T>(&self, f: impl FnOnce(&mut Cache) -> Option<T>) -> Option<T> {
        let mut state = lock(&self.inner.state);
        self.inner.tick(&mut state);
        if state.session.status() != SessionStatus::Safe {
            return None;
        }
        f(state.session.cache_mut())
    }

    /// `path`'s metadata if this session's cache holds it now (`Some(None)`: cached as
    /// absent), without waiting for anything; `None` on a miss or outside a safe lease.
    /// For callers with a fast path of their own (the mount answers from it on fuser's
    /// thread); [`Client::stat_covered`] gives the same answer on a hit.
    #[must_use]
    pub fn cached_stat(&self, path: &str) -> Option<Option<Stat>> {
        self.cached(|c| c.stat(path))
    }

    /// `path`'s contents and metadata if this session's cache holds them now; as
    /// [`Client::cached_stat`].
    #[must_use]
    pub fn cached_contents(&self, path: &str) -> Option<(Arc<Vec<u8>>, Stat)> {
        self.cached(|c| c.contents(path))
    }

    /// Waits while the session is in jeopardy; fails once it expired.
    async fn usable(&self) -> Result<(), ClientError> {
        let mut rx = self.inner.status.subscribe();
        loop {
            let status = *rx.borrow_and_update();
            match status {
                SessionStatus::Safe => return Ok(()),
                SessionStatus::Expired => return Err(expired()),
                SessionStatus::Jeopardy => {
                    if rx.changed().await.is_err() {
                        return Err(expired());
                    }
                }
            }
        }
    }

    /// Sends a session call to the master with the current epoch, following epoch changes.
    /// A call that changes the database is numbered ([`CallNumbers`]) and sent again with
    /// its number when its outcome is unknown (the connection or the master went away with
    /// it in flight): the master answers a copy from the record of the first, so it takes
    /// effect once and the answer is the true one. Reads are sent again as they are. A
    /// fail-over is a delay, not an error, while the session lives.
    ///
    /// A handle the master kept in its memory only is unknown to the next master: refused
    /// with `BadHandle`, it is announced again from what it records (Chubby §2.9 steps
    /// 6–8) and the call sent again, once. If the announcement is refused (the node was
    /// deleted or renamed meanwhile, a right revoked), that refusal is the call's answer.
    async fn call(&self, call: Call) -> Result<Answer, ClientError> {
        let number = CallNumbers::numbered(&call).then(|| NumberGuard::begin(&self.inner));
        let mut backoff = Duration::from_millis(20);
        let mut announced_again = false;
        loop {
            let stamped = number.as_ref().map(|n| n.stamp());
            match self.call_once(call.clone(), stamped).await {
                Err(e) if outcome_unknown(&e) && (number.is_some() || retry_safe(&call)) => {
                    debug!(error = %e, call = call.name(), "outcome unknown; sending the call again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(ClientError::Call(CallError::Refused(Refusal::BadHandle)))
                    if !announced_again =>
                {
                    let Some(again) = self.reannounce_call(&call) else {
                        return Err(ClientError::Call(CallError::Refused(Refusal::BadHandle)));
                    };
                    announced_again = true;
                    debug!(
                        call = call.name(),
                        "handle unknown to the master; announcing it again"
                    );
                    if let Err(e) = self.call_once(again, None).await {
                        debug!(error = %e, "the handle's announcement was refused");
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// The Reannounce of the handle `call` names, if the master keeps it in memory only and
    /// this client opened it.
    fn reannounce_call(&self, call: &Call) -> Option<Call> {
        let handle = call.handle().filter(|h| h.is_volatile())?;
        let a = lock(&self.inner.state).announced.get(&handle).cloned()?;
        Some(Call::Reannounce {
            session: self.session(),
            handle,
            path: a.path,
            instance: a.instance,
            mode: a.mode,
            lock_delay_ms: a.lock_delay_ms,
        })
    }

    async fn call_once(
        &self,
        call: Call,
        number: Option<chubby_protocol::client_msg::CallNumber>,
    ) -> Result<Answer, ClientError> {
        loop {
            self.usable().await?;
            let (epoch, lease_ms) = {
                let s = lock(&self.inner.state);
                (s.session.epoch(), s.session.lease_ms())
            };
            // A write may wait up to a lease for another client's cache to go.
            let timeout = Duration::from_millis(lease_ms.saturating_add(5_000));
            match self
                .inner
                .conn
                .call_numbered(Some(epoch), call.clone(), number, timeout)
                .await
            {
                Err(ClientError::Call(CallError::WrongEpoch { current })) => {
                    self.inner.new_epoch(current).await;
                }
                Err(ClientError::Call(CallError::Refused(Refusal::SessionExpired))) => {
                    let mut state = lock(&self.inner.state);
                    self.inner.ended_by_master(&mut state);
                    return Err(expired());
                }
                other => return other,
            }
        }
    }

    /// Opens (and maybe creates) `path`.
    ///
    /// # Errors
    /// The master's refusal (`NotFound`, `Exists`, `PermissionDenied`, ...), or the session.
    pub async fn open(&self, path: &str, o: OpenOptions) -> Result<Opened, ClientError> {
        let (mode, lock_delay_ms) = (o.mode, o.lock_delay_ms);
        let args = o.into_args(self.session(), path);
        match self.call(Call::Open(args)).await? {
            Answer::Opened {
                handle,
                created,
                stat,
            } => {
                let mut state = lock(&self.inner.state);
                if stat.kind == NodeKind::Directory {
                    state.dirs.insert(handle, path.to_owned());
                }
                if handle.is_volatile() {
                    let announce = Announce {
                        path: path.to_owned(),
                        instance: stat.instance,
                        mode,
                        lock_delay_ms,
                    };
                    state.announced.insert(handle, announce);
                }
                drop(state);
                Ok(Opened {
                    handle,
                    created,
                    stat,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Opens `name` relative to the directory handle `dir` (Chubby §2.6: names are given
    /// relative to a directory handle). Directories never move (Rename moves files only),
    /// so the name is resolved here against the path `dir` was opened on; the master
    /// checks the result like any path (`..` and empty components are refused there).
    ///
    /// # Errors
    /// `BadHandle` if `dir` is not a directory handle of this client, `InvalidPath` for an
    /// empty or absolute `name`, [`ClientError::Poisoned`], or as [`Client::open`].
    pub async fn open_at(
        &self,
        dir: HandleId,
        name: &str,
        o: OpenOptions,
    ) -> Result<Opened, ClientError> {
        if self.inner.poisoned.borrow().contains(&dir) {
            return Err(ClientError::Poisoned { handle: dir.0 });
        }
        let base = lock(&self.inner.state).dirs.get(&dir).cloned();
        let Some(base) = base else {
            return Err(ClientError::Call(CallError::Refused(Refusal::BadHandle)));
        };
        if name.is_empty() || name.starts_with('/') {
            return Err(ClientError::Call(CallError::Refused(Refusal::InvalidPath)));
        }
        let path = if base == "/" {
            format!("/{name}")
        } else {
            format!("{base}/{name}")
        };
        self.open(&path, o).await
    }

    /// Closes `handle`, saying whether the master took the close (a refusal such as
    /// `BadHandle` means the handle is gone already).
    ///
    /// # Errors
    /// The close did not reach a master, or was refused.
    pub async fn try_close(&self, handle: HandleId) -> Result<(), ClientError> {
        let session = self.session();
        let r = self.call(Call::Close { session, handle }).await;
        if r.is_ok() || matches!(r, Err(ClientError::Call(CallError::Refused(_)))) {
            let mut state = lock(&self.inner.state);
            state.dirs.remove(&handle);
            state.announced.remove(&handle);
            drop(state);
            self.inner.poisoned.send_modify(|p| {
                p.remove(&handle);
            });
        }
        r.map(|_| ())
    }

    /// Closes a handle. Never fails (Chubby §2.6): a handle of an expired session, or one
    /// the master cannot be reached about, is simply forgotten.
    pub async fn close(&self, handle: HandleId) {
        let session = self.session();
        lock(&self.inner.state).dirs.remove(&handle);
        let r = self.call(Call::Close { session, handle }).await;
        lock(&self.inner.state).announced.remove(&handle);
        if let Err(e) = r {
            debug!(handle = handle.0, error = %e, "close failed; handle forgotten");
        }
        self.inner.poisoned.send_modify(|p| {
            p.remove(&handle);
        });
    }

    /// Poisons `handle` (Chubby §2.6): every call on it that is outstanding or made later
    /// fails with [`ClientError::Poisoned`] without closing it, so one task can cancel
    /// another's calls; a queued Acquire is withdrawn. Only [`Client::close`] still works on
    /// it. A write cut short this way may still have been applied. The withdrawal of a
    /// queued Acquire is best effort; closing the handle always gives up its lock and wait.
    pub fn poison(&self, handle: HandleId) {
        self.inner.poisoned.send_modify(|p| {
            p.insert(handle);
        });
        if lock(&self.inner.state)
            .lock_waiters
            .remove(&handle)
            .is_some()
        {
            // Withdraw the queued request (or release a grant racing the poison) at the
            // master, so the lock is not held for a handle whose owner gave up on it. Best
            // effort, and only inside a runtime: closing the handle always ends both.
            let (inner, session) = (Arc::clone(&self.inner), self.session());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(withdraw(inner, session, handle));
            }
        }
    }

    /// A call on `handle`: refused at once if the handle is poisoned, cut short if it is
    /// poisoned while outstanding.
    async fn handle_call(&self, handle: HandleId, call: Call) -> Result<Answer, ClientError> {
        let mut poisoned = self.inner.poisoned.subscribe();
        if poisoned.borrow_and_update().contains(&handle) {
            return Err(ClientError::Poisoned { handle: handle.0 });
        }
        let poison = async {
            if poisoned.wait_for(|p| p.contains(&handle)).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = poison => Err(ClientError::Poisoned { handle: handle.0 }),
            r = self.call(call) => r,
        }
    }

    /// Contents and metadata through a handle (uncached).
    ///
    /// # Errors
    /// The master's refusal, or the session.
    pub async fn read(&self, handle: HandleId) -> Result<(Vec<u8>, Stat), ClientError> {
        let session = self.session();
        match self
            .handle_call(handle, Call::GetContentsAndStat { session, handle })
            .await?
        {
            Answer::Contents { contents, stat, .. } => Ok((contents, stat)),
            other => Err(unexpected(&other)),
        }
    }

    /// The whole file at `path`, from the cache when it holds it.
    ///
    /// # Errors
    /// `NotFound`, `IsADirectory`, `PermissionDenied`, or the session.
    pub async fn get(&self, path: &str) -> Result<(Arc<Vec<u8>>, Stat), ClientError> {
        self.get_covered(path).await.map(|(c, s, _)| (c, s))
    }

    /// As [`Client::get`], also saying whether the answer is covered by this session's
    /// cache (it came from the cache or was installed there), so that the master will
    /// invalidate it before it changes.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn get_covered(&self, path: &str) -> Result<(Arc<Vec<u8>>, Stat, bool), ClientError> {
        // A cache hit awaits nothing: spend cooperative budget so a loop of hits still lets
        // the runtime drive the connection and the KeepAlives.
        tokio::task::consume_budget().await;
        if let Some((contents, stat)) = self.cached(|c| c.contents(path)) {
            return Ok((contents, stat, true));
        }
        if self.cached(|c| c.stat(path)) == Some(None) {
            return Err(ClientError::Call(CallError::Refused(Refusal::NotFound)));
        }
        let session = self.session();
        for attempt in 0..2 {
            let (handle, instance) = self.read_handle(path).await?;
            match self
                .call(Call::GetContentsAndStat { session, handle })
                .await
            {
                // The handle followed its file elsewhere (Rename gives a new instance):
                // it no longer reads `path`.
                Ok(Answer::Contents { stat, .. }) if stat.instance != instance && attempt == 0 => {
                    self.close(handle).await;
                }
                Ok(Answer::Contents {
                    contents,
                    stat,
                    cache,
                }) => {
                    let contents = Arc::new(contents);
                    let (keep, installed) = {
                        let mut state = lock(&self.inner.state);
                        let installed = state.session.cache_mut().install_contents(
                            path,
                            cache,
                            Arc::clone(&contents),
                            stat.clone(),
                        );
                        let keep = installed
                            && stat.instance == instance
                            && !stat.ephemeral
                            && state.read_handles.len() < CACHED_HANDLES_MAX;
                        if keep {
                            if let Some((old, _)) = state
                                .read_handles
                                .insert(path.to_owned(), (handle, instance))
                            {
                                state.to_close.push(old);
                            }
                        }
                        (keep, installed)
                    };
                    if !keep {
                        self.close(handle).await;
                    }
                    return Ok((contents, stat, installed));
                }
                Ok(other) => return Err(unexpected(&other)),
                // The cached handle's node was deleted (and maybe re-created): reopen once.
                Err(ClientError::Call(CallError::Refused(
                    Refusal::NotFound | Refusal::BadHandle,
                ))) if attempt == 0 => {
                    self.close(handle).await;
                }
                Err(e) => {
                    self.close(handle).await;
                    return Err(e);
                }
            }
        }
        Err(ClientError::Call(CallError::Refused(Refusal::NotFound)))
    }

    /// A read handle for `path`: a cached one, or a new one.
    async fn read_handle(&self, path: &str) -> Result<(HandleId, InstanceNumber), ClientError> {
        if let Some(h) = lock(&self.inner.state).read_handles.remove(path) {
            return Ok(h);
        }
        let opened = self.open(path, OpenOptions::read()).await?;
        Ok((opened.handle, opened.stat.instance))
    }

    /// Opens the file at `path` for reading, writing and locking, never creating it, with
    /// the lock-delay `lock_delay_ms` (`None`: the cell's). A handle kept from an earlier
    /// user of the same node ([`Client::keep`]) is used again instead when the master
    /// confirms with a Reopen that `path` still names `instance` and that the rights are
    /// still granted: a read at the master, no Paxos instance. A handle refused that is
    /// closed, and a new one opened.
    ///
    /// # Errors
    /// As [`Client::open`].
    pub async fn open_writer(
        &self,
        path: &str,
        instance: InstanceNumber,
        lock_delay_ms: Option<u64>,
    ) -> Result<Opened, ClientError> {
        let key: IdleKey = (instance, lock_delay_ms);
        let kept = lock(&self.inner.state).idle.take(key);
        if let Some(handle) = kept {
            let session = self.session();
            let call = Call::Reopen {
                session,
                handle,
                path: path.to_owned(),
            };
            match self.handle_call(handle, call).await {
                Ok(Answer::Stat {
                    stat: Some(stat), ..
                }) if stat.instance == instance
                    && stat.kind == NodeKind::File
                    && !stat.ephemeral =>
                {
                    debug!(path, handle = handle.0, "kept handle used again");
                    return Ok(Opened {
                        handle,
                        created: false,
                        stat,
                    });
                }
                // Refused (the node left `path`: deleted, replaced or moved, since a
                // handle follows its node, not the name; or a right was revoked), or
                // not answered: closed after the next KeepAlive, and a fresh Open says
                // what is the matter.
                other => {
                    debug!(
                        path,
                        handle = handle.0,
                        ?other,
                        "kept handle not used again"
                    );
                    lock(&self.inner.state).to_close.push(handle);
                }
            }
        }
        let mut o = OpenOptions::write();
        o.creation = Creation::Never;
        o.lock_delay_ms = lock_delay_ms;
        self.open(path, o).await
    }

    /// Keeps `handle`, a writable handle on the file `instance` opened with
    /// `lock_delay_ms`, for the next [`Client::open_writer`] of that file instead of
    /// closing it ([`crate::idle_handles`] says which may be kept). The caller must hold
    /// no lock and no queued Acquire through it. Returns false when it is not kept (the
    /// node is ephemeral, the handle poisoned, keeping is off, or the session is ending):
    /// the caller closes it then. Handles kept beyond the bound are closed after the next
    /// KeepAlive.
    pub fn keep(
        &self,
        handle: HandleId,
        instance: InstanceNumber,
        lock_delay_ms: Option<u64>,
        ephemeral: bool,
    ) -> bool {
        if ephemeral
            || self.inner.poisoned.borrow().contains(&handle)
            || self
                .inner
                .closing
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        let mut state = lock(&self.inner.state);
        if state.session.status() == SessionStatus::Expired {
            return false;
        }
        let evicted = state.idle.keep((instance, lock_delay_ms), handle);
        if evicted.contains(&handle) {
            return false;
        }
        state.to_close.extend(evicted);
        true
    }

    /// The metadata of `path`, or `None` if there is no node there; from the cache when
    /// it holds it (lock generations in it may be old: see [`crate::cache`]).
    ///
    /// # Errors
    /// `NotFound` (no parent), `PermissionDenied`, or the session.
    pub async fn stat(&self, path: &str) -> Result<Option<Stat>, ClientError> {
        self.stat_covered(path).await.map(|(s, _)| s)
    }

    /// As [`Client::stat`], also saying whether the answer is covered by this session's
    /// cache (see [`Client::get_covered`]).
    ///
    /// # Errors
    /// As [`Client::stat`].
    pub async fn stat_covered(&self, path: &str) -> Result<(Option<Stat>, bool), ClientError> {
        tokio::task::consume_budget().await;
        if let Some(hit) = self.cached(|c| c.stat(path)) {
            return Ok((hit, true));
        }
        self.stat_fresh_covered(path).await
    }

    /// The metadata of `path` from the master (never the cache).
    ///
    /// # Errors
    /// As [`Client::stat`].
    pub async fn stat_fresh(&self, path: &str) -> Result<Option<Stat>, ClientError> {
        self.stat_fresh_covered(path).await.map(|(s, _)| s)
    }

    async fn stat_fresh_covered(&self, path: &str) -> Result<(Option<Stat>, bool), ClientError> {
        let session = self.session();
        let path_s = path.to_owned();
        match self
            .call(Call::StatPath {
                session,
                path: path_s,
            })
            .await?
        {
            Answer::Stat { stat, cache } => {
                let installed = lock(&self.inner.state).session.cache_mut().install_stat(
                    path,
                    cache,
                    stat.clone(),
                );
                Ok((stat, installed))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Names and metadata of the children of directory `path`.
    ///
    /// # Errors
    /// `NotFound`, `NotADirectory`, `PermissionDenied`, or the session.
    pub async fn list(&self, path: &str) -> Result<Vec<(String, Stat)>, ClientError> {
        let mut o = OpenOptions::read();
        o.kind = NodeKind::Directory;
        let handle = self.open(path, o).await?.handle;
        let session = self.session();
        let answer = self.call(Call::ReadDir { session, handle }).await;
        self.close(handle).await;
        match answer? {
            // Listings are not cached (see crate::cache).
            Answer::Dir { children, .. } => Ok(children),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes `contents` to `path` whole, creating the file if missing; with
    /// `if_generation`, only if the file's content generation is that (compare-and-swap;
    /// the file must then exist).
    ///
    /// # Errors
    /// `CasMismatch`, `TooLarge`, `PermissionDenied`, `IsADirectory`, or the session.
    pub async fn put(
        &self,
        path: &str,
        contents: Vec<u8>,
        if_generation: Option<Generation>,
    ) -> Result<Stat, ClientError> {
        let mut o = OpenOptions::write();
        if if_generation.is_some() {
            o.creation = Creation::Never;
        }
        let handle = self.open(path, o).await?.handle;
        let r = self.set_contents(handle, contents, if_generation).await;
        self.close(handle).await;
        r
    }

    /// SetContents on a handle.
    ///
    /// # Errors
    /// As [`Client::put`].
    pub async fn set_contents(
        &self,
        handle: HandleId,
        contents: Vec<u8>,
        expected: Option<Generation>,
    ) -> Result<Stat, ClientError> {
        let session = self.session();
        let call = Call::SetContents {
            session,
            handle,
            contents,
            expected,
        };
        written(self.handle_call(handle, call).await?)
    }

    /// Creates directory `path`.
    ///
    /// # Errors
    /// `Exists`, `NotFound` (no parent), `PermissionDenied`, or the session.
    pub async fn mkdir(&self, path: &str, ephemeral: bool) -> Result<Stat, ClientError> {
        let mut o = OpenOptions::write();
        o.creation = Creation::Must;
        o.kind = NodeKind::Directory;
        o.ephemeral = ephemeral;
        let opened = self.open(path, o).await?;
        self.close(opened.handle).await;
        Ok(opened.stat)
    }

    /// Deletes the node at `path` (a directory only if empty).
    ///
    /// # Errors
    /// `NotFound`, `NotEmpty`, `PermissionDenied`, or the session.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let mut o = OpenOptions::write();
        o.creation = Creation::Never;
        // Open either kind: the database refuses the other kind only when creating.
        let handle = self.open(path, o).await?.handle;
        let session = self.session();
        let r = self.call(Call::Delete { session, handle }).await;
        self.close(handle).await;
        r.map(|_| ())
    }

    /// Moves the file or directory (with everything under it) `from` to `to` atomically,
    /// replacing a file or an empty directory there.
    ///
    /// # Errors
    /// `NotFound`, `IsADirectory`/`NotADirectory` (kinds differ), `NotEmpty` (a directory
    /// target with children), `InvalidArgument` (a directory into itself), `Locked`
    /// (something in the moved tree or the target is locked), `PermissionDenied` (the write
    /// right on both nodes and both parents), or the session.
    pub async fn rename(&self, from: &str, to: &str) -> Result<Stat, ClientError> {
        let call = Call::Rename {
            session: self.session(),
            from: from.to_owned(),
            to: to.to_owned(),
        };
        written(self.call(call).await?)
    }

    /// Changes POSIX attributes (mode, owner, times) or the ephemeral-children marker of the
    /// node at `path`, if it is still `instance` when given.
    ///
    /// # Errors
    /// `NotFound`, `PermissionDenied` (the write right), `InvalidArgument` (mode bits or
    /// nanoseconds out of range), `NotADirectory` (the marker on a file), or the session.
    pub async fn set_attr(
        &self,
        path: &str,
        instance: Option<chubby_protocol::InstanceNumber>,
        change: chubby_protocol::AttrChange,
    ) -> Result<Stat, ClientError> {
        let call = Call::SetAttr {
            session: self.session(),
            path: path.to_owned(),
            instance,
            change,
        };
        written(self.call(call).await?)
    }

    /// Replaces the ACL names of `path`.
    ///
    /// # Errors
    /// `PermissionDenied`, `CasMismatch`, `NotFound`, or the session.
    pub async fn set_acl(
        &self,
        path: &str,
        acl: AclNames,
        expected: Option<Generation>,
    ) -> Result<Stat, ClientError> {
        let mut o = OpenOptions::read();
        o.mode = OpenMode {
            read: false,
            write: false,
            change_acl: true,
        };
        let handle = self.open(path, o).await?.handle;
        let session = self.session();
        let call = Call::SetAcl {
            session,
            handle,
            acl,
            expected,
        };
        let r = self.call(call).await;
        self.close(handle).await;
        written(r?)
    }

    /// Takes the lock of the handle's node, waiting as long as it takes (or until the
    /// handle is closed, the node deleted, or the session lost).
    ///
    /// # Errors
    /// `PermissionDenied`, `AlreadyHeld`, `NotFound`, `NotHeld` (the wait was cancelled), or
    /// the session.
    pub async fn acquire(
        &self,
        handle: HandleId,
        mode: LockMode,
    ) -> Result<Sequencer, ClientError> {
        let (tx, mut rx) = oneshot::channel();
        let mut events = self.subscribe();
        lock(&self.inner.state).lock_waiters.insert(handle, tx);
        let session = self.session();
        let answer = self
            .handle_call(
                handle,
                Call::Acquire {
                    session,
                    handle,
                    mode,
                },
            )
            .await;
        match answer {
            Ok(Answer::Acquired { sequencer }) => {
                let mine = lock(&self.inner.state)
                    .lock_waiters
                    .remove(&handle)
                    .is_some();
                if !mine && self.inner.poisoned.borrow().contains(&handle) {
                    // Poisoned as the grant arrived: `poison` is releasing it.
                    return Err(ClientError::Poisoned { handle: handle.0 });
                }
                return Ok(sequencer);
            }
            Ok(Answer::Queued) => {}
            Ok(other) => return Err(unexpected(&other)),
            Err(e) => {
                lock(&self.inner.state).lock_waiters.remove(&handle);
                return Err(e);
            }
        }
        loop {
            tokio::select! {
                granted = &mut rx => {
                    return match granted {
                        Ok(Ok(seq)) => Ok(seq),
                        Ok(Err(refusal)) => Err(ClientError::Call(CallError::Refused(refusal))),
                        // The waiter was dropped: poisoned, or the session expired.
                        Err(_) if self.inner.poisoned.borrow().contains(&handle) => {
                            Err(ClientError::Poisoned { handle: handle.0 })
                        }
                        Err(_) => Err(expired()),
                    };
                }
                ev = events.recv() => {
                    // A fail-over may have lost the grant's notice: ask.
                    if matches!(ev, Ok(ClientEvent::FailOver) | Err(broadcast::error::RecvError::Lagged(_))) {
                        match self.lock_state(handle).await {
                            Ok(LockState::Waiting) => {}
                            Ok(LockState::Held(seq)) => {
                                let mine =
                                    lock(&self.inner.state).lock_waiters.remove(&handle).is_some();
                                if !mine && self.inner.poisoned.borrow().contains(&handle) {
                                    return Err(ClientError::Poisoned { handle: handle.0 });
                                }
                                return Ok(seq);
                            }
                            Ok(LockState::None) => {
                                lock(&self.inner.state).lock_waiters.remove(&handle);
                                return Err(ClientError::Call(CallError::Refused(Refusal::NotHeld)));
                            }
                            Err(e) => {
                                lock(&self.inner.state).lock_waiters.remove(&handle);
                                return Err(e);
                            }
                        }
                    }
                    if matches!(ev, Err(broadcast::error::RecvError::Closed)) {
                        return Err(expired());
                    }
                }
            }
        }
    }

    /// Takes the lock only if that is possible at once.
    ///
    /// # Errors
    /// `WouldBlock`, `LockDelayed`, `PermissionDenied`, `AlreadyHeld`, or the session.
    pub async fn try_acquire(
        &self,
        handle: HandleId,
        mode: LockMode,
    ) -> Result<Sequencer, ClientError> {
        let session = self.session();
        match self
            .handle_call(
                handle,
                Call::TryAcquire {
                    session,
                    handle,
                    mode,
                },
            )
            .await?
        {
            Answer::Acquired { sequencer } => Ok(sequencer),
            other => Err(unexpected(&other)),
        }
    }

    /// Releases the lock (or cancels a queued Acquire).
    ///
    /// # Errors
    /// `NotHeld`, or the session.
    pub async fn release(&self, handle: HandleId) -> Result<(), ClientError> {
        let session = self.session();
        self.handle_call(handle, Call::Release { session, handle })
            .await
            .map(|_| ())
    }

    /// The handle's lock state, from the master.
    ///
    /// # Errors
    /// The refusals of a handle call, or the session.
    pub async fn lock_state(&self, handle: HandleId) -> Result<LockState, ClientError> {
        let session = self.session();
        match self
            .handle_call(handle, Call::GetSequencer { session, handle })
            .await?
        {
            Answer::Lock(state) => Ok(state),
            other => Err(unexpected(&other)),
        }
    }

    /// The mode and holders of the lock of `path` (mode `None`: free), from the master.
    ///
    /// # Errors
    /// `NotFound`, `PermissionDenied`, or the session.
    pub async fn lock_holders(&self, path: &str) -> Result<LockHolders, ClientError> {
        let session = self.session();
        let call = Call::LockHolders {
            session,
            path: path.to_owned(),
        };
        match self.call(call).await? {
            Answer::Holders { mode, holders } => Ok((mode, holders)),
            other => Err(unexpected(&other)),
        }
    }

    /// Is `sequencer` still valid?
    ///
    /// # Errors
    /// The cell cannot be reached.
    pub async fn check_sequencer(&self, sequencer: &Sequencer) -> Result<bool, ClientError> {
        let call = Call::CheckSequencer {
            sequencer: sequencer.clone(),
        };
        match self.call(call).await? {
            Answer::SequencerValid(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Ends the session (handles close, locks are released without lock-delay) and stops
    /// the KeepAlive task.
    pub async fn shutdown(&self) {
        let session = self.session();
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // The KeepAlives go on meanwhile: the close may wait for this session to acknowledge
        // an invalidation of its own files. Not through `call`, which waits out a jeopardy:
        // a client in jeopardy closes as far as it can and leaves the rest to expiry.
        if self.status() != SessionStatus::Expired {
            let mut epoch = lock(&self.inner.state).session.epoch();
            for _ in 0..2 {
                let close = self.inner.conn.call_in(
                    Some(epoch),
                    Call::CloseSession { session },
                    CLOSE_TIMEOUT,
                );
                match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
                    Ok(Err(ClientError::Call(CallError::WrongEpoch { current }))) => {
                        epoch = current;
                    }
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        debug!(error = %e, "CloseSession failed; the session will expire");
                        break;
                    }
                    Err(_) => {
                        debug!("CloseSession unanswered; the session will expire");
                        break;
                    }
                }
            }
        }
        self.keepalive.abort();
        if let Some(w) = &self.worker {
            w.abort();
        }
        self.inner.conn.close().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.keepalive.abort();
        if let Some(w) = &self.worker {
            w.abort();
        }
    }
}

/// A call's number, awaiting its answer until dropped (answered, failed, or given up).
struct NumberGuard<'a> {
    inner: &'a Inner,
    number: u64,
}

impl<'a> NumberGuard<'a> {
    fn begin(inner: &'a Inner) -> NumberGuard<'a> {
        let number = lock(&inner.numbers).begin();
        NumberGuard { inner, number }
    }

    fn stamp(&self) -> chubby_protocol::client_msg::CallNumber {
        lock(&self.inner.numbers).stamp(self.number)
    }
}

impl Drop for NumberGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.numbers).end(self.number);
    }
}

/// True if `e` leaves the call's outcome unknown (the connection or the master went away
/// with it in flight). Finding a master again is the connection's job, bounded by
/// [`crate::conn::FIND_MASTER_TIMEOUT`].
fn outcome_unknown(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Lost { .. } | ClientError::Call(CallError::OutcomeUnknown(_))
    )
}

/// A lock's mode while held (`None`: free) and its holders.
pub type LockHolders = (Option<LockMode>, Vec<(SessionId, HandleId)>);

/// Unnumbered calls that may be sent again after an unknown outcome: the reads (numbered
/// calls are sent again with their number).
fn retry_safe(call: &Call) -> bool {
    matches!(
        call,
        Call::GetContentsAndStat { .. }
            | Call::GetStat { .. }
            | Call::StatPath { .. }
            | Call::ReadDir { .. }
            | Call::GetSequencer { .. }
            | Call::CheckSequencer { .. }
            | Call::LockHolders { .. }
            | Call::Reopen { .. }
            | Call::Reannounce { .. }
    )
}

fn expired() -> ClientError {
    ClientError::Call(CallError::Refused(Refusal::SessionExpired))
}

/// The metadata a write answered with.
fn written(answer: Answer) -> Result<Stat, ClientError> {
    match answer {
        Answer::Written { stat } => Ok(stat),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(answer: &Answer) -> ClientError {
    ClientError::Call(CallError::BadRequest(format!(
        "unexpected answer from the master: {answer:?}"
    )))
}
