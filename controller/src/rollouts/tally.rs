//! Counting devices by state, and the counts in words for reasons and summaries.

use super::state::DeviceState;

/// How many devices are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    counts: [usize; DeviceState::ALL.len()],
}

/// The order states appear in a summary: outcomes first, then what is still moving.
const SUMMARY_ORDER: [DeviceState; 14] = [
    DeviceState::Healthy,
    DeviceState::RolledBack,
    DeviceState::FailedUnrecoverable,
    DeviceState::Failed,
    DeviceState::TimedOut,
    DeviceState::Unreachable,
    DeviceState::Pending,
    DeviceState::Queued,
    DeviceState::Downloading,
    DeviceState::Installing,
    DeviceState::Reverting,
    DeviceState::Reverted,
    DeviceState::Untouched,
    DeviceState::Incompatible,
];

impl Tally {
    pub fn of(states: impl IntoIterator<Item = DeviceState>) -> Self {
        let mut tally = Self::default();
        for state in states {
            tally.counts[state as usize] += 1;
        }
        tally
    }

    pub fn count(&self, state: DeviceState) -> usize {
        self.counts[state as usize]
    }

    fn sum(&self, pick: impl Fn(DeviceState) -> bool) -> usize {
        DeviceState::ALL
            .into_iter()
            .filter(|&s| pick(s))
            .map(|s| self.count(s))
            .sum()
    }

    pub fn healthy(&self) -> usize {
        self.count(DeviceState::Healthy)
    }

    /// Rolled back, failed unrecoverable, failed or timed out.
    pub fn failures(&self) -> usize {
        self.sum(DeviceState::counts_as_failure)
    }

    /// Healthy or failed: devices that ran the release to a verdict.
    pub fn results(&self) -> usize {
        self.sum(DeviceState::has_result)
    }

    /// Devices in the rollout's batches (all but incompatible ones).
    pub fn compatible(&self) -> usize {
        self.sum(|s| s != DeviceState::Incompatible)
    }

    /// Compatible devices without a final state yet.
    pub fn unfinished(&self) -> usize {
        self.sum(|s| !s.is_final())
    }

    /// Devices holding a download slot (queued or downloading).
    pub fn downloads(&self) -> usize {
        self.sum(DeviceState::holds_download_slot)
    }

    /// Every non-zero count, healthy always first: "8 healthy, 1 unreachable,
    /// 1 incompatible".
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("{} healthy", self.healthy())];
        for state in SUMMARY_ORDER.into_iter().skip(1) {
            let n = self.count(state);
            if n > 0 {
                parts.push(format!("{n} {}", words(state)));
            }
        }
        parts.join(", ")
    }

    /// The failures of a batch of `members` devices: "1 of 1 devices rolled back" for one
    /// kind, "3 of 10 devices failed (2 rolled back, 1 timed out)" for several.
    pub fn failure_summary(&self, members: usize) -> String {
        let kinds: Vec<(DeviceState, usize)> = SUMMARY_ORDER
            .into_iter()
            .filter(|s| s.counts_as_failure())
            .map(|s| (s, self.count(s)))
            .filter(|&(_, n)| n > 0)
            .collect();
        match kinds.as_slice() {
            [] => format!("0 of {members} devices failed"),
            [(state, n)] => format!("{n} of {members} devices {}", words(*state)),
            _ => {
                let parts: Vec<String> = kinds
                    .iter()
                    .map(|(state, n)| format!("{n} {}", words(*state)))
                    .collect();
                format!(
                    "{} of {members} devices failed ({})",
                    self.failures(),
                    parts.join(", ")
                )
            }
        }
    }
}

/// A state in running text: "rolled back", "failed unrecoverable".
pub fn words(state: DeviceState) -> String {
    state.as_str().replace('_', " ")
}
