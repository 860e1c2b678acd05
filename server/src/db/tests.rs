//! Unit tests of the database: one story per rule of DESIGN §3 and per refusal, each
//! naming the paper section it checks.

use std::sync::Arc;

use chubby_protocol::db::{FILE_BYTES_MAX, LOCK_DELAY_MS_MAX, NAME_BYTES_MAX};
use chubby_protocol::{
    AclNames, AttrChange, Ballot, Creation, Generation, HandleId, InstanceNumber, Instant,
    LockMode, NodeId, NodeKind, OpenMode, Refusal, Sequencer, SessionId, Slot, TimeSet, Timespec,
};

use super::*;

const E1: Ballot = Ballot {
    round: 1,
    node: NodeId(1),
};
const E2: Ballot = Ballot {
    round: 2,
    node: NodeId(2),
};

/// A database driven like a master would: one command per slot, epoch E1, a clock that
/// the test moves.
pub(crate) struct Harness {
    pub db: Db,
    pub slot: Slot,
    pub epoch: Ballot,
    pub now: Instant,
}

impl Harness {
    pub fn new() -> Harness {
        let mut h = Harness {
            db: Db::new(DbConfig::new("admin")).unwrap(),
            slot: Slot::ZERO,
            epoch: E1,
            now: Instant(1_000),
        };
        assert_eq!(h.run(Op::NewEpoch).result, Ok(Outcome::EpochStarted));
        h
    }

    pub fn run(&mut self, op: Op) -> Applied {
        self.slot = self.slot.next();
        let cmd = Command::new(self.epoch, self.now, op);
        self.db.apply(self.slot, &cmd)
    }

    pub fn ok(&mut self, op: Op) -> Outcome {
        let applied = self.run(op.clone());
        applied
            .result
            .unwrap_or_else(|r| panic!("{} refused: {r:?}", op.name()))
    }

    pub fn err(&mut self, op: Op) -> Refusal {
        let applied = self.run(op.clone());
        applied
            .result
            .expect_err(&format!("{} should be refused", op.name()))
    }

    pub fn tick(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
    }

    pub fn session(&mut self, principal: &str) -> SessionId {
        match self.ok(Op::CreateSession {
            principal: principal.into(),
        }) {
            Outcome::SessionCreated { session } => session,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn open_op(s: SessionId, path: &str, mode: OpenMode, creation: Creation) -> Op {
        Op::Open(Box::new(OpenArgs {
            session: s,
            path: path.into(),
            mode,
            creation,
            kind: NodeKind::File,
            ephemeral: false,
            contents: Vec::new(),
            acl: None,
            lock_delay_ms: None,
            events: chubby_protocol::EventMask::NONE,
            create_mode: None,
            create_owner: None,
        }))
    }

    fn opened(outcome: Outcome) -> HandleId {
        match outcome {
            Outcome::Opened { handle, .. } => handle,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Creates (if missing) and opens a file read-write.
    pub fn file(&mut self, s: SessionId, path: &str) -> HandleId {
        Self::opened(self.ok(Self::open_op(
            s,
            path,
            OpenMode::READ_WRITE,
            Creation::IfMissing,
        )))
    }

    pub fn open_with(
        &mut self,
        s: SessionId,
        path: &str,
        f: impl FnOnce(&mut OpenArgs),
    ) -> Result<HandleId, Refusal> {
        let Op::Open(mut args) = Self::open_op(s, path, OpenMode::READ_WRITE, Creation::IfMissing)
        else {
            unreachable!()
        };
        f(&mut args);
        self.run(Op::Open(args)).result.map(Self::opened)
    }

    pub fn dir(&mut self, s: SessionId, path: &str) -> HandleId {
        self.open_with(s, path, |a| a.kind = NodeKind::Directory)
            .unwrap()
    }

    pub fn write(&mut self, s: SessionId, h: HandleId, bytes: &[u8]) -> Result<Outcome, Refusal> {
        self.run(Op::SetContents {
            session: s,
            handle: h,
            contents: bytes.to_vec(),
            expected: None,
        })
        .result
    }

    pub fn acquire(&mut self, s: SessionId, h: HandleId, mode: LockMode) -> Applied {
        self.run(Op::Acquire {
            session: s,
            handle: h,
            mode,
        })
    }

    pub fn try_acquire(
        &mut self,
        s: SessionId,
        h: HandleId,
        mode: LockMode,
    ) -> Result<Outcome, Refusal> {
        self.run(Op::TryAcquire {
            session: s,
            handle: h,
            mode,
        })
        .result
    }

    pub fn release(&mut self, s: SessionId, h: HandleId) -> Applied {
        self.run(Op::Release {
            session: s,
            handle: h,
        })
    }

    /// Writes an ACL file `/acl/<name>` as admin.
    pub fn acl_file(&mut self, name: &str, principals: &[&str]) {
        let admin = self.session("admin");
        let h = self.file(admin, &format!("/acl/{name}"));
        let text: String = principals.iter().map(|p| format!("{p}\n")).collect();
        self.write(admin, h, text.as_bytes()).unwrap();
        self.ok(Op::CloseSession { session: admin });
    }
}

fn sequencer_of(outcome: Outcome) -> Sequencer {
    match outcome {
        Outcome::Acquired { sequencer } => sequencer,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn granted_to(changes: &[Change]) -> Vec<HandleId> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::LockAcquired { handle, .. } => Some(*handle),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------- names, sizes, genesis

/// DESIGN §3 / Chubby §2.3: the cell starts with `/`, `/acl` and `/acl/admin` naming the
/// admin principal.
#[test]
fn genesis_has_acl_admin() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t
        .open_with(s, "/acl/admin", |a| a.creation = Creation::Never)
        .unwrap();
    let (stat, bytes) = t.db.read(s, h).unwrap();
    assert_eq!(&bytes[..], b"admin\n");
    assert_eq!(stat.acl, AclNames::all("admin"));
    assert!(t
        .db
        .stat_path("/")
        .is_some_and(|s| s.kind == NodeKind::Directory));
}

/// DESIGN §3 naming: every kind of bad name is refused with InvalidPath.
#[test]
fn bad_names_are_refused() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let long = format!("/{}", "n".repeat(NAME_BYTES_MAX + 1));
    for bad in [
        "",
        "relative",
        "/a/",
        "/a//b",
        "/a\0b",
        "/.",
        "/a/..",
        long.as_str(),
    ] {
        let refusal = t.err(Harness::open_op(
            s,
            bad,
            OpenMode::READ,
            Creation::IfMissing,
        ));
        assert_eq!(refusal, Refusal::InvalidPath, "path {bad:?}");
    }
    let ok = format!("/{}", "n".repeat(NAME_BYTES_MAX));
    assert!(t.open_with(s, &ok, |_| {}).is_ok());
    assert!(t.open_with(s, "/ünïcødé", |_| {}).is_ok());
    // Bad ACL names at creation are an argument error.
    let bad_acl = t.open_with(s, "/x", |a| a.acl = Some(AclNames::all("a/b")));
    assert_eq!(bad_acl, Err(Refusal::InvalidArgument));
}

/// Chubby §4.5: a file holds at most 256 KiB, at creation and on write.
#[test]
fn file_size_limit() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    assert!(t.write(s, h, &vec![7; FILE_BYTES_MAX]).is_ok());
    assert_eq!(
        t.write(s, h, &vec![7; FILE_BYTES_MAX + 1]),
        Err(Refusal::TooLarge)
    );
    let (stat, _) = t.db.read(s, h).unwrap();
    assert_eq!(
        stat.size_bytes, FILE_BYTES_MAX as u64,
        "refused write changed nothing"
    );
    let big = t.open_with(s, "/g", |a| a.contents = vec![1; FILE_BYTES_MAX + 1]);
    assert_eq!(big, Err(Refusal::TooLarge));
    assert!(t.db.stat_path("/g").is_none());
}

/// Chubby §2.3 metadata: content generation and checksum follow writes, mtime is the
/// stamped time, ctime stays.
#[test]
fn metadata_follows_writes() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    let before = t.db.stat_path("/f").unwrap();
    t.tick(500);
    let Outcome::ContentsSet { stat } = t.write(s, h, b"hi").unwrap() else {
        panic!()
    };
    assert_eq!(stat.content_generation, before.content_generation.next());
    assert_eq!(stat.checksum, chubby_protocol::ContentChecksum::of(b"hi"));
    assert_eq!(stat.mtime, t.now);
    assert_eq!(stat.ctime, before.ctime);
    assert!(stat.mtime > stat.ctime);
}

/// Chubby §2.3: a new node inherits its parent's ACL names unless given its own.
#[test]
fn acl_names_inherited_at_creation() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let d = t.open_with(s, "/d", |a| {
        a.kind = NodeKind::Directory;
        a.mode = OpenMode::ALL;
    });
    let d = d.unwrap();
    let names = AclNames {
        read: "r".into(),
        write: "w".into(),
        change_acl: "admin".into(),
    };
    t.ok(Op::SetAcl {
        session: s,
        handle: d,
        acl: names.clone(),
        expected: None,
    });
    t.file(s, "/d/f");
    assert_eq!(t.db.stat_path("/d/f").unwrap().acl, names);
    t.open_with(s, "/d/g", |a| a.acl = Some(AclNames::all("admin")))
        .unwrap();
    assert_eq!(t.db.stat_path("/d/g").unwrap().acl, AclNames::all("admin"));
}

/// Chubby §2.3, §2.6: instance numbers grow for a re-created name, and a handle is bound to
/// the instance: after delete and re-create the old handle fails.
#[test]
fn instance_numbers_and_handle_binding() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let old = t.file(s, "/f");
    let first = t.db.stat_path("/f").unwrap().instance;
    t.ok(Op::Delete {
        session: s,
        handle: old,
    });
    t.file(s, "/f");
    let second = t.db.stat_path("/f").unwrap().instance;
    assert!(second > first);
    assert_eq!(t.write(s, old, b"x"), Err(Refusal::NotFound));
    assert_eq!(t.db.read(s, old), Err(Refusal::NotFound));
    assert_eq!(
        t.ok(Op::Close {
            session: s,
            handle: old
        }),
        Outcome::Closed
    );
}

