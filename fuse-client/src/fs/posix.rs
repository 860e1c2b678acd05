//! Modes, owners and times between the kernel's SETATTR and the cell's SetAttr (pure).
//!
//! The cell stores a mode, an owner and POSIX times on every node (docs/mount.md, "Modes,
//! owners and times"). They are labels for tools (`cp -a`, `tar`, `rsync`, `make`, `git`)
//! and, with the mount's `default_permissions`, what the local kernel checks for its own
//! users; the cell's ACLs stay the access control between machines, checked by the master.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chubby_protocol::db::MODE_BITS;
use chubby_protocol::{AttrChange, TimeSet, Timespec};
use fuser::TimeOrNow;

/// What a SETATTR asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New mode (the kernel sends the file type bits too).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeOrNow>,
    /// New modification time.
    pub mtime: Option<TimeOrNow>,
}

impl SetAttr {
    /// The SetAttr change, `owner` being the node's current (uid, gid) to complete a
    /// change of one of the two.
    #[must_use]
    pub fn change(&self, owner: (u32, u32)) -> AttrChange {
        let owner = match (self.uid, self.gid) {
            (None, None) => None,
            (u, g) => Some((u.unwrap_or(owner.0), g.unwrap_or(owner.1))),
        };
        AttrChange {
            mode: self.mode.map(|m| m & MODE_BITS),
            owner,
            atime: self.atime.map(time_set),
            mtime: self.mtime.map(time_set),
            ephemeral_children: None,
        }
    }
}

/// A kernel time as the cell's.
#[must_use]
pub fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(timespec(t)),
    }
}

/// A `SystemTime` as a timespec (before 1970 too).
#[must_use]
pub fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => Timespec {
                    secs: -whole,
                    nanos: 0,
                },
                n => Timespec {
                    secs: -whole - 1,
                    nanos: 1_000_000_000 - n,
                },
            }
        }
    }
}

/// A timespec as a `SystemTime`.
#[must_use]
pub fn system_time(t: Timespec) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.secs.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos
    }
}

/// The permission bits for the kernel.
#[must_use]
pub fn perm(mode: u32) -> u16 {
    u16::try_from(mode & MODE_BITS).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times survive the round trip both sides of 1970, to the nanosecond.
    #[test]
    fn times_round_trip() {
        for (secs, nanos) in [
            (0, 0),
            (1, 5),
            (1_700_000_000, 999_999_999),
            (-1, 0),
            (-1, 1),
            (-86_400, 500),
        ] {
            let t = Timespec { secs, nanos };
            assert_eq!(timespec(system_time(t)), t, "{secs}.{nanos}");
        }
    }

    /// chown of the user alone keeps the group, and the reverse; the file type bits the
    /// kernel sends with a mode are dropped.
    #[test]
    fn partial_owner_and_mode() {
        let a = SetAttr {
            uid: Some(7),
            mode: Some(0o100_644),
            ..SetAttr::default()
        };
        let c = a.change((1, 2));
        assert_eq!(c.owner, Some((7, 2)));
        assert_eq!(c.mode, Some(0o644));
        let b = SetAttr {
            gid: Some(9),
            ..SetAttr::default()
        };
        assert_eq!(b.change((1, 2)).owner, Some((1, 9)));
        assert_eq!(SetAttr::default().change((1, 2)), AttrChange::default());
    }
}
