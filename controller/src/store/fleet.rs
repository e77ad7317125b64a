//! SQL for the admin API's fleet views: the device list with each device's latest sample,
//! device detail, telemetry and downsampled history, labels, paged command lists and the
//! filtered audit log. Every user value is bound, never formatted into SQL; the only
//! formatted fragments come from closed enums.

use pifleet_shared::proto::v1;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{CommandRow, Labels, Store, StoreError};
use crate::audit::Entry;
use crate::commands::lifecycle::Status;
use crate::model::audit::AuditFilter;
use crate::model::devices::{
    Certificate, DeviceAlert, DeviceCapabilities, DeviceDetail, DeviceFilter, DevicePage,
    DeviceSort, DeviceStatus, DeviceSummary, DiskUsage, FleetSummary, HistoryPlan, HistoryPoint,
    IntervalBounds, ScriptCapability, ServiceState, SortOrder, TelemetrySample,
};

/// Device and latest-sample columns of a [`DeviceSummary`].
const SUMMARY_COLUMNS: &str = "d.id, d.labels, d.revoked_at, d.online, d.hostname, d.model, \
    d.agent_version, d.last_seen, d.enrolled_at, t.cpu_pct, t.mem_used, t.mem_total, t.temp_c, \
    t.throttled, t.disks, t.uptime_s";

/// The devices joined with their latest sample.
const SUMMARY_FROM: &str =
    " FROM devices d LEFT JOIN telemetry t ON t.device_id = d.id AND t.seq = d.last_seq";

/// Command columns without the output bodies.
const COMMAND_COLUMNS: &str = "id, device_id, action, action_kind, status, reason, created_at, \
    expires_at, issued_at, sent_at, accepted_at, started_at, finished_at, exit_code, \
    duration_ms, stdout_len, stdout_sha256, stderr_len, stderr_sha256";

fn push_device_filter(qb: &mut QueryBuilder<Sqlite>, f: &DeviceFilter) {
    qb.push(" WHERE 1 = 1");
    if let Some(q) = &f.q {
        qb.push(" AND (instr(lower(d.id), ")
            .push_bind(q.clone())
            .push(") > 0 OR instr(lower(COALESCE(d.hostname, '')), ")
            .push_bind(q.clone())
            .push(") > 0)");
    }
    qb.push(match f.status {
        None => "",
        Some(DeviceStatus::Revoked) => " AND d.revoked_at IS NOT NULL",
        Some(DeviceStatus::Online) => " AND d.revoked_at IS NULL AND d.online <> 0",
        Some(DeviceStatus::Offline) => " AND d.revoked_at IS NULL AND d.online = 0",
    });
    for (k, v) in &f.labels {
        // Keys are validated label keys (no quotes), and bound anyway.
        qb.push(" AND json_extract(d.labels, ")
            .push_bind(format!("$.\"{k}\""))
            .push(") = ")
            .push_bind(v.clone());
    }
}

fn push_device_order(qb: &mut QueryBuilder<Sqlite>, sort: DeviceSort, order: SortOrder) {
    let dir = match order {
        SortOrder::Asc => "ASC",
        SortOrder::Desc => "DESC",
    };
    let key = match sort {
        DeviceSort::Id => None,
        DeviceSort::Hostname => Some("d.hostname"),
        DeviceSort::LastSeen => Some("d.last_seen"),
        DeviceSort::Cpu => Some("t.cpu_pct"),
        DeviceSort::Memory => Some("CAST(t.mem_used AS REAL) / NULLIF(t.mem_total, 0)"),
        DeviceSort::Temperature => Some("t.temp_c"),
    };
    qb.push(" ORDER BY ");
    if let Some(key) = key {
        qb.push(key).push(" ").push(dir).push(" NULLS LAST, ");
    }
    qb.push("d.id ").push(dir);
}