// ---------------------------------------------------------------- refusals of Open

/// Chubby §2.6 Open: should/must create, and the refusals around creation.
#[test]
fn open_creation_rules() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let never = Harness::open_op(s, "/f", OpenMode::READ, Creation::Never);
    assert_eq!(t.err(never.clone()), Refusal::NotFound);
    let must = Harness::open_op(s, "/f", OpenMode::READ, Creation::Must);
    assert!(matches!(
        t.ok(must.clone()),
        Outcome::Opened { created: true, .. }
    ));
    assert_eq!(t.err(must), Refusal::Exists);
    assert!(matches!(
        t.ok(never),
        Outcome::Opened { created: false, .. }
    ));
    assert_eq!(t.open_with(s, "/missing/f", |_| {}), Err(Refusal::NotFound));
    assert_eq!(
        t.open_with(s, "/f/child", |_| {}),
        Err(Refusal::NotADirectory)
    );
    assert_eq!(
        t.open_with(s, "/f", |a| a.kind = NodeKind::Directory),
        Err(Refusal::NotADirectory)
    );
    t.dir(s, "/d");
    assert_eq!(t.open_with(s, "/d", |_| {}), Err(Refusal::IsADirectory));
    let dir_with_bytes = t.open_with(s, "/e", |a| {
        a.kind = NodeKind::Directory;
        a.contents = b"x".to_vec();
    });
    assert_eq!(dir_with_bytes, Err(Refusal::InvalidArgument));
    assert_eq!(
        t.open_with(s, "/f", |a| a.mode = OpenMode::default()),
        Err(Refusal::InvalidArgument)
    );
}

/// Chubby §2.4: a lock-delay above the one-minute bound is refused; the bound itself is
/// accepted; none given means the cell default.
#[test]
fn lock_delay_bound() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let over = t.open_with(s, "/f", |a| a.lock_delay_ms = Some(LOCK_DELAY_MS_MAX + 1));
    assert_eq!(over, Err(Refusal::InvalidArgument));
    let h = t
        .open_with(s, "/f", |a| a.lock_delay_ms = Some(LOCK_DELAY_MS_MAX))
        .unwrap();
    assert_eq!(t.db.handle(s, h).unwrap().lock_delay_ms, LOCK_DELAY_MS_MAX);
    let d = t.file(s, "/g");
    assert_eq!(t.db.handle(s, d).unwrap().lock_delay_ms, 15_000);
}

/// Session and handle refusals: SessionExpired for a dead session, BadHandle for another
/// session's or a closed handle.
#[test]
fn session_and_handle_refusals() {
    let mut t = Harness::new();
    let a = t.session("admin");
    let b = t.session("admin");
    let h = t.file(a, "/f");
    assert_eq!(t.write(b, h, b"x"), Err(Refusal::BadHandle));
    t.ok(Op::Close {
        session: a,
        handle: h,
    });
    assert_eq!(t.write(a, h, b"x"), Err(Refusal::BadHandle));
    assert_eq!(
        t.err(Op::Close {
            session: a,
            handle: h
        }),
        Refusal::BadHandle
    );
    t.ok(Op::ExpireSession { session: b });
    assert_eq!(
        t.err(Harness::open_op(b, "/f", OpenMode::READ, Creation::Never)),
        Refusal::SessionExpired
    );
    assert_eq!(
        t.err(Op::ExpireSession { session: b }),
        Refusal::SessionExpired
    );
    assert_eq!(
        t.err(Op::CreateSession {
            principal: "two\nlines".into()
        }),
        Refusal::InvalidArgument
    );
}

/// STYLE habit 9: handles per session are bounded.
#[test]
fn handles_per_session_are_bounded() {
    let mut table = sessions::Sessions::default();
    let s = table.create_session("p".into());
    let path: Arc<str> = Arc::from("/f");
    for _ in 0..sessions::HANDLES_PER_SESSION_MAX {
        assert!(table.may_open(s));
        table.open(sessions::Handle {
            session: s,
            path: Arc::clone(&path),
            instance: chubby_protocol::InstanceNumber(1),
            mode: OpenMode::READ,
            lock_delay_ms: 0,
            sequencer: None,
            events: chubby_protocol::EventMask::NONE,
        });
    }
    assert!(!table.may_open(s));
    table.validate().unwrap();
}

// ---------------------------------------------------------------- writes, CAS, delete

/// Chubby §2.6 SetContents: compare-and-swap on the content generation.
#[test]
fn set_contents_cas() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    let g0 = t.db.stat_path("/f").unwrap().content_generation;
    let cas = |expected| Op::SetContents {
        session: s,
        handle: h,
        contents: b"v".to_vec(),
        expected,
    };
    assert!(t.run(cas(Some(g0))).result.is_ok());
    let g1 = g0.next();
    assert_eq!(t.err(cas(Some(g0))), Refusal::CasMismatch { current: g1 });
    assert_eq!(
        t.db.stat_path("/f").unwrap().content_generation,
        g1,
        "refused CAS wrote"
    );
    let d = t.dir(s, "/d");
    assert_eq!(t.write(s, d, b"x"), Err(Refusal::IsADirectory));
}

/// Chubby §2.6 SetACL, "similar" to SetContents: optional CAS on the ACL generation.
#[test]
fn set_acl_cas() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.open_with(s, "/f", |a| a.mode = OpenMode::ALL).unwrap();
    let set = |expected| Op::SetAcl {
        session: s,
        handle: h,
        acl: AclNames::all("g"),
        expected,
    };
    assert_eq!(
        t.err(set(Some(Generation(5)))),
        Refusal::CasMismatch {
            current: Generation(0)
        }
    );
    let Outcome::AclSet { stat } = t.ok(set(Some(Generation(0)))) else {
        panic!()
    };
    assert_eq!(stat.acl_generation, Generation(1));
    assert_eq!(stat.acl, AclNames::all("g"));
    let bad = Op::SetAcl {
        session: s,
        handle: h,
        acl: AclNames::all(".."),
        expected: None,
    };
    assert_eq!(t.err(bad), Refusal::InvalidArgument);
}

/// Chubby §2.6 Delete: only childless nodes; never the root.
#[test]
fn delete_rules() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let d = t.dir(s, "/d");
    let f = t.file(s, "/d/f");
    assert_eq!(
        t.err(Op::Delete {
            session: s,
            handle: d
        }),
        Refusal::NotEmpty
    );
    let applied = t.run(Op::Delete {
        session: s,
        handle: f,
    });
    assert_eq!(applied.result, Ok(Outcome::Deleted));
    assert!(applied
        .changes
        .iter()
        .any(|c| matches!(c, Change::Deleted { path, .. } if &**path == "/d/f")));
    assert!(applied
        .changes
        .iter()
        .any(|c| matches!(c, Change::ChildrenChanged { dir } if &**dir == "/d")));
    assert_eq!(
        t.ok(Op::Delete {
            session: s,
            handle: d
        }),
        Outcome::Deleted
    );
    let root = t.open_with(s, "/", |a| {
        a.kind = NodeKind::Directory;
        a.creation = Creation::Never;
    });
    assert_eq!(
        t.err(Op::Delete {
            session: s,
            handle: root.unwrap()
        }),
        Refusal::InvalidArgument
    );
}

/// The master learns what changed without re-deriving it: creation reports the node and
/// its parent's children; a write reports the contents.
#[test]
fn change_reports() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let applied = t.run(Harness::open_op(
        s,
        "/f",
        OpenMode::READ_WRITE,
        Creation::IfMissing,
    ));
    let instance = t.db.stat_path("/f").unwrap().instance;
    assert_eq!(
        applied.changes,
        vec![
            Change::Created {
                path: Arc::from("/f"),
                instance,
                kind: NodeKind::File
            },
            Change::ChildrenChanged {
                dir: Arc::from("/")
            },
        ]
    );
    let Ok(Outcome::Opened { handle, .. }) = applied.result else {
        panic!()
    };
    let applied = t.run(Op::SetContents {
        session: s,
        handle,
        contents: b"x".to_vec(),
        expected: None,
    });
    let content_generation = Generation(1);
    assert_eq!(
        applied.changes,
        vec![Change::ContentsChanged {
            path: Arc::from("/f"),
            instance,
            content_generation
        }]
    );
}

