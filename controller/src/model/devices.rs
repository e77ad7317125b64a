//! What a device looks like to the fleet views: its summary and detail, the fleet totals,
//! telemetry and history, and the filters and orders of the device list. The store returns
//! these; the admin API serializes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::labels::Labels;

/// A device's state: revoked wins over the connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Online,
    Offline,
    Revoked,
}

/// Sort key of the device list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    #[default]
    Id,
    Hostname,
    LastSeen,
    /// CPU % of the latest sample.
    Cpu,
    /// Memory in use as a share of the total, latest sample.
    Memory,
    /// SoC temperature of the latest sample.
    Temperature,
}

/// Sort direction. Devices without a value for the sort key come last either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

/// A validated [`DeviceQuery`], as the store takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Lowercased search text.
    pub q: Option<String>,
    pub status: Option<DeviceStatus>,
    /// Only devices flagged (true) or not flagged (false) for review.
    pub needs_review: Option<bool>,
    /// Labels that must all match.
    pub labels: Labels,
    pub sort: DeviceSort,
    pub order: SortOrder,
    pub limit: i64,
    pub offset: i64,
}

/// One device in the fleet list, with its latest sample (absent before the first one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceSummary {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub status: DeviceStatus,
    #[schema(required)]
    pub hostname: Option<String>,
    /// Raspberry Pi model, when the device has one.
    #[schema(required)]
    pub model: Option<String>,
    #[schema(required)]
    pub agent_version: Option<String>,
    /// Last message from the device, Unix ms.
    #[schema(required)]
    pub last_seen: Option<i64>,
    pub enrolled_at: i64,
    /// CPU busy share, 0–100.
    #[schema(required)]
    pub cpu_pct: Option<f64>,
    /// Bytes.
    #[schema(required)]
    pub mem_used: Option<i64>,
    /// Bytes.
    #[schema(required)]
    pub mem_total: Option<i64>,
    /// SoC temperature, °C.
    #[schema(required)]
    pub temp_c: Option<f64>,
    /// Raspberry Pi `get_throttled` bits.
    #[schema(required)]
    pub throttled: Option<i64>,
    /// Bytes used, summed over the sample's filesystems.
    #[schema(required)]
    pub disk_used: Option<u64>,
    /// Bytes, summed over the sample's filesystems.
    #[schema(required)]
    pub disk_total: Option<u64>,
    #[schema(required)]
    pub uptime_s: Option<i64>,
    /// What is wrong with an online device now, by the thresholds of the Prometheus alerts
    /// (empty when all is well, and for offline devices).
    pub alerts: Vec<DeviceAlert>,
    /// Flagged for an admin's review, e.g. re-registered from its certificate after a
    /// restore; cleared with `POST /api/v1/devices/{id}/review`, or revoke the device.
    pub needs_review: bool,
    /// Why it is flagged.
    #[schema(required)]
    pub review_reason: Option<String>,
}

/// A problem an online device's latest sample shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceAlert {
    /// SoC above 75 °C.
    Temperature,
    /// The supply voltage is too low now.
    UnderVoltage,
    /// Frequency capped, throttled or at the soft temperature limit now.
    Throttling,
    /// A filesystem more than 90% full.
    Disk,
}

/// Fleet totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FleetSummary {
    /// Devices not revoked.
    pub enrolled: i64,
    pub online: i64,
    /// Enrolled and not connected.
    pub offline: i64,
    /// Online devices with at least one alert.
    pub alerting: i64,
    pub revoked: i64,
}

/// What the device's local allowlist lets commands do, as the agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceCapabilities {
    pub ping: bool,
    pub reboot: bool,
    /// Units allowed for status / start / stop / restart.
    pub services: Vec<String>,
    /// Units whose journal may be tailed.
    pub journal_units: Vec<String>,
    pub scripts: Vec<ScriptCapability>,
    /// Bounds of `set_interval`, when allowed.
    #[schema(required)]
    pub set_interval: Option<IntervalBounds>,
    /// When the agent reported this, Unix ms.
    pub reported_at: i64,
}

