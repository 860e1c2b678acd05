//! Property tests of the database (STYLE §9.5, sled's model-based fuzzing):
//! - random command sequences give the same results, the same lock grants and the same
//!   visible state as the reference model (`model.rs`);
//! - snapshot → restore → continue equals continuing without the snapshot (PML §5.5);
//! - two replicas fed the same (encoded) log have equal digests at every step (PML §6.2).
//!
//! Commands are generated abstractly (indices into the sessions, handles and sequencers
//! seen so far) and resolved while running, so most of them hit live handles and real
//! lock contention, while some hit dead sessions, closed handles and stale sequencers.

use chubby_protocol::db::FILE_BYTES_MAX;
use chubby_protocol::{
    AclNames, AttrChange, Ballot, Creation, Generation, HandleId, InstanceNumber, Instant,
    LockMode, NodeId, NodeKind, OpenMode, Sequencer, SessionId, Slot, TimeSet, Timespec,
};
use proptest::prelude::*;

use super::model::{view_of, Model};
use super::sessions::Handle;
use super::{Applied, Change, Command, Db, DbConfig, Digest, Op, OpenArgs, Outcome};

/// Paths: directories first, then files, then paths that are refused or special.
const PATHS: [&str; 17] = [
    "/a",
    "/b",
    "/c",
    "/c/d",
    "/a/x",
    "/a/y",
    "/b/x",
    "/c/x",
    "/c/d/x",
    "/f",
    "/g",
    "/acl/g",
    "/acl/admin",
    "/",
    "bad",
    "/a/",
    "/acl",
];
const DIRS: usize = 4;
const PRINCIPALS: [&str; 7] = [
    "admin",
    "admin",
    "admin",
    "alice",
    "alice",
    "bob",
    "two\nlines",
];
const DELAYS: [Option<u64>; 8] = [
    None,
    Some(0),
    Some(1_000),
    Some(1_000),
    Some(3_000),
    Some(60_000),
    None,
    Some(60_001),
];

fn acl_set(i: u8) -> AclNames {
    match i % 5 {
        0 => AclNames::all("admin"),
        1 => AclNames::all("g"),
        2 => AclNames {
            read: "g".into(),
            write: "admin".into(),
            change_acl: "g".into(),
        },
        3 => AclNames::all("missing"),
        _ => AclNames::all("bad/name"),
    }
}

fn contents(i: u8) -> Vec<u8> {
    match i % 16 {
        0 | 1 => Vec::new(),
        2..=5 => b"x".to_vec(),
        6..=9 => b"alice\n".to_vec(),
        10 | 11 => b"bob\nalice\r\n".to_vec(),
        12 => vec![0xff, 0xfe],
        13 => b"bob\n".to_vec(),
        14 => b"yy".to_vec(),
        _ => vec![1; FILE_BYTES_MAX + 1],
    }
}

fn mode(i: u8) -> OpenMode {
    match i % 6 {
        0 => OpenMode::READ,
        1 | 2 => OpenMode::READ_WRITE,
        3 => OpenMode::ALL,
        4 => OpenMode {
            read: false,
            write: false,
            change_acl: true,
        },
        _ => OpenMode::default(),
    }
}

/// A handle reference: an index into the handles seen, optionally used from another
/// session (to exercise BadHandle).
#[derive(Clone, Copy, Debug)]
struct H {
    h: u8,
    other: Option<u8>,
}

#[derive(Clone, Debug)]
enum Step {
    Session(u8),
    CloseSession(u8),
    ExpireSession(u8),
    Open {
        s: u8,
        path: u8,
        mode: u8,
        creation: u8,
        dir: bool,
        eph: bool,
        data: u8,
        acl: Option<u8>,
        delay: u8,
    },
    Close(H),
    Write {
        h: H,
        data: u8,
        cas: Option<u8>,
    },
    Delete(H),
    SetAcl {
        h: H,
        acl: u8,
        cas: Option<u8>,
    },
    Acquire {
        h: H,
        shared: bool,
        block: bool,
    },
    Release(H),
    SetSequencer {
        h: H,
        seq: Option<u8>,
    },
    Rename {
        s: u8,
        from: u8,
        to: u8,
    },
    SetAttr {
        s: u8,
        path: u8,
        /// Which fields to set (bits) and with what.
        fields: u8,
        value: u16,
    },
    Noop,
    Checksum,
    NewEpoch {
        bump: bool,
    },
}

