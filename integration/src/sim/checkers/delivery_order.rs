//! Delivery order: each replica delivers slots contiguously from the first, each exactly once
//! per start, and only values that are chosen (PML Fig. 2: the callback sees the log in order
//! on every replica).

use std::collections::BTreeMap;

use chubby_protocol::{NodeId, Slot, Value};

use super::agreement::Agreement;
use super::{violation, Violation};

/// The next slot each replica must deliver.
#[derive(Debug, Default)]
pub struct DeliveryOrder {
    next: BTreeMap<NodeId, Slot>,
    /// Deliveries seen.
    pub delivered: u64,
}

impl DeliveryOrder {
    /// `node` (re)started: it delivers from slot 1 again (no snapshots yet).
    pub fn on_start(&mut self, node: NodeId) {
        self.next.insert(node, Slot(1));
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
