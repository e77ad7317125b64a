//! Rollout tests: the state tables here; the spec's validation and batch sizes in
//! `tests/spec.rs`; the operator actions in `tests/actions.rs`; the engine's rules in
//! `tests/engine.rs`; properties over arbitrary fleets in `tests/props.rs`. `Fleet` below
//! drives a rollout the way the controller will: decide, apply, let devices report, move
//! the clock.

use pifleet_shared::DeviceId;

use super::*;

mod actions;
mod engine;
mod props;
mod service;
mod spec;

pub(super) fn id(n: usize) -> DeviceId {
    DeviceId::parse(&format!("pi-{n:03}")).unwrap()
}

pub(super) fn spec_with(change: impl FnOnce(&mut RolloutSettings)) -> RolloutSpec {
    let mut settings = RolloutSettings::default();
    change(&mut settings);
    RolloutSpec::new(settings).unwrap()
}

/// A rollout and its devices in memory, with a clock.
pub(super) struct Fleet {
    pub spec: RolloutSpec,
    pub rollout: RolloutView,
    pub devices: Vec<DeviceView>,
    pub now: i64,
}

impl Fleet {
    /// `compatible` devices in batches, then `incompatible` ones; started (not decided).
    pub fn started(spec: RolloutSpec, compatible: usize, incompatible: usize) -> Self {
        let ids: Vec<DeviceId> = (0..compatible).map(id).collect();
        let mut devices: Vec<DeviceView> = assign_batches(&spec, &ids)
            .into_iter()
            .map(|(id, batch)| DeviceView::pending(id, batch))
            .collect();
        devices.extend(
            (compatible..compatible + incompatible).map(|n| DeviceView::incompatible(id(n))),
        );
        let mut rollout = RolloutView::draft();
        start(&rollout, false)
            .unwrap()
            .apply(&mut rollout, &mut devices, 0);
        Self {
            spec,
            rollout,
            devices,
            now: 1_000_000,
        }
    }

    /// Decides and applies the decision.
    pub fn decide(&mut self) -> Decision {
        let decision = decide(&self.spec, &self.rollout, &self.devices, self.now);
        decision.apply(&mut self.rollout, &mut self.devices, self.now);
        decision
    }

    pub fn report(&mut self, device: usize, report: DeviceReport) {
        assert!(
            self.devices[device].apply_report(report, self.now),
            "{report:?} ignored by {:?}",
            self.devices[device].state
        );
    }

    /// The device goes all the way to `last`.
    pub fn finish(&mut self, device: usize, last: DeviceReport) {
        self.report(device, DeviceReport::Downloading);
        self.report(device, DeviceReport::Installing);
        self.report(device, last);
    }

    /// A downloading device goes on to `last`.
    pub fn finish_from_downloading(&mut self, device: usize, last: DeviceReport) {
        self.report(device, DeviceReport::Installing);
        self.report(device, last);
    }

    pub fn wait_secs(&mut self, secs: i64) {
        self.now += secs * 1000;
    }

    pub fn state(&self, device: usize) -> DeviceState {
        self.devices[device].state
    }

    pub fn count(&self, state: DeviceState) -> usize {
        self.devices.iter().filter(|d| d.state == state).count()
    }

    pub fn in_state(&self, state: DeviceState) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|&i| self.devices[i].state == state)
            .collect()
    }
}

pub(super) fn ids(devices: &[usize]) -> Vec<DeviceId> {
    devices.iter().map(|&n| id(n)).collect()
}

#[test]
fn names_roundtrip() {
    for s in RolloutStatus::ALL {
        assert_eq!(RolloutStatus::parse(s.as_str()), Some(s));
    }
    for s in DeviceState::ALL {
        assert_eq!(DeviceState::parse(s.as_str()), Some(s));
    }
    for c in PauseCause::ALL {
        assert_eq!(PauseCause::parse(c.as_str()), Some(c));
    }
    assert_eq!(RolloutStatus::parse("Running"), None);
    assert_eq!(DeviceState::parse("rolled-back"), None);
}

