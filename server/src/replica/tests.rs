//! The composite's glue: entries decoded and applied, digests compared.

use chubby_protocol::{Ballot, Instant, NodeId, Slot, Value};

use super::entry::Entry;
use super::{Composite, CompositeConfig};
use crate::db::{Command, Db, DbConfig, Op, Outcome};
use crate::master::MasterConfig;
use crate::paxos::{Config, DurableState, Replica};
use crate::serve::ServeConfig;

fn composite() -> Composite {
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let paxos = Replica::new(
        Config::new(NodeId(1), members),
        DurableState::bootstrap(),
        Slot::ZERO,
    )
    .expect("a valid configuration");
    let cfg = CompositeConfig {
        serve: ServeConfig {
            master: MasterConfig::default(),
            request_timeout_ms: 10_000,
        },
        origin: 7,
        checksum_interval_ms: 1_000,
        client_addrs: Default::default(),
    };
    Composite::new(cfg, paxos, Db::new(DbConfig::new("admin")).expect("valid"))
}

fn db_entry(request: u64, now: u64, op: Op) -> Vec<u8> {
    Entry::Db {
        origin: 99,
        request,
        cmd: Command::new(Ballot::ZERO, Instant(now), op),
    }
    .encode()
    .expect("encodes")
}

/// One value may carry several checksum commands with a write between them: the digest
/// checked for that slot is the first one's on every replica (before the fix, the second
/// overwrote the first and an honest replica reported a divergence).
#[test]
fn two_checksums_in_one_value_are_no_divergence() {
    let mut reference = Db::new(DbConfig::new("admin")).expect("valid");
    let checksum = |db: &mut Db, slot| {
        let cmd = Command::new(Ballot::ZERO, Instant(10), Op::Checksum);
        match db.apply(Slot(slot), &cmd).result {
            Ok(Outcome::Checksum { digest }) => digest.0,
            other => panic!("not a checksum: {other:?}"),
        }
    };
    let first = checksum(&mut reference, 1);
    let value = Value {
        commands: vec![
            db_entry(1, 10, Op::Checksum),
            db_entry(
                2,
                10,
                Op::CreateSession {
                    principal: "admin".into(),
                },
            ),
            db_entry(3, 10, Op::Checksum),
        ],
        change: None,
    };
    let mut c = composite();
    let mut effects = Vec::new();
    c.deliver(Instant(0), Instant(10), Slot(1), &value, &mut effects);
    assert_eq!(c.last_checksum(), Some((Slot(1), first)));
    let check = Value {
        commands: vec![Entry::DigestCheck {
            slot: Slot(1),
            digest: first,
        }
        .encode()
        .expect("encodes")],
        change: None,
    };
    c.deliver(Instant(0), Instant(10), Slot(2), &check, &mut effects);
    assert_eq!(c.divergence(), None);
    // A digest that really differs is still reported.
    let wrong = Value {
        commands: vec![Entry::DigestCheck {
            slot: Slot(1),
            digest: first ^ 1,
        }
        .encode()
        .expect("encodes")],
        change: None,
    };
    c.deliver(Instant(0), Instant(10), Slot(3), &wrong, &mut effects);
    assert!(c.divergence().is_some());
}
