//! A reference model of the database for property tests (sled's `fuzz_model` idea): the
//! same rules as DESIGN §3 and the module docs, written as plainly as possible — vectors
//! and linear scans, no indexes, no `Arc`, no running digests — so that the real `Db` and
//! this model are unlikely to share a bug. `proptests.rs` feeds both the same commands
//! and compares every result, every lock grant and the whole visible state.
//!
//! It reuses only the protocol's name rules (tested on their own) and FNV for checksums.

use chubby_protocol::db::{
    check_name, check_path, FILE_BYTES_MAX, LOCK_DELAY_MS_MAX, NAME_BYTES_MAX,
};
use chubby_protocol::{
    AclNames, AttrChange, Ballot, ContentChecksum, Creation, EventMask, Generation, HandleId,
    InstanceNumber, Instant, LockMode, NodeKind, OpenMode, Posix, Refusal, Sequencer, SessionId,
    Stat, TimeSet, Timespec,
};

use super::sessions::{Handle, HANDLES_PER_SESSION_MAX};
use super::{Command, Db, DbConfig, Digest, Op, OpenArgs, Outcome};

/// What both implementations must agree on after every command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub epoch: Ballot,
    pub nodes: Vec<(String, Stat, Vec<u8>)>,
    /// path, mode (if held), holders, waiters (handle, mode) in order, delay end.
    pub locks: Vec<LockView>,
    pub sessions: Vec<(SessionId, String, Vec<HandleId>)>,
    pub handles: Vec<HandleView>,
}

pub type LockView = (
    String,
    Option<LockMode>,
    Vec<HandleId>,
    Vec<(HandleId, LockMode)>,
    Option<Instant>,
);
pub type HandleView = (
    HandleId,
    SessionId,
    String,
    InstanceNumber,
    OpenMode,
    u64,
    Option<Sequencer>,
);

#[derive(Clone, Debug)]
struct MNode {
    path: String,
    dir: bool,
    eph: bool,
    inst: u64,
    cgen: u64,
    lgen: u64,
    agen: u64,
    data: Vec<u8>,
    acl: AclNames,
    ctime: Instant,
    mtime: Instant,
    mode: u32,
    owner: Option<(u32, u32)>,
    atime_p: Timespec,
    mtime_p: Timespec,
    ctime_p: Timespec,
    eph_children: bool,
}

#[derive(Clone, Debug)]
struct MHandle {
    id: u64,
    session: u64,
    path: String,
    inst: u64,
    mode: OpenMode,
    delay: u64,
    seq: Option<Sequencer>,
}

#[derive(Clone, Debug)]
struct MLock {
    inst: u64,
    path: String,
    mode: LockMode,
    /// (handle, session, lock-delay)
    holders: Vec<(u64, u64, u64)>,
    /// (handle, session, mode, lock-delay)
    waiters: Vec<(u64, u64, LockMode, u64)>,
    until: Option<Instant>,
}

/// The model.
#[derive(Clone, Debug)]
pub struct Model {
    admin: String,
    default_delay: u64,
    epoch: Ballot,
    now: Instant,
    nodes: Vec<MNode>,
    sessions: Vec<(u64, String)>,
    handles: Vec<MHandle>,
    locks: Vec<MLock>,
    next_inst: u64,
    next_session: u64,
    next_handle: u64,
    /// Handles granted a lock during the current command.
    grants: Vec<u64>,
}

type R = Result<Outcome, Refusal>;

fn parent_of(path: &str) -> String {
    let cut = path.rfind('/').unwrap();
    if cut == 0 {
        "/".into()
    } else {
        path[..cut].into()
    }
}

impl Model {
    pub fn new(config: &DbConfig) -> Model {
        let mut m = Model {
            admin: config.admin.clone(),
            default_delay: config.lock_delay_ms_default,
            epoch: Ballot::ZERO,
            now: Instant::ZERO,
            nodes: Vec::new(),
            sessions: Vec::new(),
            handles: Vec::new(),
            locks: Vec::new(),
            next_inst: 1,
            next_session: 0,
            next_handle: 0,
            grants: Vec::new(),
        };
        m.add_node("/", true, false, Vec::new(), AclNames::all("admin"));
        m.add_node("/acl", true, false, Vec::new(), AclNames::all("admin"));
        let admin_file = format!("{}\n", config.admin).into_bytes();
        m.add_node(
            "/acl/admin",
            false,
            false,
            admin_file,
            AclNames::all("admin"),
        );
        m
    }

