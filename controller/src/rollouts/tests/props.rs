//! Properties over arbitrary specs and device behaviour: a simulated fleet runs against
//! `decide` until the rollout settles, checking every decision on the way.

use proptest::prelude::*;

use super::super::*;
use super::{Fleet, id};

/// Simulation step.
const STEP_MS: i64 = 500;
/// More steps than any generated rollout needs (30 devices one at a time, each at most
/// two 6 s deadlines, plus bake times).
const MAX_STEPS: usize = 20_000;

/// What a simulated device does with a deploy command.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Acknowledges, installs and ends with this report.
    Ends(DeviceReport),
    /// Never acknowledges (offline): ends unreachable.
    Silent,
    /// Starts downloading and never finishes: ends timed out.
    Stalls,
    /// The release does not fit it.
    Incompatible,
}

#[derive(Debug, Clone, Copy)]
struct Device {
    behaviour: Behaviour,
    /// Steps from queued to downloading.
    ack_steps: i64,
    /// Steps from downloading to the final report.
    work_steps: i64,
}

fn device() -> impl Strategy<Value = Device> {
    let behaviour = prop_oneof![
        6 => Just(Behaviour::Ends(DeviceReport::Healthy)),
        1 => Just(Behaviour::Ends(DeviceReport::RolledBack)),
        1 => Just(Behaviour::Ends(DeviceReport::FailedUnrecoverable)),
        1 => Just(Behaviour::Silent),
        1 => Just(Behaviour::Stalls),
        1 => Just(Behaviour::Incompatible),
    ];
    (behaviour, 0..8i64, 1..10i64).prop_map(|(behaviour, ack_steps, work_steps)| Device {
        behaviour,
        ack_steps,
        work_steps,
    })
}

fn settings() -> impl Strategy<Value = RolloutSettings> {
    (
        0..4u32,
        proptest::collection::btree_set(1..100u8, 0..4),
        1..=100u8,
        0..3u32,
        (1..=100u8, 1..6u32),
        (1..6u32, 1..6u32),
        0..5u32,
    )
        .prop_map(
            |(canary, steps, threshold, bake, (abort_pct, abort_min), (delivery, install), cap)| {
                let mut batch_percents: Vec<u8> = steps.into_iter().collect();
                batch_percents.push(100);
                RolloutSettings {
                    canary,
                    batch_percents,
                    success_threshold_pct: threshold,
                    bake_secs: bake,
                    abort_failure_pct: abort_pct,
                    abort_min_results: abort_min,
                    delivery_deadline_secs: delivery,
                    install_deadline_secs: install,
                    max_concurrent_downloads: cap,
                    maintenance_window: None,
                }
            },
        )
}

