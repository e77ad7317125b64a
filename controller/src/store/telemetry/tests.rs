//! Reading telemetry back: the latest sample and the downsampled history.

use crate::model::devices::HistoryPlan;
use crate::store::testkit::{add_device, sample, store, telemetry};

#[tokio::test]
async fn the_latest_sample_is_the_newest() {
    let (_d, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    add_device(&s, "pi-d", "{}", None, false).await;
    telemetry(
        &s,
        "pi-a",
        vec![sample(1, 5_000, 5.0, 100), sample(2, 6_000, 10.0, 900)],
    )
    .await;
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