// ---------------------------------------------------------------- ACLs

/// Chubby §2.3 ACLs: Open checks each right of the mode against the node's ACL files;
/// a missing ACL file denies everyone but the admin.
#[test]
fn acl_denials_on_open() {
    let mut t = Harness::new();
    let admin = t.session("admin");
    t.acl_file("readers", &["alice"]);
    let names = AclNames {
        read: "readers".into(),
        write: "writers".into(),
        change_acl: "admin".into(),
    };
    t.open_with(admin, "/f", |a| a.acl = Some(names)).unwrap();
    let alice = t.session("alice");
    let bob = t.session("bob");
    assert!(t
        .run(Harness::open_op(
            alice,
            "/f",
            OpenMode::READ,
            Creation::Never
        ))
        .result
        .is_ok());
    assert_eq!(
        t.err(Harness::open_op(bob, "/f", OpenMode::READ, Creation::Never)),
        Refusal::PermissionDenied
    );
    // /acl/writers does not exist: nobody but the admin may write.
    let rw = Harness::open_op(alice, "/f", OpenMode::READ_WRITE, Creation::Never);
    assert_eq!(t.err(rw), Refusal::PermissionDenied);
    let change = OpenMode {
        read: false,
        write: false,
        change_acl: true,
    };
    assert_eq!(
        t.err(Harness::open_op(alice, "/f", change, Creation::Never)),
        Refusal::PermissionDenied
    );
    assert!(t
        .run(Harness::open_op(
            admin,
            "/f",
            OpenMode::ALL,
            Creation::Never
        ))
        .result
        .is_ok());
    // Creating needs the write right on the parent (root: admin only).
    assert_eq!(
        t.open_with(alice, "/new", |_| {}),
        Err(Refusal::PermissionDenied)
    );
}

/// Chubby §2.6 "may apply access control checks on any call": writes, deletes and SetAcl
/// need the handle's mode *and* the right at call time.
#[test]
fn acl_denials_on_calls() {
    let mut t = Harness::new();
    let admin = t.session("admin");
    t.acl_file("team", &["alice"]);
    let d = t.open_with(admin, "/d", |a| {
        a.kind = NodeKind::Directory;
        a.acl = Some(AclNames::all("team"));
    });
    assert!(d.is_ok());
    let alice = t.session("alice");
    let ro = Harness::opened(t.ok(Harness::open_op(
        alice,
        "/d/f",
        OpenMode::READ,
        Creation::IfMissing,
    )));
    assert_eq!(t.write(alice, ro, b"x"), Err(Refusal::PermissionDenied));
    assert_eq!(
        t.err(Op::Delete {
            session: alice,
            handle: ro
        }),
        Refusal::PermissionDenied
    );
    let set = Op::SetAcl {
        session: alice,
        handle: ro,
        acl: AclNames::all("team"),
        expected: None,
    };
    assert_eq!(t.err(set), Refusal::PermissionDenied);
    let rw = t.file(alice, "/d/f");
    assert!(t.write(alice, rw, b"ok").is_ok());
    // Revoke: alice leaves the team; her open read-write handle no longer writes.
    t.acl_file("team", &["carol"]);
    assert_eq!(t.write(alice, rw, b"no"), Err(Refusal::PermissionDenied));
    assert_eq!(
        t.err(Op::Delete {
            session: alice,
            handle: rw
        }),
        Refusal::PermissionDenied
    );
    assert_eq!(t.db.read(alice, rw), Err(Refusal::PermissionDenied));
}

/// Chubby §2.3: the admin principal may do anything, whatever the ACL files say.
#[test]
fn admin_may_do_anything() {
    let mut t = Harness::new();
    let admin = t.session("admin");
    let h = t.open_with(admin, "/f", |a| {
        a.acl = Some(AclNames::all("nobody"));
        a.mode = OpenMode::ALL;
    });
    let h = h.unwrap();
    assert!(t.write(admin, h, b"x").is_ok());
    assert!(t.try_acquire(admin, h, LockMode::Exclusive).is_ok());
    let set = Op::SetAcl {
        session: admin,
        handle: h,
        acl: AclNames::all("x"),
        expected: None,
    };
    assert!(t.run(set).result.is_ok());
}

// ---------------------------------------------------------------- locks

/// Chubby §2.4: "acquiring a lock in either mode requires write permission".
#[test]
fn lock_needs_write_permission() {
    let mut t = Harness::new();
    let admin = t.session("admin");
    t.acl_file("readers", &["alice"]);
    let names = AclNames {
        read: "readers".into(),
        write: "admin".into(),
        change_acl: "admin".into(),
    };
    t.open_with(admin, "/f", |a| a.acl = Some(names)).unwrap();
    let alice = t.session("alice");
    let ro = Harness::opened(t.ok(Harness::open_op(
        alice,
        "/f",
        OpenMode::READ,
        Creation::Never,
    )));
    for mode in [LockMode::Shared, LockMode::Exclusive] {
        assert_eq!(
            t.try_acquire(alice, ro, mode),
            Err(Refusal::PermissionDenied)
        );
        assert_eq!(
            t.acquire(alice, ro, mode).result,
            Err(Refusal::PermissionDenied)
        );
    }
    // A read-only handle of the admin cannot lock either: the mode matters too.
    let ro_admin = Harness::opened(t.ok(Harness::open_op(
        admin,
        "/f",
        OpenMode::READ,
        Creation::Never,
    )));
    assert_eq!(
        t.try_acquire(admin, ro_admin, LockMode::Shared),
        Err(Refusal::PermissionDenied)
    );
    assert!(t.db.lock_holders("/f").is_none());
}

/// Chubby §2.4: exclusive excludes all; shared admits many; TryAcquire never queues.
#[test]
fn exclusive_and_shared() {
    let mut t = Harness::new();
    let (a, b, c) = (t.session("admin"), t.session("admin"), t.session("admin"));
    let (ha, hb, hc) = (t.file(a, "/l"), t.file(b, "/l"), t.file(c, "/l"));
    assert!(t.try_acquire(a, ha, LockMode::Shared).is_ok());
    assert!(t.try_acquire(b, hb, LockMode::Shared).is_ok());
    assert_eq!(
        t.try_acquire(c, hc, LockMode::Exclusive),
        Err(Refusal::WouldBlock)
    );
    assert_eq!(
        t.try_acquire(a, ha, LockMode::Shared),
        Err(Refusal::AlreadyHeld)
    );
    let (mode, holders) = t.db.lock_holders("/l").unwrap();
    assert_eq!(mode, LockMode::Shared);
    assert_eq!(holders, vec![(a, ha), (b, hb)]);
    // LockHolders as a session asks it (F_GETLK on a mount).
    assert_eq!(
        t.db.lock_holders_checked(c, "/l"),
        Ok((Some(LockMode::Shared), vec![(a, ha), (b, hb)]))
    );
    assert_eq!(
        t.db.lock_holders_checked(c, "/nothing"),
        Err(Refusal::NotFound)
    );
    assert_eq!(t.release(c, hc).result, Err(Refusal::NotHeld));
    assert!(t.release(a, ha).result.is_ok());
    assert!(t.release(b, hb).result.is_ok());
    assert_eq!(t.db.lock_holders_checked(c, "/l"), Ok((None, Vec::new())));
}

/// Chubby §2.4 + DESIGN §3: waiters are served FIFO; consecutive shared waiters are granted
/// together; a shared request never overtakes a queued exclusive one.
#[test]
fn fifo_hand_off_order() {
    let mut t = Harness::new();
    let s: Vec<SessionId> = (0..5).map(|_| t.session("admin")).collect();
    let h: Vec<HandleId> = s.iter().map(|&x| t.file(x, "/l")).collect();
    assert!(t.try_acquire(s[0], h[0], LockMode::Exclusive).is_ok());
    let modes = [
        LockMode::Exclusive,
        LockMode::Shared,
        LockMode::Shared,
        LockMode::Exclusive,
    ];
    for (i, mode) in modes.iter().enumerate() {
        let applied = t.acquire(s[i + 1], h[i + 1], *mode);
        assert_eq!(applied.result, Ok(Outcome::Queued));
        let conflict = applied
            .changes
            .iter()
            .any(|c| matches!(c, Change::LockConflict { holders, .. } if !holders.is_empty()));
        assert!(conflict, "holders told of the conflicting request");
    }
    // While held shared later, a new shared TryAcquire must not overtake queued ones.
    let applied = t.release(s[0], h[0]);
    assert_eq!(granted_to(&applied.changes), vec![h[1]]);
    let applied = t.release(s[1], h[1]);
    assert_eq!(
        granted_to(&applied.changes),
        vec![h[2], h[3]],
        "shared waiters together"
    );
    let late = t.session("admin");
    let hl = t.file(late, "/l");
    assert_eq!(
        t.try_acquire(late, hl, LockMode::Shared),
        Err(Refusal::WouldBlock)
    );
    assert!(granted_to(&t.release(s[2], h[2]).changes).is_empty());
    assert_eq!(granted_to(&t.release(s[3], h[3]).changes), vec![h[4]]);
    assert_eq!(
        t.db.lock_holders("/l").unwrap(),
        (LockMode::Exclusive, vec![(s[4], h[4])])
    );
}

