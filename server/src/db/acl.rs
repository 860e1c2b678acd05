//! Access control: ACL names resolved through files under `/acl` (Chubby §2.3).
//!
//! An ACL name `n` refers to the file `/acl/n`; its lines are principal names (the client
//! certificate's common name). A principal is permitted if some line equals it exactly
//! (a trailing `\r` is ignored, so files edited on other systems work). A missing ACL file,
//! a directory in its place, or contents that are not UTF-8 permit nobody, except the
//! cell's admin principal, who may do anything. The cell starts with `/acl/admin` naming
//! the admin, and every node inherits `admin` from the root unless told otherwise.
//!
//! Which right each operation needs (the paper leaves the last two open):
//!
//! | operation | right on the node | note |
//! |---|---|---|
//! | Open | each right in the open mode | and the handle keeps the mode |
//! | SetContents, Delete, Acquire, TryAcquire | write | re-checked on each call |
//! | SetAcl | change-ACL | re-checked on each call |
//! | creating a node (Open, Rename target) | write on the parent directory | |
//!
//! Paths never matter beyond that (§2.3: "no path-dependent permissions"): renaming a file
//! into a directory needs only the directory's write right.

use chubby_protocol::db::check_name;
use chubby_protocol::{AclNames, OpenMode};

use super::namespace::Namespace;

/// One of the three rights a node's ACL names grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Read contents and metadata.
    Read,
    /// Write, delete, lock, create children.
    Write,
    /// Change the ACL names.
    ChangeAcl,
}

/// The ACL name that governs `right`.
#[must_use]
pub fn acl_for(acl: &AclNames, right: Right) -> &str {
    match right {
        Right::Read => &acl.read,
        Right::Write => &acl.write,
        Right::ChangeAcl => &acl.change_acl,
    }
}

/// True if `principal` is listed in the ACL file named `acl_name`, or is `admin`.
#[must_use]
pub fn permits(ns: &Namespace, admin: &str, principal: &str, acl_name: &str) -> bool {
    if principal == admin {
        return true;
    }
    if check_name(acl_name).is_err() {
        return false;
    }
    let path = format!("{}/{acl_name}", chubby_protocol::db::ACL_DIR);
    let Some(file) = ns.get(&path).filter(|n| !n.is_dir()) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(&file.contents) else {
        return false;
    };
    text.lines()
        .any(|line| line.strip_suffix('\r').unwrap_or(line) == principal)
}

/// True if `principal` has `right` under `acl`.
#[must_use]
pub fn has_right(
    ns: &Namespace,
    admin: &str,
    principal: &str,
    acl: &AclNames,
    right: Right,
) -> bool {
    permits(ns, admin, principal, acl_for(acl, right))
}

/// True if `principal` has every right in `mode` under `acl`.
#[must_use]
pub fn has_mode(
    ns: &Namespace,
    admin: &str,
    principal: &str,
    acl: &AclNames,
    mode: OpenMode,
) -> bool {
    (!mode.read || has_right(ns, admin, principal, acl, Right::Read))
        && (!mode.write || has_right(ns, admin, principal, acl, Right::Write))
        && (!mode.change_acl || has_right(ns, admin, principal, acl, Right::ChangeAcl))
}

/// True if the names are acceptable ACL names (the naming rules of a node name).
#[must_use]
pub fn valid_names(acl: &AclNames) -> bool {
    [&acl.read, &acl.write, &acl.change_acl]
        .iter()
        .all(|n| check_name(n).is_ok())
}

/// True if `principal` can be listed in an ACL file: one non-empty line, not too long.
#[must_use]
pub fn valid_principal(principal: &str) -> bool {
    !principal.is_empty()
        && principal.len() <= chubby_protocol::db::NAME_BYTES_MAX
        && !principal.contains(['\n', '\r', '\0'])
}
