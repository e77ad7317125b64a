//! The engine's rules, one test per rule, through `Fleet` (decide, apply, report, wait).

use super::super::*;
use super::{Fleet, id, ids, spec_with};
use DeviceReport as R;
use DeviceState::*;
use RolloutStatus::*;

/// Canary 1, then 50 % and 100 %.
fn canary_then_half(change: impl FnOnce(&mut RolloutSettings)) -> RolloutSpec {
    spec_with(|s| {
        s.canary = 1;
        s.batch_percents = vec![50, 100];
        change(s);
    })
}

/// One batch with every device, no cap.
fn one_batch(change: impl FnOnce(&mut RolloutSettings)) -> RolloutSpec {
    spec_with(|s| {
        s.canary = 0;
        s.batch_percents = vec![100];
        s.max_concurrent_downloads = 0;
        change(s);
    })
}

#[test]
fn batches_go_out_one_after_the_other_and_complete() {
    let mut fleet = Fleet::started(canary_then_half(|_| {}), 10, 0);
    let d = fleet.decide();
    assert_eq!((d.deploy, d.rollout, d.reason), (ids(&[0]), None, None));
    assert!(
        fleet.decide().is_empty(),
        "nothing new until the canary reports"
    );

    fleet.finish(0, R::Healthy);
    let d = fleet.decide();
    assert_eq!(d.deploy, ids(&[1, 2, 3, 4]));
    assert_eq!(
        d.reason.as_deref(),
        Some("batch 1 (canary) passed: 1 healthy; starting batch 2 (50 %)")
    );
    assert_eq!(fleet.rollout.batch, 1);

    for i in 1..=4 {
        fleet.finish(i, R::Healthy);
    }
    let d = fleet.decide();
    assert_eq!(d.deploy, ids(&[5, 6, 7, 8, 9]));
    assert_eq!(fleet.rollout.batch, 2);

    for i in 5..=9 {
        fleet.finish(i, R::Healthy);
    }
    let d = fleet.decide();
    assert_eq!(d.reason.as_deref(), Some("completed: 10 healthy"));
    assert_eq!((fleet.rollout.status, fleet.rollout.batch), (Completed, 2));
    assert!(d.deploy.is_empty());
    assert!(
        fleet.decide().is_empty(),
        "a completed rollout does nothing"
    );
}

#[test]
fn a_failed_canary_pauses_at_once_and_the_other_nine_stay_untouched() {
    let mut fleet = Fleet::started(canary_then_half(|_| {}), 10, 0);
    fleet.decide();
    fleet.finish(0, R::RolledBack);
    let d = fleet.decide();
    assert!(d.deploy.is_empty());
    assert_eq!(
        d.reason.as_deref(),
        Some("batch 1 (canary) failed: 1 of 1 devices rolled back; threshold 100 %")
    );
    assert_eq!(fleet.rollout.status, Paused);
    assert_eq!(fleet.rollout.pause, Some(PauseCause::BatchFailed));
    assert_eq!(fleet.count(Pending), 9);
    assert!(fleet.decide().is_empty(), "a paused rollout sends nothing");

    let t = abort(&fleet.rollout, &fleet.devices, false).unwrap();
    assert_eq!(t.untouched, ids(&[1, 2, 3, 4, 5, 6, 7, 8, 9]));
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    assert_eq!(fleet.count(Untouched), 9);
    assert_eq!(fleet.state(0), RolledBack);
}

#[test]
fn a_batch_passes_only_after_its_bake_time() {
    let mut fleet = Fleet::started(canary_then_half(|s| s.bake_secs = 60), 10, 0);
    fleet.decide();
    fleet.finish(0, R::Healthy);
    let healthy_at = fleet.now;
    let d = fleet.decide();
    assert!(d.deploy.is_empty() && d.rollout.is_none());
    assert_eq!(d.next_check_at_ms, Some(healthy_at + 60_000));
    fleet.wait_secs(59);
    assert!(fleet.decide().deploy.is_empty());
    fleet.wait_secs(1);
    let d = fleet.decide();
    assert_eq!(d.deploy, ids(&[1, 2, 3, 4]));
    assert_eq!(fleet.rollout.batch, 1);
}

