//! A rollout's immutable spec: its batches, the health rules that stop it, its deadlines and
//! its download cap. [`RolloutSettings`] is what an operator asks for; [`RolloutSpec`] is the
//! same once validated, and the only form the engine accepts.

use std::fmt;

use pifleet_shared::DeviceId;

use super::window::Window;

/// Devices in the canary batch by default: one device proves the release installs and
/// passes its health gate before any other device is touched.
pub const DEFAULT_CANARY: u32 = 1;
/// Cumulative batch sizes by default, after the canary: a tenth of the fleet catches
/// variance between devices (models, SD cards, networks) while most is still untouched,
/// then half, then all.
pub const DEFAULT_BATCH_PERCENTS: [u8; 3] = [10, 50, 100];
/// Share of a batch's results that must be healthy by default: all of them. A fleet that
/// tolerates failed devices says so explicitly.
pub const DEFAULT_SUCCESS_THRESHOLD_PCT: u8 = 100;
/// Wait after a batch's last result by default: none, because every device already soaks
/// the release in its own health gate before it reports healthy. A bake time is for
/// effects only the fleet shows (load on a shared backend, say).
pub const DEFAULT_BAKE_SECS: u32 = 0;
/// The abort rule's failure share by default. It matters only below a 100 % threshold (at
/// 100 % the first failure fails its batch): 20 % is twice the failures a 90 % threshold
/// allows, so it trips on a release going bad across the fleet, not on expected noise.
pub const DEFAULT_ABORT_FAILURE_PCT: u8 = 20;
/// Results the abort rule waits for by default, so that one early failure in a small
/// batch cannot stop a rollout its threshold tolerates.
pub const DEFAULT_ABORT_MIN_RESULTS: u32 = 10;
/// From the deploy command being queued to the device starting its download, by default:
/// a day, because kiosks and signage are often switched off overnight and pick up waiting
/// commands when they come back.
pub const DEFAULT_DELIVERY_DEADLINE_SECS: u32 = 24 * 3600;
/// From the start of the download to a final result, by default: 30 minutes covers about
/// 100 MB at 1 Mbit/s (some 14 minutes) plus unpacking and the health gate's soak.
pub const DEFAULT_INSTALL_DEADLINE_SECS: u32 = 30 * 60;
/// Devices queued or downloading at once by default: 50 parallel HTTPS transfers keep a
/// two-core controller responsive while a large fleet updates.
pub const DEFAULT_MAX_CONCURRENT_DOWNLOADS: u32 = 50;
/// Longest accepted duration (bake time and deadlines): 30 days.
pub const MAX_DURATION_SECS: u32 = 30 * 24 * 3600;

/// What an operator asks for; see [`RolloutSpec::new`] for the rules. Every duration is in
/// whole seconds. Stored as JSON with the rollout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSettings {
    /// Devices in the first batch (0 = no canary).
    pub canary: u32,
    /// Cumulative share of the compatible devices reached after each later batch, in
    /// percent: strictly increasing, each 1-100, the last 100.
    pub batch_percents: Vec<u8>,
    /// A batch passes when at least this share of its results is healthy (1-100).
    pub success_threshold_pct: u8,
    /// A batch passes only this long after its last device finished.
    pub bake_secs: u32,
    /// The abort rule pauses the rollout when failures reach this share of results (1-100)…
    pub abort_failure_pct: u8,
    /// …once at least this many devices have a result (≥ 1).
    pub abort_min_results: u32,
    /// A queued device that has not started downloading by then becomes `unreachable`.
    pub delivery_deadline_secs: u32,
    /// A device that started downloading and has no result by then becomes `timed_out`.
    pub install_deadline_secs: u32,
    /// Most devices queued or downloading at once (0 = no cap).
    pub max_concurrent_downloads: u32,
    /// Deploys are sent only inside this window; devices already sent one finish.
    pub maintenance_window: Option<Window>,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        Self {
            canary: DEFAULT_CANARY,
            batch_percents: DEFAULT_BATCH_PERCENTS.to_vec(),
            success_threshold_pct: DEFAULT_SUCCESS_THRESHOLD_PCT,
            bake_secs: DEFAULT_BAKE_SECS,
            abort_failure_pct: DEFAULT_ABORT_FAILURE_PCT,
            abort_min_results: DEFAULT_ABORT_MIN_RESULTS,
            delivery_deadline_secs: DEFAULT_DELIVERY_DEADLINE_SECS,
            install_deadline_secs: DEFAULT_INSTALL_DEADLINE_SECS,
            max_concurrent_downloads: DEFAULT_MAX_CONCURRENT_DOWNLOADS,
            maintenance_window: None,
        }
    }
}

/// One problem with [`RolloutSettings`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("batches: give at least one cumulative percentage, the last one 100")]
    NoBatches,
    #[error("batches: {value} % is outside 1-100")]
    PercentOutOfRange { value: u8 },
    #[error(
        "batches: {value} % must be more than the {previous} % before it (they are cumulative)"
    )]
    PercentNotIncreasing { previous: u8, value: u8 },
    #[error("batches: the last batch is {last} %; it must be 100 % so every device is reached")]
    LastBatchNotAll { last: u8 },
    #[error("success threshold: {0} % is outside 1-100")]
    ThresholdOutOfRange(u8),
    #[error("abort rule: {0} % is outside 1-100")]
    AbortPercentOutOfRange(u8),
    #[error("abort rule: it must wait for at least 1 result")]
    AbortWithoutResults,
    #[error("{what}: {secs} s is outside {min}-{max} s")]
    DurationOutOfRange {
        what: &'static str,
        secs: u32,
        min: u32,
        max: u32,
    },
}