#[derive(Clone, Debug)]
struct Timed {
    dt_ms: u64,
    stale: bool,
    step: Step,
    /// A call on a handle goes through a copy of the handle the master kept in memory
    /// ([`Op::WithHandle`]) under one of a few volatile ids.
    kept: Option<u8>,
}

fn handle_ref() -> impl Strategy<Value = H> {
    (any::<u8>(), prop::option::weighted(0.08, any::<u8>())).prop_map(|(h, other)| H { h, other })
}

fn step() -> impl Strategy<Value = Step> {
    let open = (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(s, path, mode, creation, dir, eph)| {
            (any::<u8>(), prop::option::of(any::<u8>()), any::<u8>()).prop_map(
                move |(data, acl, delay)| Step::Open {
                    s,
                    path,
                    mode,
                    creation,
                    dir,
                    eph: eph && path % 2 == 0,
                    data,
                    acl,
                    delay,
                },
            )
        });
    prop_oneof![
        3 => any::<u8>().prop_map(Step::Session),
        1 => any::<u8>().prop_map(Step::CloseSession),
        2 => any::<u8>().prop_map(Step::ExpireSession),
        10 => open,
        2 => handle_ref().prop_map(Step::Close),
        5 => (handle_ref(), any::<u8>(), prop::option::of(0u8..4))
            .prop_map(|(h, data, cas)| Step::Write { h, data, cas }),
        2 => handle_ref().prop_map(Step::Delete),
        2 => (handle_ref(), any::<u8>(), prop::option::of(0u8..3))
            .prop_map(|(h, acl, cas)| Step::SetAcl { h, acl, cas }),
        10 => (handle_ref(), any::<bool>(), any::<bool>())
            .prop_map(|(h, shared, block)| Step::Acquire { h, shared, block }),
        3 => handle_ref().prop_map(Step::Release),
        2 => (handle_ref(), prop::option::of(any::<u8>()))
            .prop_map(|(h, seq)| Step::SetSequencer { h, seq }),
        4 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(s, from, to)| Step::Rename { s, from, to }),
        3 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u16>())
            .prop_map(|(s, path, fields, value)| Step::SetAttr { s, path, fields, value }),
        2 => Just(Step::Noop),
        1 => Just(Step::Checksum),
        1 => any::<bool>().prop_map(|bump| Step::NewEpoch { bump }),
    ]
}

fn timed() -> impl Strategy<Value = Timed> {
    let dt = prop_oneof![6 => 0u64..5, 3 => 0u64..2_000, 1 => Just(1_000u64), 1 => 0u64..70_000];
    let kept = prop::option::weighted(0.25, any::<u8>());
    (dt, prop::bool::weighted(0.04), step(), kept).prop_map(|(dt_ms, stale, step, kept)| Timed {
        dt_ms,
        stale,
        step,
        kept,
    })
}

fn steps(max: usize) -> impl Strategy<Value = Vec<Timed>> {
    prop::collection::vec(timed(), 1..max)
}

/// `op` (a call on a handle) with its handle id replaced by `id`.
fn renamed_handle(op: Op, id: HandleId) -> Op {
    match op {
        Op::SetContents {
            session,
            contents,
            expected,
            ..
        } => Op::SetContents {
            session,
            handle: id,
            contents,
            expected,
        },
        Op::Delete { session, .. } => Op::Delete {
            session,
            handle: id,
        },
        Op::SetAcl {
            session,
            acl,
            expected,
            ..
        } => Op::SetAcl {
            session,
            handle: id,
            acl,
            expected,
        },
        Op::Acquire { session, mode, .. } => Op::Acquire {
            session,
            handle: id,
            mode,
        },
        Op::TryAcquire { session, mode, .. } => Op::TryAcquire {
            session,
            handle: id,
            mode,
        },
        Op::Release { session, .. } => Op::Release {
            session,
            handle: id,
        },
        Op::SetSequencer {
            session, sequencer, ..
        } => Op::SetSequencer {
            session,
            handle: id,
            sequencer,
        },
        other => other,
    }
}

