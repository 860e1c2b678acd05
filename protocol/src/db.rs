//! What clients can see of the replicated database (DESIGN §3; Chubby §2.3–2.6).
//!
//! These types cross the wire: in database commands (inside Paxos values), in replies to
//! clients, and in sequencers that clients hand to other services. The database itself
//! lives in `chubby-server` (`server/src/db`); this module only names its vocabulary and
//! its limits, so that a client can check a path or a size before it sends anything.
//!
//! # Paths
//! A path is `/` (the root) or `/` followed by names joined by `/`. A name is UTF-8 (the
//! `String` type enforces it, also when decoding), 1–[`NAME_BYTES_MAX`] bytes, contains no
//! `/` and no NUL, and is neither `.` nor `..`. There are no links, so every node has
//! exactly one path (Chubby §2.3).

use bincode::{Decode, Encode};

use crate::time::Instant;

/// The largest file, in bytes (Chubby §4.5: 256 kBytes).
pub const FILE_BYTES_MAX: usize = 256 * 1024;
/// The longest name (one path component), in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// The longest path, in bytes. The paper states no bound; this one keeps a command with a
/// maximal path far below a frame.
pub const PATH_BYTES_MAX: usize = 4096;
/// The lock-delay a handle gets when it names none (DESIGN §7; the paper gives no default).
pub const LOCK_DELAY_MS_DEFAULT: u64 = 15_000;
/// The largest lock-delay a client may ask for (Chubby §2.4: "currently one minute").
pub const LOCK_DELAY_MS_MAX: u64 = 60_000;
/// The directory that holds ACL files (Chubby §2.3: "a well-known part of the cell's
/// local name space").
pub const ACL_DIR: &str = "/acl";

/// The permission bits a node's [`Posix::mode`] may hold (`S_ISUID|S_ISGID|S_ISVTX|0777`).
pub const MODE_BITS: u32 = 0o7777;
/// The mode of a file created without one (by the library or the CLI).
pub const FILE_MODE_DEFAULT: u32 = 0o644;
/// The mode of a directory created without one.
pub const DIR_MODE_DEFAULT: u32 = 0o755;

/// Start of every database snapshot and backup (the layout is in chubby-server's
/// `db::snapshot`; `chubby cell restore` checks the frame before creating anything).
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CHBYSNAP";
/// The snapshot format this build writes and reads (5: the database carries the outcomes
/// of numbered calls, for exactly-once calls; 4: the creator's Paxos member sets ride
/// along, so a replica that installs the snapshot knows the membership of the slots it
/// skipped).
pub const SNAPSHOT_FORMAT: u8 = 5;
/// The oldest snapshot format this build still reads (format 4 has no call records: they
/// load as none; format 3 has no member sets either: they load as unknown; format 2 has
/// no POSIX attributes and no ephemeral-children marker either: they load as the
/// defaults).
pub const SNAPSHOT_FORMAT_OLDEST: u8 = 2;
/// The largest snapshot body accepted.
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 31;

const _: () = assert!(LOCK_DELAY_MS_DEFAULT <= LOCK_DELAY_MS_MAX);
// A maximal path plus a maximal file must fit in one frame with room for the rest.
const _: () = assert!(PATH_BYTES_MAX + FILE_BYTES_MAX < crate::codec::FRAME_BYTES_MAX / 2);

/// A client session, allocated by the database when the session is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct SessionId(pub u64);

/// An open handle. Never reused in a session. Two kinds (docs/sessions.md "Handles"):
/// - allocated by the database at an Open that goes through Paxos (creating a node, an
///   ephemeral node, or asking for events): a counter in the replicated state;
/// - allocated by the master in its memory only, for an Open of an existing node (Chubby
///   §2.9): [`HandleId::VOLATILE`] is set, and the master's epoch is in the bits below it,
///   so that two masters never hand out the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct HandleId(pub u64);

