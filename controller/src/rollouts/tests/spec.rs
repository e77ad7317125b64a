//! The spec: validation (every problem at once), cumulative batch sizes and their
//! rounding, the assignment of devices to batches, batch labels.

use super::super::spec::MAX_DURATION_SECS;
use super::super::*;
use super::{id, ids, spec_with};

#[test]
fn settings_are_validated_all_at_once() {
    use SpecError as E;
    fn with(change: fn(&mut RolloutSettings)) -> RolloutSettings {
        let mut settings = RolloutSettings::default();
        change(&mut settings);
        settings
    }
    let duration = |what, secs, min| E::DurationOutOfRange {
        what,
        secs,
        min,
        max: MAX_DURATION_SECS,
    };
    let cases: Vec<(RolloutSettings, Vec<SpecError>)> = vec![
        (with(|_| {}), vec![]),
        (with(|s| s.batch_percents = vec![]), vec![E::NoBatches]),
        (with(|s| s.batch_percents = vec![100]), vec![]),
        (with(|s| s.canary = 0), vec![]),
        (
            with(|s| s.batch_percents = vec![0, 100]),
            vec![E::PercentOutOfRange { value: 0 }],
        ),
        (
            with(|s| s.batch_percents = vec![50, 101]),
            vec![E::PercentOutOfRange { value: 101 }],
        ),
        (
            with(|s| s.batch_percents = vec![50, 50, 100]),
            vec![E::PercentNotIncreasing {
                previous: 50,
                value: 50,
            }],
        ),
        (
            with(|s| s.batch_percents = vec![60, 40, 100]),
            vec![E::PercentNotIncreasing {
                previous: 60,
                value: 40,
            }],
        ),
        (
            with(|s| s.batch_percents = vec![10, 90]),
            vec![E::LastBatchNotAll { last: 90 }],
        ),
        (
            with(|s| s.success_threshold_pct = 0),
            vec![E::ThresholdOutOfRange(0)],
        ),
        (
            with(|s| s.success_threshold_pct = 101),
            vec![E::ThresholdOutOfRange(101)],
        ),
        (
            with(|s| s.abort_failure_pct = 0),
            vec![E::AbortPercentOutOfRange(0)],
        ),
        (
            with(|s| s.abort_min_results = 0),
            vec![E::AbortWithoutResults],
        ),
        (
            with(|s| {
                s.bake_secs = 0;
                s.delivery_deadline_secs = 1;
                s.install_deadline_secs = 1;
                s.max_concurrent_downloads = 0;
            }),
            vec![],
        ),
        (
            with(|s| s.delivery_deadline_secs = 0),
            vec![duration("delivery deadline", 0, 1)],
        ),
        (
            with(|s| s.install_deadline_secs = 0),
            vec![duration("install deadline", 0, 1)],
        ),
        (
            with(|s| s.bake_secs = MAX_DURATION_SECS + 1),
            vec![duration("bake time", MAX_DURATION_SECS + 1, 0)],
        ),
        (
            with(|s| {
                s.batch_percents = vec![80, 20];
                s.success_threshold_pct = 0;
                s.abort_min_results = 0;
            }),
            vec![
                E::PercentNotIncreasing {
                    previous: 80,
                    value: 20,
                },
                E::LastBatchNotAll { last: 20 },
                E::ThresholdOutOfRange(0),
                E::AbortWithoutResults,
            ],
        ),
    ];
    for (settings, want) in cases {
        let got = RolloutSpec::new(settings.clone()).err().map(|e| e.0);
        assert_eq!(got.unwrap_or_default(), want, "{settings:?}");
    }
    let err = RolloutSpec::new(with(|s| {
        s.batch_percents = vec![10, 90];
        s.success_threshold_pct = 0;
    }))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid rollout: batches: the last batch is 90 %; it must be 100 % so every device \
         is reached; success threshold: 0 % is outside 1-100"
    );
}

#[test]
fn batch_sizes_round_up_and_skip_empty_batches() {
    // (compatible devices, canary, percentages, cumulative targets)
    let cases: &[(usize, u32, &[u8], &[usize])] = &[
        (10, 1, &[50, 100], &[1, 5, 10]),
        (3, 0, &[50, 100], &[0, 2, 3]),
        (3, 1, &[50, 100], &[1, 2, 3]),
        (1, 1, &[50, 100], &[1, 1, 1]),
        (0, 1, &[50, 100], &[0, 0, 0]),
        (10, 6, &[50, 100], &[6, 6, 10]),
        (7, 20, &[100], &[7, 7]),
        (1000, 1, &[1, 10, 100], &[1, 10, 100, 1000]),
        (101, 0, &[1, 100], &[0, 2, 101]),
    ];
    for &(n, canary, percents, want) in cases {
        let spec = spec_with(|s| {
            s.canary = canary;
            s.batch_percents = percents.to_vec();
        });
        assert_eq!(
            spec.cumulative_targets(n),
            want,
            "{n} devices, canary {canary}, {percents:?}"
        );
    }
}

#[test]
fn devices_fill_batches_in_the_order_given() {
    let spec = spec_with(|s| {
        s.canary = 1;
        s.batch_percents = vec![50, 100];
    });
    let batches: Vec<u32> = assign_batches(&spec, &ids(&[5, 3, 9, 0, 1, 2, 4, 6, 7, 8]))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(batches, [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    assert_eq!(assign_batches(&spec, &ids(&[7]))[0], (id(7), 0));
    // Canary 6 then 50 %: the 50 % batch is empty and nobody is in it.
    let spec = spec_with(|s| {
        s.canary = 6;
        s.batch_percents = vec![50, 100];
    });
    let batches: Vec<u32> = assign_batches(&spec, &ids(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(batches, [0, 0, 0, 0, 0, 0, 2, 2, 2, 2]);
}

#[test]
fn batch_labels() {
    let spec = spec_with(|s| s.batch_percents = vec![50, 100]);
    assert_eq!(spec.batch_label(0), "batch 1 (canary)");
    assert_eq!(spec.batch_label(1), "batch 2 (50 %)");
    assert_eq!(spec.batch_label(2), "batch 3 (100 %)");
    assert_eq!(spec.batch_label(3), "batch 4");
}
