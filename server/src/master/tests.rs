//! Unit tests of the master's session logic: one story per rule of the module docs.

use std::sync::Arc;

use chubby_protocol::{Ballot, Event, EventMask, Instant, NodeId, Notice, Refusal, SessionId};

use super::{Master, MasterAction, MasterConfig};
use crate::db::tests::Harness;
use crate::db::{Op, Outcome};

const EPOCH: Ballot = Ballot {
    round: 1,
    node: NodeId(1),
};
const LEASE: u64 = 12_000;

fn master(h: &Harness) -> Master {
    Master::new(MasterConfig::default(), EPOCH, Instant(0), &h.db)
}

fn path(p: &str) -> Vec<Arc<str>> {
    vec![Arc::from(p)]
}

fn replies(out: &[MasterAction]) -> Vec<(u64, Result<Vec<Notice>, Refusal>)> {
    out.iter()
        .filter_map(|a| match a {
            MasterAction::ReplyKeepAlive { token, reply } => Some((
                *token,
                reply
                    .clone()
                    .map(|r| r.notices.into_iter().map(|n| n.notice).collect()),
            )),
            _ => None,
        })
        .collect()
}

/// Chubby §2.8: the KeepAlive is held until the lease is close to ending, then answered
/// with the lease extended; the lease never moves backwards.
#[test]
fn keepalive_is_held_until_a_third_of_a_lease_remains() {
    let h = Harness::new();
    let mut m = master(&h);
    let s = SessionId(1);
    assert_eq!(m.session_created(s, Instant(0)), LEASE);
    let mut out = Vec::new();
    m.keepalive(s, 0, 7, Instant(10), &mut out);
    assert!(out.is_empty(), "answered at once: {out:?}");
    m.tick(Instant(7_999), |_| true, &mut out);
    assert!(out.is_empty(), "answered too early: {out:?}");
    m.tick(Instant(8_000), |_| true, &mut out);
    match out.as_slice() {
        [MasterAction::ReplyKeepAlive {
            token: 7,
            reply: Ok(r),
        }] => {
            // Counted from the call's arrival (10), not from the answer (8000).
            assert_eq!(r.lease_ms, 8_000 + LEASE - 10);
            assert!(r.notices.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    // The client counts the lease from when it sent the call (at most 10), less its 1%
    // drift bound; its next KeepAlive, sent at once, is answered before that ends, so an
    // idle session is never in jeopardy.
    let local_end = 10 + (8_000 + LEASE - 10) * 99 / 100;
    out.clear();
    m.keepalive(s, 0, 8, Instant(8_001), &mut out);
    m.tick(Instant(16_000), |_| true, &mut out);
    assert_eq!(replies(&out).len(), 1, "{out:?}");
    assert!(
        16_000 < local_end,
        "answered at 16000, local lease ends {local_end}"
    );
}

/// Chubby §2.8: a session whose lease ends unrenewed is expired by the master, and its
/// parked KeepAlive is refused.
#[test]
fn an_unrenewed_lease_expires_the_session() {
    let h = Harness::new();
    let mut m = master(&h);
    let s = SessionId(1);
    m.session_created(s, Instant(0));
    let mut out = Vec::new();
    m.tick(Instant(LEASE - 1), |_| true, &mut out);
    assert!(out.is_empty());
    m.tick(Instant(LEASE), |_| true, &mut out);
    assert_eq!(out, vec![MasterAction::Expire { session: s }]);
    assert_eq!(
        m.check_session(s, Instant(LEASE), false),
        Err(Refusal::SessionExpired)
    );
    out.clear();
    m.keepalive(s, 0, 1, Instant(LEASE + 1), &mut out);
    assert_eq!(replies(&out), vec![(1, Err(Refusal::SessionExpired))]);
}

/// Chubby §2.7: a write waits until every session caching the path acknowledged the
/// invalidation; the notice goes out at once on the parked KeepAlive.
#[test]
fn a_write_waits_for_the_invalidation_to_be_acknowledged() {
    let h = Harness::new();
    let mut m = master(&h);
    let (a, b) = (SessionId(1), SessionId(2));
    m.session_created(a, Instant(0));
    m.session_created(b, Instant(0));
    let token = m.served_read(b, "/f").expect("cacheable");
    assert_eq!(token.seq, 0);
    let mut out = Vec::new();
    m.keepalive(b, 0, 1, Instant(5), &mut out);
    assert!(out.is_empty());
    assert!(!m.gate_write(100, path("/f"), Instant(6), &mut out));
    let invalidation = vec![Notice::Invalidate {
        paths: vec!["/f".into()],
    }];
    assert_eq!(replies(&out), vec![(1, Ok(invalidation.clone()))]);
    // While it is in flight, reads of the path are served uncacheable.
    assert_eq!(m.served_read(a, "/f"), None);
    out.clear();
    // A KeepAlive that does not acknowledge it gets it again at once.
    m.keepalive(b, 0, 2, Instant(7), &mut out);
    assert_eq!(replies(&out), vec![(2, Ok(invalidation))]);
    out.clear();
    m.keepalive(b, 1, 3, Instant(8), &mut out);
    assert_eq!(out, vec![MasterAction::Propose { request: 100 }]);
    m.write_applied(100);
    assert!(m.served_read(a, "/f").is_some(), "cacheable again");
    // Uncached paths never wait.
    assert!(m.gate_write(101, path("/g"), Instant(9), &mut out));
}

/// Found by `sim cell` (seed 25): a second write to a path whose first write is still
/// waiting for a cacher's acknowledgement must wait for that acknowledgement too; the
/// cacher is no longer recorded as caching, yet still holds the old contents.
#[test]
fn a_later_write_waits_for_an_earlier_unacknowledged_invalidation() {
    let h = Harness::new();
    let mut m = master(&h);
    let (a, b) = (SessionId(1), SessionId(2));
    m.session_created(a, Instant(0));
    m.session_created(b, Instant(0));
    m.served_read(b, "/f").expect("cacheable");
    let mut out = Vec::new();
    assert!(!m.gate_write(100, path("/f"), Instant(1), &mut out));
    out.clear();
    // The second write must not be proposed while b may still read the old contents.
    assert!(!m.gate_write(101, path("/f"), Instant(2), &mut out));
    m.keepalive(b, 1, 7, Instant(3), &mut out);
    let mut proposed: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            MasterAction::Propose { request } => Some(*request),
            _ => None,
        })
        .collect();
    proposed.sort_unstable();
    assert_eq!(proposed, vec![100, 101], "one acknowledgement opens both");
    // A path nobody was told to drop does not wait.
    assert!(m.gate_write(102, path("/g"), Instant(4), &mut out));
}

/// Found in review: a session whose lease ended while it still owed an acknowledgement must
/// not hold its own ExpireSession (which touches the paths it was told to drop) forever;
/// and a session that owes one is not closed as idle while its lease may still serve it.
#[test]
fn an_ending_session_holds_no_write_and_an_owing_one_is_not_idle() {
    let h = Harness::new();
    let mut m = master(&h);
    let s = SessionId(1);
    m.session_created(s, Instant(0));
    m.served_read(s, "/d").expect("cacheable");
    let mut out = Vec::new();
    assert!(!m.gate_write(100, path("/d"), Instant(1), &mut out));
    m.write_applied(100);
    // Long idle, but an invalidation is unacknowledged: not closed.
    let idle_at = Instant(MasterConfig::default().session_idle_ms + 10);
    let mut acts = Vec::new();
    m.keepalive(s, 0, 1, idle_at, &mut acts);
    acts.clear();
    m.tick(idle_at, |_| false, &mut acts);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, MasterAction::CloseIdle { .. })),
        "{acts:?}"
    );
    // Its lease ends unacknowledged: it is expired, and the expiry's write does not wait
    // for it.
    let end = idle_at.plus_ms(LEASE + 1);
    acts.clear();
    m.tick(end, |_| false, &mut acts);
    assert!(
        acts.contains(&MasterAction::Expire { session: s }),
        "{acts:?}"
    );
    assert!(
        m.gate_write(101, path("/d"), end, &mut acts),
        "the expiry is not held"
    );
}