#[test]
fn a_threshold_of_90_tolerates_one_failure_in_ten() {
    // (failures among the 10, status once every device reported, reason)
    let cases: [(usize, RolloutStatus, &str); 3] = [
        (0, Completed, "completed: 10 healthy"),
        (1, Completed, "completed: 9 healthy, 1 rolled back"),
        (
            2,
            Paused,
            "batch 2 (100 %) failed: 2 of 10 devices rolled back; threshold 90 %",
        ),
    ];
    for (failures, status, reason) in cases {
        let mut fleet = Fleet::started(one_batch(|s| s.success_threshold_pct = 90), 10, 0);
        assert_eq!(fleet.decide().deploy.len(), 10);
        let mut last = None;
        for i in 0..10 {
            let outcome = if i < failures {
                R::RolledBack
            } else {
                R::Healthy
            };
            fleet.finish(i, outcome);
            let d = fleet.decide();
            if d.reason.is_some() {
                last = d.reason;
            }
            if fleet.rollout.status != Running {
                break;
            }
        }
        assert_eq!(fleet.rollout.status, status, "{failures} failures");
        assert_eq!(last.as_deref(), Some(reason));
    }
}

#[test]
fn a_batch_that_cannot_reach_its_threshold_pauses_without_waiting_for_the_rest() {
    let spec = one_batch(|s| {
        s.success_threshold_pct = 80;
        s.abort_min_results = 100;
    });
    let mut fleet = Fleet::started(spec, 10, 0);
    fleet.decide();
    fleet.finish(0, R::RolledBack);
    fleet.finish(1, R::FailedUnrecoverable);
    fleet.decide();
    assert_eq!(fleet.rollout.status, Running, "8 of 10 can still make 80 %");
    for i in 2..10 {
        fleet.report(i, R::Downloading);
    }
    fleet.wait_secs(i64::from(spec::DEFAULT_INSTALL_DEADLINE_SECS));
    let d = fleet.decide();
    assert_eq!(d.expired.len(), 8, "everyone in flight timed out");
    assert_eq!(fleet.rollout.status, Paused);
    assert_eq!(
        d.reason.as_deref(),
        Some(
            "batch 2 (100 %) failed: 10 of 10 devices failed (1 rolled back, \
             1 failed unrecoverable, 8 timed out); threshold 80 %"
        )
    );

    let mut fleet = Fleet::started(one_batch(|s| s.success_threshold_pct = 80), 10, 0);
    fleet.decide();
    for i in 0..3 {
        fleet.finish(i, R::RolledBack);
    }
    fleet.decide();
    assert_eq!(fleet.rollout.status, Paused, "7 of 10 at best: below 80 %");
    assert_eq!(
        fleet.count(Queued),
        7,
        "in-flight devices are left to finish"
    );
}