    fn add_node(&mut self, path: &str, dir: bool, eph: bool, data: Vec<u8>, acl: AclNames) -> u64 {
        let inst = self.next_inst;
        self.next_inst += 1;
        let now = self.now;
        let t = Self::ts(now);
        self.touch_dir(path);
        self.nodes.push(MNode {
            mode: if dir { 0o755 } else { 0o644 },
            owner: None,
            atime_p: t,
            mtime_p: t,
            ctime_p: t,
            eph_children: false,
            path: path.into(),
            dir,
            eph,
            inst,
            cgen: 0,
            lgen: 0,
            agen: 0,
            data,
            acl,
            ctime: now,
            mtime: now,
        });
        inst
    }

    fn ts(t: Instant) -> Timespec {
        Timespec {
            secs: (t.0 / 1000) as i64,
            nanos: (t.0 % 1000) as u32 * 1_000_000,
        }
    }

    /// The parent of `path` gained or lost an entry: its POSIX mtime and ctime are now.
    fn touch_dir(&mut self, path: &str) {
        if path == "/" {
            return;
        }
        let t = Self::ts(self.now);
        let parent = parent_of(path);
        if let Some(p) = self.nodes.iter_mut().find(|n| n.path == parent) {
            p.mtime_p = t;
            p.ctime_p = t;
        }
    }

    /// The stat of node `i`, with its count of child directories.
    fn full_stat(&self, i: usize) -> Stat {
        let mut st = Self::stat(&self.nodes[i]);
        let path = &self.nodes[i].path;
        st.subdirs = self
            .nodes
            .iter()
            .filter(|c| c.dir && c.path != "/" && parent_of(&c.path) == *path)
            .count() as u64;
        st
    }

    fn stat(n: &MNode) -> Stat {
        Stat {
            kind: if n.dir {
                NodeKind::Directory
            } else {
                NodeKind::File
            },
            ephemeral: n.eph,
            instance: InstanceNumber(n.inst),
            content_generation: Generation(n.cgen),
            lock_generation: Generation(n.lgen),
            acl_generation: Generation(n.agen),
            checksum: ContentChecksum::of(&n.data),
            size_bytes: n.data.len() as u64,
            ctime: n.ctime,
            mtime: n.mtime,
            acl: n.acl.clone(),
            posix: Posix {
                mode: n.mode,
                owner: n.owner,
                atime: n.atime_p,
                mtime: n.mtime_p,
                ctime: n.ctime_p,
            },
            ephemeral_children: n.eph_children,
            subdirs: 0,
        }
    }