fn status_of(revoked_at: Option<i64>, online: bool) -> DeviceStatus {
    if revoked_at.is_some() {
        DeviceStatus::Revoked
    } else if online {
        DeviceStatus::Online
    } else {
        DeviceStatus::Offline
    }
}

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
fn alerting_sql() -> String {
    format!(
        "d.revoked_at IS NULL AND d.online = 1 AND (t.temp_c > {ALERT_TEMPERATURE_C:?} \
         OR (COALESCE(t.throttled, 0) & {bits}) != 0 \
         OR EXISTS (SELECT 1 FROM json_each(t.disks) j \
            WHERE json_extract(j.value, '$.total_bytes') > 0 \
            AND CAST(json_extract(j.value, '$.used_bytes') AS REAL) \
                / json_extract(j.value, '$.total_bytes') > {ALERT_DISK_RATIO:?}))",
        bits = THROTTLED_UNDER_VOLTAGE | THROTTLED_NOW
    )
}

fn summary(r: &SqliteRow) -> Result<DeviceSummary, StoreError> {
    let labels: String = r.try_get("labels")?;
    let disks: Option<Vec<DiskUsage>> = r
        .try_get::<Option<String>, _>("disks")?
        .map(|s| serde_json::from_str(&s))
        .transpose()?;
    let sum = |f: fn(&DiskUsage) -> u64| {
        disks
            .as_ref()
            .map(|ds| ds.iter().fold(0u64, |acc, d| acc.saturating_add(f(d))))
    };
    let status = status_of(
        r.try_get("revoked_at")?,
        r.try_get::<i64, _>("online")? != 0,
    );
    let temp_c: Option<f64> = r.try_get("temp_c")?;
    let throttled: Option<i64> = r.try_get("throttled")?;
    let alerts = device_alerts(status, temp_c, throttled, disks.as_deref().unwrap_or(&[]));
    Ok(DeviceSummary {
        id: r.try_get("id")?,
        labels: serde_json::from_str(&labels)?,
        status,
        hostname: r.try_get("hostname")?,
        model: r.try_get("model")?,
        agent_version: r.try_get("agent_version")?,
        last_seen: r.try_get("last_seen")?,
        enrolled_at: r.try_get("enrolled_at")?,
        cpu_pct: r.try_get("cpu_pct")?,
        mem_used: r.try_get("mem_used")?,
        mem_total: r.try_get("mem_total")?,
        temp_c,
        throttled,
        disk_used: sum(|d| d.used_bytes),
        disk_total: sum(|d| d.total_bytes),
        uptime_s: r.try_get("uptime_s")?,
        alerts,
    })
}

/// The stored capabilities report (the agent's wire form, as JSON) in the API's form.
fn capabilities_of(
    json: Option<String>,
    at: Option<i64>,
) -> Result<Option<DeviceCapabilities>, StoreError> {
    let (Some(json), Some(at)) = (json, at) else {
        return Ok(None);
    };
    let c: v1::Capabilities = serde_json::from_str(&json)?;
    Ok(Some(DeviceCapabilities {
        ping: c.ping,
        reboot: c.reboot,
        services: c.services,
        journal_units: c.journal_units,
        scripts: c
            .scripts
            .into_iter()
            .map(|s| ScriptCapability {
                name: s.name,
                allowed_args: s.allowed_args,
            })
            .collect(),
        set_interval: c.set_interval.map(|b| IntervalBounds {
            min_s: b.min_s,
            max_s: b.max_s,
        }),
        reported_at: at,
    }))
}

fn command_row(r: &SqliteRow) -> Result<CommandRow, StoreError> {
    let action: String = r.try_get("action")?;
    Ok(CommandRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        action: serde_json::from_str(&action)?,
        action_kind: r.try_get("action_kind")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        issued_at: r.try_get("issued_at")?,
        sent_at: r.try_get("sent_at")?,
        accepted_at: r.try_get("accepted_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        exit_code: r.try_get("exit_code")?,
        duration_ms: r.try_get("duration_ms")?,
        stdout: None,
        stdout_len: r.try_get("stdout_len")?,
        stdout_sha256: r.try_get("stdout_sha256")?,
        stderr: None,
        stderr_len: r.try_get("stderr_len")?,
        stderr_sha256: r.try_get("stderr_sha256")?,
    })
}