/// Chubby §2.4: the lock generation bumps on each free→held transition only; a sequencer
/// is valid while held in that generation, stale after release, and stays stale after a
/// re-acquire.
#[test]
fn stale_sequencer_after_release_and_reacquire() {
    let mut t = Harness::new();
    let (a, b) = (t.session("admin"), t.session("admin"));
    let (ha, hb) = (t.file(a, "/l"), t.file(b, "/l"));
    let first = sequencer_of(t.try_acquire(a, ha, LockMode::Shared).unwrap());
    let joined = sequencer_of(t.try_acquire(b, hb, LockMode::Shared).unwrap());
    assert_eq!(
        first.lock_generation, joined.lock_generation,
        "joining shared holders share it"
    );
    assert!(t.db.check_sequencer(&first));
    assert_eq!(t.db.get_sequencer(a, ha), Ok(Some(first.clone())));
    t.release(a, ha);
    assert!(
        t.db.check_sequencer(&first),
        "still held (by b) in that generation"
    );
    t.release(b, hb);
    assert!(!t.db.check_sequencer(&first));
    let second = sequencer_of(t.try_acquire(a, ha, LockMode::Exclusive).unwrap());
    assert_eq!(second.lock_generation, first.lock_generation.next());
    assert!(!t.db.check_sequencer(&first));
    let wrong_mode = Sequencer {
        mode: LockMode::Shared,
        ..second.clone()
    };
    assert!(!t.db.check_sequencer(&wrong_mode));
    assert!(t.db.check_sequencer(&second));
}

/// Chubby §2.6 SetSequencer: later operations on the handle fail once the sequencer is
/// stale; setting a stale one is refused.
#[test]
fn set_sequencer_makes_later_calls_fail() {
    let mut t = Harness::new();
    let (a, b) = (t.session("admin"), t.session("admin"));
    let ha = t.file(a, "/l");
    let hb = t.file(b, "/data");
    let seq = sequencer_of(t.try_acquire(a, ha, LockMode::Exclusive).unwrap());
    t.ok(Op::SetSequencer {
        session: b,
        handle: hb,
        sequencer: Some(seq.clone()),
    });
    assert!(t.write(b, hb, b"under the lock").is_ok());
    t.release(a, ha);
    assert_eq!(t.write(b, hb, b"late"), Err(Refusal::StaleSequencer));
    assert_eq!(t.db.read(b, hb), Err(Refusal::StaleSequencer));
    let set = Op::SetSequencer {
        session: b,
        handle: hb,
        sequencer: Some(seq),
    };
    assert_eq!(t.err(set), Refusal::StaleSequencer);
    assert_eq!(
        t.ok(Op::Close {
            session: b,
            handle: hb
        }),
        Outcome::Closed,
        "Close always works"
    );
}

/// A sequencer names a node instance: one from a deleted node never passes for its
/// re-created successor, even at the same lock generation.
#[test]
fn sequencer_of_deleted_node_is_stale() {
    let mut t = Harness::new();
    let a = t.session("admin");
    let h = t.file(a, "/l");
    let old = sequencer_of(t.try_acquire(a, h, LockMode::Exclusive).unwrap());
    t.ok(Op::Delete {
        session: a,
        handle: h,
    });
    let h2 = t.file(a, "/l");
    let new = sequencer_of(t.try_acquire(a, h2, LockMode::Exclusive).unwrap());
    assert_eq!(old.lock_generation, new.lock_generation);
    assert!(!t.db.check_sequencer(&old));
    assert!(t.db.check_sequencer(&new));
}

/// Chubby §2.4 lock-delay: a lock freed because its holder's session was lost cannot be
/// taken for the holder's lock-delay: refused one tick before its end, granted at its end.
#[test]
fn lock_delay_after_session_loss() {
    let mut t = Harness::new();
    let (a, b) = (t.session("admin"), t.session("admin"));
    let ha = t
        .open_with(a, "/l", |x| x.lock_delay_ms = Some(1_000))
        .unwrap();
    let hb = t.file(b, "/l");
    assert!(t.try_acquire(a, ha, LockMode::Exclusive).is_ok());
    let lost_at = t.now;
    let applied = t.run(Op::ExpireSession { session: a });
    assert!(applied.changes.iter().any(|c| matches!(
        c,
        Change::LockReleased {
            cause: ReleaseCause::SessionLost,
            ..
        }
    )));
    let until = lost_at.plus_ms(1_000);
    assert_eq!(t.db.next_deadline(), Some(until));
    t.tick(999);
    assert_eq!(
        t.try_acquire(b, hb, LockMode::Shared),
        Err(Refusal::LockDelayed { until })
    );
    t.tick(1);
    assert!(t.try_acquire(b, hb, LockMode::Exclusive).is_ok());
    assert_eq!(t.db.next_deadline(), None);
}

/// Lock-delay with a queued waiter: the grant comes with the first command stamped at the
/// delay's end (a Noop will do), not before.
#[test]
fn lock_delay_ends_with_a_stamped_command() {
    let mut t = Harness::new();
    let (a, b) = (t.session("admin"), t.session("admin"));
    let ha = t
        .open_with(a, "/l", |x| x.lock_delay_ms = Some(2_000))
        .unwrap();
    let hb = t.file(b, "/l");
    assert!(t.try_acquire(a, ha, LockMode::Exclusive).is_ok());
    t.ok(Op::ExpireSession { session: a });
    let until = t.db.next_deadline().unwrap();
    assert_eq!(
        t.acquire(b, hb, LockMode::Exclusive).result,
        Ok(Outcome::Queued)
    );
    t.now = Instant(until.0 - 1);
    assert!(granted_to(&t.run(Op::Noop).changes).is_empty());
    t.now = until;
    assert_eq!(granted_to(&t.run(Op::Noop).changes), vec![hb]);
    assert_eq!(t.db.lock_holders("/l").unwrap().1, vec![(b, hb)]);
}

/// Chubby §2.4: "a lock released normally is available immediately": Release, Close and
/// CloseSession start no lock-delay.
#[test]
fn explicit_release_has_no_delay() {
    let mut t = Harness::new();
    let b = t.session("admin");
    let hb = t.file(b, "/l");
    for way in 0..3 {
        let a = t.session("admin");
        let ha = t
            .open_with(a, "/l", |x| x.lock_delay_ms = Some(60_000))
            .unwrap();
        assert!(t.try_acquire(a, ha, LockMode::Exclusive).is_ok());
        let op = match way {
            0 => Op::Release {
                session: a,
                handle: ha,
            },
            1 => Op::Close {
                session: a,
                handle: ha,
            },
            _ => Op::CloseSession { session: a },
        };
        t.ok(op);
        assert_eq!(t.db.next_deadline(), None, "way {way}");
        assert!(
            t.try_acquire(b, hb, LockMode::Exclusive).is_ok(),
            "way {way}"
        );
        t.release(b, hb);
    }
}

/// Chubby §2.6/§2.7: Close cancels the handle's queued Acquire; the master is told.
#[test]
fn close_cancels_a_queued_acquire() {
    let mut t = Harness::new();
    let (a, b) = (t.session("admin"), t.session("admin"));
    let (ha, hb) = (t.file(a, "/l"), t.file(b, "/l"));
    assert!(t.try_acquire(a, ha, LockMode::Exclusive).is_ok());
    assert_eq!(
        t.acquire(b, hb, LockMode::Exclusive).result,
        Ok(Outcome::Queued)
    );
    assert_eq!(
        t.acquire(b, hb, LockMode::Exclusive).result,
        Err(Refusal::AlreadyHeld)
    );
    let applied = t.run(Op::Close {
        session: b,
        handle: hb,
    });
    let ended = applied.changes.iter().any(|c| {
        matches!(
            c,
            Change::WaitEnded {
                reason: WaitEnd::HandleClosed,
                ..
            }
        )
    });
    assert!(ended);
    assert!(
        granted_to(&t.release(a, ha).changes).is_empty(),
        "nobody left to grant"
    );
    assert!(t.db.lock_holders("/l").is_none());
}

// ---------------------------------------------------------------- ephemeral nodes

