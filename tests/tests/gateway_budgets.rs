//! The MQTT gateway's budgets, end to end through the real binaries: connections that have
//! not authenticated are limited per source address, so idle sockets from one address
//! cannot take the device connection budget; a device over its message budget is read
//! more slowly — counted, logged, and without losing a message — while a well-behaved
//! device on the same controller goes on as before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::logs::{REFUSED, count_entries, log_entries};
use pifleet_tests::mqtt::{connected, telemetry};
use pifleet_tests::promkit::value;
use rumqttc::{Event, Packet, QoS};
use tokio::io::AsyncReadExt;

/// Whether the peer has closed `s` (EOF or reset) within `wait`.
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Err(_) => false,
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_cannot_take_the_device_budget() {
    // Eight device connections in all; four unauthenticated ones per source address; the
    // idle sockets would otherwise be held for a minute.
    let ctl = Controller::start_with(
        "[mqtt]\nmax_connections = 8\npreauth_per_source = 4\nhandshake_timeout_ms = 60000",
    )
    .await
    .unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-behind", 1).unwrap();

    // Twenty silent sockets from 127.0.0.2 (Linux routes all of 127/8 to loopback).
    let mut idle = Vec::new();
    for _ in 0..20 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(s.connect(ctl.mqtt).await.unwrap());
    }
    let mut open = 0;
    for s in &mut idle {
        if !closed_within(s, Duration::from_millis(500)).await {
            open += 1;
        }
    }
    assert_eq!(open, 4, "sockets from one address left open\n{}", ctl.log());
    assert_eq!(
        count_entries(&ctl, REFUSED, "preauth_per_source", None),
        16,
        "{}",
        ctl.log()
    );
    let refusal = log_entries(&ctl)
        .into_iter()
        .find(|e| e["reason"] == "preauth_per_source")
        .unwrap();
    assert_eq!(refusal["source"], "127.0.0.2", "{refusal}");

    // A real device from another address connects and streams while they sit there.
    agent.start().unwrap();
    wait_for(
        Duration::from_secs(20),
        "pi-behind's first sample",
        || async { (!ctl.seqs("pi-behind").await.ok()?.is_empty()).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ctl.log(), agent.log()));
    let mut still_open = 0;
    for s in &mut idle {
        if !closed_within(s, Duration::from_millis(50)).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 4,
        "the idle sockets were gone before the device connected"
    );

    // Once they go, their address may connect again.
    drop(idle);
    wait_for(
        Duration::from_secs(10),
        "a new socket from 127.0.0.2 held",
        || async {
            let s = tokio::net::TcpSocket::new_v4().ok()?;
            s.bind("127.0.0.2:0".parse().ok()?).ok()?;
            let mut c = s.connect(ctl.mqtt).await.ok()?;
            (!closed_within(&mut c, Duration::from_millis(300)).await).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_message_budget_is_slowed_not_dropped() {
    const SENT: u64 = 40;
    let ctl = Controller::start_with("[mqtt]\ndevice_rate_per_s = 10\ndevice_burst = 5")
        .await
        .unwrap();
    let noisy = Agent::enroll(&ctl, "pi-noisy", 60).unwrap();
    let mut calm = Agent::enroll(&ctl, "pi-calm", 1).unwrap();
    calm.start().unwrap();
    wait_for(Duration::from_secs(20), "pi-calm streaming", || async {
        (!ctl.seqs("pi-calm").await.ok()?.is_empty()).then_some(())
    })
    .await
    .unwrap();

    // Forty QoS 1 samples as fast as the client can send them: four seconds' worth of the
    // budget after its burst.
    let (client, mut ev) = connected(&ctl, &noisy).await.unwrap();
    let calm_before = ctl.seqs("pi-calm").await.unwrap().len();
    for seq in 1..=SENT {
        client
            .publish(
                "fleet/pi-noisy/up/telemetry",
                QoS::AtLeastOnce,
                false,
                telemetry(seq).unwrap(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked < SENT {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.unwrap() {
                acked += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{acked} of {SENT} publishes acknowledged\n{}", ctl.log()));

    // Every sample was stored: slowed, not dropped.
    let want: Vec<i64> = (1..=SENT as i64).collect();
    wait_for(
        Duration::from_secs(20),
        "all noisy samples stored",
        || async { (ctl.seqs("pi-noisy").await.ok()? == want).then_some(()) },
    )
    .await
    .unwrap();
    // Counted and logged (once per episode, with the device).
    let scrape = std::fs::read_to_string(ctl.data.join("scrape.token")).unwrap();
    let api = pifleet_tests::api::Api::new(&ctl).unwrap();
    let metrics = api.get("/metrics", Some(scrape.trim())).await.unwrap().text;
    let throttled = value(&metrics, "pifleet_mqtt_throttled_total").unwrap_or(0.0);
    assert!(throttled >= 20.0, "throttled {throttled}\n{metrics}");
    let logged: Vec<_> = log_entries(&ctl)
        .into_iter()
        .filter(|e| e["message"] == "device over its message budget; reading it more slowly")
        .collect();
    assert!(!logged.is_empty(), "{}", ctl.log());
    assert!(
        logged.iter().all(|e| e["device"] == "pi-noisy"),
        "{logged:?}"
    );
    assert!(
        logged.len() < 5,
        "logged per message, not per episode: {logged:?}"
    );
    // The calm device went on streaming meanwhile, and was never throttled.
    assert!(ctl.seqs("pi-calm").await.unwrap().len() > calm_before);
    drop(client);
}