fn push_command_filter(
    qb: &mut QueryBuilder<Sqlite>,
    device: Option<&str>,
    status: Option<Status>,
    action_kind: Option<&str>,
) {
    qb.push(" WHERE 1 = 1");
    if let Some(kind) = action_kind {
        qb.push(" AND action_kind = ").push_bind(kind.to_owned());
    }
    if let Some(device) = device {
        qb.push(" AND device_id = ").push_bind(device.to_owned());
    }
    if let Some(status) = status {
        qb.push(" AND status = ").push_bind(status.as_str());
    }
}

/// Devices by state, for the controller's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    /// Not revoked.
    pub enrolled: i64,
    pub online: i64,
    /// Enrolled and not online.
    pub offline: i64,
    pub revoked: i64,
}

impl Store {
    /// Devices by state, in one pass.
    pub async fn device_counts(&self) -> Result<DeviceCounts, StoreError> {
        let r = sqlx::query(
            "SELECT COALESCE(SUM(revoked_at IS NULL), 0) AS enrolled, \
             COALESCE(SUM(revoked_at IS NULL AND online = 1), 0) AS online, \
             COALESCE(SUM(revoked_at IS NOT NULL), 0) AS revoked FROM devices",
        )
        .fetch_one(&self.reader)
        .await?;
        let enrolled: i64 = r.try_get("enrolled")?;
        let online: i64 = r.try_get("online")?;
        Ok(DeviceCounts {
            enrolled,
            online,
            offline: enrolled - online,
            revoked: r.try_get("revoked")?,
        })
    }
}

