//! The client's side of a session, pure (Chubby §2.8–2.9): the lease clock, jeopardy and
//! grace, the master epoch it follows, the KeepAlive long poll's bookkeeping, notices
//! applied in order, and the cache's coherence rules. The library's async shell
//! ([`crate::client`]) and the simulator's clients both drive this one type: they send
//! what it asks, feed it replies and time, and act on the [`SessionEvent`]s it returns.
//!
//! ```text
//!  keepalive(now) ──► (epoch, KeepAlive{acked}) ── the shell sends it ──► reply:
//!     keepalive_answered(reply) ── lease renewed, notices applied to the cache in order
//!                                  ──► events (Invalidated, FailOver, LockGranted, …)
//!     wrong_epoch(current) ───────── a newer master: cache flushed, notices start over
//!     ended_by_master() ──────────── Expired
//!  tick(now) ─────────────────────── Safe ─► Jeopardy ─► Expired (LeaseClock)
//!  downstream_done(epoch, seq) ───── a downstream cache dropped what notices up to seq
//!                                    named: they may be acknowledged
//! ```
//!
//! # The coherence rules kept here
//! - A notice is acknowledged only after its invalidation reached this cache and, with a
//!   downstream cache (the kernel's page cache under the mount), after the shell reports
//!   it dropped there too ([`ClientSession::downstream_done`]): the master lets a write
//!   proceed once every cacher acknowledged, so an early acknowledgement is a stale read.
//! - The cache serves only while the local lease holds (off in jeopardy and after expiry),
//!   and is flushed on a fail-over notice and on a newer epoch.
//! - Epochs only move forward: a late answer from an older master is ignored.

use chubby_protocol::client_msg::Call;
use chubby_protocol::events::KeepAliveReply;
use chubby_protocol::events::WaitEnd;
use chubby_protocol::{Ballot, Event, HandleId, Notice, Sequencer, SessionId};

use super::{LeaseClock, SessionStatus, Transition};
use crate::cache::Cache;

/// What a step of the session asks its shell to act on (the cache was already updated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The status changed; the cache was enabled or disabled to match.
    Transition(Transition),
    /// An invalidation notice named these paths; this cache dropped them. The shell drops
    /// whatever it keeps for them (read handles).
    Invalidated {
        /// The paths.
        paths: Vec<String>,
    },
    /// A fail-over notice: this cache was flushed; the shell flushes what it keeps.
    FailOver,
    /// A newer master epoch is followed: this cache was flushed, notices start over.
    NewEpoch(Ballot),
    /// With a downstream cache: it must drop `paths` (or everything, if `all`) before the
    /// notices through `seq` of `epoch` may be acknowledged; the shell reports it with
    /// [`ClientSession::downstream_done`], in this order.
    Downstream {
        /// The epoch the notices belong to.
        epoch: Ballot,
        /// The highest notice covered.
        seq: u64,
        /// Paths to drop.
        paths: Vec<String>,
        /// Drop everything.
        all: bool,
    },
    /// A queued Acquire was granted.
    LockGranted {
        /// The waiting handle.
        handle: HandleId,
        /// The lock's sequencer.
        sequencer: Sequencer,
    },
    /// A queued Acquire ended without a grant.
    LockWaitEnded {
        /// The waiting handle.
        handle: HandleId,
        /// Why.
        reason: WaitEnd,
    },
    /// A handle event.
    Event {
        /// The handle.
        handle: HandleId,
        /// The event.
        event: Event,
    },
}

/// Settings of a [`ClientSession`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionConfig {
    /// The grace period after the local lease ends, ms.
    pub grace_ms: u64,
    /// A downstream cache exists: acknowledgements wait for
    /// [`ClientSession::downstream_done`].
    pub downstream: bool,
    /// Planted bug (simulator only): an invalidation is applied one KeepAlive after it is
    /// acknowledged.
    pub bug_acks_before_drop: bool,
}

