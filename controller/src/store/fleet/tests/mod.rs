//! Unit tests of the parent module: shared fixtures here, the tests by concern below.
use std::time::Instant;

use pifleet_shared::DeviceId;
use pifleet_shared::command::{Action, CommandId};
use pifleet_shared::proto::v1;

use super::*;
use crate::audit::Event;
use crate::store::{IngestOp, NewCommand};

mod devices;
mod listings;

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