impl Store {
    /// Fleet totals with the number of online devices that have an alert.
    pub async fn fleet_summary(&self) -> Result<FleetSummary, StoreError> {
        let counts = self.device_counts().await?;
        let sql = format!(
            "SELECT COUNT(*) FROM devices d JOIN telemetry t \
             ON t.device_id = d.id AND t.seq = d.last_seq WHERE {}",
            alerting_sql()
        );
        let alerting: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.reader)
            .await?;
        Ok(FleetSummary {
            enrolled: counts.enrolled,
            online: counts.online,
            offline: counts.offline,
            alerting,
            revoked: counts.revoked,
        })
    }

    /// The summaries of these devices (unknown ids are left out), in id order.
    pub async fn device_summaries(&self, ids: &[String]) -> Result<Vec<DeviceSummary>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        qb.push(SUMMARY_COLUMNS)
            .push(SUMMARY_FROM)
            .push(" WHERE d.id IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(id.clone());
        }
        qb.push(") ORDER BY d.id");
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(summary).collect()
    }

    /// One page of devices with their latest sample, and the number of matching devices.
    pub async fn device_page(&self, f: &DeviceFilter) -> Result<DevicePage, StoreError> {
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT COUNT(*) FROM devices d");
        push_device_filter(&mut count, f);
        let total: i64 = count.build_query_scalar().fetch_one(&self.reader).await?;
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        qb.push(SUMMARY_COLUMNS).push(SUMMARY_FROM);
        push_device_filter(&mut qb, f);
        push_device_order(&mut qb, f.sort, f.order);
        qb.push(" LIMIT ")
            .push_bind(f.limit)
            .push(" OFFSET ")
            .push_bind(f.offset);
        let rows = qb.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(summary).collect::<Result<_, _>>()?;
        Ok(DevicePage { total, items })
    }

    /// One device in full, with its certificates (newest first).
    pub async fn device_detail(&self, id: &str) -> Result<Option<DeviceDetail>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, d.os, d.kernel, d.arch, d.first_seen, d.last_seq, \
             d.hello_at, d.capabilities, d.capabilities_at, d.services, \
             d.services_at{SUMMARY_FROM} WHERE d.id = ?"
        );
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
        else {
            return Ok(None);
        };
        let certs = sqlx::query(
            "SELECT serial, issued_at, not_after, revoked_at FROM certificates \
             WHERE device_id = ? ORDER BY issued_at DESC, serial",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        let certificates = certs
            .iter()
            .map(|c| {
                Ok(Certificate {
                    serial: c.try_get("serial")?,
                    issued_at: c.try_get("issued_at")?,
                    not_after: c.try_get("not_after")?,
                    revoked_at: c.try_get("revoked_at")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(DeviceDetail {
            summary: summary(&r)?,
            os: r.try_get("os")?,
            kernel: r.try_get("kernel")?,
            arch: r.try_get("arch")?,
            first_seen: r.try_get("first_seen")?,
            revoked_at: r.try_get("revoked_at")?,
            last_seq: r.try_get("last_seq")?,
            hello_at: r.try_get("hello_at")?,
            certificates,
            capabilities: capabilities_of(
                r.try_get("capabilities")?,
                r.try_get("capabilities_at")?,
            )?,
            services: r
                .try_get::<Option<String>, _>("services")?
                .map(|s| serde_json::from_str::<Vec<v1::ServiceState>>(&s))
                .transpose()?
                .unwrap_or_default()
                .into_iter()
                .map(|s| ServiceState {
                    unit: s.unit,
                    active: s.active,
                    sub: s.sub,
                })
                .collect(),
            services_at: r.try_get("services_at")?,
        }))
    }

    /// The device's newest stored sample.
    pub async fn latest_sample(&self, device: &str) -> Result<Option<TelemetrySample>, StoreError> {
        let r = sqlx::query(
            "SELECT seq, ts, received_at, cpu_pct, load1, load5, load15, mem_total, mem_used, \
             swap_total, swap_used, temp_c, throttled, uptime_s, spool_dropped, spool_backlog, \
             disks, nets FROM telemetry WHERE device_id = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(device)
        .fetch_optional(&self.reader)
        .await?;
        let Some(r) = r else { return Ok(None) };
        let disks: String = r.try_get("disks")?;
        let nets: String = r.try_get("nets")?;
        Ok(Some(TelemetrySample {
            seq: r.try_get("seq")?,
            ts: r.try_get("ts")?,
            received_at: r.try_get("received_at")?,
            cpu_pct: r.try_get("cpu_pct")?,
            load1: r.try_get("load1")?,
            load5: r.try_get("load5")?,
            load15: r.try_get("load15")?,
            mem_total: r.try_get("mem_total")?,
            mem_used: r.try_get("mem_used")?,
            swap_total: r.try_get("swap_total")?,
            swap_used: r.try_get("swap_used")?,
            temp_c: r.try_get("temp_c")?,
            throttled: r.try_get("throttled")?,
            uptime_s: r.try_get("uptime_s")?,
            spool_dropped: r.try_get("spool_dropped")?,
            spool_backlog: r.try_get("spool_backlog")?,
            disks: serde_json::from_str(&disks)?,
            nets: serde_json::from_str(&nets)?,
        }))
    }

    /// Aggregates of the device's samples per bucket of `plan.bucket_ms` (by device time),
    /// oldest first; buckets without samples are left out.
    pub async fn device_history(
        &self,
        device: &str,
        plan: HistoryPlan,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        // One GROUP BY over the range (read through the (device_id, ts) index); the disk and
        // network totals per sample were computed at ingest (migration 0006).
        let rows = sqlx::query(
            "WITH s AS ( \
               SELECT (ts - ?1) / ?2 AS b, cpu_pct, load1, mem_used, mem_total, temp_c, \
                 disk_used AS du, disk_total AS dt, net_rx AS rx, net_tx AS tx \
               FROM telemetry WHERE device_id = ?3 AND ts >= ?1 AND ts < ?4) \
             SELECT b, COUNT(*) AS samples, AVG(cpu_pct) AS cpu_avg, MAX(cpu_pct) AS cpu_max, \
               AVG(load1) AS load1_avg, AVG(mem_used) AS mem_avg, MAX(mem_total) AS mem_total, \
               AVG(temp_c) AS temp_avg, MAX(temp_c) AS temp_max, AVG(du) AS du_avg, \
               CAST(MAX(dt) AS INTEGER) AS dt_max, CAST(MAX(rx) AS INTEGER) AS rx_max, \
               CAST(MAX(tx) AS INTEGER) AS tx_max \
             FROM s GROUP BY b ORDER BY b",
        )
        .bind(plan.from)
        .bind(plan.bucket_ms)
        .bind(device)
        .bind(plan.to)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let b: i64 = r.try_get("b")?;
                Ok(HistoryPoint {
                    t: plan.from.saturating_add(b.saturating_mul(plan.bucket_ms)),
                    samples: r.try_get("samples")?,
                    cpu_pct_avg: r.try_get("cpu_avg")?,
                    cpu_pct_max: r.try_get("cpu_max")?,
                    load1_avg: r.try_get("load1_avg")?,
                    mem_used_avg: r.try_get("mem_avg")?,
                    mem_total_max: r.try_get("mem_total")?,
                    temp_c_avg: r.try_get("temp_avg")?,
                    temp_c_max: r.try_get("temp_max")?,
                    disk_used_avg: r.try_get("du_avg")?,
                    disk_total_max: r.try_get("dt_max")?,
                    net_rx_bytes: r.try_get("rx_max")?,
                    net_tx_bytes: r.try_get("tx_max")?,
                })
            })
            .collect()
    }

    /// Replaces a device's labels. Returns false for an unknown device.
    pub async fn set_device_labels(&self, id: &str, labels: &Labels) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE devices SET labels = ? WHERE id = ?")
            .bind(serde_json::to_string(labels)?)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Commands newest first, without their output bodies (the lengths are there), and the
    /// number of matching commands.
    pub async fn command_page(
        &self,
        device: Option<&str>,
        status: Option<Status>,
        action_kind: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<CommandRow>), StoreError> {
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT COUNT(*) FROM commands");
        push_command_filter(&mut count, device, status, action_kind);
        let total: i64 = count.build_query_scalar().fetch_one(&self.reader).await?;
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        qb.push(COMMAND_COLUMNS).push(" FROM commands");
        push_command_filter(&mut qb, device, status, action_kind);
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = qb.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(command_row).collect::<Result<_, _>>()?;
        Ok((total, items))
    }

    /// Audit entries matching the filter, newest first.
    pub async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<Entry>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT seq, at, actor, source, action, target, outcome, detail, prev_hash, hash \
             FROM audit_log WHERE 1 = 1",
        );
        if let Some(actor) = &f.actor {
            qb.push(" AND actor = ").push_bind(actor.clone());
        }
        if let Some(action) = &f.action {
            qb.push(" AND action = ").push_bind(action.clone());
        }
        if let Some(since) = f.since {
            qb.push(" AND at >= ").push_bind(since);
        }
        if let Some(until) = f.until {
            qb.push(" AND at <= ").push_bind(until);
        }
        if let Some(before) = f.before {
            qb.push(" AND seq < ").push_bind(before);
        }
        qb.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(super::audit::audit_entry).collect()
    }

    /// The sequence number of the newest audit entry, as recorded at the last append.
    pub async fn audit_head(&self) -> Result<Option<i64>, StoreError> {
        let head: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
                .fetch_optional(&self.reader)
                .await?;
        Ok(head.and_then(|h| h.parse().ok()))
    }
}

#[cfg(test)]
mod tests;