/// Chubby §2.7: a cacher that never acknowledges holds a write only until its lease ends.
#[test]
fn a_silent_cacher_holds_a_write_only_until_its_lease_ends() {
    let h = Harness::new();
    let mut m = master(&h);
    let (a, b) = (SessionId(1), SessionId(2));
    m.session_created(a, Instant(0));
    m.session_created(b, Instant(0));
    m.served_read(b, "/f").expect("cacheable");
    let mut out = Vec::new();
    // `a` keeps renewing; `b` went silent.
    m.keepalive(a, 0, 1, Instant(1), &mut out);
    assert!(!m.gate_write(100, path("/f"), Instant(2), &mut out));
    m.tick(Instant(LEASE - 1), |_| true, &mut out);
    assert!(!out.contains(&MasterAction::Propose { request: 100 }));
    out.clear();
    m.tick(Instant(LEASE), |_| true, &mut out);
    assert!(
        out.contains(&MasterAction::Expire { session: b }),
        "{out:?}"
    );
    assert!(
        out.contains(&MasterAction::Propose { request: 100 }),
        "{out:?}"
    );
}

/// Chubby §2.9 steps 3, 5, 6: a new master gives every recorded session a lease and a
/// fail-over notice; writes wait for each to acknowledge it, and reads are not cacheable
/// until then.
#[test]
fn after_fail_over_writes_wait_for_every_session_to_flush() {
    let mut h = Harness::new();
    let a = h.session("alice");
    let b = h.session("bob");
    let mut m = master(&h);
    assert_eq!(m.flushing_count(), 2);
    assert_eq!(
        m.served_read(a, "/x"),
        None,
        "not cacheable before the flush"
    );
    let mut out = Vec::new();
    m.keepalive(a, 0, 1, Instant(1), &mut out);
    assert_eq!(replies(&out), vec![(1, Ok(vec![Notice::FailOver]))]);
    out.clear();
    assert!(!m.gate_write(100, path("/x"), Instant(2), &mut out));
    m.keepalive(a, 1, 2, Instant(3), &mut out);
    assert!(out.is_empty(), "still waiting for bob: {out:?}");
    m.keepalive(b, 1, 3, Instant(4), &mut out);
    assert_eq!(out, vec![MasterAction::Propose { request: 100 }]);
    assert_eq!(m.flushing_count(), 0);
    assert!(m.served_read(a, "/y").is_some());
}

