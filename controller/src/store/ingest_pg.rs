//! The ingest batch's two bulk statements on PostgreSQL, where every statement is a round trip
//! to the server: all the batch's samples in one `INSERT … SELECT FROM UNNEST(arrays)`, and
//! every device's last-seen time and sequence number in one `UPDATE … FROM UNNEST`, its rows
//! locked in id order so that controllers ingesting for the same devices at once wait for
//! each other instead of deadlocking. (SQLite, in process, takes them statement by statement.)

use std::collections::BTreeMap;

use pifleet_shared::DeviceId;
use pifleet_shared::proto::v1;
use sqlx::PgConnection;

use super::{StoreError, sql_int};

/// `INSERT` of the batch's samples from one array per column; re-sent samples are skipped.
macro_rules! insert_from_arrays {
    () => {
        concat!(
            "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, ",
            "load5, load15, mem_total, mem_used, swap_total, swap_used, temp_c, throttled, ",
            "uptime_s, spool_dropped, spool_backlog, disks, nets, disk_used, disk_total, net_rx, ",
            "net_tx) SELECT d, s, t, $4, c, l1, l5, l15, mt, mu, st, su, tc, th, up, sd, sb, dk, ",
            "nt, du, dt, rx, tx FROM UNNEST($1::text[], $2::int8[], $3::int8[], $5::float8[], ",
            "$6::float8[], $7::float8[], $8::float8[], $9::int8[], $10::int8[], $11::int8[], ",
            "$12::int8[], $13::float8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], ",
            "$18::text[], $19::text[], $20::int8[], $21::int8[], $22::int8[], $23::int8[]) ",
            "AS u(d, s, t, c, l1, l5, l15, mt, mu, st, su, tc, th, up, sd, sb, dk, nt, du, dt, ",
            "rx, tx) ON CONFLICT DO NOTHING"
        )
    };
}

/// Inserts `rows`; adds to `dropped` the spool drops the newly stored samples report.
pub(super) async fn insert_telemetry(
    conn: &mut PgConnection,
    rows: &[(&DeviceId, &v1::Sample)],
    now: i64,
    finite: fn(f32) -> f64,
    dropped: &mut BTreeMap<String, i64>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let col =
        |f: &dyn Fn(&v1::Sample) -> i64| -> Vec<i64> { rows.iter().map(|(_, s)| f(s)).collect() };
    let colf =
        |f: &dyn Fn(&v1::Sample) -> f64| -> Vec<f64> { rows.iter().map(|(_, s)| f(s)).collect() };
    let devices: Vec<&str> = rows.iter().map(|(d, _)| d.as_str()).collect();
    let mut disks = Vec::with_capacity(rows.len());
    let mut nets = Vec::with_capacity(rows.len());
    for (_, s) in rows {
        disks.push(serde_json::to_string(&s.disks)?);
        nets.push(serde_json::to_string(&s.nets)?);
    }
    let temp: Vec<Option<f64>> = rows.iter().map(|(_, s)| s.temp_c.map(finite)).collect();
    let throttled: Vec<Option<i64>> = rows
        .iter()
        .map(|(_, s)| s.throttled.map(i64::from))
        .collect();
    let any_dropped = rows.iter().any(|(_, s)| s.spool_dropped > 0);
    let sql = if any_dropped {
        // Rare: count drops only from rows really inserted (not from re-sends).
        concat!(insert_from_arrays!(), " RETURNING device_id, spool_dropped")
    } else {
        insert_from_arrays!()
    };
    let q = sqlx::query_as::<_, (String, i64)>(sql)
        .bind(devices)
        .bind(col(&|s| sql_int(s.seq)))
        .bind(col(&|s| s.ts_ms))
        .bind(now)
        .bind(colf(&|s| finite(s.cpu_pct)))
        .bind(colf(&|s| finite(s.load1)))
        .bind(colf(&|s| finite(s.load5)))
        .bind(colf(&|s| finite(s.load15)))
        .bind(col(&|s| sql_int(s.mem_total_bytes)))
        .bind(col(&|s| sql_int(s.mem_used_bytes)))
        .bind(col(&|s| sql_int(s.swap_total_bytes)))
        .bind(col(&|s| sql_int(s.swap_used_bytes)))
        .bind(temp)
        .bind(throttled)
        .bind(col(&|s| sql_int(s.uptime_s)))
        .bind(col(&|s| sql_int(s.spool_dropped)))
        .bind(col(&|s| sql_int(s.spool_backlog)))
        .bind(disks)
        .bind(nets)
        .bind(col(&|s| {
            sql_int(s.disks.iter().map(|d| d.used_bytes).sum())
        }))
        .bind(col(&|s| {
            sql_int(s.disks.iter().map(|d| d.total_bytes).sum())
        }))
        .bind(col(&|s| sql_int(s.nets.iter().map(|n| n.rx_bytes).sum())))
        .bind(col(&|s| sql_int(s.nets.iter().map(|n| n.tx_bytes).sum())));
    if any_dropped {
        for (device, n) in q.fetch_all(&mut *conn).await? {
            if n > 0 {
                *dropped.entry(device).or_default() += n;
            }
        }
    } else {
        q.fetch_all(&mut *conn).await?;
    }
    Ok(())
}

/// Records, for every device of the batch, that it was heard from at `now` and the highest
/// sequence number it sent.
pub(super) async fn touch_devices(
    conn: &mut PgConnection,
    last_seen: &BTreeMap<&DeviceId, i64>,
    now: i64,
) -> Result<(), StoreError> {
    if last_seen.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = last_seen.keys().map(|d| d.as_str()).collect();
    let seqs: Vec<i64> = last_seen.values().copied().collect();
    sqlx::query(concat!(
        "WITH v AS (SELECT * FROM UNNEST($2::text[], $3::int8[]) AS v(id, seq)), ",
        "l AS (SELECT d.id FROM devices d JOIN v ON v.id = d.id ORDER BY d.id FOR UPDATE OF d) ",
        "UPDATE devices AS d SET last_seen = $1, first_seen = COALESCE(d.first_seen, $1), ",
        "last_seq = CASE WHEN d.last_seq IS NULL OR d.last_seq < v.seq THEN v.seq ",
        "ELSE d.last_seq END FROM v WHERE d.id = v.id AND d.id IN (SELECT id FROM l)"
    ))
    .bind(now)
    .bind(ids)
    .bind(seqs)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
