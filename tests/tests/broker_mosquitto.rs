//! Debian's Mosquitto 2 with the configuration `broker-config mosquitto` generates, as the
//! external broker of scale-out mode: ingest through the controllers' shared subscription
//! (each message to exactly one controller), devices confined to their own topics (also
//! when they subscribe to another device's), each identity usable only on its own listener,
//! no client without a certificate, no packet above the controller's limit, and a revocation
//! that ends the live session and refuses the reconnect at the TLS handshake.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use pifleet_controller::broker::revoke::{self, BrokerProcess};
use pifleet_controller::datadir::DataDir;
use pifleet_shared::DeviceId;
use pifleet_tests::broker::{
    Broker, CONTROLLERS, Client, Seen, assert_refused_as_revoked, messages,
};
use pifleet_tests::harness::{Agent, Controller, bin, wait_for};
use pifleet_tests::mqtt::{client, client_tls, connack};

/// How long a test waits for something that must not arrive, after a later message sent
/// the same way did.
const QUIET: Duration = Duration::from_millis(500);
/// How long something that must arrive may take.
const ARRIVES: Duration = Duration::from_secs(5);

/// A controller, two enrolled devices (never started: tests speak for them) and the broker.
async fn setup() -> (Controller, Agent, Agent, Broker) {
    let ctl = Controller::start().await.unwrap();
    let a = Agent::enroll(&ctl, "dev-a", 60).unwrap();
    let b = Agent::enroll(&ctl, "dev-b", 60).unwrap();
    let broker = Broker::start(&ctl).await.unwrap();
    (ctl, a, b, broker)
}

