//! The fleet views over `devices`: each device joined with its latest sample in
//! `telemetry`, filtered, sorted and paged for the device list, and one device in full. Every
//! user value is bound, never formatted into SQL; the only formatted fragments come from
//! closed enums.

use pifleet_shared::proto::v1;
use sqlx::QueryBuilder;

use crate::store::db::JsonText;
use crate::store::dialect::Dialect;

use super::alerts::device_alerts;
use crate::model::devices::{
    DeviceCapabilities, DeviceDetail, DeviceFilter, DevicePage, DeviceSort, DeviceStatus,
    DeviceSummary, DiskUsage, IntervalBounds, ScriptCapability, ServiceState, SortOrder,
};
use crate::store::dialect;
use crate::store::{Labels, Store, StoreError};

/// Device and latest-sample columns of a [`DeviceSummary`].
pub(super) const SUMMARY_COLUMNS: &str = "d.id, d.labels, d.revoked_at, d.online, d.hostname, \
    d.model, d.agent_version, d.last_seen, d.enrolled_at, t.cpu_pct, t.mem_used, t.mem_total, \
    t.temp_c, t.throttled, t.disks, t.uptime_s, d.needs_review, d.review_reason";

/// The devices joined with their latest sample.
pub(super) const SUMMARY_FROM: &str =
    " FROM devices d LEFT JOIN telemetry t ON t.device_id = d.id AND t.seq = d.last_seq";

pub(super) fn push_device_filter<DB: Dialect>(qb: &mut QueryBuilder<DB>, f: &DeviceFilter)
where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    qb.push(" WHERE 1 = 1");
    if let Some(q) = &f.q {
        qb.push(" AND (");
        DB::push_contains_ci(qb, "d.id", q.clone());
        qb.push(" OR ");
        DB::push_contains_ci(qb, "COALESCE(d.hostname, '')", q.clone());
        qb.push(")");
    }
    qb.push(match f.status {
        None => "",
        Some(DeviceStatus::Revoked) => " AND d.revoked_at IS NOT NULL",
        Some(DeviceStatus::Online) => " AND d.revoked_at IS NULL AND d.online = TRUE",
        Some(DeviceStatus::Offline) => " AND d.revoked_at IS NULL AND d.online = FALSE",
    });
    qb.push(match f.needs_review {
        None => "",
        Some(true) => " AND d.needs_review = TRUE",
        Some(false) => " AND d.needs_review = FALSE",
    });
    for (k, v) in &f.labels {
        // Keys are validated label keys (no quotes), and bound anyway.
        qb.push(" AND ");
        DB::push_json_text(qb, "d.labels", k);
        qb.push(" = ").push_bind(v.clone());
    }
}

