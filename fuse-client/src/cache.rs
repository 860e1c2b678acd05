//! The client's consistent cache (Chubby §2.7; DESIGN §6), pure: no I/O, no clock.
//!
//! It holds, per path: the file's contents with its metadata, and the node's metadata or its
//! absence. (Directory listings are not cached: the master gives them no token.) Everything
//! enters through an
//! `install_*` call carrying the master's [`CacheToken`], and leaves through
//! [`Cache::invalidate`] (a notice from the master), [`Cache::flush`] (fail-over, a new
//! epoch) or [`Cache::disable`] (jeopardy).
//!
//! # Never stale
//! The master invalidates a path before any write to it and counts the write as done
//! only once this client acknowledged the invalidation, which it does after calling
//! [`Cache::invalidate`]. A read reply can be overtaken in flight by an invalidation;
//! so a reply is installed only if its token is of the current epoch and no
//! invalidation numbered above the token has been processed ([`Cache::install_allowed`]).
//!
//! Lock state is not cached: a cached [`Stat`]'s `lock_generation` is the one seen when
//! it was fetched; ask the master (GetSequencer, or an uncached stat) for the current one.

use std::collections::HashMap;
use std::sync::Arc;

use chubby_protocol::{Ballot, CacheToken, Stat};

/// What is cached about one path.
#[derive(Clone, Debug, Default)]
struct Entry {
    contents: Option<(Arc<Vec<u8>>, Stat)>,
    /// `Some(None)`: the path is known absent.
    stat: Option<Option<Stat>>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.contents.is_none() && self.stat.is_none()
    }
}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to ask the master.
    pub misses: u64,
    /// Replies not installed because an invalidation overtook them.
    pub refused_installs: u64,
    /// Paths dropped by invalidations.
    pub invalidated: u64,
}

/// The cache (see the module docs).
#[derive(Debug)]
pub struct Cache {
    epoch: Ballot,
    /// The highest notice number of a processed invalidation in this epoch.
    last_invalidation: u64,
    enabled: bool,
    entries: HashMap<String, Entry>,
    stats: CacheStats,
}

