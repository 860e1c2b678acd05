//! The inode table of a mount (pure: no I/O, no clock).
//!
//! # One kernel inode per version of a file
//! The kernel keeps one page cache and one `i_size` per inode, shared by every descriptor
//! open on it, and serves reads from them without asking the daemon. If an inode stood for
//! a file across writes, a reader's second `read(2)` could meet pages of a newer version
//! after its first met the old one, and a writer's `O_TRUNC` or growing writes would set
//! the `i_size` every reader on the machine is clamped to. So (docs/mount.md, "Atomicity"):
//! - a **version** inode stands for one version of one file, `(instance, content
//!   generation)`: its attributes and contents never change, so its pages and attributes
//!   may be cached for as long as the kernel likes, and a descriptor opened on it reads
//!   exactly that version to the end. LOOKUP hands out the *current* version's inode; a
//!   write makes a new version and so a new inode, and since entries are never cached
//!   (every path walk asks the daemon, which answers from the session's cache), a later
//!   `open` finds the new one.
//! - a **private** inode belongs to one writable description: nobody else is handed it, so
//!   its `i_size` and attributes are that writer's alone. A writable OPEN of a version
//!   inode that no description has open claims it (it stops being handed out); one that
//!   others have open is refused with `ESTALE`, and the kernel's retry looks the name up
//!   again, when the writer is given a fresh private inode (the caller keeps that intent).
//! - **directories** keep their instance number as inode (they have no pages).
//!
//! The table keeps a node while the kernel holds lookup references to it (FUSE `forget`
//! counts them down) or a description is open on it, and answers which inodes the kernel
//! holds for a path, for invalidation. Entries are never cached, so the kernel drops a
//! file's dentry at its last use and its inode with it (FORGET): the number of the current
//! version is remembered beyond that and handed out again at the next lookup, so that
//! `stat` shows the same inode number for as long as the file is unchanged. (Reusing a
//! number after FORGET is what FUSE allows: lookups and forgets add up per number.)

use std::collections::HashMap;
use std::sync::Arc;

use chubby_protocol::Stat;

/// FUSE's root inode; the root node's instance number.
pub const ROOT: u64 = 1;

/// File inodes are numbered from here up, far above any instance number (which name
/// directories' inodes), so the two never meet.
pub const FILE_INODES: u64 = 1 << 62;

/// Who may be handed a file inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// A version that LOOKUP hands out while it is current.
    Current,
    /// A version LOOKUP no longer hands out (a newer one came, or a writer claimed and left
    /// it): descriptors already open on it read on.
    Old,
    /// A writer's own inode; `Some(fh)` once its description is open.
    Private(Option<u64>),
}

// Most inodes are file versions: boxing their `Stat` would cost an allocation each for
// the rare directory's gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    Dir,
    File {
        /// The version's metadata (the writer's starting point for a private inode).
        stat: Stat,
        /// The version's contents, once known (never for a private inode).
        contents: Option<Arc<Vec<u8>>>,
        share: Share,
    },
}

#[derive(Debug)]
struct Node {
    path: String,
    kind: Kind,
    /// Lookup references the kernel holds.
    lookups: u64,
    /// Descriptions open on it.
    opens: u32,
}

/// Why an inode cannot be opened as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not (or no longer) to be opened this way: answer `ESTALE`, the kernel looks the
    /// name up again.
    Stale,
    /// A directory.
    IsDir,
    /// Not in the table.
    Unknown,
}

/// A file inode as the caller needs it.
#[derive(Clone, Debug)]
pub struct FileNode {
    /// Its path.
    pub path: String,
    /// The version's metadata.
    pub stat: Stat,
    /// Who may be handed it.
    pub share: Share,
}

/// The current version of an instance.
#[derive(Debug)]
struct Current {
    generation: u64,
    path: String,
    ino: u64,
}

/// How many instances' current numbers are remembered at most (then they start afresh).
const CURRENT_MAX: usize = 100_000;

