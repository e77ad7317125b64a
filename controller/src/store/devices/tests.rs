//! The device list, detail, labels, alerts and reported capabilities.

use std::time::Instant;

use pifleet_shared::DeviceId;
use pifleet_shared::proto::v1;
use sqlx::QueryBuilder;

use super::summaries::{SUMMARY_COLUMNS, SUMMARY_FROM, push_device_filter, push_device_order};
use crate::model::devices::{
    DeviceAlert, DeviceFilter, DeviceSort, DeviceStatus, FleetSummary, IntervalBounds,
    ServiceState, SortOrder,
};
use crate::store::testkit::{add_device, plan, sample, sqlite_store, store, telemetry};
use crate::store::{IngestOp, Labels, Store};

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
    assert_eq!(
        s.revoke_device("pi-c").await.unwrap(),
        crate::store::RevokeOutcome::Revoked
    );
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
async fn device_detail_and_labels() {
    let (_d, s) = store().await;
    fleet(&s).await;
    writing!(s, |ex| sqlx::query(
        "INSERT INTO certificates (serial, device_id, issued_at, not_after) VALUES \
         ('0a', 'pi-a', 1, 100), ('0b', 'pi-a', 2, 200)",
    )
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
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

/// The list stays fast with 10,000 devices (each with a sample), whatever the sort.
#[tokio::test]
async fn device_list_scales() {
    let (_d, s) = sqlite_store().await;
    let mut tx = s.write_tx().await.unwrap();
    for i in 0..10_000 {
        in_tx!(tx, |ex| sqlx::query("INSERT INTO devices (id, labels, enrolled_at, hostname, online) VALUES ($1, $2, 0, $3, $4)")
            .bind(format!("pi-{i:05}"))
            .bind(format!(r#"{{"site":"s{}"}}"#, i % 10))
            .bind(format!("host-{i}"))
            .bind(i % 2 == 1)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))
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
    let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new("EXPLAIN QUERY PLAN SELECT ");
    qb.push(SUMMARY_COLUMNS).push(SUMMARY_FROM);
    let f = DeviceFilter {
        sort: DeviceSort::Cpu,
        order: SortOrder::Desc,
        ..filter()
    };
    push_device_filter(&mut qb, &f);
    push_device_order(&mut qb, f.sort, f.order);
    let plan = plan(&s, qb).await;
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

/// Device id, online, temperature, throttled bits, root disk bytes used (of 100), alerts.
type AlertCase = (
    &'static str,
    bool,
    Option<f32>,
    Option<u32>,
    u64,
    &'static [DeviceAlert],
);

#[tokio::test]
async fn alerts_and_fleet_summary_agree() {
    let (_d, s) = store().await;
    let cases: [AlertCase; 7] = [
        ("pi-fine", true, Some(50.0), Some(0), 40, &[]),
        (
            "pi-hot",
            true,
            Some(76.0),
            Some(0),
            40,
            &[DeviceAlert::Temperature],
        ),
        (
            "pi-volt",
            true,
            Some(50.0),
            Some(0x1 | 0x10000),
            40,
            &[DeviceAlert::UnderVoltage],
        ),
        // Only past events (high bits): nothing now.
        ("pi-past", true, Some(50.0), Some(0x50000), 40, &[]),
        (
            "pi-thr",
            true,
            None,
            Some(0x4),
            40,
            &[DeviceAlert::Throttling],
        ),
        ("pi-full", true, Some(50.0), None, 95, &[DeviceAlert::Disk]),
        // Offline devices do not alert on their last values.
        ("pi-off", false, Some(90.0), Some(0x5), 95, &[]),
    ];
    for (i, (id, online, temp, throttled, used, _)) in cases.iter().enumerate() {
        add_device(&s, id, "{}", None, *online).await;
        let mut smp = sample(1, 1_000 + i as i64, 10.0, 100);
        smp.temp_c = *temp;
        smp.throttled = *throttled;
        smp.disks[0].used_bytes = *used;
        telemetry(&s, id, vec![smp]).await;
    }
    let ids: Vec<String> = cases.iter().map(|c| c.0.to_owned()).collect();
    let summaries = s.device_summaries(&ids).await.unwrap();
    assert_eq!(summaries.len(), cases.len());
    for (id, _, _, _, _, want) in cases {
        let got = summaries.iter().find(|d| d.id == id).unwrap();
        assert_eq!(got.alerts, want, "{id}");
    }
    let summary = s.fleet_summary().await.unwrap();
    let alerting = cases.iter().filter(|c| !c.5.is_empty()).count() as i64;
    assert_eq!(
        summary,
        FleetSummary {
            enrolled: 7,
            online: 6,
            offline: 1,
            alerting,
            revoked: 0
        }
    );
    assert!(s.device_summaries(&[]).await.unwrap().is_empty());
    assert!(
        s.device_summaries(&["pi-none".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn capabilities_and_services_are_kept_per_device() {
    let (_d, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    let detail = s.device_detail("pi-a").await.unwrap().unwrap();
    assert_eq!(detail.capabilities, None);
    assert!(detail.services.is_empty() && detail.services_at.is_none());
    let device = DeviceId::parse("pi-a").unwrap();
    let capabilities = v1::Capabilities {
        ping: true,
        reboot: false,
        services: vec!["kiosk.service".into()],
        journal_units: vec![],
        scripts: vec![v1::ScriptCapability {
            name: "backup".into(),
            allowed_args: vec!["--dry-run".into()],
        }],
        set_interval: Some(v1::IntervalBounds {
            min_s: 5,
            max_s: 60,
        }),
    };
    let states = vec![v1::ServiceState {
        unit: "kiosk.service".into(),
        active: "failed".into(),
        sub: "failed".into(),
    }];
    s.write_batch(&[
        IngestOp::Capabilities {
            device: device.clone(),
            capabilities,
        },
        IngestOp::Services { device, states },
    ])
    .await
    .unwrap();
    let detail = s.device_detail("pi-a").await.unwrap().unwrap();
    let caps = detail.capabilities.unwrap();
    assert!(caps.ping && !caps.reboot && caps.reported_at > 0);
    assert_eq!(caps.services, ["kiosk.service"]);
    assert_eq!(caps.scripts[0].allowed_args, ["--dry-run"]);
    assert_eq!(
        caps.set_interval,
        Some(IntervalBounds {
            min_s: 5,
            max_s: 60
        })
    );
    assert_eq!(
        detail.services,
        [ServiceState {
            unit: "kiosk.service".into(),
            active: "failed".into(),
            sub: "failed".into()
        }]
    );
    assert!(detail.services_at.is_some());
}
