//! The fleet views over `devices`: each device joined with its latest sample in
//! `telemetry`, filtered, sorted and paged for the device list, and one device in full. Every
//! user value is bound, never formatted into SQL; the only formatted fragments come from
//! closed enums.

use pifleet_shared::proto::v1;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::alerts::device_alerts;
use crate::model::devices::{
    DeviceCapabilities, DeviceDetail, DeviceFilter, DevicePage, DeviceSort, DeviceStatus,
    DeviceSummary, DiskUsage, IntervalBounds, ScriptCapability, ServiceState, SortOrder,
};
use crate::store::{Store, StoreError};

/// Device and latest-sample columns of a [`DeviceSummary`].
pub(super) const SUMMARY_COLUMNS: &str = "d.id, d.labels, d.revoked_at, d.online, d.hostname, \
    d.model, d.agent_version, d.last_seen, d.enrolled_at, t.cpu_pct, t.mem_used, t.mem_total, \
    t.temp_c, t.throttled, t.disks, t.uptime_s";

/// The devices joined with their latest sample.
pub(super) const SUMMARY_FROM: &str =
    " FROM devices d LEFT JOIN telemetry t ON t.device_id = d.id AND t.seq = d.last_seq";

pub(super) fn push_device_filter(qb: &mut QueryBuilder<Sqlite>, f: &DeviceFilter) {
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

pub(super) fn push_device_order(qb: &mut QueryBuilder<Sqlite>, sort: DeviceSort, order: SortOrder) {
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

impl Store {
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
        let certificates = self.device_certificates(id).await?;
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
}