/// The table (see the module docs).
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, Vec<u64>>,
    /// The current version of each instance: its content generation, path and inode
    /// number (kept after the kernel forgot the inode, see the module docs).
    current: HashMap<u64, Current>,
    next_file: u64,
}

impl Default for Inodes {
    fn default() -> Inodes {
        Inodes::new()
    }
}

impl Inodes {
    /// A table holding only the root.
    #[must_use]
    pub fn new() -> Inodes {
        let mut t = Inodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            current: HashMap::new(),
            next_file: FILE_INODES,
        };
        t.insert(ROOT, "/", Kind::Dir);
        t
    }

    fn insert(&mut self, ino: u64, path: &str, kind: Kind) {
        self.by_ino.insert(
            ino,
            Node {
                path: path.to_owned(),
                kind,
                lookups: 1,
                opens: 0,
            },
        );
        self.by_path.entry(path.to_owned()).or_default().push(ino);
    }

    /// A new file inode, handed to the kernel once.
    fn new_file(
        &mut self,
        path: &str,
        stat: &Stat,
        contents: Option<Arc<Vec<u8>>>,
        share: Share,
    ) -> u64 {
        let ino = self.next_file;
        self.next_file = self.next_file.wrapping_add(1).max(FILE_INODES);
        let stat = stat.clone();
        self.insert(
            ino,
            path,
            Kind::File {
                stat,
                contents,
                share,
            },
        );
        ino
    }

    /// The path of `ino`, if the kernel may still use it.
    #[must_use]
    pub fn path(&self, ino: u64) -> Option<String> {
        self.by_ino.get(&ino).map(|e| e.path.clone())
    }

    /// The file inode `ino`, if it is one.
    #[must_use]
    pub fn file(&self, ino: u64) -> Option<FileNode> {
        let n = self.by_ino.get(&ino)?;
        match &n.kind {
            Kind::File { stat, share, .. } => Some(FileNode {
                path: n.path.clone(),
                stat: stat.clone(),
                share: *share,
            }),
            Kind::Dir => None,
        }
    }

    /// The instance `ino` stands for (a directory's inode is its instance): what locks
    /// and per-file settings are keyed by, the same for every version's inode.
    #[must_use]
    pub fn instance(&self, ino: u64) -> Option<u64> {
        match &self.by_ino.get(&ino)?.kind {
            Kind::Dir => Some(ino),
            Kind::File { stat, .. } => Some(stat.instance.0),
        }
    }

    /// The kernel was given the directory `instance` at `path` (once more).
    pub fn lookup_dir(&mut self, instance: u64, path: &str) -> u64 {
        match self.by_ino.get_mut(&instance) {
            Some(n) => n.lookups = n.lookups.saturating_add(1),
            None => self.insert(instance, path, Kind::Dir),
        }
        instance
    }

    /// The current version inode of the file `stat` at `path`, handed to the kernel once
    /// more; `contents` (of exactly that version) are kept if it has none yet.
    pub fn lookup_file(&mut self, path: &str, stat: &Stat, contents: Option<Arc<Vec<u8>>>) -> u64 {
        let key = stat.instance.0;
        let known = self
            .current
            .get(&key)
            .filter(|c| c.generation == stat.content_generation.0 && c.path == path)
            .map(|c| c.ino);
        if let Some(ino) = known {
            match self.by_ino.get_mut(&ino) {
                Some(Node {
                    kind:
                        Kind::File {
                            contents: c,
                            share: Share::Current,
                            ..
                        },
                    lookups,
                    ..
                }) => {
                    *lookups = lookups.saturating_add(1);
                    if c.is_none() {
                        *c = contents;
                    }
                    return ino;
                }
                // Forgotten by the kernel: the same number again.
                None => {
                    self.insert(
                        ino,
                        path,
                        Kind::File {
                            stat: stat.clone(),
                            contents,
                            share: Share::Current,
                        },
                    );
                    return ino;
                }
                Some(_) => {}
            }
        }
        let ino = self.new_file(path, stat, contents, Share::Current);
        if self.current.len() >= CURRENT_MAX {
            self.current.clear();
        }
        let now = Current {
            generation: stat.content_generation.0,
            path: path.to_owned(),
            ino,
        };
        if let Some(old) = self.current.insert(key, now) {
            self.set_old(old.ino);
        }
        ino
    }

    fn set_old(&mut self, ino: u64) {
        if let Some(Node {
            kind: Kind::File { share, .. },
            ..
        }) = self.by_ino.get_mut(&ino)
        {
            if *share == Share::Current {
                *share = Share::Old;
            }
        }
        self.unpin_if_unused(ino);
    }

    /// An old version nobody has open gives back its bytes: only a descriptor already
    /// open may still read it (a later open of it is refused, and its retry finds the
    /// current version), so the daemon holds the bytes of current versions and open
    /// descriptors only, however many inodes the kernel keeps.
    fn unpin_if_unused(&mut self, ino: u64) {
        if let Some(Node {
            kind:
                Kind::File {
                    share: Share::Old,
                    contents,
                    ..
                },
            opens: 0,
            ..
        }) = self.by_ino.get_mut(&ino)
        {
            *contents = None;
        }
    }

    /// A fresh version inode for one reader about to open `path` again (its first open met
    /// a writer or a newer version): it holds `contents` of `stat`'s version and is handed
    /// to nobody else, so no writer can claim it before the reader opens it.
    pub fn lookup_pinned(&mut self, path: &str, stat: &Stat, contents: Arc<Vec<u8>>) -> u64 {
        self.new_file(path, stat, Some(contents), Share::Old)
    }

    /// A fresh private inode for a writer about to open `path` (whose current metadata is
    /// `stat`), handed to the kernel.
    pub fn lookup_private(&mut self, path: &str, stat: &Stat) -> u64 {
        self.new_file(path, stat, None, Share::Private(None))
    }

    /// A file the writable description `fh` just created: its private inode, handed to the
    /// kernel, with the description open on it.
    pub fn created(&mut self, path: &str, stat: &Stat, fh: u64) -> u64 {
        let ino = self.lookup_private(path, stat);
        let _ = self.claim(ino, fh);
        ino
    }

    /// Opens a version inode for reading if its contents are known: they are returned and
    /// the open is counted. `Ok(None)`: fetch them, then [`Inodes::pin_and_open`].
    ///
    /// # Errors
    /// [`Refused::Stale`] for a writer's inode; [`Refused::IsDir`]; [`Refused::Unknown`].
    pub fn open_read(&mut self, ino: u64) -> Result<Option<Arc<Vec<u8>>>, Refused> {
        let n = self.by_ino.get_mut(&ino).ok_or(Refused::Unknown)?;
        match &n.kind {
            Kind::Dir => Err(Refused::IsDir),
            Kind::File {
                share: Share::Private(_),
                ..
            } => Err(Refused::Stale),
            Kind::File { contents: None, .. } => Ok(None),
            Kind::File {
                contents: Some(c), ..
            } => {
                let c = Arc::clone(c);
                n.opens = n.opens.saturating_add(1);
                Ok(Some(c))
            }
        }
    }

    /// Gives a version inode the contents fetched for it and counts an open, if they are
    /// of its very version (`stat`).
    ///
    /// # Errors
    /// [`Refused::Stale`] if they are another version's or a writer claimed the inode
    /// meanwhile; as [`Inodes::open_read`].
    pub fn pin_and_open(
        &mut self,
        ino: u64,
        contents: &Arc<Vec<u8>>,
        fetched: &Stat,
    ) -> Result<Arc<Vec<u8>>, Refused> {
        let n = self.by_ino.get_mut(&ino).ok_or(Refused::Unknown)?;
        let Kind::File {
            stat,
            contents: c,
            share,
        } = &mut n.kind
        else {
            return Err(Refused::IsDir);
        };
        if matches!(share, Share::Private(_))
            || stat.instance != fetched.instance
            || stat.content_generation != fetched.content_generation
        {
            return Err(Refused::Stale);
        }
        let c = Arc::clone(c.get_or_insert_with(|| Arc::clone(contents)));
        n.opens = n.opens.saturating_add(1);
        Ok(c)
    }

    /// The writable description `fh` takes `ino` as its own: a private inode reserved for
    /// it, or the current version's inode if nobody has it open (it is handed out no
    /// more). The open is counted.
    ///
    /// # Errors
    /// [`Refused::Stale`] if descriptors are open on it, it is an old version, or another
    /// writer owns it;
    /// [`Refused::IsDir`]; [`Refused::Unknown`].
    pub fn claim(&mut self, ino: u64, fh: u64) -> Result<(), Refused> {
        self.claimable(ino)?;
        let n = self.by_ino.get_mut(&ino).ok_or(Refused::Unknown)?;
        if let Kind::File {
            stat,
            share,
            contents,
        } = &mut n.kind
        {
            if *share == Share::Current {
                let key = stat.instance.0;
                if self.current.get(&key).is_some_and(|c| c.ino == ino) {
                    self.current.remove(&key);
                }
            }
            *share = Share::Private(Some(fh));
            *contents = None;
        }
        n.opens = n.opens.saturating_add(1);
        Ok(())
    }

    /// Whether [`Inodes::claim`] would succeed now.
    ///
    /// # Errors
    /// As [`Inodes::claim`].
    pub fn claimable(&self, ino: u64) -> Result<(), Refused> {
        let n = self.by_ino.get(&ino).ok_or(Refused::Unknown)?;
        let Kind::File { share, .. } = &n.kind else {
            return Err(Refused::IsDir);
        };
        match *share {
            Share::Private(None) => Ok(()),
            Share::Current if n.opens == 0 => Ok(()),
            // An old version (its dentry was stale) would show the writer a size that is
            // not its base's; a writer's inode is its own.
            Share::Private(Some(_)) | Share::Old | Share::Current => Err(Refused::Stale),
        }
    }

    /// As [`Inodes::claim`], for an open that reached `ino` without a lookup (a reopen
    /// through `/proc/self/fd`, `/dev/stderr`, a bind mount), whose refusal the kernel's
    /// retry could not mend: a writer's inode is shared with this description; any other
    /// file inode becomes its own. The open is counted.
    ///
    /// # Errors
    /// [`Refused::IsDir`]; [`Refused::Unknown`].
    pub fn force_claim(&mut self, ino: u64, fh: u64) -> Result<(), Refused> {
        let n = self.by_ino.get_mut(&ino).ok_or(Refused::Unknown)?;
        let Kind::File {
            stat,
            share,
            contents,
        } = &mut n.kind
        else {
            return Err(Refused::IsDir);
        };
        if !matches!(share, Share::Private(Some(_))) {
            let key = stat.instance.0;
            if self.current.get(&key).is_some_and(|c| c.ino == ino) {
                self.current.remove(&key);
            }
            *share = Share::Private(Some(fh));
            *contents = None;
        }
        n.opens = n.opens.saturating_add(1);
        Ok(())
    }

    /// Counts an open of `ino` that reads bytes of its own (not the inode's version).
    pub fn opened(&mut self, ino: u64) {
        if let Some(n) = self.by_ino.get_mut(&ino) {
            n.opens = n.opens.saturating_add(1);
        }
    }

    /// A private inode's writer committed `stat`: it shows that from now on.
    pub fn committed(&mut self, ino: u64, new: &Stat) {
        if let Some(Node {
            kind: Kind::File { stat, share, .. },
            ..
        }) = self.by_ino.get_mut(&ino)
        {
            if matches!(share, Share::Private(_)) {
                *stat = new.clone();
            }
        }
    }

    /// A description open on `ino` was released. A writer's inode is handed to nobody
    /// after it.
    pub fn closed(&mut self, ino: u64) {
        let Some(n) = self.by_ino.get_mut(&ino) else {
            return;
        };
        n.opens = n.opens.saturating_sub(1);
        if let Kind::File { share, .. } = &mut n.kind {
            // The writer's, once no description is left on it (readers and writers that
            // reopened it without a lookup may share it).
            if n.opens == 0 && matches!(share, Share::Private(Some(_))) {
                *share = Share::Old;
            }
        }
        self.unpin_if_unused(ino);
        self.drop_if_unused(ino);
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        self.drop_if_unused(ino);
    }

    fn drop_if_unused(&mut self, ino: u64) {
        if ino == ROOT
            || self
                .by_ino
                .get(&ino)
                .is_none_or(|n| n.lookups > 0 || n.opens > 0)
        {
            return;
        }
        // The current version's number stays remembered (see the module docs).
        let Some(e) = self.by_ino.remove(&ino) else {
            return;
        };
        if let Some(inos) = self.by_path.get_mut(&e.path) {
            inos.retain(|&i| i != ino);
            if inos.is_empty() {
                self.by_path.remove(&e.path);
            }
        }
    }

    /// The inode a directory listing shows for `stat`: the current version's number if
    /// one was handed out, else the instance (a listing hands the kernel no inode).
    #[must_use]
    pub fn listed(&self, stat: &Stat) -> u64 {
        self.current
            .get(&stat.instance.0)
            .filter(|c| c.generation == stat.content_generation.0)
            .map_or(stat.instance.0, |c| c.ino)
    }

    /// A node's mode, owner, times or marker changed (not its contents): every inode of
    /// that very version (`stat`'s instance and content generation), and a writer's inode
    /// started from it, shows the new metadata from now on.
    pub fn attrs_changed(&mut self, path: &str, stat: &Stat) {
        let inos = self.by_path.get(path).cloned().unwrap_or_default();
        for ino in inos {
            let Some(n) = self.by_ino.get_mut(&ino) else {
                continue;
            };
            if let Kind::File { stat: s, .. } = &mut n.kind {
                if s.instance == stat.instance && s.content_generation == stat.content_generation {
                    s.posix = stat.posix;
                    s.acl_generation = stat.acl_generation;
                    s.acl = stat.acl.clone();
                }
            }
        }
    }

    /// Every inode the kernel holds for one of `paths`.
    #[must_use]
    pub fn inos_of(&self, paths: &[String]) -> Vec<u64> {
        paths
            .iter()
            .filter_map(|p| self.by_path.get(p))
            .flatten()
            .copied()
            .collect()
    }

    /// Every inode the kernel holds.
    #[must_use]
    pub fn all(&self) -> Vec<u64> {
        self.by_ino.keys().copied().collect()
    }

    /// How many inodes the kernel holds (the root included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Never true: the root is always there.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

