//! Rollouts as the API and the command line show them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A rollout's settings. In a request every field is optional (the default applies);
/// in a response every field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSettingsBody {
    /// Devices in the first batch (0 = no canary; default 1).
    pub canary: Option<u32>,
    /// Cumulative share of the devices reached after each later batch, in percent:
    /// increasing, the last 100 (default [10, 50, 100]).
    pub batches: Option<Vec<u8>>,
    /// A batch passes when at least this share of its results is healthy (default 100).
    pub success_threshold_pct: Option<u8>,
    /// Seconds a batch waits after its last device finished (default 0).
    pub bake_s: Option<u32>,
    /// Pause when failures reach this share of results (default 20)…
    pub abort_failure_pct: Option<u8>,
    /// …once this many devices have a result (default 10).
    pub abort_min_results: Option<u32>,
    /// Seconds a device has to start downloading (default 86400); then `unreachable`.
    pub delivery_deadline_s: Option<u32>,
    /// Seconds from the download's start to a result (default 1800); then `timed_out`.
    pub install_deadline_s: Option<u32>,
    /// Most devices queued or downloading at once (0 = no cap; default 50).
    pub max_concurrent_downloads: Option<u32>,
    /// Deploys go out only inside this window, e.g. `mon-fri 02:00-05:00 UTC+01:00`.
    pub maintenance_window: Option<String>,
}

/// A rollout in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutSummary {
    pub id: i64,
    pub release_id: i64,
    pub app: String,
    pub release: i64,
    /// draft, awaiting_approval, running, paused, completed or aborted.
    pub status: String,
    /// The current batch, counting from 0 (the canary).
    pub batch: i64,
    /// "batch 2 (10 %)".
    pub batch_label: String,
    /// operator, batch_failed, no_results or abort_rule, while paused.
    #[schema(required)]
    pub pause_cause: Option<String>,
    /// The latest change, in words.
    #[schema(required)]
    pub reason: Option<String>,
    /// The approval request it waits for or waited for.
    #[schema(required)]
    pub approval_id: Option<String>,
    /// Devices by state.
    pub counts: BTreeMap<String, i64>,
    pub devices: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One batch's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    pub index: i64,
    pub label: String,
    /// Devices by state.
    pub counts: BTreeMap<String, i64>,
    pub devices: i64,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDeviceView {
    pub device: String,
    pub batch: i64,
    pub state: String,
    #[schema(required)]
    pub queued_at: Option<i64>,
    #[schema(required)]
    pub started_at: Option<i64>,
    #[schema(required)]
    pub finished_at: Option<i64>,
    /// Latest progress: downloading or installing, with archive bytes so far.
    #[schema(required)]
    pub phase: Option<String>,
    #[schema(required)]
    pub bytes: Option<i64>,
    #[schema(required)]
    pub total: Option<i64>,
    /// Why it ended as it did (a failure, a deadline, incompatibility).
    #[schema(required)]
    pub reason: Option<String>,
    /// The unit's last journal lines, after a failure.
    #[schema(required)]
    pub journal: Option<String>,
    /// The latest deploy or revert command.
    #[schema(required)]
    pub command_id: Option<String>,
    /// The release the device ran before.
    #[schema(required)]
    pub previous_release: Option<i64>,
}

/// A line of a rollout's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutEventView {
    pub at: i64,
    pub actor: String,
    pub text: String,
}

/// A rollout in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDetail {
    pub rollout: RolloutSummary,
    pub settings: RolloutSettingsBody,
    /// The targets as asked: device ids, or a label selector.
    #[schema(required)]
    pub devices_asked: Option<Vec<String>>,
    #[schema(required)]
    pub selector: Option<BTreeMap<String, String>>,
    pub batches: Vec<BatchView>,
    pub devices: Vec<RolloutDeviceView>,
    pub events: Vec<RolloutEventView>,
}

/// A device of a rollout plan (a preview, or a rollout just created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlannedDeviceView {
    pub device: String,
    /// Why it cannot take the release; absent when it can.
    #[schema(required)]
    pub incompatible: Option<String>,
    #[schema(required)]
    pub current_release: Option<u64>,
    pub revertible: bool,
}

/// An app the device allowlists, as its agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceAppView {
    pub app: String,
    pub unit: String,
    /// The live release, if any.
    #[schema(required)]
    pub current: Option<u64>,
    #[schema(required)]
    pub current_dir: Option<String>,
    /// Releases kept on the device (a rollback can return to these).
    pub kept: Vec<u64>,
}

/// The device's part in one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceRolloutView {
    pub rollout_id: i64,
    pub app: String,
    pub release: i64,
    /// The rollout's status.
    pub status: String,
    /// The device's state in it.
    pub state: String,
    #[schema(required)]
    pub reason: Option<String>,
    #[schema(required)]
    pub journal: Option<String>,
    #[schema(required)]
    pub finished_at: Option<i64>,
}

/// A device's apps and its rollouts, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceApps {
    /// Unknown (null) until the agent reports them (agents older than deployments never do).
    #[schema(required)]
    pub apps: Option<Vec<DeviceAppView>>,
    #[schema(required)]
    pub apps_at: Option<i64>,
    pub rollouts: Vec<DeviceRolloutView>,
}