/// A script a command may run, with the arguments it may be given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScriptCapability {
    pub name: String,
    pub allowed_args: Vec<String>,
}

/// Inclusive bounds of the telemetry interval, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IntervalBounds {
    pub min_s: u32,
    pub max_s: u32,
}

/// The state of an allowlisted systemd unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceState {
    pub unit: String,
    /// systemd `ActiveState`: active, inactive, failed, activating, …
    pub active: String,
    /// systemd `SubState`: running, dead, exited, …
    pub sub: String,
}

/// One page of devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DevicePage {
    /// Devices matching the filters, over all pages.
    pub total: i64,
    pub items: Vec<DeviceSummary>,
}

/// A certificate issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Certificate {
    /// Lowercase hex.
    pub serial: String,
    pub issued_at: i64,
    pub not_after: i64,
    #[schema(required)]
    pub revoked_at: Option<i64>,
}

/// Everything about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    #[schema(required)]
    pub os: Option<String>,
    #[schema(required)]
    pub kernel: Option<String>,
    #[schema(required)]
    pub arch: Option<String>,
    #[schema(required)]
    pub first_seen: Option<i64>,
    #[schema(required)]
    pub revoked_at: Option<i64>,
    /// Sequence number of the newest stored sample.
    #[schema(required)]
    pub last_seq: Option<i64>,
    /// When the device last said hello (on connect), Unix ms.
    #[schema(required)]
    pub hello_at: Option<i64>,
    /// Newest first.
    pub certificates: Vec<Certificate>,
    /// Unknown (null) until the agent reports it.
    #[schema(required)]
    pub capabilities: Option<DeviceCapabilities>,
    /// The allowlisted units' states, as last reported.
    pub services: Vec<ServiceState>,
    /// When the states were reported, Unix ms.
    #[schema(required)]
    pub services_at: Option<i64>,
}

/// Usage of one mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskUsage {
    pub mount: String,
    pub fs: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// Byte counters of one network interface, since boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetCounters {
    pub iface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One telemetry sample, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySample {
    pub seq: i64,
    /// Device clock, Unix ms.
    pub ts: i64,
    /// Controller clock at commit, Unix ms.
    pub received_at: i64,
    pub cpu_pct: f64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub mem_total: i64,
    pub mem_used: i64,
    pub swap_total: i64,
    pub swap_used: i64,
    #[schema(required)]
    pub temp_c: Option<f64>,
    #[schema(required)]
    pub throttled: Option<i64>,
    pub uptime_s: i64,
    /// Samples the device's spool dropped before this one.
    pub spool_dropped: i64,
    /// Unacknowledged samples on the device when this one was taken.
    pub spool_backlog: i64,
    pub disks: Vec<DiskUsage>,
    pub nets: Vec<NetCounters>,
}

/// A validated history range: `[from, to)` in buckets of `bucket_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPlan {
    pub from: i64,
    pub to: i64,
    pub bucket_ms: i64,
}

/// Aggregates of the samples in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    /// Bucket start, Unix ms (device clock).
    pub t: i64,
    /// Samples in the bucket.
    pub samples: i64,
    pub cpu_pct_avg: f64,
    pub cpu_pct_max: f64,
    pub load1_avg: f64,
    /// Bytes.
    pub mem_used_avg: f64,
    /// Bytes.
    pub mem_total_max: i64,
    #[schema(required)]
    pub temp_c_avg: Option<f64>,
    #[schema(required)]
    pub temp_c_max: Option<f64>,
    /// Average over the samples of the bytes used on all filesystems.
    pub disk_used_avg: f64,
    /// Largest total size of all filesystems in the bucket, bytes.
    pub disk_total_max: i64,
    /// Largest sum of the interfaces' receive counters in the bucket (derive rates from it).
    pub net_rx_bytes: i64,
    /// Largest sum of the interfaces' transmit counters in the bucket.
    pub net_tx_bytes: i64,
}

/// Downsampled history of one device. Buckets without samples are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub from: i64,
    pub to: i64,
    pub bucket_ms: i64,
    pub points: Vec<HistoryPoint>,
}