/// A SetAttr change from random bits: each low bit sets one field; some values are out of
/// range (mode bits, nanoseconds) and must be refused by both implementations.
fn attr_change(fields: u8, value: u16) -> AttrChange {
    let time = |v: u16| {
        if v.is_multiple_of(5) {
            TimeSet::Now
        } else {
            TimeSet::At(Timespec {
                secs: i64::from(v) - 1000,
                nanos: if v.is_multiple_of(7) {
                    1_000_000_000
                } else {
                    u32::from(v) * 3
                },
            })
        }
    };
    AttrChange {
        mode: (fields & 1 != 0).then_some(u32::from(value) & 0o17777),
        owner: (fields & 2 != 0).then_some((u32::from(value), u32::from(value / 3))),
        atime: (fields & 4 != 0).then(|| time(value)),
        mtime: (fields & 8 != 0).then(|| time(value / 2)),
        ephemeral_children: (fields & 16 != 0).then_some(value.is_multiple_of(2)),
    }
}

/// Turns abstract steps into commands, tracking what has been handed out. Sessions and
/// handles are mostly picked among the live ones; an index of 230 or more picks among
/// all ever seen (dead ones included).
#[derive(Default)]
struct Driver {
    now: Instant,
    sessions: Vec<SessionId>,
    live_sessions: Vec<SessionId>,
    handles: Vec<(SessionId, HandleId)>,
    live_handles: Vec<(SessionId, HandleId)>,
    sequencers: Vec<Sequencer>,
}

fn pick<T: Copy>(items: &[T], i: u8, fallback: T) -> T {
    if items.is_empty() {
        fallback
    } else {
        items[usize::from(i) % items.len()]
    }
}

const DEAD_PICK: u8 = 230;

impl Driver {
    fn session(&self, i: u8) -> SessionId {
        let pool = if i >= DEAD_PICK {
            &self.sessions
        } else {
            &self.live_sessions
        };
        pick(pool, i, SessionId(1))
    }

    fn handle(&self, r: H) -> (SessionId, HandleId) {
        let pool = if r.h >= DEAD_PICK {
            &self.handles
        } else {
            &self.live_handles
        };
        let (s, h) = pick(pool, r.h, (SessionId(1), HandleId(1)));
        (r.other.map_or(s, |o| self.session(o)), h)
    }

    fn command(&mut self, t: &Timed, db: &Db) -> Command {
        let mut cmd = self.plain_command(t, db.epoch());
        let Some(v) = t.kept else {
            return cmd;
        };
        // An Open under a volatile id the master chose ([`Op::OpenKept`]), taken or not.
        if let Op::Open(args) = &cmd.op {
            if args.events == chubby_protocol::EventMask::NONE && !args.ephemeral {
                cmd.op = Op::OpenKept {
                    handle: HandleId(HandleId::VOLATILE | u64::from(v % 6)),
                    args: args.clone(),
                };
            }
            return cmd;
        }
        let (Some((named, _)), Some(session)) = (cmd.op.handle_call(), cmd.op.session()) else {
            return cmd;
        };
        // Another session's handle now and then (refused), a sequencer dropped (the
        // master keeps none in memory).
        let Some(h) = db.handle(session, named).or_else(|| {
            db.sessions()
                .flat_map(|(s, x)| x.handles.iter().map(move |h| (*s, *h)))
                .find(|(_, h)| *h == named)
                .and_then(|(s, h)| db.handle(s, h))
        }) else {
            return cmd;
        };
        let desc = Handle {
            sequencer: None,
            ..h.clone()
        };
        let id = HandleId(HandleId::VOLATILE | u64::from(v % 6));
        cmd.op = Op::WithHandle {
            handle: id,
            desc,
            op: Box::new(renamed_handle(cmd.op, id)),
        };
        cmd
    }

