//! Devices: the fleet list with each device's latest sample, one device in full, its latest
//! sample, downsampled history, labels and revocation. Input is validated here (400, never
//! a database error); the SQL is in `store/fleet.rs`; labels and revocation run the same code
//! as the CLI (`admin`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use pifleet_shared::DeviceId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::admin::{self, AdminError};
use crate::api::AppState;
use crate::api::extract::{Json, Path, Query};
use crate::problem::{Problem, ProblemDoc};
use crate::store::{Labels, RevokeOutcome, now_ms};

/// Most labels a device, token or selector may carry.
pub const MAX_LABELS: usize = 64;
/// Longest `q` search text.
const MAX_SEARCH_LEN: usize = 255;
/// Longest history range.
pub const MAX_HISTORY_MS: i64 = 31 * 86_400_000;
/// History range when none is given.
pub const DEFAULT_HISTORY_MS: i64 = 3_600_000;
/// Most history points.
pub const MAX_POINTS: i64 = 2_000;
/// Latest time accepted in a query (the last millisecond of year 9999).
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

// ---- shapes -------------------------------------------------------------------------------

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

/// Filters, order and page of the device list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Case-insensitive substring of the id or hostname.
    #[param(max_length = 255)]
    pub q: Option<String>,
    #[param(inline)]
    pub status: Option<DeviceStatus>,
    /// Label selector `k=v[,k=v...]`: every pair must match.
    pub label: Option<String>,
    /// Sort key (default `id`).
    #[param(inline)]
    pub sort: Option<DeviceSort>,
    /// Sort direction (default `asc`).
    #[param(inline)]
    pub order: Option<SortOrder>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Devices to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// A validated [`DeviceQuery`], as the store takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Lowercased search text.
    pub q: Option<String>,
    pub status: Option<DeviceStatus>,
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

/// Range and resolution of a history query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Start, Unix ms, inclusive (default: `to` minus one hour).
    #[param(minimum = 0)]
    pub from: Option<i64>,
    /// End, Unix ms, exclusive (default: now). At most 31 days after `from`.
    #[param(minimum = 0)]
    pub to: Option<i64>,
    /// Most points to return, 1–2000 (default 360).
    #[param(minimum = 1, maximum = 2000)]
    pub points: Option<i64>,
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

/// New labels for a device; they replace the old ones.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLabels {
    /// Keys: 1–63 of `a-z 0-9 _ . - /`; values: up to 255 printable characters; at most 64.
    pub labels: BTreeMap<String, String>,
}

// ---- validation shared with the other API modules ------------------------------------------

/// Maps an operator-action error: bad input is 400, an unknown device 404, the rest 500.
pub(crate) fn admin_problem(e: AdminError) -> Problem {
    match e {
        AdminError::Invalid(m) => Problem::bad_request(m),
        AdminError::NoDevice(id) => Problem::not_found(format!("no device {id}")),
        other => Problem::internal(&other),
    }
}

/// A device id from the request, or 400.
pub(crate) fn device_id(s: &str) -> Result<DeviceId, Problem> {
    DeviceId::parse(s).map_err(|e| Problem::bad_request(format!("invalid device id: {e}")))
}

/// An optional integer parameter within `min..=max`, or 400.
pub(crate) fn bounded(
    name: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, Problem> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(Problem::bad_request(format!(
            "{name} must be between {min} and {max}"
        )))
    }
}

/// Labels given as a JSON object, checked by the same rules as the CLI's `k=v` labels.
pub(crate) fn labels_from_map(map: &BTreeMap<String, String>) -> Result<Labels, Problem> {
    if map.len() > MAX_LABELS {
        return Err(Problem::bad_request(format!(
            "at most {MAX_LABELS} labels are allowed"
        )));
    }
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let labels = admin::parse_labels(&items).map_err(admin_problem)?;
    // A key holding '=' would be split inside it, so the round trip shows it.
    if labels != *map {
        let bad = map
            .keys()
            .find(|k| k.contains('='))
            .map_or("", String::as_str);
        return Err(Problem::bad_request(format!(
            "label key {bad:?} must be 1-63 of a-z 0-9 _ . - /"
        )));
    }
    Ok(labels)
}

