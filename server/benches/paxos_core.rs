//! Committed commands per second of the pure Multi-Paxos core, for batch sizes 1, 16 and 256.
//!
//! Three replicas in one thread on a perfect in-memory network, no disk (Persist actions are
//! dropped): this measures the core's own cost per instance and per command, the ceiling the
//! shell's disk and network then lower. Run: `cargo bench -p chubby-server --bench paxos_core`.

use std::collections::VecDeque;
use std::time::Instant as WallClock;

use chubby_protocol::{Instant, NodeId, PaxosMsg, Slot};
use chubby_server::paxos::{Action, Config, DurableState, Input, Replica, RoleKind};

struct Cell {
    replicas: Vec<Replica>,
    wire: VecDeque<(NodeId, NodeId, PaxosMsg)>,
    delivered_commands: Vec<u64>,
    instances: u64,
    now: Instant,
    out: Vec<Action>,
}

impl Cell {
    fn new(batch: usize) -> Cell {
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let replicas = members
            .iter()
            .map(|&me| {
                let mut cfg = Config::new(me, members.clone());
                cfg.batch_commands_max = batch;
                cfg.window = 16;
                Replica::new(cfg, DurableState::bootstrap(), Slot::ZERO).expect("valid config")
            })
            .collect();
        Cell {
            replicas,
            wire: VecDeque::new(),
            delivered_commands: vec![0; 3],
            instances: 0,
            now: Instant(0),
            out: Vec::new(),
        }
    }

    fn step(&mut self, i: usize, input: Input) {
        self.out.clear();
        self.replicas[i].step(self.now, input, &mut self.out);
        let me = self.replicas[i].id();
        for action in self.out.drain(..) {
            match action {
                Action::Send { to, msg } => self.wire.push_back((me, to, msg)),
                Action::Deliver { value, .. } => {
                    self.delivered_commands[i] += value.commands.len() as u64;
                    if i == 0 {
                        self.instances += 1;
                    }
                }
                _ => {}
            }
        }
    }

    fn pump_wire(&mut self) {
        if let Some((from, to, msg)) = self.wire.pop_front() {
            self.step((to.0 - 1) as usize, Input::Peer { from, msg });
        }
    }

    fn elect(&mut self) -> usize {
        loop {
            self.now = self.now.plus_ms(50);
            for i in 0..3 {
                self.step(i, Input::Tick);
            }
            while !self.wire.is_empty() {
                self.pump_wire();
            }
            if let Some(m) = (0..3).find(|&i| self.replicas[i].role() == RoleKind::Master) {
                return m;
            }
        }
    }
}

fn measure(batch: usize, commands: u64) -> (f64, f64) {
    let mut cell = Cell::new(batch);
    let master = cell.elect();
    let base = cell.delivered_commands.clone();
    let payload = vec![7u8; 64];
    let in_flight_max = (16 * batch * 2) as u64;
    let mut submitted = 0u64;
    let started = WallClock::now();
    loop {
        let done_everywhere = (0..3).all(|i| cell.delivered_commands[i] - base[i] >= commands);
        if done_everywhere {
            break;
        }
        let delivered_at_master = cell.delivered_commands[master] - base[master];
        while submitted < commands && submitted - delivered_at_master < in_flight_max {
            cell.step(
                master,
                Input::Submit {
                    command: payload.clone(),
                },
            );
            submitted += 1;
        }
        if cell.wire.is_empty() {
            cell.now = cell.now.plus_ms(1);
            for i in 0..3 {
                cell.step(i, Input::Tick);
            }
        }
        cell.pump_wire();
    }
    let seconds = started.elapsed().as_secs_f64();
    (commands as f64 / seconds, cell.instances as f64 / seconds)
}

fn main() {
    println!(
        "pure Multi-Paxos core, 3 replicas in one thread, no disk, 64-byte commands, window 16"
    );
    println!(
        "{:>6} {:>24} {:>20}",
        "batch", "committed commands/s", "instances/s"
    );
    for (batch, commands) in [(1usize, 100_000u64), (16, 400_000), (256, 2_000_000)] {
        let (cps, ips) = measure(batch, commands);
        println!("{batch:>6} {cps:>24.0} {ips:>20.0}");
    }
}
