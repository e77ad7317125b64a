//! The rollout decision: given the spec, the rollout, its devices and the time, what to do
//! now. Pure: the caller reads the views from the store, applies the [`Decision`] and calls
//! [`decide`] again on every device report, operator action and at
//! [`Decision::next_check_at_ms`].
//!
//! Rules, in the order they apply:
//! 1. Deadlines, whatever the status (in-flight devices still finish while a rollout is
//!    paused or aborted): a queued device past its delivery deadline becomes
//!    `unreachable`; a downloading or installing device past its install deadline becomes
//!    `timed_out`.
//! 2. Only a running rollout goes on. The abort rule pauses it when failures reach the
//!    spec's share of results once enough devices have a result.
//! 3. The current batch pauses the rollout as soon as it cannot reach its success
//!    threshold even if every unfinished device turns healthy, or when all its devices
//!    finished without a single result (all unreachable: nothing shows the release works).
//!    Unreachable devices finish a batch but are not results, so offline devices do not
//!    hold a rollout back (it completes "8 healthy, 1 unreachable").
//! 4. A batch passes when all its devices (and any straggler of an earlier batch) are
//!    final, its results meet the threshold, and the bake time has passed since its last
//!    device finished. The next batch with devices starts at once; after the last, the
//!    rollout completes.
//! 5. A running rollout sends the deploy to pending devices of the current batch, in the
//!    order given, while fewer than the cap are queued or downloading, and only inside its
//!    maintenance window when it has one.

use std::collections::HashMap;

use pifleet_shared::DeviceId;

use super::spec::RolloutSpec;
use super::state::{DeviceState, PauseCause, RolloutStatus};
use super::tally::Tally;
use super::view::{DeviceView, RolloutView};

/// Which deadline a device missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// Queued → started downloading; missing it makes the device `unreachable`.
    Delivery,
    /// Started downloading → final result; missing it makes the device `timed_out`.
    Install,
}

impl Deadline {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivery => "delivery",
            Self::Install => "install",
        }
    }
}

/// A device that missed a deadline, and what it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub device: DeviceId,
    pub deadline: Deadline,
    /// When the deadline passed.
    pub deadline_at_ms: i64,
    /// `unreachable` or `timed_out`.
    pub state: DeviceState,
}

/// What to do now. Empty lists and `None` mean nothing changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Send the deploy command to these devices; they become `queued`.
    pub deploy: Vec<DeviceId>,
    /// Devices past a deadline. The deploy command of an unreachable device should be
    /// cancelled if it has not gone out (its expiry stops a late delivery otherwise).
    pub expired: Vec<Expiry>,
    /// Send the revert command to these devices (healthy after an abort with revert);
    /// they become `reverting`.
    pub revert: Vec<DeviceId>,
    /// The rollout's new fields, when its status, batch or pause cause change.
    pub rollout: Option<RolloutView>,
    /// Why the rollout changed, for the audit log and the dashboard.
    pub reason: Option<String>,
    /// The next time something changes without a device reporting (a deadline, the end
    /// of a bake): call [`decide`] again then.
    pub next_check_at_ms: Option<i64>,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.deploy.is_empty()
            && self.expired.is_empty()
            && self.revert.is_empty()
            && self.rollout.is_none()
    }

    /// Applies the decision to the views as the store would, at `now_ms`.
    pub fn apply(&self, rollout: &mut RolloutView, devices: &mut [DeviceView], now_ms: i64) {
        let mut changes: HashMap<&DeviceId, DeviceState> = HashMap::new();
        for expiry in &self.expired {
            changes.insert(&expiry.device, expiry.state);
        }
        for id in &self.deploy {
            changes.insert(id, DeviceState::Queued);
        }
        for id in &self.revert {
            changes.insert(id, DeviceState::Reverting);
        }
        for device in devices.iter_mut() {
            if let Some(&state) = changes.get(&device.id) {
                device.enter(state, now_ms);
            }
        }
        if let Some(next) = self.rollout {
            *rollout = next;
        }
    }
}