/// Chubby §2.3: an ephemeral file is deleted when its last handle closes.
#[test]
fn ephemeral_file_goes_on_last_close() {
    let mut t = Harness::new();
    let (a, b) = (t.session("admin"), t.session("admin"));
    let ha = t.open_with(a, "/e", |x| x.ephemeral = true).unwrap();
    let hb = t.file(b, "/e");
    t.ok(Op::Close {
        session: a,
        handle: ha,
    });
    assert!(t.db.stat_path("/e").is_some(), "still open by b");
    let applied = t.run(Op::Close {
        session: b,
        handle: hb,
    });
    assert!(t.db.stat_path("/e").is_none());
    assert!(applied
        .changes
        .iter()
        .any(|c| matches!(c, Change::Deleted { path, .. } if &**path == "/e")));
}

/// Chubby §2.3/§2.9: an ephemeral file also goes when its last opener's session ends.
#[test]
fn ephemeral_file_goes_on_session_expiry() {
    let mut t = Harness::new();
    let a = t.session("admin");
    t.open_with(a, "/e", |x| x.ephemeral = true).unwrap();
    t.open_with(a, "/e", |_| {}).unwrap();
    let applied = t.run(Op::ExpireSession { session: a });
    assert!(t.db.stat_path("/e").is_none());
    let closed = applied
        .changes
        .iter()
        .filter(|c| matches!(c, Change::HandleClosed { .. }))
        .count();
    assert_eq!(closed, 2);
    assert!(matches!(
        applied.changes.last(),
        Some(Change::SessionEnded {
            cause: SessionEnd::Expired,
            ..
        })
    ));
}

/// Chubby §2.3: an ephemeral directory goes when it is empty and unopened; deletions
/// cascade up through ephemeral parents.
#[test]
fn ephemeral_directory_goes_when_empty() {
    let mut t = Harness::new();
    let a = t.session("admin");
    let d = t.open_with(a, "/d", |x| {
        x.kind = NodeKind::Directory;
        x.ephemeral = true;
    });
    let d = d.unwrap();
    let inner = t.open_with(a, "/d/e", |x| {
        x.kind = NodeKind::Directory;
        x.ephemeral = true;
    });
    let inner = inner.unwrap();
    let f = t.file(a, "/d/e/f");
    t.ok(Op::Close {
        session: a,
        handle: d,
    });
    t.ok(Op::Close {
        session: a,
        handle: inner,
    });
    assert!(t.db.stat_path("/d/e").is_some(), "not empty: stays");
    t.ok(Op::Delete {
        session: a,
        handle: f,
    });
    assert!(t.db.stat_path("/d/e").is_none());
    assert!(t.db.stat_path("/d").is_none(), "cascaded");
}

// ---------------------------------------------------------------- rename

/// Our extension: Rename moves a file atomically, replacing a target file; handles follow;
/// the moved file gets a new instance number.
#[test]
fn rename_moves_and_replaces() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let src = t.file(s, "/a");
    t.write(s, src, b"new").unwrap();
    let tgt = t.file(s, "/b");
    let old_instance = t.db.stat_path("/b").unwrap().instance;
    let Outcome::Renamed { stat } = t.ok(Op::Rename {
        session: s,
        from: "/a".into(),
        to: "/b".into(),
    }) else {
        panic!()
    };
    assert!(stat.instance > old_instance);
    assert!(t.db.stat_path("/a").is_none());
    assert_eq!(
        &t.db.read(s, src).unwrap().1[..],
        b"new",
        "source handle follows"
    );
    assert_eq!(
        t.db.read(s, tgt),
        Err(Refusal::NotFound),
        "replaced target's handle fails"
    );
    assert_eq!(stat.content_generation, Generation(1));
}

/// Rename refusals: directories, locked source or target, missing parent, bad paths.
#[test]
fn rename_refusals() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let rename = |from: &str, to: &str| Op::Rename {
        session: s,
        from: from.into(),
        to: to.into(),
    };
    t.dir(s, "/d");
    let f = t.file(s, "/f");
    assert_eq!(t.err(rename("/f", "/d")), Refusal::IsADirectory);
    assert_eq!(t.err(rename("/nope", "/x")), Refusal::NotFound);
    assert_eq!(t.err(rename("/f", "/nope/x")), Refusal::NotFound);
    assert_eq!(t.err(rename("/f", "/f/x")), Refusal::NotADirectory);
    assert_eq!(t.err(rename("/f", "/x/")), Refusal::InvalidPath);
    assert!(t.try_acquire(s, f, LockMode::Exclusive).is_ok());
    assert_eq!(t.err(rename("/f", "/g")), Refusal::Locked);
    let g = t.file(s, "/g");
    assert_eq!(t.err(rename("/g", "/f")), Refusal::Locked);
    t.release(s, f);
    assert!(t.run(rename("/g", "/f")).result.is_ok());
    assert!(
        t.write(s, g, b"moved").is_ok(),
        "g's handle followed it to /f"
    );
    assert_eq!(
        &t.db.read(s, f).unwrap_err(),
        &Refusal::NotFound,
        "f's old handle is gone"
    );
}

/// A directory moves with its whole subtree in one command: contents, generations, ACL
/// names, ephemeral flags and POSIX attributes kept, every node a new (greater) instance
/// number, handles following, both parents' POSIX mtime and ctime set (issue 19).
#[test]
fn a_directory_moves_with_its_subtree() {
    let mut t = Harness::new();
    let s = t.session("admin");
    t.dir(s, "/rel");
    t.dir(s, "/rel/new");
    t.dir(s, "/rel/new/conf");
    let app = t.file(s, "/rel/new/conf/app");
    t.write(s, app, b"v2").unwrap();
    t.file(s, "/rel/new/conf-b"); // sorts between /rel/new/conf and its subtree
    let before: Vec<_> = [
        "/rel/new",
        "/rel/new/conf",
        "/rel/new/conf/app",
        "/rel/new/conf-b",
    ]
    .iter()
    .map(|p| t.db.stat_path(p).unwrap())
    .collect();
    let top = t.db.stat_path("/").unwrap();
    t.tick(5_000);
    let out = t.ok(Op::Rename {
        session: s,
        from: "/rel/new".into(),
        to: "/current".into(),
    });
    let Outcome::Renamed { stat } = out else {
        panic!("{out:?}")
    };
    for (old, to) in before.iter().zip([
        "/current",
        "/current/conf",
        "/current/conf/app",
        "/current/conf-b",
    ]) {
        let now = t.db.stat_path(to).unwrap_or_else(|| panic!("{to} missing"));
        assert!(
            now.instance > old.instance,
            "{to} has a new, greater instance"
        );
        assert_eq!(now.content_generation, old.content_generation, "{to}");
        assert_eq!(now.acl, old.acl, "{to}");
        assert_eq!(now.posix.mode, old.posix.mode, "{to}");
        assert_eq!(
            now.posix.mtime, old.posix.mtime,
            "{to}: its own mtime is kept"
        );
    }
    assert_eq!(stat.instance, t.db.stat_path("/current").unwrap().instance);
    assert!(
        stat.posix.ctime > before[0].posix.ctime,
        "the moved node's ctime is set"
    );
    assert!(t.db.stat_path("/rel/new").is_none());
    assert!(t.db.stat_path("/rel/new/conf/app").is_none());
    assert_eq!(
        t.db.read(s, app).unwrap().1.as_slice(),
        b"v2",
        "the handle followed"
    );
    let rel = t.db.stat_path("/rel").unwrap();
    assert!(
        rel.posix.mtime > before[0].posix.ctime,
        "old parent's mtime is set"
    );
    assert!(
        t.db.stat_path("/").unwrap().posix.mtime > top.posix.mtime,
        "new parent's too"
    );
    t.db.validate().unwrap();
}

/// POSIX errnos of directory renames: a non-empty target (ENOTEMPTY), into itself
/// (EINVAL), kinds crossed (ENOTDIR, EISDIR), anything locked below (EBUSY), the root.
#[test]
fn directory_rename_refusals() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let rename = |from: &str, to: &str| Op::Rename {
        session: s,
        from: from.into(),
        to: to.into(),
    };
    t.dir(s, "/a");
    t.dir(s, "/a/b");
    let lock = t.file(s, "/a/b/l");
    t.dir(s, "/full");
    t.file(s, "/full/x");
    t.dir(s, "/empty");
    t.file(s, "/f");
    assert_eq!(t.err(rename("/a", "/full")), Refusal::NotEmpty);
    assert_eq!(t.err(rename("/a", "/a/b/c")), Refusal::InvalidArgument);
    assert_eq!(t.err(rename("/a", "/a/b")), Refusal::InvalidArgument);
    assert_eq!(t.err(rename("/a", "/f")), Refusal::NotADirectory);
    assert_eq!(t.err(rename("/f", "/empty")), Refusal::IsADirectory);
    assert_eq!(t.err(rename("/", "/z")), Refusal::InvalidArgument);
    assert_eq!(t.err(rename("/a", "/")), Refusal::InvalidArgument);
    assert!(t.try_acquire(s, lock, LockMode::Shared).is_ok());
    assert_eq!(t.err(rename("/a", "/z")), Refusal::Locked);
    t.release(s, lock);
    let before = super::model::view_of(&t.db);
    assert_eq!(t.err(rename("/a", "/full")), Refusal::NotEmpty);
    assert_eq!(
        super::model::view_of(&t.db),
        before,
        "a refusal changes nothing"
    );
    // An empty directory is replaced, as rename(2) does.
    let empty = t.db.stat_path("/empty").unwrap().instance;
    t.ok(rename("/a", "/empty"));
    assert!(t.db.stat_path("/empty/b/l").is_some());
    assert_ne!(t.db.stat_path("/empty").unwrap().instance, empty);
    assert!(t.db.stat_path("/a").is_none());
}

