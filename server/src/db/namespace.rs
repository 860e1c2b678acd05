//! The tree of nodes: where files and directories live, and the metadata each one carries
//! (Chubby §2.3; DESIGN §3).
//!
//! Nodes are kept in one ordered map from full path to node, like Chubby's own key order in
//! its database (§2.10): a directory's subtree is the key range `[dir + "/", dir + "0")`,
//! because `0` is the byte after `/`. So "has children" is one range lookup, and listing
//! children skips each child's subtree with one more lookup.
//!
//! # Why `CowMap` and `Arc`
//! The map is a [`CowMap`]: cloning it (to snapshot) copies one pointer per leaf of
//! [`super::cow_map::LEAF_MAX`] nodes. Keys are `Arc<str>` and values `Arc<Node>`, and file
//! contents are themselves an `Arc`, so the first write to a leaf after a snapshot copies
//! pointers (not paths or bytes), and a changed node copies its metadata
//! (`Arc::make_mut`), never its contents. `snapshot.rs` gives the measured cost.
//!
//! # The node digest
//! The namespace keeps a running sum (wrapping, so order does not matter) of a 64-bit hash
//! of every `(path, node)` pair, updated on every insert, update and remove. The database
//! digest then costs nothing per node. A node's hash covers its content checksum, not its
//! bytes: the checksum is recomputed from the bytes on every write and on restore.
//!
//! # Invariants
//! - `/` exists and is a directory; every other node's parent exists and is a directory.
//! - Instance numbers are unique and below `next_instance`.
//! - The map's running digest equals the sum of the node hashes (checked by `CowMap`).

use std::ops::Bound;
use std::sync::Arc;

use bincode::{Decode, Encode};
use chubby_protocol::db::{check_path, fnv1a64, FILE_BYTES_MAX, FNV_OFFSET};

use super::cow_map::{CowMap, EntryDigest};
use super::ensure;
use chubby_protocol::{
    AclNames, ContentChecksum, Generation, InstanceNumber, Instant, NodeKind, Posix, Stat, Timespec,
};

/// One file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Node {
    /// File or directory.
    pub kind: NodeKind,
    /// Deleted when unused (see `ephemeral` in `ops_nodes.rs`).
    pub ephemeral: bool,
    /// Never reused; greater than every earlier node's.
    pub instance: InstanceNumber,
    /// Bumped on each write of the contents.
    pub content_generation: Generation,
    /// Bumped each time the lock goes from free to held.
    pub lock_generation: Generation,
    /// Bumped on each SetAcl.
    pub acl_generation: Generation,
    /// Checksum of `contents`.
    pub checksum: ContentChecksum,
    /// Creation time.
    pub ctime: Instant,
    /// Last content write (ctime for directories).
    pub mtime: Instant,
    /// Read, write and change-ACL names.
    pub acl: AclNames,
    /// The bytes (always empty for directories).
    pub contents: Arc<Vec<u8>>,
    /// Modes, owners and POSIX times (labels for tools; the ACLs decide access).
    pub posix: Posix,
    /// Directories: nodes created in it are ephemeral, whoever creates them.
    pub ephemeral_children: bool,
    /// Directories: how many children are directories (kept by `Namespace`).
    pub subdirs: u64,
}

impl Node {
    /// A fresh node with generation 0 everywhere.
    #[must_use]
    pub fn new(kind: NodeKind, instance: InstanceNumber, now: Instant, acl: AclNames) -> Node {
        Node {
            kind,
            ephemeral: false,
            instance,
            content_generation: Generation(0),
            lock_generation: Generation(0),
            acl_generation: Generation(0),
            checksum: ContentChecksum::of(&[]),
            ctime: now,
            mtime: now,
            acl,
            contents: Arc::new(Vec::new()),
            posix: Posix::new(kind, None, None, now),
            ephemeral_children: false,
            subdirs: 0,
        }
    }

