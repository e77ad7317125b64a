//! SQL for the admin API's fleet views: the device list with each device's latest sample,
//! device detail, telemetry and downsampled history, labels, paged command lists and the
//! filtered audit log. Every user value is bound, never formatted into SQL; the only
//! formatted fragments come from closed enums.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{CommandRow, Labels, Store, StoreError};
use crate::api::audit::AuditFilter;
use crate::api::devices::{
    Certificate, DeviceDetail, DeviceFilter, DevicePage, DeviceSort, DeviceStatus, DeviceSummary,
    DiskUsage, HistoryPlan, HistoryPoint, SortOrder, TelemetrySample,
};
use crate::audit::Entry;
use crate::lifecycle::Status;

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
    Ok(DeviceSummary {
        id: r.try_get("id")?,
        labels: serde_json::from_str(&labels)?,
        status: status_of(
            r.try_get("revoked_at")?,
            r.try_get::<i64, _>("online")? != 0,
        ),
        hostname: r.try_get("hostname")?,
        model: r.try_get("model")?,
        agent_version: r.try_get("agent_version")?,
        last_seen: r.try_get("last_seen")?,
        enrolled_at: r.try_get("enrolled_at")?,
        cpu_pct: r.try_get("cpu_pct")?,
        mem_used: r.try_get("mem_used")?,
        mem_total: r.try_get("mem_total")?,
        temp_c: r.try_get("temp_c")?,
        throttled: r.try_get("throttled")?,
        disk_used: sum(|d| d.used_bytes),
        disk_total: sum(|d| d.total_bytes),
        uptime_s: r.try_get("uptime_s")?,
    })
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
) {
    qb.push(" WHERE 1 = 1");
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
             d.hello_at{SUMMARY_FROM} WHERE d.id = ?"
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
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<CommandRow>), StoreError> {
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT COUNT(*) FROM commands");
        push_command_filter(&mut count, device, status);
        let total: i64 = count.build_query_scalar().fetch_one(&self.reader).await?;
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        qb.push(COMMAND_COLUMNS).push(" FROM commands");
        push_command_filter(&mut qb, device, status);
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
        rows.iter()
            .map(|r| {
                Ok(Entry {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    source: r.try_get("source")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
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
mod tests {
    use std::time::Instant;

    use pifleet_shared::DeviceId;
    use pifleet_shared::command::{Action, CommandId};
    use pifleet_shared::proto::v1;

    use super::*;
    use crate::audit::Event;
    use crate::store::{IngestOp, NewCommand};

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), true).await.unwrap();
        (dir, s)
    }

    async fn add_device(s: &Store, id: &str, labels: &str, hostname: Option<&str>, online: bool) {
        sqlx::query(
            "INSERT INTO devices (id, labels, enrolled_at, hostname, online) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(labels)
        .bind(1_000_i64)
        .bind(hostname)
        .bind(i64::from(online))
        .execute(&s.writer)
        .await
        .unwrap();
    }

    fn sample(seq: u64, ts_ms: i64, cpu: f32, mem_used: u64) -> v1::Sample {
        v1::Sample {
            seq,
            ts_ms,
            cpu_pct: cpu,
            load1: 0.5,
            load5: 0.25,
            load15: 0.125,
            mem_total_bytes: 1_000,
            mem_used_bytes: mem_used,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            disks: vec![
                v1::Disk {
                    mount: "/".into(),
                    fs: "ext4".into(),
                    total_bytes: 100,
                    used_bytes: 40,
                },
                v1::Disk {
                    mount: "/boot".into(),
                    fs: "vfat".into(),
                    total_bytes: 10,
                    used_bytes: 2,
                },
            ],
            nets: vec![
                v1::Net {
                    iface: "eth0".into(),
                    rx_bytes: seq * 100,
                    tx_bytes: seq * 10,
                },
                v1::Net {
                    iface: "wlan0".into(),
                    rx_bytes: 1,
                    tx_bytes: 1,
                },
            ],
            temp_c: Some(50.0),
            throttled: Some(0),
            uptime_s: 60,
            spool_dropped: 0,
            spool_backlog: 0,
        }
    }

    async fn telemetry(s: &Store, device: &str, samples: Vec<v1::Sample>) {
        let op = IngestOp::Telemetry {
            device: DeviceId::parse(device).unwrap(),
            samples,
        };
        s.write_batch(&[op]).await.unwrap();
    }

    /// Spool drops are counted once per stored sample: a re-sent sample adds nothing.
    #[tokio::test]
    async fn spool_drops_count_once_per_stored_sample() {
        let (_dir, s) = store().await;
        add_device(&s, "pi-d", "{}", None, true).await;
        let mut a = sample(1, 1_000, 1.0, 1);
        a.spool_dropped = 3;
        let mut b = sample(2, 2_000, 1.0, 1);
        b.spool_dropped = 4;
        let op = |samples: Vec<v1::Sample>| IngestOp::Telemetry {
            device: DeviceId::parse("pi-d").unwrap(),
            samples,
        };
        assert_eq!(s.write_batch(&[op(vec![a.clone()])]).await.unwrap(), 3);
        // `a` again (a re-send) with the new `b`.
        assert_eq!(s.write_batch(&[op(vec![a, b])]).await.unwrap(), 4);
        assert_eq!(s.spool_dropped_total("pi-d").await.unwrap(), 7);
        assert_eq!(s.spool_dropped_total("pi-none").await.unwrap(), 0);
    }

    fn filter() -> DeviceFilter {
        DeviceFilter {
            limit: 50,
            ..DeviceFilter::default()
        }
    }

    async fn ids(s: &Store, f: &DeviceFilter) -> (i64, Vec<String>) {
        let p = s.device_page(f).await.unwrap();
        (p.total, p.items.into_iter().map(|d| d.id).collect())
    }

    /// pi-a online (cpu 10, mem 900), pi-b offline (cpu 90, mem 100), pi-c revoked, no
    /// samples, pi-d offline without samples.
    async fn fleet(s: &Store) {
        add_device(
            s,
            "pi-a",
            r#"{"site":"lobby","tier":"1"}"#,
            Some("Kiosk-A"),
            true,
        )
        .await;
        add_device(s, "pi-b", r#"{"site":"lobby"}"#, Some("sign-b"), false).await;
        add_device(s, "pi-c", r#"{"site":"lab"}"#, None, false).await;
        add_device(s, "pi-d", "{}", Some("d"), false).await;
        telemetry(
            s,
            "pi-a",
            vec![sample(1, 5_000, 5.0, 100), sample(2, 6_000, 10.0, 900)],
        )
        .await;
        telemetry(s, "pi-b", vec![sample(7, 5_000, 90.0, 100)]).await;
        assert!(s.revoke_device("pi-c").await.unwrap());
    }

    #[tokio::test]
    async fn device_list_filters_sorts_and_pages() {
        let (_d, s) = store().await;
        fleet(&s).await;
        let (total, all) = ids(&s, &filter()).await;
        assert_eq!(total, 4);
        assert_eq!(all, ["pi-a", "pi-b", "pi-c", "pi-d"]);

        let p = s.device_page(&filter()).await.unwrap();
        let a = &p.items[0];
        assert_eq!(a.status, DeviceStatus::Online);
        assert_eq!(
            (a.cpu_pct, a.mem_used, a.mem_total),
            (Some(10.0), Some(900), Some(1_000))
        );
        assert_eq!(
            (a.disk_used, a.disk_total, a.uptime_s),
            (Some(42), Some(110), Some(60))
        );
        assert_eq!(a.labels.get("site").map(String::as_str), Some("lobby"));
        assert_eq!(p.items[2].status, DeviceStatus::Revoked);
        assert_eq!((p.items[3].cpu_pct, p.items[3].disk_used), (None, None));

        let cases: Vec<(DeviceFilter, i64, Vec<&str>)> = vec![
            (
                DeviceFilter {
                    q: Some("kiosk".into()),
                    ..filter()
                },
                1,
                vec!["pi-a"],
            ),
            (
                DeviceFilter {
                    q: Some("pi-".into()),
                    ..filter()
                },
                4,
                vec!["pi-a", "pi-b", "pi-c", "pi-d"],
            ),
            (
                DeviceFilter {
                    q: Some("%".into()),
                    ..filter()
                },
                0,
                vec![],
            ),
            (
                DeviceFilter {
                    status: Some(DeviceStatus::Online),
                    ..filter()
                },
                1,
                vec!["pi-a"],
            ),
            (
                DeviceFilter {
                    status: Some(DeviceStatus::Offline),
                    ..filter()
                },
                2,
                vec!["pi-b", "pi-d"],
            ),
            (
                DeviceFilter {
                    status: Some(DeviceStatus::Revoked),
                    ..filter()
                },
                1,
                vec!["pi-c"],
            ),
            (
                DeviceFilter {
                    labels: [("site".into(), "lobby".into())].into(),
                    ..filter()
                },
                2,
                vec!["pi-a", "pi-b"],
            ),
            (
                DeviceFilter {
                    labels: [("site".into(), "lobby".into()), ("tier".into(), "1".into())].into(),
                    ..filter()
                },
                1,
                vec!["pi-a"],
            ),
            (
                DeviceFilter {
                    labels: [("site".into(), "x' OR 1=1 --".into())].into(),
                    ..filter()
                },
                0,
                vec![],
            ),
            (
                DeviceFilter {
                    sort: DeviceSort::Cpu,
                    order: SortOrder::Desc,
                    ..filter()
                },
                4,
                vec!["pi-b", "pi-a", "pi-d", "pi-c"],
            ),
            (
                DeviceFilter {
                    sort: DeviceSort::Cpu,
                    ..filter()
                },
                4,
                vec!["pi-a", "pi-b", "pi-c", "pi-d"],
            ),
            (
                DeviceFilter {
                    sort: DeviceSort::Memory,
                    order: SortOrder::Desc,
                    ..filter()
                },
                4,
                vec!["pi-a", "pi-b", "pi-d", "pi-c"],
            ),
            (
                DeviceFilter {
                    sort: DeviceSort::Hostname,
                    ..filter()
                },
                4,
                vec!["pi-a", "pi-d", "pi-b", "pi-c"],
            ),
            (
                DeviceFilter {
                    limit: 2,
                    offset: 1,
                    ..filter()
                },
                4,
                vec!["pi-b", "pi-c"],
            ),
            (
                DeviceFilter {
                    limit: 2,
                    offset: i64::MAX,
                    ..filter()
                },
                4,
                vec![],
            ),
        ];
        for (f, want_total, want) in cases {
            let (total, got) = ids(&s, &f).await;
            assert_eq!(
                (total, got),
                (want_total, want.iter().map(|s| s.to_string()).collect()),
                "{f:?}"
            );
        }
        // Every sort key and direction runs.
        for sort in [
            DeviceSort::Id,
            DeviceSort::Hostname,
            DeviceSort::LastSeen,
            DeviceSort::Cpu,
            DeviceSort::Memory,
            DeviceSort::Temperature,
        ] {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                assert_eq!(
                    ids(
                        &s,
                        &DeviceFilter {
                            sort,
                            order,
                            ..filter()
                        }
                    )
                    .await
                    .0,
                    4
                );
            }
        }
    }

    #[tokio::test]
    async fn device_detail_sample_and_labels() {
        let (_d, s) = store().await;
        fleet(&s).await;
        sqlx::query(
            "INSERT INTO certificates (serial, device_id, issued_at, not_after) VALUES \
             ('0a', 'pi-a', 1, 100), ('0b', 'pi-a', 2, 200)",
        )
        .execute(&s.writer)
        .await
        .unwrap();
        let d = s.device_detail("pi-a").await.unwrap().unwrap();
        assert_eq!(d.summary.id, "pi-a");
        assert_eq!(d.last_seq, Some(2));
        let serials: Vec<&str> = d.certificates.iter().map(|c| c.serial.as_str()).collect();
        assert_eq!(serials, ["0b", "0a"]);
        assert!(s.device_detail("nope").await.unwrap().is_none());
        let c = s.device_detail("pi-c").await.unwrap().unwrap();
        assert!(c.revoked_at.is_some());
        assert_eq!(c.summary.status, DeviceStatus::Revoked);

        let t = s.latest_sample("pi-a").await.unwrap().unwrap();
        assert_eq!((t.seq, t.ts, t.cpu_pct, t.mem_used), (2, 6_000, 10.0, 900));
        assert_eq!(t.disks.len(), 2);
        assert_eq!(t.disks[0].mount, "/");
        assert_eq!(
            (t.nets[0].iface.as_str(), t.nets[0].rx_bytes),
            ("eth0", 200)
        );
        assert_eq!(t.temp_c, Some(50.0));
        assert!(s.latest_sample("pi-d").await.unwrap().is_none());

        let labels: Labels = [("site".into(), "hq".into())].into();
        assert!(s.set_device_labels("pi-a", &labels).await.unwrap());
        assert!(!s.set_device_labels("nope", &labels).await.unwrap());
        let d = s.device_detail("pi-a").await.unwrap().unwrap();
        assert_eq!(d.summary.labels, labels);
        // The selector sees the new labels.
        let f = DeviceFilter {
            labels: labels.clone(),
            ..filter()
        };
        assert_eq!(ids(&s, &f).await.1, ["pi-a"]);
    }

    #[tokio::test]
    async fn history_buckets() {
        let (_d, s) = store().await;
        add_device(&s, "pi-a", "{}", None, true).await;
        // Samples at 0,1,…,9 s with cpu = seq; the one at 9 s is outside [0, 9000).
        let samples = (0..10)
            .map(|i| {
                let mut x = sample(
                    i + 1,
                    1_000_000 + 1_000 * i64::try_from(i).unwrap(),
                    i as f32,
                    100 * i,
                );
                if i == 4 {
                    x.temp_c = None;
                }
                x
            })
            .collect();
        telemetry(&s, "pi-a", samples).await;
        let plan = HistoryPlan {
            from: 1_000_000,
            to: 1_009_000,
            bucket_ms: 3_000,
        };
        let pts = s.device_history("pi-a", plan).await.unwrap();
        assert_eq!(pts.len(), 3);
        let t: Vec<i64> = pts.iter().map(|p| p.t).collect();
        assert_eq!(t, [1_000_000, 1_003_000, 1_006_000]);
        let p = &pts[1]; // samples 3, 4, 5 (seq 4, 5, 6)
        assert_eq!(p.samples, 3);
        assert_eq!((p.cpu_pct_avg, p.cpu_pct_max, p.load1_avg), (4.0, 5.0, 0.5));
        assert_eq!((p.mem_used_avg, p.mem_total_max), (400.0, 1_000));
        assert_eq!((p.temp_c_avg, p.temp_c_max), (Some(50.0), Some(50.0)));
        assert_eq!((p.disk_used_avg, p.disk_total_max), (42.0, 110));
        // Largest per-sample sum over interfaces: seq 6 → 600 + 1 and 60 + 1.
        assert_eq!((p.net_rx_bytes, p.net_tx_bytes), (601, 61));
        // A gap leaves the bucket out; other devices and ranges are not mixed in.
        let plan = HistoryPlan {
            from: 0,
            to: 1_000_000,
            bucket_ms: 1_000,
        };
        assert!(s.device_history("pi-a", plan).await.unwrap().is_empty());
        let plan = HistoryPlan {
            from: 1_000_000,
            to: 1_009_000,
            bucket_ms: 1,
        };
        assert_eq!(s.device_history("pi-b", plan).await.unwrap().len(), 0);
        assert_eq!(s.device_history("pi-a", plan).await.unwrap().len(), 9);
    }

    #[tokio::test]
    async fn command_pages() {
        let (_d, s) = store().await;
        add_device(&s, "pi-a", "{}", None, true).await;
        add_device(&s, "pi-b", "{}", None, true).await;
        for (i, dev) in ["pi-a", "pi-b", "pi-a"].iter().enumerate() {
            let cmd = NewCommand {
                id: CommandId([u8::try_from(i).unwrap(); 16]),
                device: (*dev).into(),
                action: Action::Ping,
                expires_at: i64::MAX,
                answer_timeout_ms: 1_000,
            };
            s.insert_commands(&[cmd]).await.unwrap();
            // Distinct creation times, oldest first.
            sqlx::query("UPDATE commands SET created_at = ? WHERE id = ?")
                .bind(i64::try_from(i).unwrap())
                .bind(CommandId([u8::try_from(i).unwrap(); 16]).to_string())
                .execute(&s.writer)
                .await
                .unwrap();
        }
        let id = |i: u8| CommandId([i; 16]).to_string();
        let (total, rows) = s.command_page(None, None, 50, 0).await.unwrap();
        assert_eq!(total, 3);
        let got: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(got, [id(2), id(1), id(0)]);
        assert!(
            rows.iter()
                .all(|r| r.stdout.is_none() && r.stderr.is_none())
        );
        assert_eq!(rows[0].parsed_action().unwrap(), Action::Ping);
        let (total, rows) = s.command_page(Some("pi-a"), None, 1, 1).await.unwrap();
        assert_eq!((total, rows.len(), rows[0].id.clone()), (2, 1, id(0)));
        assert_eq!(
            s.cancel_command(&id(1)).await.unwrap(),
            super::super::Cancel::Cancelled
        );
        assert_eq!(
            s.cancel_command(&id(1)).await.unwrap(),
            super::super::Cancel::Refused(Status::Cancelled)
        );
        let (total, rows) = s
            .command_page(None, Some(Status::Cancelled), 50, 0)
            .await
            .unwrap();
        assert_eq!((total, rows[0].id.clone()), (1, id(1)));
        let (total, rows) = s
            .command_page(Some("pi-b"), Some(Status::Queued), 50, 0)
            .await
            .unwrap();
        assert_eq!((total, rows.len()), (0, 0));
    }

    #[tokio::test]
    async fn audit_pages() {
        let (_d, s) = store().await;
        assert_eq!(s.audit_head().await.unwrap(), None);
        for i in 0..6 {
            let ev = Event {
                actor: if i % 2 == 0 { "user:alice" } else { "cli:root" }.into(),
                source: "local".into(),
                action: if i < 3 {
                    "device.revoke"
                } else {
                    "token.create"
                }
                .into(),
                target: format!("t{i}"),
                outcome: "ok".into(),
                detail: String::new(),
            };
            s.append_audit(&ev).await.unwrap();
        }
        assert_eq!(s.audit_head().await.unwrap(), Some(6));
        let page = |f: AuditFilter| {
            let s = s.clone();
            async move {
                s.audit_page(&f)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.seq)
                    .collect::<Vec<_>>()
            }
        };
        let all = AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        };
        assert_eq!(page(all.clone()).await, [6, 5, 4, 3, 2, 1]);
        assert_eq!(
            page(AuditFilter {
                limit: 2,
                ..all.clone()
            })
            .await,
            [6, 5]
        );
        assert_eq!(
            page(AuditFilter {
                before: Some(5),
                limit: 2,
                ..all.clone()
            })
            .await,
            [4, 3]
        );
        assert_eq!(
            page(AuditFilter {
                actor: Some("user:alice".into()),
                ..all.clone()
            })
            .await,
            [5, 3, 1]
        );
        assert_eq!(
            page(AuditFilter {
                action: Some("token.create".into()),
                actor: Some("cli:root".into()),
                ..all.clone()
            })
            .await,
            [6, 4]
        );
        assert!(
            page(AuditFilter {
                since: Some(i64::MAX),
                ..all.clone()
            })
            .await
            .is_empty()
        );
        assert_eq!(
            page(AuditFilter {
                until: Some(i64::MAX),
                since: Some(0),
                ..all
            })
            .await
            .len(),
            6
        );
    }

    /// The list stays fast with 10,000 devices (each with a sample), whatever the sort.
    #[tokio::test]
    async fn device_list_scales() {
        let (_d, s) = store().await;
        let mut tx = s.writer.begin().await.unwrap();
        for i in 0..10_000 {
            sqlx::query("INSERT INTO devices (id, labels, enrolled_at, hostname, online) VALUES (?, ?, 0, ?, ?)")
                .bind(format!("pi-{i:05}"))
                .bind(format!(r#"{{"site":"s{}"}}"#, i % 10))
                .bind(format!("host-{i}"))
                .bind(i % 2)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let ops: Vec<IngestOp> = (0..10_000)
            .map(|i| IngestOp::Telemetry {
                device: DeviceId::parse(&format!("pi-{i:05}")).unwrap(),
                samples: vec![sample(1, 0, (i % 100) as f32, i)],
            })
            .collect();
        s.write_batch(&ops).await.unwrap();
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("EXPLAIN QUERY PLAN SELECT ");
        qb.push(SUMMARY_COLUMNS).push(SUMMARY_FROM);
        let f = DeviceFilter {
            sort: DeviceSort::Cpu,
            order: SortOrder::Desc,
            ..filter()
        };
        push_device_filter(&mut qb, &f);
        push_device_order(&mut qb, f.sort, f.order);
        let plan: Vec<String> = qb
            .build()
            .fetch_all(&s.reader)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        // The latest sample is found through the primary key, never by a scan.
        assert!(
            plan.iter().any(|l| l.contains("USING PRIMARY KEY")
                || l.contains("USING INDEX sqlite_autoindex_telemetry")),
            "{plan:?}"
        );
        for sort in [
            DeviceSort::Id,
            DeviceSort::Cpu,
            DeviceSort::Memory,
            DeviceSort::Hostname,
        ] {
            let f = DeviceFilter {
                sort,
                order: SortOrder::Desc,
                labels: [("site".into(), "s3".into())].into(),
                q: Some("pi".into()),
                ..filter()
            };
            let start = Instant::now();
            let p = s.device_page(&f).await.unwrap();
            let took = start.elapsed();
            assert_eq!((p.total, p.items.len()), (1_000, 50));
            assert!(took.as_millis() < 1_000, "{sort:?} took {took:?}");
        }
    }

    async fn plan(s: &Store, mut qb: QueryBuilder<Sqlite>) -> Vec<String> {
        qb.build()
            .fetch_all(&s.reader)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect()
    }

    /// Command and audit pages read through indexes, newest first, without sorting.
    #[tokio::test]
    async fn listing_plans_use_indexes() {
        let (_d, s) = store().await;
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("EXPLAIN QUERY PLAN SELECT ");
        qb.push(COMMAND_COLUMNS).push(" FROM commands");
        push_command_filter(&mut qb, None, None);
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 0");
        let p = plan(&s, qb).await;
        assert!(p.iter().any(|l| l.contains("commands_created")), "{p:?}");
        assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
        let qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "EXPLAIN QUERY PLAN SELECT seq FROM audit_log WHERE 1 = 1 AND seq < 10 \
             ORDER BY seq DESC LIMIT 10",
        );
        let p = plan(&s, qb).await;
        assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
    }
}
