//! Simulated clients: each submits uniquely named commands to the replica it believes is
//! master, follows `NotMaster` hints, and retries rejected commands. Commands a master takes
//! during the liveness window are handed to the liveness checker.

use std::collections::VecDeque;

use chubby_protocol::NodeId;
use chubby_server::paxos::{Action, Input, Rejection};

use super::{Event, Sim};

/// One client.
#[derive(Debug)]
pub(super) struct Client {
    id: usize,
    target: NodeId,
    next_seq: u64,
    retry: VecDeque<Vec<u8>>,
}

impl Client {
    pub fn new(id: usize, target: NodeId) -> Client {
        Client {
            id,
            target,
            next_seq: 0,
            retry: VecDeque::new(),
        }
    }

    fn next_command(&mut self) -> Vec<u8> {
        if let Some(command) = self.retry.pop_front() {
            return command;
        }
        self.next_seq += 1;
        format!("c{}-{}", self.id, self.next_seq).into_bytes()
    }
}

/// Which client a command belongs to.
fn owner(command: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(command).ok()?;
    text.strip_prefix('c')?.split('-').next()?.parse().ok()
}

impl Sim {
    pub(super) fn submit(&mut self, c: usize) {
        let end = self.track_until_us;
        if self.healed && self.now_us > end {
            return;
        }
        let target = self.clients[c].target;
        let i = self.index(target);
        let gap = self.rng.between(2_000, 80_000);
        self.schedule(self.now_us + gap, Event::Submit { client: c });
        if !self.nodes[i].is_up() {
            self.clients[c].target = self.rng.pick(&self.members).expect("members exist");
            return;
        }
        let command = self.clients[c].next_command();
        self.stats.submitted += 1;
        let actions = self.step(
            i,
            Input::Submit {
                command: command.clone(),
            },
        );
        let rejected = actions.iter().any(
            |a| matches!(a, Action::Rejected { command: rejected, .. } if *rejected == command),
        );
        let tracking = self.now_us >= self.track_from_us && self.now_us <= end;
        if let (false, true, Some(replica)) = (rejected, tracking, self.nodes[i].replica.as_ref()) {
            if let Some(epoch) = replica.epoch() {
                self.liveness.on_taken(command, target, epoch);
            }
        }
    }

    pub(super) fn on_rejected(&mut self, command: &[u8], reason: &Rejection) {
        let Some(c) = owner(command).filter(|&c| c < self.clients.len()) else {
            return;
        };
        let hint = match reason {
            Rejection::NotMaster { hint } => *hint,
            Rejection::Busy => None,
        };
        let target = match hint {
            Some(hint) => hint,
            None => self.rng.pick(&self.members).expect("members exist"),
        };
        let client = &mut self.clients[c];
        client.target = target;
        client.retry.push_back(command.to_vec());
    }

    pub(super) fn on_delivered(&mut self, node: NodeId, command: &[u8]) {
        let Some(c) = owner(command).filter(|&c| c < self.clients.len()) else {
            return;
        };
        if self.clients[c].target == node {
            self.stats.committed += 1;
        }
    }
}