/// Every problem found in [`RolloutSettings`], reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpec(pub Vec<SpecError>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid rollout: ")?;
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidSpec {}

/// Validated [`RolloutSettings`]: holding one proves every rule of [`RolloutSpec::new`]
/// holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec(RolloutSettings);

impl RolloutSpec {
    /// Checks the settings: percentages strictly increasing within 1-100 and ending at
    /// 100; threshold and abort share within 1-100 (a 0 % threshold would never stop on
    /// health); the abort rule waits for at least one result; deadlines 1 s to 30 days;
    /// bake time 0 to 30 days.
    pub fn new(settings: RolloutSettings) -> Result<Self, InvalidSpec> {
        let mut problems = Vec::new();
        check_batches(&settings.batch_percents, &mut problems);
        if !(1..=100).contains(&settings.success_threshold_pct) {
            problems.push(SpecError::ThresholdOutOfRange(
                settings.success_threshold_pct,
            ));
        }
        if !(1..=100).contains(&settings.abort_failure_pct) {
            problems.push(SpecError::AbortPercentOutOfRange(
                settings.abort_failure_pct,
            ));
        }
        if settings.abort_min_results == 0 {
            problems.push(SpecError::AbortWithoutResults);
        }
        for (what, secs, min) in [
            ("bake time", settings.bake_secs, 0),
            ("delivery deadline", settings.delivery_deadline_secs, 1),
            ("install deadline", settings.install_deadline_secs, 1),
        ] {
            if !(min..=MAX_DURATION_SECS).contains(&secs) {
                problems.push(SpecError::DurationOutOfRange {
                    what,
                    secs,
                    min,
                    max: MAX_DURATION_SECS,
                });
            }
        }
        if problems.is_empty() {
            Ok(Self(settings))
        } else {
            Err(InvalidSpec(problems))
        }
    }

    /// The settings, to store or show.
    pub fn settings(&self) -> &RolloutSettings {
        &self.0
    }

    /// The cumulative number of devices reached once batch `i` is done, for each batch,
    /// with `compatible` devices in the rollout: the canary is `min(canary, compatible)`,
    /// batch `i` is `ceil(pct × compatible / 100)` but never less than the batch before
    /// (a batch that adds nothing is empty and skipped).
    pub fn cumulative_targets(&self, compatible: usize) -> Vec<usize> {
        let canary = usize::try_from(self.0.canary).map_or(compatible, |c| c.min(compatible));
        let mut targets = vec![canary];
        let mut reached = canary;
        for &pct in &self.0.batch_percents {
            let target = (usize::from(pct).saturating_mul(compatible)).div_ceil(100);
            reached = reached.max(target.min(compatible));
            targets.push(reached);
        }
        targets
    }

    /// How batch `index` reads to a person: "batch 1 (canary)", "batch 3 (50 %)". Batches
    /// count from 1 for people; index 0 is always the canary.
    pub fn batch_label(&self, index: u32) -> String {
        let number = u64::from(index) + 1;
        let pct = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.0.batch_percents.get(i));
        match (index, pct) {
            (0, _) => format!("batch {number} (canary)"),
            (_, Some(pct)) => format!("batch {number} ({pct} %)"),
            (_, None) => format!("batch {number}"),
        }
    }

    pub(crate) fn bake_ms(&self) -> i64 {
        i64::from(self.0.bake_secs) * 1000
    }

    pub(crate) fn delivery_deadline_ms(&self) -> i64 {
        i64::from(self.0.delivery_deadline_secs) * 1000
    }

    pub(crate) fn install_deadline_ms(&self) -> i64 {
        i64::from(self.0.install_deadline_secs) * 1000
    }
}

impl TryFrom<RolloutSettings> for RolloutSpec {
    type Error = InvalidSpec;
    fn try_from(settings: RolloutSettings) -> Result<Self, InvalidSpec> {
        Self::new(settings)
    }
}

fn check_batches(percents: &[u8], problems: &mut Vec<SpecError>) {
    let Some(&last) = percents.last() else {
        problems.push(SpecError::NoBatches);
        return;
    };
    let mut previous: Option<u8> = None;
    for &value in percents {
        if !(1..=100).contains(&value) {
            problems.push(SpecError::PercentOutOfRange { value });
            continue;
        }
        if let Some(previous) = previous.filter(|&p| value <= p) {
            problems.push(SpecError::PercentNotIncreasing { previous, value });
        }
        previous = Some(value);
    }
    if last != 100 && (1..=100).contains(&last) {
        problems.push(SpecError::LastBatchNotAll { last });
    }
}

/// Puts each compatible device in its batch: the first `canary` devices form the canary,
/// the next ones fill each batch up to its cumulative target. The caller gives a
/// deterministic order (the canary is whoever comes first) and leaves incompatible devices
/// out: they belong to no batch.
pub fn assign_batches(spec: &RolloutSpec, devices_in_order: &[DeviceId]) -> Vec<(DeviceId, u32)> {
    let targets = spec.cumulative_targets(devices_in_order.len());
    let mut assigned = Vec::with_capacity(devices_in_order.len());
    let mut batch = 0;
    for (position, device) in devices_in_order.iter().enumerate() {
        // The last target is the whole fleet, so the loop stops at a batch that holds
        // `position`.
        while targets.get(batch).is_some_and(|&target| position >= target) {
            batch += 1;
        }
        // At most 101 batches (the canary and 100 increasing percentages).
        assigned.push((device.clone(), u32::try_from(batch).unwrap_or(u32::MAX)));
    }
    assigned
}