async fn controller(broker: &Broker, name: &str, id: &str) -> Client {
    Client::controller(&broker.controller(name), broker.controller_port, id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", broker.log()))
}

async fn device(broker: &Broker, dev: &Agent) -> Client {
    Client::device(dev, broker.device_port, &dev.id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", broker.log()))
}

/// Waits for a message on `topic`; returns the messages seen before it.
async fn receive(c: &mut Client, topic: &str) -> Vec<(String, String)> {
    let (_, before) = c
        .until(
            ARRIVES,
            |s| matches!(s, Seen::Message { topic: t, .. } if t == topic),
        )
        .await
        .unwrap_or_else(|e| panic!("no message on {topic}: {e:#}"));
    messages(&before)
}

#[tokio::test]
async fn controllers_share_ingest_and_each_message_reaches_one() {
    let (_ctl, a, _b, broker) = setup().await;
    let mut c1 = controller(&broker, CONTROLLERS[0], "ingest-1").await;
    let mut c2 = controller(&broker, CONTROLLERS[1], "ingest-2").await;
    c1.subscribe("$share/pifleet/fleet/+/up/#").await.unwrap();
    c2.subscribe("$share/pifleet/fleet/+/up/#").await.unwrap();
    let dev = device(&broker, &a).await;
    const N: usize = 200;
    for i in 0..N {
        dev.publish("fleet/dev-a/up/telemetry", format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut per_controller = [0usize; 2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count.len() < N && tokio::time::Instant::now() < deadline {
        for (i, c) in [&mut c1, &mut c2].into_iter().enumerate() {
            for (topic, payload) in messages(&c.drain(Duration::from_millis(100)).await) {
                assert_eq!(topic, "fleet/dev-a/up/telemetry");
                *count.entry(payload).or_default() += 1;
                per_controller[i] += 1;
            }
        }
    }
    // Anything late would be a duplicate.
    for c in [&mut c1, &mut c2] {
        for (_, payload) in messages(&c.drain(QUIET).await) {
            *count.entry(payload).or_default() += 1;
        }
    }
    assert_eq!(count.len(), N, "every message delivered: {count:?}");
    assert!(count.values().all(|n| *n == 1), "exactly once: {count:?}");
    assert!(
        per_controller.iter().all(|n| *n > 0),
        "both controllers take a share: {per_controller:?}"
    );
}

#[tokio::test]
async fn devices_reach_only_their_own_topics() {
    let (_ctl, a, b, broker) = setup().await;
    let mut ctl = controller(&broker, CONTROLLERS[0], "ctl").await;
    ctl.subscribe("fleet/+/up/#").await.unwrap();
    let mut dev_a = device(&broker, &a).await;
    let mut dev_b = device(&broker, &b).await;
    dev_b.subscribe("fleet/dev-b/down/#").await.unwrap();
    // Mosquitto accepts the subscription to B's commands: it filters on delivery.
    dev_a.subscribe("fleet/dev-a/down/#").await.unwrap();
    dev_a.subscribe("fleet/dev-b/down/#").await.unwrap();

    // A publishing as B is dropped; its own message, sent after, arrives alone.
    dev_a
        .publish("fleet/dev-b/up/telemetry", b"forged")
        .await
        .unwrap();
    dev_a
        .publish("fleet/dev-a/up/telemetry", b"own")
        .await
        .unwrap();
    let before = receive(&mut ctl, "fleet/dev-a/up/telemetry").await;
    assert!(before.is_empty(), "only A's own message: {before:?}");
    assert!(messages(&ctl.drain(QUIET).await).is_empty());

    // The controller's command to B reaches B, not A; A gets its own.
    ctl.publish("fleet/dev-b/down/cmd", b"for-b").await.unwrap();
    ctl.publish("fleet/dev-a/down/cmd", b"for-a").await.unwrap();
    let before = receive(&mut dev_a, "fleet/dev-a/down/cmd").await;
    assert!(
        before.is_empty(),
        "A got another device's command: {before:?}"
    );
    receive(&mut dev_b, "fleet/dev-b/down/cmd").await;
    assert!(messages(&dev_a.drain(QUIET).await).is_empty());

    // A cannot take B's session: its client id is its certificate's CN whatever it asks.
    let _a_as_b = Client::device(&a, broker.device_port, "dev-b")
        .await
        .unwrap();
    let seen = dev_b.drain(Duration::from_secs(1)).await;
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Down(_))),
        "B lost its session to A: {seen:?}\n{}",
        broker.log()
    );
}

#[tokio::test]
async fn each_identity_only_on_its_own_listener() {
    let (_ctl, a, b, broker) = setup().await;
    let mut ctl = controller(&broker, CONTROLLERS[0], "ctl").await;
    ctl.subscribe("fleet/+/up/#").await.unwrap();
    let mut dev_b = device(&broker, &b).await;
    dev_b.subscribe("fleet/dev-b/down/#").await.unwrap();
    let dev_a = device(&broker, &a).await;

    // A device certificate on the controller listener: refused at the handshake (that
    // listener trusts the controllers' CA only), so it cannot take over dev-b's session by
    // its client id there either.
    let intruder = Client::device(&a, broker.controller_port, "dev-b").await;
    let err = format!(
        "{:#}",
        intruder.expect_err("a device connected as a controller")
    );
    assert!(
        err.contains("received fatal alert: UnknownCA"),
        "refused, but not at the TLS handshake for its CA: {err}"
    );
    ctl.publish("fleet/dev-b/down/cmd", b"from-ctl")
        .await
        .unwrap();
    let before = receive(&mut dev_b, "fleet/dev-b/down/cmd").await;
    assert!(before.is_empty(), "dev-b lost its session: {before:?}");
    dev_a
        .publish("fleet/dev-a/up/telemetry", b"marker")
        .await
        .unwrap();
    let before = receive(&mut ctl, "fleet/dev-a/up/telemetry").await;
    assert!(before.is_empty(), "{before:?}");

    // A controller certificate on the device listener: refused at the handshake too (the
    // device listener trusts the devices' CA only).
    let cfg = broker.controller(CONTROLLERS[1]);
    let posing = Client::controller(&cfg, broker.device_port, "posing").await;
    let err = format!(
        "{:#}",
        posing.expect_err("a controller connected as a device")
    );
    assert!(
        err.contains("received fatal alert: UnknownCA"),
        "refused, but not at the TLS handshake for its CA: {err}"
    );
    dev_a
        .publish("fleet/dev-a/up/telemetry", b"marker-2")
        .await
        .unwrap();
    let before = receive(&mut ctl, "fleet/dev-a/up/telemetry").await;
    assert!(before.is_empty(), "{before:?}");
    ctl.publish("fleet/dev-b/down/cmd", b"from-ctl-2")
        .await
        .unwrap();
    let before = receive(&mut dev_b, "fleet/dev-b/down/cmd").await;
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let (_ctl, a, _b, broker) = setup().await;
    for port in [broker.device_port, broker.controller_port] {
        let tls = client_tls(&a.ca(), None).unwrap();
        let (_c, mut ev) = client(port, "anonymous", tls);
        let err = connack(&mut ev)
            .await
            .expect_err("connected without a certificate");
        let text = format!("{err:#}");
        // The TLS alert the broker sends (TLS 1.3: once the client's Finished is read).
        assert!(
            text.contains("received fatal alert: CertificateRequired"),
            "refused, but not at the TLS handshake: {text}"
        );
    }
}

#[tokio::test]
async fn a_revoked_device_is_kicked_and_cannot_reconnect() {
    let (ctl, a, b, broker) = setup().await;
    let mut watcher = controller(&broker, CONTROLLERS[0], "watcher").await;
    watcher.subscribe("fleet/+/up/#").await.unwrap();
    let mut dev_a = device(&broker, &a).await;
    let dd = DataDir::new(&ctl.data);

    ctl.revoke("dev-a").unwrap();
    // The command line: the broker's CRL rewritten and the broker (found through the pid
    // file its configuration names) told to reload it.
    let out = ctl
        .cli(&[
            "broker-config",
            "sync-crl",
            "--out",
            broker.dir.root().to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(broker.dir.crl()).unwrap(),
        std::fs::read(dd.crl()).unwrap()
    );
    // The reload alone leaves the live session up: Mosquitto checks the CRL only at the
    // handshake.
    wait_for(ARRIVES, "the broker reloading", || async {
        broker.log().contains("Reloading config").then_some(())
    })
    .await
    .unwrap();
    dev_a
        .publish("fleet/dev-a/up/telemetry", b"still-up")
        .await
        .unwrap();
    receive(&mut watcher, "fleet/dev-a/up/telemetry").await;
    let seen = dev_a.drain(QUIET).await;
    assert!(!seen.iter().any(|s| matches!(s, Seen::Down(_))), "{seen:?}");

    // The kick ends it within a second or two, and the reconnect meets the new CRL.
    let started = std::time::Instant::now();
    let identity = broker.controller(CONTROLLERS[0]);
    let out = std::process::Command::new(bin("pifleet-controller").unwrap())
        .args(["broker-config", "kick", "--device", "dev-a", "--identity"])
        .arg(identity.cert.parent().unwrap())
        .args(["--port", &broker.controller_port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev_a
        .until(Duration::from_secs(2), |s| matches!(s, Seen::Down(_)))
        .await
        .unwrap_or_else(|e| panic!("A still connected: {e:#}\n{}", broker.log()));
    assert!(started.elapsed() < Duration::from_secs(2));
    let seen = dev_a.drain(Duration::from_secs(2)).await;
    assert!(
        !seen.contains(&Seen::Connected),
        "A reconnected after its revocation: {seen:?}\n{}",
        broker.log()
    );
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Down(e) if e.contains("CertificateRevoked"))),
        "A's retries were not refused as revoked: {seen:?}"
    );
    assert_refused_as_revoked(&broker, &a).await;

    // The others are unaffected by the reload: B still connects.
    let mut dev_b = device(&broker, &b).await;
    dev_b.subscribe("fleet/dev-b/down/#").await.unwrap();
}

#[tokio::test]
async fn enforce_does_all_three_steps() {
    let (ctl, a, _b, broker) = setup().await;
    let mut dev_a = device(&broker, &a).await;
    ctl.revoke("dev-a").unwrap();
    let dd = DataDir::new(&ctl.data);
    let id = DeviceId::parse("dev-a").unwrap();
    revoke::enforce(
        &dd,
        &broker.dir,
        &BrokerProcess::PidFile(broker.dir.pid_file()),
        &broker.controller(CONTROLLERS[1]),
        &id,
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    dev_a
        .until(Duration::from_secs(2), |s| matches!(s, Seen::Down(_)))
        .await
        .unwrap();
    let seen = dev_a.drain(Duration::from_secs(1)).await;
    assert!(!seen.contains(&Seen::Connected), "{seen:?}");
}

#[tokio::test]
async fn a_packet_above_the_controllers_limit_is_refused() {
    let (_ctl, a, _b, broker) = setup().await;
    let mut ctl = controller(&broker, CONTROLLERS[0], "ctl").await;
    ctl.subscribe("fleet/+/up/#").await.unwrap();
    let mut dev_a = device(&broker, &a).await;
    let max = pifleet_controller::mqtt::max_packet_size();
    dev_a
        .publish("fleet/dev-a/up/telemetry", &vec![b'x'; max])
        .await
        .unwrap();
    dev_a
        .until(ARRIVES, |s| matches!(s, Seen::Down(_)))
        .await
        .unwrap_or_else(|e| panic!("oversized packet accepted: {e:#}\n{}", broker.log()));
    // Once reconnected, a packet within the limit goes through; the big one never did.
    dev_a
        .until(ARRIVES, |s| *s == Seen::Connected)
        .await
        .unwrap();
    dev_a
        .publish("fleet/dev-a/up/telemetry", &vec![b'y'; max - 1024])
        .await
        .unwrap();
    let (seen, before) = ctl
        .until(ARRIVES, |s| matches!(s, Seen::Message { .. }))
        .await
        .unwrap();
    assert!(before.is_empty(), "{before:?}");
    let Seen::Message { payload, .. } = seen else {
        unreachable!()
    };
    assert_eq!(payload.len(), max - 1024);
    assert!(payload.iter().all(|b| *b == b'y'));
}