/// `parent/name` as a cell path.
#[must_use]
pub fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent of a cell path (`/` for top-level nodes and for the root itself).
#[must_use]
pub fn parent_path(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{
        AclNames, ContentChecksum, Generation, InstanceNumber, Instant, NodeKind,
    };

    fn stat(instance: u64, generation: u64, size: u64) -> Stat {
        Stat {
            kind: NodeKind::File,
            ephemeral: false,
            instance: InstanceNumber(instance),
            content_generation: Generation(generation),
            lock_generation: Generation(0),
            acl_generation: Generation(0),
            checksum: ContentChecksum(0),
            size_bytes: size,
            ctime: Instant(0),
            mtime: Instant(0),
            acl: AclNames::all("admin"),
            posix: chubby_protocol::Posix::new(NodeKind::File, None, None, Instant(0)),
            ephemeral_children: false,
            subdirs: 0,
        }
    }

    fn bytes(b: &[u8]) -> Arc<Vec<u8>> {
        Arc::new(b.to_vec())
    }

    #[test]
    fn each_version_has_its_own_inode_and_readers_keep_theirs() {
        let mut t = Inodes::new();
        let v1 = t.lookup_file("/f", &stat(7, 1, 2), Some(bytes(b"v1")));
        assert_eq!(
            t.lookup_file("/f", &stat(7, 1, 2), None),
            v1,
            "same version"
        );
        assert_eq!(t.open_read(v1).unwrap().as_deref(), Some(&b"v1".to_vec()));
        let v2 = t.lookup_file("/f", &stat(7, 2, 3), None);
        assert_ne!(v1, v2);
        assert!(v1 >= FILE_INODES && v2 >= FILE_INODES);
        assert_eq!(t.file(v1).unwrap().share, Share::Old);
        // The reader open on v1 reads v1 still; v2's contents are fetched and must match.
        assert_eq!(t.open_read(v2), Ok(None));
        assert_eq!(
            t.pin_and_open(v2, &bytes(b"v3!"), &stat(7, 3, 3)),
            Err(Refused::Stale),
            "a newer version than the inode's"
        );
        assert_eq!(
            t.pin_and_open(v2, &bytes(b"v2!"), &stat(7, 2, 3))
                .unwrap()
                .as_slice(),
            b"v2!"
        );
        assert_eq!(t.instance(v1), Some(7));
        assert_eq!(t.instance(v2), Some(7));
    }

    #[test]
    fn a_writer_claims_an_unopened_version_and_is_refused_a_shared_one() {
        let mut t = Inodes::new();
        let v = t.lookup_file("/f", &stat(7, 1, 2), Some(bytes(b"v1")));
        assert!(t.open_read(v).unwrap().is_some());
        assert_eq!(t.claim(v, 100), Err(Refused::Stale), "a reader has it open");
        t.closed(v);
        assert_eq!(t.claim(v, 100), Ok(()));
        assert_eq!(t.file(v).unwrap().share, Share::Private(Some(100)));
        assert_eq!(
            t.open_read(v),
            Err(Refused::Stale),
            "nobody reads a writer's inode"
        );
        assert_eq!(t.claim(v, 101), Err(Refused::Stale), "nor writes it");
        // LOOKUP hands out a fresh inode for the same version.
        let v_again = t.lookup_file("/f", &stat(7, 1, 2), None);
        assert_ne!(v_again, v);
        // The writer's own reserved inode.
        let w = t.lookup_private("/f", &stat(7, 1, 2));
        assert_eq!(t.claim(w, 102), Ok(()));
        t.committed(w, &stat(7, 2, 5));
        assert_eq!(t.file(w).unwrap().stat.size_bytes, 5);
        t.closed(w);
        assert_eq!(t.file(w).unwrap().share, Share::Old);
        assert_eq!(
            t.claim(w, 103),
            Err(Refused::Stale),
            "handed to nobody after"
        );
    }

    #[test]
    fn an_open_without_a_lookup_is_never_refused_twice() {
        let mut t = Inodes::new();
        let v = t.lookup_file("/f", &stat(7, 1, 2), Some(bytes(b"v1")));
        assert_eq!(t.claim(v, 1), Ok(()));
        // `echo err > /dev/stderr` into the writer's file: it shares the writer's inode,
        // and so may a reader reopening it; their closes leave it the writer's.
        assert_eq!(t.force_claim(v, 2), Ok(()));
        t.opened(v);
        assert_eq!(t.file(v).unwrap().share, Share::Private(Some(1)));
        t.closed(v);
        t.closed(v);
        assert_eq!(t.file(v).unwrap().share, Share::Private(Some(1)));
        t.closed(v);
        assert_eq!(t.file(v).unwrap().share, Share::Old);
        // An old version reopened through a bind mount becomes the writer's own.
        let old = t.lookup_file("/g", &stat(8, 1, 2), None);
        t.lookup_file("/g", &stat(8, 2, 2), None);
        assert_eq!(t.claim(old, 3), Err(Refused::Stale));
        assert_eq!(t.force_claim(old, 3), Ok(()));
        assert_eq!(t.file(old).unwrap().share, Share::Private(Some(3)));
        assert_eq!(t.force_claim(ROOT, 4), Err(Refused::IsDir));
    }

    #[test]
    fn old_versions_keep_their_bytes_only_while_open() {
        let mut t = Inodes::new();
        let v1 = t.lookup_file("/f", &stat(7, 1, 2), Some(bytes(b"v1")));
        let v1b = t.lookup_file("/g", &stat(8, 1, 2), Some(bytes(b"g1")));
        assert!(t.open_read(v1b).unwrap().is_some());
        t.lookup_file("/f", &stat(7, 2, 2), None);
        t.lookup_file("/g", &stat(8, 2, 2), None);
        assert_eq!(
            t.open_read(v1),
            Ok(None),
            "unpinned: an open must fetch (and fail)"
        );
        // The open one keeps them until closed.
        assert_eq!(t.open_read(v1b).unwrap().as_deref(), Some(&b"g1".to_vec()));
        t.closed(v1b);
        t.closed(v1b);
        assert_eq!(t.open_read(v1b), Ok(None));
    }

    #[test]
    fn a_retrying_reader_gets_a_pinned_inode_no_writer_can_take() {
        let mut t = Inodes::new();
        let v = t.lookup_file("/f", &stat(7, 1, 2), Some(bytes(b"v1")));
        let r = t.lookup_pinned("/f", &stat(7, 1, 2), bytes(b"v1"));
        assert_ne!(r, v);
        assert_eq!(t.claim(r, 1), Err(Refused::Stale));
        assert_eq!(t.open_read(r).unwrap().as_deref(), Some(&b"v1".to_vec()));
        assert_eq!(
            t.lookup_file("/f", &stat(7, 1, 2), None),
            v,
            "still the shared one"
        );
    }

    #[test]
    fn nodes_go_when_neither_looked_up_nor_open() {
        let mut t = Inodes::new();
        let v = t.lookup_file("/a", &stat(7, 1, 2), Some(bytes(b"ab")));
        t.lookup_file("/a", &stat(7, 1, 2), None);
        assert!(t.open_read(v).unwrap().is_some());
        t.forget(v, 2);
        assert_eq!(t.path(v).as_deref(), Some("/a"), "still open");
        assert_eq!(t.inos_of(&["/a".into()]), vec![v]);
        t.closed(v);
        assert_eq!(t.path(v), None);
        assert!(t.inos_of(&["/a".into()]).is_empty());
        // A new lookup of the same version gets the same number, as a new node.
        let again = t.lookup_file("/a", &stat(7, 1, 2), None);
        assert_eq!(again, v);
        assert_eq!(t.open_read(again), Ok(None), "its bytes are fetched again");
        assert_eq!(t.listed(&stat(7, 1, 2)), again);
        t.forget(again, 1);
        // A newer version, or the same at another path, gets another.
        assert_ne!(t.lookup_file("/a", &stat(7, 2, 2), None), v);
        assert_ne!(t.lookup_file("/b", &stat(7, 2, 2), None), v);
        assert_eq!(t.listed(&stat(8, 1, 2)), 8);
    }

    #[test]
    fn directories_are_their_instances_and_the_root_is_never_forgotten() {
        let mut t = Inodes::new();
        assert_eq!(t.lookup_dir(5, "/d"), 5);
        assert_eq!(t.lookup_dir(5, "/d"), 5);
        assert_eq!(t.open_read(5), Err(Refused::IsDir));
        assert_eq!(t.instance(5), Some(5));
        t.forget(5, 1);
        assert_eq!(t.path(5).as_deref(), Some("/d"));
        t.forget(5, 1);
        assert_eq!(t.path(5), None);
        t.forget(ROOT, 100);
        assert_eq!(t.path(ROOT).as_deref(), Some("/"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_moved_path_does_not_share_an_inode() {
        let mut t = Inodes::new();
        let a = t.lookup_file("/a", &stat(7, 1, 2), None);
        // The same instance seen at another path (a rename in flight): its own inode.
        let b = t.lookup_file("/b", &stat(7, 1, 2), None);
        assert_ne!(a, b);
        assert_eq!(t.path(b).as_deref(), Some("/b"));
    }

    #[test]
    fn paths_compose() {
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
        assert_eq!(parent_path("/a/b"), "/a");
        assert_eq!(parent_path("/a"), "/");
        assert_eq!(parent_path("/"), "/");
    }
}
