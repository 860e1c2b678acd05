//! The errno of each client error and refusal (the mapping table of DESIGN §6).

use chubby_protocol::client_msg::CallError;
use chubby_protocol::db::{check_name, PathError};
use chubby_protocol::Refusal;
use fuser::Errno;

use crate::conn::ClientError;

/// The errno a refusal of the master becomes.
#[must_use]
pub fn of_refusal(r: &Refusal) -> Errno {
    let n = match r {
        Refusal::NotFound => libc::ENOENT,
        Refusal::Exists => libc::EEXIST,
        Refusal::NotADirectory => libc::ENOTDIR,
        Refusal::IsADirectory => libc::EISDIR,
        Refusal::NotEmpty => libc::ENOTEMPTY,
        Refusal::PermissionDenied => libc::EACCES,
        Refusal::CasMismatch { .. } | Refusal::WouldBlock | Refusal::LockDelayed { .. } => {
            libc::EAGAIN
        }
        Refusal::TooLarge => libc::EFBIG,
        Refusal::InvalidPath | Refusal::InvalidArgument => libc::EINVAL,
        Refusal::NotHeld => libc::ENOLCK,
        Refusal::AlreadyHeld => libc::EDEADLK,
        Refusal::Locked => libc::EBUSY,
        Refusal::TooMany => libc::ENOSPC,
        Refusal::StaleEpoch { .. }
        | Refusal::BadHandle
        | Refusal::SessionExpired
        | Refusal::StaleSequencer
        | Refusal::CallForgotten { .. } => libc::EIO,
    };
    Errno::from_i32(n)
}

/// The errno a client error becomes: refusals by their meaning; a lost session, an
/// unreachable cell or an unknown outcome are `EIO`.
#[must_use]
pub fn of(e: &ClientError) -> Errno {
    match e {
        ClientError::Call(CallError::Refused(r)) => of_refusal(r),
        ClientError::Call(CallError::BadRequest(_)) => Errno::from_i32(libc::EINVAL),
        _ => Errno::EIO,
    }
}

/// Checks a name the kernel passed (`..` and `.` never reach us: the kernel resolves them).
///
/// # Errors
/// `ENAMETOOLONG` for a name over 255 bytes; `EINVAL` for one that is not UTF-8 or breaks
/// another naming rule.
pub fn check(name: &std::ffi::OsStr) -> Result<&str, Errno> {
    let name = name.to_str().ok_or(Errno::from_i32(libc::EINVAL))?;
    match check_name(name) {
        Ok(()) => Ok(name),
        Err(PathError::NameTooLong | PathError::PathTooLong) => {
            Err(Errno::from_i32(libc::ENAMETOOLONG))
        }
        Err(_) => Err(Errno::from_i32(libc::EINVAL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn refusals_map_to_the_table() {
        assert_eq!(
            of_refusal(&Refusal::NotEmpty),
            Errno::from_i32(libc::ENOTEMPTY)
        );
        assert_eq!(of_refusal(&Refusal::TooLarge), Errno::from_i32(libc::EFBIG));
        assert_eq!(
            of_refusal(&Refusal::WouldBlock),
            Errno::from_i32(libc::EAGAIN)
        );
        assert_eq!(of_refusal(&Refusal::SessionExpired), Errno::EIO);
        let lost = ClientError::NoMaster {
            waited_ms: 1,
            last: "x".into(),
        };
        assert_eq!(of(&lost), Errno::EIO);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check(OsStr::new("ok")), Ok("ok"));
        let long = "x".repeat(256);
        assert_eq!(
            check(OsStr::new(&long)),
            Err(Errno::from_i32(libc::ENAMETOOLONG))
        );
        assert_eq!(check(OsStr::new("")), Err(Errno::from_i32(libc::EINVAL)));
    }
}
