//! The scale-out mode at fleet size: three controllers on one PostgreSQL, Debian's Mosquitto,
//! two real agents and a few hundred simulated devices (`pifleet-sim --broker external`,
//! which keep and re-send unacknowledged samples like the agent's spool). kill -9 of one
//! controller mid-stream: the other two take every device's samples within seconds; after it
//! is back, every controller's API lists the same fleet; a command sent through the second
//! controller runs once on its agent and is seen through the others; in the end every sample
//! is stored exactly once.
//!
//! Its own test binary (not in `scale_out.rs`) so it never runs beside those tests on a
//! 2-core machine.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::fleetkit::get;
use pifleet_tests::harness::{Agent, wait_for};
use pifleet_tests::pgkit::{all_unbroken_once, counts, spans};
use pifleet_tests::scalekit::{Cluster, wait_rows};
use serde_json::json;

/// Simulated devices: what enrolls, connects and streams on 2 cores in well under a minute.
const SIMS: usize = 250;
/// Seconds the simulated devices stream (the kill and its takeover happen within them).
const STREAM_S: u64 = 20;
/// How soon the two remaining controllers must carry every device's samples.
const TAKEOVER: Duration = Duration::from_secs(20);

/// The device ids of the fleet as controller `ctl`'s API lists them, and its total.
async fn fleet_ids(api: &Api, token: &str) -> (BTreeSet<String>, u64) {
    let j = get(api, token, "/api/v1/devices?limit=500").await;
    let ids = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, j["total"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controllers_carry_agents_and_simulated_devices_exactly_once() {
    let mut cluster = Cluster::start(3, "", 5).await.unwrap();
    let pool = cluster.pool();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b"]
        .iter()
        .map(|id| Agent::enroll(&cluster.ctls[0], id, 1).unwrap())
        .collect();
    for ag in &mut agents {
        ag.start().unwrap();
    }
    // The simulated devices enroll through the first controller and connect to the port
    // their enrollment handed out: Mosquitto's device listener.
    let sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_pifleet-sim"))
        .arg("--data-dir")
        .arg(&cluster.ctls[0].data)
        .args(["--broker", "external", "--devices", &SIMS.to_string()])
        .args(["--rate", "1", "--duration", &STREAM_S.to_string()])
        .args(["--resend-s", "3", "--backoff-max-s", "1"])
        .args(["--phase-timeout-s", "40", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let devices = SIMS + agents.len();
    wait_rows(&pool, devices, &[], 2, "samples from every device", || {
        cluster.logs()
    })
    .await;

    // kill -9 one controller mid-stream: its share of the shared subscription moves to the
    // other two within seconds, for every device.
    cluster.ctls[2].kill9();
    let (killed, before) = (Instant::now(), counts(&pool).await);
    wait_rows(
        &pool,
        devices,
        &before,
        3,
        "every device's samples through the two others",
        || cluster.logs(),
    )
    .await;
    let took = killed.elapsed();
    assert!(took < TAKEOVER, "the takeover took {took:?}");
    cluster.ctls[2].serve().await.unwrap();

    // Every controller's API lists the same fleet.
    let apis: Vec<Api> = cluster.ctls.iter().map(|c| Api::new(c).unwrap()).collect();
    apis[0].admin(&cluster.ctls[0]).await.unwrap();
    let mut tokens = Vec::new();
    for api in &apis {
        tokens.push(api.tokens("admin", TEST_PASSWORD).await.unwrap().0);
    }
    let want: BTreeSet<String> = (0..SIMS)
        .map(|i| format!("sim-{i:05}"))
        .chain(["pi-a".into(), "pi-b".into()])
        .collect();
    for (api, token) in apis.iter().zip(&tokens) {
        let (ids, total) = fleet_ids(api, token).await;
        assert_eq!(total, devices as u64);
        assert_eq!(ids, want);
    }

    // A command through the second controller: delivered once, its receipt recorded, and
    // seen through the first and the third.
    let r = apis[1]
        .post(
            "/api/v1/commands",
            Some(&tokens[1]),
            &json!({ "devices": ["pi-b"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["commands"][0]["id"].as_str().unwrap().to_owned();
    for i in [0, 2] {
        wait_for(Duration::from_secs(30), "the ping succeeded", || {
            let (api, token, id) = (&apis[i], &tokens[i], &id);
            async move {
                let j = get(api, token, &format!("/api/v1/commands/{id}")).await;
                (j["status"] == "succeeded").then_some(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    }
    let receipts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM commands WHERE id = $1 AND receipt IS NOT NULL")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(receipts, 1);
    let pi_b = &agents[1];
    let of_it = |message: &str| {
        pi_b.log_events(message)
            .iter()
            .filter(|e| e["command"] == id.as_str())
            .count()
    };
    // One execution (a ping logs its acceptance only), no second delivery refused as a replay.
    assert_eq!(of_it("command accepted"), 1, "{}", pi_b.log());
    assert_eq!(
        of_it("command rejected"),
        0,
        "the command was delivered again:\n{}",
        pi_b.log()
    );

    // The simulated devices stop, with every sample acknowledged after its commit.
    let out = tokio::time::timeout(Duration::from_secs(120), sim.wait_with_output())
        .await
        .expect("the simulator ended")
        .unwrap();
    assert!(
        out.status.success(),
        "simulator: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["broker"], "external", "{report:#}");
    assert_eq!(report["connect"]["connected"], SIMS, "{report:#}");
    assert_eq!(report["steady"]["unacked"], 0, "{report:#}");
    let published = report["steady"]["published"].as_i64().unwrap();
    assert!(published >= (SIMS as i64) * 5, "{report:#}");

    // Exactly once: no double, no gap, for every device; the agents' from their first
    // sample on, the simulated devices' every published one.
    all_unbroken_once(&pool, || cluster.logs()).await;
    let spans = spans(&pool).await;
    for (device, _, _, min, _) in spans.iter().filter(|s| s.0.starts_with("pi-")) {
        assert_eq!(*min, 1, "{device}: its first samples are missing");
    }
    let stored: i64 = spans
        .iter()
        .filter(|s| s.0.starts_with("sim-"))
        .map(|s| s.1)
        .sum();
    assert_eq!(stored, published, "{report:#}");
    for ag in &mut agents {
        ag.stop();
    }
    for c in &mut cluster.ctls {
        c.stop();
    }
}
