//! SQL of the `unit_events` table: the agents' watchdog events, written by the ingest batch
//! (bounded per device: the newest [`KEEP_PER_DEVICE`], none older than [`MAX_AGE_MS`]) and
//! read for the device page and the device's metrics.

use crate::store::db::Tx;
use pifleet_shared::proto::v1;
use sqlx::Row;

use super::{Store, StoreError};
use crate::model::unit_events::{self, CRASH_LOOP_RECENT_MS, UnitEvent, UnitEvents};

/// Events kept per device; older ones are removed as new ones arrive.
pub const KEEP_PER_DEVICE: i64 = 200;
/// Nothing older than 30 days is kept.
pub const MAX_AGE_MS: i64 = 30 * 86_400_000;

/// The columns of a [`UnitEvent`], in its field order.
macro_rules! columns {
    () => {
        "unit, kind, detail, at"
    };
}

/// Stores one event of `device` received at `now` and prunes the device's oldest, inside
/// the ingest batch's transaction.
pub(super) async fn insert(
    tx: &mut Tx,
    device: &str,
    ev: &v1::UnitEvent,
    now: i64,
) -> Result<(), StoreError> {
    in_tx!(*tx, |ex| sqlx::query(concat!(
        "INSERT INTO unit_events (device_id, ",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5)"
    ))
    .bind(device)
    .bind(&ev.unit)
    .bind(ev.kind.as_str())
    .bind(unit_events::detail(&ev.kind))
    .bind(now)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    // The id of the oldest event to keep is the KEEP-th newest; with fewer, nothing goes.
    in_tx!(*tx, |ex| sqlx::query(
        "DELETE FROM unit_events WHERE device_id = $1 AND (at < $2 OR id < (SELECT id FROM \
         unit_events WHERE device_id = $3 ORDER BY id DESC LIMIT 1 OFFSET $4))",
    )
    .bind(device)
    .bind(now - MAX_AGE_MS)
    .bind(device)
    .bind(KEEP_PER_DEVICE - 1)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

impl Store {
    /// The device's newest `limit` watchdog events (newest first) and the units crash-looping
    /// at `now`.
    pub async fn unit_events(
        &self,
        device: &str,
        limit: i64,
        now: i64,
    ) -> Result<UnitEvents, StoreError> {
        reading!(self, |ex| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM unit_events WHERE device_id = $1 ORDER BY id DESC LIMIT $2"
            ))
            .bind(device)
            .bind(limit)
            .fetch_all(ex)
            .await?;
            let events = rows
                .iter()
                .map(|r| {
                    Ok(UnitEvent {
                        unit: r.try_get("unit")?,
                        kind: r.try_get("kind")?,
                        detail: r.try_get("detail")?,
                        at: r.try_get("at")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok(UnitEvents {
                events,
                crash_looping: self.units_crash_looping(device, now).await?,
            })
        })
    }

    /// The device's units whose newest watchdog event says they are in trouble (a crash
    /// loop, systemd giving up, the watchdog starting them or out of starts) and came within
    /// [`CRASH_LOOP_RECENT_MS`] of `now`; sorted.
    pub async fn units_crash_looping(
        &self,
        device: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        reading!(self, |ex| {
            let rows = sqlx::query(
                "SELECT e.unit, e.kind FROM unit_events e WHERE e.device_id = $1 AND e.at >= $2 \
                 AND e.id = (SELECT MAX(l.id) FROM unit_events l WHERE l.device_id = e.device_id \
                 AND l.unit = e.unit) ORDER BY e.unit",
            )
            .bind(device)
            .bind(now - CRASH_LOOP_RECENT_MS)
            .fetch_all(ex)
            .await?;
            let mut units = Vec::new();
            for r in rows {
                let kind: String = r.try_get("kind")?;
                if unit_events::is_trouble(&kind) {
                    units.push(r.try_get("unit")?);
                }
            }
            Ok(units)
        })
    }
}

#[cfg(test)]
mod tests {
    use pifleet_shared::DeviceId;
    use pifleet_shared::proto::v1::UnitEventKind;

    use super::*;
    use crate::store::IngestOp;
    use crate::store::testkit::{add_device, store};

    fn op(device: &str, unit: &str, kind: UnitEventKind) -> IngestOp {
        IngestOp::UnitEvent {
            device: DeviceId::parse(device).unwrap(),
            event: v1::UnitEvent {
                unit: unit.into(),
                kind,
            },
        }
    }

    #[tokio::test]
    async fn events_are_stored_newest_first_and_crash_loops_end_with_recovery_or_time() {
        let (_dir, s) = store().await;
        add_device(&s, "pi-a", "{}", None, true).await;
        add_device(&s, "pi-b", "{}", None, true).await;
        s.write_batch(&[
            op(
                "pi-a",
                "web.service",
                UnitEventKind::CrashLoop { restarts: 3 },
            ),
            op(
                "pi-a",
                "kiosk.service",
                UnitEventKind::GaveUp { retry_in_s: 60 },
            ),
            op(
                "pi-b",
                "web.service",
                UnitEventKind::Flapping { transitions: 6 },
            ),
        ])
        .await
        .unwrap();
        let now = crate::store::now_ms();
        let a = s.unit_events("pi-a", 50, now).await.unwrap();
        let kinds: Vec<&str> = a.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["gave_up", "crash_loop"]);
        assert_eq!(
            a.events[1].detail,
            "3 restarts by systemd within the watch window"
        );
        assert_eq!(a.crash_looping, ["kiosk.service", "web.service"]);
        // Flapping alone is no crash loop.
        assert!(
            s.unit_events("pi-b", 50, now)
                .await
                .unwrap()
                .crash_looping
                .is_empty()
        );
        // A recovery ends it; so does time.
        s.write_batch(&[op("pi-a", "kiosk.service", UnitEventKind::Recovered)])
            .await
            .unwrap();
        assert_eq!(
            s.units_crash_looping("pi-a", now).await.unwrap(),
            ["web.service"]
        );
        let later = now + CRASH_LOOP_RECENT_MS + 60_000;
        assert!(
            s.units_crash_looping("pi-a", later)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.unit_events("pi-a", 1, now).await.unwrap().events.len(), 1);
    }

    #[tokio::test]
    async fn each_device_keeps_its_newest_events_only() {
        let (_dir, s) = store().await;
        add_device(&s, "pi-a", "{}", None, true).await;
        add_device(&s, "pi-b", "{}", None, true).await;
        s.write_batch(&[op("pi-b", "x.service", UnitEventKind::Recovered)])
            .await
            .unwrap();
        let n = u32::try_from(KEEP_PER_DEVICE).unwrap() + 25;
        let ops: Vec<IngestOp> = (0..n)
            .map(|i| {
                op(
                    "pi-a",
                    "web.service",
                    UnitEventKind::Starting { attempt: i },
                )
            })
            .collect();
        s.write_batch(&ops).await.unwrap();
        let now = crate::store::now_ms();
        let a = s.unit_events("pi-a", 1000, now).await.unwrap();
        assert_eq!(a.events.len(), usize::try_from(KEEP_PER_DEVICE).unwrap());
        assert_eq!(
            a.events[0].detail,
            format!("the watchdog starts it (attempt {})", n - 1)
        );
        assert_eq!(
            a.events.last().unwrap().detail,
            "the watchdog starts it (attempt 25)"
        );
        // Another device's events are untouched.
        assert_eq!(
            s.unit_events("pi-b", 10, now).await.unwrap().events.len(),
            1
        );
    }
}
