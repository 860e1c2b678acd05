//! Serving driven purely: one replica whose proposals are chosen in order at `settle`.

use std::collections::{BTreeMap, VecDeque};

use chubby_protocol::client_msg::{
    Answer, Call, CallError, CallNumber, MasterHint, Reply, Request,
};
use chubby_protocol::{
    Ballot, Creation, HandleId, Instant, NodeId, NodeKind, Notice, OpenMode, Refusal, SessionId,
    Slot, Stat,
};

use super::{CallId, ReplicaView, Serve, ServeAction, ServeConfig};
use crate::db::{Command, Db, DbConfig, Op};
use crate::master::MasterConfig;
use crate::paxos::RoleKind;
use chubby_protocol::db::OpenArgs;

const EPOCH: Ballot = Ballot {
    round: 1,
    node: NodeId(1),
};

struct One {
    /// The epoch calls carry.
    epoch: Ballot,
    serve: Serve,
    db: Db,
    slot: Slot,
    now: Instant,
    view: ReplicaView,
    next_call: u64,
    replies: BTreeMap<CallId, Reply>,
    proposed: VecDeque<(u64, Ballot, Op, Option<CallNumber>)>,
}

impl One {
    fn follower() -> One {
        One {
            epoch: EPOCH,
            serve: Serve::new(
                ServeConfig {
                    master: MasterConfig {
                        session_lease_ms: 12_000,
                        session_idle_ms: 60_000,
                        ..MasterConfig::default()
                    },
                    request_timeout_ms: 10_000,
                },
                7,
            ),
            db: Db::new(DbConfig::new("admin")).expect("db"),
            slot: Slot::ZERO,
            now: Instant(1_000),
            view: ReplicaView {
                role: RoleKind::Follower,
                lease_held: false,
                hint: Some(MasterHint {
                    id: NodeId(2),
                    addr: "replica-2:7000".into(),
                }),
            },
            next_call: 0,
            replies: BTreeMap::new(),
            proposed: VecDeque::new(),
        }
    }

    /// A master whose NewEpoch was applied.
    fn master() -> One {
        let mut t = One::follower();
        t.view = ReplicaView {
            role: RoleKind::Master,
            lease_held: true,
            hint: None,
        };
        let mut out = Vec::new();
        t.serve
            .role_changed(&t.view.clone(), RoleKind::Master, Some(EPOCH), &mut out);
        t.take(out);
        t.settle();
        assert_eq!(t.serve.serving_epoch(), Some(EPOCH));
        t
    }

    fn take(&mut self, out: Vec<ServeAction>) {
        self.serve.check_invariants();
        for a in out {
            match a {
                ServeAction::Reply { call, reply } => {
                    assert!(
                        self.replies.insert(call, reply).is_none(),
                        "call {call:?} answered twice"
                    );
                }
                ServeAction::Propose {
                    request,
                    epoch,
                    op,
                    call,
                } => {
                    self.proposed.push_back((request, epoch, op, call));
                }
                ServeAction::Expiring { .. } | ServeAction::StepDown { .. } => {}
            }
        }
    }

    fn call(&mut self, call: Call) -> CallId {
        self.call_numbered(call, None)
    }

    fn call_numbered(&mut self, call: Call, number: Option<CallNumber>) -> CallId {
        let id = CallId(self.next_call);
        self.next_call += 1;
        let request = Request {
            epoch: Some(self.epoch),
            call,
            number,
        };
        let mut out = Vec::new();
        let v = self.view.clone();
        self.serve
            .on_call(&v, &self.db, self.now, "admin", request, id, &mut out);
        self.take(out);
        id
    }

    /// Applies every proposal, in order, as Paxos would choose them.
    fn settle(&mut self) {
        while let Some((request, epoch, op, call)) = self.proposed.pop_front() {
            self.slot = self.slot.next();
            let cmd = Command {
                epoch,
                now: self.now,
                op,
                call,
            };
            let applied = self.db.apply(self.slot, &cmd);
            let mut out = Vec::new();
            let v = self.view.clone();
            self.serve.applied(
                &v,
                &self.db,
                self.now,
                self.slot,
                Some(request),
                &cmd,
                &applied,
                &mut out,
            );
            self.take(out);
        }
    }

