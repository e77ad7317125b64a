//! Reading rollouts for people: lists, the full view, and settings in the API's words.

use std::collections::BTreeMap;

use super::plan::{Plan, PlannedDevice};
use super::service::RolloutError;
use super::spec::{RolloutSettings, RolloutSpec};
use super::stored::spec_of;
use super::window::Window;
use crate::commands::dispatch::Targets;
use crate::model::rollouts::{
    BatchView, DeviceAppView, DeviceApps, DeviceRolloutView, PlannedDeviceView, RolloutDetail,
    RolloutDeviceView, RolloutEventView, RolloutSettingsBody, RolloutSummary,
};
use crate::store::Store;
use crate::store::rollouts::RolloutRow;

impl RolloutSettingsBody {
    /// The settings asked for, with defaults for what is not given; a maintenance window
    /// that does not parse is refused with its reason.
    pub fn to_settings(&self) -> Result<RolloutSettings, String> {
        let d = RolloutSettings::default();
        let maintenance_window = match self.maintenance_window.as_deref() {
            None | Some("") => None,
            Some(w) => Some(Window::parse(w).map_err(|e| e.to_string())?),
        };
        Ok(RolloutSettings {
            canary: self.canary.unwrap_or(d.canary),
            batch_percents: self.batches.clone().unwrap_or(d.batch_percents),
            success_threshold_pct: self
                .success_threshold_pct
                .unwrap_or(d.success_threshold_pct),
            bake_secs: self.bake_s.unwrap_or(d.bake_secs),
            abort_failure_pct: self.abort_failure_pct.unwrap_or(d.abort_failure_pct),
            abort_min_results: self.abort_min_results.unwrap_or(d.abort_min_results),
            delivery_deadline_secs: self.delivery_deadline_s.unwrap_or(d.delivery_deadline_secs),
            install_deadline_secs: self.install_deadline_s.unwrap_or(d.install_deadline_secs),
            max_concurrent_downloads: self
                .max_concurrent_downloads
                .unwrap_or(d.max_concurrent_downloads),
            maintenance_window,
        })
    }

    /// Every field set from `s`.
    pub fn from_settings(s: &RolloutSettings) -> Self {
        Self {
            canary: Some(s.canary),
            batches: Some(s.batch_percents.clone()),
            success_threshold_pct: Some(s.success_threshold_pct),
            bake_s: Some(s.bake_secs),
            abort_failure_pct: Some(s.abort_failure_pct),
            abort_min_results: Some(s.abort_min_results),
            delivery_deadline_s: Some(s.delivery_deadline_secs),
            install_deadline_s: Some(s.install_deadline_secs),
            max_concurrent_downloads: Some(s.max_concurrent_downloads),
            maintenance_window: s.maintenance_window.as_ref().map(ToString::to_string),
        }
    }
}

impl From<&PlannedDevice> for PlannedDeviceView {
    fn from(d: &PlannedDevice) -> Self {
        Self {
            device: d.device.clone(),
            incompatible: d.incompatible.clone(),
            current_release: d.current_release,
            revertible: d.revertible,
        }
    }
}

/// The plan's devices as the API shows them.
pub fn plan_view(plan: &Plan) -> Vec<PlannedDeviceView> {
    plan.devices.iter().map(PlannedDeviceView::from).collect()
}

fn label(spec: Option<&RolloutSpec>, batch: i64) -> String {
    let index = u32::try_from(batch).unwrap_or(0);
    spec.map_or_else(|| format!("batch {}", batch + 1), |s| s.batch_label(index))
}

