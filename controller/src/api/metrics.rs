//! Prometheus endpoints. Devices open no port: the controller serves what they pushed.
//!
//! - `GET /metrics`: the controller's own metrics (bounded labels, never a device id).
//! - `GET /metrics/devices/{id}`: one device's latest sample as gauges with stable names
//!   and units. A device that is offline or whose newest sample is older than
//!   `metrics.stale_after_s` is *stale*: only `pifleet_device_up 0`, its last-seen time, its
//!   certificate expiry, its spool-drop counter and its count of crash-looping units (from
//!   the watchdog's events) are served, never old values dressed up as current.
//! - `GET /api/v1/prometheus/sd`: HTTP service discovery, one target per enrolled device.
//!
//! All three take the scrape token (`Authorization: Bearer <scrape.token>`), a client
//! address in `metrics.scrape_allow`, or a signed-in user's access token.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::extract::Path;
use super::params::DevicePath;
use crate::api::problem::{Problem, Refused};
use crate::model::devices::DeviceStatus;
use crate::store::now_ms;
use crate::store::{THROTTLED_NOW, THROTTLED_UNDER_VOLTAGE};

/// The Prometheus text format content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn text(body: String) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    r
}

/// The controller's metrics.
#[utoipa::path(get, path = "/metrics", operation_id = "controller_metrics", tag = "metrics",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        Refused,
    ))]
pub async fn controller(State(st): State<AppState>) -> Result<Response, Problem> {
    let counts = st.store.device_counts().await?;
    for (state, n) in [
        ("enrolled", counts.enrolled),
        ("online", counts.online),
        ("offline", counts.offline),
        ("revoked", counts.revoked),
    ] {
        st.metrics.devices.with_label_values(&[state]).set(n);
    }
    st.metrics
        .devices_needing_review
        .set(st.store.devices_needing_review().await?);
    st.metrics.database_size_bytes.set(database_size(&st));
    st.metrics
        .renewal_overdue
        .set(st.store.renewal_overdue_count().await?);
    Ok(text(st.metrics.render()))
}

/// Bytes of the database and its write-ahead log.
fn database_size(st: &super::ApiState) -> i64 {
    let db = st.dd.database();
    let wal = db.with_extension("db-wal");
    [db, wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX))
        .sum()
}

/// One device's latest sample as Prometheus gauges.
#[utoipa::path(get, path = "/metrics/devices/{id}", operation_id = "device_metrics", tag = "metrics",
    params(DevicePath),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        Refused,
    ))]