impl HandleId {
    /// The bit of a handle kept in the master's memory only; the database's counter never
    /// reaches it.
    pub const VOLATILE: u64 = 1 << 63;

    /// True for a handle the master keeps in its memory (see [`HandleId`]).
    #[must_use]
    pub fn is_volatile(self) -> bool {
        self.0 & Self::VOLATILE != 0
    }
}

/// A node's instance number: greater than that of any earlier node, so in particular
/// greater than that of any earlier node with the same name (Chubby §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct InstanceNumber(pub u64);

/// A content, lock or ACL generation number: only ever increases for one node instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Generation(pub u64);

impl Generation {
    /// The next generation.
    #[must_use]
    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

/// A 64-bit checksum of a file's contents: FNV-1a 64 ([`ContentChecksum::of`]). The
/// algorithm is part of the wire contract, since clients and mirrors compare checksums
/// taken in different places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct ContentChecksum(pub u64);

impl ContentChecksum {
    /// FNV-1a 64 of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> ContentChecksum {
        ContentChecksum(fnv1a64(FNV_OFFSET, bytes))
    }
}

/// The FNV-1a 64 offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a 64 hash from `state` over `bytes`.
#[must_use]
pub fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum NodeKind {
    /// Holds bytes, read and written whole.
    File,
    /// Holds children.
    Directory,
}

/// The two lock modes (Chubby §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum LockMode {
    /// One holder (writer).
    Exclusive,
    /// Any number of holders (readers).
    Shared,
}

/// What a handle may do, fixed at Open and checked against the node's ACLs then (Chubby
/// §2.6: "reading; writing and locking; changing the ACL").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct OpenMode {
    /// Read contents, stat, list children.
    pub read: bool,
    /// Write contents, delete, lock.
    pub write: bool,
    /// Change the ACL names.
    pub change_acl: bool,
}

impl OpenMode {
    /// Read only.
    pub const READ: OpenMode = OpenMode {
        read: true,
        write: false,
        change_acl: false,
    };
    /// Read and write (and lock).
    pub const READ_WRITE: OpenMode = OpenMode {
        read: true,
        write: true,
        change_acl: false,
    };
    /// Everything.
    pub const ALL: OpenMode = OpenMode {
        read: true,
        write: true,
        change_acl: true,
    };

    /// True if no right is asked for.
    #[must_use]
    pub fn is_empty(self) -> bool {
        !self.read && !self.write && !self.change_acl
    }
}

/// Whether Open may or must create the node (Chubby §2.6: "should (or must)").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Creation {
    /// Open an existing node only.
    Never,
    /// Create it if it is missing (`O_CREAT`).
    IfMissing,
    /// Create it; fail if it exists (`O_CREAT|O_EXCL`).
    Must,
}

/// The three ACL names of a node: each names a file under [`ACL_DIR`] listing the
/// principals allowed (Chubby §2.3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct AclNames {
    /// Who may read.
    pub read: String,
    /// Who may write, delete and lock.
    pub write: String,
    /// Who may change these names.
    pub change_acl: String,
}

impl AclNames {
    /// All three set to `name`.
    #[must_use]
    pub fn all(name: &str) -> AclNames {
        AclNames {
            read: name.to_owned(),
            write: name.to_owned(),
            change_acl: name.to_owned(),
        }
    }
}

/// A token describing a lock just after it was acquired (Chubby §2.4). It is valid while
/// the lock on that node instance is held in that mode and that lock generation.
///
/// Beyond the paper's name, mode and generation, it carries the node's instance number:
/// lock generations restart for a re-created node, so without it a token from a deleted
/// node could pass for one of its successor.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Sequencer {
    /// The locked node.
    pub path: String,
    /// Its instance number.
    pub instance: InstanceNumber,
    /// The mode the lock was held in.
    pub mode: LockMode,
    /// The lock generation at acquisition.
    pub lock_generation: Generation,
}