/// The KeepAlive in flight: when it was sent and under which epoch.
#[derive(Clone, Copy, Debug)]
struct Polling {
    sent: u64,
    epoch: Ballot,
}

/// One session, as its client keeps it (see the module docs). Time is milliseconds on the
/// client's monotonic clock, passed in.
#[derive(Debug)]
pub struct ClientSession {
    id: SessionId,
    cfg: SessionConfig,
    epoch: Ballot,
    /// Highest notice number processed in this epoch.
    acked: u64,
    /// Highest notice number that may be acknowledged: processed, and dropped downstream.
    ack_ready: u64,
    clock: LeaseClock,
    cache: Cache,
    lease_ms: u64,
    polling: Option<Polling>,
    /// Invalidations acknowledged but not yet applied (the planted bug).
    deferred: Vec<(u64, Vec<String>)>,
}

impl ClientSession {
    /// Session `id`, granted `lease_ms` by the master of `epoch` for a CreateSession sent at
    /// `sent`.
    #[must_use]
    pub fn new(
        id: SessionId,
        epoch: Ballot,
        lease_ms: u64,
        sent: u64,
        cfg: SessionConfig,
    ) -> ClientSession {
        ClientSession {
            id,
            epoch,
            acked: 0,
            ack_ready: 0,
            clock: LeaseClock::new(sent, lease_ms, cfg.grace_ms),
            cache: Cache::new(epoch),
            lease_ms,
            polling: None,
            deferred: Vec::new(),
            cfg,
        }
    }

    /// The session's id.
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The master epoch followed.
    #[must_use]
    pub fn epoch(&self) -> Ballot {
        self.epoch
    }

    /// The lease the master last granted, ms.
    #[must_use]
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Where the session stands (as of the last [`ClientSession::tick`]).
    #[must_use]
    pub fn status(&self) -> SessionStatus {
        self.clock.status()
    }

    /// When the local lease ends.
    #[must_use]
    pub fn local_end(&self) -> u64 {
        self.clock.local_end()
    }

