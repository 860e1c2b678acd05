//! The extended attributes a mount shows (DESIGN §6): a node's Chubby metadata, readable
//! with `getfattr -d`, and the few settable ones.
//!
//! `user.chubby.{instance,content_generation,lock_generation,acl_generation,checksum,
//! ephemeral}` are read-only; `user.chubby.acl.{read,write,change}` are set with SetAcl;
//! `user.chubby.lock_delay` (milliseconds) applies to the locks this mount takes on the
//! file afterwards; `user.chubby.sequencer` appears on a file while a lock this mount holds
//! on it exists; `user.chubby.ephemeral=1` on a directory sets its replicated
//! ephemeral-children marker: every node created in it, from any mount or client, is
//! ephemeral.

use chubby_protocol::{NodeKind, Stat};

/// The prefix of every attribute.
pub const PREFIX: &str = "user.chubby.";

/// An attribute the mount knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// `instance`.
    Instance,
    /// `content_generation`.
    ContentGeneration,
    /// `lock_generation` (read fresh from the master).
    LockGeneration,
    /// `acl_generation`.
    AclGeneration,
    /// `checksum` (hex).
    Checksum,
    /// `ephemeral` (`0`/`1`).
    Ephemeral,
    /// `acl.read`.
    AclRead,
    /// `acl.write`.
    AclWrite,
    /// `acl.change`.
    AclChange,
    /// `lock_delay` (milliseconds).
    LockDelay,
    /// `sequencer`.
    Sequencer,
}

const ALL: [(Name, &str); 11] = [
    (Name::Instance, "instance"),
    (Name::ContentGeneration, "content_generation"),
    (Name::LockGeneration, "lock_generation"),
    (Name::AclGeneration, "acl_generation"),
    (Name::Checksum, "checksum"),
    (Name::Ephemeral, "ephemeral"),
    (Name::AclRead, "acl.read"),
    (Name::AclWrite, "acl.write"),
    (Name::AclChange, "acl.change"),
    (Name::LockDelay, "lock_delay"),
    (Name::Sequencer, "sequencer"),
];

impl Name {
    /// Parses a full attribute name.
    #[must_use]
    pub fn parse(full: &str) -> Option<Name> {
        let short = full.strip_prefix(PREFIX)?;
        ALL.iter().find(|(_, s)| *s == short).map(|(n, _)| *n)
    }

    /// The full attribute name.
    #[must_use]
    pub fn full(self) -> String {
        let short = ALL.iter().find(|(n, _)| *n == self).map_or("", |(_, s)| s);
        format!("{PREFIX}{short}")
    }
}

/// The attributes listed for a node: files carry content attributes; `sequencer` only
/// while a lock is held here.
#[must_use]
pub fn names(kind: NodeKind, has_sequencer: bool) -> Vec<Name> {
    ALL.iter()
        .map(|(n, _)| *n)
        .filter(|n| match n {
            Name::ContentGeneration | Name::Checksum | Name::LockDelay => kind == NodeKind::File,
            Name::Sequencer => has_sequencer,
            _ => true,
        })
        .collect()
}

/// The value of a metadata attribute; `None` for those not in a [`Stat`]
/// ([`Name::LockDelay`], [`Name::Sequencer`]).
#[must_use]
pub fn value(name: Name, stat: &Stat) -> Option<String> {
    Some(match name {
        Name::Instance => stat.instance.0.to_string(),
        Name::ContentGeneration => stat.content_generation.0.to_string(),
        Name::LockGeneration => stat.lock_generation.0.to_string(),
        Name::AclGeneration => stat.acl_generation.0.to_string(),
        Name::Checksum => format!("{:016x}", stat.checksum.0),
        Name::Ephemeral => u8::from(stat.ephemeral).to_string(),
        Name::AclRead => stat.acl.read.clone(),
        Name::AclWrite => stat.acl.write.clone(),
        Name::AclChange => stat.acl.change_acl.clone(),
        Name::LockDelay | Name::Sequencer => return None,
    })
}

/// Parses a `lock_delay` value: milliseconds, or a number with `ms` or `s`.
///
/// # Errors
/// A description of what is wrong.
pub fn parse_lock_delay(v: &[u8]) -> Result<u64, String> {
    let s = std::str::from_utf8(v)
        .map_err(|_| "not UTF-8".to_owned())?
        .trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (use 250, 250ms or 10s)"))?;
    n.checked_mul(scale).ok_or_else(|| "too long".to_owned())
}

/// Parses a `0`/`1` flag.
///
/// # Errors
/// Anything else.
pub fn parse_flag(v: &[u8]) -> Result<bool, String> {
    match std::str::from_utf8(v).map(str::trim) {
        Ok("1" | "true") => Ok(true),
        Ok("0" | "false") => Ok(false),
        _ => Err("expected 0 or 1".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_unknown() {
        for (n, _) in ALL {
            assert_eq!(Name::parse(&n.full()), Some(n));
        }
        assert_eq!(Name::parse("security.capability"), None);
        assert_eq!(Name::parse("user.chubby.nope"), None);
    }

    #[test]
    fn directories_list_no_content_attributes() {
        let d = names(NodeKind::Directory, false);
        assert!(d.contains(&Name::Ephemeral));
        assert!(!d.contains(&Name::Checksum));
        assert!(!names(NodeKind::File, false).contains(&Name::Sequencer));
        assert!(names(NodeKind::File, true).contains(&Name::Sequencer));
    }

    #[test]
    fn lock_delays_and_flags_parse() {
        assert_eq!(parse_lock_delay(b"250"), Ok(250));
        assert_eq!(parse_lock_delay(b"250ms"), Ok(250));
        assert_eq!(parse_lock_delay(b"10s\n"), Ok(10_000));
        assert!(parse_lock_delay(b"soon").is_err());
        assert_eq!(parse_flag(b"1"), Ok(true));
        assert!(parse_flag(b"2").is_err());
    }
}
