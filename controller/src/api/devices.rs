//! Devices: the fleet list with each device's latest sample, one device in full, its latest
//! sample, downsampled history, watchdog events, labels and revocation. Input is validated here (400, never
//! a database error); the SQL is in `store/devices/` and `store/telemetry.rs`; labels and
//! revocation run the same code as the CLI ([`crate::pki::revoke_device`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::extract::{Json, Path, Query};
use crate::api::params::{DevicePath, MAX_TIME_MS, bounded};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::model::devices::{
    DeviceDetail, DeviceFilter, DevicePage, DeviceSort, DeviceStatus, FleetSummary, History,
    HistoryPlan, SortOrder, TelemetrySample,
};
use crate::model::labels::{self, Labels};
use crate::model::unit_events::UnitEvents;
use crate::store::{RevokeOutcome, now_ms};

/// Longest `q` search text.
const MAX_SEARCH_LEN: usize = 255;
/// Longest history range.
pub const MAX_HISTORY_MS: i64 = 31 * 86_400_000;
/// History range when none is given.
pub const DEFAULT_HISTORY_MS: i64 = 3_600_000;
/// Most history points.
pub const MAX_POINTS: i64 = 2_000;

// ---- request shapes -----------------------------------------------------------------------

/// Filters, order and page of the device list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Case-insensitive substring of the id or hostname.
    #[param(max_length = 255)]
    pub q: Option<String>,
    #[param(inline)]
    pub status: Option<DeviceStatus>,
    /// Only devices flagged for review (`true`) or not (`false`).
    pub needs_review: Option<bool>,
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

/// New labels for a device; they replace the old ones.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLabels {
    /// Keys: 1–63 of `a-z 0-9 _ . - /`; values: up to 255 printable characters; at most 64.
    pub labels: BTreeMap<String, String>,
}

// ---- validation shared with the other API modules ------------------------------------------

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
            Some(s) => labels::parse_selector(s)?,
            None => Labels::new(),
        };
        Ok(DeviceFilter {
            q,
            status: self.status,
            needs_review: self.needs_review,
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
        Refused,
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
    params(DevicePath),
    responses(
        (status = 200, description = "The device", body = DeviceDetail),
        (status = "4XX", description = "Invalid id, unknown device or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<axum::Json<DeviceDetail>, Problem> {
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
    params(DevicePath),
    responses(
        (status = 200, description = "The latest sample", body = TelemetrySample),
        (status = "4XX", description = "Invalid id, unknown device, no sample yet or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn telemetry(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<axum::Json<TelemetrySample>, Problem> {
    if st.store.device(id.as_str()).await?.is_none() {
        return Err(no_device(id.as_str()));
    }
    st.store
        .latest_sample(id.as_str())
        .await?
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found(format!("device {id} has sent no telemetry yet")))
}

/// Watchdog events shown per device (newest first).
const UNIT_EVENTS_SHOWN: i64 = 100;

/// The device's newest watchdog events (crash loops, flapping, systemd giving up on a unit,
/// the watchdog's starts, recoveries) and the units crash-looping now.
#[utoipa::path(
    get,
    operation_id = "device_unit_events",
    path = "/api/v1/devices/{id}/unit-events",
    tag = "devices",
    params(DevicePath),
    responses(
        (status = 200, description = "Newest first, at most 100", body = UnitEvents),
        (status = "4XX", description = "Invalid id, unknown device or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn unit_events(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<axum::Json<UnitEvents>, Problem> {
    if st.store.device(id.as_str()).await?.is_none() {
        return Err(no_device(id.as_str()));
    }
    let events = st
        .store
        .unit_events(id.as_str(), UNIT_EVENTS_SHOWN, now_ms())
        .await?;
    Ok(axum::Json(events))
}

/// Downsampled history of one device: aggregates per time bucket, by device time.
#[utoipa::path(
    get,
    operation_id = "device_history",
    path = "/api/v1/devices/{id}/history",
    tag = "devices",
    params(DevicePath, HistoryQuery),
    responses(
        (status = 200, description = "Buckets with data, oldest first", body = History),
        (status = "4XX", description = "Invalid id or range, unknown device or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
    Query(q): Query<HistoryQuery>,
) -> Result<axum::Json<History>, Problem> {
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
    params(DevicePath),
    request_body = SetLabels,
    responses(
        (status = 200, description = "The device with its new labels", body = DeviceDetail),
        (status = "4XX", description = "Invalid labels, unknown device or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn set_labels(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
    Json(body): Json<SetLabels>,
) -> Result<axum::Json<DeviceDetail>, Problem> {
    let labels = labels::from_map(&body.labels)?;
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
    params(DevicePath),
    responses(
        (status = 204, description = "Revoked"),
        (status = "4XX", description = "Invalid id, unknown or already revoked device, or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<StatusCode, Problem> {
    // An already revoked device is revoked again: that publishes its CRL once more, which
    // repairs an earlier attempt whose CRL could not be written.
    let outcome = crate::pki::revoke_device(
        &st.dd,
        &st.store,
        id.as_str(),
        st.cfg.pki.crl_next_update_days,
        &st.cfg.backup.revocation_log_in(st.dd.root()),
    )
    .await?;
    st.live.devices_changed(vec![id.as_str().to_owned()]);
    match outcome {
        RevokeOutcome::AlreadyRevoked => Err(Problem::conflict(format!(
            "device {id} was already revoked; its CRL was published again"
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// Clears the device's review flag (set when it was re-registered from its certificate
/// after a restore): the admin has looked at it and keeps it. To refuse it, revoke it.
#[utoipa::path(
    post,
    operation_id = "review_device",
    path = "/api/v1/devices/{id}/review",
    tag = "devices",
    params(DevicePath),
    responses(
        (status = 204, description = "Reviewed: the flag is cleared"),
        (status = "4XX", description = "Invalid id, unknown device (404), a device not flagged for review (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn review(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<axum::response::Response, Problem> {
    match st.store.clear_review(id.as_str()).await? {
        None => Err(no_device(id.as_str())),
        Some(None) => Err(Problem::conflict(format!(
            "device {id} is not flagged for review"
        ))),
        Some(Some(reason)) => {
            st.live.devices_changed(vec![id.as_str().to_owned()]);
            Ok(crate::api::extract::noted(
                format!("was: {reason}"),
                StatusCode::NO_CONTENT,
            ))
        }
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
        Refused,
    )
)]
pub async fn fleet_summary(
    State(st): State<AppState>,
) -> Result<axum::Json<FleetSummary>, Problem> {
    Ok(axum::Json(st.store.fleet_summary().await?))
}

#[cfg(test)]
mod tests;