#[test]
fn the_abort_rule_pauses_on_failures_across_results() {
    // Threshold 50 % so the batch rule stays quiet; abort at 30 % once 4 devices have a
    // result. (outcomes in order, paused by the abort rule?)
    let cases: &[(&[DeviceState], bool)] = &[
        (&[Healthy, Healthy, Healthy, RolledBack], false),
        (&[RolledBack, RolledBack, RolledBack], false),
        (&[RolledBack, Healthy, Healthy, RolledBack], true),
        (
            &[Healthy, Healthy, Healthy, FailedUnrecoverable, TimedOut],
            true,
        ),
        (
            &[
                Healthy,
                Healthy,
                Unreachable,
                Unreachable,
                Unreachable,
                RolledBack,
            ],
            false,
        ),
        (&[Healthy, Healthy, Healthy, Unreachable, RolledBack], false),
    ];
    for &(outcomes, paused) in cases {
        let spec = one_batch(|s| {
            s.success_threshold_pct = 50;
            s.abort_failure_pct = 30;
            s.abort_min_results = 4;
        });
        let mut fleet = Fleet::started(spec, 10, 0);
        fleet.decide();
        for (i, &state) in outcomes.iter().enumerate() {
            fleet.devices[i].enter(state, fleet.now);
        }
        fleet.decide();
        let want = if paused {
            Some(PauseCause::AbortRule)
        } else {
            None
        };
        assert_eq!(fleet.rollout.pause, want, "{outcomes:?}");
    }

    let spec = one_batch(|s| {
        s.success_threshold_pct = 50;
        s.abort_failure_pct = 30;
        s.abort_min_results = 4;
    });
    let mut fleet = Fleet::started(spec, 10, 0);
    fleet.decide();
    for (i, r) in [R::RolledBack, R::Healthy, R::Healthy, R::RolledBack]
        .into_iter()
        .enumerate()
    {
        fleet.finish(i, r);
    }
    let d = fleet.decide();
    assert_eq!(
        d.reason.as_deref(),
        Some(
            "abort rule: 2 of 4 results failed (50 %); the limit is 30 % once 4 devices have \
             a result"
        )
    );
    // A resume accepts those failures: the rule counts afresh.
    let t = resume(&fleet.spec, &fleet.rollout, &fleet.devices).unwrap();
    assert_eq!(
        t.rollout.waiver,
        Some(Waiver {
            batch: 1,
            failures: 2,
            results: 4
        })
    );
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    fleet.finish(4, R::RolledBack);
    fleet.decide();
    assert_eq!(fleet.rollout.status, Running, "1 result since the resume");
    for i in 5..8 {
        fleet.finish(i, R::Healthy);
    }
    fleet.finish(8, R::RolledBack);
    let d = fleet.decide();
    assert_eq!(fleet.rollout.pause, Some(PauseCause::AbortRule));
    assert!(
        d.reason
            .unwrap()
            .contains("2 of 5 results failed since the last resume (40 %)")
    );
}

#[test]
fn the_download_cap_holds_queued_and_downloading_devices() {
    let mut fleet = Fleet::started(
        one_batch(|s| {
            s.max_concurrent_downloads = 3;
            s.delivery_deadline_secs = 60;
        }),
        10,
        0,
    );
    assert_eq!(fleet.decide().deploy, ids(&[0, 1, 2]));
    assert!(fleet.decide().deploy.is_empty());
    fleet.report(0, R::Downloading);
    assert!(
        fleet.decide().deploy.is_empty(),
        "downloading still holds its slot"
    );
    fleet.report(0, R::Installing);
    assert_eq!(fleet.decide().deploy, ids(&[3]), "installing frees it");
    fleet.report(1, R::Healthy);
    assert_eq!(fleet.decide().deploy, ids(&[4]));
    fleet.wait_secs(60);
    let d = fleet.decide();
    assert_eq!(d.expired.len(), 3, "2, 3 and 4 never acknowledged");
    assert_eq!(
        d.deploy,
        ids(&[5, 6, 7]),
        "slots of unreachable devices are free again"
    );
}

#[test]
fn unreachable_devices_finish_their_batch_and_the_rollout_completes() {
    let mut fleet = Fleet::started(one_batch(|s| s.delivery_deadline_secs = 60), 9, 1);
    let queued_at = fleet.now;
    assert_eq!(
        fleet.decide().deploy.len(),
        9,
        "the incompatible device gets nothing"
    );
    for i in 0..8 {
        fleet.finish(i, R::Healthy);
    }
    let d = fleet.decide();
    assert!(d.rollout.is_none());
    assert_eq!(d.next_check_at_ms, Some(queued_at + 60_000));
    fleet.wait_secs(60);
    let d = fleet.decide();
    assert_eq!(
        d.expired,
        vec![Expiry {
            device: id(8),
            deadline: Deadline::Delivery,
            deadline_at_ms: queued_at + 60_000,
            state: Unreachable,
        }]
    );
    assert_eq!(fleet.rollout.status, Completed);
    assert_eq!(
        d.reason.as_deref(),
        Some("completed: 8 healthy, 1 unreachable, 1 incompatible")
    );
}

