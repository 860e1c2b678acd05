//! Per-replica clocks that drift: each runs at a rate within ±ε of true time (the bound the
//! Paxos lease math assumes) from a random offset. A negative test draws rates beyond ε.

use chubby_protocol::Instant;

/// A replica's clock as a function of true simulated time (microseconds).
#[derive(Clone, Copy, Debug)]
pub struct NodeClock {
    /// Local microseconds at true time zero.
    pub offset_us: u64,
    /// Rate error in parts per million (positive: runs fast).
    pub rate_ppm: i64,
}

const MILLION: i64 = 1_000_000;

impl NodeClock {
    /// Local time at true time `true_us`, in the core's milliseconds.
    #[must_use]
    pub fn local(&self, true_us: u64) -> Instant {
        // i64 suffices: a run lasts minutes (1e8 us), times a rate near 1e6, is 1e14.
        let true_us = i64::try_from(true_us).unwrap_or(i64::MAX / MILLION / 2);
        let scaled = true_us * (MILLION + self.rate_ppm) / MILLION;
        let local_us = i64::try_from(self.offset_us).unwrap_or(0) + scaled;
        Instant(u64::try_from(local_us / 1000).unwrap_or(0))
    }

    /// The earliest true time at which the local clock reads at least `deadline`.
    #[must_use]
    pub fn true_time_of(&self, deadline: Instant) -> u64 {
        let deadline_us = i64::try_from(deadline.0)
            .unwrap_or(i64::MAX / 1000)
            .min(i64::MAX / 1000 / MILLION)
            * 1000;
        let local_us = deadline_us - i64::try_from(self.offset_us).unwrap_or(0);
        let rate = MILLION + self.rate_ppm;
        let mut true_us = (local_us * MILLION + rate - 1).div_euclid(rate).max(0);
        // Integer rounding: step forward until the clock really reads the deadline.
        while self.local(u64::try_from(true_us).unwrap_or(u64::MAX)) < deadline {
            true_us += 1;
        }
        u64::try_from(true_us).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_time_of_inverts_local() {
        for (offset_us, rate_ppm) in [(0, 0), (123_456, 10_000), (7, -10_000), (999, 3)] {
            let clock = NodeClock {
                offset_us,
                rate_ppm,
            };
            for deadline in [0u64, 1, 999, 1_000_000] {
                let t = clock.true_time_of(Instant(deadline));
                assert!(clock.local(t) >= Instant(deadline));
                assert!(t == 0 || clock.local(t - 1) < Instant(deadline));
            }
        }
    }
}
