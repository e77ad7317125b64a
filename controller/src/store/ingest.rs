//! SQL of the ingest path: one transaction per batch of telemetry, hellos, capability and
//! service reports, watchdog events and online changes (it spans `telemetry`, `devices`,
//! `unit_events` and `commands`), with spool-drop counting.

use std::collections::BTreeMap;

use pifleet_shared::DeviceId;
use pifleet_shared::proto::v1;
use sqlx::{QueryBuilder, Row};

use super::{Store, StoreError, now_ms, sql_int};

/// One change for the ingest writer; a batch of them commits in one transaction.
#[derive(Debug, Clone)]
pub enum IngestOp {
    Telemetry {
        device: DeviceId,
        samples: Vec<v1::Sample>,
    },
    Hello {
        device: DeviceId,
        hello: v1::Hello,
    },
    Online {
        device: DeviceId,
        online: bool,
    },
    Capabilities {
        device: DeviceId,
        capabilities: v1::Capabilities,
    },
    Services {
        device: DeviceId,
        states: Vec<v1::ServiceState>,
    },
    Apps {
        device: DeviceId,
        apps: Vec<v1::AppState>,
    },
    DeployProgress {
        device: DeviceId,
        progress: v1::DeployProgress,
    },
    GuardRollback {
        device: DeviceId,
        rollback: v1::GuardRollback,
    },
    /// What the device's service watchdog noticed about a unit.
    UnitEvent {
        device: DeviceId,
        event: v1::UnitEvent,
    },
}

impl IngestOp {
    /// The device the operation is about.
    pub fn device(&self) -> &DeviceId {
        match self {
            Self::Telemetry { device, .. }
            | Self::Hello { device, .. }
            | Self::Online { device, .. }
            | Self::Capabilities { device, .. }
            | Self::Services { device, .. }
            | Self::Apps { device, .. }
            | Self::DeployProgress { device, .. }
            | Self::GuardRollback { device, .. }
            | Self::UnitEvent { device, .. } => device,
        }
    }
}

impl Store {
    /// Commits a batch of ingest operations in one transaction. Telemetry inserts are
    /// idempotent on (device, seq): a re-sent sample is ignored, not duplicated. Returns the
    /// number of samples the devices' spools reported dropped in newly stored samples.
    pub async fn write_batch(&self, ops: &[IngestOp]) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.ingest_tx().await?;
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
                    in_tx!(tx, |ex| {
                        sqlx::query(
                        "UPDATE devices SET agent_version = $1, hostname = $2, os = $3, kernel = $4, \
                         arch = $5, model = $6, uptime_s = $7, hello_at = $8, last_seen = $9, \
                         first_seen = COALESCE(first_seen, $10) WHERE id = $11",
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
                    .execute(ex)
                    .await
                    .map(|r| r.rows_affected())
                    })?;
                }
                IngestOp::Capabilities {
                    device,
                    capabilities,
                } => {
                    in_tx!(tx, |ex| sqlx::query(
                        "UPDATE devices SET capabilities = $1, capabilities_at = $2 WHERE id = $3",
                    )
                    .bind(serde_json::to_string(capabilities)?)
                    .bind(now)
                    .bind(device.as_str())
                    .execute(ex)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                IngestOp::Services { device, states } => {
                    in_tx!(tx, |ex| sqlx::query(
                        "UPDATE devices SET services = $1, services_at = $2 WHERE id = $3"
                    )
                    .bind(serde_json::to_string(states)?)
                    .bind(now)
                    .bind(device.as_str())
                    .execute(ex)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                IngestOp::Apps { device, apps } => {
                    in_tx!(tx, |ex| sqlx::query(
                        "UPDATE devices SET apps = $1, apps_at = $2 WHERE id = $3"
                    )
                    .bind(serde_json::to_string(apps)?)
                    .bind(now)
                    .bind(device.as_str())
                    .execute(ex)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
                IngestOp::DeployProgress { device, progress } => {
                    super::rollouts::record_progress(&mut tx, device.as_str(), progress).await?;
                }
                IngestOp::GuardRollback { device, rollback } => {
                    super::rollouts::record_guard_rollback(&mut tx, device.as_str(), rollback, now)
                        .await?;
                }
                IngestOp::UnitEvent { device, event } => {
                    super::unit_events::insert(&mut tx, device.as_str(), event, now).await?;
                }
                IngestOp::Online { device, online } => {
                    if *online {
                        // Sent while the device was going away: the message may be lost.
                        // Send again; the device's journal makes a re-delivery harmless.
                        in_tx!(tx, |ex| sqlx::query(
                            "UPDATE commands SET status = 'queued' WHERE device_id = $1 \
                             AND status = 'sent' AND expires_at > $2",
                        )
                        .bind(device.as_str())
                        .bind(now)
                        .execute(ex)
                        .await
                        .map(|r| r.rows_affected()))?;
                    }
                    in_tx!(tx, |ex| sqlx::query(
                        "UPDATE devices SET online = $1, last_seen = $2, \
                         first_seen = COALESCE(first_seen, $3) WHERE id = $4",
                    )
                    .bind(*online)
                    .bind(now)
                    .bind(now)
                    .bind(device.as_str())
                    .execute(ex)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
            }
        }
        if let super::db::Tx::Postgres(t) = &mut tx {
            super::ingest_pg::insert_telemetry(t, &pending, now, finite, &mut dropped).await?;
        } else {
            in_tx!(tx, |ex| {
                for chunk in pending.chunks(ROWS_PER_STATEMENT) {
                    let mut qb: QueryBuilder<DB> = QueryBuilder::new(
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
                    qb.push(" ON CONFLICT DO NOTHING");
                    if chunk.iter().any(|(_, s)| s.spool_dropped > 0) {
                        // Rare: count drops only from rows really inserted (not from re-sends).
                        qb.push(" RETURNING device_id, spool_dropped");
                        for r in qb.build().fetch_all(&mut *ex).await? {
                            let n: i64 = r.try_get("spool_dropped")?;
                            if n > 0 {
                                *dropped
                                    .entry(r.try_get::<String, _>("device_id")?)
                                    .or_default() += n;
                            }
                        }
                    } else {
                        qb.build().execute(&mut *ex).await?;
                    }
                }
                Ok::<_, StoreError>(())
            })?;
        }
        for (device, n) in &dropped {
            in_tx!(tx, |ex| sqlx::query(
                "UPDATE devices SET spool_dropped_total = spool_dropped_total + $1 WHERE id = $2",
            )
            .bind(n)
            .bind(device)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        }
        if let super::db::Tx::Postgres(t) = &mut tx {
            super::ingest_pg::touch_devices(t, &last_seen, now).await?;
            last_seen.clear();
        }
        for (device, max_seq) in last_seen {
            in_tx!(tx, |ex| sqlx::query(
                "UPDATE devices SET last_seen = $1, first_seen = COALESCE(first_seen, $2), \
                 last_seq = CASE WHEN last_seq IS NULL OR last_seq < $3 THEN $4 ELSE last_seq END \
                 WHERE id = $5",
            )
            .bind(now)
            .bind(now)
            .bind(max_seq)
            .bind(max_seq)
            .bind(device.as_str())
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await?;
        Ok(dropped
            .values()
            .map(|n| u64::try_from(*n).unwrap_or(0))
            .sum())
    }
}

fn finite(v: f32) -> f64 {
    if v.is_finite() { f64::from(v) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testkit::{add_device, sample, store};

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
}