/// Decides what to do now; see the module documentation for the rules.
pub fn decide(
    spec: &RolloutSpec,
    rollout: &RolloutView,
    devices: &[DeviceView],
    now_ms: i64,
) -> Decision {
    let mut decision = Decision::default();
    let mut states: Vec<DeviceState> = Vec::with_capacity(devices.len());
    for device in devices {
        match missed_deadline(spec, device, now_ms) {
            Some(expiry) => {
                states.push(expiry.state);
                decision.expired.push(expiry);
            }
            None => {
                states.push(device.state);
                let due = next_deadline(spec, device);
                decision.next_check_at_ms = earliest(decision.next_check_at_ms, due);
            }
        }
    }
    match rollout.status {
        RolloutStatus::Running => run(spec, rollout, devices, &states, now_ms, &mut decision),
        RolloutStatus::Aborted if rollout.revert_on_abort => {
            decision.revert = devices
                .iter()
                .zip(&states)
                .filter(|&(device, &state)| state == DeviceState::Healthy && device.revertible)
                .map(|(device, _)| device.id.clone())
                .collect();
        }
        _ => {}
    }
    decision
}

/// The deadline `device` has passed at `now_ms`, if any.
fn missed_deadline(spec: &RolloutSpec, device: &DeviceView, now_ms: i64) -> Option<Expiry> {
    let (deadline, at) = deadline_of(spec, device)?;
    (now_ms >= at).then(|| Expiry {
        device: device.id.clone(),
        deadline,
        deadline_at_ms: at,
        state: match deadline {
            Deadline::Delivery => DeviceState::Unreachable,
            Deadline::Install => DeviceState::TimedOut,
        },
    })
}

fn next_deadline(spec: &RolloutSpec, device: &DeviceView) -> Option<i64> {
    deadline_of(spec, device).map(|(_, at)| at)
}