    fn answer(&mut self, id: CallId) -> Answer {
        match self.replies.remove(&id) {
            Some(Reply::Ok(a)) => a,
            other => panic!("call {id:?}: {other:?}"),
        }
    }

    fn session(&mut self) -> SessionId {
        let id = self.call(Call::CreateSession);
        self.settle();
        match self.answer(id) {
            Answer::Session { session, epoch, .. } => {
                assert_eq!(epoch, EPOCH);
                session
            }
            other => panic!("{other:?}"),
        }
    }

    fn open(&mut self, session: SessionId, path: &str) -> HandleId {
        let id = self.call(Call::Open(OpenArgs {
            contents: b"v1".to_vec(),
            ..open_args(session, path)
        }));
        self.settle();
        match self.answer(id) {
            Answer::Opened { handle, .. } => handle,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_follower_names_the_master() {
    let mut t = One::follower();
    let id = t.call(Call::CreateSession);
    match t.replies.remove(&id) {
        Some(Reply::Err(CallError::NotMaster { master: Some(h) })) => assert_eq!(h.id, NodeId(2)),
        other => panic!("{other:?}"),
    }
    assert!(t.proposed.is_empty());
}

#[test]
fn a_new_master_serves_only_once_its_epoch_is_applied() {
    let mut t = One::follower();
    t.view.role = RoleKind::Master;
    t.view.lease_held = true;
    let mut out = Vec::new();
    let v = t.view.clone();
    t.serve
        .role_changed(&v, RoleKind::Master, Some(EPOCH), &mut out);
    t.take(out);
    assert!(matches!(t.proposed.front(), Some((_, e, Op::NewEpoch, None)) if *e == EPOCH));
    let early = t.call(Call::CreateSession);
    assert!(matches!(
        t.replies.remove(&early),
        Some(Reply::Err(CallError::Unavailable(_)))
    ));
    t.settle();
    let s = t.session();
    assert_eq!(s, SessionId(1));
    // A call from another epoch is told the current one.
    let mut out = Vec::new();
    let stale = Request {
        epoch: Some(Ballot::default()),
        call: Call::KeepAlive {
            session: s,
            acked: 0,
        },
        number: None,
    };
    t.serve
        .on_call(&v, &t.db, t.now, "admin", stale, CallId(99), &mut out);
    t.take(out);
    assert!(matches!(
        t.replies.remove(&CallId(99)),
        Some(Reply::Err(CallError::WrongEpoch { current })) if current == EPOCH
    ));
}

#[test]
fn a_write_waits_until_the_caching_session_acknowledges() {
    let mut t = One::master();
    let (reader, writer) = (t.session(), t.session());
    let rh = t.open(reader, "/f");
    let wh = t.open(writer, "/f");
    // The reader reads with a cache token: it is now recorded as caching /f.
    let read = t.call(Call::GetContentsAndStat {
        session: reader,
        handle: rh,
    });
    match t.answer(read) {
        Answer::Contents {
            contents, cache, ..
        } => {
            assert_eq!(contents, b"v1");
            assert!(cache.is_some(), "a read of an idle path is cacheable");
        }
        other => panic!("{other:?}"),
    }
    let keepalive = t.call(Call::KeepAlive {
        session: reader,
        acked: 0,
    });
    assert!(!t.replies.contains_key(&keepalive), "a KeepAlive is held");
    let write = t.call(Call::SetContents {
        session: writer,
        handle: wh,
        contents: b"v2".to_vec(),
        expected: None,
    });
    assert!(
        t.proposed.is_empty(),
        "the write waits for the reader's cache"
    );
    // The held KeepAlive returns at once with the invalidation.
    let seq = match t.answer(keepalive) {
        Answer::KeepAlive(r) => {
            let inv = r
                .notices
                .iter()
                .find(|n| matches!(&n.notice, Notice::Invalidate { paths } if paths.contains(&"/f".to_owned())))
                .expect("an invalidation of /f");
            inv.seq
        }
        other => panic!("{other:?}"),
    };
    // Reads meanwhile are served but not cacheable.
    let during = t.call(Call::GetContentsAndStat {
        session: reader,
        handle: rh,
    });
    assert!(matches!(
        t.answer(during),
        Answer::Contents { cache: None, .. }
    ));
    let ack = t.call(Call::KeepAlive {
        session: reader,
        acked: seq,
    });
    assert_eq!(t.proposed.len(), 1, "the acknowledgement opens the gate");
    assert!(!t.replies.contains_key(&write));
    t.settle();
    assert!(matches!(t.answer(write), Answer::Written { .. }));
    assert!(
        !t.replies.contains_key(&ack),
        "nothing new for the reader: held"
    );
}

#[test]
fn a_write_never_applied_is_answered_outcome_unknown() {
    let mut t = One::master();
    let s = t.session();
    let h = t.open(s, "/f");
    let write = t.call(Call::SetContents {
        session: s,
        handle: h,
        contents: b"v2".to_vec(),
        expected: None,
    });
    assert_eq!(t.proposed.len(), 1);
    let mut out = Vec::new();
    let v = t.view.clone();
    t.serve
        .tick(&v, &t.db, t.now.plus_ms(9_999), t.now, &mut out);
    t.take(out);
    assert!(!t.replies.contains_key(&write));
    let mut out = Vec::new();
    t.serve
        .tick(&v, &t.db, t.now.plus_ms(10_000), t.now, &mut out);
    t.take(out);
    assert!(matches!(
        t.replies.remove(&write),
        Some(Reply::Err(CallError::OutcomeUnknown(_)))
    ));
}

#[test]
fn losing_mastership_answers_parked_calls() {
    let mut t = One::master();
    let s = t.session();
    let keepalive = t.call(Call::KeepAlive {
        session: s,
        acked: 0,
    });
    assert!(!t.replies.contains_key(&keepalive));
    let mut out = Vec::new();
    t.view.role = RoleKind::Follower;
    t.view.hint = One::follower().view.hint;
    let v = t.view.clone();
    t.serve.role_changed(&v, RoleKind::Follower, None, &mut out);
    t.take(out);
    assert!(matches!(
        t.replies.remove(&keepalive),
        Some(Reply::Err(CallError::NotMaster { master: Some(_) }))
    ));
    assert_eq!(t.serve.serving_epoch(), None);
}

/// Found by `sim cell` (seed 553): a master that kept its role (by boosting) while another
/// replica led and began a newer epoch must step down, or it serves on with an epoch the
/// database refuses.
#[test]
fn a_newer_epoch_applied_under_a_master_deposes_it() {
    let mut t = One::master();
    let newer = Ballot {
        round: 9,
        node: NodeId(3),
    };
    t.slot = t.slot.next();
    let cmd = Command::new(newer, t.now, Op::NewEpoch);
    let applied = t.db.apply(t.slot, &cmd);
    assert!(applied.result.is_ok());
    let mut out = Vec::new();
    let v = t.view.clone();
    t.serve
        .applied(&v, &t.db, t.now, t.slot, None, &cmd, &applied, &mut out);
    assert!(
        out.iter()
            .any(|a| matches!(a, ServeAction::StepDown { epoch } if *epoch == EPOCH)),
        "{out:?}"
    );
}

/// A copy of a numbered call that the log already applied (sent again after its answer
/// was lost) is answered from the record with no Paxos round, with the first answer; a
/// copy of a call the session said it has the answer to is refused, not applied.
#[test]
fn a_numbered_call_sent_again_is_answered_from_its_record() {
    let mut t = One::master();
    let s = t.session();
    let h = t.open(s, "/f");
    let cas = Call::SetContents {
        session: s,
        handle: h,
        contents: b"v2".to_vec(),
        expected: Some(chubby_protocol::Generation(0)),
    };
    let n = |number, done_below| Some(CallNumber { number, done_below });
    let first = t.call_numbered(cas.clone(), n(1, 1));
    assert_eq!(t.proposed.len(), 1);
    assert!(matches!(
        t.proposed[0].3,
        Some(CallNumber { number: 1, .. })
    ));
    t.settle();
    let answered = t.answer(first);
    assert!(matches!(answered, Answer::Written { .. }), "{answered:?}");
    let again = t.call_numbered(cas.clone(), n(1, 1));
    assert!(t.proposed.is_empty(), "no Paxos round for a recorded call");
    assert_eq!(
        t.answer(again),
        answered,
        "the first answer, not CasMismatch"
    );
    // Call 2 says call 1 was answered: its record goes, and a late copy is refused.
    let put = Call::SetContents {
        session: s,
        handle: h,
        contents: b"v3".to_vec(),
        expected: None,
    };
    let second = t.call_numbered(put, n(2, 2));
    t.settle();
    assert!(matches!(t.answer(second), Answer::Written { .. }));
    let late = t.call_numbered(cas, n(1, 1));
    assert!(t.proposed.is_empty());
    assert!(matches!(
        t.replies.remove(&late),
        Some(Reply::Err(CallError::Refused(Refusal::CallForgotten {
            number: 1
        })))
    ));
}

/// A creating Open sent again before its first copy was applied is proposed twice (the
/// record does not know it yet), under two volatile ids; both copies are answered with the
/// first copy's handle, and only that one is kept: the second id, which nobody was told,
/// must not hold a handle until the session ends (found by review).
#[test]
fn a_creating_open_sent_twice_keeps_one_handle() {
    let mut t = One::master();
    let s = t.session();
    let n = Some(CallNumber {
        number: 1,
        done_below: 1,
    });
    let create = Call::Open(OpenArgs {
        contents: b"v1".to_vec(),
        ..open_args(s, "/f")
    });
    let first = t.call_numbered(create.clone(), n);
    let again = t.call_numbered(create, n);
    assert_eq!(t.proposed.len(), 2, "both copies are proposed");
    t.settle();
    let (a, b) = (t.answer(first), t.answer(again));
    assert_eq!(a, b, "both copies answered alike");
    let Answer::Opened { handle, .. } = a else {
        panic!("{a:?}")
    };
    let kept = t.serve.master.as_ref().map(|m| m.kept().count(s));
    assert_eq!(kept, Some(1), "a handle nobody knows was kept");
    assert_eq!(t.read(s, handle), b"v1");
}

fn open_args(session: SessionId, path: &str) -> OpenArgs {
    OpenArgs {
        session,
        path: path.into(),
        mode: OpenMode::READ_WRITE,
        creation: Creation::IfMissing,
        kind: NodeKind::File,
        ephemeral: false,
        contents: Vec::new(),
        acl: None,
        lock_delay_ms: None,
        events: chubby_protocol::EventMask::NONE,
        create_mode: None,
        create_owner: None,
    }
}

impl One {
    /// The metadata of `path` (None: no such node), from the master.
    fn stat_of(&mut self, session: SessionId, path: &str) -> Option<Stat> {
        let id = self.call(Call::StatPath {
            session,
            path: path.into(),
        });
        match self.answer(id) {
            Answer::Stat { stat, .. } => stat,
            other => panic!("{other:?}"),
        }
    }

    /// The metadata of the node at `path`.
    fn stat(&mut self, session: SessionId, path: &str) -> Stat {
        self.stat_of(session, path).expect("no such node")
    }

    /// Opens an existing `path`, asserting that the master answered from its memory.
    fn open_kept(&mut self, session: SessionId, path: &str) -> HandleId {
        let id = self.call(Call::Open(open_args(session, path)));
        assert!(
            self.proposed.is_empty(),
            "an Open of an existing node was proposed"
        );
        match self.answer(id) {
            Answer::Opened {
                handle,
                created: false,
                ..
            } => {
                assert!(handle.is_volatile(), "{handle:?} is not a kept handle");
                handle
            }
            other => panic!("{other:?}"),
        }
    }

    fn write(&mut self, session: SessionId, handle: HandleId, data: &[u8]) -> CallId {
        self.call(Call::SetContents {
            session,
            handle,
            contents: data.to_vec(),
            expected: None,
        })
    }

    fn read(&mut self, session: SessionId, handle: HandleId) -> Vec<u8> {
        let id = self.call(Call::GetContentsAndStat { session, handle });
        assert!(self.proposed.is_empty(), "a read was proposed");
        match self.answer(id) {
            Answer::Contents { contents, .. } => contents,
            other => panic!("{other:?}"),
        }
    }

    /// This replica loses mastership and wins it back in `epoch`; the session `s`
    /// acknowledges the fail-over notice so that its writes are not held.
    fn fail_over(&mut self, epoch: Ballot, s: SessionId) {
        let mut out = Vec::new();
        let v = self.view.clone();
        self.serve
            .role_changed(&v, RoleKind::Follower, None, &mut out);
        self.serve
            .role_changed(&v, RoleKind::Master, Some(epoch), &mut out);
        self.take(out);
        self.settle();
        assert_eq!(self.serve.serving_epoch(), Some(epoch));
        self.epoch = epoch;
        self.call(Call::KeepAlive {
            session: s,
            acked: 1,
        });
    }
}

/// Chubby §2.9: handles live in the master's memory. Opening and closing a handle on an
/// existing file costs no Paxos instance; a write through it is one instance carrying the
/// handle; a lock makes the log keep the handle; the handle follows a Rename.
#[test]
fn an_open_and_a_close_of_an_existing_file_cost_no_paxos_instance() {
    let mut t = One::master();
    let s = t.session();
    t.open(s, "/f");
    let h = t.open_kept(s, "/f");
    let w = t.write(s, h, b"v2");
    assert_eq!(t.proposed.len(), 1, "one instance for the write");
    assert!(
        matches!(&t.proposed[0].2, Op::WithHandle { handle, op, .. }
            if *handle == h && matches!(**op, Op::SetContents { .. })),
        "the write carries the handle: {:?}",
        t.proposed[0].2
    );
    t.settle();
    assert!(matches!(t.answer(w), Answer::Written { .. }));
    assert!(
        t.db.handle(s, h).is_none(),
        "the log did not keep the handle"
    );

    // Handles follow a Rename, as the log's own do.
    let r = t.call(Call::Rename {
        session: s,
        from: "/f".into(),
        to: "/g".into(),
    });
    t.settle();
    assert!(matches!(t.answer(r), Answer::Written { .. }));
    let w = t.write(s, h, b"v3");
    t.settle();
    assert!(matches!(t.answer(w), Answer::Written { .. }));
    let g = t.open_kept(s, "/g");
    assert_eq!(t.read(s, g), b"v3");

    // A lock makes the log keep the handle; its Release then names it plainly.
    let l = t.open_kept(s, "/g");
    let a = t.call(Call::Acquire {
        session: s,
        handle: l,
        mode: chubby_protocol::LockMode::Exclusive,
    });
    assert!(matches!(&t.proposed[0].2, Op::WithHandle { .. }));
    t.settle();
    assert!(matches!(t.answer(a), Answer::Acquired { .. }));
    assert!(
        t.db.handle(s, l).is_some(),
        "a held lock's handle is in the log"
    );
    let r = t.call(Call::Release {
        session: s,
        handle: l,
    });
    assert!(matches!(&t.proposed[0].2, Op::Release { .. }));
    t.settle();
    assert!(matches!(t.answer(r), Answer::Done));

    // Closing a kept handle proposes nothing; the handle is gone after.
    let c = t.call(Call::Close {
        session: s,
        handle: h,
    });
    assert!(
        t.proposed.is_empty(),
        "a Close of a kept handle was proposed"
    );
    assert!(matches!(t.answer(c), Answer::Done));
    let w = t.write(s, h, b"v4");
    assert!(t.proposed.is_empty());
    assert!(matches!(
        t.replies.remove(&w),
        Some(Reply::Err(CallError::Refused(Refusal::BadHandle)))
    ));
}

/// An Open that creates is one Paxos instance ([`Op::OpenKept`]), and the master keeps
/// its handle in its memory, so that closing it costs none; unless the created node is
/// ephemeral (here by its directory's marker): then the log keeps the handle, and its
/// Close goes through the log, where it deletes the node.
#[test]
fn a_creating_open_is_one_instance_and_its_handle_is_kept_in_memory() {
    let mut t = One::master();
    let s = t.session();
    let o = t.call(Call::Open(OpenArgs {
        contents: b"v1".to_vec(),
        ..open_args(s, "/f")
    }));
    assert_eq!(t.proposed.len(), 1, "one instance for a create");
    assert!(
        matches!(&t.proposed[0].2, Op::OpenKept { handle, .. } if handle.is_volatile()),
        "{:?}",
        t.proposed[0].2
    );
    t.settle();
    let Answer::Opened {
        handle: h,
        created: true,
        ..
    } = t.answer(o)
    else {
        panic!("not created")
    };
    assert!(h.is_volatile(), "{h:?}");
    assert!(t.db.handle(s, h).is_none(), "the log kept the handle");
    let w = t.write(s, h, b"v2");
    assert!(matches!(&t.proposed[0].2, Op::WithHandle { handle, .. } if *handle == h));
    t.settle();
    assert!(matches!(t.answer(w), Answer::Written { .. }));
    assert_eq!(t.read(s, h), b"v2");
    let c = t.call(Call::Close {
        session: s,
        handle: h,
    });
    assert!(t.proposed.is_empty(), "the Close was proposed");
    assert!(matches!(t.answer(c), Answer::Done));

    // A node its directory makes ephemeral: the log keeps its handle, and its Close
    // (proposed) deletes it.
    let d = t.call(Call::Open(OpenArgs {
        kind: NodeKind::Directory,
        ..open_args(s, "/e")
    }));
    t.settle();
    assert!(matches!(t.answer(d), Answer::Opened { .. }));
    let m = t.call(Call::SetAttr {
        session: s,
        path: "/e".into(),
        instance: None,
        change: chubby_protocol::AttrChange {
            ephemeral_children: Some(true),
            ..Default::default()
        },
    });
    t.settle();
    t.answer(m);
    let o = t.call(Call::Open(open_args(s, "/e/x")));
    assert!(matches!(&t.proposed[0].2, Op::OpenKept { .. }));
    t.settle();
    let Answer::Opened {
        handle: x, stat, ..
    } = t.answer(o)
    else {
        panic!("not opened")
    };
    assert!(stat.ephemeral);
    assert!(t.db.handle(s, x).is_some(), "the log did not keep it");
    let c = t.call(Call::Close {
        session: s,
        handle: x,
    });
    assert!(matches!(&t.proposed[0].2, Op::Close { .. }));
    t.settle();
    assert!(matches!(t.answer(c), Answer::Done));
    assert!(
        t.stat_of(s, "/e/x").is_none(),
        "the ephemeral file outlived its close"
    );
}

/// Chubby §2.9 steps 6–8: a new master does not know the handles the old one kept; a
/// client announces them again from what they record, and the master checks what an Open
/// would. Nothing is proposed for a handle it does not know.
#[test]
fn a_new_master_knows_a_kept_handle_once_it_is_announced_again() {
    let mut t = One::master();
    let s = t.session();
    t.open(s, "/f");
    let h = t.open_kept(s, "/f");
    let instance = t.stat(s, "/f").instance;
    t.fail_over(
        Ballot {
            round: 2,
            node: NodeId(1),
        },
        s,
    );
    let w = t.write(s, h, b"lost?");
    assert!(
        t.proposed.is_empty(),
        "a write through an unknown handle was proposed"
    );
    assert!(matches!(
        t.replies.remove(&w),
        Some(Reply::Err(CallError::Refused(Refusal::BadHandle)))
    ));
    let announce = |instance| Call::Reannounce {
        session: s,
        handle: h,
        path: "/f".into(),
        instance,
        mode: OpenMode::READ_WRITE,
        lock_delay_ms: None,
    };
    let wrong = t.call(announce(chubby_protocol::InstanceNumber(instance.0 + 1)));
    assert!(matches!(
        t.replies.remove(&wrong),
        Some(Reply::Err(CallError::Refused(Refusal::NotFound)))
    ));
    let again = t.call(announce(instance));
    assert!(t.proposed.is_empty(), "an announcement was proposed");
    assert!(matches!(
        t.answer(again),
        Answer::Stat { stat: Some(_), .. }
    ));
    let w = t.write(s, h, b"v2");
    t.settle();
    assert!(matches!(t.answer(w), Answer::Written { .. }));
    assert_eq!(t.read(s, h), b"v2");
}

/// A write through a kept handle that arrives while a Rename of its file is in flight waits
/// for it, and then carries the handle as the Rename left it: it writes the moved file.
#[test]
fn a_write_held_behind_a_rename_carries_its_kept_handle_as_moved() {
    let mut t = One::master();
    let s = t.session();
    t.open(s, "/f");
    let h = t.open_kept(s, "/f");
    let r = t.call(Call::Rename {
        session: s,
        from: "/f".into(),
        to: "/g".into(),
    });
    assert_eq!(t.proposed.len(), 1, "the Rename is proposed");
    let w = t.write(s, h, b"moved");
    assert_eq!(t.proposed.len(), 1, "the write waits for the Rename");
    t.settle();
    assert!(matches!(t.answer(r), Answer::Written { .. }));
    assert!(matches!(t.answer(w), Answer::Written { .. }));
    let g = t.open_kept(s, "/g");
    assert_eq!(t.read(s, g), b"moved");
}
