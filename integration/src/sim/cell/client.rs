//! A simulated client: the library's own session ([`ClientSession`]: the lease clock with
//! its drift margin, jeopardy and grace, epochs followed forward, notices applied in order
//! before they are acknowledged, the cache with its token rule) driven on the simulator's
//! clock and network, as the library's KeepAlive task drives it: one long-poll KeepAlive at
//! a time, the cache off in jeopardy, a new session after expiry. One operation at a time:
//! open, get (from the cache when it can), put, compare-and-swap, try-lock, unlock, and
//! writes to a fenced resource while it believes it holds the lock.
//!
//! Like the library, it numbers every call that changes the database ([`CallNumbers`])
//! and sends a call whose outcome became unknown (no reply in time, a lost connection,
//! "outcome unknown") again with its number while the session lives: the answer it gets is
//! the true outcome of its one application, and the history records it as such.

use std::collections::BTreeMap;
use std::sync::Arc;

use chubby_client::session::{
    CallNumbers, ClientSession, SessionConfig, SessionEvent, SessionStatus, Transition,
};
use chubby_protocol::client_msg::{Answer, Call, CallError, LockState, Reply, Request};
use chubby_protocol::db::OpenArgs;
use chubby_protocol::{
    Ballot, Creation, EventMask, Generation, HandleId, Instant, LockMode, NodeId, NodeKind,
    OpenMode, Refusal, SessionId,
};

use super::super::clock::NodeClock;
use super::super::{Event, Sim};
use super::checks::{Pending, ReadSeen};

/// The principal every simulated client acts as.
pub const PRINCIPAL: &str = "admin";
/// The files used as registers.
pub const FILES: [&str; 2] = ["/f0", "/f1"];
/// The lock file.
pub const LOCK: &str = "/lock";
/// The directory of the clients' ephemeral files (its metadata is cached by StatPath).
pub const EPHEMERAL_DIR: &str = "/e";
/// The two names of client `id`'s tree (a directory holding a file) that it moves between.
fn tree_name(id: usize, moved: bool) -> String {
    format!("/t{id}{}", if moved { "-moved" } else { "" })
}

/// Ephemeral files a session keeps at most.
const EPHEMERALS_MAX: usize = 2;
/// How much shorter than the lock-delay the longest delay of a message to the fenced
/// resource is: more than the replicas' wall-clock skew (up to 50 ms each way), so
/// lock-delay alone keeps an expired holder's late messages ahead of the next holder's.
pub const RESOURCE_DELAY_MARGIN_US: u64 = 200_000;
/// How long after a message is lost its sender learns the connection broke (QUIC's idle
/// timeout in the real client).
pub const CONNECTION_LOST_US: u64 = 3_000_000;
/// How long a call waits for its reply beyond a lease (the real client's `call`: a write
/// may wait up to a lease for other caches).
const CALL_SLACK_MS: u64 = 5_000;

/// The network address of client `c` (beyond every replica's).
#[must_use]
pub fn net_id(c: usize) -> NodeId {
    NodeId(1000 + u32::try_from(c).unwrap_or(0))
}

/// The session a client holds.
#[derive(Debug)]
pub(crate) struct Sess {
    /// The session's rules and cache: the library's own.
    pub session: ClientSession,
    pub handles: BTreeMap<String, HandleId>,
    /// The lock generation it believes it holds (and may act on), if any.
    pub holds: Option<Generation>,
    /// The master may still hold the lock for it (acquired or queued, not yet released).
    pub maybe_holds: bool,
    /// Its Acquire is queued at the master: a LockGranted notice will say when it holds.
    pub waiting: bool,
    /// A fail-over ended its wait: ask the master (GetSequencer) what became of it.
    pub check_lock: bool,
    /// Ephemeral files it created, by path.
    pub ephemerals: Vec<String>,
    /// Contents last seen per file, by generation (for CAS).
    pub seen: BTreeMap<String, (Generation, Vec<u8>)>,
    /// The numbers of its calls that change the database.
    pub numbers: CallNumbers,
    /// For each open handle the master keeps in its memory only, the Reannounce that
    /// recreates it at a new master (Chubby §2.9; the library's `Client::call` does the
    /// same).
    pub announce: BTreeMap<HandleId, Call>,
}

/// What an outstanding call is for.
#[derive(Clone, Debug)]
pub(crate) enum OpKind {
    CreateSession,
    Open(String),
    OpenDir,
    StatDir,
    Ephemeral(String),
    CloseEphemeral(String),
    Get(String),
    Put(String, Vec<u8>),
    Cas(String, Generation, Vec<u8>),
    TryLock,
    /// A blocking Acquire: granted at once or queued.
    Lock,
    /// GetSequencer on the lock handle: after a fail-over, what became of a wait.
    LockState,
    Unlock,
    /// Open (creating if missing) a node of the client's own tree, which it moves.
    OpenNode(String, NodeKind),
    /// Rename the client's tree (a directory with a file) between its two names: one
    /// Paxos write moving a subtree (issue 19).
    MoveTree {
        from: String,
        to: String,
    },
}

#[derive(Debug)]
pub(crate) struct InFlight {
    pub call: u64,
    pub kind: OpKind,
    pub sent_local: u64,
    pub deadline_us: u64,
    /// The history entry of a register operation.
    pub hist: Option<usize>,
    /// The call as sent, and its number if numbered (sent again with it while the
    /// outcome is unknown).
    pub msg: Call,
    pub number: Option<u64>,
    /// A copy was sent again after the outcome became unknown: a later copy's "not
    /// applied" says nothing of the first, so such answers mean "send again".
    pub uncertain: bool,
    /// Earlier copies' call ids: an answer to any of them is the call's answer (a copy
    /// answered is the one application's outcome), so a client that gives up quickly is
    /// not left waiting on its newest copy alone.
    pub copies: Vec<u64>,
    /// How long the newest copy is waited for (doubling with each copy, up to a lease).
    pub wait_ms: u64,
    /// The call id of a Reannounce sent for the call's handle, awaiting its answer.
    pub reannouncing: Option<u64>,
    /// A Reannounce was sent for it already (once per call, as the library does).
    pub reannounced: bool,
}

#[derive(Debug)]
pub(crate) struct KeepAliveInFlight {
    pub call: u64,
    pub deadline_us: u64,
}

/// One simulated client.
#[derive(Debug)]
pub(crate) struct SimClient {
    pub id: usize,
    pub clock: NodeClock,
    /// The replica it sends to (index).
    pub target: usize,
    pub sess: Option<Sess>,
    pub op: Option<InFlight>,
    pub ka: Option<KeepAliveInFlight>,
    pub next_op_us: u64,
    pub next_ka_us: u64,
    pub paused_until: u64,
    pub gen: u64,
    pub writes: u64,
    /// When it last sent to the fenced resource.
    pub last_resource_us: u64,
    /// It holds the lock and means to release it once its resource messages arrived.
    pub releasing: bool,
    /// When it next uses the fenced resource while holding the lock.
    pub next_resource_us: u64,
    /// Its tree is (believed to be) at its second name.
    pub tree_moved: bool,
}