fn summary(row: &RolloutRow, counts: BTreeMap<String, i64>) -> RolloutSummary {
    let spec = spec_of(row).ok();
    RolloutSummary {
        id: row.id,
        release_id: row.release_id,
        app: row.app.clone(),
        release: row.release,
        status: row.status.clone(),
        batch: row.batch,
        batch_label: label(spec.as_ref(), row.batch),
        pause_cause: row.pause_cause.clone(),
        reason: row.reason.clone(),
        approval_id: row.approval_id.clone(),
        devices: counts.values().sum(),
        counts,
        created_by: row.created_by.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// Rollouts, newest first, with their devices counted by state.
pub async fn list(
    store: &Store,
    status: Option<&str>,
    release_id: Option<i64>,
    limit: i64,
) -> Result<Vec<RolloutSummary>, RolloutError> {
    let rows = store.list_rollouts(status, release_id, limit).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut counts: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for c in store.rollout_state_counts(&ids).await? {
        counts.entry(c.rollout_id).or_default().insert(c.state, c.n);
    }
    Ok(rows
        .iter()
        .map(|r| summary(r, counts.remove(&r.id).unwrap_or_default()))
        .collect())
}

/// One rollout in full.
pub async fn detail(store: &Store, id: i64) -> Result<RolloutDetail, RolloutError> {
    let row = store.rollout(id).await?.ok_or(RolloutError::NotFound(id))?;
    let spec = spec_of(&row).map_err(|e| RolloutError::Corrupt(id, e))?;
    let devices = store.rollout_devices(id, false).await?;
    let events = store.rollout_events(id).await?;
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut batches: BTreeMap<i64, BatchView> = BTreeMap::new();
    for d in &devices {
        *counts.entry(d.state.clone()).or_default() += 1;
        if d.state == "incompatible" {
            continue;
        }
        let b = batches.entry(d.batch).or_insert_with(|| BatchView {
            index: d.batch,
            label: label(Some(&spec), d.batch),
            counts: BTreeMap::new(),
            devices: 0,
        });
        *b.counts.entry(d.state.clone()).or_default() += 1;
        b.devices += 1;
    }
    let (devices_asked, selector) = match serde_json::from_str::<Targets>(&row.selector) {
        Ok(Targets::Devices(ids)) => (Some(ids), None),
        Ok(Targets::Selector(labels)) => (None, Some(labels.into_iter().collect())),
        Err(_) => (None, None),
    };
    Ok(RolloutDetail {
        settings: RolloutSettingsBody::from_settings(spec.settings()),
        rollout: summary(&row, counts),
        devices_asked,
        selector,
        batches: batches.into_values().collect(),
        devices: devices
            .into_iter()
            .map(|d| RolloutDeviceView {
                device: d.device_id,
                batch: d.batch,
                state: d.state,
                queued_at: d.queued_at,
                started_at: d.started_at,
                finished_at: d.finished_at,
                phase: d.phase,
                bytes: d.bytes,
                total: d.total,
                reason: d.reason,
                journal: d.journal,
                command_id: d.command_id,
                previous_release: d.previous_release,
            })
            .collect(),
        events: events
            .into_iter()
            .map(|e| RolloutEventView {
                at: e.at,
                actor: e.actor,
                text: e.text,
            })
            .collect(),
    })
}

/// A device's reported apps and its rollouts (newest 50); `None` for an unknown device.
pub async fn device_apps(store: &Store, device: &str) -> Result<Option<DeviceApps>, RolloutError> {
    let Some((apps, apps_at)) = store.device_apps(device).await? else {
        return Ok(None);
    };
    let apps = apps
        .and_then(|json| {
            serde_json::from_str::<Vec<pifleet_shared::proto::v1::AppState>>(&json).ok()
        })
        .map(|list| {
            list.into_iter()
                .map(|a| DeviceAppView {
                    app: a.app,
                    unit: a.unit,
                    current: a.current,
                    current_dir: a.current_dir,
                    kept: a.kept,
                })
                .collect()
        });
    let rollouts = store
        .device_rollout_list(device, 50)
        .await?
        .into_iter()
        .map(|r| DeviceRolloutView {
            rollout_id: r.rollout_id,
            app: r.app,
            release: r.release,
            status: r.status,
            state: r.state,
            reason: r.reason,
            journal: r.journal,
            finished_at: r.finished_at,
        })
        .collect();
    Ok(Some(DeviceApps {
        apps,
        apps_at,
        rollouts,
    }))
}
