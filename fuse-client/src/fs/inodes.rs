//! The inode table of a mount (pure: no I/O, no clock).
//!
//! An inode number is the node's instance number (DESIGN §6): the root is instance 1, which
//! is also FUSE's root inode. A rename gives the moved file a new instance, so an inode names
//! one path for its whole life and `inode → path` never changes. The table keeps an inode
//! while the kernel holds lookup references to it (FUSE `forget` counts them down), and
//! answers the reverse question the kernel-cache invalidation asks: which inodes has the
//! kernel been given for a path.

use std::collections::HashMap;

/// FUSE's root inode; the root node's instance number.
pub const ROOT: u64 = 1;

#[derive(Debug)]
struct Entry {
    path: String,
    /// Lookup references the kernel holds.
    lookups: u64,
}

/// The table (see the module docs).
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Entry>,
    by_path: HashMap<String, Vec<u64>>,
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
        };
        t.by_ino.insert(
            ROOT,
            Entry {
                path: "/".into(),
                lookups: 1,
            },
        );
        t.by_path.insert("/".into(), vec![ROOT]);
        t
    }

    /// The path of `ino`, if the kernel may still use it.
    #[must_use]
    pub fn path(&self, ino: u64) -> Option<String> {
        self.by_ino.get(&ino).map(|e| e.path.clone())
    }

    /// The kernel was given `ino` for `path` once more (a lookup, create or mkdir reply).
    pub fn remember(&mut self, ino: u64, path: &str) {
        if ino == ROOT {
            return;
        }
        match self.by_ino.get_mut(&ino) {
            Some(e) => e.lookups = e.lookups.saturating_add(1),
            None => {
                self.by_ino.insert(
                    ino,
                    Entry {
                        path: path.to_owned(),
                        lookups: 1,
                    },
                );
                self.by_path.entry(path.to_owned()).or_default().push(ino);
            }
        }
    }

    /// The kernel dropped `n` references to `ino`; the last one removes it.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups > 0 {
            return;
        }
        if let Some(e) = self.by_ino.remove(&ino) {
            if let Some(inos) = self.by_path.get_mut(&e.path) {
                inos.retain(|&i| i != ino);
                if inos.is_empty() {
                    self.by_path.remove(&e.path);
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

    #[test]
    fn lookups_are_counted_and_the_last_forget_removes() {
        let mut t = Inodes::new();
        t.remember(7, "/a");
        t.remember(7, "/a");
        assert_eq!(t.inos_of(&["/a".into()]), vec![7]);
        t.forget(7, 1);
        assert_eq!(t.path(7).as_deref(), Some("/a"));
        t.forget(7, 1);
        assert_eq!(t.path(7), None);
        assert!(t.inos_of(&["/a".into()]).is_empty());
    }

    #[test]
    fn a_path_may_name_an_old_and_a_new_instance() {
        let mut t = Inodes::new();
        t.remember(7, "/a");
        t.remember(9, "/a"); // /a was replaced; the kernel still holds the old inode
        let mut inos = t.inos_of(&["/a".into(), "/b".into()]);
        inos.sort_unstable();
        assert_eq!(inos, vec![7, 9]);
        t.forget(7, 1);
        assert_eq!(t.inos_of(&["/a".into()]), vec![9]);
    }

    #[test]
    fn the_root_is_never_forgotten() {
        let mut t = Inodes::new();
        t.forget(ROOT, 100);
        assert_eq!(t.path(ROOT).as_deref(), Some("/"));
        assert_eq!(t.len(), 1);
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