impl SimClient {
    pub fn new(id: usize, clock: NodeClock, target: usize) -> SimClient {
        SimClient {
            id,
            clock,
            target,
            sess: None,
            op: None,
            ka: None,
            next_op_us: 0,
            next_ka_us: 0,
            paused_until: 0,
            gen: 0,
            writes: 0,
            last_resource_us: 0,
            releasing: false,
            next_resource_us: 0,
            tree_moved: false,
        }
    }

    fn local(&self, now_us: u64) -> u64 {
        self.clock.local(now_us).0
    }
}

impl Sim {
    fn cell_mut(&mut self) -> &mut super::CellSim {
        self.cell.as_mut().expect("cell mode")
    }

    /// Wakes every client within the first 100 ms.
    pub(crate) fn start_cell_clients(&mut self) {
        let count = self.cell.as_ref().map_or(0, |c| c.clients.len());
        for c in 0..count {
            let at = self.rng.between(0, 100_000);
            self.wake_at(c, at);
        }
    }

    /// Pauses a random client for up to its lease plus grace plus 2 s (often past both).
    pub(crate) fn pause_random_client(&mut self) {
        let Some(cell) = self.cell.as_ref() else {
            return;
        };
        let count = cell.clients.len();
        let longest = (cell.timing.lease_ms + cell.timing.grace_ms + 2_000) * 1000;
        let c = self.rng.between(0, count as u64 - 1) as usize;
        let until = self.now_us + self.rng.between(100_000, longest);
        self.pause_client(c, until);
    }

    /// Schedules client `c`'s next look at its state at `at` (true µs), cancelling earlier.
    fn wake_at(&mut self, c: usize, at: u64) {
        let client = &mut self.cell_mut().clients[c];
        client.gen += 1;
        let gen = client.gen;
        let at = at.max(self.now_us + 1);
        self.schedule(at, Event::ClientWake { client: c, gen });
    }

    pub(crate) fn client_wake(&mut self, c: usize, gen: u64) {
        if self.cell_mut().clients[c].gen != gen {
            return;
        }
        self.client_step(c);
    }

    /// Pauses client `c` (a stopped process): it handles nothing until `until`.
    fn pause_client(&mut self, c: usize, until: u64) {
        let client = &mut self.cell_mut().clients[c];
        client.paused_until = client.paused_until.max(until);
        self.cell_mut().stats.pauses += 1;
        let id = self.cell_mut().clients[c].id;
        self.trace(|| format!("client {id} paused until {until}us"));
        self.wake_at(c, until);
    }

    /// Cuts a random client off from every replica (both ways) for up to its lease plus
    /// grace plus 2 s: it keeps running (and, holding the lock, keeps using the fenced
    /// resource) until its local lease ends.
    pub(crate) fn cut_random_client(&mut self) {
        let Some(cell) = self.cell.as_ref() else {
            return;
        };
        let count = cell.clients.len();
        let longest = (cell.timing.lease_ms + cell.timing.grace_ms + 2_000) * 1000;
        // Mostly the lock holder, if any: the case lock-delay exists for.
        let holder = cell
            .clients
            .iter()
            .position(|cl| cl.sess.as_ref().is_some_and(|s| s.holds.is_some()));
        let c = match holder {
            Some(h) if self.rng.chance(750_000) => h,
            _ => self.rng.between(0, count as u64 - 1) as usize,
        };
        let me = net_id(c);
        let mut everyone = self.members.clone();
        everyone.push(me);
        let links = self.net.partition(&[me], &everyone, true, true);
        self.stats.partitions += 1;
        let holding = holder == Some(c);
        self.trace(|| format!("client {c} cut off from the cell (lock holder: {holding})"));
        let heal_after = self.rng.between(100_000, longest);
        self.schedule(self.now_us + heal_after, Event::Heal { links });
    }

    /// The client looks at its clocks and outstanding calls and does what is due.
    fn client_step(&mut self, c: usize) {
        let now = self.now_us;
        if self.cell_mut().clients[c].paused_until > now {
            let until = self.cell_mut().clients[c].paused_until;
            self.wake_at(c, until);
            return;
        }
        if self.healed && now > self.track_until_us {
            return;
        }
        self.tick_lease(c);
        // The application's work with the fenced resource, beside its Chubby calls, while
        // it holds the lock (and means to keep it).
        let client = &self.cell_mut().clients[c];
        let using = client
            .sess
            .as_ref()
            .filter(|s| s.session.status() == SessionStatus::Safe)
            .and_then(|s| s.holds)
            .filter(|_| !client.releasing);
        if let Some(generation) = using {
            if client.next_resource_us <= now {
                self.use_resource(c, generation);
                let gap = self.rng.between(20_000, 200_000);
                self.cell_mut().clients[c].next_resource_us = now + gap;
            }
        }
        // Calls whose reply never came.
        let client = &self.cell_mut().clients[c];
        if client.op.as_ref().is_some_and(|o| o.deadline_us <= now) {
            // A quick give-up (`CellTiming::give_up_ms`) sends the copy to the same replica,
            // which may still apply the first; a full wait suspects the replica.
            let lease_ms = client.sess.as_ref().map_or(0, |s| s.session.lease_ms());
            let quick = client
                .op
                .as_ref()
                .is_some_and(|o| o.number.is_some() && o.wait_ms < lease_ms + CALL_SLACK_MS);
            if !quick {
                self.next_replica(c);
            }
            if !self.resend(c) {
                self.op_failed(c, true);
            }
        }
        let client = &self.cell_mut().clients[c];
        if client.ka.as_ref().is_some_and(|k| k.deadline_us <= now) {
            self.cell_mut().clients[c].ka = None;
            self.keepalive_lost(c);
            self.next_replica(c);
        }
        let client = &self.cell_mut().clients[c];
        let has_session = client.sess.is_some();
        if has_session && client.ka.is_none() && client.next_ka_us <= now {
            self.send_keepalive(c);
        }
        let client = &self.cell_mut().clients[c];
        if client.op.is_none() && client.next_op_us <= now {
            self.start_op(c);
        }
        // Next wake: the earliest deadline.
        let client = &self.cell_mut().clients[c];
        let mut at = u64::MAX;
        if let Some(o) = &client.op {
            at = at.min(o.deadline_us);
        } else {
            at = at.min(client.next_op_us);
        }
        if client
            .sess
            .as_ref()
            .is_some_and(|s| s.holds.is_some() && !client.releasing)
        {
            at = at.min(client.next_resource_us);
        }
        if let Some(k) = &client.ka {
            at = at.min(k.deadline_us);
        } else if client.sess.is_some() {
            at = at.min(client.next_ka_us);
        }
        if let Some(d) = client.sess.as_ref().and_then(|s| s.session.next_deadline()) {
            at = at.min(client.clock.true_time_of(Instant(d)));
        }
        if at != u64::MAX {
            self.wake_at(c, at);
        }
    }