#[test]
fn a_batch_with_nothing_but_unreachable_devices_pauses() {
    let mut fleet = Fleet::started(canary_then_half(|s| s.delivery_deadline_secs = 1), 10, 0);
    fleet.decide();
    fleet.wait_secs(1);
    let d = fleet.decide();
    assert_eq!(fleet.rollout.pause, Some(PauseCause::NoResults));
    assert_eq!(
        d.reason.as_deref(),
        Some("batch 1 (canary) has no result: 1 of 1 devices unreachable")
    );
}

#[test]
fn the_install_deadline_times_devices_out_as_failures() {
    let mut fleet = Fleet::started(canary_then_half(|s| s.install_deadline_secs = 120), 10, 0);
    fleet.decide();
    fleet.report(0, R::Downloading);
    let started = fleet.now;
    fleet.wait_secs(30);
    fleet.report(0, R::Installing);
    let d = fleet.decide();
    assert_eq!(d.next_check_at_ms, Some(started + 120_000));
    fleet.wait_secs(89);
    assert!(fleet.decide().expired.is_empty());
    fleet.wait_secs(1);
    let d = fleet.decide();
    assert_eq!(
        d.expired,
        vec![Expiry {
            device: id(0),
            deadline: Deadline::Install,
            deadline_at_ms: started + 120_000,
            state: TimedOut,
        }]
    );
    assert_eq!(
        d.reason.as_deref(),
        Some("batch 1 (canary) failed: 1 of 1 devices timed out; threshold 100 %")
    );
}

#[test]
fn deadlines_still_apply_while_paused_and_nothing_is_sent() {
    let mut fleet = Fleet::started(one_batch(|s| s.delivery_deadline_secs = 10), 4, 0);
    fleet.decide();
    pause(&fleet.rollout)
        .unwrap()
        .apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    fleet.wait_secs(10);
    let d = fleet.decide();
    assert_eq!(d.expired.len(), 4);
    assert!(d.deploy.is_empty() && d.rollout.is_none());
    assert_eq!(fleet.rollout.status, Paused);
}

#[test]
fn only_a_running_rollout_sends() {
    for status in RolloutStatus::ALL {
        let mut fleet = Fleet::started(one_batch(|_| {}), 3, 0);
        fleet.rollout.status = status;
        let d = fleet.decide();
        assert_eq!(d.deploy.is_empty(), status != Running, "{status:?}");
    }
}

/// A fleet in the middle of batch 2: device 0 (canary) and 1 healthy, 2 downloading,
/// 3 and 4 queued, 5-9 pending.
fn mid_rollout() -> Fleet {
    let mut fleet = Fleet::started(canary_then_half(|_| {}), 10, 0);
    fleet.decide();
    fleet.finish(0, R::Healthy);
    fleet.decide();
    fleet.finish(1, R::Healthy);
    fleet.report(2, R::Downloading);
    fleet
}

#[test]
fn abort_without_revert_leaves_devices_as_they_are() {
    let mut fleet = mid_rollout();
    let t = abort(&fleet.rollout, &fleet.devices, false).unwrap();
    assert_eq!(t.untouched, ids(&[3, 4, 5, 6, 7, 8, 9]));
    assert!(t.revert.is_empty());
    assert_eq!(t.reason, "aborted by an operator: 7 untouched, 0 reverting");
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    assert_eq!(fleet.rollout.status, Aborted);
    fleet.finish_from_downloading(2, R::Healthy);
    let d = fleet.decide();
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(fleet.in_state(Healthy), [0, 1, 2]);
}

