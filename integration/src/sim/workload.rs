//! Simulated clients, closed-loop like real ones: each has one command outstanding at a
//! time, sends it to the replica it believes is master, follows `NotMaster` hints, retries
//! rejected commands, and gives up on a command whose outcome it never learns (a master that
//! stepped down with it in flight). Commands a master takes during the liveness window are
//! handed to the liveness checker.

use std::collections::VecDeque;

use chubby_protocol::NodeId;
use chubby_server::paxos::{Input, Rejection};

use super::{Event, Sim};

/// How long a client waits for its command before giving up on it.
const GIVE_UP_US: u64 = 5_000_000;

/// One client.
#[derive(Debug)]
pub(super) struct Client {
    id: usize,
    target: NodeId,
    next_seq: u64,
    retry: VecDeque<Vec<u8>>,
    outstanding: Option<Vec<u8>>,
    /// Only the Submit event carrying the current generation acts.
    gen: u64,
}

impl Client {
    pub fn new(id: usize, target: NodeId) -> Client {
        Client {
            id,
            target,
            next_seq: 0,
            retry: VecDeque::new(),
            outstanding: None,
            gen: 0,
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
    /// Schedules client `c`'s next submission after `delay_us`, cancelling any earlier one.
    pub(super) fn wake_client(&mut self, c: usize, delay_us: u64) {
        self.clients[c].gen += 1;
        let gen = self.clients[c].gen;
        self.schedule(self.now_us + delay_us, Event::Submit { client: c, gen });
    }

    pub(super) fn submit(&mut self, c: usize, gen: u64) {
        if self.clients[c].gen != gen || (self.healed && self.now_us > self.track_until_us) {
            return;
        }
        // Whatever was outstanding is given up: its outcome stays unknown.
        self.clients[c].outstanding = None;
        let target = self.clients[c].target;
        let i = self.index(target);
        if !self.nodes[i].is_up() {
            self.clients[c].target = self.rng.pick(&self.members).expect("members exist");
            let delay = self.rng.between(10_000, 100_000);
            self.wake_client(c, delay);
            return;
        }
        let command = self.clients[c].next_command();
        self.clients[c].outstanding = Some(command.clone());
        self.wake_client(c, GIVE_UP_US);
        self.stats.submitted += 1;
        let rejected = self
            .step(
                i,
                Input::Submit {
                    command: command.clone(),
                },
            )
            .contains(&command);
        let tracking = self.now_us >= self.track_from_us && self.now_us <= self.track_until_us;
        if let (false, true, Some(replica)) = (rejected, tracking, self.nodes[i].paxos()) {
            if let Some(epoch) = replica.epoch() {
                self.liveness.on_taken(command, target, epoch);
            }
        }
    }

    pub(super) fn on_rejected(&mut self, command: &[u8], reason: &Rejection) {
        let Some(c) = owner(command).filter(|&c| c < self.clients.len()) else {
            return;
        };
        if self.clients[c].outstanding.as_deref() != Some(command) {
            return;
        }
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
        client.outstanding = None;
        client.retry.push_back(command.to_vec());
        let delay = self.rng.between(5_000, 60_000);
        self.wake_client(c, delay);
    }

    pub(super) fn on_delivered(&mut self, node: NodeId, command: &[u8]) {
        let Some(c) = owner(command).filter(|&c| c < self.clients.len()) else {
            return;
        };
        let client = &self.clients[c];
        if client.target == node && client.outstanding.as_deref() == Some(command) {
            self.clients[c].outstanding = None;
            self.stats.committed += 1;
            let think = self.rng.between(1_000, 50_000);
            self.wake_client(c, think);
        }
    }
}
