//! What operators do to a rollout, as pure functions over one transition table. Each
//! returns the [`Transition`] to store or why it is refused. After a transition to
//! `running` (start, approve, resume) the caller runs [`crate::rollouts::decide`] at once:
//! that is what sends the first batch, or re-evaluates a resumed one.

use std::collections::HashSet;

use pifleet_shared::DeviceId;

use super::spec::RolloutSpec;
use super::state::{DeviceState, PauseCause, RolloutStatus};
use super::tally::Tally;
use super::view::{DeviceView, RolloutView, Waiver};

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorAction {
    RequestApproval,
    Approve,
    Start,
    Pause,
    Resume,
    Abort,
}

impl OperatorAction {
    pub const ALL: [OperatorAction; 6] = [
        Self::RequestApproval,
        Self::Approve,
        Self::Start,
        Self::Pause,
        Self::Resume,
        Self::Abort,
    ];

    /// The action as a verb: "cannot {verb}: …".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestApproval => "request approval",
            Self::Approve => "approve",
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

/// The status an operator action moves a rollout to, or `None` when it is refused: the
/// one table of operator transitions. (The engine's own transitions — running to paused
/// on health, running to completed — are in [`crate::rollouts::decide`].)
pub fn operator_transition(action: OperatorAction, from: RolloutStatus) -> Option<RolloutStatus> {
    use OperatorAction as A;
    use RolloutStatus as S;
    match (action, from) {
        (A::RequestApproval, S::Draft) => Some(S::AwaitingApproval),
        (A::Start, S::Draft) | (A::Approve, S::AwaitingApproval) => Some(S::Running),
        (A::Pause, S::Running) => Some(S::Paused),
        (A::Resume, S::Paused) => Some(S::Running),
        (A::Abort, S::Draft | S::AwaitingApproval | S::Running | S::Paused) => Some(S::Aborted),
        _ => None,
    }
}

/// Why an operator action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefusedTransition {
    #[error("cannot {}: the rollout is {}", action.as_str(), from.phrase())]
    NotNow {
        action: OperatorAction,
        from: RolloutStatus,
    },
    #[error("cannot start: this rollout needs a second person's approval; request it")]
    ApprovalRequired,
}

/// A rollout's change by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The rollout's new fields.
    pub rollout: RolloutView,
    /// Pending and queued devices that leave the rollout (abort): they become
    /// `untouched`, and the deploy command of a queued one should be cancelled while it
    /// has not gone out.
    pub untouched: Vec<DeviceId>,
    /// Healthy devices to send the revert command to (abort with revert); they become
    /// `reverting`.
    pub revert: Vec<DeviceId>,
    /// What happened, for the audit log and the dashboard.
    pub reason: String,
}

impl Transition {
    fn to(rollout: RolloutView, reason: String) -> Self {
        Self {
            rollout,
            untouched: Vec::new(),
            revert: Vec::new(),
            reason,
        }
    }

    /// Applies the transition to the views as the store would, at `now_ms`.
    pub fn apply(&self, rollout: &mut RolloutView, devices: &mut [DeviceView], now_ms: i64) {
        let untouched: HashSet<&DeviceId> = self.untouched.iter().collect();
        let revert: HashSet<&DeviceId> = self.revert.iter().collect();
        for device in devices.iter_mut() {
            if untouched.contains(&device.id) {
                device.enter(DeviceState::Untouched, now_ms);
            } else if revert.contains(&device.id) {
                device.enter(DeviceState::Reverting, now_ms);
            }
        }
        *rollout = self.rollout;
    }
}

fn allowed(
    action: OperatorAction,
    rollout: &RolloutView,
) -> Result<RolloutStatus, RefusedTransition> {
    operator_transition(action, rollout.status).ok_or(RefusedTransition::NotNow {
        action,
        from: rollout.status,
    })
}

/// Draft → awaiting approval.
pub fn request_approval(rollout: &RolloutView) -> Result<Transition, RefusedTransition> {
    let status = allowed(OperatorAction::RequestApproval, rollout)?;
    Ok(Transition::to(
        RolloutView { status, ..*rollout },
        "approval requested".to_owned(),
    ))
}