    fn node(&self, path: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.path == path)
    }

    fn has_children(&self, path: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.path != "/" && parent_of(&n.path) == path)
    }

    fn is_open(&self, inst: u64) -> bool {
        self.handles.iter().any(|h| h.inst == inst)
    }

    fn permits(&self, principal: &str, acl_name: &str) -> bool {
        if principal == self.admin {
            return true;
        }
        if check_name(acl_name).is_err() {
            return false;
        }
        let Some(i) = self.node(&format!("/acl/{acl_name}")) else {
            return false;
        };
        if self.nodes[i].dir {
            return false;
        }
        match std::str::from_utf8(&self.nodes[i].data) {
            Ok(text) => text
                .lines()
                .any(|l| l.strip_suffix('\r').unwrap_or(l) == principal),
            Err(_) => false,
        }
    }

    fn has_mode(&self, principal: &str, acl: &AclNames, mode: OpenMode) -> bool {
        (!mode.read || self.permits(principal, &acl.read))
            && (!mode.write || self.permits(principal, &acl.write))
            && (!mode.change_acl || self.permits(principal, &acl.change_acl))
    }

    fn principal(&self, session: SessionId) -> Result<String, Refusal> {
        self.sessions
            .iter()
            .find(|s| s.0 == session.0)
            .map(|s| s.1.clone())
            .ok_or(Refusal::SessionExpired)
    }

    fn lock(&self, inst: u64) -> Option<&MLock> {
        self.locks.iter().find(|l| l.inst == inst)
    }

    fn lock_mut(&mut self, inst: u64) -> Option<&mut MLock> {
        self.locks.iter_mut().find(|l| l.inst == inst)
    }

    pub fn check_sequencer(&self, s: &Sequencer) -> bool {
        let Some(i) = self.node(&s.path) else {
            return false;
        };
        let n = &self.nodes[i];
        if n.inst != s.instance.0 || n.lgen != s.lock_generation.0 {
            return false;
        }
        self.lock(n.inst)
            .is_some_and(|l| !l.holders.is_empty() && l.mode == s.mode)
    }

    /// (handle index, node index) for a call on a handle.
    fn use_handle(&self, session: SessionId, handle: HandleId) -> Result<(usize, usize), Refusal> {
        self.principal(session)?;
        let hi = self
            .handles
            .iter()
            .position(|h| h.id == handle.0 && h.session == session.0)
            .ok_or(Refusal::BadHandle)?;
        if let Some(seq) = &self.handles[hi].seq {
            if !self.check_sequencer(seq) {
                return Err(Refusal::StaleSequencer);
            }
        }
        let h = &self.handles[hi];
        let ni = self
            .node(&h.path)
            .filter(|&i| self.nodes[i].inst == h.inst)
            .ok_or(Refusal::NotFound)?;
        Ok((hi, ni))
    }

    // ------------------------------------------------------------------ locks

    fn grantable(l: &MLock, mode: LockMode) -> bool {
        if l.holders.is_empty() {
            l.until.is_none()
        } else {
            l.mode == LockMode::Shared && mode == LockMode::Shared
        }
    }

    fn bump_lgen(&mut self, inst: u64) {
        let n = self.nodes.iter_mut().find(|n| n.inst == inst).unwrap();
        n.lgen += 1;
    }

    /// Grants queued waiters as far as possible; drops idle locks.
    fn hand_off(&mut self, inst: u64) {
        loop {
            let Some(l) = self.lock_mut(inst) else { return };
            let Some(&(h, s, mode, delay)) = l.waiters.first() else {
                break;
            };
            if !Self::grantable(l, mode) {
                break;
            }
            l.waiters.remove(0);
            let from_free = l.holders.is_empty();
            l.holders.push((h, s, delay));
            l.mode = mode;
            if from_free {
                self.bump_lgen(inst);
            }
            self.grants.push(h);
        }
        self.locks
            .retain(|l| !(l.holders.is_empty() && l.waiters.is_empty() && l.until.is_none()));
    }

    /// Removes `handle` from the lock; `lost` applies the lock-delay. True if it was in.
    fn leave(&mut self, inst: u64, handle: u64, lost: bool) -> bool {
        let now = self.now;
        let Some(l) = self.lock_mut(inst) else {
            return false;
        };
        let was_in = if let Some(p) = l.holders.iter().position(|x| x.0 == handle) {
            let (_, _, delay) = l.holders.remove(p);
            if lost && delay > 0 {
                let end = now.plus_ms(delay);
                l.until = Some(l.until.map_or(end, |u| u.max(end)));
            }
            true
        } else if let Some(p) = l.waiters.iter().position(|x| x.0 == handle) {
            l.waiters.remove(p);
            true
        } else {
            false
        };
        self.hand_off(inst);
        was_in
    }

    fn expire_delays(&mut self) {
        let now = self.now;
        let mut due: Vec<(Instant, u64)> = self
            .locks
            .iter()
            .filter_map(|l| l.until.filter(|&u| u <= now).map(|u| (u, l.inst)))
            .collect();
        due.sort();
        for (_, inst) in due {
            self.lock_mut(inst).unwrap().until = None;
            self.hand_off(inst);
        }
    }

    // ------------------------------------------------------------------ nodes

    fn delete_node(&mut self, path: &str) {
        let i = self.node(path).unwrap();
        let inst = self.nodes[i].inst;
        self.locks.retain(|l| l.inst != inst);
        self.nodes.remove(i);
        self.touch_dir(path);
    }

    fn reap(&mut self, path: &str) {
        let mut path = path.to_owned();
        while let Some(i) = self.node(&path) {
            let n = &self.nodes[i];
            let busy = self.is_open(n.inst) || (n.dir && self.has_children(&path));
            if !n.eph || busy {
                return;
            }
            self.delete_node(&path);
            path = parent_of(&path);
        }
    }

    fn close_handle(&mut self, id: u64, lost: bool) {
        let p = self.handles.iter().position(|h| h.id == id).unwrap();
        let h = self.handles.remove(p);
        let alive = self
            .node(&h.path)
            .is_some_and(|i| self.nodes[i].inst == h.inst);
        if alive {
            self.leave(h.inst, id, lost);
            self.reap(&h.path);
        }
    }

    // ------------------------------------------------------------------ apply

    /// Applies a command; returns its result and the handles granted a lock.
    pub fn apply(&mut self, cmd: &Command) -> (R, Vec<u64>) {
        self.grants.clear();
        let ok = if let Op::NewEpoch = cmd.op {
            cmd.epoch > self.epoch
        } else {
            cmd.epoch == self.epoch
        };
        if !ok {
            return (
                Err(Refusal::StaleEpoch {
                    current: self.epoch,
                }),
                Vec::new(),
            );
        }
        assert!(cmd.now >= self.now);
        self.now = cmd.now;
        self.expire_delays();
        let r = self.dispatch(cmd);
        let mut grants = self.grants.clone();
        grants.sort_unstable();
        (r, grants)
    }

    fn dispatch(&mut self, cmd: &Command) -> R {
        self.dispatch_op(cmd, &cmd.op)
    }

    /// A call through a handle the master kept in its memory: in the table for the call,
    /// and after it only if the call keeps it (written from the rule, not from `Db`).
    fn with_handle(&mut self, cmd: &Command, id: HandleId, desc: &Handle, op: &Op) -> R {
        let keeps = match op {
            Op::SetContents { handle, .. }
            | Op::Delete { handle, .. }
            | Op::SetAcl { handle, .. }
            | Op::Release { handle, .. }
                if *handle == id =>
            {
                false
            }
            Op::Acquire { handle, .. }
            | Op::TryAcquire { handle, .. }
            | Op::SetSequencer { handle, .. }
                if *handle == id =>
            {
                true
            }
            _ => return Err(Refusal::InvalidArgument),
        };
        if !id.is_volatile() || op.session() != Some(desc.session) {
            return Err(Refusal::InvalidArgument);
        }
        self.principal(desc.session)?;
        let mut inserted = false;
        match self.handles.iter().find(|h| h.id == id.0) {
            Some(h) if h.session == desc.session.0 => {}
            Some(_) => return Err(Refusal::BadHandle),
            None => {
                if desc.sequencer.is_some() {
                    return Err(Refusal::InvalidArgument);
                }
                let node = self
                    .node(&desc.path)
                    .filter(|&i| self.nodes[i].inst == desc.instance.0)
                    .ok_or(Refusal::NotFound)?;
                if self.nodes[node].eph {
                    return Err(Refusal::BadHandle);
                }
                let count = self
                    .handles
                    .iter()
                    .filter(|h| h.session == desc.session.0)
                    .count();
                if count >= HANDLES_PER_SESSION_MAX {
                    return Err(Refusal::TooMany);
                }
                self.handles.push(MHandle {
                    id: id.0,
                    session: desc.session.0,
                    path: desc.path.to_string(),
                    inst: desc.instance.0,
                    mode: desc.mode,
                    delay: desc.lock_delay_ms,
                    seq: None,
                });
                inserted = true;
            }
        }
        let r = self.dispatch_op(cmd, op);
        if inserted && !(keeps && r.is_ok()) {
            if let Some(p) = self.handles.iter().position(|h| h.id == id.0) {
                self.handles.remove(p);
            }
        }
        r
    }

    fn dispatch_op(&mut self, cmd: &Command, op: &Op) -> R {
        match op {
            Op::WithHandle { handle, desc, op } => self.with_handle(cmd, *handle, desc, op),
            Op::OpenKept { handle, args } => self.open_kept(*handle, args),
            Op::NewEpoch => {
                self.epoch = cmd.epoch;
                Ok(Outcome::EpochStarted)
            }
            Op::CreateSession { principal } => self.create_session(principal),
            Op::CloseSession { session } => self.end_session(*session, false),
            Op::ExpireSession { session } => self.end_session(*session, true),
            Op::Open(a) => self.open(a),
            Op::Close { session, handle } => self.close(*session, *handle),
            Op::SetContents {
                session,
                handle,
                contents,
                expected,
            } => self.set_contents(*session, *handle, contents, *expected),
            Op::Delete { session, handle } => self.delete(*session, *handle),
            Op::SetAcl {
                session,
                handle,
                acl,
                expected,
            } => self.set_acl(*session, *handle, acl, *expected),
            Op::Acquire {
                session,
                handle,
                mode,
            } => self.acquire(*session, *handle, *mode, true),
            Op::TryAcquire {
                session,
                handle,
                mode,
            } => self.acquire(*session, *handle, *mode, false),
            Op::Release { session, handle } => self.release(*session, *handle),
            Op::SetSequencer {
                session,
                handle,
                sequencer,
            } => self.set_sequencer(*session, *handle, sequencer.as_ref()),
            Op::Rename { session, from, to } => self.rename(*session, from, to),
            Op::SetAttr {
                session,
                path,
                instance,
                change,
            } => self.set_attr(*session, path, *instance, change),
            Op::Noop => Ok(Outcome::Noop),
            Op::Checksum => Ok(Outcome::Checksum { digest: Digest(0) }),
        }
    }

    fn create_session(&mut self, principal: &str) -> R {
        let bad = principal.is_empty()
            || principal.len() > NAME_BYTES_MAX
            || principal.contains(['\n', '\r', '\0']);
        if bad {
            return Err(Refusal::InvalidArgument);
        }
        self.next_session += 1;
        self.sessions
            .push((self.next_session, principal.to_owned()));
        Ok(Outcome::SessionCreated {
            session: SessionId(self.next_session),
        })
    }

    fn close(&mut self, session: SessionId, handle: HandleId) -> R {
        self.principal(session)?;
        if !self
            .handles
            .iter()
            .any(|h| h.id == handle.0 && h.session == session.0)
        {
            return Err(Refusal::BadHandle);
        }
        self.close_handle(handle.0, false);
        Ok(Outcome::Closed)
    }

    fn release(&mut self, session: SessionId, handle: HandleId) -> R {
        let (_, ni) = self.use_handle(session, handle)?;
        let inst = self.nodes[ni].inst;
        if self.leave(inst, handle.0, false) {
            Ok(Outcome::Released)
        } else {
            Err(Refusal::NotHeld)
        }
    }

    fn set_sequencer(
        &mut self,
        session: SessionId,
        handle: HandleId,
        seq: Option<&Sequencer>,
    ) -> R {
        let (hi, _) = self.use_handle(session, handle)?;
        if seq.is_some_and(|s| !self.check_sequencer(s)) {
            return Err(Refusal::StaleSequencer);
        }
        self.handles[hi].seq = seq.cloned();
        Ok(Outcome::SequencerSet)
    }

    fn end_session(&mut self, session: SessionId, lost: bool) -> R {
        self.principal(session)?;
        let mut ids: Vec<u64> = self
            .handles
            .iter()
            .filter(|h| h.session == session.0)
            .map(|h| h.id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.close_handle(id, lost);
        }
        self.sessions.retain(|s| s.0 != session.0);
        Ok(Outcome::SessionEnded)
    }

    fn open(&mut self, a: &OpenArgs) -> R {
        let principal = self.principal(a.session)?;
        if check_path(&a.path).is_err() {
            return Err(Refusal::InvalidPath);
        }
        let delay = a.lock_delay_ms.unwrap_or(self.default_delay);
        if a.mode.is_empty() || delay > LOCK_DELAY_MS_MAX {
            return Err(Refusal::InvalidArgument);
        }
        let count = self
            .handles
            .iter()
            .filter(|h| h.session == a.session.0)
            .count();
        if count >= HANDLES_PER_SESSION_MAX {
            return Err(Refusal::TooMany);
        }
        let created = match self.node(&a.path) {
            Some(i) => {
                let n = &self.nodes[i];
                if a.creation == Creation::Must {
                    return Err(Refusal::Exists);
                }
                let want_dir = a.kind == NodeKind::Directory;
                if a.creation != Creation::Never && n.dir != want_dir {
                    return Err(if want_dir {
                        Refusal::NotADirectory
                    } else {
                        Refusal::IsADirectory
                    });
                }
                if !self.has_mode(&principal, &n.acl, a.mode) {
                    return Err(Refusal::PermissionDenied);
                }
                false
            }
            None => {
                self.create(a, &principal)?;
                true
            }
        };
        let i = self.node(&a.path).unwrap();
        let inst = self.nodes[i].inst;
        self.next_handle += 1;
        let h = MHandle {
            id: self.next_handle,
            session: a.session.0,
            path: a.path.clone(),
            inst,
            mode: a.mode,
            delay,
            seq: None,
        };
        self.handles.push(h);
        let stat = self.full_stat(i);
        Ok(Outcome::Opened {
            handle: HandleId(self.next_handle),
            created,
            stat,
        })
    }

    /// An Open whose handle the master keeps: as `open`, under `id`, and in the table
    /// only if the node is ephemeral (written from the rule, not from `Db`).
    fn open_kept(&mut self, id: HandleId, a: &OpenArgs) -> R {
        if !id.is_volatile() || a.events != EventMask::NONE || a.ephemeral {
            return Err(Refusal::InvalidArgument);
        }
        if self.handles.iter().any(|h| h.id == id.0) {
            return Err(Refusal::BadHandle);
        }
        let numbered = self.next_handle;
        let Outcome::Opened { created, stat, .. } = self.open(a)? else {
            unreachable!("open answers Opened")
        };
        self.next_handle = numbered;
        let mut h = self.handles.pop().expect("open added a handle");
        if stat.ephemeral {
            h.id = id.0;
            self.handles.push(h);
        }
        Ok(Outcome::Opened {
            handle: id,
            created,
            stat,
        })
    }

    fn create(&mut self, a: &OpenArgs, principal: &str) -> Result<(), Refusal> {
        if a.creation == Creation::Never {
            return Err(Refusal::NotFound);
        }
        let parent = parent_of(&a.path);
        let pi = self.node(&parent).ok_or(Refusal::NotFound)?;
        if !self.nodes[pi].dir {
            return Err(Refusal::NotADirectory);
        }
        if !self.permits(principal, &self.nodes[pi].acl.write) {
            return Err(Refusal::PermissionDenied);
        }
        let dir = a.kind == NodeKind::Directory;
        if dir && !a.contents.is_empty() {
            return Err(Refusal::InvalidArgument);
        }
        if a.contents.len() > FILE_BYTES_MAX {
            return Err(Refusal::TooLarge);
        }
        if a.create_mode.is_some_and(|m| m > 0o7777) {
            return Err(Refusal::InvalidArgument);
        }
        let acl = a.acl.clone().unwrap_or_else(|| self.nodes[pi].acl.clone());
        if [&acl.read, &acl.write, &acl.change_acl]
            .iter()
            .any(|n| check_name(n).is_err())
        {
            return Err(Refusal::InvalidArgument);
        }
        if !self.has_mode(principal, &acl, a.mode) {
            return Err(Refusal::PermissionDenied);
        }
        let eph = a.ephemeral || self.nodes[pi].eph_children;
        self.add_node(&a.path, dir, eph, a.contents.clone(), acl);
        let n = self.nodes.last_mut().unwrap();
        if let Some(m) = a.create_mode {
            n.mode = m;
        }
        n.owner = a.create_owner;
        Ok(())
    }

    fn set_contents(
        &mut self,
        s: SessionId,
        h: HandleId,
        data: &[u8],
        expected: Option<Generation>,
    ) -> R {
        let principal = self.principal(s)?;
        let (hi, ni) = self.use_handle(s, h)?;
        let n = &self.nodes[ni];
        if n.dir {
            return Err(Refusal::IsADirectory);
        }
        if !self.handles[hi].mode.write || !self.permits(&principal, &n.acl.write) {
            return Err(Refusal::PermissionDenied);
        }
        if data.len() > FILE_BYTES_MAX {
            return Err(Refusal::TooLarge);
        }
        if expected.is_some_and(|e| e.0 != n.cgen) {
            return Err(Refusal::CasMismatch {
                current: Generation(n.cgen),
            });
        }
        let now = self.now;
        let n = &mut self.nodes[ni];
        n.data = data.to_vec();
        n.cgen += 1;
        n.mtime = now;
        n.mtime_p = Self::ts(now);
        n.ctime_p = Self::ts(now);
        Ok(Outcome::ContentsSet {
            stat: self.full_stat(ni),
        })
    }

    fn delete(&mut self, s: SessionId, h: HandleId) -> R {
        let principal = self.principal(s)?;
        let (hi, ni) = self.use_handle(s, h)?;
        let path = self.nodes[ni].path.clone();
        if path == "/" {
            return Err(Refusal::InvalidArgument);
        }
        if !self.handles[hi].mode.write || !self.permits(&principal, &self.nodes[ni].acl.write) {
            return Err(Refusal::PermissionDenied);
        }
        if self.has_children(&path) {
            return Err(Refusal::NotEmpty);
        }
        self.delete_node(&path);
        self.reap(&parent_of(&path));
        Ok(Outcome::Deleted)
    }

    fn set_acl(
        &mut self,
        s: SessionId,
        h: HandleId,
        acl: &AclNames,
        expected: Option<Generation>,
    ) -> R {
        let principal = self.principal(s)?;
        let (hi, ni) = self.use_handle(s, h)?;
        if !self.handles[hi].mode.change_acl
            || !self.permits(&principal, &self.nodes[ni].acl.change_acl)
        {
            return Err(Refusal::PermissionDenied);
        }
        if [&acl.read, &acl.write, &acl.change_acl]
            .iter()
            .any(|n| check_name(n).is_err())
        {
            return Err(Refusal::InvalidArgument);
        }
        let n = &mut self.nodes[ni];
        if expected.is_some_and(|e| e.0 != n.agen) {
            return Err(Refusal::CasMismatch {
                current: Generation(n.agen),
            });
        }
        n.acl = acl.clone();
        n.agen += 1;
        n.ctime_p = Self::ts(self.now);
        Ok(Outcome::AclSet {
            stat: self.full_stat(ni),
        })
    }

    fn acquire(&mut self, s: SessionId, h: HandleId, mode: LockMode, block: bool) -> R {
        let principal = self.principal(s)?;
        let (hi, ni) = self.use_handle(s, h)?;
        if !self.handles[hi].mode.write || !self.permits(&principal, &self.nodes[ni].acl.write) {
            return Err(Refusal::PermissionDenied);
        }
        let (inst, path, delay) = (
            self.nodes[ni].inst,
            self.nodes[ni].path.clone(),
            self.handles[hi].delay,
        );
        if let Some(l) = self.lock(inst) {
            let involved =
                l.holders.iter().any(|x| x.0 == h.0) || l.waiters.iter().any(|x| x.0 == h.0);
            if involved {
                return Err(Refusal::AlreadyHeld);
            }
        }
        if self.lock(inst).is_none() {
            let fresh = MLock {
                inst,
                path: path.clone(),
                mode,
                holders: vec![],
                waiters: vec![],
                until: None,
            };
            self.locks.push(fresh);
        }
        let l = self.lock_mut(inst).unwrap();
        if l.waiters.is_empty() && Self::grantable(l, mode) {
            let from_free = l.holders.is_empty();
            l.holders.push((h.0, s.0, delay));
            l.mode = mode;
            if from_free {
                self.bump_lgen(inst);
            }
            self.grants.push(h.0);
            let lgen = self.nodes[self.node(&path).unwrap()].lgen;
            let sequencer = Sequencer {
                path,
                instance: InstanceNumber(inst),
                mode,
                lock_generation: Generation(lgen),
            };
            return Ok(Outcome::Acquired { sequencer });
        }
        let refusal = match (l.holders.is_empty(), l.until) {
            (true, Some(until)) => Refusal::LockDelayed { until },
            _ => Refusal::WouldBlock,
        };
        if block {
            l.waiters.push((h.0, s.0, mode, delay));
            Ok(Outcome::Queued)
        } else {
            Err(refusal)
        }
    }

    fn rename(&mut self, s: SessionId, from: &str, to: &str) -> R {
        let principal = self.principal(s)?;
        if check_path(from).is_err() || check_path(to).is_err() {
            return Err(Refusal::InvalidPath);
        }
        let si = self.node(from).ok_or(Refusal::NotFound)?;
        if from == "/" || to == "/" {
            return Err(Refusal::InvalidArgument);
        }
        let spi = self.node(&parent_of(from)).unwrap();
        if !self.permits(&principal, &self.nodes[si].acl.write)
            || !self.permits(&principal, &self.nodes[spi].acl.write)
        {
            return Err(Refusal::PermissionDenied);
        }
        let inside = |p: &str, root: &str| p == root || p.starts_with(&format!("{root}/"));
        let moving: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| inside(&self.nodes[i].path, from))
            .collect();
        if moving
            .iter()
            .any(|&i| self.lock(self.nodes[i].inst).is_some())
        {
            return Err(Refusal::Locked);
        }
        if from == to {
            return Ok(Outcome::Renamed {
                stat: self.full_stat(si),
            });
        }
        if self.nodes[si].dir && to.starts_with(&format!("{from}/")) {
            return Err(Refusal::InvalidArgument);
        }
        let sdir = self.nodes[si].dir;
        if let Some(ti) = self.node(to) {
            let t = &self.nodes[ti];
            if sdir && !t.dir {
                return Err(Refusal::NotADirectory);
            }
            if !sdir && t.dir {
                return Err(Refusal::IsADirectory);
            }
            if t.dir && self.has_children(to) {
                return Err(Refusal::NotEmpty);
            }
            if !self.permits(&principal, &t.acl.write) {
                return Err(Refusal::PermissionDenied);
            }
            if self.lock(t.inst).is_some() {
                return Err(Refusal::Locked);
            }
        }
        let pi = self.node(&parent_of(to)).ok_or(Refusal::NotFound)?;
        if !self.nodes[pi].dir {
            return Err(Refusal::NotADirectory);
        }
        if !self.permits(&principal, &self.nodes[pi].acl.write) {
            return Err(Refusal::PermissionDenied);
        }
        if self.node(to).is_some() {
            self.delete_node(to);
        }
        let mut moving: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| inside(&n.path, from))
            .map(|n| n.path.clone())
            .collect();
        moving.sort();
        let t = Self::ts(self.now);
        for (k, old_path) in moving.iter().enumerate() {
            let i = self.node(old_path).unwrap();
            let old = self.nodes[i].inst;
            let inst = self.next_inst;
            self.next_inst += 1;
            let new_path = format!("{to}{}", &old_path[from.len()..]);
            let n = &mut self.nodes[i];
            n.inst = inst;
            n.path = new_path.clone();
            if k == 0 {
                n.ctime_p = t;
            }
            for h in self.handles.iter_mut().filter(|h| h.inst == old) {
                h.inst = inst;
                h.path = new_path.clone();
            }
        }
        self.touch_dir(from);
        self.touch_dir(to);
        let stat = self.full_stat(self.node(to).unwrap());
        self.reap(&parent_of(from));
        Ok(Outcome::Renamed { stat })
    }

    fn set_attr(
        &mut self,
        s: SessionId,
        path: &str,
        instance: Option<InstanceNumber>,
        c: &AttrChange,
    ) -> R {
        let principal = self.principal(s)?;
        if check_path(path).is_err() {
            return Err(Refusal::InvalidPath);
        }
        let i = self.node(path).ok_or(Refusal::NotFound)?;
        if instance.is_some_and(|x| x.0 != self.nodes[i].inst) {
            return Err(Refusal::NotFound);
        }
        if !self.permits(&principal, &self.nodes[i].acl.write) {
            return Err(Refusal::PermissionDenied);
        }
        let bad_time =
            |t: Option<TimeSet>| matches!(t, Some(TimeSet::At(ts)) if ts.nanos >= 1_000_000_000);
        if c.mode.is_some_and(|m| m > 0o7777) || bad_time(c.atime) || bad_time(c.mtime) {
            return Err(Refusal::InvalidArgument);
        }
        if c.ephemeral_children.is_some() && !self.nodes[i].dir {
            return Err(Refusal::NotADirectory);
        }
        let now = Self::ts(self.now);
        let at = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(ts) => ts,
        };
        let n = &mut self.nodes[i];
        if let Some(m) = c.mode {
            n.mode = m;
        }
        if let Some(o) = c.owner {
            n.owner = Some(o);
        }
        if let Some(e) = c.ephemeral_children {
            n.eph_children = e;
        }
        n.ctime_p = now;
        if let Some(t) = c.atime {
            n.atime_p = at(t);
        }
        if let Some(t) = c.mtime {
            n.mtime_p = at(t);
        }
        Ok(Outcome::AttrsSet {
            stat: self.full_stat(i),
        })
    }

    // ------------------------------------------------------------------ views

    pub fn view(&self) -> View {
        let mut nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.path.clone(),
                    self.full_stat(self.node(&n.path).unwrap()),
                    n.data.clone(),
                )
            })
            .collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut locks: Vec<LockView> = self
            .locks
            .iter()
            .map(|l| {
                let mut holders: Vec<HandleId> = l.holders.iter().map(|x| HandleId(x.0)).collect();
                holders.sort();
                let mode = (!l.holders.is_empty()).then_some(l.mode);
                let waiters = l.waiters.iter().map(|w| (HandleId(w.0), w.2)).collect();
                (l.path.clone(), mode, holders, waiters, l.until)
            })
            .collect();
        locks.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, p)| {
                let mut hs: Vec<HandleId> = self
                    .handles
                    .iter()
                    .filter(|h| h.session == *id)
                    .map(|h| HandleId(h.id))
                    .collect();
                hs.sort();
                (SessionId(*id), p.clone(), hs)
            })
            .collect();
        sessions.sort_by_key(|s| s.0);
        let mut handles: Vec<HandleView> = self
            .handles
            .iter()
            .map(|h| {
                let (id, s, inst) = (HandleId(h.id), SessionId(h.session), InstanceNumber(h.inst));
                (id, s, h.path.clone(), inst, h.mode, h.delay, h.seq.clone())
            })
            .collect();
        handles.sort_by_key(|h| h.0);
        View {
            epoch: self.epoch,
            nodes,
            locks,
            sessions,
            handles,
        }
    }
}