pub async fn device(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<Response, Problem> {
    let detail = st
        .store
        .device_detail(id.as_str())
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {id}")))?;
    let sample = st.store.latest_sample(id.as_str()).await?;
    let now = now_ms();
    let stale_ms = i64::try_from(st.cfg.metrics.stale_after_s)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let cert_not_after = detail
        .certificates
        .iter()
        .filter(|c| c.revoked_at.is_none())
        .map(|c| c.not_after)
        .max();
    let fresh = sample.as_ref().filter(|s| {
        detail.summary.status == DeviceStatus::Online && now - s.received_at <= stale_ms
    });
    let mut out = Exposition::default();
    out.gauge(
        "pifleet_device_up",
        "1 when the device is online and its newest sample is fresh, 0 when it is offline or stale",
        &[],
        if fresh.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(t) = detail.summary.last_seen {
        out.gauge(
            "pifleet_device_last_seen_timestamp_seconds",
            "When the controller last heard from the device (Unix seconds)",
            &[],
            t as f64 / 1000.0,
        );
    }
    out.counter(
        "pifleet_device_spool_dropped_total",
        "Samples the device's full spool dropped (oldest first), ever",
        &[],
        st.store.spool_dropped_total(id.as_str()).await? as f64,
    );
    // From the watchdog events the device sent, so served fresh or stale alike.
    out.gauge(
        "pifleet_device_units_crash_looping",
        "Allowlisted units the device's watchdog reported crash-looping (or given up on by \
         systemd) in the last 15 minutes, without a recovery since",
        &[],
        st.store.units_crash_looping(id.as_str(), now).await?.len() as f64,
    );
    if let Some(t) = cert_not_after {
        out.gauge(
            "pifleet_device_certificate_expiry_timestamp_seconds",
            "Expiry of the device's valid client certificate (Unix seconds)",
            &[],
            t as f64 / 1000.0,
        );
    }
    if let Some(s) = fresh {
        out.gauge(
            "pifleet_device_cpu_ratio",
            "CPU busy ratio (0-1)",
            &[],
            s.cpu_pct / 100.0,
        );
        out.gauge(
            "pifleet_device_load1",
            "1-minute load average",
            &[],
            s.load1,
        );
        out.gauge(
            "pifleet_device_load5",
            "5-minute load average",
            &[],
            s.load5,
        );
        out.gauge(
            "pifleet_device_load15",
            "15-minute load average",
            &[],
            s.load15,
        );
        out.gauge(
            "pifleet_device_memory_total_bytes",
            "Physical memory",
            &[],
            s.mem_total as f64,
        );
        out.gauge(
            "pifleet_device_memory_used_bytes",
            "Memory in use (total minus available)",
            &[],
            s.mem_used as f64,
        );
        out.gauge(
            "pifleet_device_swap_total_bytes",
            "Swap space",
            &[],
            s.swap_total as f64,
        );
        out.gauge(
            "pifleet_device_swap_used_bytes",
            "Swap in use",
            &[],
            s.swap_used as f64,
        );
        if let Some(t) = s.temp_c {
            out.gauge(
                "pifleet_device_temperature_celsius",
                "SoC temperature",
                &[],
                t,
            );
        }
        if let Some(bits) = s.throttled {
            out.gauge(
                "pifleet_device_throttled",
                "Raspberry Pi get_throttled bits",
                &[],
                bits as f64,
            );
            out.gauge(
                "pifleet_device_under_voltage",
                "1 while the supply voltage is too low",
                &[],
                f64::from(u8::from(bits & THROTTLED_UNDER_VOLTAGE != 0)),
            );
            out.gauge(
                "pifleet_device_throttling",
                "1 while the CPU is frequency-capped, throttled or at the soft temperature limit",
                &[],
                f64::from(u8::from(bits & THROTTLED_NOW != 0)),
            );
        }
        // One family at a time: the text format wants each family's samples together.
        for d in &s.disks {
            out.gauge(
                "pifleet_device_disk_total_bytes",
                "Size of the filesystem",
                &[("mount", d.mount.as_str())],
                d.total_bytes as f64,
            );
        }
        for d in &s.disks {
            out.gauge(
                "pifleet_device_disk_used_bytes",
                "Space used on the filesystem",
                &[("mount", d.mount.as_str())],
                d.used_bytes as f64,
            );
        }
        for n in &s.nets {
            out.counter(
                "pifleet_device_network_receive_bytes_total",
                "Bytes received since boot",
                &[("interface", n.iface.as_str())],
                n.rx_bytes as f64,
            );
        }
        for n in &s.nets {
            out.counter(
                "pifleet_device_network_transmit_bytes_total",
                "Bytes sent since boot",
                &[("interface", n.iface.as_str())],
                n.tx_bytes as f64,
            );
        }
        out.gauge(
            "pifleet_device_uptime_seconds",
            "Time since boot",
            &[],
            s.uptime_s as f64,
        );
        out.gauge(
            "pifleet_device_spool_backlog_samples",
            "Samples waiting on the device for the controller's acknowledgement",
            &[],
            s.spool_backlog as f64,
        );
    }
    Ok(text(out.finish()))
}

/// One Prometheus HTTP service discovery target group.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetGroup {
    /// The controller's address, as the scraper reached it.
    pub targets: Vec<String>,
    /// `__metrics_path__`, `device`, `name` (hostname) and `label_<key>` per device label.
    pub labels: BTreeMap<String, String>,
}

/// Prometheus HTTP service discovery: one target per enrolled (unrevoked) device.
#[utoipa::path(get, path = "/api/v1/prometheus/sd", operation_id = "prometheus_sd", tag = "metrics",
    responses(
        (status = 200, body = Vec<TargetGroup>),
        Refused,
    ))]
pub async fn sd(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<Vec<TargetGroup>>, Problem> {
    let target = super::tokens::controller_authority(
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    )
    .unwrap_or_else(|| format!("localhost:{}", st.cfg.https.listen.port()));
    let devices = st.store.list_devices().await?;
    Ok(axum::Json(
        devices
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
            .map(|d| {
                let mut labels = BTreeMap::new();
                for (k, v) in &d.labels {
                    labels.insert(format!("label_{}", label_name(k)), v.clone());
                }
                labels.insert(
                    "__metrics_path__".to_owned(),
                    format!("/metrics/devices/{}", d.id),
                );
                labels.insert("name".to_owned(), d.hostname.unwrap_or_default());
                labels.insert("device".to_owned(), d.id);
                TargetGroup {
                    targets: vec![target.clone()],
                    labels,
                }
            })
            .collect(),
    ))
}

/// A device label key as a Prometheus label name (`[a-zA-Z0-9_]`).
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Builds Prometheus text exposition: HELP and TYPE once per metric family.
#[derive(Debug, Default)]
struct Exposition {
    out: String,
    last: String,
}

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, "gauge", help, labels, v);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, "counter", help, labels, v);
    }

    fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        if self.last != name {
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
            self.last = name.to_owned();
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }

    fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_groups_families_and_escapes_labels() {
        let mut e = Exposition::default();
        e.gauge("a_bytes", "A.", &[("mount", "/")], 1.0);
        e.gauge("a_bytes", "A.", &[("mount", "/x\"y\\z\n")], 2.5);
        e.counter("b_total", "B.", &[], 3.0);
        assert_eq!(
            e.finish(),
            "# HELP a_bytes A.\n# TYPE a_bytes gauge\na_bytes{mount=\"/\"} 1\n\
             a_bytes{mount=\"/x\\\"y\\\\z\\n\"} 2.5\n# HELP b_total B.\n# TYPE b_total counter\nb_total 3\n"
        );
    }

    #[test]
    fn label_keys_become_prometheus_names() {
        assert_eq!(label_name("site"), "site");
        assert_eq!(label_name("app/v.2-x"), "app_v_2_x");
    }
}