    fn plain_command(&mut self, t: &Timed, epoch: Ballot) -> Command {
        self.now = self.now.plus_ms(t.dt_ms);
        let (op, epoch) = match &t.step {
            Step::NewEpoch { bump } => {
                let next = Ballot {
                    round: epoch.round + u64::from(*bump),
                    node: NodeId(1),
                };
                (Op::NewEpoch, next)
            }
            other => (self.op(other), epoch),
        };
        let epoch = if t.stale { Ballot::ZERO } else { epoch };
        Command::new(epoch, self.now, op)
    }

    fn op(&self, step: &Step) -> Op {
        match *step {
            Step::Session(p) => Op::CreateSession {
                principal: PRINCIPALS[usize::from(p) % 5].into(),
            },
            Step::CloseSession(s) => Op::CloseSession {
                session: self.session(s),
            },
            Step::ExpireSession(s) => Op::ExpireSession {
                session: self.session(s),
            },
            Step::Open {
                s,
                path,
                mode: m,
                creation,
                dir,
                eph,
                data,
                acl,
                delay,
            } => Op::Open(Box::new(OpenArgs {
                session: self.session(s),
                path: PATHS[usize::from(path) % PATHS.len()].into(),
                mode: mode(m),
                creation: [Creation::Never, Creation::IfMissing, Creation::Must]
                    [usize::from(creation)],
                kind: if dir {
                    NodeKind::Directory
                } else {
                    NodeKind::File
                },
                ephemeral: eph,
                contents: if usize::from(path) % PATHS.len() < DIRS {
                    Vec::new()
                } else {
                    contents(data)
                },
                acl: acl.map(acl_set),
                lock_delay_ms: DELAYS[usize::from(delay) % DELAYS.len()],
                events: chubby_protocol::EventMask::NONE,
                // Mostly none; sometimes a mode (one out of range), an owner.
                create_mode: [None, None, Some(0o600), Some(0o1777), Some(0o10644)]
                    [usize::from(data) % 5],
                create_owner: delay.is_multiple_of(3).then_some((u32::from(delay), 7)),
            })),
            Step::Close(_)
            | Step::Write { .. }
            | Step::Delete(_)
            | Step::SetAcl { .. }
            | Step::Acquire { .. }
            | Step::Release(_)
            | Step::SetSequencer { .. } => self.handle_op(step),
            Step::Rename { s, from, to } => Op::Rename {
                session: self.session(s),
                from: PATHS[usize::from(from) % PATHS.len()].into(),
                to: PATHS[usize::from(to) % PATHS.len()].into(),
            },
            Step::SetAttr {
                s,
                path,
                fields,
                value,
            } => Op::SetAttr {
                session: self.session(s),
                path: PATHS[usize::from(path) % PATHS.len()].into(),
                instance: (fields & 0x80 != 0).then_some(InstanceNumber(u64::from(value % 8))),
                change: attr_change(fields, value),
            },
            Step::Noop => Op::Noop,
            Step::Checksum => Op::Checksum,
            Step::NewEpoch { .. } => Op::NewEpoch,
        }
    }

    /// The steps that act on a handle.
    fn handle_op(&self, step: &Step) -> Op {
        match *step {
            Step::Close(h) => {
                let (session, handle) = self.handle(h);
                Op::Close { session, handle }
            }
            Step::Write { h, data, cas } => {
                let (session, handle) = self.handle(h);
                let expected = cas.map(|g| Generation(u64::from(g)));
                Op::SetContents {
                    session,
                    handle,
                    contents: contents(data),
                    expected,
                }
            }
            Step::Delete(h) => {
                let (session, handle) = self.handle(h);
                Op::Delete { session, handle }
            }
            Step::SetAcl { h, acl, cas } => {
                let (session, handle) = self.handle(h);
                let expected = cas.map(|g| Generation(u64::from(g)));
                Op::SetAcl {
                    session,
                    handle,
                    acl: acl_set(acl),
                    expected,
                }
            }
            Step::Acquire { h, shared, block } => {
                let (session, handle) = self.handle(h);
                let mode = if shared {
                    LockMode::Shared
                } else {
                    LockMode::Exclusive
                };
                if block {
                    Op::Acquire {
                        session,
                        handle,
                        mode,
                    }
                } else {
                    Op::TryAcquire {
                        session,
                        handle,
                        mode,
                    }
                }
            }
            Step::Release(h) => {
                let (session, handle) = self.handle(h);
                Op::Release { session, handle }
            }
            Step::SetSequencer { h, seq } => {
                let (session, handle) = self.handle(h);
                let sequencer = seq.and_then(|i| {
                    self.sequencers
                        .get(usize::from(i) % self.sequencers.len().max(1))
                        .cloned()
                });
                Op::SetSequencer {
                    session,
                    handle,
                    sequencer,
                }
            }
            _ => unreachable!("not a handle step"),
        }
    }

