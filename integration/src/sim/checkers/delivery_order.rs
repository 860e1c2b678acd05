//! Delivery order: each replica delivers slots contiguously from the first, each exactly once
//! per start, and only values that are chosen (PML Fig. 2: the callback sees the log in order
//! on every replica).
//!
//! With snapshots (PML §5.5), "from the first" means from the slot after the application's
//! snapshot, and a snapshot must be exactly the chosen prefix it claims: the simulated
//! application state is a hash chain over delivered values, and a snapshot's chain is
//! compared with the chain of the values the agreement oracle saw chosen.

use std::collections::BTreeMap;

use chubby_protocol::db::fnv1a64;
use chubby_protocol::{NodeId, Slot, Value};

use super::agreement::Agreement;
use super::{violation, Violation};

/// The next slot each replica must deliver.
#[derive(Debug, Default)]
pub struct DeliveryOrder {
    next: BTreeMap<NodeId, Slot>,
    /// `prefix[k]`: the chain hash of the chosen values of slots 1..=k.
    prefix: Vec<u64>,
    /// Deliveries seen.
    pub delivered: u64,
}

/// The simulated application's state after applying `value` to state `prev`.
#[must_use]
pub fn chain(prev: u64, value: &Value) -> u64 {
    let mut h = fnv1a64(0xcbf2_9ce4_8422_2325, &prev.to_le_bytes());
    for command in &value.commands {
        h = fnv1a64(h, &(command.len() as u64).to_le_bytes());
        h = fnv1a64(h, command);
    }
    h
}

impl DeliveryOrder {
    /// `node` (re)started with an application state covering slots 1..=`applied` whose
    /// chain hash is `hash` (its snapshot; zero for none): it delivers from `applied + 1`.
    ///
    /// # Errors
    /// The snapshot is not the chosen prefix it claims to be.
    pub fn on_start(
        &mut self,
        node: NodeId,
        applied: Slot,
        hash: u64,
        agreement: &Agreement,
    ) -> Result<(), Violation> {
        self.check_prefix(node, applied, hash, agreement)?;
        self.next.insert(node, applied.next());
        Ok(())
    }

    /// `node` installed a snapshot covering 1..=`slot` with chain hash `hash`.
    ///
    /// # Errors
    /// The snapshot goes backwards or is not the chosen prefix it claims to be.
    pub fn on_install(
        &mut self,
        node: NodeId,
        slot: Slot,
        hash: u64,
        agreement: &Agreement,
    ) -> Result<(), Violation> {
        let expected = self.next.get(&node).copied().unwrap_or(Slot(1));
        if slot < expected {
            return Err(violation(
                "delivery_order",
                format!("{node} installed a snapshot at {slot}, behind its next slot {expected}"),
            ));
        }
        // From here on it is as if the replica restarted from this snapshot.
        self.on_start(node, slot, hash, agreement)
    }

    fn check_prefix(
        &mut self,
        node: NodeId,
        slot: Slot,
        hash: u64,
        agreement: &Agreement,
    ) -> Result<(), Violation> {
        if self.prefix.is_empty() {
            self.prefix.push(0);
        }
        while (self.prefix.len() as u64) <= slot.0 {
            let s = Slot(self.prefix.len() as u64);
            let Some(value) = agreement.chosen(s) else {
                return Err(violation(
                    "delivery_order",
                    format!("{node} holds a snapshot through {slot}, but {s} was never chosen"),
                ));
            };
            let last = *self.prefix.last().expect("starts with slot 0");
            self.prefix.push(chain(last, value));
        }
        let expected = self.prefix[slot.0 as usize];
        if expected != hash {
            return Err(violation(
                "delivery_order",
                format!("{node}'s snapshot through {slot} is not the chosen prefix"),
            ));
        }
        Ok(())
    }

    /// `node` delivered `value` at `slot`.
    ///
    /// # Errors
    /// Out of order, repeated, or not the chosen value.
    pub fn on_deliver(
        &mut self,
        node: NodeId,
        slot: Slot,
        value: &Value,
        agreement: &Agreement,
    ) -> Result<(), Violation> {
        let expected = self.next.get(&node).copied().unwrap_or(Slot(1));
        if slot != expected {
            return Err(violation(
                "delivery_order",
                format!("{node} delivered {slot}, expected {expected}"),
            ));
        }
        match agreement.chosen(slot) {
            None => {
                return Err(violation(
                    "delivery_order",
                    format!("{node} delivered {slot} before any value was chosen there"),
                ));
            }
            Some(chosen) if chosen != value => {
                return Err(violation(
                    "delivery_order",
                    format!("{node} delivered {value:?} at {slot} but {chosen:?} is chosen"),
                ));
            }
            Some(_) => {}
        }
        self.next.insert(node, slot.next());
        self.delivered += 1;
        Ok(())
    }
}