/// Moves each in-flight device on by its behaviour.
fn devices_act(fleet: &mut Fleet, script: &[Device]) {
    let now = fleet.now;
    for (view, device) in fleet.devices.iter_mut().zip(script) {
        let since = |t: Option<i64>| t.map_or(0, |t| (now - t) / STEP_MS);
        let report = match (view.state, device.behaviour) {
            (DeviceState::Queued, Behaviour::Silent) => None,
            (DeviceState::Queued, _) if since(view.queued_at_ms) >= device.ack_steps => {
                Some(DeviceReport::Downloading)
            }
            (DeviceState::Downloading, Behaviour::Ends(_)) => Some(DeviceReport::Installing),
            (DeviceState::Installing, Behaviour::Ends(last))
                if since(view.started_at_ms) >= device.work_steps =>
            {
                Some(last)
            }
            _ => None,
        };
        if let Some(report) = report {
            view.apply_report(report, now);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the devices do, `decide` sends only while running, only to pending devices
    /// of the batches reached so far, never beyond the current cumulative batch size or the
    /// download cap; and the rollout always settles, completed or paused (an operator
    /// resumes the first `resumes` health pauses).
    #[test]
    fn rollouts_respect_their_limits_and_settle(
        settings in settings(),
        script in proptest::collection::vec(device(), 0..30),
        resumes in 0..3usize,
    ) {
        let spec = RolloutSpec::new(settings).unwrap();
        let compatible: Vec<usize> = (0..script.len())
            .filter(|&i| !matches!(script[i].behaviour, Behaviour::Incompatible))
            .collect();
        let targets = spec.cumulative_targets(compatible.len());
        let ids: Vec<_> = compatible.iter().map(|&i| id(i)).collect();
        let batches: std::collections::HashMap<_, _> =
            assign_batches(&spec, &ids).into_iter().collect();
        let devices: Vec<DeviceView> = (0..script.len())
            .map(|i| match batches.get(&id(i)) {
                Some(&batch) => DeviceView::pending(id(i), batch),
                None => DeviceView::incompatible(id(i)),
            })
            .collect();
        let mut fleet = Fleet::started(spec.clone(), 0, 0);
        fleet.devices = devices;
        let cap = usize::try_from(spec.settings().max_concurrent_downloads).unwrap();
        let mut resumes_left = resumes;

        let mut steps = 0;
        loop {
            devices_act(&mut fleet, &script);
            let before = fleet.rollout;
            let decision = decide(&fleet.spec, &fleet.rollout, &fleet.devices, fleet.now);
            let after = decision.rollout.unwrap_or(before);
            if before.status != RolloutStatus::Running || after.status != RolloutStatus::Running {
                prop_assert!(
                    decision.deploy.is_empty(),
                    "sent while {:?} → {:?}", before.status, after.status
                );
            }
            for sent in &decision.deploy {
                let device = fleet.devices.iter().find(|d| &d.id == sent).unwrap();
                prop_assert_eq!(device.state, DeviceState::Pending);
                prop_assert!(device.batch <= after.batch);
            }
            decision.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);

            let touched = fleet.devices.iter()
                .filter(|d| !matches!(d.state, DeviceState::Pending | DeviceState::Incompatible))
                .count();
            let target = targets[usize::try_from(fleet.rollout.batch).unwrap()];
            prop_assert!(
                touched <= target,
                "{} devices touched, batch {} allows {}", touched, fleet.rollout.batch, target
            );
            if cap > 0 {
                let downloads =
                    fleet.devices.iter().filter(|d| d.state.holds_download_slot()).count();
                prop_assert!(downloads <= cap, "{} downloads, cap {}", downloads, cap);
            }

            match fleet.rollout.status {
                RolloutStatus::Completed => {
                    prop_assert!(fleet.devices.iter().all(|d| d.state.is_final()));
                    prop_assert_eq!(fleet.count(DeviceState::Pending), 0);
                    break;
                }
                RolloutStatus::Paused if resumes_left > 0 => {
                    resumes_left -= 1;
                    let t = resume(&fleet.spec, &fleet.rollout, &fleet.devices).unwrap();
                    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
                }
                RolloutStatus::Paused => break,
                status => prop_assert_eq!(status, RolloutStatus::Running),
            }
            steps += 1;
            prop_assert!(steps < MAX_STEPS, "still {:?} after {} steps", fleet.rollout, steps);
            fleet.now += STEP_MS;
        }
    }

    /// On arbitrary views (any states, any status, any clock), `decide` never sends
    /// unless running, only to pending devices, and never past the cap.
    #[test]
    fn decide_never_oversends_on_any_view(
        settings in settings(),
        status in proptest::sample::select(RolloutStatus::ALL.to_vec()),
        states in proptest::collection::vec(
            (
                proptest::sample::select(DeviceState::ALL.to_vec()),
                0..4u32,
                proptest::option::of(0..20_000i64),
            ),
            0..30,
        ),
        batch in 0..4u32,
        now in 0..30_000i64,
    ) {
        let spec = RolloutSpec::new(settings).unwrap();
        let devices: Vec<DeviceView> = states
            .iter()
            .enumerate()
            .map(|(i, &(state, batch, at))| DeviceView {
                state,
                queued_at_ms: at,
                started_at_ms: at,
                finished_at_ms: at,
                ..DeviceView::pending(id(i), batch)
            })
            .collect();
        let rollout = RolloutView { status, batch, ..RolloutView::draft() };
        let decision = decide(&spec, &rollout, &devices, now);
        if status != RolloutStatus::Running {
            prop_assert!(decision.deploy.is_empty());
        }
        let after = decision.rollout.unwrap_or(rollout);
        for sent in &decision.deploy {
            let device = devices.iter().find(|d| &d.id == sent).unwrap();
            prop_assert_eq!(device.state, DeviceState::Pending);
            prop_assert!(device.batch <= after.batch);
        }
        let cap = usize::try_from(spec.settings().max_concurrent_downloads).unwrap();
        if cap > 0 {
            let mut devices = devices;
            let mut rollout = rollout;
            decision.apply(&mut rollout, &mut devices, now);
            let downloads = devices.iter().filter(|d| d.state.holds_download_slot()).count();
            let held_before = states.iter().filter(|(s, _, _)| s.holds_download_slot()).count();
            prop_assert!(decision.deploy.is_empty() || downloads <= cap);
            prop_assert!(downloads <= cap.max(held_before));
        }
    }
}
