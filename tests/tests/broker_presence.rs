//! Presence in external-broker mode comes from the agents' retained status and last will,
//! not only from silence: a device that vanishes is offline once the broker notices (1.5
//! keep-alives), one that leaves says so at once, and one that left while no controller was
//! listening is found offline from its retained status when a controller starts. The
//! silence timeout is set far beyond the test, so none of this comes from it. The devices
//! reach the broker at the host enrollment names (`mqtt.public_host`), not the one they
//! enrolled with.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::broker::Broker;
use pifleet_tests::harness::{Agent, Controller, merge_config, wait_for};

async fn wait_online(ctl: &Controller, device: &str, online: i64, within: u64, why: &str) {
    wait_for(Duration::from_secs(within), why, || async {
        (ctl.online(device).await == Some(online)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_the_agents_status_and_last_will() {
    let mut ctl = Controller::start().await.unwrap();
    let broker = Broker::start(&ctl).await.unwrap();
    ctl.stop();
    // Silence alone would take ten minutes to make a device offline.
    merge_config(
        &ctl.data.join("config.toml"),
        &broker.controller_config("ctl-1", 600),
    )
    .unwrap();
    // The broker's own host, told to devices at enrollment (they enroll with `localhost`).
    merge_config(
        &ctl.data.join("config.toml"),
        "[mqtt]\npublic_host = \"127.0.0.1\"",
    )
    .unwrap();
    ctl.serve().await.unwrap();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b"]
        .iter()
        .map(|id| Agent::enroll(&ctl, id, 1).unwrap())
        .collect();
    for a in &mut agents {
        let cfg = std::fs::read_to_string(a.config()).unwrap();
        assert!(cfg.contains("mqtt_host = \"127.0.0.1\""), "{cfg}");
        // The broker publishes the will 1.5 keep-alives after the device went silent.
        merge_config(&a.config(), "[mqtt]\nkeep_alive_s = 5").unwrap();
        a.start().unwrap();
    }
    for id in ["pi-a", "pi-b"] {
        wait_online(&ctl, id, 1, 30, "online through the broker").await;
    }

    // kill -9: no goodbye; the broker publishes the last will.
    agents[0].kill9();
    wait_online(&ctl, "pi-a", 0, 15, "pi-a offline from its last will").await;
    assert_eq!(ctl.online("pi-b").await, Some(1));
    // Back: its live status makes it online.
    agents[0].start().unwrap();
    wait_online(&ctl, "pi-a", 1, 30, "pi-a online again").await;

    // A clean stop says goodbye: offline at once.
    agents[1].stop();
    wait_online(&ctl, "pi-b", 0, 5, "pi-b offline from its goodbye").await;

    // A device that leaves while no controller listens: its retained offline status waits
    // at the broker and is read when the controller subscribes.
    ctl.stop();
    assert_eq!(ctl.online("pi-a").await, Some(1));
    agents[0].stop();
    // The controller's data says online until it hears otherwise.
    assert_eq!(ctl.online("pi-a").await, Some(1));
    ctl.serve().await.unwrap();
    wait_online(&ctl, "pi-a", 0, 15, "pi-a offline from its retained status").await;
    ctl.stop();
    drop(broker);
}