    /// Sets the POSIX ctime (and, if `modified`, the mtime) to `now`.
    pub fn touch(&mut self, now: Instant, modified: bool) {
        let t = Timespec::from_instant(now);
        self.posix.ctime = t;
        if modified {
            self.posix.mtime = t;
        }
    }

    /// The node's metadata as clients see it.
    #[must_use]
    pub fn stat(&self) -> Stat {
        Stat {
            kind: self.kind,
            ephemeral: self.ephemeral,
            instance: self.instance,
            content_generation: self.content_generation,
            lock_generation: self.lock_generation,
            acl_generation: self.acl_generation,
            checksum: self.checksum,
            size_bytes: self.contents.len() as u64,
            ctime: self.ctime,
            mtime: self.mtime,
            acl: self.acl.clone(),
            posix: self.posix,
            ephemeral_children: self.ephemeral_children,
            subdirs: self.subdirs,
        }
    }

    /// True for directories.
    #[must_use]
    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Directory
    }

    /// 64-bit hash of `(path, node)` for the running digest; covers everything but the
    /// raw contents, which `checksum` stands for.
    #[must_use]
    pub fn digest(&self, path: &str) -> u64 {
        let mut h = fnv1a64(FNV_OFFSET, path.as_bytes());
        h = fnv1a64(
            h,
            &[
                0,
                u8::from(self.is_dir()),
                u8::from(self.ephemeral),
                u8::from(self.ephemeral_children),
            ],
        );
        let p = &self.posix;
        let (uid, gid) = p
            .owner
            .map_or((u64::MAX, u64::MAX), |(u, g)| (u.into(), g.into()));
        for word in [u64::from(p.mode), uid, gid, self.subdirs] {
            h = fnv1a64(h, &word.to_le_bytes());
        }
        for t in [p.atime, p.mtime, p.ctime] {
            h = fnv1a64(h, &t.secs.to_le_bytes());
            h = fnv1a64(h, &t.nanos.to_le_bytes());
        }
        for word in [
            self.instance.0,
            self.content_generation.0,
            self.lock_generation.0,
            self.acl_generation.0,
            self.checksum.0,
            self.ctime.0,
            self.mtime.0,
            self.contents.len() as u64,
        ] {
            h = fnv1a64(h, &word.to_le_bytes());
        }
        for name in [&self.acl.read, &self.acl.write, &self.acl.change_acl] {
            h = fnv1a64(h, name.as_bytes());
            h = fnv1a64(h, &[0]);
        }
        h
    }
}

/// The parent of a valid non-root path (`/a/b` → `/a`, `/a` → `/`).
///
/// # Panics
/// If `path` is the root or not absolute: callers check paths first.
#[must_use]
pub fn parent(path: &str) -> &str {
    assert!(path.len() > 1, "the root has no parent");
    let cut = path.rfind('/').expect("paths are absolute");
    if cut == 0 {
        "/"
    } else {
        &path[..cut]
    }
}

/// The last name of a valid non-root path.
#[must_use]
pub fn name(path: &str) -> &str {
    assert!(path.len() > 1, "the root has no name");
    let cut = path.rfind('/').expect("paths are absolute");
    &path[cut + 1..]
}

/// The first bound of `dir`'s subtree and the (excluded) end: `(dir + "/", dir + "0")`,
/// except that the root's subtree starts after `/` itself.
fn subtree(dir: &str) -> (Bound<String>, String) {
    if dir == "/" {
        (Bound::Excluded("/".to_owned()), "0".to_owned())
    } else {
        (Bound::Included(format!("{dir}/")), format!("{dir}0"))
    }
}

impl EntryDigest<Arc<str>> for Arc<Node> {
    fn entry_digest(path: &Arc<str>, node: &Arc<Node>) -> u64 {
        node.digest(path)
    }
}

/// The node map (with its running digest) and the instance counter.
#[derive(Clone, Debug, Encode, Decode)]
pub struct Namespace {
    nodes: CowMap<Arc<str>, Arc<Node>>,
    next_instance: u64,
}

