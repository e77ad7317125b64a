//! Telemetry from real agents reaches SQLite with the right device ids and values.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, wait_for};
use sqlx::Row;

fn mem_total_from_proc() -> i64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    let kb: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_reach_sqlite() {
    let ctl = Controller::start().await.unwrap();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b", "pi-c"]
        .iter()
        .map(|id| Agent::enroll(&ctl, id, 1).unwrap())
        .collect();
    for a in &mut agents {
        a.start().unwrap();
    }
    let db = ctl.db().await.unwrap();
    wait_for(Duration::from_secs(20), "3 samples from each agent", || {
        let db = db.clone();
        async move {
            let rows =
                sqlx::query("SELECT device_id, COUNT(*) AS n FROM telemetry GROUP BY device_id")
                    .fetch_all(&db)
                    .await
                    .ok()?;
            (rows.len() == 3 && rows.iter().all(|r| r.get::<i64, _>("n") >= 3)).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));

    let mem_total = mem_total_from_proc();
    for a in &agents {
        let rows = sqlx::query(
            "SELECT seq, cpu_pct, mem_total, mem_used, disks, nets FROM telemetry WHERE device_id = ? ORDER BY seq",
        )
        .bind(&a.id)
        .fetch_all(&db)
        .await
        .unwrap();
        let seqs: Vec<i64> = rows.iter().map(|r| r.get("seq")).collect();
        assert_eq!(seqs[0], 1, "{}: first sequence number", a.id);
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{}: gaps in {seqs:?}",
            a.id
        );
        for r in &rows {
            let cpu: f64 = r.get("cpu_pct");
            assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");
            assert_eq!(r.get::<i64, _>("mem_total"), mem_total);
            let used: i64 = r.get("mem_used");
            assert!(used > 0 && used <= mem_total);
            let disks: serde_json::Value = serde_json::from_str(r.get("disks")).unwrap();
            assert!(
                disks
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["mount"] == "/")),
                "{disks}"
            );
        }
        let dev = sqlx::query("SELECT online, hostname, kernel, arch, agent_version, labels FROM devices WHERE id = ?")
            .bind(&a.id)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(dev.get::<i64, _>("online"), 1, "{} online", a.id);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(dev.get::<String, _>("kernel"), kernel.trim());
        assert_eq!(dev.get::<String, _>("arch"), std::env::consts::ARCH);
        assert_eq!(
            dev.get::<String, _>("agent_version"),
            env!("CARGO_PKG_VERSION")
        );
    }

    // A clean stop marks the device offline.
    assert!(agents[0].stop().unwrap().success(), "{}", agents[0].log());
    wait_for(Duration::from_secs(10), "pi-a offline", || {
        let db = db.clone();
        async move {
            let online: i64 = sqlx::query_scalar("SELECT online FROM devices WHERE id = 'pi-a'")
                .fetch_one(&db)
                .await
                .ok()?;
            (online == 0).then_some(())
        }
    })
    .await
    .unwrap();
}