    fn tick_lease(&mut self, c: usize) {
        let now_us = self.now_us;
        let now_local = self.cell_mut().clients[c].local(now_us);
        let mut events = Vec::new();
        if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
            s.session.tick(now_local, &mut events);
        }
        self.react(c, events);
    }

    /// Acts on what a step of client `c`'s session asked for (its cache already follows).
    fn react(&mut self, c: usize, events: Vec<SessionEvent>) {
        let mut granted = None;
        for event in events {
            match event {
                SessionEvent::Transition(t) => self.transition(c, t),
                SessionEvent::FailOver => {
                    self.cell_mut().stats.fail_overs += 1;
                    if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                        // A grant may have been lost with the old master: like the real
                        // client, ask what became of the wait.
                        if s.waiting {
                            s.waiting = false;
                            s.check_lock = true;
                        }
                    }
                }
                SessionEvent::LockGranted { handle, sequencer } => {
                    if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                        if s.waiting && s.handles.get(LOCK) == Some(&handle) {
                            s.waiting = false;
                            granted = Some(sequencer.lock_generation);
                        }
                    }
                }
                SessionEvent::LockWaitEnded { handle, .. } => {
                    if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                        if s.handles.get(LOCK) == Some(&handle) {
                            s.waiting = false;
                        }
                    }
                }
                // No read handles, events or downstream cache here.
                SessionEvent::Invalidated { .. }
                | SessionEvent::NewEpoch(_)
                | SessionEvent::Downstream { .. }
                | SessionEvent::Event { .. } => {}
            }
        }
        if let Some(generation) = granted {
            self.lock_acquired(c, generation);
        }
    }

    fn transition(&mut self, c: usize, t: Transition) {
        let id = self.cell_mut().clients[c].id;
        self.trace(|| format!("client {id}: {t:?}"));
        match t {
            Transition::Jeopardy => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    // Like `chubby lock`: stop acting on the lock.
                    s.holds = None;
                }
                self.cell_mut().checks.lock_belief_ends(c);
                self.cell_mut().clients[c].releasing = false;
            }
            Transition::Safe => {}
            Transition::Expired => {
                self.cell_mut().stats.expiries += 1;
                self.cell_mut().checks.lock_belief_ends(c);
                let client = &mut self.cell_mut().clients[c];
                client.sess = None;
                client.ka = None;
                client.releasing = false;
                if let Some(op) = client.op.take() {
                    // Whatever it was, its outcome is unknown now.
                    if let Some(h) = op.hist {
                        self.cell_mut().checks.unknown(h);
                    }
                }
                self.cell_mut().clients[c].next_op_us = self.now_us;
            }
        }
    }

    fn next_replica(&mut self, c: usize) {
        let n = self.nodes.len();
        let client = &mut self.cell_mut().clients[c];
        client.target = (client.target + 1) % n;
    }

    fn send_call(&mut self, c: usize, call: u64, request: Request) {
        let target = self.cell_mut().clients[c].target;
        let to = self.nodes[target].id;
        match self
            .net
            .transmit(&mut self.rng, net_id(c), to)
            .first()
            .copied()
        {
            Some(delay) => self.schedule(
                self.now_us + delay,
                Event::ClientCall {
                    node: target,
                    client: c,
                    call,
                    request,
                },
            ),
            None => self.schedule(
                self.now_us + CONNECTION_LOST_US,
                Event::ClientLost { client: c, call },
            ),
        }
    }

    fn new_call(&mut self) -> u64 {
        let cell = self.cell_mut();
        cell.next_call += 1;
        cell.next_call
    }

    fn send_keepalive(&mut self, c: usize) {
        let now_us = self.now_us;
        let now_local = self.cell_mut().clients[c].local(now_us);
        let Some(s) = self.cell_mut().clients[c].sess.as_mut() else {
            return;
        };
        let lease_ms = s.session.lease_ms();
        let Some((epoch, keepalive)) = s.session.keepalive(now_local) else {
            return;
        };
        let call = self.new_call();
        self.cell_mut().clients[c].ka = Some(KeepAliveInFlight {
            call,
            deadline_us: self.now_us + lease_ms * 1000,
        });
        let request = Request {
            epoch: Some(epoch),
            call: keepalive,
            number: None,
        };
        self.send_call(c, call, request);
    }

    /// Picks and sends the client's next operation.
    fn start_op(&mut self, c: usize) {
        let now = self.now_us;
        let now_local = self.cell_mut().clients[c].local(now);
        let status = self.cell_mut().clients[c]
            .sess
            .as_ref()
            .map(|s| s.session.status());
        let kind = match status {
            None => OpKind::CreateSession,
            Some(SessionStatus::Safe) => match self.choose_op(c) {
                Some(kind) => kind,
                None => return,
            },
            // Calls wait while in jeopardy.
            Some(_) => {
                self.cell_mut().clients[c].next_op_us = now + 100_000;
                return;
            }
        };
        // Reads from the cache complete at once.
        if let OpKind::Get(path) = &kind {
            let hit = self.cell_mut().clients[c]
                .sess
                .as_mut()
                .and_then(|s| s.session.cache_mut().contents(path));
            if let Some((contents, stat)) = hit {
                self.trace(|| {
                    format!(
                        "client {c} cache hit {path}: {:?} gen {}",
                        String::from_utf8_lossy(&contents),
                        stat.content_generation.0
                    )
                });
                self.cell_mut().stats.cache_hits += 1;
                let h = self.cell_mut().checks.begin(c, path, Pending::Get, now);
                let seen = ReadSeen {
                    contents: contents.as_ref().clone(),
                    generation: stat.content_generation,
                };
                self.read_done(c, path, h, seen);
                let think = self.rng.between(1_000, 30_000);
                self.cell_mut().clients[c].next_op_us = now + think;
                return;
            }
        }
        let call = self.new_call();
        let (session, epoch, lease_ms) = match self.cell_mut().clients[c].sess.as_ref() {
            Some(s) => (
                s.session.id(),
                Some(s.session.epoch()),
                s.session.lease_ms(),
            ),
            None => (SessionId(0), None, 0),
        };
        let handle = |this: &mut Sim, path: &str| -> HandleId {
            this.cell_mut().clients[c]
                .sess
                .as_ref()
                .and_then(|s| s.handles.get(path).copied())
                .unwrap_or(HandleId(0))
        };
        let mut hist = None;
        let call_msg = match &kind {
            OpKind::CreateSession => Call::CreateSession,
            OpKind::Open(path) => {
                let lock_delay_ms = self.cell_mut().timing.lock_delay_ms;
                Call::Open(OpenArgs {
                    session,
                    path: path.clone(),
                    mode: OpenMode::READ_WRITE,
                    creation: Creation::IfMissing,
                    kind: NodeKind::File,
                    ephemeral: false,
                    contents: Vec::new(),
                    acl: None,
                    lock_delay_ms: Some(lock_delay_ms),
                    events: EventMask::NONE,
                    create_mode: None,
                    create_owner: None,
                })
            }
            OpKind::OpenDir => Call::Open(OpenArgs {
                session,
                path: EPHEMERAL_DIR.to_owned(),
                mode: OpenMode::READ,
                creation: Creation::IfMissing,
                kind: NodeKind::Directory,
                ephemeral: false,
                contents: Vec::new(),
                acl: None,
                lock_delay_ms: None,
                events: EventMask::NONE,
                create_mode: None,
                create_owner: None,
            }),
            OpKind::StatDir => Call::StatPath {
                session,
                path: EPHEMERAL_DIR.to_owned(),
            },
            OpKind::Ephemeral(path) => Call::Open(OpenArgs {
                session,
                path: path.clone(),
                mode: OpenMode::READ_WRITE,
                creation: Creation::Must,
                kind: NodeKind::File,
                ephemeral: true,
                contents: Vec::new(),
                acl: None,
                lock_delay_ms: None,
                events: EventMask::NONE,
                create_mode: None,
                create_owner: None,
            }),
            OpKind::OpenNode(path, kind) => Call::Open(OpenArgs {
                session,
                path: path.clone(),
                mode: OpenMode::READ,
                creation: Creation::IfMissing,
                kind: *kind,
                ephemeral: false,
                contents: Vec::new(),
                acl: None,
                lock_delay_ms: None,
                events: EventMask::NONE,
                create_mode: Some(0o750),
                create_owner: None,
            }),
            OpKind::MoveTree { from, to } => Call::Rename {
                session,
                from: from.clone(),
                to: to.clone(),
            },
            OpKind::CloseEphemeral(path) => Call::Close {
                session,
                handle: handle(self, path),
            },
            OpKind::Get(path) => {
                hist = Some(self.cell_mut().checks.begin(c, path, Pending::Get, now));
                Call::GetContentsAndStat {
                    session,
                    handle: handle(self, path),
                }
            }
            OpKind::Put(path, v) => {
                hist = Some(
                    self.cell_mut()
                        .checks
                        .begin(c, path, Pending::Put(v.clone()), now),
                );
                Call::SetContents {
                    session,
                    handle: handle(self, path),
                    contents: v.clone(),
                    expected: None,
                }
            }
            OpKind::Cas(path, g, v) => {
                let expected = self.cell_mut().clients[c]
                    .sess
                    .as_ref()
                    .and_then(|s| s.seen.get(path))
                    .map(|(_, contents)| contents.clone())
                    .unwrap_or_default();
                hist = Some(self.cell_mut().checks.begin(
                    c,
                    path,
                    Pending::Cas {
                        expected,
                        new: v.clone(),
                    },
                    now,
                ));
                Call::SetContents {
                    session,
                    handle: handle(self, path),
                    contents: v.clone(),
                    expected: Some(*g),
                }
            }
            OpKind::TryLock => Call::TryAcquire {
                session,
                handle: handle(self, LOCK),
                mode: LockMode::Exclusive,
            },
            OpKind::Lock => {
                // Like the real client: the waiter is registered before the call goes out,
                // so a grant notice that overtakes the answer is not lost.
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.waiting = true;
                    s.maybe_holds = true;
                }
                Call::Acquire {
                    session,
                    handle: handle(self, LOCK),
                    mode: LockMode::Exclusive,
                }
            }
            OpKind::LockState => Call::GetSequencer {
                session,
                handle: handle(self, LOCK),
            },
            OpKind::Unlock => Call::Release {
                session,
                handle: handle(self, LOCK),
            },
        };
        let target = self.cell_mut().clients[c].target;
        self.trace(|| format!("client {c} call {call} {kind:?} to replica index {target}"));
        let numbered = CallNumbers::numbered(&call_msg);
        let number = self.cell_mut().clients[c]
            .sess
            .as_mut()
            .filter(|_| numbered)
            .map(|s| s.numbers.begin());
        let stamp = number.and_then(|n| {
            self.cell_mut().clients[c]
                .sess
                .as_ref()
                .map(|s| s.numbers.stamp(n))
        });
        let wait_ms = self.call_wait_ms(lease_ms, number.is_some());
        self.cell_mut().clients[c].op = Some(InFlight {
            call,
            kind,
            sent_local: now_local,
            deadline_us: now + wait_ms * 1000,
            hist,
            msg: call_msg.clone(),
            number,
            uncertain: false,
            copies: Vec::new(),
            wait_ms,
            reannouncing: None,
            reannounced: false,
        });
        self.send_call(
            c,
            call,
            Request {
                epoch,
                call: call_msg,
                number: stamp,
            },
        );
    }

    /// How long a call waits for its answer before the client gives it up (a numbered one
    /// is then sent again: `CellTiming::give_up_ms`).
    fn call_wait_ms(&mut self, lease_ms: u64, numbered: bool) -> u64 {
        let give_up = self.cell_mut().timing.give_up_ms;
        if numbered && give_up > 0 {
            give_up
        } else {
            lease_ms + CALL_SLACK_MS
        }
    }

    /// The outcome of the numbered call in flight is unknown: send it again, with its
    /// number and the current epoch, as a new copy (true), or leave it (false: not
    /// numbered, or the session is gone).
    fn resend(&mut self, c: usize) -> bool {
        let now = self.now_us;
        let now_local = self.cell_mut().clients[c].local(now);
        let Some(number) = self.cell_mut().clients[c]
            .op
            .as_ref()
            .and_then(|o| o.number)
        else {
            return false;
        };
        let Some((epoch, lease_ms, stamp)) = self.cell_mut().clients[c]
            .sess
            .as_ref()
            .filter(|s| s.session.status() != SessionStatus::Expired)
            .map(|s| {
                (
                    s.session.epoch(),
                    s.session.lease_ms(),
                    s.numbers.stamp(number),
                )
            })
        else {
            return false;
        };
        let call = self.new_call();
        let longest = lease_ms + CALL_SLACK_MS;
        let Some(op) = self.cell_mut().clients[c].op.as_mut() else {
            return false;
        };
        op.copies.push(op.call);
        op.call = call;
        op.uncertain = true;
        op.sent_local = now_local;
        op.wait_ms = (op.wait_ms * 2).min(longest);
        op.deadline_us = now + op.wait_ms * 1000;
        let msg = op.msg.clone();
        self.cell_mut().stats.resent += 1;
        self.trace(|| format!("client {c} sends call {number} again as {call}"));
        self.send_call(
            c,
            call,
            Request {
                epoch: Some(epoch),
                call: msg,
                number: Some(stamp),
            },
        );
        true
    }

    /// What to do next with a safe session: open what is not open yet, else a random
    /// operation.
    fn choose_op(&mut self, c: usize) -> Option<OpKind> {
        let now = self.now_us;
        let s = self.cell_mut().clients[c].sess.as_ref()?;
        for path in FILES.iter().chain(std::iter::once(&LOCK)) {
            if !s.handles.contains_key(*path) {
                return Some(OpKind::Open((*path).to_owned()));
            }
        }
        if !s.handles.contains_key(EPHEMERAL_DIR) {
            return Some(OpKind::OpenDir);
        }
        let id = self.cell_mut().clients[c].id;
        let s = self.cell_mut().clients[c].sess.as_ref()?;
        let tree = tree_name(id, false);
        for (path, kind) in [
            (tree.clone(), NodeKind::Directory),
            (format!("{tree}/f"), NodeKind::File),
        ] {
            if !s.handles.contains_key(&path) {
                return Some(OpKind::OpenNode(path, kind));
            }
        }
        if s.check_lock {
            return Some(OpKind::LockState);
        }
        let holds = s.holds;
        let last = self.cell_mut().clients[c].last_resource_us;
        let (maybe_holds, waiting) = self.cell_mut().clients[c]
            .sess
            .as_ref()
            .map_or((false, false), |s| (s.maybe_holds, s.waiting));
        if holds.is_none() && maybe_holds && !waiting && now >= last + self.resource_delay_max() {
            // It stopped acting on the lock in jeopardy and is safe again: give it back
            // (once its last resource messages have arrived).
            return Some(OpKind::Unlock);
        }
        if holds.is_some() {
            // Release only once every message sent to the resource has arrived: lock-delay
            // covers an expired holder's messages, not a voluntary release. So a holder
            // that means to release stops using the resource first.
            let releasing = self.cell_mut().clients[c].releasing;
            if !releasing && self.rng.chance(30_000) {
                self.cell_mut().clients[c].releasing = true;
            }
            if !self.cell_mut().clients[c].releasing {
                // Its work with the resource goes on beside (`client_step`); it also works
                // with the files.
                return self.file_op(c);
            } else if now >= last + self.resource_delay_max() {
                self.cell_mut().clients[c].releasing = false;
                // It stops acting on the lock before asking to release it.
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.holds = None;
                }
                self.cell_mut().checks.lock_belief_ends(c);
                return Some(OpKind::Unlock);
            }
            let think = self.rng.between(20_000, 200_000);
            self.cell_mut().clients[c].next_op_us = now + think;
            return None;
        }
        let roll = self.rng.between(0, 99);
        if roll >= 90 && !maybe_holds {
            return Some(if roll >= 95 {
                OpKind::TryLock
            } else {
                OpKind::Lock
            });
        }
        self.file_op(c)
    }

    /// A random operation on the files (not the lock).
    fn file_op(&mut self, c: usize) -> Option<OpKind> {
        let roll = self.rng.between(0, 89);
        let path = (*self.rng.pick(&FILES).expect("files")).to_owned();
        let ephemerals = self.cell_mut().clients[c]
            .sess
            .as_ref()
            .map_or(0, |s| s.ephemerals.len());
        if roll < 6 {
            return Some(OpKind::StatDir);
        }
        if roll < 9 && ephemerals < EPHEMERALS_MAX {
            let client = &mut self.cell_mut().clients[c];
            client.writes += 1;
            let name = format!("{EPHEMERAL_DIR}/c{}-{}", client.id, client.writes);
            return Some(OpKind::Ephemeral(name));
        }
        if roll == 11 {
            let moved = self.cell_mut().clients[c].tree_moved;
            let id = self.cell_mut().clients[c].id;
            return Some(OpKind::MoveTree {
                from: tree_name(id, moved),
                to: tree_name(id, !moved),
            });
        }
        if roll < 11 && ephemerals > 0 {
            let path = self.cell_mut().clients[c]
                .sess
                .as_ref()
                .and_then(|s| s.ephemerals.first().cloned())?;
            return Some(OpKind::CloseEphemeral(path));
        }
        let kind = if roll < 45 {
            OpKind::Get(path)
        } else if roll < 75 {
            OpKind::Put(path, self.fresh_value(c))
        } else {
            let seen = self.cell_mut().clients[c]
                .sess
                .as_ref()
                .and_then(|s| s.seen.get(&path))
                .map(|(g, _)| *g);
            match seen {
                Some(g) => OpKind::Cas(path, g, self.fresh_value(c)),
                None => OpKind::Get(path),
            }
        };
        Some(kind)
    }

    fn fresh_value(&mut self, c: usize) -> Vec<u8> {
        let client = &mut self.cell_mut().clients[c];
        client.writes += 1;
        format!("c{}-{}", client.id, client.writes).into_bytes()
    }

    /// The longest delay of a message to the fenced resource in this run.
    fn resource_delay_max(&mut self) -> u64 {
        (self.cell_mut().timing.lock_delay_ms * 1000).saturating_sub(RESOURCE_DELAY_MARGIN_US)
    }

    fn use_resource(&mut self, c: usize, generation: Generation) {
        let longest = self.resource_delay_max();
        let delay = self.rng.between(0, longest);
        self.cell_mut().clients[c].last_resource_us = self.now_us;
        let sent = self.now_us;
        self.schedule(
            self.now_us + delay,
            Event::Resource {
                client: c,
                generation,
                sent,
            },
        );
    }

    /// Client `c` learns that the connection carrying `call` broke.
    pub(crate) fn client_lost(&mut self, c: usize, call: u64) {
        let now = self.now_us;
        let client = &mut self.cell_mut().clients[c];
        if client.paused_until > now {
            let at = client.paused_until;
            self.schedule(at, Event::ClientLost { client: c, call });
            return;
        }
        if client.ka.as_ref().is_some_and(|k| k.call == call) {
            client.ka = None;
            client.next_ka_us = now + 100_000;
            self.keepalive_lost(c);
            self.next_replica(c);
        } else if client.op.as_ref().is_some_and(|o| o.call == call) {
            // (Only the newest copy's loss matters: an older copy's is old news.)
            // Sent, no answer: it may or may not have been applied. A numbered call is
            // sent again (to the next replica), to be answered once.
            self.next_replica(c);
            if !self.resend(c) {
                self.op_failed(c, true);
            }
        }
        self.client_step(c);
    }

    /// A reply reaches client `c`.
    pub(crate) fn client_reply(&mut self, c: usize, call: u64, reply: Reply) {
        if self.cell_mut().clients[c].paused_until > self.now_us {
            // A stopped process reads it when it resumes.
            let at = self.cell_mut().clients[c].paused_until;
            self.schedule(
                at,
                Event::ClientReply {
                    client: c,
                    call,
                    reply,
                },
            );
            return;
        }
        self.tick_lease(c);
        let is_ka = self.cell_mut().clients[c]
            .ka
            .as_ref()
            .is_some_and(|k| k.call == call);
        let reannounce = self.cell_mut().clients[c]
            .op
            .as_ref()
            .is_some_and(|o| o.reannouncing == Some(call));
        if is_ka {
            self.keepalive_reply(c, reply);
        } else if reannounce {
            self.reannounce_reply(c, reply);
        } else if self.cell_mut().clients[c]
            .op
            .as_ref()
            .is_some_and(|o| o.call == call || o.copies.contains(&call))
        {
            self.op_reply(c, reply);
        }
        self.client_step(c);
    }

    fn keepalive_reply(&mut self, c: usize, reply: Reply) {
        self.trace(|| format!("client {c} KeepAlive reply {reply:?}"));
        if self.cell_mut().clients[c].ka.take().is_none() {
            return;
        }
        let now = self.now_us;
        let mut events = Vec::new();
        match reply {
            Reply::Ok(Answer::KeepAlive(r)) => {
                let Some(s) = self.cell_mut().clients[c].sess.as_mut() else {
                    return;
                };
                s.session.keepalive_answered(r, &mut events);
                self.react(c, events);
                // The next long poll goes out at once (it carries the acknowledgement).
                self.cell_mut().clients[c].next_ka_us = now;
                return;
            }
            Reply::Err(CallError::WrongEpoch { current }) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.session.keepalive_failed();
                    s.session.wrong_epoch(current, &mut events);
                }
                self.cell_mut().clients[c].next_ka_us = now;
            }
            Reply::Err(CallError::Refused(Refusal::SessionExpired)) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.session.ended_by_master(&mut events);
                }
            }
            Reply::Err(CallError::NotMaster { master: Some(hint) }) => {
                self.keepalive_lost(c);
                self.redirect(c, hint.id);
                self.cell_mut().clients[c].next_ka_us = now + 10_000;
            }
            Reply::Ok(_) | Reply::Err(_) => {
                self.keepalive_lost(c);
                self.next_replica(c);
                self.cell_mut().clients[c].next_ka_us = now + 100_000;
            }
        }
        self.react(c, events);
    }

    /// The KeepAlive in flight got no useful answer.
    fn keepalive_lost(&mut self, c: usize) {
        if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
            s.session.keepalive_failed();
        }
    }

    fn follow_epoch(&mut self, c: usize, current: Ballot) {
        let mut events = Vec::new();
        if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
            s.session.wrong_epoch(current, &mut events);
        }
        self.react(c, events);
    }

    fn redirect(&mut self, c: usize, hint: NodeId) {
        if let Some(i) = self.members.iter().position(|&m| m == hint) {
            self.cell_mut().clients[c].target = i;
        }
    }

    fn op_reply(&mut self, c: usize, reply: Reply) {
        self.trace(|| format!("client {c} reply {reply:?}"));
        let Some(op) = self.cell_mut().clients[c].op.take() else {
            return;
        };
        let now = self.now_us;
        let think = self.rng.between(1_000, 30_000);
        self.cell_mut().clients[c].next_op_us = now + think;
        let answer = match reply {
            Reply::Ok(a) => a,
            Reply::Err(e) => {
                self.cell_mut().clients[c].op = Some(op);
                self.op_error(c, e);
                return;
            }
        };
        if let (Call::Open(args), Answer::Opened { handle, stat, .. }) = (&op.msg, &answer) {
            if handle.is_volatile() {
                let again = Call::Reannounce {
                    session: args.session,
                    handle: *handle,
                    path: args.path.clone(),
                    instance: stat.instance,
                    mode: args.mode,
                    lock_delay_ms: args.lock_delay_ms,
                };
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.announce.insert(*handle, again);
                }
            }
        }
        self.call_ended(c, op.number);
        self.cell_mut().stats.ops += 1;
        match (op.kind, answer) {
            (
                OpKind::CreateSession,
                Answer::Session {
                    session,
                    epoch,
                    lease_ms,
                },
            ) => {
                let cfg = SessionConfig {
                    grace_ms: self.cell_mut().timing.grace_ms,
                    downstream: false,
                    bug_acks_before_drop: self.cell_mut().bugs.client_acks_before_drop,
                };
                self.cell_mut().stats.sessions += 1;
                self.cell_mut().checks.session_of.insert(session, c);
                let session = ClientSession::new(session, epoch, lease_ms, op.sent_local, cfg);
                self.cell_mut().clients[c].sess = Some(Sess {
                    session,
                    handles: BTreeMap::new(),
                    holds: None,
                    maybe_holds: false,
                    waiting: false,
                    check_lock: false,
                    ephemerals: Vec::new(),
                    seen: BTreeMap::new(),
                    numbers: CallNumbers::new(),
                    announce: BTreeMap::new(),
                });
                self.cell_mut().clients[c].next_ka_us = now;
            }
            (OpKind::Open(path), Answer::Opened { handle, .. }) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.handles.insert(path, handle);
                }
            }
            (OpKind::OpenDir, Answer::Opened { handle, .. }) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.handles.insert(EPHEMERAL_DIR.to_owned(), handle);
                }
            }
            (OpKind::OpenNode(path, _), Answer::Opened { handle, .. }) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.handles.insert(path, handle);
                }
            }
            (OpKind::MoveTree { .. }, Answer::Written { stat }) => {
                if stat.kind != NodeKind::Directory {
                    let v = super::super::checkers::violation(
                        "client_protocol",
                        format!("client {c}: a tree rename answered {stat:?}"),
                    );
                    self.fail(Err(v));
                    return;
                }
                self.cell_mut().stats.tree_moves += 1;
                let client = &mut self.cell_mut().clients[c];
                client.tree_moved = !client.tree_moved;
            }
            (OpKind::Ephemeral(path), Answer::Opened { handle, .. }) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.handles.insert(path.clone(), handle);
                    s.ephemerals.push(path);
                }
            }
            (OpKind::StatDir, Answer::Stat { stat, cache }) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    if s.session.cache().install_allowed(cache) {
                        s.session
                            .cache_mut()
                            .install_stat(EPHEMERAL_DIR, cache, stat);
                    }
                }
            }
            (OpKind::CloseEphemeral(path), Answer::Done) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.handles.remove(&path);
                    s.ephemerals.retain(|p| *p != path);
                }
            }
            (
                OpKind::Get(path),
                Answer::Contents {
                    contents,
                    stat,
                    cache,
                },
            ) => {
                let seen = ReadSeen {
                    contents: contents.clone(),
                    generation: stat.content_generation,
                };
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    if s.session.cache().install_allowed(cache) {
                        s.session.cache_mut().install_contents(
                            &path,
                            cache,
                            Arc::new(contents),
                            stat.clone(),
                        );
                    }
                }
                if let Some(h) = op.hist {
                    self.read_done(c, &path, h, seen);
                }
            }
            (OpKind::Put(path, v) | OpKind::Cas(path, _, v), Answer::Written { stat }) => {
                if let Some(h) = op.hist {
                    let result = self
                        .cell_mut()
                        .checks
                        .write_done(h, now, stat.content_generation);
                    self.fail(result);
                }
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.seen.insert(path, (stat.content_generation, v));
                }
            }
            (OpKind::TryLock | OpKind::Lock, Answer::Acquired { sequencer }) => {
                self.lock_acquired(c, sequencer.lock_generation);
            }
            (OpKind::Lock, Answer::Queued) => {}
            (OpKind::LockState, Answer::Lock(state)) => {
                let held = match state {
                    LockState::Held(ref sequencer) => Some(sequencer.lock_generation),
                    LockState::Waiting | LockState::None => None,
                };
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.check_lock = false;
                    s.waiting = state == LockState::Waiting;
                    s.maybe_holds = !matches!(state, LockState::None);
                }
                if let Some(generation) = held {
                    self.lock_acquired(c, generation);
                }
            }
            (OpKind::Unlock, _) => {
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.maybe_holds = false;
                    s.waiting = false;
                }
            }
            (kind, answer) => {
                let v = super::super::checkers::violation(
                    "client_protocol",
                    format!("client {c}: answer {answer:?} to {kind:?}"),
                );
                self.fail(Err(v));
            }
        }
    }

    /// Client `c` learned it holds the lock at `generation`: it acts as holder if its
    /// session is safe (checked against every other client acting as holder).
    fn lock_acquired(&mut self, c: usize, generation: Generation) {
        let now = self.now_us;
        self.cell_mut().stats.locks += 1;
        let safe = self.cell_mut().clients[c]
            .sess
            .as_ref()
            .is_some_and(|s| s.session.status() == SessionStatus::Safe);
        if safe {
            let cell = self.cell.as_mut().expect("cell mode");
            let clients = &cell.clients;
            let acting = |d: usize| {
                clients[d].sess.as_ref().is_some_and(|s| {
                    s.session.status() == SessionStatus::Safe
                        && clients[d]
                            .clock
                            .true_time_of(Instant(s.session.local_end()))
                            > now
                })
            };
            let result = cell.checks.lock_belief_starts(c, generation, now, acting);
            self.fail(result);
            if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                s.holds = Some(generation);
            }
        }
        if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
            s.maybe_holds = true;
        }
    }

    /// A copy of the uncertain call in flight was refused before it could be applied: send
    /// another after `pause_us` (the deadline path sends it).
    fn resend_after(&mut self, c: usize, pause_us: u64) {
        let now = self.now_us;
        if let Some(op) = self.cell_mut().clients[c].op.as_mut() {
            op.deadline_us = now + pause_us;
        }
    }

    /// The call in flight was refused with `BadHandle`: if its handle is one the master
    /// kept in memory and this session opened, announce it again (the master may be a new
    /// one) and say so (true).
    fn reannounce(&mut self, c: usize) -> bool {
        let now = self.now_us;
        let now_local = self.cell_mut().clients[c].local(now);
        let call = self.new_call();
        let client = &mut self.cell_mut().clients[c];
        let (Some(op), Some(s)) = (client.op.as_mut(), client.sess.as_ref()) else {
            return false;
        };
        if op.reannounced {
            return false;
        }
        let Some(again) = op.msg.handle().and_then(|h| s.announce.get(&h)).cloned() else {
            return false;
        };
        let epoch = s.session.epoch();
        op.reannounced = true;
        op.reannouncing = Some(call);
        // Earlier copies' answers no longer count: this one said "not applied, unknown
        // handle", which is no outcome (a duplicate of it must not end the call), and the
        // copy sent after the announcement gets the record's answer if one was applied.
        op.copies.clear();
        op.call = call;
        op.sent_local = now_local;
        op.deadline_us = now + op.wait_ms * 1000;
        self.cell_mut().stats.reannounced += 1;
        self.trace(|| format!("client {c} announces its handle again as call {call}"));
        self.send_call(
            c,
            call,
            Request {
                epoch: Some(epoch),
                call: again,
                number: None,
            },
        );
        true
    }

    /// The answer to a Reannounce: on success the call goes again (with its number, if
    /// any); otherwise the handle is dropped (the next operation opens the path afresh) and
    /// the call ends refused.
    fn reannounce_reply(&mut self, c: usize, reply: Reply) {
        self.trace(|| format!("client {c} reannounce reply {reply:?}"));
        let now = self.now_us;
        let now_local = self.cell_mut().clients[c].local(now);
        let call = self.new_call();
        let client = &mut self.cell_mut().clients[c];
        let Some(op) = client.op.as_mut() else {
            return;
        };
        op.reannouncing = None;
        if let Reply::Ok(_) = reply {
            let Some(s) = client.sess.as_ref() else {
                return;
            };
            let epoch = s.session.epoch();
            let stamp = op.number.map(|n| s.numbers.stamp(n));
            op.call = call;
            op.sent_local = now_local;
            op.deadline_us = now + op.wait_ms * 1000;
            let msg = op.msg.clone();
            self.send_call(
                c,
                call,
                Request {
                    epoch: Some(epoch),
                    call: msg,
                    number: stamp,
                },
            );
            return;
        }
        let handle = op.msg.handle();
        if let (Some(h), Some(s)) = (handle, client.sess.as_mut()) {
            s.announce.remove(&h);
            s.handles.retain(|_, x| *x != h);
        }
        self.op_error(c, CallError::Refused(Refusal::BadHandle));
    }

    /// The operation in flight failed with `e`.
    fn op_error(&mut self, c: usize, e: CallError) {
        if matches!(e, CallError::Refused(Refusal::BadHandle)) && self.reannounce(c) {
            return;
        }
        let now = self.now_us;
        let uncertain = self.cell_mut().clients[c]
            .op
            .as_ref()
            .is_some_and(|o| o.uncertain);
        if uncertain {
            // An earlier copy may have been applied: only the log's record can say, so the
            // call goes on until a copy is answered (as the library's `call` does).
            match e {
                CallError::WrongEpoch { current } => {
                    self.follow_epoch(c, current);
                    return self.resend_after(c, 1_000);
                }
                CallError::NotMaster { master } => {
                    let pause = match master {
                        Some(h) => {
                            self.redirect(c, h.id);
                            10_000
                        }
                        None => {
                            self.next_replica(c);
                            50_000
                        }
                    };
                    return self.resend_after(c, pause);
                }
                CallError::Unavailable(_) => {
                    self.next_replica(c);
                    return self.resend_after(c, 50_000);
                }
                CallError::Refused(Refusal::SessionExpired) | CallError::BadRequest(_) => {
                    self.op_failed(c, true);
                    let mut events = Vec::new();
                    if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                        if matches!(e, CallError::Refused(Refusal::SessionExpired)) {
                            s.session.ended_by_master(&mut events);
                        }
                    }
                    return self.react(c, events);
                }
                // The record's answer, or the first application's: the true outcome.
                CallError::OutcomeUnknown(_) | CallError::Refused(_) => {}
            }
        }
        match e {
            CallError::WrongEpoch { current } => {
                self.follow_epoch(c, current);
                self.op_failed(c, false);
            }
            CallError::NotMaster { master } => {
                if let Some(h) = master {
                    self.redirect(c, h.id);
                } else {
                    self.next_replica(c);
                }
                self.op_failed(c, false);
            }
            CallError::Unavailable(_) => {
                // Refused before proposal, or the write was not applied (stale epoch).
                self.next_replica(c);
                self.op_failed(c, false);
                self.cell_mut().clients[c].next_op_us = now + 50_000;
            }
            CallError::OutcomeUnknown(_) => {
                if !self.resend(c) {
                    self.op_failed(c, true);
                }
            }
            CallError::Refused(Refusal::CasMismatch { .. }) => {
                let Some(op) = self.cell_mut().clients[c].op.take() else {
                    return;
                };
                self.call_ended(c, op.number);
                self.cell_mut().stats.ops += 1;
                if let Some(h) = op.hist {
                    self.cell_mut().checks.cas_mismatch(h, now);
                }
            }
            CallError::Refused(Refusal::SessionExpired) => {
                self.op_failed(c, false);
                let mut events = Vec::new();
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    s.session.ended_by_master(&mut events);
                }
                self.react(c, events);
            }
            CallError::Refused(_) => {
                // Busy lock, a handle the cell no longer knows, ...: nothing was done.
                let kind = self.cell_mut().clients[c]
                    .op
                    .as_ref()
                    .map(|o| o.kind.clone());
                self.op_failed(c, false);
                if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
                    match kind {
                        // Not held (any more): nothing to give back.
                        Some(OpKind::Unlock) => {
                            s.holds = None;
                            s.maybe_holds = false;
                        }
                        // Moved already (an earlier rename whose outcome was unknown), or
                        // the other name is taken by a tree made since: try the other way.
                        Some(OpKind::MoveTree { .. }) => {
                            let client = &mut self.cell_mut().clients[c];
                            client.tree_moved = !client.tree_moved;
                        }
                        // Gone already (e.g. deleted with an earlier session's end).
                        Some(OpKind::CloseEphemeral(path)) => {
                            s.handles.remove(&path);
                            s.ephemerals.retain(|p| *p != path);
                        }
                        _ => {}
                    }
                }
            }
            CallError::BadRequest(_) => self.op_failed(c, false),
        }
    }

    /// The operation in flight ends without a result: `unknown` if it may still have
    /// happened.
    fn op_failed(&mut self, c: usize, unknown: bool) {
        let Some(op) = self.cell_mut().clients[c].op.take() else {
            return;
        };
        self.call_ended(c, op.number);
        if unknown {
            self.cell_mut().stats.unknown += 1;
        }
        if let Some(h) = op.hist {
            if unknown {
                self.cell_mut().checks.unknown(h);
            } else {
                self.cell_mut().checks.failed(h);
            }
        }
        if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
            match op.kind {
                // An unlock whose outcome is unknown: the client no longer acts on the lock.
                OpKind::Unlock => s.holds = None,
                // A lock request that may have been granted or queued: give it back later.
                OpKind::Lock | OpKind::TryLock if unknown => {
                    s.waiting = false;
                    s.maybe_holds = true;
                }
                // Refused or never sent: no wait at the master, nothing held.
                OpKind::Lock => {
                    s.waiting = false;
                    s.maybe_holds = false;
                }
                _ => {}
            }
        }
        let now = self.now_us;
        self.cell_mut().clients[c].next_op_us = now + 20_000;
    }

    /// Numbered call `number` has its answer, or was given up.
    fn call_ended(&mut self, c: usize, number: Option<u64>) {
        if let (Some(n), Some(s)) = (number, self.cell_mut().clients[c].sess.as_mut()) {
            s.numbers.end(n);
        }
    }

    fn read_done(&mut self, c: usize, path: &str, h: usize, seen: ReadSeen) {
        let now = self.now_us;
        if let Some(s) = self.cell_mut().clients[c].sess.as_mut() {
            s.seen
                .insert(path.to_owned(), (seen.generation, seen.contents.clone()));
        }
        let result = self.cell_mut().checks.read_done(h, now, seen);
        self.fail(result);
    }

    /// A message from a lock holder reaches the fenced resource.
    pub(crate) fn resource(&mut self, c: usize, generation: Generation, sent: u64) {
        self.trace(|| {
            format!(
                "resource <- client {c} generation {} sent {sent}us",
                generation.0
            )
        });
        let now = self.now_us;
        let result = self.cell_mut().checks.resource(c, generation, sent, now);
        self.fail(result);
    }

    /// The master proposes to expire `session`: its client's local lease must have ended.
    pub(super) fn check_expiry(&mut self, session: SessionId) {
        let now = self.now_us;
        let Some(&c) = self.cell_mut().checks.session_of.get(&session) else {
            return;
        };
        let client = &self.cell_mut().clients[c];
        let Some(s) = client.sess.as_ref().filter(|s| s.session.id() == session) else {
            return;
        };
        if s.session.status() == SessionStatus::Expired {
            return;
        }
        let end = client.clock.true_time_of(Instant(s.session.local_end()));
        if end > now {
            let detail = format!(
                "the master expires session {} at {now}us but its client {c}'s local lease \
                 runs until {end}us",
                session.0
            );
            self.fail(Err(super::super::checkers::violation(
                "expiry_after_client_lease",
                detail,
            )));
        }
    }
}
