//! SQL for reading the `telemetry` table: a device's latest sample, its history downsampled
//! into buckets, and retention. Samples are written by the ingest batch (`ingest.rs`).

use std::sync::LazyLock;

use sqlx::Row;

use super::db::Db;
use super::{Store, StoreError, dialect};
use crate::model::devices::{HistoryPlan, HistoryPoint, TelemetrySample};

#[cfg(test)]
mod tests;

impl Store {
    /// The device's newest stored sample.
    pub async fn latest_sample(&self, device: &str) -> Result<Option<TelemetrySample>, StoreError> {
        reading!(self, |ex| {
            let r = sqlx::query(
                "SELECT seq, ts, received_at, cpu_pct, load1, load5, load15, mem_total, mem_used, \
                 swap_total, swap_used, temp_c, throttled, uptime_s, spool_dropped, spool_backlog, \
                 disks, nets FROM telemetry WHERE device_id = $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(device)
            .fetch_optional(ex)
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
        })
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
        static HISTORY: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH s AS ( \
                   SELECT (ts - $1) / $2 AS b, cpu_pct, load1, mem_used, mem_total, temp_c, \
                     disk_used AS du, disk_total AS dt, net_rx AS rx, net_tx AS tx \
                   FROM telemetry WHERE device_id = $3 AND ts >= $1 AND ts < $4) \
                 SELECT b, COUNT(*) AS samples, AVG(cpu_pct) AS cpu_avg, \
                   MAX(cpu_pct) AS cpu_max, AVG(load1) AS load1_avg, {} AS mem_avg, \
                   MAX(mem_total) AS mem_total, AVG(temp_c) AS temp_avg, \
                   MAX(temp_c) AS temp_max, {} AS du_avg, {} AS dt_max, {} AS rx_max, \
                   {} AS tx_max \
                 FROM s GROUP BY b ORDER BY b",
                // The average of integers is a float on SQLite, a NUMERIC on PostgreSQL.
                dialect::as_float("AVG(mem_used)"),
                dialect::as_float("AVG(du)"),
                dialect::as_int64("MAX(dt)"),
                dialect::as_int64("MAX(rx)"),
                dialect::as_int64("MAX(tx)"),
            )
        });
        reading!(self, |ex| {
            let rows = sqlx::query(HISTORY.as_str())
                .bind(plan.from)
                .bind(plan.bucket_ms)
                .bind(device)
                .bind(plan.to)
                .fetch_all(ex)
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
        })
    }

    /// Deletes telemetry received before `cutoff_ms`, one hour of data per statement so the
    /// writer is never held for long. Returns the number of rows deleted.
    pub async fn apply_retention(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        if let Db::Postgres { pool } = &self.db {
            // Whole days of samples go with their partitions (no row-by-row delete, no
            // bloat); what is left before the cutoff (late samples, the default partition)
            // is deleted below like on SQLite.
            let dropped: i64 = sqlx::query_scalar("SELECT pifleet_telemetry_drop_before($1)")
                .bind(cutoff_ms)
                .fetch_one(pool)
                .await?;
            deleted += u64::try_from(dropped).unwrap_or(0);
        }
        let oldest: Option<i64> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT MIN(received_at) FROM telemetry"
        )
        .fetch_one(ex)
        .await)?;
        let Some(mut from) = oldest else {
            return Ok(deleted);
        };
        while from < cutoff_ms {
            let to = (from + 3_600_000).min(cutoff_ms);
            let r = writing!(self, |ex| sqlx::query(
                "DELETE FROM telemetry WHERE received_at < $1"
            )
            .bind(to)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
            deleted += r;
            from = to;
        }
        Ok(deleted)
    }

    /// Makes sure the telemetry partitions for yesterday, today and the next `days_ahead`
    /// days exist (PostgreSQL; SQLite has one table). Safe from several replicas at once.
    pub async fn prepare_telemetry_partitions(&self, days_ahead: i32) -> Result<(), StoreError> {
        if let Db::Postgres { pool } = &self.db {
            let created: i32 = sqlx::query_scalar("SELECT pifleet_telemetry_prepare($1, $2)")
                .bind(super::now_ms())
                .bind(days_ahead)
                .fetch_one(pool)
                .await?;
            if created > 0 {
                tracing::info!(created, "telemetry partitions created");
            }
        }
        Ok(())
    }

    /// Sequence numbers stored for a device, ascending (for tests and tools).
    pub async fn telemetry_seqs(&self, device: &str) -> Result<Vec<i64>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            "SELECT seq FROM telemetry WHERE device_id = $1 ORDER BY seq"
        )
        .bind(device)
        .fetch_all(ex)
        .await)?)
    }
}
