//! What is wrong with a device according to its latest sample: the rule in Rust for the
//! device views and the same rule in SQL for counting alerting devices, from one set of
//! thresholds.

use crate::model::devices::{DeviceAlert, DeviceStatus, DiskUsage};
use crate::store::dialect::Dialect;

/// Thresholds of [`DeviceAlert`], the same as the Prometheus alerts'.
pub const ALERT_TEMPERATURE_C: f64 = 75.0;
pub const ALERT_DISK_RATIO: f64 = 0.9;
/// `get_throttled` bits: under-voltage now; frequency capped, throttled, soft limit now.
/// (Also what `/metrics/devices/{id}` reports as `under_voltage` and `throttling`.)
pub const THROTTLED_UNDER_VOLTAGE: i64 = 0x1;
pub const THROTTLED_NOW: i64 = 0x2 | 0x4 | 0x8;

/// What is wrong with a device according to its latest values (nothing when offline).
pub fn device_alerts(
    status: DeviceStatus,
    temp_c: Option<f64>,
    throttled: Option<i64>,
    disks: &[DiskUsage],
) -> Vec<DeviceAlert> {
    let mut alerts = Vec::new();
    if status != DeviceStatus::Online {
        return alerts;
    }
    if temp_c.is_some_and(|t| t > ALERT_TEMPERATURE_C) {
        alerts.push(DeviceAlert::Temperature);
    }
    let bits = throttled.unwrap_or(0);
    if bits & THROTTLED_UNDER_VOLTAGE != 0 {
        alerts.push(DeviceAlert::UnderVoltage);
    }
    if bits & THROTTLED_NOW != 0 {
        alerts.push(DeviceAlert::Throttling);
    }
    if disks
        .iter()
        .any(|d| d.total_bytes > 0 && d.used_bytes as f64 / d.total_bytes as f64 > ALERT_DISK_RATIO)
    {
        alerts.push(DeviceAlert::Disk);
    }
    alerts
}

/// The same test as [`device_alerts`] in SQL, over `d` (devices) joined with `t` (its latest
/// sample), from the same constants.
pub(super) fn alerting_sql<DB: Dialect>() -> String {
    let total = DB::json_element_number("j", "total_bytes");
    let used = DB::json_element_number("j", "used_bytes");
    let disk_full = DB::json_array_any(
        "t.disks",
        "j",
        &format!("{total} > 0 AND {used} / {total} > {ALERT_DISK_RATIO:?}"),
    );
    format!(
        "d.revoked_at IS NULL AND d.online = TRUE AND (t.temp_c > {ALERT_TEMPERATURE_C:?} \
         OR (COALESCE(t.throttled, 0) & {bits}) != 0 OR {disk_full})",
        bits = THROTTLED_UNDER_VOLTAGE | THROTTLED_NOW
    )
}