impl Namespace {
    /// A namespace holding only the root, owned by `acl`.
    #[must_use]
    pub fn new(now: Instant, acl: AclNames) -> Namespace {
        let mut ns = Namespace {
            nodes: CowMap::default(),
            next_instance: 1,
        };
        let root = Node::new(NodeKind::Directory, ns.allocate_instance(), now, acl);
        ns.insert("/", root);
        ns
    }

    /// A fresh instance number.
    pub fn allocate_instance(&mut self) -> InstanceNumber {
        let instance = InstanceNumber(self.next_instance);
        self.next_instance += 1;
        instance
    }

    /// The node at `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&Arc<Node>> {
        self.nodes.get(path)
    }

    /// The node at `path` if it is still the instance `instance`.
    #[must_use]
    pub fn get_instance(&self, path: &str, instance: InstanceNumber) -> Option<&Arc<Node>> {
        self.nodes.get(path).filter(|n| n.instance == instance)
    }

    /// The key for `path` (shared, so handles and locks can hold it for free).
    #[must_use]
    pub fn key(&self, path: &str) -> Option<Arc<str>> {
        self.nodes.get_key_value(path).map(|(k, _)| Arc::clone(k))
    }

    /// Adds a node; the path must be free and its parent a directory.
    pub fn insert(&mut self, path: &str, node: Node) -> Arc<str> {
        assert!(
            !self.nodes.contains_key(path),
            "insert over an existing node {path}"
        );
        assert!(
            node.instance.0 < self.next_instance,
            "instance not allocated here"
        );
        if path != "/" {
            assert!(
                self.get(parent(path)).is_some_and(|p| p.is_dir()),
                "orphan {path}"
            );
        }
        let dir = node.is_dir();
        let key: Arc<str> = Arc::from(path);
        self.nodes.insert(Arc::clone(&key), Arc::new(node));
        if dir && path != "/" {
            self.count_subdir(parent(path), true);
        }
        key
    }

    /// A directory under `dir` came (`added`) or went.
    fn count_subdir(&mut self, dir: &str, added: bool) {
        self.nodes
            .update(dir, |n: &mut Arc<Node>| {
                let n = Arc::make_mut(n);
                n.subdirs = if added { n.subdirs + 1 } else { n.subdirs - 1 };
            })
            .expect("the parent of a node exists");
    }

    /// Changes the node at `path` in place (copying its metadata if a snapshot shares it).
    pub fn update<R>(&mut self, path: &str, f: impl FnOnce(&mut Node) -> R) -> R {
        let update = |node: &mut Arc<Node>| {
            let instance = node.instance;
            let r = f(Arc::make_mut(node));
            assert_eq!(
                node.instance, instance,
                "an update must not change the instance"
            );
            r
        };
        self.nodes
            .update(path, update)
            .expect("update of a missing node")
    }

    /// Removes the node at `path`, which must have no children.
    pub fn remove(&mut self, path: &str) -> Arc<Node> {
        assert!(path != "/", "the root is never removed");
        assert!(
            !self.has_children(path),
            "remove of a non-empty directory {path}"
        );
        let gone = self.nodes.remove(path).expect("remove of a missing node");
        if gone.is_dir() {
            self.count_subdir(parent(path), false);
        }
        gone
    }

    /// True if `dir` has at least one child.
    #[must_use]
    pub fn has_children(&self, dir: &str) -> bool {
        let (lo, hi) = subtree(dir);
        self.first_in(lo.as_ref().map(String::as_str), &hi)
            .is_some()
    }

    /// The children of `dir`, in name order.
    ///
    /// A child's subtree `[child + "/", child + "0")` does not follow the child at once:
    /// siblings whose names extend the child's with a byte below `/` (`a-b`, `a.txt`,
    /// `a b` after `a`) sort between them. So the scan steps to the next key; a key that
    /// is a child is listed, and a key deeper down (in some child's subtree) makes it jump
    /// past that whole subtree with one lookup.
    #[must_use]
    pub fn children(&self, dir: &str) -> Vec<(Arc<str>, Arc<Node>)> {
        let (mut lo, hi) = subtree(dir);
        let prefix = if dir == "/" { 1 } else { dir.len() + 1 };
        let mut out = Vec::new();
        while let Some((k, v)) = self.first_in(lo.as_ref().map(String::as_str), &hi) {
            match k.get(prefix..).and_then(|rest| rest.find('/')) {
                // `k` lies in the subtree of the child `k[..prefix + slash]`.
                Some(slash) => lo = Bound::Included(format!("{}0", &k[..prefix + slash])),
                None => {
                    out.push((Arc::clone(k), Arc::clone(v)));
                    lo = Bound::Excluded(k.to_string());
                }
            }
        }
        out
    }

    /// Every node under `dir` (not `dir` itself), in path order.
    #[must_use]
    pub fn descendants(&self, dir: &str) -> Vec<Arc<str>> {
        let (mut lo, hi) = subtree(dir);
        let mut out = Vec::new();
        while let Some((k, _)) = self.first_in(lo.as_ref().map(String::as_str), &hi) {
            out.push(Arc::clone(k));
            lo = Bound::Excluded(k.to_string());
        }
        out
    }

    /// A namespace of these nodes (a snapshot's, checked afterwards by `validate`).
    pub(super) fn from_nodes(
        nodes: impl IntoIterator<Item = (Arc<str>, Node)>,
        next_instance: u64,
    ) -> Namespace {
        let mut nodes: Vec<(Arc<str>, Node)> = nodes.into_iter().collect();
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for (k, n) in &nodes {
            if n.is_dir() && &**k != "/" {
                *counts.entry(parent(k).to_owned()).or_default() += 1;
            }
        }
        let mut map = CowMap::default();
        for (k, mut n) in nodes.drain(..) {
            n.subdirs = counts.get(&*k).copied().unwrap_or(0);
            map.insert(k, Arc::new(n));
        }
        Namespace {
            nodes: map,
            next_instance,
        }
    }

    /// The first node with a key from `lo` up to (excluding) `hi`.
    fn first_in(&self, lo: Bound<&str>, hi: &str) -> Option<(&Arc<str>, &Arc<Node>)> {
        self.nodes.first_in(lo, hi)
    }

    /// Every node, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Node>)> {
        self.nodes.iter()
    }

    /// Number of nodes, root included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: the root is always there.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The running digest of all nodes.
    #[must_use]
    pub fn node_sum(&self) -> u64 {
        self.nodes.sum()
    }

    /// The instance counter (for the digest).
    #[must_use]
    pub fn next_instance(&self) -> u64 {
        self.next_instance
    }

    /// Checks the invariants listed in the module docs. O(n).
    ///
    /// # Errors
    /// The first broken one, described.
    pub fn validate(&self) -> Result<(), String> {
        self.nodes.validate()?;
        ensure!(
            self.get("/").is_some_and(|r| r.is_dir()),
            "root missing or not a directory"
        );
        let mut instances = std::collections::BTreeSet::new();
        for (path, node) in self.nodes.iter() {
            ensure!(check_path(path).is_ok(), "invalid path {path:?}");
            ensure!(instances.insert(node.instance), "instance reused at {path}");
            ensure!(
                node.instance.0 < self.next_instance,
                "instance not allocated at {path}"
            );
            ensure!(
                node.checksum == ContentChecksum::of(&node.contents),
                "checksum {path}"
            );
            ensure!(
                node.contents.len() <= FILE_BYTES_MAX,
                "oversized file {path}"
            );
            ensure!(
                !node.is_dir() || node.contents.is_empty(),
                "directory with contents {path}"
            );
            ensure!(
                node.is_dir() || !node.ephemeral_children,
                "file marked ephemeral-children {path}"
            );
            ensure!(
                node.posix.mode & !chubby_protocol::db::MODE_BITS == 0
                    && node.posix.atime.is_valid()
                    && node.posix.mtime.is_valid()
                    && node.posix.ctime.is_valid(),
                "bad POSIX attributes {path}"
            );
            let subdirs = self
                .children(path)
                .iter()
                .filter(|(_, c)| c.is_dir())
                .count();
            ensure!(
                node.subdirs == subdirs as u64,
                "subdirectory count of {path}"
            );
            if &**path != "/" {
                ensure!(
                    self.get(parent(path)).is_some_and(|p| p.is_dir()),
                    "orphan {path}"
                );
            } else {
                ensure!(!node.ephemeral, "ephemeral root");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Children listing skips grandchildren and neighbours sharing a prefix (`/a0`, `/ab`).
    #[test]
    fn children_are_direct_only() {
        let mut ns = Namespace::new(Instant(0), AclNames::all("admin"));
        for (p, kind) in [
            ("/a", NodeKind::Directory),
            ("/a/x", NodeKind::Directory),
            ("/a/x/deep", NodeKind::File),
            ("/a/y", NodeKind::File),
            ("/a0", NodeKind::File),
            ("/ab", NodeKind::File),
            // Names extending a sibling's with a byte below `/` sort before its subtree.
            ("/a/x-b", NodeKind::File),
            ("/a/x.txt", NodeKind::Directory),
            ("/a/x.txt/in", NodeKind::File),
            ("/a/x b", NodeKind::File),
            ("/a-b", NodeKind::File),
        ] {
            let i = ns.allocate_instance();
            ns.insert(p, Node::new(kind, i, Instant(0), AclNames::all("admin")));
        }
        let names: Vec<String> = ns
            .children("/a")
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(names, vec!["/a/x", "/a/x b", "/a/x-b", "/a/x.txt", "/a/y"]);
        let top: Vec<String> = ns
            .children("/")
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(top, vec!["/a", "/a-b", "/a0", "/ab"]);
        assert!(ns.has_children("/a/x"));
        assert!(!ns.has_children("/a/y"));
        ns.validate().unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 300, ..proptest::prelude::ProptestConfig::default()
        })]

        /// Listings are complete for any names: every directory's children equal a plain
        /// model's (the direct children among all inserted paths), whatever bytes the names
        /// use (`-`, `.`, space, `!`, `+`, digits, non-ASCII sort around `/` and `0`).
        #[test]
        fn children_agree_with_a_model(
            picks in proptest::collection::vec(
                (0usize..64, proptest::sample::select(vec![
                    "a", "a-b", "a.txt", "a b", "a!", "a+", "a0", "a/", "ab", "-", ".x", "é",
                    "a\u{7f}", "~", "a.", "0", "b", "a-", "ä.b", "a,b",
                ]), proptest::bool::ANY),
                1..60,
            )
        ) {
            let mut ns = Namespace::new(Instant(0), AclNames::all("admin"));
            let mut dirs = vec!["/".to_owned()];
            let mut all = std::collections::BTreeSet::new();
            for (parent, name, is_dir) in picks {
                let name = name.trim_end_matches('/');
                let parent = dirs[parent % dirs.len()].clone();
                let path = if parent == "/" {
                    format!("/{name}")
                } else {
                    format!("{parent}/{name}")
                };
                if ns.get(&path).is_some() {
                    continue;
                }
                let kind = if is_dir { NodeKind::Directory } else { NodeKind::File };
                let i = ns.allocate_instance();
                ns.insert(&path, Node::new(kind, i, Instant(0), AclNames::all("admin")));
                all.insert(path.clone());
                if is_dir {
                    dirs.push(path);
                }
            }
            for dir in &dirs {
                let got: Vec<String> =
                    ns.children(dir).iter().map(|(k, _)| k.to_string()).collect();
                let want: Vec<String> = all
                    .iter()
                    .filter(|p| parent(p) == dir.as_str())
                    .cloned()
                    .collect();
                proptest::prop_assert_eq!(got, want, "children of {}", dir);
                proptest::prop_assert_eq!(ns.has_children(dir), all.iter().any(|p| parent(p) == dir.as_str()));
            }
        }
    }

    #[test]
    fn parent_and_name() {
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(name("/a/b/c"), "c");
    }
}