pub(super) fn push_device_order<DB: sqlx::Database>(
    qb: &mut QueryBuilder<DB>,
    sort: DeviceSort,
    order: SortOrder,
) {
    let dir = match order {
        SortOrder::Asc => "ASC",
        SortOrder::Desc => "DESC",
    };
    let key = match sort {
        DeviceSort::Id => None,
        DeviceSort::Hostname => Some("d.hostname".to_owned()),
        DeviceSort::LastSeen => Some("d.last_seen".to_owned()),
        DeviceSort::Cpu => Some("t.cpu_pct".to_owned()),
        DeviceSort::Memory => Some(format!(
            "{} / NULLIF(t.mem_total, 0)",
            dialect::as_float("t.mem_used")
        )),
        DeviceSort::Temperature => Some("t.temp_c".to_owned()),
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

/// The columns of [`SUMMARY_COLUMNS`] as read.
#[derive(sqlx::FromRow)]
struct SummaryRow {
    id: String,
    #[sqlx(try_from = "crate::store::db::JsonText<Labels>")]
    labels: Labels,
    revoked_at: Option<i64>,
    online: bool,
    hostname: Option<String>,
    model: Option<String>,
    agent_version: Option<String>,
    last_seen: Option<i64>,
    enrolled_at: i64,
    cpu_pct: Option<f64>,
    mem_used: Option<i64>,
    mem_total: Option<i64>,
    temp_c: Option<f64>,
    throttled: Option<i64>,
    disks: Option<JsonText<Vec<DiskUsage>>>,
    uptime_s: Option<i64>,
    needs_review: bool,
    review_reason: Option<String>,
}

impl From<SummaryRow> for DeviceSummary {
    fn from(r: SummaryRow) -> Self {
        let disks = r.disks.map(|JsonText(d)| d);
        let sum = |f: fn(&DiskUsage) -> u64| {
            disks
                .as_ref()
                .map(|ds| ds.iter().fold(0u64, |acc, d| acc.saturating_add(f(d))))
        };
        let status = status_of(r.revoked_at, r.online);
        let alerts = device_alerts(
            status,
            r.temp_c,
            r.throttled,
            disks.as_deref().unwrap_or(&[]),
        );
        DeviceSummary {
            id: r.id,
            labels: r.labels,
            status,
            hostname: r.hostname,
            model: r.model,
            agent_version: r.agent_version,
            last_seen: r.last_seen,
            enrolled_at: r.enrolled_at,
            cpu_pct: r.cpu_pct,
            mem_used: r.mem_used,
            mem_total: r.mem_total,
            temp_c: r.temp_c,
            throttled: r.throttled,
            disk_used: sum(|d| d.used_bytes),
            disk_total: sum(|d| d.total_bytes),
            uptime_s: r.uptime_s,
            alerts,
            needs_review: r.needs_review,
            review_reason: r.review_reason,
        }
    }
}

/// A [`SummaryRow`] with the rest of the device's columns, as [`Store::device_detail`]
/// reads it.
#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    summary: SummaryRow,
    os: Option<String>,
    kernel: Option<String>,
    arch: Option<String>,
    first_seen: Option<i64>,
    last_seq: Option<i64>,
    hello_at: Option<i64>,
    capabilities: Option<JsonText<v1::Capabilities>>,
    capabilities_at: Option<i64>,
    services: Option<JsonText<Vec<v1::ServiceState>>>,
    services_at: Option<i64>,
}

/// The stored capabilities report (the agent's wire form) in the API's form.
fn capabilities_of(
    reported: Option<JsonText<v1::Capabilities>>,
    at: Option<i64>,
) -> Option<DeviceCapabilities> {
    let (Some(JsonText(c)), Some(at)) = (reported, at) else {
        return None;
    };
    Some(DeviceCapabilities {
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
    })
}

impl Store {
    /// The summaries of these devices (unknown ids are left out), in id order.
    pub async fn device_summaries(&self, ids: &[String]) -> Result<Vec<DeviceSummary>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        reading!(self, |ex| {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT ");
            qb.push(SUMMARY_COLUMNS)
                .push(SUMMARY_FROM)
                .push(" WHERE d.id IN (");
            let mut list = qb.separated(", ");
            for id in ids {
                list.push_bind(id.clone());
            }
            qb.push(") ORDER BY d.id");
            let rows: Vec<SummaryRow> = qb.build_query_as().fetch_all(ex).await?;
            Ok(rows.into_iter().map(DeviceSummary::from).collect())
        })
    }

    /// One page of devices with their latest sample, and the number of matching devices.
    pub async fn device_page(&self, f: &DeviceFilter) -> Result<DevicePage, StoreError> {
        reading!(self, |ex| {
            let mut count: QueryBuilder<DB> = QueryBuilder::new("SELECT COUNT(*) FROM devices d");
            push_device_filter(&mut count, f);
            let total: i64 = count.build_query_scalar().fetch_one(ex).await?;
            let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT ");
            qb.push(SUMMARY_COLUMNS).push(SUMMARY_FROM);
            push_device_filter(&mut qb, f);
            push_device_order(&mut qb, f.sort, f.order);
            qb.push(" LIMIT ")
                .push_bind(f.limit)
                .push(" OFFSET ")
                .push_bind(f.offset);
            let rows: Vec<SummaryRow> = qb.build_query_as().fetch_all(ex).await?;
            let items = rows.into_iter().map(DeviceSummary::from).collect();
            Ok(DevicePage { total, items })
        })
    }

    /// One device in full, with its certificates (newest first).
    pub async fn device_detail(&self, id: &str) -> Result<Option<DeviceDetail>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, d.os, d.kernel, d.arch, d.first_seen, d.last_seq, \
             d.hello_at, d.capabilities, d.capabilities_at, d.services, \
             d.services_at{SUMMARY_FROM} WHERE d.id = $1"
        );
        let row: Option<DetailRow> = reading!(self, |ex| sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(ex)
            .await)?;
        let Some(r) = row else {
            return Ok(None);
        };
        let certificates = self.device_certificates(id).await?;
        let revoked_at = r.summary.revoked_at;
        Ok(Some(DeviceDetail {
            summary: r.summary.into(),
            os: r.os,
            kernel: r.kernel,
            arch: r.arch,
            first_seen: r.first_seen,
            revoked_at,
            last_seq: r.last_seq,
            hello_at: r.hello_at,
            certificates,
            capabilities: capabilities_of(r.capabilities, r.capabilities_at),
            services: r
                .services
                .map(|JsonText(s)| s)
                .unwrap_or_default()
                .into_iter()
                .map(|s| ServiceState {
                    unit: s.unit,
                    active: s.active,
                    sub: s.sub,
                })
                .collect(),
            services_at: r.services_at,
        }))
    }
}