    fn observe(&mut self, cmd: &Command, applied: &Applied) {
        let Ok(outcome) = &applied.result else {
            return self.note_grants(applied);
        };
        if let Outcome::SessionCreated { session } = outcome {
            self.sessions.push(*session);
            self.live_sessions.push(*session);
        }
        if let Op::WithHandle { handle, desc, op } = &cmd.op {
            let kept = matches!(
                **op,
                Op::Acquire { .. } | Op::TryAcquire { .. } | Op::SetSequencer { .. }
            );
            if kept && !self.handles.contains(&(desc.session, *handle)) {
                self.handles.push((desc.session, *handle));
                self.live_handles.push((desc.session, *handle));
            }
        }
        if let (Op::Open(a), Outcome::Opened { handle, .. }) = (&cmd.op, outcome) {
            self.handles.push((a.session, *handle));
            self.live_handles.push((a.session, *handle));
        }
        // Its handle is in the table only if the node is ephemeral; calls on it are
        // refused (BadHandle) otherwise, by both.
        if let (Op::OpenKept { args: a, .. }, Outcome::Opened { handle, .. }) = (&cmd.op, outcome) {
            if !self.handles.contains(&(a.session, *handle)) {
                self.handles.push((a.session, *handle));
                self.live_handles.push((a.session, *handle));
            }
        }
        if let Op::Close { handle, .. } = &cmd.op {
            self.live_handles.retain(|(_, h)| h != handle);
        }
        if let Op::CloseSession { session } | Op::ExpireSession { session } = &cmd.op {
            self.live_sessions.retain(|s| s != session);
            self.live_handles.retain(|(s, _)| s != session);
        }
        if let Outcome::Acquired { sequencer } = outcome {
            self.sequencers.push(sequencer.clone());
        }
        self.note_grants(applied);
    }

    fn note_grants(&mut self, applied: &Applied) {
        for change in &applied.changes {
            if let Change::LockAcquired { sequencer, .. } = change {
                self.sequencers.push(sequencer.clone());
            }
        }
    }
}

/// A database in epoch 1 with four live sessions (1, 2: admin, 3: alice, 4: bob), the
/// directories `/a` and `/b`, `/acl/g` listing alice, the file `/f` (ACL `g`) open
/// read-write by sessions 1–3, and an unopened ephemeral directory `/c` holding `/c/x`: a
/// script starts in the middle of things, with contention and something to reap.
fn start() -> (Db, Driver, Slot) {
    let mut db = Db::new(DbConfig::new("admin")).unwrap();
    let mut driver = Driver::default();
    let mut slot = Slot::ZERO;
    for cmd in prelude() {
        slot = slot.next();
        let applied = db.apply(slot, &cmd);
        assert!(
            applied.result.is_ok(),
            "prelude {:?}: {:?}",
            cmd.op.name(),
            applied.result
        );
        driver.observe(&cmd, &applied);
    }
    (db, driver, slot)
}