/// Chubby §2.5: events go to the handles whose mask selects them, after the action; a
/// queued Acquire learns of its grant by notice.
#[test]
fn events_follow_masks_and_grants_reach_waiters() {
    let mut h = Harness::new();
    let s1 = h.session("admin");
    let s2 = h.session("admin");
    let watched = h
        .open_with(s1, "/f", |a| {
            a.events = EventMask::CONTENTS.with(EventMask::LOCK_CONFLICT)
        })
        .unwrap();
    let deaf = h
        .open_with(s1, "/f", |a| a.events = EventMask::NONE)
        .unwrap();
    let other = h.file(s2, "/f");
    let mut m = master(&h);
    for s in [s1, s2] {
        let mut out = Vec::new();
        m.keepalive(s, 1, 1, Instant(1), &mut out);
    }
    let mut out = Vec::new();
    let op = Op::SetContents {
        session: s2,
        handle: other,
        contents: b"x".to_vec(),
        expected: None,
    };
    let applied = h.run(op.clone());
    m.applied(&op, &applied.changes, &h.db, Instant(2), &mut out);
    let events: Vec<_> = m.sessions[&s1]
        .outbox
        .iter()
        .map(|n| n.notice.clone())
        .collect();
    assert_eq!(
        events,
        vec![Notice::Event {
            handle: watched,
            event: Event::ContentsModified
        }],
        "the deaf handle {deaf:?} gets nothing"
    );
    // s1 takes the lock; s2 queues; s1 hears of the conflict; release grants s2 by notice.
    let take = Op::Acquire {
        session: s1,
        handle: deaf,
        mode: chubby_protocol::LockMode::Exclusive,
    };
    let applied = h.run(take.clone());
    assert!(matches!(applied.result, Ok(Outcome::Acquired { .. })));
    m.applied(&take, &applied.changes, &h.db, Instant(3), &mut out);
    assert!(
        m.sessions[&s1].outbox.len() == 1,
        "an immediate grant is its own reply"
    );
    let wait = Op::Acquire {
        session: s2,
        handle: other,
        mode: chubby_protocol::LockMode::Exclusive,
    };
    let applied = h.run(wait.clone());
    assert_eq!(applied.result, Ok(Outcome::Queued));
    m.applied(&wait, &applied.changes, &h.db, Instant(4), &mut out);
    assert!(m.sessions[&s1]
        .outbox
        .iter()
        .all(|n| !matches!(n.notice, Notice::Event { handle, .. } if handle == deaf)));
    let release = Op::Release {
        session: s1,
        handle: deaf,
    };
    let applied = h.run(release.clone());
    m.applied(&release, &applied.changes, &h.db, Instant(5), &mut out);
    assert!(
        m.sessions[&s2]
            .outbox
            .iter()
            .any(|n| matches!(&n.notice, Notice::LockGranted { handle, .. } if *handle == other)),
        "{:?}",
        m.sessions[&s2].outbox
    );
}

