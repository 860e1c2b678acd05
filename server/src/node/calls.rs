//! Client calls on the core loop: the shell around [`crate::serve::Serve`], which holds
//! every rule. This file keeps the reply channels by [`CallId`] and executes what serving
//! asks for (send a reply; stamp and propose a command).

use chubby_protocol::client_msg::{Answer, Call, CallError, Reply, BACKUP_CHUNK_BYTES};
use chubby_protocol::{Refusal, Slot};

use super::core::{Core, Parked};
use crate::serve::{CallId, ReplicaView};
use crate::transport::client_port::ClientCall;

impl Core {
    pub(super) fn on_call(&mut self, call: ClientCall) {
        let ClientCall {
            principal,
            request,
            reply,
        } = call;
        let name = request.call.name();
        let since = std::time::Instant::now();
        let result = match request.call {
            Call::Status => Ok(Answer::Status(Box::new(self.status()))),
            Call::Backup => {
                let parked = Parked {
                    tx: reply,
                    call: name,
                    since,
                };
                self.take_backup(&principal, parked);
                return;
            }
            Call::BackupRead { slot, offset } => self.read_backup(&principal, slot, offset),
            Call::ChangeMembers { add, remove } => self
                .change_members(&principal, add, remove)
                .map(|()| Answer::Done),
            _ => {
                if !matches!(request.call, Call::KeepAlive { .. }) {
                    self.client_calls += 1;
                }
                let id = self.park_reply(Parked {
                    tx: reply,
                    call: name,
                    since,
                });
                let mut effects = Vec::new();
                let (now, wall) = (self.now(), Self::wall());
                self.composite
                    .on_call(now, wall, &principal, request, id, &mut effects);
                self.effects(effects);
                return;
            }
        };
        let answer = match result {
            Ok(answer) => Reply::Ok(answer),
            Err(e) => Reply::Err(e),
        };
        self.metrics.answered(name, since, &answer);
        let _ = reply.send(answer);
    }

    /// Bytes of the backup this master holds, if it is the one taken at `slot`. Once its
    /// last byte is read the backup is dropped (a backup can be large).
    fn read_backup(
        &mut self,
        principal: &str,
        slot: Slot,
        offset: u64,
    ) -> Result<Answer, CallError> {
        if principal != super::ADMIN_PRINCIPAL {
            return Err(CallError::Refused(Refusal::PermissionDenied));
        }
        let Some((_, bytes)) = self.backup.as_ref().filter(|(s, _)| *s == slot) else {
            return Err(CallError::BadRequest(format!(
                "no backup at slot {slot} is held here (another backup replaced it, it was \
                 read to its end, or mastership moved): take it again"
            )));
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(BACKUP_CHUNK_BYTES).min(bytes.len());
        let chunk = bytes[start..end].to_vec();
        if end == bytes.len() {
            self.backup = None;
        }
        Ok(Answer::BackupBytes(chunk))
    }

    fn park_reply(&mut self, reply: Parked) -> CallId {
        let id = CallId(self.next_call);
        self.next_call += 1;
        self.replies.insert(id, reply);
        id
    }

    /// What serving needs of the replica right now.
    pub(super) fn view(&self) -> ReplicaView {
        self.composite.view(self.now())
    }

    /// Sends `reply` to the caller parked as `call`.
    pub(super) fn reply(&mut self, call: CallId, reply: Reply) {
        if let Some(parked) = self.replies.remove(&call) {
            self.metrics.answered(parked.call, parked.since, &reply);
            // The caller may have gone: nothing to do then.
            let _ = parked.tx.send(reply);
        }
    }
}