/// The deadline that applies to `device` in its current state, and when it passes.
fn deadline_of(spec: &RolloutSpec, device: &DeviceView) -> Option<(Deadline, i64)> {
    match device.state {
        DeviceState::Queued => device.queued_at_ms.map(|t| {
            (
                Deadline::Delivery,
                t.saturating_add(spec.delivery_deadline_ms()),
            )
        }),
        DeviceState::Downloading | DeviceState::Installing => device.started_at_ms.map(|t| {
            (
                Deadline::Install,
                t.saturating_add(spec.install_deadline_ms()),
            )
        }),
        _ => None,
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How the current batch stands.
enum BatchVerdict {
    Passed,
    /// Devices still working, or baking until the given time.
    Waiting(Option<i64>),
    Failed,
    NoResults,
}

/// Rules 2-5 for a running rollout; `states` are the devices' states after rule 1.
fn run(
    spec: &RolloutSpec,
    rollout: &RolloutView,
    devices: &[DeviceView],
    states: &[DeviceState],
    now_ms: i64,
    decision: &mut Decision,
) {
    let everyone = Tally::of(states.iter().copied());
    if let Some(reason) = abort_rule(spec, rollout, &everyone) {
        pause(
            rollout,
            rollout.batch,
            PauseCause::AbortRule,
            reason,
            decision,
        );
        return;
    }

    let mut batch = rollout.batch;
    let mut passed: Option<String> = None;
    loop {
        let tally = tally_where(devices, states, |b| b == batch);
        let stragglers = tally_where(devices, states, |b| b < batch).unfinished();
        let last_finished = devices
            .iter()
            .zip(states)
            .filter(|&(d, &s)| d.batch == batch && s.is_final() && s != DeviceState::Incompatible)
            .filter_map(|(d, _)| d.finished_at_ms)
            .max();
        let waived = rollout.waiver.is_some_and(|w| w.batch == batch);
        let label = spec.batch_label(batch);
        let threshold = spec.settings().success_threshold_pct;
        match batch_verdict(spec, &tally, stragglers, last_finished, waived, now_ms) {
            BatchVerdict::Failed => {
                let failed = tally.failure_summary(tally.compatible());
                let reason = format!("{label} failed: {failed}; threshold {threshold} %");
                pause(rollout, batch, PauseCause::BatchFailed, reason, decision);
                return;
            }
            BatchVerdict::NoResults => {
                let members = tally.compatible();
                let reason = format!(
                    "{label} has no result: {} of {members} devices unreachable",
                    tally.count(DeviceState::Unreachable)
                );
                pause(rollout, batch, PauseCause::NoResults, reason, decision);
                return;
            }
            BatchVerdict::Waiting(until) => {
                decision.next_check_at_ms = earliest(decision.next_check_at_ms, until);
                break;
            }
            BatchVerdict::Passed => {
                if tally.compatible() > 0 {
                    passed = Some(format!("{label} passed: {}", tally.summary()));
                }
                let next = devices
                    .iter()
                    .zip(states)
                    .filter(|&(d, &s)| d.batch > batch && s != DeviceState::Incompatible)
                    .map(|(d, _)| d.batch)
                    .min();
                match next {
                    Some(next) => batch = next,
                    None => {
                        decision.rollout = Some(RolloutView {
                            status: RolloutStatus::Completed,
                            pause: None,
                            batch,
                            ..*rollout
                        });
                        decision.reason = Some(format!("completed: {}", everyone.summary()));
                        return;
                    }
                }
            }
        }
    }

    if batch != rollout.batch {
        decision.rollout = Some(RolloutView { batch, ..*rollout });
        let started = format!("starting {}", spec.batch_label(batch));
        decision.reason = Some(match passed {
            Some(passed) => format!("{passed}; {started}"),
            None => started,
        });
    }

    if let Some(window) = &spec.settings().maintenance_window
        && !window.contains(now_ms)
    {
        let opens = window.next_open_ms(now_ms);
        decision.next_check_at_ms = earliest(decision.next_check_at_ms, Some(opens));
        return;
    }
    let cap = usize::try_from(spec.settings().max_concurrent_downloads).unwrap_or(usize::MAX);
    let slots = match cap {
        0 => usize::MAX,
        cap => cap.saturating_sub(everyone.downloads()),
    };
    decision.deploy = devices
        .iter()
        .zip(states)
        .filter(|&(d, &s)| s == DeviceState::Pending && d.batch <= batch)
        .take(slots)
        .map(|(d, _)| d.id.clone())
        .collect();
}

/// Rule 2: the reason to pause, if failures since the last waiver reach the spec's share
/// of results and there are enough results to judge.
fn abort_rule(spec: &RolloutSpec, rollout: &RolloutView, everyone: &Tally) -> Option<String> {
    let settings = spec.settings();
    let (mut failures, mut results) = (everyone.failures(), everyone.results());
    let mut since = "";
    if let Some(waiver) = rollout.waiver {
        failures = failures.saturating_sub(waiver.failures);
        results = results.saturating_sub(waiver.results);
        since = " since the last resume";
    }
    let min_results = usize::try_from(settings.abort_min_results).unwrap_or(usize::MAX);
    let limit = usize::from(settings.abort_failure_pct);
    if results < min_results || failures.saturating_mul(100) < limit.saturating_mul(results) {
        return None;
    }
    Some(format!(
        "abort rule: {failures} of {results} results failed{since} ({} %); the limit is \
         {limit} % once {min_results} devices have a result",
        failures.saturating_mul(100) / results.max(1)
    ))
}

/// Rules 3-4 for one batch. `stragglers` are unfinished devices of earlier batches
/// (a late report can put an unreachable device back in flight).
fn batch_verdict(
    spec: &RolloutSpec,
    tally: &Tally,
    stragglers: usize,
    last_finished: Option<i64>,
    waived: bool,
    now_ms: i64,
) -> BatchVerdict {
    let threshold = usize::from(spec.settings().success_threshold_pct);
    let unfinished = tally.unfinished();
    // The best this batch can still do: every unfinished device turns healthy.
    let best_healthy = tally.healthy().saturating_add(unfinished);
    let best_results = tally.results().saturating_add(unfinished);
    if !waived && best_healthy.saturating_mul(100) < threshold.saturating_mul(best_results) {
        return BatchVerdict::Failed;
    }
    if unfinished > 0 || stragglers > 0 {
        return BatchVerdict::Waiting(None);
    }
    if !waived && tally.compatible() > 0 && tally.results() == 0 {
        return BatchVerdict::NoResults;
    }
    if let Some(last) = last_finished {
        let baked_at = last.saturating_add(spec.bake_ms());
        if now_ms < baked_at {
            return BatchVerdict::Waiting(Some(baked_at));
        }
    }
    BatchVerdict::Passed
}

fn pause(
    rollout: &RolloutView,
    batch: u32,
    cause: PauseCause,
    reason: String,
    decision: &mut Decision,
) {
    decision.rollout = Some(RolloutView {
        status: RolloutStatus::Paused,
        batch,
        pause: Some(cause),
        ..*rollout
    });
    decision.reason = Some(reason);
}

/// The states of the compatible devices whose batch `pick` selects.
fn tally_where(
    devices: &[DeviceView],
    states: &[DeviceState],
    pick: impl Fn(u32) -> bool,
) -> Tally {
    Tally::of(
        devices
            .iter()
            .zip(states)
            .filter(|&(d, &s)| pick(d.batch) && s != DeviceState::Incompatible)
            .map(|(_, &s)| s),
    )
}