/// The prefix of a sequencer token's text form (its version).
pub const SEQUENCER_TOKEN_PREFIX: &str = "chubby-seq1:";

/// Why a sequencer token's text does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a chubby sequencer token ({0})")]
pub struct TokenError(&'static str);

impl Sequencer {
    /// The sequencer as one opaque line of text (for `CHUBBY_SEQUENCER` and for handing
    /// to other services): [`SEQUENCER_TOKEN_PREFIX`] and the hex of its wire encoding.
    #[must_use]
    pub fn to_token(&self) -> String {
        let bytes = crate::codec::encode(self).unwrap_or_default();
        let mut out = String::with_capacity(SEQUENCER_TOKEN_PREFIX.len() + 2 * bytes.len());
        out.push_str(SEQUENCER_TOKEN_PREFIX);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Parses [`Sequencer::to_token`]'s text. Only the form is checked here; whether the
    /// lock is still held in that generation is CheckSequencer's question.
    ///
    /// # Errors
    /// A wrong prefix, bad hex, or bytes that are not a sequencer.
    pub fn from_token(text: &str) -> Result<Sequencer, TokenError> {
        let hex = text
            .trim()
            .strip_prefix(SEQUENCER_TOKEN_PREFIX)
            .ok_or(TokenError("wrong prefix"))?;
        if hex.len() % 2 != 0 || hex.len() > 2 * (PATH_BYTES_MAX + 64) {
            return Err(TokenError("bad length"));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| TokenError("bad hex"))?;
        let seq: Sequencer =
            crate::codec::decode(&bytes).map_err(|_| TokenError("bad contents"))?;
        check_path(&seq.path).map_err(|_| TokenError("bad path"))?;
        Ok(seq)
    }
}

/// A POSIX time: seconds and nanoseconds since the Unix epoch (`struct timespec`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Timespec {
    /// Seconds; negative before 1970.
    pub secs: i64,
    /// Nanoseconds, below 10⁹.
    pub nanos: u32,
}

impl Timespec {
    /// The database's time stamp (wall-clock milliseconds at the master) as a timespec.
    #[must_use]
    pub fn from_instant(t: Instant) -> Timespec {
        let secs = i64::try_from(t.0 / 1000).unwrap_or(i64::MAX);
        Timespec {
            secs,
            nanos: u32::try_from(t.0 % 1000).unwrap_or(0) * 1_000_000,
        }
    }

    /// True if `nanos` is in range.
    #[must_use]
    pub fn is_valid(self) -> bool {
        self.nanos < 1_000_000_000
    }
}

/// What POSIX tools see of a node beyond Chubby's metadata (docs/mount.md, "Modes, owners
/// and times"). These are labels kept for tools (`stat`, `cp -a`, `tar`, `rsync`, `make`)
/// and enforced by each machine's kernel for its local users; Chubby's ACLs stay the
/// cell's access control, checked by the master on every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Posix {
    /// Permission bits (within [`MODE_BITS`]).
    pub mode: u32,
    /// Owner and group ids; `None` for nodes made without (by the library or the CLI),
    /// which a mount shows as owned by the user running it.
    pub owner: Option<(u32, u32)>,
    /// Last access, as set by `utimensat` (reads do not update it: no write per read).
    pub atime: Timespec,
    /// Last change of the contents, or of the entries of a directory, or as set.
    pub mtime: Timespec,
    /// Last change of anything about the node (POSIX ctime, not Chubby's creation time).
    pub ctime: Timespec,
}

impl Posix {
    /// The attributes of a node of `kind` created at `now` with `mode` and `owner` (the
    /// default mode for `None`).
    #[must_use]
    pub fn new(
        kind: NodeKind,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        now: Instant,
    ) -> Posix {
        let t = Timespec::from_instant(now);
        let mode = mode.unwrap_or(match kind {
            NodeKind::File => FILE_MODE_DEFAULT,
            NodeKind::Directory => DIR_MODE_DEFAULT,
        });
        Posix {
            mode: mode & MODE_BITS,
            owner,
            atime: t,
            mtime: t,
            ctime: t,
        }
    }
}

