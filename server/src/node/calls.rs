//! Client calls on the core loop: the shell around [`crate::serve::Serve`], which holds
//! every rule. This file keeps the reply channels by [`CallId`] and executes what serving
//! asks for (send a reply; stamp and propose a command).

use chubby_protocol::client_msg::{Answer, Call, Reply};
use tokio::sync::oneshot;

use super::client_port::ClientCall;
use super::core::Core;
use crate::paxos::Input;
use crate::serve::{CallId, ReplicaView, ServeAction};

impl Core {
    pub(super) fn on_call(&mut self, call: ClientCall) {
        let ClientCall {
            principal,
            request,
            reply,
        } = call;
        let result = match request.call {
            Call::Status => Ok(Answer::Status(Box::new(self.status()))),
            Call::ChangeMembers { add, remove } => self
                .change_members(&principal, add, remove)
                .map(|()| Answer::Done),
            _ => {
                if !matches!(request.call, Call::KeepAlive { .. }) {
                    self.client_calls += 1;
                }
                let id = self.park_reply(reply);
                let view = self.view();
                let now = self.now();
                let mut out = Vec::new();
                self.serve
                    .on_call(&view, &self.db, now, &principal, request, id, &mut out);
                self.serve_actions(out);
                return;
            }
        };
        let _ = reply.send(match result {
            Ok(answer) => Reply::Ok(answer),
            Err(e) => Reply::Err(e),
        });
    }

    fn park_reply(&mut self, reply: oneshot::Sender<Reply>) -> CallId {
        let id = CallId(self.next_call);
        self.next_call += 1;
        self.replies.insert(id, reply);
        id
    }

    /// What serving needs of the replica right now.
    pub(super) fn view(&self) -> ReplicaView {
        ReplicaView {
            role: self.replica.role(),
            lease_held: self.replica.lease_until(self.now()).is_some(),
            hint: self.replica.master_hint().and_then(|id| self.hint_of(id)),
        }
    }

    /// Executes what serving asked for.
    pub(super) fn serve_actions(&mut self, out: Vec<ServeAction>) {
        for action in out {
            match action {
                ServeAction::Reply { call, reply } => {
                    if let Some(tx) = self.replies.remove(&call) {
                        // The caller may have gone: nothing to do then.
                        let _ = tx.send(reply);
                    }
                }
                ServeAction::Propose { request, epoch, op } => {
                    self.submit_command_as(request, epoch, op);
                }
                // Logged by serving itself.
                ServeAction::Expiring { .. } => {}
                ServeAction::StepDown { epoch } => self.inputs.push(Input::StepDown { epoch }),
            }
        }
    }
}
