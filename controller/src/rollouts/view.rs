//! What the store keeps about a rollout and its devices, as the engine reads it, and the
//! timestamps each device state change sets (one place, so the store and the tests agree).

use pifleet_shared::DeviceId;

use super::state::{DeviceReport, DeviceState, PauseCause, RolloutStatus};

/// What an operator accepted by resuming a rollout that its health rules paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiver {
    /// This batch passes once all its devices finish, whatever its success ratio.
    pub batch: u32,
    /// Failures across the rollout at the resume: the abort rule counts only later ones.
    pub failures: usize,
    /// Results across the rollout at the resume.
    pub results: usize,
}

/// A rollout's changing fields (its spec is separate and never changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutView {
    pub status: RolloutStatus,
    /// The batch being sent or evaluated, as an index into the spec's batches (0 = canary).
    pub batch: u32,
    /// Why it is paused; `None` unless paused.
    pub pause: Option<PauseCause>,
    /// Set by a resume after a health pause.
    pub waiver: Option<Waiver>,
    /// An abort asked for healthy devices to go back to their previous release.
    pub revert_on_abort: bool,
}

impl RolloutView {
    /// A rollout just created: a draft at the canary.
    pub fn draft() -> Self {
        Self {
            status: RolloutStatus::Draft,
            batch: 0,
            pause: None,
            waiver: None,
            revert_on_abort: false,
        }
    }
}

/// One device of a rollout. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub id: DeviceId,
    /// Its batch from [`crate::rollouts::assign_batches`]; ignored for incompatible devices.
    pub batch: u32,
    pub state: DeviceState,
    /// When the deploy command was queued; the delivery deadline runs from here. A queued
    /// device without it never reaches its delivery deadline.
    pub queued_at_ms: Option<i64>,
    /// When the device started downloading; the install deadline runs from here.
    pub started_at_ms: Option<i64>,
    /// When it reached its current final state; the bake time runs from the latest one.
    pub finished_at_ms: Option<i64>,
    /// An abort with revert can send it back: it ran an earlier release the controller
    /// still has, and no revert of it failed.
    pub revertible: bool,
}

impl DeviceView {
    /// A device waiting for its batch.
    pub fn pending(id: DeviceId, batch: u32) -> Self {
        Self {
            id,
            batch,
            state: DeviceState::Pending,
            queued_at_ms: None,
            started_at_ms: None,
            finished_at_ms: None,
            revertible: true,
        }
    }

    /// A device the release does not fit, outside every batch.
    pub fn incompatible(id: DeviceId) -> Self {
        Self {
            state: DeviceState::Incompatible,
            ..Self::pending(id, 0)
        }
    }

    /// Applies a progress report received at `now_ms` ([`DeviceState::after_report`]);
    /// returns whether it changed anything.
    pub fn apply_report(&mut self, report: DeviceReport, now_ms: i64) -> bool {
        match self.state.after_report(report) {
            Some(next) => {
                self.enter(next, now_ms);
                true
            }
            None => false,
        }
    }

    /// Moves the device to `state` at `now_ms` and sets the timestamps that state starts:
    /// queuing starts a new delivery; the first in-flight report starts the install clock;
    /// a final state records when it finished.
    pub fn enter(&mut self, state: DeviceState, now_ms: i64) {
        match state {
            DeviceState::Pending => {
                self.queued_at_ms = None;
                self.started_at_ms = None;
                self.finished_at_ms = None;
            }
            DeviceState::Queued => {
                self.queued_at_ms = Some(now_ms);
                self.started_at_ms = None;
                self.finished_at_ms = None;
            }
            DeviceState::Downloading | DeviceState::Installing => {
                if !matches!(
                    self.state,
                    DeviceState::Downloading | DeviceState::Installing
                ) {
                    self.started_at_ms = Some(now_ms);
                }
                self.finished_at_ms = None;
            }
            DeviceState::Reverting => {}
            _ => self.finished_at_ms = Some(now_ms),
        }
        self.state = state;
    }
}