fn prelude() -> Vec<Command> {
    let epoch = Ballot {
        round: 1,
        node: NodeId(1),
    };
    let session = |p: &str| Op::CreateSession {
        principal: p.into(),
    };
    let open = |s: u64, path: &str, kind, ephemeral, acl: Option<AclNames>| {
        Op::Open(Box::new(OpenArgs {
            session: SessionId(s),
            path: path.into(),
            mode: if s == 1 {
                OpenMode::ALL
            } else {
                OpenMode::READ_WRITE
            },
            creation: Creation::IfMissing,
            kind,
            ephemeral,
            contents: if path == "/acl/g" {
                b"alice\n".to_vec()
            } else {
                Vec::new()
            },
            acl,
            create_mode: None,
            create_owner: None,
            lock_delay_ms: Some(3_000),
            events: chubby_protocol::EventMask::NONE,
        }))
    };
    let (dir, file) = (NodeKind::Directory, NodeKind::File);
    let ops = vec![
        Op::NewEpoch,
        session("admin"),
        session("admin"),
        session("alice"),
        session("bob"),
        open(1, "/a", dir, false, None),
        open(1, "/b", dir, false, None),
        open(1, "/acl/g", file, false, None),
        open(1, "/f", file, false, Some(AclNames::all("g"))),
        open(2, "/f", file, false, None),
        open(3, "/f", file, false, None),
        open(1, "/c", dir, true, None),
        open(1, "/c/x", file, false, None),
        Op::Close {
            session: SessionId(1),
            handle: HandleId(7),
        },
    ];
    ops.into_iter()
        .map(|op| Command::new(epoch, Instant::ZERO, op))
        .collect()
}

