//! Between the store's rows and the engine's views: reading a rollout for a decision, and
//! turning what changed back into the store's conditional updates.

use pifleet_shared::DeviceId;

use super::spec::{RolloutSettings, RolloutSpec};
use super::state::{DeviceState, PauseCause, RolloutStatus};
use super::view::{DeviceView, RolloutView, Waiver};
use crate::store::rollouts::{DeviceChange, RolloutDeviceRow, RolloutFields, RolloutRow};

/// A stored rollout read for a decision.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub row: RolloutRow,
    pub spec: RolloutSpec,
    pub view: RolloutView,
    pub devices: Vec<DeviceView>,
    pub rows: Vec<RolloutDeviceRow>,
}

impl Loaded {
    /// Reads the row and its devices; `Err` names what is unreadable.
    pub fn read(row: RolloutRow, rows: Vec<RolloutDeviceRow>) -> Result<Self, String> {
        let spec = spec_of(&row)?;
        let view = view_of(&row)?;
        let devices = rows.iter().map(device_of).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            row,
            spec,
            view,
            devices,
            rows,
        })
    }
}

/// The rollout's validated spec from its stored settings.
pub fn spec_of(row: &RolloutRow) -> Result<RolloutSpec, String> {
    let settings: RolloutSettings =
        serde_json::from_str(&row.settings).map_err(|e| format!("settings: {e}"))?;
    RolloutSpec::new(settings).map_err(|e| e.to_string())
}

fn view_of(row: &RolloutRow) -> Result<RolloutView, String> {
    let status =
        RolloutStatus::parse(&row.status).ok_or_else(|| format!("status {:?}", row.status))?;
    let pause = match &row.pause_cause {
        Some(c) => Some(PauseCause::parse(c).ok_or_else(|| format!("pause cause {c:?}"))?),
        None => None,
    };
    let waiver = match (row.waiver_batch, row.waiver_failures, row.waiver_results) {
        (Some(batch), Some(failures), Some(results)) => Some(Waiver {
            batch: u32::try_from(batch).map_err(|_| "waiver batch")?,
            failures: usize::try_from(failures).map_err(|_| "waiver failures")?,
            results: usize::try_from(results).map_err(|_| "waiver results")?,
        }),
        _ => None,
    };
    Ok(RolloutView {
        status,
        batch: u32::try_from(row.batch).map_err(|_| "batch")?,
        pause,
        waiver,
        revert_on_abort: row.revert_on_abort,
    })
}

fn device_of(row: &RolloutDeviceRow) -> Result<DeviceView, String> {
    Ok(DeviceView {
        id: DeviceId::parse(&row.device_id).map_err(|e| format!("device id: {e}"))?,
        batch: u32::try_from(row.batch).map_err(|_| "device batch")?,
        state: DeviceState::parse(&row.state)
            .ok_or_else(|| format!("device state {:?}", row.state))?,
        queued_at_ms: row.queued_at,
        started_at_ms: row.started_at,
        finished_at_ms: row.finished_at,
        revertible: row.revertible,
    })
}

/// The store's fields for `view`.
pub fn fields_of(view: &RolloutView, next_check_at: Option<i64>) -> RolloutFields {
    RolloutFields {
        status: view.status.as_str().to_owned(),
        batch: i64::from(view.batch),
        pause_cause: view.pause.map(|c| c.as_str().to_owned()),
        waiver: view.waiver.map(|w| {
            let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
            (i64::from(w.batch), n(w.failures), n(w.results))
        }),
        revert_on_abort: view.revert_on_abort,
        next_check_at,
    }
}

/// The change from `before` to `after`, if anything the store keeps changed.
pub fn change_of(before: &DeviceView, after: &DeviceView) -> Option<DeviceChange> {
    (before != after).then(|| DeviceChange {
        device_id: after.id.as_str().to_owned(),
        from: before.state.as_str().to_owned(),
        state: after.state.as_str().to_owned(),
        queued_at: after.queued_at_ms,
        started_at: after.started_at_ms,
        finished_at: after.finished_at_ms,
        revertible: after.revertible,
        command_id: None,
        reason: None,
        cancel: None,
    })
}