/// A label selector `k=v[,k=v...]`.
pub fn parse_selector(s: &str) -> Result<Labels, Problem> {
    let items: Vec<String> = s.split(',').map(str::to_owned).collect();
    if items.len() > MAX_LABELS {
        return Err(Problem::bad_request(format!(
            "a selector has at most {MAX_LABELS} pairs"
        )));
    }
    let labels = admin::parse_labels(&items).map_err(admin_problem)?;
    if labels.len() != items.len() {
        return Err(Problem::bad_request("a selector names a label key twice"));
    }
    Ok(labels)
}

impl DeviceQuery {
    /// Checks every parameter.
    pub fn validate(self) -> Result<DeviceFilter, Problem> {
        let q = match self.q {
            Some(q) if q.len() > MAX_SEARCH_LEN => {
                return Err(Problem::bad_request(format!(
                    "q must be at most {MAX_SEARCH_LEN} bytes"
                )));
            }
            Some(q) if q.is_empty() => None,
            Some(q) => Some(q.to_ascii_lowercase()),
            None => None,
        };
        let labels = match self.label.as_deref() {
            Some(s) => parse_selector(s)?,
            None => Labels::new(),
        };
        Ok(DeviceFilter {
            q,
            status: self.status,
            labels,
            sort: self.sort.unwrap_or_default(),
            order: self.order.unwrap_or_default(),
            limit: bounded("limit", self.limit, 50, 1, 500)?,
            offset: bounded("offset", self.offset, 0, 0, i64::MAX)?,
        })
    }
}

/// The range and bucket width of a history query at time `now`.
pub fn plan_history(q: &HistoryQuery, now: i64) -> Result<HistoryPlan, Problem> {
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to.saturating_sub(DEFAULT_HISTORY_MS));
    if !(0..=MAX_TIME_MS).contains(&from) || !(0..=MAX_TIME_MS).contains(&to) {
        return Err(Problem::bad_request(format!(
            "from and to must be Unix milliseconds between 0 and {MAX_TIME_MS}"
        )));
    }
    if from >= to {
        return Err(Problem::bad_request("from must be before to"));
    }
    let span = to - from;
    if span > MAX_HISTORY_MS {
        return Err(Problem::bad_request(
            "the range from..to must be at most 31 days",
        ));
    }
    let points = bounded("points", q.points, 360, 1, MAX_POINTS)?;
    Ok(HistoryPlan {
        from,
        to,
        bucket_ms: (span + points - 1) / points,
    })
}

fn no_device(id: &str) -> Problem {
    Problem::not_found(format!("no device {id}"))
}

// ---- handlers -----------------------------------------------------------------------------