/// Renames need the write right on both parents (issue 19), not only on the node.
#[test]
fn rename_needs_write_on_both_parents() {
    let mut t = Harness::new();
    let admin = t.session("admin");
    t.acl_file("g", &["alice"]);
    let alice = t.session("alice");
    t.dir(admin, "/locked"); // admin-only, inherited from /
    let acl = Some(AclNames::all("g"));
    let a2 = acl.clone();
    t.open_with(admin, "/locked/f", |a| a.acl = a2).unwrap();
    t.open_with(admin, "/open", |a| {
        a.kind = NodeKind::Directory;
        a.acl = acl;
    })
    .unwrap();
    let op = Op::Rename {
        session: alice,
        from: "/locked/f".into(),
        to: "/open/f".into(),
    };
    assert_eq!(t.err(op), Refusal::PermissionDenied);
}

/// SetAttr stores modes, owners and times for tools; it needs the write right, refuses
/// bad arguments without a change, and sets ctime; content writes set mtime and ctime;
/// a directory gaining or losing an entry sets its mtime and ctime (issue 19).
#[test]
fn posix_attributes_are_stored_and_times_follow_changes() {
    let mut t = Harness::new();
    let s = t.session("admin");
    t.dir(s, "/d");
    let f = t.file(s, "/d/f");
    let st = t.db.stat_path("/d/f").unwrap();
    assert_eq!(
        (st.posix.mode, st.posix.owner),
        (0o644, None),
        "the library's defaults"
    );
    let set = |change: AttrChange| Op::SetAttr {
        session: s,
        path: "/d/f".into(),
        instance: None,
        change,
    };
    t.tick(1_500);
    let at = Timespec { secs: -5, nanos: 7 };
    let out = t.ok(set(AttrChange {
        mode: Some(0o4750),
        owner: Some((1000, 50)),
        atime: Some(TimeSet::At(at)),
        mtime: Some(TimeSet::Now),
        ephemeral_children: None,
    }));
    let Outcome::AttrsSet { stat } = out else {
        panic!("{out:?}")
    };
    assert_eq!(stat.posix.mode, 0o4750);
    assert_eq!(stat.posix.owner, Some((1000, 50)));
    assert_eq!(stat.posix.atime, at);
    assert_eq!(stat.posix.mtime, Timespec::from_instant(t.now));
    assert_eq!(stat.posix.ctime, Timespec::from_instant(t.now));
    assert_eq!(
        stat.content_generation, st.content_generation,
        "no content change"
    );
    let before = super::model::view_of(&t.db);
    let bad_mode = AttrChange {
        mode: Some(0o10000),
        ..AttrChange::default()
    };
    assert_eq!(t.err(set(bad_mode)), Refusal::InvalidArgument);
    let bad_nanos = AttrChange {
        mtime: Some(TimeSet::At(Timespec {
            secs: 1,
            nanos: 1_000_000_000,
        })),
        ..AttrChange::default()
    };
    assert_eq!(t.err(set(bad_nanos)), Refusal::InvalidArgument);
    let marker = AttrChange {
        ephemeral_children: Some(true),
        ..AttrChange::default()
    };
    assert_eq!(t.err(set(marker)), Refusal::NotADirectory);
    let stale = Op::SetAttr {
        session: s,
        path: "/d/f".into(),
        instance: Some(InstanceNumber(1)),
        change: AttrChange::default(),
    };
    assert_eq!(t.err(stale), Refusal::NotFound);
    assert_eq!(
        super::model::view_of(&t.db),
        before,
        "refusals change nothing"
    );
    t.acl_file("g", &["alice"]);
    let alice = t.session("alice");
    let theirs = Op::SetAttr {
        session: alice,
        path: "/d/f".into(),
        instance: None,
        change: AttrChange {
            mode: Some(0o777),
            ..AttrChange::default()
        },
    };
    assert_eq!(
        t.err(theirs),
        Refusal::PermissionDenied,
        "ACLs decide, not modes"
    );
    // Times follow changes.
    t.tick(1_000);
    t.write(s, f, b"x").unwrap();
    let after = t.db.stat_path("/d/f").unwrap();
    assert_eq!(after.posix.mtime, Timespec::from_instant(t.now));
    assert_eq!(after.posix.atime, at, "a write leaves atime");
    t.tick(1_000);
    t.file(s, "/d/g");
    assert_eq!(
        t.db.stat_path("/d").unwrap().posix.mtime,
        Timespec::from_instant(t.now)
    );
    t.tick(1_000);
    let g = t.file(s, "/d/g");
    t.ok(Op::Delete {
        session: s,
        handle: g,
    });
    let d = t.db.stat_path("/d").unwrap();
    assert_eq!(
        (d.posix.mtime, d.posix.ctime),
        (Timespec::from_instant(t.now), Timespec::from_instant(t.now))
    );
}

/// A directory marked ephemeral-children makes every node created in it ephemeral, from
/// any session (issue 19: presence directories shared by many machines).
#[test]
fn ephemeral_children_are_ephemeral_whoever_creates_them() {
    let mut t = Harness::new();
    let a = t.session("admin");
    let b = t.session("admin");
    t.dir(a, "/presence");
    t.ok(Op::SetAttr {
        session: a,
        path: "/presence".into(),
        instance: None,
        change: AttrChange {
            ephemeral_children: Some(true),
            ..AttrChange::default()
        },
    });
    assert!(t.db.stat_path("/presence").unwrap().ephemeral_children);
    let h = t.file(b, "/presence/host-b");
    assert!(t.db.stat_path("/presence/host-b").unwrap().ephemeral);
    t.ok(Op::Close {
        session: b,
        handle: h,
    });
    assert!(
        t.db.stat_path("/presence/host-b").is_none(),
        "gone with its last handle"
    );
    assert!(
        t.db.stat_path("/presence").is_some(),
        "the directory itself stays"
    );
}

/// A backup written by the last format-2 build (before POSIX attributes) still restores:
/// its nodes with their contents and generations, and the defaults for what it lacks.
#[test]
fn a_format_2_backup_still_restores() {
    let bytes = include_bytes!("../../tests/data/backup-format2.snap");
    assert_eq!(bytes[8], 2, "the test file is of format 2");
    let (db, _) = Db::restore(bytes).expect("format 2 restores");
    let conf = db
        .stat_path("/ls/svc/conf/app.toml")
        .expect("the file is there");
    assert_eq!(conf.content_generation, Generation(1));
    assert_eq!(conf.posix.mode, 0o644);
    assert_eq!(conf.posix.owner, None);
    assert_eq!(conf.posix.mtime, Timespec::from_instant(conf.mtime));
    assert!(!db.stat_path("/ls/svc").unwrap().ephemeral_children);
    assert_eq!(db.stat_path("/ls/empty").unwrap().posix.mode, 0o755);
    // Written again, it is of today's format and restores to the same digest.
    let again = db
        .freeze()
        .encode(&[NodeId(1)], &chubby_protocol::MemberSets::default());
    assert_eq!(again[8], snapshot::SNAPSHOT_FORMAT);
    assert_eq!(Db::restore(&again).unwrap().0.digest(), db.digest());
    let mut future = bytes.to_vec();
    future[8] = snapshot::SNAPSHOT_FORMAT + 1;
    assert!(matches!(
        Db::restore(&future),
        Err(snapshot::SnapshotError::UnknownFormat(_))
    ));
}

// ---------------------------------------------------------------- epochs and time

/// PML §5.3: a command proposed under another epoch is refused and changes nothing; a
/// NewEpoch must raise the epoch.
#[test]
fn stale_epoch() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let before = t.db.digest();
    t.epoch = E2;
    assert_eq!(
        t.err(Harness::open_op(
            s,
            "/f",
            OpenMode::READ,
            Creation::IfMissing
        )),
        Refusal::StaleEpoch { current: E1 }
    );
    assert!(t.db.stat_path("/f").is_none());
    assert_eq!(t.ok(Op::NewEpoch), Outcome::EpochStarted);
    assert_ne!(t.db.digest(), before);
    t.epoch = E1;
    assert_eq!(t.err(Op::Noop), Refusal::StaleEpoch { current: E2 });
    assert_eq!(t.err(Op::NewEpoch), Refusal::StaleEpoch { current: E2 });
    t.epoch = E2;
    assert_eq!(
        t.err(Op::NewEpoch),
        Refusal::StaleEpoch { current: E2 },
        "must rise"
    );
    assert_eq!(t.db.epoch(), E2);
}