#[test]
fn abort_with_revert_reverts_healthy_devices_now_and_later() {
    let mut fleet = mid_rollout();
    let t = abort(&fleet.rollout, &fleet.devices, true).unwrap();
    assert_eq!(t.revert, ids(&[0, 1]));
    assert_eq!(
        t.reason,
        "aborted by an operator with revert: 7 untouched, 2 reverting"
    );
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    assert_eq!(fleet.in_state(Reverting), [0, 1]);
    assert!(fleet.decide().is_empty());
    // Device 2 was downloading at the abort: once healthy it is reverted too.
    fleet.finish_from_downloading(2, R::Healthy);
    let d = fleet.decide();
    assert_eq!(d.revert, ids(&[2]));
    assert!(d.deploy.is_empty());
    for i in 0..3 {
        fleet.report(i, R::Reverted);
    }
    assert!(fleet.decide().is_empty());
    assert_eq!(fleet.count(Reverted), 3);
}

#[test]
fn resuming_after_a_health_pause_accepts_the_failed_batch() {
    let mut fleet = Fleet::started(canary_then_half(|_| {}), 10, 0);
    fleet.decide();
    fleet.finish(0, R::RolledBack);
    fleet.decide();
    let t = resume(&fleet.spec, &fleet.rollout, &fleet.devices).unwrap();
    assert_eq!(
        t.reason,
        "resumed by an operator, accepting the failures so far (1): batch 1 (canary) no \
         longer needs its threshold and the abort rule counts from here"
    );
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    let d = fleet.decide();
    assert_eq!(
        d.reason.as_deref(),
        Some("batch 1 (canary) passed: 0 healthy, 1 rolled back; starting batch 2 (50 %)")
    );
    assert_eq!(d.deploy, ids(&[1, 2, 3, 4]));
    // The waiver was for the canary only.
    fleet.finish(1, R::RolledBack);
    fleet.decide();
    assert_eq!(fleet.rollout.pause, Some(PauseCause::BatchFailed));
}

#[test]
fn resuming_after_an_operator_pause_waives_nothing() {
    let mut fleet = Fleet::started(canary_then_half(|_| {}), 10, 0);
    fleet.decide();
    pause(&fleet.rollout)
        .unwrap()
        .apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    fleet.finish(0, R::RolledBack);
    assert!(fleet.decide().rollout.is_none(), "paused stays paused");
    let t = resume(&fleet.spec, &fleet.rollout, &fleet.devices).unwrap();
    assert_eq!(
        (t.rollout.waiver, t.reason.as_str()),
        (None, "resumed by an operator")
    );
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    fleet.decide();
    assert_eq!(fleet.rollout.pause, Some(PauseCause::BatchFailed));
}

#[test]
fn an_empty_fleet_completes_at_once() {
    // (compatible, incompatible, reason)
    let cases = [
        (0, 0, "completed: 0 healthy"),
        (0, 3, "completed: 0 healthy, 3 incompatible"),
    ];
    for (compatible, incompatible, reason) in cases {
        let mut fleet = Fleet::started(canary_then_half(|_| {}), compatible, incompatible);
        let d = fleet.decide();
        assert!(d.deploy.is_empty());
        assert_eq!(fleet.rollout.status, Completed);
        assert_eq!(d.reason.as_deref(), Some(reason));
    }
}