/// A stalled loop must not expire a session whose KeepAlive is waiting: it is answered.
#[test]
fn a_parked_keepalive_is_answered_not_expired_after_a_stall() {
    let h = Harness::new();
    let mut m = master(&h);
    let s = SessionId(1);
    m.session_created(s, Instant(0));
    let mut out = Vec::new();
    m.keepalive(s, 0, 9, Instant(1), &mut out);
    m.tick(Instant(LEASE + 500), |_| true, &mut out);
    assert_eq!(replies(&out).len(), 1, "{out:?}");
    assert!(!out.contains(&MasterAction::Expire { session: s }));
    assert!(m.check_session(s, Instant(LEASE + 501), true).is_ok());
}

/// A path a write changed without announcing it is invalidated late (the safety net).
#[test]
fn unannounced_changes_are_invalidated_late() {
    let h = Harness::new();
    let mut m = master(&h);
    let (a, b) = (SessionId(1), SessionId(2));
    m.session_created(a, Instant(0));
    m.session_created(b, Instant(0));
    m.served_read(b, "/x").unwrap();
    m.served_read(b, "/y").unwrap();
    let mut out = Vec::new();
    assert!(m.gate_write(5, path("/z"), Instant(1), &mut out));
    let changed: Vec<Arc<str>> = vec![Arc::from("/x"), Arc::from("/z")];
    let missed = m.late_invalidations(Some(5), &changed, Instant(2), &mut out);
    assert_eq!(missed, vec![Arc::<str>::from("/x")]);
    let notices: Vec<_> = m.sessions[&b]
        .outbox
        .iter()
        .map(|n| n.notice.clone())
        .collect();
    assert_eq!(
        notices,
        vec![Notice::Invalidate {
            paths: vec!["/x".into()]
        }]
    );
    assert!(
        m.served_read(a, "/y").is_some(),
        "untouched paths stay cached"
    );
}

/// Closing a handle of an ordinary file touches nothing; of an ephemeral file in an
/// ephemeral directory, the file, the directory and the directory's parent.
#[test]
fn touched_paths_of_close_follow_the_reap_chain() {
    let mut h = Harness::new();
    let s = h.session("admin");
    let plain = h.file(s, "/f");
    assert!(h
        .db
        .touched_paths(
            &Op::Close {
                session: s,
                handle: plain
            },
            |_| false
        )
        .is_empty());
    let dir = h
        .open_with(s, "/e", |a| {
            a.kind = chubby_protocol::NodeKind::Directory;
            a.ephemeral = true;
        })
        .unwrap();
    let file = h.open_with(s, "/e/f", |a| a.ephemeral = true).unwrap();
    let touched = h.db.touched_paths(
        &Op::Close {
            session: s,
            handle: file,
        },
        |_| false,
    );
    let want: Vec<Arc<str>> = ["/", "/e", "/e/f"].into_iter().map(Arc::from).collect();
    assert_eq!(touched, want);
    let ended =
        h.db.touched_paths(&Op::ExpireSession { session: s }, |_| false);
    assert_eq!(ended, want, "the session's handles {dir:?} and {file:?}");
    // An Open that would create inside a path written meanwhile is assumed to create.
    let open = Harness::open_op(
        s,
        "/f",
        chubby_protocol::OpenMode::READ,
        chubby_protocol::Creation::IfMissing,
    );
    assert!(h.db.touched_paths(&open, |_| false).is_empty());
    assert_eq!(h.db.touched_paths(&open, |p| p == "/f").len(), 2);
}