/// TigerBeetle/STYLE §9.4: stamped time never goes backwards; the database asserts it.
#[test]
#[should_panic(expected = "stamped time went backwards")]
fn time_going_backwards_is_a_bug() {
    let mut t = Harness::new();
    t.now = Instant(500);
    t.run(Op::Noop);
}

/// A stale-epoch command's stamp is not checked: it is not applied at all.
#[test]
fn stale_command_with_old_stamp_is_just_refused() {
    let mut t = Harness::new();
    t.tick(1_000);
    t.run(Op::Noop);
    t.now = Instant(10);
    t.epoch = Ballot {
        round: 0,
        node: NodeId(9),
    };
    assert!(matches!(t.err(Op::Noop), Refusal::StaleEpoch { .. }));
}

// ---------------------------------------------------------------- snapshots

/// PML §5.5: a snapshot restores to the same state (digest), with its slot and membership.
#[test]
fn snapshot_round_trip() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    t.write(s, h, b"contents").unwrap();
    assert!(t.try_acquire(s, h, LockMode::Exclusive).is_ok());
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let sets = chubby_protocol::MemberSets {
        sets: vec![
            (Slot(1), members.clone()),
            (Slot(70), vec![NodeId(1), NodeId(2)]),
        ],
        addrs: Vec::new(),
        complete_through: t.slot,
    };
    let bytes = t.db.freeze().encode(&members, &sets);
    let (restored, info) = Db::restore(&bytes).unwrap();
    assert_eq!(info.slot, t.slot);
    assert_eq!(info.membership, members);
    assert_eq!(info.member_sets, sets);
    assert_eq!(restored.digest(), t.db.digest());
    assert_eq!(restored.read(s, h), t.db.read(s, h));
}

/// A format-3 snapshot (before member sets rode along) still loads, its member sets
/// unknown.
#[test]
fn a_format_3_snapshot_still_restores() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    t.write(s, h, b"contents").unwrap();
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    // Format 3's database: today's without the call records and the configuration's
    // last flag (a tuple encodes like the struct of its fields).
    let c = &t.db.config;
    let old_db = (
        (&c.admin, c.lock_delay_ms_default, c.bug_ignore_lock_delay),
        t.db.epoch,
        t.db.now,
        t.db.applied,
        &t.db.ns,
        &t.db.sessions,
        &t.db.locks,
    );
    let body = bincode::encode_to_vec(
        (t.db.applied_slot(), &members, old_db),
        bincode::config::standard(),
    )
    .unwrap();
    let mut bytes = chubby_protocol::db::SNAPSHOT_MAGIC.to_vec();
    bytes.push(3);
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    let (restored, info) = Db::restore(&bytes).unwrap();
    assert_eq!(info.membership, members);
    assert_eq!(info.member_sets, chubby_protocol::MemberSets::default());
    assert_eq!(restored.digest(), t.db.digest());
    assert_eq!(restored.read(s, h), t.db.read(s, h));
}

/// PML §5.5: corruption is detected and the snapshot is never used.
#[test]
fn corrupt_snapshots_are_refused() {
    let mut t = Harness::new();
    let s = t.session("admin");
    t.file(s, "/f");
    let bytes =
        t.db.freeze()
            .encode(&[NodeId(1)], &chubby_protocol::MemberSets::default());
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(Db::restore(&flipped).unwrap_err(), SnapshotError::Checksum);
    assert_eq!(
        Db::restore(&bytes[..bytes.len() - 1]).unwrap_err(),
        SnapshotError::Truncated
    );
    assert_eq!(
        Db::restore(&bytes[..5]).unwrap_err(),
        SnapshotError::Truncated
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        Db::restore(&longer).unwrap_err(),
        SnapshotError::TrailingBytes(1)
    );
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(
        Db::restore(&magic).unwrap_err(),
        SnapshotError::NotASnapshot
    );
    let mut format = bytes;
    format[8] = 99;
    assert_eq!(
        Db::restore(&format).unwrap_err(),
        SnapshotError::UnknownFormat(99)
    );
}

/// A body that passes its checksum but breaks an invariant is refused, not used.
#[test]
fn invalid_snapshot_state_is_refused() {
    let mut t = Harness::new();
    let s = t.session("admin");
    t.file(s, "/f");
    let mut frozen = t.db.clone();
    frozen.ns.update("/f", |n| {
        n.contents = Arc::new(b"not matching the checksum".to_vec())
    });
    let bytes = Frozen(frozen).encode(&[], &chubby_protocol::MemberSets::default());
    assert!(matches!(
        Db::restore(&bytes),
        Err(SnapshotError::Invalid(_))
    ));
}

/// The frozen copy does not see later changes (copy-on-write of shared nodes).
#[test]
fn frozen_copy_is_isolated() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    t.write(s, h, b"before").unwrap();
    let frozen = t.db.freeze();
    let digest = frozen.digest();
    t.write(s, h, b"after").unwrap();
    t.file(s, "/g");
    assert_eq!(frozen.digest(), digest);
    let (restored, _) =
        Db::restore(&frozen.encode(&[], &chubby_protocol::MemberSets::default())).unwrap();
    assert_eq!(&restored.read(s, h).unwrap().1[..], b"before");
    assert!(restored.stat_path("/g").is_none());
}

/// PML §6.2: the checksum command reports the digest at that log position.
#[test]
fn checksum_command_reports_the_digest() {
    let mut t = Harness::new();
    t.session("admin");
    let Outcome::Checksum { digest } = t.ok(Op::Checksum) else {
        panic!()
    };
    assert_eq!(digest, t.db.digest());
}

/// PML §6.2: the digest sees contents: two databases that differ only in one file's bytes
/// (same slot, same time, same generations) have different digests.
#[test]
fn digest_sees_contents() {
    let run = |bytes: &[u8]| {
        let mut t = Harness::new();
        let s = t.session("admin");
        let h = t.file(s, "/f");
        t.write(s, h, bytes).unwrap();
        t.db.digest()
    };
    assert_eq!(run(b"same"), run(b"same"));
    assert_ne!(run(b"one"), run(b"two"));
}

/// PML §6.2: the digest sees lock modes and handles' sequencers too, not only nodes (same
/// slots, same times, different state).
#[test]
fn digest_sees_locks_and_handles() {
    let run = |mode: LockMode, keep_sequencer: bool| {
        let mut t = Harness::new();
        let s = t.session("admin");
        let h = t.file(s, "/f");
        let seq = sequencer_of(t.try_acquire(s, h, mode).unwrap());
        let sequencer = keep_sequencer.then_some(seq);
        t.ok(Op::SetSequencer {
            session: s,
            handle: h,
            sequencer,
        });
        t.db.digest()
    };
    let base = run(LockMode::Exclusive, true);
    assert_eq!(base, run(LockMode::Exclusive, true));
    assert_ne!(base, run(LockMode::Shared, true));
    assert_ne!(base, run(LockMode::Exclusive, false));
}

/// STYLE habit 9 through `apply`: Open refuses with TooMany once a session holds the
/// maximum number of handles (filled directly, to keep the test fast), and Close frees one.
#[test]
fn open_beyond_the_handle_bound_is_refused() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let first = t.file(s, "/f");
    let template = t.db.handle(s, first).unwrap().clone();
    for _ in 1..sessions::HANDLES_PER_SESSION_MAX {
        t.db.sessions.open(template.clone());
    }
    let again = Harness::open_op(s, "/f", OpenMode::READ, Creation::Never);
    assert_eq!(t.err(again.clone()), Refusal::TooMany);
    t.ok(Op::Close {
        session: s,
        handle: first,
    });
    assert!(matches!(t.ok(again), Outcome::Opened { .. }));
}

/// Chubby §2.6: deleting a locked node ends its lock; holders and waiters are told, and
/// the sequencer is stale, with no lock-delay for the re-created name.
#[test]
fn deleting_a_locked_node_ends_its_lock() {
    let mut t = Harness::new();
    let (a, b) = (t.session("admin"), t.session("admin"));
    let (ha, hb) = (t.file(a, "/l"), t.file(b, "/l"));
    let seq = sequencer_of(t.try_acquire(a, ha, LockMode::Exclusive).unwrap());
    assert_eq!(
        t.acquire(b, hb, LockMode::Exclusive).result,
        Ok(Outcome::Queued)
    );
    let applied = t.run(Op::Delete {
        session: a,
        handle: ha,
    });
    let released = applied.changes.iter().any(|c| {
        matches!(c, Change::LockReleased { cause: ReleaseCause::NodeDeleted, handle, .. } if *handle == ha)
    });
    let ended = applied.changes.iter().any(|c| {
        matches!(c, Change::WaitEnded { reason: WaitEnd::NodeDeleted, handle, .. } if *handle == hb)
    });
    assert!(released && ended, "{:?}", applied.changes);
    assert!(!t.db.check_sequencer(&seq));
    let h = t.file(b, "/l");
    assert!(t.try_acquire(b, h, LockMode::Exclusive).is_ok());
    assert_eq!(t.db.next_deadline(), None);
}