#[test]
fn empty_batches_are_skipped() {
    // Canary 6 of 10 covers the 50 % batch: from the canary straight to 100 %.
    let spec = spec_with(|s| {
        s.canary = 6;
        s.batch_percents = vec![50, 100];
    });
    let mut fleet = Fleet::started(spec, 10, 0);
    assert_eq!(fleet.decide().deploy.len(), 6);
    for i in 0..6 {
        fleet.finish(i, R::Healthy);
    }
    let d = fleet.decide();
    assert_eq!(d.deploy, ids(&[6, 7, 8, 9]));
    assert_eq!(
        d.reason.as_deref(),
        Some("batch 1 (canary) passed: 6 healthy; starting batch 3 (100 %)")
    );
    // No canary: the first decision starts the first batch with devices.
    let mut fleet = Fleet::started(one_batch(|_| {}), 3, 0);
    let d = fleet.decide();
    assert_eq!(d.reason.as_deref(), Some("starting batch 2 (100 %)"));
    assert_eq!(d.deploy.len(), 3);
}

#[test]
fn a_late_report_from_an_unreachable_device_is_waited_for() {
    let mut fleet = Fleet::started(canary_then_half(|s| s.delivery_deadline_secs = 5), 3, 0);
    // 3 devices: canary 1, then 2 (50 %), then 3.
    fleet.decide();
    fleet.finish(0, R::Healthy);
    fleet.decide();
    fleet.wait_secs(5);
    fleet.decide();
    assert_eq!(fleet.state(1), Unreachable);
    assert_eq!(fleet.rollout.pause, Some(PauseCause::NoResults));
    // The command had got through after all.
    fleet.report(1, R::Downloading);
    let t = resume(&fleet.spec, &fleet.rollout, &fleet.devices).unwrap();
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    assert!(
        fleet.decide().deploy.is_empty(),
        "batch 2 waits for its device"
    );
    fleet.report(1, R::Installing);
    fleet.report(1, R::Healthy);
    assert_eq!(fleet.decide().deploy, ids(&[2]));
}

#[test]
fn abort_with_revert_skips_devices_without_an_earlier_release_and_failed_reverts() {
    let mut fleet = mid_rollout();
    fleet.devices[1].revertible = false;
    let t = abort(&fleet.rollout, &fleet.devices, true).unwrap();
    assert_eq!(t.revert, ids(&[0]), "device 1 has nothing to go back to");
    t.apply(&mut fleet.rollout, &mut fleet.devices, fleet.now);
    // The revert of device 0 fails before changing anything: it stays healthy, and once
    // the caller marks it not revertible the engine stops sending the revert.
    fleet.report(0, R::Failed);
    assert_eq!(fleet.state(0), Healthy);
    assert_eq!(fleet.decide().revert, ids(&[0]));
    fleet.devices[0].revertible = false;
    fleet.devices[0].state = Healthy;
    assert!(fleet.decide().revert.is_empty());
}

#[test]
fn failed_installs_count_against_the_batch() {
    let mut fleet = Fleet::started(canary_then_half(|_| {}), 10, 0);
    fleet.decide();
    fleet.finish(0, R::Failed);
    let d = fleet.decide();
    assert_eq!(fleet.rollout.status, Paused);
    assert_eq!(
        d.reason.as_deref(),
        Some("batch 1 (canary) failed: 1 of 1 devices failed; threshold 100 %")
    );
}

#[test]
fn deploys_wait_for_the_maintenance_window() {
    // Monday 2026-12-07 00:00 UTC; the window opens at 02:00.
    let monday = 1_796_601_600_000;
    let spec = one_batch(|s| {
        s.maintenance_window = Some(Window::parse("mon 02:00-03:00").unwrap());
    });
    let mut fleet = Fleet::started(spec, 3, 0);
    fleet.now = monday;
    let d = fleet.decide();
    assert!(d.deploy.is_empty(), "closed: {d:?}");
    assert_eq!(d.next_check_at_ms, Some(monday + 2 * 3_600_000));
    fleet.now = monday + 2 * 3_600_000;
    assert_eq!(fleet.decide().deploy, ids(&[0, 1, 2]));
    // Devices already sent the release finish after the window closes.
    fleet.now = monday + 4 * 3_600_000;
    fleet.finish(0, R::Healthy);
    assert_eq!(fleet.state(0), Healthy);
}