/// The same view of the real database.
pub fn view_of(db: &Db) -> View {
    let nodes = db
        .ns
        .iter()
        .map(|(p, n)| (p.to_string(), n.stat(), n.contents.to_vec()))
        .collect();
    let mut locks: Vec<LockView> = db
        .locks
        .iter()
        .map(|(_, l)| {
            let holders: Vec<HandleId> = l.holders.keys().copied().collect();
            let mode = (!l.holders.is_empty()).then_some(l.mode);
            let waiters = l.waiters.iter().map(|w| (w.handle, w.mode)).collect();
            (l.path.to_string(), mode, holders, waiters, l.delayed_until)
        })
        .collect();
    locks.sort_by(|a, b| a.0.cmp(&b.0));
    let sessions = db
        .sessions
        .iter_sessions()
        .map(|(id, s)| {
            (
                *id,
                s.principal.clone(),
                s.handles.iter().copied().collect(),
            )
        })
        .collect();
    let handles = db
        .sessions
        .iter_handles()
        .map(|(id, h)| {
            (
                *id,
                h.session,
                h.path.to_string(),
                h.instance,
                h.mode,
                h.lock_delay_ms,
                h.sequencer.clone(),
            )
        })
        .collect();
    View {
        epoch: db.epoch,
        nodes,
        locks,
        sessions,
        handles,
    }
}