/// PML §5.5: a snapshot names the slot it covers, also when the last slots held no
/// command for the database (empty Paxos values).
#[test]
fn empty_slots_advance_the_snapshot_slot() {
    let mut t = Harness::new();
    t.slot = Slot(t.slot.0 + 5);
    t.db.advance_slot(t.slot);
    let (_, info) = Db::restore(
        &t.db
            .freeze()
            .encode(&[], &chubby_protocol::MemberSets::default()),
    )
    .unwrap();
    assert_eq!(info.slot, t.slot);
    assert_eq!(
        t.run(Op::Noop).result,
        Ok(Outcome::Noop),
        "later slots still apply"
    );
}

// ---------------------------------------------------------------- exactly-once calls

impl Harness {
    /// Applies `op` as the session's call `number`, with `done_below`.
    fn numbered(&mut self, op: Op, number: u64, done_below: u64) -> Applied {
        self.slot = self.slot.next();
        let cmd = Command {
            call: Some(chubby_protocol::client_msg::CallNumber { number, done_below }),
            ..Command::new(self.epoch, self.now, op)
        };
        self.db.apply(self.slot, &cmd)
    }
}

/// A numbered call applied twice (a copy sent again after a fail-over) takes effect once,
/// and the copy gets the first one's answer: a compare-and-swap that won is not told it
/// lost, an exclusive create is not told the file exists, an Acquire is not refused as
/// already held.
#[test]
fn a_numbered_call_sent_twice_takes_effect_once_with_the_first_answer() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    let cas = Op::SetContents {
        session: s,
        handle: h,
        contents: b"one".to_vec(),
        expected: Some(Generation(0)),
    };
    let first = t.numbered(cas.clone(), 1, 1);
    assert!(matches!(first.result, Ok(Outcome::ContentsSet { .. })));
    let again = t.numbered(cas.clone(), 1, 1);
    assert_eq!(
        again.result, first.result,
        "the first answer, not CasMismatch"
    );
    assert!(
        again.changes.is_empty(),
        "nothing changed: {:?}",
        again.changes
    );
    assert_eq!(
        t.db.stat_path("/f").unwrap().content_generation,
        Generation(1)
    );
    // Unnumbered, the same command is a second application (and loses its CAS).
    assert!(matches!(t.err(cas), Refusal::CasMismatch { .. }));

    let create = Harness::open_op(s, "/new", OpenMode::READ_WRITE, Creation::Must);
    let opened = t.numbered(create.clone(), 2, 2);
    assert!(matches!(
        opened.result,
        Ok(Outcome::Opened { created: true, .. })
    ));
    assert_eq!(t.numbered(create, 2, 2).result, opened.result);

    let lock = t.file(s, "/lock");
    let acquire = Op::Acquire {
        session: s,
        handle: lock,
        mode: LockMode::Exclusive,
    };
    let got = t.numbered(acquire.clone(), 3, 3);
    assert!(matches!(got.result, Ok(Outcome::Acquired { .. })));
    assert_eq!(t.numbered(acquire, 3, 3).result, got.result);
    t.db.check_invariants();
}

/// `done_below` frees the records below it, and a late copy of a freed call is refused,
/// never applied again; the records are bounded per session and go with the session.
#[test]
fn call_records_are_freed_by_acknowledgement_bounded_and_end_with_the_session() {
    let mut t = Harness::new();
    let s = t.session("admin");
    let h = t.file(s, "/f");
    let put = |n: u8| Op::SetContents {
        session: s,
        handle: h,
        contents: vec![n],
        expected: None,
    };
    for n in 1..=3u8 {
        assert!(t.numbered(put(n), u64::from(n), 1).result.is_ok());
    }
    assert_eq!(t.db.call_records(), 3);
    // Call 4 says 1..3 were answered: their records go.
    assert!(t.numbered(put(4), 4, 4).result.is_ok());
    assert_eq!(t.db.call_records(), 1);
    let before = t.db.stat_path("/f").unwrap().content_generation;
    let late = t.numbered(put(2), 2, 2);
    assert_eq!(late.result, Err(Refusal::CallForgotten { number: 2 }));
    assert_eq!(
        t.db.stat_path("/f").unwrap().content_generation,
        before,
        "a late copy of an answered call is not applied"
    );
    // A client that never acknowledges is held to the bound.
    let max = calls::CALL_RECORDS_PER_SESSION_MAX;
    for n in 5..5 + max + 10 {
        assert!(t.numbered(put(0), n, 4).result.is_ok());
    }
    assert_eq!(t.db.call_records() as u64, max);
    assert_eq!(
        t.db.call_seen(s, 5),
        calls::Seen::Forgotten,
        "the oldest went over the bound"
    );
    t.db.check_invariants();
    t.ok(Op::CloseSession { session: s });
    assert_eq!(t.db.call_records(), 0, "records go with their session");
    t.db.check_invariants();
}

/// The records are replicated state: in the digest and in snapshots.
#[test]
fn call_records_are_in_the_digest_and_survive_a_snapshot() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    for t in [&mut a, &mut b] {
        let s = t.session("admin");
        t.file(s, "/f");
    }
    let s = SessionId(1);
    let h = HandleId(1);
    let put = Op::SetContents {
        session: s,
        handle: h,
        contents: b"x".to_vec(),
        expected: None,
    };
    assert!(a.numbered(put.clone(), 7, 7).result.is_ok());
    assert!(b.run(put.clone()).result.is_ok());
    assert_ne!(a.db.digest(), b.db.digest(), "a record changes the digest");
    let bytes =
        a.db.freeze()
            .encode(&[NodeId(1)], &chubby_protocol::MemberSets::default());
    let (restored, _) = Db::restore(&bytes).unwrap();
    assert_eq!(restored.digest(), a.db.digest());
    assert!(matches!(
        restored.call_seen(s, 7),
        calls::Seen::Answered(r) if r.is_ok()
    ));
}

/// A backup written by the last format-4 build (before call records) still restores,
/// with no records.
#[test]
fn a_format_4_backup_still_restores() {
    let bytes = include_bytes!("../../tests/data/backup-format4.snap");
    assert_eq!(bytes[8], 4, "the test file is of format 4");
    let (db, _) = Db::restore(bytes).expect("format 4 restores");
    let app = db.stat_path("/ls/svc/app.toml").expect("the file is there");
    assert_eq!(app.content_generation, Generation(1));
    assert_eq!(db.call_records(), 0);
    let again = db
        .freeze()
        .encode(&[NodeId(1)], &chubby_protocol::MemberSets::default());
    assert_eq!(again[8], snapshot::SNAPSHOT_FORMAT);
    assert_eq!(Db::restore(&again).unwrap().0.digest(), db.digest());
}

/// Reopen (Chubby §2.8 handle caching): a kept handle is confirmed only where an Open of
/// the same path with its mode would succeed, and confirming changes nothing.
#[test]
fn reopen_checks_what_an_open_would_and_changes_nothing() {
    let mut t = Harness::new();
    t.acl_file("team", &["alice"]);
    let admin = t.session("admin");
    let d = t.open_with(admin, "/d", |a| {
        a.kind = NodeKind::Directory;
        a.acl = Some(AclNames::all("team"));
    });
    assert!(d.is_ok());
    let alice = t.session("alice");
    let bob = t.session("bob");
    let h = t.file(alice, "/d/f");
    let digest = t.db.digest();
    let stat = t.db.reopen(alice, h, "/d/f").unwrap();
    assert_eq!(stat.kind, NodeKind::File);
    assert_eq!(t.db.digest(), digest, "a Reopen changed the database");
    // Another session's handle, a forged one, a bad path.
    assert_eq!(t.db.reopen(bob, h, "/d/f"), Err(Refusal::BadHandle));
    assert_eq!(
        t.db.reopen(alice, HandleId(9_999), "/d/f"),
        Err(Refusal::BadHandle)
    );
    assert_eq!(t.db.reopen(alice, h, "/d/../f"), Err(Refusal::InvalidPath));
    // Another name than the handle's node.
    t.file(alice, "/d/g");
    assert_eq!(t.db.reopen(alice, h, "/d/g"), Err(Refusal::NotFound));
    // A right revoked, then granted again.
    t.acl_file("team", &["carol"]);
    assert_eq!(
        t.db.reopen(alice, h, "/d/f"),
        Err(Refusal::PermissionDenied)
    );
    t.acl_file("team", &["alice"]);
    assert!(t.db.reopen(alice, h, "/d/f").is_ok());
    // The file replaced by a rename over it: the handle's node is gone from the name.
    t.ok(Op::Rename {
        session: alice,
        from: "/d/g".into(),
        to: "/d/f".into(),
    });
    assert_eq!(t.db.reopen(alice, h, "/d/f"), Err(Refusal::NotFound));
}