    /// When [`ClientSession::tick`] next has something to do.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        self.clock.next_deadline()
    }

    /// The cache.
    #[must_use]
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cache, to serve from or install into (its token rule decides what may enter).
    pub fn cache_mut(&mut self) -> &mut Cache {
        &mut self.cache
    }

    /// Every processed notice may be acknowledged (its downstream work is done).
    #[must_use]
    pub fn acknowledgeable(&self) -> bool {
        self.ack_ready >= self.acked
    }

    /// When the next KeepAlive must go out even if notices still wait downstream: a
    /// quarter of a lease before the local lease ends (the master answers it at once,
    /// since notices wait, and the session is kept).
    #[must_use]
    pub fn ack_deadline(&self) -> u64 {
        self.clock.local_end().saturating_sub(self.lease_ms / 4)
    }

    /// The KeepAlive to send at `now` (under the returned epoch), recorded as in flight;
    /// `None` once the session expired.
    pub fn keepalive(&mut self, now: u64) -> Option<(Ballot, Call)> {
        if self.clock.status() == SessionStatus::Expired {
            return None;
        }
        self.polling = Some(Polling {
            sent: now,
            epoch: self.epoch,
        });
        Some((
            self.epoch,
            Call::KeepAlive {
                session: self.id,
                acked: self.ack_ready.min(self.acked),
            },
        ))
    }

    /// The KeepAlive in flight failed (lost, refused for another reason): none is in
    /// flight now.
    pub fn keepalive_failed(&mut self) {
        self.polling = None;
    }

    /// The KeepAlive in flight was answered: the lease is renewed from when it was sent,
    /// and the notices are applied in order. An answer for an epoch no longer followed is
    /// ignored.
    pub fn keepalive_answered(&mut self, reply: KeepAliveReply, out: &mut Vec<SessionEvent>) {
        let Some(polling) = self.polling.take() else {
            return;
        };
        if polling.epoch != self.epoch {
            return; // answered by a master we no longer follow
        }
        self.lease_ms = reply.lease_ms;
        let t = self.clock.renewed(polling.sent, reply.lease_ms);
        // The planted bug: invalidations acknowledged by the previous reply land only now.
        for (seq, paths) in std::mem::take(&mut self.deferred) {
            self.cache.invalidate(seq, &paths);
        }
        let mut paths = Vec::new();
        let mut all = false;
        for n in reply.notices {
            if n.seq <= self.acked {
                continue;
            }
            self.acked = n.seq;
            match n.notice {
                Notice::Invalidate { paths: named } => {
                    if self.cfg.bug_acks_before_drop {
                        self.deferred.push((n.seq, named.clone()));
                    } else {
                        self.cache.invalidate(n.seq, &named);
                    }
                    paths.extend(named.iter().cloned());
                    out.push(SessionEvent::Invalidated { paths: named });
                }
                Notice::FailOver => {
                    self.cache.flush(self.epoch);
                    all = true;
                    out.push(SessionEvent::FailOver);
                }
                Notice::Event { handle, event } => out.push(SessionEvent::Event { handle, event }),
                Notice::LockGranted { handle, sequencer } => {
                    out.push(SessionEvent::LockGranted { handle, sequencer });
                }
                Notice::LockWaitEnded { handle, reason } => {
                    out.push(SessionEvent::LockWaitEnded { handle, reason });
                }
            }
        }
        if self.acked > self.ack_ready {
            if self.cfg.downstream {
                out.push(SessionEvent::Downstream {
                    epoch: self.epoch,
                    seq: self.acked,
                    paths,
                    all,
                });
            } else {
                self.ack_ready = self.acked;
            }
        }
        self.transition(t, out);
    }

    /// The downstream cache dropped what the notices through `seq` of `epoch` named.
    pub fn downstream_done(&mut self, epoch: Ballot, seq: u64) {
        if epoch == self.epoch {
            self.ack_ready = self.ack_ready.max(seq);
        }
    }

    /// A call was refused for an old epoch: a new master took over in `current`. Returns
    /// whether it was followed (only forward: a deposed master's late word is ignored).
    pub fn wrong_epoch(&mut self, current: Ballot, out: &mut Vec<SessionEvent>) -> bool {
        if current <= self.epoch {
            return false;
        }
        self.epoch = current;
        self.acked = 0;
        self.ack_ready = 0;
        self.deferred.clear();
        self.polling = None;
        self.cache.flush(current);
        out.push(SessionEvent::NewEpoch(current));
        true
    }

    /// The master said the session is gone.
    pub fn ended_by_master(&mut self, out: &mut Vec<SessionEvent>) {
        let t = self.clock.ended();
        self.transition(t, out);
    }

    /// Time passes: the local lease may end (jeopardy) and then the grace (expired).
    pub fn tick(&mut self, now: u64, out: &mut Vec<SessionEvent>) {
        let t = self.clock.tick(now);
        self.transition(t, out);
    }

    fn transition(&mut self, t: Option<Transition>, out: &mut Vec<SessionEvent>) {
        let Some(t) = t else { return };
        match t {
            Transition::Jeopardy | Transition::Expired => self.cache.disable(),
            Transition::Safe => self.cache.enable(),
        }
        if t == Transition::Expired {
            self.polling = None;
        }
        out.push(SessionEvent::Transition(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::{
        AclNames, CacheToken, ContentChecksum, Generation, InstanceNumber, Instant, NodeKind,
        Numbered, Stat,
    };

    fn stat() -> Stat {
        Stat {
            kind: NodeKind::File,
            ephemeral: false,
            instance: InstanceNumber(1),
            content_generation: Generation(1),
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

    const EPOCH: Ballot = Ballot {
        round: 1,
        node: chubby_protocol::NodeId(1),
    };

    fn session(downstream: bool) -> ClientSession {
        ClientSession::new(
            SessionId(7),
            EPOCH,
            1_000,
            0,
            SessionConfig {
                grace_ms: 5_000,
                downstream,
                bug_acks_before_drop: false,
            },
        )
    }

    fn invalidate(seq: u64, path: &str) -> Numbered {
        Numbered {
            seq,
            notice: Notice::Invalidate {
                paths: vec![path.to_string()],
            },
        }
    }

    fn cache_f(s: &mut ClientSession) {
        let token = Some(CacheToken {
            epoch: EPOCH,
            seq: 0,
        });
        assert!(s.cache().install_allowed(token));
        s.cache_mut()
            .install_contents("/f", token, std::sync::Arc::new(b"x".to_vec()), stat());
        assert!(s.cache_mut().contents("/f").is_some());
    }

    fn acked(s: &mut ClientSession, now: u64) -> u64 {
        match s.keepalive(now) {
            Some((_, Call::KeepAlive { acked, .. })) => acked,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_notice_is_dropped_before_it_is_acknowledged() {
        let mut s = session(false);
        cache_f(&mut s);
        assert_eq!(acked(&mut s, 10), 0);
        let mut out = Vec::new();
        s.keepalive_answered(
            KeepAliveReply {
                lease_ms: 1_000,
                notices: vec![invalidate(1, "/f")],
            },
            &mut out,
        );
        assert!(s.cache_mut().contents("/f").is_none(), "dropped");
        assert_eq!(acked(&mut s, 20), 1, "then acknowledged");
        assert_eq!(s.local_end(), super::super::local_lease_end(10, 1_000));
    }

    #[test]
    fn with_a_downstream_cache_acknowledgement_waits_for_it() {
        let mut s = session(true);
        let _ = s.keepalive(10);
        let mut out = Vec::new();
        s.keepalive_answered(
            KeepAliveReply {
                lease_ms: 1_000,
                notices: vec![invalidate(1, "/f"), invalidate(2, "/g")],
            },
            &mut out,
        );
        assert!(out.contains(&SessionEvent::Downstream {
            epoch: EPOCH,
            seq: 2,
            paths: vec!["/f".into(), "/g".into()],
            all: false,
        }));
        assert!(!s.acknowledgeable());
        assert_eq!(acked(&mut s, 20), 0);
        s.downstream_done(EPOCH, 2);
        assert!(s.acknowledgeable());
        assert_eq!(acked(&mut s, 30), 2);
    }

    #[test]
    fn epochs_move_forward_only_and_flush_the_cache() {
        let mut s = session(false);
        cache_f(&mut s);
        let mut out = Vec::new();
        let newer = Ballot {
            round: 2,
            node: chubby_protocol::NodeId(2),
        };
        assert!(!s.wrong_epoch(EPOCH, &mut out));
        let _ = s.keepalive(10);
        assert!(s.wrong_epoch(newer, &mut out));
        assert!(s.cache_mut().contents("/f").is_none());
        // The old master's late answer is ignored: no renewal, no notice.
        s.keepalive_answered(
            KeepAliveReply {
                lease_ms: 60_000,
                notices: vec![invalidate(1, "/x")],
            },
            &mut out,
        );
        assert_eq!(s.local_end(), super::super::local_lease_end(0, 1_000));
        assert_eq!(acked(&mut s, 20), 0);
    }

    #[test]
    fn jeopardy_disables_the_cache_and_a_reply_restores_it() {
        let mut s = session(false);
        cache_f(&mut s);
        let mut out = Vec::new();
        let _ = s.keepalive(100);
        s.tick(990, &mut out);
        assert_eq!(out, vec![SessionEvent::Transition(Transition::Jeopardy)]);
        assert!(s.cache_mut().contents("/f").is_none(), "off in jeopardy");
        out.clear();
        s.keepalive_answered(
            KeepAliveReply {
                lease_ms: 1_000,
                notices: Vec::new(),
            },
            &mut out,
        );
        assert_eq!(out, vec![SessionEvent::Transition(Transition::Safe)]);
        s.tick(10_000, &mut out);
        assert_eq!(s.status(), SessionStatus::Expired);
        assert!(s.keepalive(10_001).is_none());
    }
}
