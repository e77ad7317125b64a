//! Inspecting the controller's JSON log: find, count and wait for events by `message`,
//! `reason` and `device`, so tests assert on what the controller decided and why.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::harness::{Controller, wait_for};

/// How long [`wait_entry`] waits for a log line.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway closed a device's connection for breaking a rule (`reason` says which).
pub const VIOLATION: &str = "mqtt violation; connection closed";
/// The gateway refused a connection, at the TLS handshake or at CONNECT.
pub const REFUSED: &str = "mqtt connection refused";
/// A connected device went away (`reason` says why).
pub const DISCONNECTED: &str = "device disconnected";

/// The controller's JSON log lines.
pub fn log_entries(ctl: &Controller) -> Vec<Value> {
    ctl.log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A log line with this message, `reason` and (when given) `device`.
pub fn is_entry(e: &Value, message: &str, reason: &str, device: Option<&str>) -> bool {
    e["message"] == message && e["reason"] == reason && device.is_none_or(|d| e["device"] == d)
}

/// How many log lines have this message, `reason` and (when given) `device`.
pub fn count_entries(ctl: &Controller, message: &str, reason: &str, device: Option<&str>) -> usize {
    log_entries(ctl)
        .iter()
        .filter(|e| is_entry(e, message, reason, device))
        .count()
}

/// Whether any log line has this message and (when given) `device`, whatever its reason.
pub fn has_entry(ctl: &Controller, message: &str, device: Option<&str>) -> bool {
    log_entries(ctl)
        .iter()
        .any(|e| e["message"] == message && device.is_none_or(|d| e["device"] == d))
}

/// Waits until there are more than `before` matching log lines; returns the newest one.
pub async fn wait_entry(
    ctl: &Controller,
    before: usize,
    message: &str,
    reason: &str,
    device: Option<&str>,
) -> Result<Value> {
    let what = format!("log {message:?} reason={reason} device={device:?}");
    wait_for(LOG_TIMEOUT, &what, || {
        let matching: Vec<Value> = log_entries(ctl)
            .into_iter()
            .filter(|e| is_entry(e, message, reason, device))
            .collect();
        let found = (matching.len() > before)
            .then(|| matching.last().cloned())
            .flatten();
        async move { found }
    })
    .await
    .with_context(|| format!("controller log:\n{}", ctl.log()))
}
