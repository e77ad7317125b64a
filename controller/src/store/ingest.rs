//! SQL of the ingest path: group commits of telemetry, hellos and online changes, spool-drop
//! counting, retention.

use std::collections::BTreeMap;

use pifleet_shared::DeviceId;
use pifleet_shared::proto::v1;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{IngestOp, Store, StoreError, now_ms, sql_int};

impl Store {
    /// Commits a batch of ingest operations in one transaction. Telemetry inserts are
    /// idempotent on (device, seq): a re-sent sample is ignored, not duplicated. Returns the
    /// number of samples the devices' spools reported dropped in newly stored samples.
    pub async fn write_batch(&self, ops: &[IngestOp]) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        // Rows per INSERT statement. Small and fixed, so the handful of distinct statements
        // (one per remainder size) stay in the prepared-statement cache.
        const ROWS_PER_STATEMENT: usize = 32;
        let mut pending: Vec<(&DeviceId, &v1::Sample)> = Vec::new();
        let mut last_seen: BTreeMap<&DeviceId, i64> = BTreeMap::new();
        let mut dropped: BTreeMap<String, i64> = BTreeMap::new();
        for op in ops {
            match op {
                IngestOp::Telemetry { device, samples } => {
                    pending.extend(samples.iter().map(|s| (device, s)));
                    let max = samples.iter().map(|s| sql_int(s.seq)).max();
                    if let Some(max) = max {
                        let e = last_seen.entry(device).or_insert(i64::MIN);
                        *e = (*e).max(max);
                    }
                }
                IngestOp::Hello { device, hello } => {
                    sqlx::query(
                        "UPDATE devices SET agent_version = ?, hostname = ?, os = ?, kernel = ?, \
                         arch = ?, model = ?, uptime_s = ?, hello_at = ?, last_seen = ?, \
                         first_seen = COALESCE(first_seen, ?) WHERE id = ?",
                    )
                    .bind(&hello.agent_version)
                    .bind(&hello.hostname)
                    .bind(&hello.os)
                    .bind(&hello.kernel)
                    .bind(&hello.arch)
                    .bind(&hello.model)
                    .bind(sql_int(hello.uptime_s))
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .bind(device.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                IngestOp::Capabilities {
                    device,
                    capabilities,
                } => {
                    sqlx::query(
                        "UPDATE devices SET capabilities = ?, capabilities_at = ? WHERE id = ?",
                    )
                    .bind(serde_json::to_string(capabilities)?)
                    .bind(now)
                    .bind(device.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                IngestOp::Services { device, states } => {
                    sqlx::query("UPDATE devices SET services = ?, services_at = ? WHERE id = ?")
                        .bind(serde_json::to_string(states)?)
                        .bind(now)
                        .bind(device.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                IngestOp::Online { device, online } => {
                    if *online {
                        // Sent while the device was going away: the message may be lost.
                        // Send again; the device's journal makes a re-delivery harmless.
                        sqlx::query(
                            "UPDATE commands SET status = 'queued' WHERE device_id = ? \
                             AND status = 'sent' AND expires_at > ?",
                        )
                        .bind(device.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "UPDATE devices SET online = ?, last_seen = ?, \
                         first_seen = COALESCE(first_seen, ?) WHERE id = ?",
                    )
                    .bind(i32::from(*online))
                    .bind(now)
                    .bind(now)
                    .bind(device.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        for chunk in pending.chunks(ROWS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, load5, \
                 load15, mem_total, mem_used, swap_total, swap_used, temp_c, throttled, uptime_s, \
                 spool_dropped, spool_backlog, disks, nets, disk_used, disk_total, net_rx, \
                 net_tx) ",
            );
            let json = chunk
                .iter()
                .map(|(_, s)| {
                    Ok((
                        serde_json::to_string(&s.disks)?,
                        serde_json::to_string(&s.nets)?,
                    ))
                })
                .collect::<Result<Vec<_>, serde_json::Error>>()?;
            qb.push_values(
                chunk.iter().zip(json),
                |mut b, ((device, s), (disks, nets))| {
                    b.push_bind(device.as_str().to_owned())
                        .push_bind(sql_int(s.seq))
                        .push_bind(s.ts_ms)
                        .push_bind(now)
                        .push_bind(finite(s.cpu_pct))
                        .push_bind(finite(s.load1))
                        .push_bind(finite(s.load5))
                        .push_bind(finite(s.load15))
                        .push_bind(sql_int(s.mem_total_bytes))
                        .push_bind(sql_int(s.mem_used_bytes))
                        .push_bind(sql_int(s.swap_total_bytes))
                        .push_bind(sql_int(s.swap_used_bytes))
                        .push_bind(s.temp_c.map(finite))
                        .push_bind(s.throttled.map(i64::from))
                        .push_bind(sql_int(s.uptime_s))
                        .push_bind(sql_int(s.spool_dropped))
                        .push_bind(sql_int(s.spool_backlog))
                        .push_bind(disks)
                        .push_bind(nets)
                        .push_bind(sql_int(s.disks.iter().map(|d| d.used_bytes).sum()))
                        .push_bind(sql_int(s.disks.iter().map(|d| d.total_bytes).sum()))
                        .push_bind(sql_int(s.nets.iter().map(|n| n.rx_bytes).sum()))
                        .push_bind(sql_int(s.nets.iter().map(|n| n.tx_bytes).sum()));
                },
            );
            qb.push(" ON CONFLICT (device_id, seq) DO NOTHING");
            if chunk.iter().any(|(_, s)| s.spool_dropped > 0) {
                // Rare: count drops only from rows really inserted (not from re-sends).
                qb.push(" RETURNING device_id, spool_dropped");
                for r in qb.build().fetch_all(&mut *tx).await? {
                    let n: i64 = r.try_get("spool_dropped")?;
                    if n > 0 {
                        *dropped
                            .entry(r.try_get::<String, _>("device_id")?)
                            .or_default() += n;
                    }
                }
            } else {
                qb.build().execute(&mut *tx).await?;
            }
        }
        for (device, n) in &dropped {
            sqlx::query(
                "UPDATE devices SET spool_dropped_total = spool_dropped_total + ? WHERE id = ?",
            )
            .bind(n)
            .bind(device)
            .execute(&mut *tx)
            .await?;
        }
        for (device, max_seq) in last_seen {
            sqlx::query(
                "UPDATE devices SET last_seen = ?, first_seen = COALESCE(first_seen, ?), \
                 last_seq = CASE WHEN last_seq IS NULL OR last_seq < ? THEN ? ELSE last_seq END \
                 WHERE id = ?",
            )
            .bind(now)
            .bind(now)
            .bind(max_seq)
            .bind(max_seq)
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(dropped
            .values()
            .map(|n| u64::try_from(*n).unwrap_or(0))
            .sum())
    }

    /// Samples a device's spool has reported dropped, ever.
    pub async fn spool_dropped_total(&self, device: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT spool_dropped_total FROM devices WHERE id = ?")
                .bind(device)
                .fetch_optional(&self.reader)
                .await?
                .unwrap_or(0),
        )
    }

    /// Deletes telemetry received before `cutoff_ms`, one hour of data per statement so the
    /// writer is never held for long. Returns the number of rows deleted.
    pub async fn apply_retention(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(received_at) FROM telemetry")
            .fetch_one(&self.reader)
            .await?;
        let Some(mut from) = oldest else {
            return Ok(0);
        };
        let mut deleted = 0;
        while from < cutoff_ms {
            let to = (from + 3_600_000).min(cutoff_ms);
            let r = sqlx::query("DELETE FROM telemetry WHERE received_at < ?")
                .bind(to)
                .execute(&self.writer)
                .await?;
            deleted += r.rows_affected();
            from = to;
        }
        Ok(deleted)
    }

    /// Sequence numbers stored for a device, ascending (for tests and tools).
    pub async fn telemetry_seqs(&self, device: &str) -> Result<Vec<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT seq FROM telemetry WHERE device_id = ? ORDER BY seq")
                .bind(device)
                .fetch_all(&self.reader)
                .await?,
        )
    }
}

fn finite(v: f32) -> f64 {
    if v.is_finite() { f64::from(v) } else { 0.0 }
}
