//! How client calls map onto database operations and the sessions and paths they name.

use std::sync::Arc;

use chubby_protocol::client_msg::{Call, CallError};
use chubby_protocol::{HandleId, SessionId};

use crate::db::sessions::Handle;
use crate::db::{Db, Op};

/// The database operation of a write call; reads, `Status` and `ChangeMembers` are not.
pub(super) fn op_of(principal: &str, call: Call) -> Result<Op, CallError> {
    Ok(match call {
        Call::CreateSession => Op::CreateSession {
            principal: principal.to_owned(),
        },
        Call::CloseSession { session } => Op::CloseSession { session },
        Call::Open(open) => Op::Open(Box::new(open)),
        Call::Close { session, handle } => Op::Close { session, handle },
        Call::SetContents {
            session,
            handle,
            contents,
            expected,
        } => Op::SetContents {
            session,
            handle,
            contents,
            expected,
        },
        Call::Delete { session, handle } => Op::Delete { session, handle },
        Call::SetAcl {
            session,
            handle,
            acl,
            expected,
        } => Op::SetAcl {
            session,
            handle,
            acl,
            expected,
        },
        Call::Acquire {
            session,
            handle,
            mode,
        } => Op::Acquire {
            session,
            handle,
            mode,
        },
        Call::TryAcquire {
            session,
            handle,
            mode,
        } => Op::TryAcquire {
            session,
            handle,
            mode,
        },
        Call::Release { session, handle } => Op::Release { session, handle },
        Call::SetSequencer {
            session,
            handle,
            sequencer,
        } => Op::SetSequencer {
            session,
            handle,
            sequencer,
        },
        Call::Rename { session, from, to } => Op::Rename { session, from, to },
        Call::SetAttr {
            session,
            path,
            instance,
            change,
        } => Op::SetAttr {
            session,
            path,
            instance,
            change,
        },
        Call::KeepAlive { .. }
        | Call::GetContentsAndStat { .. }
        | Call::GetStat { .. }
        | Call::StatPath { .. }
        | Call::ReadDir { .. }
        | Call::GetSequencer { .. }
        | Call::CheckSequencer { .. }
        | Call::LockHolders { .. }
        | Call::Status
        | Call::ChangeMembers { .. }
        | Call::Backup
        | Call::BackupRead { .. }
        | Call::Reopen { .. }
        | Call::Reannounce { .. } => {
            return Err(CallError::BadRequest("not a session write".into()))
        }
    })
}

/// The session a database operation acts for, if any.
pub(super) fn op_session(op: &Op) -> Option<SessionId> {
    op.session()
}

/// The session a call names, if any.
pub(super) fn session_of(call: &Call) -> Option<SessionId> {
    match call {
        Call::Open(args) => Some(args.session),
        Call::Close { session, .. }
        | Call::GetContentsAndStat { session, .. }
        | Call::SetContents { session, .. }
        | Call::Delete { session, .. }
        | Call::KeepAlive { session, .. }
        | Call::CloseSession { session }
        | Call::GetStat { session, .. }
        | Call::ReadDir { session, .. }
        | Call::StatPath { session, .. }
        | Call::SetAcl { session, .. }
        | Call::Acquire { session, .. }
        | Call::TryAcquire { session, .. }
        | Call::Release { session, .. }
        | Call::GetSequencer { session, .. }
        | Call::LockHolders { session, .. }
        | Call::SetSequencer { session, .. }
        | Call::Rename { session, .. }
        | Call::SetAttr { session, .. }
        | Call::Reopen { session, .. }
        | Call::Reannounce { session, .. } => Some(*session),
        Call::Status
        | Call::CreateSession
        | Call::ChangeMembers { .. }
        | Call::Backup
        | Call::BackupRead { .. }
        | Call::CheckSequencer { .. } => None,
    }
}

/// The path handle `handle` of `session` is open on (`kept`: the master's memory has it).
pub(super) fn handle_path(
    db: &Db,
    session: SessionId,
    handle: HandleId,
    kept: Option<&Handle>,
) -> Option<Arc<str>> {
    db.handle(session, handle)
        .or(kept)
        .map(|h| Arc::clone(&h.path))
}