/// A time to set with [`AttrChange`] (`utimensat`'s `UTIME_NOW` or a given time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum TimeSet {
    /// The master's time stamp of the change.
    Now,
    /// This time.
    At(Timespec),
}

/// What a SetAttr changes; `None` leaves a field as it is. Every change also sets the
/// node's POSIX ctime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct AttrChange {
    /// New permission bits (within [`MODE_BITS`]).
    pub mode: Option<u32>,
    /// New owner and group ids.
    pub owner: Option<(u32, u32)>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// Directories only: whether nodes created in it are ephemeral, from any client.
    pub ephemeral_children: Option<bool>,
}

impl AttrChange {
    /// True if the arguments are well formed (mode bits, nanoseconds).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        let time_ok = |t: Option<TimeSet>| match t {
            Some(TimeSet::At(ts)) => ts.is_valid(),
            Some(TimeSet::Now) | None => true,
        };
        self.mode.is_none_or(|m| m & !MODE_BITS == 0) && time_ok(self.atime) && time_ok(self.mtime)
    }
}

/// A node's metadata (Chubby §2.3), as GetStat returns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Stat {
    /// File or directory.
    pub kind: NodeKind,
    /// Deleted automatically when unused.
    pub ephemeral: bool,
    /// Instance number.
    pub instance: InstanceNumber,
    /// Bumped by every write of the contents (files; 0 for directories).
    pub content_generation: Generation,
    /// Bumped each time the lock goes from free to held.
    pub lock_generation: Generation,
    /// Bumped by every SetAcl.
    pub acl_generation: Generation,
    /// Checksum of the contents.
    pub checksum: ContentChecksum,
    /// Length of the contents in bytes.
    pub size_bytes: u64,
    /// Creation time (master-stamped).
    pub ctime: Instant,
    /// Time of the last content write; equal to `ctime` for directories (Chubby §2.3 keeps
    /// no directory modified times).
    pub mtime: Instant,
    /// The ACL names.
    pub acl: AclNames,
    /// Modes, owners and POSIX times (labels for tools; ACLs decide access).
    pub posix: Posix,
    /// Directories: nodes created in it are ephemeral, whoever creates them.
    pub ephemeral_children: bool,
    /// Directories: how many of its children are directories (a directory's link count
    /// is two more, as on a local filesystem).
    pub subdirs: u64,
}

/// Why a path or name is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path is not absolute")]
    NotAbsolute,
    /// The path is longer than [`PATH_BYTES_MAX`].
    #[error("path longer than {PATH_BYTES_MAX} bytes")]
    PathTooLong,
    /// An empty name: `//`, a trailing `/`, or an empty string.
    #[error("empty name")]
    EmptyName,
    /// A name longer than [`NAME_BYTES_MAX`].
    #[error("name longer than {NAME_BYTES_MAX} bytes")]
    NameTooLong,
    /// A name containing NUL.
    #[error("name contains NUL")]
    Nul,
    /// A name containing `/` (only possible for a bare name).
    #[error("name contains '/'")]
    Slash,
    /// The name `.` or `..`.
    #[error("name is '.' or '..'")]
    Dots,
}

/// Checks one name (a path component, or an ACL name).
///
/// # Errors
/// The first rule the name breaks.
pub fn check_name(name: &str) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::EmptyName);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(PathError::NameTooLong);
    }
    if name.contains('\0') {
        return Err(PathError::Nul);
    }
    if name.contains('/') {
        return Err(PathError::Slash);
    }
    if name == "." || name == ".." {
        return Err(PathError::Dots);
    }
    Ok(())
}