impl Cache {
    /// An empty, enabled cache for `epoch`.
    #[must_use]
    pub fn new(epoch: Ballot) -> Cache {
        Cache {
            epoch,
            last_invalidation: 0,
            enabled: true,
            entries: HashMap::new(),
            stats: CacheStats::default(),
        }
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Number of cached paths.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if a reply with `token` may be installed now.
    #[must_use]
    pub fn install_allowed(&self, token: Option<CacheToken>) -> bool {
        match token {
            Some(t) => self.enabled && t.epoch == self.epoch && t.seq >= self.last_invalidation,
            None => false,
        }
    }

    fn entry(&mut self, path: &str, token: Option<CacheToken>) -> Option<&mut Entry> {
        if !self.install_allowed(token) {
            if token.is_some() {
                self.stats.refused_installs += 1;
            }
            return None;
        }
        Some(self.entries.entry(path.to_owned()).or_default())
    }

    /// Installs a file's contents and metadata.
    /// Returns true if it was installed.
    pub fn install_contents(
        &mut self,
        path: &str,
        token: Option<CacheToken>,
        contents: Arc<Vec<u8>>,
        stat: Stat,
    ) -> bool {
        if let Some(e) = self.entry(path, token) {
            e.stat = Some(Some(stat.clone()));
            e.contents = Some((contents, stat));
            return true;
        }
        false
    }

    /// Installs a node's metadata, or its absence (`None`).
    /// Returns true if it was installed.
    pub fn install_stat(
        &mut self,
        path: &str,
        token: Option<CacheToken>,
        stat: Option<Stat>,
    ) -> bool {
        if let Some(e) = self.entry(path, token) {
            if stat.is_none() {
                e.contents = None;
            }
            e.stat = Some(stat);
            return true;
        }
        false
    }

    /// Cached contents and metadata of `path`.
    pub fn contents(&mut self, path: &str) -> Option<(Arc<Vec<u8>>, Stat)> {
        let hit = self
            .entries
            .get(path)
            .and_then(|e| e.contents.clone())
            .filter(|_| self.enabled);
        self.count(hit.is_some());
        hit
    }

    /// Cached metadata of `path`: `Some(None)` if it is known absent.
    pub fn stat(&mut self, path: &str) -> Option<Option<Stat>> {
        let hit = self
            .entries
            .get(path)
            .and_then(|e| e.stat.clone())
            .filter(|_| self.enabled);
        self.count(hit.is_some());
        hit
    }

    fn count(&mut self, hit: bool) {
        if hit {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
    }

    /// Applies invalidation notice `seq`: drops every path listed. The caller acknowledges
    /// `seq` only after this returns.
    pub fn invalidate(&mut self, seq: u64, paths: &[String]) {
        self.last_invalidation = self.last_invalidation.max(seq);
        for p in paths {
            if self.entries.remove(p).is_some_and(|e| !e.is_empty()) {
                self.stats.invalidated += 1;
            }
        }
    }

    /// Drops everything; with a new epoch, tokens of the old one are refused from now on
    /// (fail-over: invalidations may have been lost).
    pub fn flush(&mut self, epoch: Ballot) {
        self.entries.clear();
        if epoch != self.epoch {
            self.epoch = epoch;
            self.last_invalidation = 0;
        }
    }

    /// Jeopardy: drops everything and installs nothing until [`Cache::enable`].
    pub fn disable(&mut self) {
        self.entries.clear();
        self.enabled = false;
    }

    /// The session is safe again.
    pub fn enable(&mut self) {
        self.enabled = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{
        AclNames, ContentChecksum, Generation, InstanceNumber, Instant, NodeId, NodeKind,
    };

    const E1: Ballot = Ballot {
        round: 1,
        node: NodeId(1),
    };
    const E2: Ballot = Ballot {
        round: 2,
        node: NodeId(2),
    };

    fn stat(gen: u64) -> Stat {
        Stat {
            kind: NodeKind::File,
            ephemeral: false,
            instance: InstanceNumber(1),
            content_generation: Generation(gen),
            lock_generation: Generation(0),
            acl_generation: Generation(0),
            checksum: ContentChecksum(0),
            size_bytes: 1,
            ctime: Instant(0),
            mtime: Instant(0),
            acl: AclNames::all("admin"),
            posix: chubby_protocol::Posix::new(NodeKind::File, None, None, Instant(0)),
            ephemeral_children: false,
            subdirs: 0,
        }
    }

    fn token(epoch: Ballot, seq: u64) -> Option<CacheToken> {
        Some(CacheToken { epoch, seq })
    }

    #[test]
    fn installed_contents_are_served_until_invalidated() {
        let mut c = Cache::new(E1);
        c.install_contents("/f", token(E1, 0), Arc::new(b"a".to_vec()), stat(1));
        assert_eq!(c.contents("/f").unwrap().0.as_slice(), b"a");
        assert_eq!(c.stat("/f"), Some(Some(stat(1))));
        c.invalidate(1, &["/f".to_owned()]);
        assert!(c.contents("/f").is_none());
        assert_eq!(c.stats().invalidated, 1);
    }

    /// A reply served before an invalidation that this client already processed must not
    /// be installed: it may hold the value the invalidation dropped.
    #[test]
    fn a_reply_overtaken_by_an_invalidation_is_not_installed() {
        let mut c = Cache::new(E1);
        c.invalidate(5, &["/f".to_owned()]);
        c.install_contents("/f", token(E1, 4), Arc::new(b"old".to_vec()), stat(1));
        assert!(c.contents("/f").is_none());
        assert_eq!(c.stats().refused_installs, 1);
        c.install_contents("/f", token(E1, 5), Arc::new(b"new".to_vec()), stat(2));
        assert_eq!(c.contents("/f").unwrap().0.as_slice(), b"new");
    }

    #[test]
    fn uncacheable_replies_and_other_epochs_are_not_installed() {
        let mut c = Cache::new(E1);
        c.install_stat("/f", None, Some(stat(1)));
        c.install_stat("/g", token(E2, 0), Some(stat(1)));
        assert!(c.is_empty());
        c.install_stat("/h", token(E1, 0), None);
        assert_eq!(c.stat("/h"), Some(None), "absence is cached");
        c.flush(E2);
        assert!(c.stat("/h").is_none());
        c.install_stat("/g", token(E1, 9), Some(stat(1)));
        assert!(c.is_empty(), "a token of the old epoch after fail-over");
        c.install_stat("/g", token(E2, 0), Some(stat(1)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_disabled_cache_serves_and_installs_nothing() {
        let mut c = Cache::new(E1);
        c.install_stat("/f", token(E1, 0), Some(stat(1)));
        c.disable();
        assert!(c.stat("/f").is_none());
        c.install_stat("/f", token(E1, 0), Some(stat(1)));
        assert!(c.stat("/f").is_none());
        c.enable();
        c.install_stat("/f", token(E1, 0), Some(stat(1)));
        assert!(c.stat("/f").is_some());
    }
}