#[test]
fn device_state_classes() {
    use DeviceState::*;
    // (state, final, failure, result, holds a download slot)
    let table: [(DeviceState, bool, bool, bool, bool); 14] = [
        (Pending, false, false, false, false),
        (Queued, false, false, false, true),
        (Downloading, false, false, false, true),
        (Installing, false, false, false, false),
        (Healthy, true, false, true, false),
        (RolledBack, true, true, true, false),
        (FailedUnrecoverable, true, true, true, false),
        (Failed, true, true, true, false),
        (TimedOut, true, true, true, false),
        (Unreachable, true, false, false, false),
        (Incompatible, true, false, false, false),
        (Reverting, false, false, false, false),
        (Reverted, true, false, false, false),
        (Untouched, true, false, false, false),
    ];
    for (state, fin, failure, result, slot) in table {
        assert_eq!(state.is_final(), fin, "{state:?} final");
        assert_eq!(state.counts_as_failure(), failure, "{state:?} failure");
        assert_eq!(state.has_result(), result, "{state:?} result");
        assert_eq!(state.holds_download_slot(), slot, "{state:?} slot");
    }
    for status in RolloutStatus::ALL {
        let settled = matches!(status, RolloutStatus::Completed | RolloutStatus::Aborted);
        assert_eq!(status.is_final(), settled, "{status:?}");
    }
}

#[test]
fn device_reports_move_states() {
    use DeviceReport as R;
    use DeviceState::*;
    // Every state against every report, in the order of `DeviceReport::ALL`.
    let (dl, ins, ok, rb, fu, rv, fa, no) = (
        Some(Downloading),
        Some(Installing),
        Some(Healthy),
        Some(RolledBack),
        Some(FailedUnrecoverable),
        Some(Reverted),
        Some(Failed),
        None,
    );
    #[rustfmt::skip]
    let table: [(DeviceState, [Option<DeviceState>; 7]); 14] = [
        // columns: downloading, installing, healthy, rolled_back, failed_unrecoverable,
        // reverted, failed
        (Pending,             [no, no,  no, no, no, no, no]),
        (Queued,              [dl, ins, ok, rb, fu, no, fa]),
        (Downloading,         [no, ins, ok, rb, fu, no, fa]),
        (Installing,          [no, no,  ok, rb, fu, no, fa]),
        (Healthy,             [no, no,  no, rb, no, no, no]),
        (RolledBack,          [no, no,  no, no, no, no, no]),
        (FailedUnrecoverable, [no, no,  no, no, no, no, no]),
        (Failed,              [no, no,  no, no, no, no, no]),
        (TimedOut,            [no, no,  ok, rb, fu, no, fa]),
        (Unreachable,         [dl, ins, ok, rb, fu, no, fa]),
        (Incompatible,        [no, no,  no, no, no, no, no]),
        (Reverting,           [no, no,  no, no, fu, rv, ok]),
        (Reverted,            [no, no,  no, no, no, no, no]),
        (Untouched,           [dl, ins, ok, rb, fu, no, fa]),
    ];
    for (state, row) in table {
        for (report, want) in R::ALL.into_iter().zip(row) {
            assert_eq!(state.after_report(report), want, "{state:?} + {report:?}");
        }
    }
}

#[test]
fn reports_set_the_clocks() {
    let mut device = DeviceView::pending(id(1), 0);
    device.enter(DeviceState::Queued, 10);
    assert_eq!(
        (device.queued_at_ms, device.started_at_ms),
        (Some(10), None)
    );
    assert!(device.apply_report(DeviceReport::Downloading, 20));
    assert!(device.apply_report(DeviceReport::Installing, 30));
    assert_eq!(
        device.started_at_ms,
        Some(20),
        "the install clock runs from the download"
    );
    assert!(device.apply_report(DeviceReport::Healthy, 40));
    assert_eq!(device.finished_at_ms, Some(40));
    assert!(!device.apply_report(DeviceReport::Downloading, 50));
    assert_eq!(device.state, DeviceState::Healthy);
}