/// Draft → running, at the canary. Refused when the caller's policy (two-person approval
/// above a target count) requires an approval: such a rollout goes through
/// [`request_approval`] and [`approve`].
pub fn start(
    rollout: &RolloutView,
    approval_required: bool,
) -> Result<Transition, RefusedTransition> {
    let status = allowed(OperatorAction::Start, rollout)?;
    if approval_required {
        return Err(RefusedTransition::ApprovalRequired);
    }
    Ok(Transition::to(
        running_from_start(status),
        "started".to_owned(),
    ))
}

/// Awaiting approval → running, at the canary. That the approver is not the person who
/// asked is the caller's check.
pub fn approve(rollout: &RolloutView) -> Result<Transition, RefusedTransition> {
    let status = allowed(OperatorAction::Approve, rollout)?;
    Ok(Transition::to(
        running_from_start(status),
        "approved and started".to_owned(),
    ))
}

fn running_from_start(status: RolloutStatus) -> RolloutView {
    RolloutView {
        status,
        ..RolloutView::draft()
    }
}

/// Running → paused. Devices already sent the release still finish.
pub fn pause(rollout: &RolloutView) -> Result<Transition, RefusedTransition> {
    let status = allowed(OperatorAction::Pause, rollout)?;
    Ok(Transition::to(
        RolloutView {
            status,
            pause: Some(PauseCause::Operator),
            ..*rollout
        },
        "paused by an operator".to_owned(),
    ))
}

/// Paused → running. After a health pause, resuming means the operator accepts what was
/// seen so far: the current batch no longer needs its threshold (it still waits for its
/// devices and its bake time), and the abort rule counts only failures from now on. After
/// an operator's pause nothing is waived, so a batch that failed meanwhile pauses again
/// at the next decision.
pub fn resume(
    spec: &RolloutSpec,
    rollout: &RolloutView,
    devices: &[DeviceView],
) -> Result<Transition, RefusedTransition> {
    let status = allowed(OperatorAction::Resume, rollout)?;
    let health = rollout.pause.is_some_and(|cause| cause.is_health());
    if !health {
        return Ok(Transition::to(
            RolloutView {
                status,
                pause: None,
                ..*rollout
            },
            "resumed by an operator".to_owned(),
        ));
    }
    let everyone = Tally::of(devices.iter().map(|d| d.state));
    let waiver = Waiver {
        batch: rollout.batch,
        failures: everyone.failures(),
        results: everyone.results(),
    };
    let reason = format!(
        "resumed by an operator, accepting the failures so far ({}): {} no longer needs \
         its threshold and the abort rule counts from here",
        waiver.failures,
        spec.batch_label(rollout.batch)
    );
    Ok(Transition::to(
        RolloutView {
            status,
            pause: None,
            waiver: Some(waiver),
            ..*rollout
        },
        reason,
    ))
}

/// Draft, awaiting approval, running or paused → aborted. Devices not yet sent anything
/// (pending) or whose command is not yet acknowledged (queued) become `untouched`; with
/// `revert`, healthy devices are sent back to their previous release (those that have one:
/// [`DeviceView::revertible`]), and so is any device
/// still in flight that turns healthy later ([`crate::rollouts::decide`] on an aborted
/// rollout). Without `revert`, devices keep what they have.
pub fn abort(
    rollout: &RolloutView,
    devices: &[DeviceView],
    revert: bool,
) -> Result<Transition, RefusedTransition> {
    let status = allowed(OperatorAction::Abort, rollout)?;
    let pick = |wanted: &dyn Fn(DeviceState) -> bool| -> Vec<DeviceId> {
        devices
            .iter()
            .filter(|d| wanted(d.state))
            .map(|d| d.id.clone())
            .collect()
    };
    let untouched = pick(&|s| matches!(s, DeviceState::Pending | DeviceState::Queued));
    let revert_now = if revert {
        devices
            .iter()
            .filter(|d| d.state == DeviceState::Healthy && d.revertible)
            .map(|d| d.id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let reason = format!(
        "aborted by an operator{}: {} untouched, {} reverting",
        if revert { " with revert" } else { "" },
        untouched.len(),
        revert_now.len()
    );
    Ok(Transition {
        rollout: RolloutView {
            status,
            pause: None,
            revert_on_abort: revert,
            ..*rollout
        },
        untouched,
        revert: revert_now,
        reason,
    })
}