/// Checks a whole path; `/` is the root and is valid.
///
/// # Errors
/// The first rule the path breaks.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.len() > PATH_BYTES_MAX {
        return Err(PathError::PathTooLong);
    }
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if rest.is_empty() {
        return Ok(());
    }
    rest.split('/').try_for_each(check_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chubby §2.3 naming, DESIGN §3: each kind of bad name is refused with its reason.
    #[test]
    fn path_rules() {
        assert_eq!(check_path("/"), Ok(()));
        assert_eq!(check_path("/a/b"), Ok(()));
        assert_eq!(check_path("/é/ünï"), Ok(()));
        assert_eq!(check_path(""), Err(PathError::NotAbsolute));
        assert_eq!(check_path("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(check_path("/a/"), Err(PathError::EmptyName));
        assert_eq!(check_path("/a//b"), Err(PathError::EmptyName));
        assert_eq!(check_path("/a\0b"), Err(PathError::Nul));
        assert_eq!(check_path("/a/."), Err(PathError::Dots));
        assert_eq!(check_path("/../a"), Err(PathError::Dots));
        assert_eq!(check_path("/...").map_err(|_| ()), Ok(()));
        let long = format!("/{}", "x".repeat(NAME_BYTES_MAX + 1));
        assert_eq!(check_path(&long), Err(PathError::NameTooLong));
        let ok = format!("/{}", "x".repeat(NAME_BYTES_MAX));
        assert_eq!(check_path(&ok), Ok(()));
        let deep = "/x".repeat(PATH_BYTES_MAX / 2 + 1);
        assert_eq!(check_path(&deep), Err(PathError::PathTooLong));
        assert_eq!(check_name("a/b"), Err(PathError::Slash));
    }

    #[test]
    fn sequencer_tokens_round_trip_and_forgeries_are_refused() {
        let seq = Sequencer {
            path: "/lock/a".into(),
            instance: InstanceNumber(7),
            mode: LockMode::Exclusive,
            lock_generation: Generation(3),
        };
        let token = seq.to_token();
        assert!(token.starts_with(SEQUENCER_TOKEN_PREFIX));
        assert_eq!(Sequencer::from_token(&token), Ok(seq));
        assert!(Sequencer::from_token("chubby-seq1:zz").is_err());
        assert!(Sequencer::from_token("other:00").is_err());
        assert!(Sequencer::from_token(&token[..token.len() - 2]).is_err());
    }

    /// The checksum is FNV-1a 64 (a wire contract): check the published test vectors.
    #[test]
    fn checksum_is_fnv1a64() {
        assert_eq!(ContentChecksum::of(b"").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(ContentChecksum::of(b"a").0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(ContentChecksum::of(b"foobar").0, 0x8594_4171_f739_67e8);
    }
}

/// The arguments of Open (Chubby §2.6): what a client sends and what the master proposes
/// as the database command, one type for both.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct OpenArgs {
    /// The caller's session.
    pub session: SessionId,
    /// Absolute path of the node.
    pub path: String,
    /// The rights the handle needs; each is checked against the node's ACLs.
    pub mode: OpenMode,
    /// Whether the node may or must be created.
    pub creation: Creation,
    /// Kind of node to create (an existing node of the other kind is refused unless
    /// `creation` is [`Creation::Never`]).
    pub kind: NodeKind,
    /// Create it ephemeral.
    pub ephemeral: bool,
    /// Initial contents of a created file.
    pub contents: Vec<u8>,
    /// ACL names of a created node; `None` inherits the parent's.
    pub acl: Option<AclNames>,
    /// The handle's lock-delay; `None` takes the cell default.
    pub lock_delay_ms: Option<u64>,
    /// The events the handle is to deliver (Chubby §2.5).
    pub events: crate::events::EventMask,
    /// Permission bits of a created node; `None` takes the default for its kind.
    pub create_mode: Option<u32>,
    /// Owner and group of a created node.
    pub create_owner: Option<(u32, u32)>,
}