fn grants(changes: &[Change]) -> Vec<u64> {
    let mut out: Vec<u64> = changes
        .iter()
        .filter_map(|c| match c {
            Change::LockAcquired { handle, .. } => Some(handle.0),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// DESIGN §3 as a whole: the database and the plain reference model agree on every
    /// result, every lock grant and the whole visible state after every command.
    #[test]
    fn agrees_with_reference_model(script in steps(80)) {
        let (mut db, mut driver, mut slot) = start();
        let mut model = Model::new(&DbConfig::new("admin"));
        for cmd in prelude() {
            prop_assert!(model.apply(&cmd).0.is_ok());
        }
        for t in &script {
            let cmd = driver.command(t, &db);
            slot = slot.next();
            let applied = db.apply(slot, &cmd);
            let (expected, model_grants) = model.apply(&cmd);
            let mut got = applied.result.clone();
            if let Ok(Outcome::Checksum { digest }) = &mut got {
                prop_assert_eq!(*digest, db.digest());
                *digest = Digest(0);
            }
            prop_assert_eq!(&got, &expected, "result of {:?}", cmd.op.name());
            prop_assert_eq!(grants(&applied.changes), model_grants, "grants of {:?}", cmd.op.name());
            prop_assert_eq!(view_of(&db), model.view(), "state after {:?}", cmd.op.name());
            driver.observe(&cmd, &applied);
        }
    }

    /// PML §5.5: snapshot → restore → continue gives the same results, changes and digests
    /// as continuing without the snapshot.
    #[test]
    fn snapshot_restore_continue(script in steps(60), cut in any::<prop::sample::Index>()) {
        let (mut a, mut driver, mut slot) = start();
        let cut = cut.index(script.len());
        let mut b: Option<Db> = None;
        for (i, t) in script.iter().enumerate() {
            if i == cut {
                let bytes = a.freeze().encode(&[NodeId(1), NodeId(2), NodeId(3)], &chubby_protocol::MemberSets::default());
                let (restored, info) = Db::restore(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(info.slot, slot);
                prop_assert_eq!(restored.digest(), a.digest());
                b = Some(restored);
            }
            let cmd = driver.command(t, &a);
            slot = slot.next();
            let applied = a.apply(slot, &cmd);
            if let Some(b) = b.as_mut() {
                prop_assert_eq!(&b.apply(slot, &cmd), &applied);
                prop_assert_eq!(b.digest(), a.digest());
            }
            driver.observe(&cmd, &applied);
        }
    }

    /// PML §6.2: two replicas fed the same log (through the wire encoding) have equal
    /// digests, results and changes at every step.
    #[test]
    fn replicas_have_equal_digests(script in steps(60)) {
        let (mut a, mut driver, mut slot) = start();
        let (mut b, _, _) = start();
        for t in &script {
            let cmd = driver.command(t, &a);
            let decoded = Command::decode(&cmd.encode().unwrap()).unwrap();
            slot = slot.next();
            let applied = a.apply(slot, &cmd);
            prop_assert_eq!(&b.apply(slot, &decoded), &applied);
            prop_assert_eq!(a.digest(), b.digest());
            prop_assert_eq!(view_of(&a), view_of(&b));
            driver.observe(&cmd, &applied);
        }
    }
}

/// Key of an outcome or refusal, for coverage counting.
fn kind(result: &Result<Outcome, chubby_protocol::Refusal>) -> String {
    match result {
        Ok(o) => format!("{o:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("")
            .to_owned(),
        Err(r) => format!("Err:{r:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("")
            .to_owned(),
    }
}

/// Every outcome and refusal the scripts must reach (all but TooMany, whose bound is far
/// beyond a script), and the situations counted by [`tally`].
const WANTED: [&str; 38] = [
    "EpochStarted",
    "SessionCreated",
    "SessionEnded",
    "Opened",
    "Closed",
    "ContentsSet",
    "Deleted",
    "AclSet",
    "Acquired",
    "Queued",
    "Released",
    "SequencerSet",
    "Renamed",
    "Noop",
    "Checksum",
    "Err:NotFound",
    "Err:Exists",
    "Err:NotADirectory",
    "Err:IsADirectory",
    "Err:NotEmpty",
    "Err:PermissionDenied",
    "Err:CasMismatch",
    "Err:WouldBlock",
    "Err:LockDelayed",
    "Err:TooLarge",
    "Err:InvalidPath",
    "Err:InvalidArgument",
    "Err:StaleEpoch",
    "Err:BadHandle",
    "Err:SessionExpired",
    "Err:StaleSequencer",
    "Err:NotHeld",
    "Err:AlreadyHeld",
    "Err:Locked",
    "HandOff",
    "GrantAfterDelay",
    "ReapedOnClose",
    "ReapedParent",
];

/// Counts what one applied command exercised.
fn tally(seen: &mut std::collections::BTreeMap<String, u64>, cmd: &Command, applied: &Applied) {
    let mut note = |k: &str| *seen.entry(k.to_owned()).or_default() += 1;
    note(&kind(&applied.result));
    let deleted = applied
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Deleted { .. }))
        .count();
    let closing = matches!(
        cmd.op,
        Op::Close { .. } | Op::CloseSession { .. } | Op::ExpireSession { .. }
    );
    if closing && deleted > 0 {
        note("ReapedOnClose");
    }
    if (closing || matches!(cmd.op, Op::Delete { .. })) && deleted > 1 {
        note("ReapedParent");
    }
    let frees = closing
        || matches!(
            cmd.op,
            Op::Release { .. } | Op::Acquire { .. } | Op::TryAcquire { .. }
        );
    let granted = !grants(&applied.changes).is_empty();
    if granted && !frees {
        note("GrantAfterDelay");
    }
    if granted && !matches!(applied.result, Ok(Outcome::Acquired { .. })) {
        note("HandOff");
    }
}

/// STYLE §9.5 "sometimes" counterpart of the properties above: the generated scripts do
/// reach every outcome and every refusal the database can give, lock hand-offs to waiters,
/// lock-delays ending, and ephemeral nodes reaped.
#[test]
fn scripts_reach_every_outcome_and_refusal() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let script = steps(80).new_tree(&mut runner).unwrap().current();
        let (mut db, mut driver, mut slot) = start();
        for t in &script {
            let cmd = driver.command(t, &db);
            slot = slot.next();
            let applied = db.apply(slot, &cmd);
            tally(&mut seen, &cmd, &applied);
            driver.observe(&cmd, &applied);
        }
    }
    let missing: Vec<&str> = WANTED
        .iter()
        .copied()
        .filter(|k| !seen.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "never reached: {missing:?}; seen: {seen:?}"
    );
}