/// Lists devices with their latest sample, filtered, sorted and paged.
#[utoipa::path(
    get,
    operation_id = "list_devices",
    path = "/api/v1/devices",
    tag = "devices",
    params(DeviceQuery),
    responses(
        (status = 200, description = "One page of devices", body = DevicePage),
        (status = "4XX", description = "Invalid query or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<DeviceQuery>,
) -> Result<axum::Json<DevicePage>, Problem> {
    let filter = q.validate()?;
    Ok(axum::Json(st.store.device_page(&filter).await?))
}

/// Everything about one device, its certificates included.
#[utoipa::path(
    get,
    operation_id = "show_device",
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id", min_length = 3, max_length = 63, pattern = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")),
    responses(
        (status = 200, description = "The device", body = DeviceDetail),
        (status = "4XX", description = "Invalid id, unknown device or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<DeviceDetail>, Problem> {
    let id = device_id(&id)?;
    st.store
        .device_detail(id.as_str())
        .await?
        .map(axum::Json)
        .ok_or_else(|| no_device(id.as_str()))
}

/// The device's latest telemetry sample, in full.
#[utoipa::path(
    get,
    operation_id = "device_telemetry",
    path = "/api/v1/devices/{id}/telemetry",
    tag = "devices",
    params(("id" = String, Path, description = "Device id", min_length = 3, max_length = 63, pattern = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")),
    responses(
        (status = 200, description = "The latest sample", body = TelemetrySample),
        (status = "4XX", description = "Invalid id, unknown device, no sample yet or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn telemetry(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<TelemetrySample>, Problem> {
    let id = device_id(&id)?;
    if st.store.device(id.as_str()).await?.is_none() {
        return Err(no_device(id.as_str()));
    }
    st.store
        .latest_sample(id.as_str())
        .await?
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found(format!("device {id} has sent no telemetry yet")))
}

/// Downsampled history of one device: aggregates per time bucket, by device time.
#[utoipa::path(
    get,
    operation_id = "device_history",
    path = "/api/v1/devices/{id}/history",
    tag = "devices",
    params(("id" = String, Path, description = "Device id", min_length = 3, max_length = 63, pattern = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$"), HistoryQuery),
    responses(
        (status = 200, description = "Buckets with data, oldest first", body = History),
        (status = "4XX", description = "Invalid id or range, unknown device or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<axum::Json<History>, Problem> {
    let id = device_id(&id)?;
    let plan = plan_history(&q, now_ms())?;
    if st.store.device(id.as_str()).await?.is_none() {
        return Err(no_device(id.as_str()));
    }
    let points = st.store.device_history(id.as_str(), plan).await?;
    Ok(axum::Json(History {
        from: plan.from,
        to: plan.to,
        bucket_ms: plan.bucket_ms,
        points,
    }))
}

/// Replaces the device's labels.
#[utoipa::path(
    put,
    operation_id = "set_device_labels",
    path = "/api/v1/devices/{id}/labels",
    tag = "devices",
    params(("id" = String, Path, description = "Device id", min_length = 3, max_length = 63, pattern = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")),
    request_body = SetLabels,
    responses(
        (status = 200, description = "The device with its new labels", body = DeviceDetail),
        (status = "4XX", description = "Invalid labels, unknown device or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn set_labels(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<SetLabels>,
) -> Result<axum::Json<DeviceDetail>, Problem> {
    let id = device_id(&id)?;
    let labels = labels_from_map(&body.labels)?;
    if !st.store.set_device_labels(id.as_str(), &labels).await? {
        return Err(no_device(id.as_str()));
    }
    st.live.devices_changed(vec![id.as_str().to_owned()]);
    st.store
        .device_detail(id.as_str())
        .await?
        .map(axum::Json)
        .ok_or_else(|| no_device(id.as_str()))
}

/// Revokes the device: its certificates go on the CRL and the broker drops it.
#[utoipa::path(
    post,
    operation_id = "revoke_device",
    path = "/api/v1/devices/{id}/revoke",
    tag = "devices",
    params(("id" = String, Path, description = "Device id", min_length = 3, max_length = 63, pattern = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")),
    responses(
        (status = 204, description = "Revoked"),
        (status = "4XX", description = "Invalid id, unknown or already revoked device, or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = device_id(&id)?;
    // An already revoked device is revoked again: that publishes its CRL once more, which
    // repairs an earlier attempt whose CRL could not be written.
    let outcome = admin::revoke_device(
        &st.dd,
        &st.store,
        id.as_str(),
        st.cfg.pki.crl_next_update_days,
    )
    .await
    .map_err(admin_problem)?;
    st.live.devices_changed(vec![id.as_str().to_owned()]);
    match outcome {
        RevokeOutcome::AlreadyRevoked => Err(Problem::conflict(format!(
            "device {id} was already revoked; its CRL was published again"
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// Fleet totals: enrolled, online, offline, alerting and revoked devices.
#[utoipa::path(
    get,
    operation_id = "fleet_summary",
    path = "/api/v1/fleet/summary",
    tag = "devices",
    responses(
        (status = 200, description = "The totals", body = FleetSummary),
        (status = "4XX", description = "Not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn fleet_summary(
    State(st): State<AppState>,
) -> Result<axum::Json<FleetSummary>, Problem> {
    Ok(axum::Json(st.store.fleet_summary().await?))
}

#[cfg(test)]
mod tests;
