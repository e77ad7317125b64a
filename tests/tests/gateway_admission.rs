//! Admission at the device listener, end to end through the real binaries: handshakes that
//! stall halfway never take a turn of the handshake computation from a real device; and
//! past what the open-file limit leaves, devices are refused at accept, before any TLS,
//! while HTTPS, the database and `/metrics` keep working.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::mqtt::client_tls;
use pifleet_tests::promkit::value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client's first flight (its ClientHello), from a real rustls client with `dev`'s
/// identity.
fn client_hello(ctl: &Controller, dev: &Agent) -> Vec<u8> {
    let tls = client_tls(&ctl.ca_path(), Some((&dev.cert(), &dev.key()))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

/// Whether the peer has not closed `s` (what it sent, if anything, is read and dropped).
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match s.try_read(&mut b) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

async fn scrape(ctl: &Controller) -> String {
    let token = std::fs::read_to_string(ctl.data.join("scrape.token")).unwrap();
    let api = pifleet_tests::api::Api::new(ctl).unwrap();
    api.get("/metrics", Some(token.trim())).await.unwrap().text
}

/// With one handshake computing at a time, sockets that sent a whole ClientHello (the
/// gateway signed and answered it, and now waits for the client's second flight) and
/// sockets that sent half of one, four per core, sit in front of a real agent for longer
/// than the test waits: the agent still connects and streams, because waiting for a
/// client's bytes never holds the turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_take_no_turn_from_a_real_agent() {
    let ctl =
        Controller::start_with("[mqtt]\nhandshake_concurrency = 1\nhandshake_timeout_ms = 120000")
            .await
            .unwrap();
    let stalled_dev = Agent::enroll(&ctl, "pi-stalled", 1).unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-real", 1).unwrap();
    let hello = client_hello(&ctl, &stalled_dev);
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let mut stalled = Vec::new();
    for i in 0..4 * cores {
        let mut s = TcpStream::connect(ctl.mqtt).await.unwrap();
        let part = if i % 2 == 0 {
            &hello[..]
        } else {
            &hello[..hello.len() / 2]
        };
        s.write_all(part).await.unwrap();
        stalled.push(s);
    }
    // The whole ClientHellos are answered: the gateway did its part and waits.
    for s in stalled.iter_mut().step_by(2) {
        let mut b = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut b))
            .await
            .expect("the gateway answers a ClientHello")
            .unwrap();
        assert_eq!(b[0], 0x16, "a TLS handshake record");
    }
    agent.start().unwrap();
    wait_for(
        Duration::from_secs(30),
        "first sample of pi-real",
        || async { (!ctl.seqs("pi-real").await.ok()?.is_empty()).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ctl.log(), agent.log()));
    // Every stalled socket is still open in front of it.
    let closed: Vec<usize> = (0..stalled.len())
        .filter(|&i| !still_open(&stalled[i]))
        .collect();
    assert!(
        closed.is_empty(),
        "stalled sockets {closed:?} were closed before the check\n{}",
        ctl.log()
    );
}

/// The controller runs under an open-file limit of 400 with `https.max_connections = 64`:
/// 400 − 64 − the reserve of 256 leaves room for 80 device connections, whatever
/// `mqtt.max_connections` says. The 81st is closed at accept without a TLS byte and
/// counted; HTTPS, SQLite (a device list) and `/metrics` keep answering; once sockets go, a
/// real device connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_open_file_limit_devices_are_refused_before_tls() {
    const ROOM: usize = 400 - 64 - 256;
    let mut ctl = Controller::start_with(
        "[mqtt]\nhandshake_timeout_ms = 120000\n[https]\nmax_connections = 64\npreauth_max = 32\npreauth_per_source = 32",
    )
    .await
    .unwrap();
    ctl.stop();
    ctl.nofile = Some(400);
    ctl.serve().await.unwrap();
    let metrics = scrape(&ctl).await;
    assert_eq!(
        value(&metrics, "pifleet_mqtt_connection_limit"),
        Some(ROOM as f64),
        "{}",
        ctl.log()
    );
    assert!(
        ctl.log().contains("open-file limit is 400"),
        "{}",
        ctl.log()
    );

    let mut held = Vec::new();
    for _ in 0..ROOM {
        held.push(TcpStream::connect(ctl.mqtt).await.unwrap());
    }
    // Let the gateway accept them all (each takes a slot at accept).
    wait_for(
        Duration::from_secs(20),
        "all held sockets accepted",
        || async {
            let m = scrape(&ctl).await;
            (value(&m, "pifleet_mqtt_preauth_connections")? >= ROOM as f64).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    let mut extra = TcpStream::connect(ctl.mqtt).await.unwrap();
    let mut b = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), extra.read(&mut b))
        .await
        .expect("the extra connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "no TLS byte: {read:?}");
    let metrics = scrape(&ctl).await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("pifleet_mqtt_refused_total{reason=\"max_connections\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        refused.ends_with(" 1") || !refused.ends_with(" 0"),
        "{refused}"
    );

    // The rest of the controller works meanwhile: HTTPS, sign-in, a database read.
    let api = pifleet_tests::api::Api::new(&ctl).unwrap();
    assert_eq!(api.get("/healthz", None).await.unwrap().status, 200);
    let token = api.admin(&ctl).await.unwrap();
    let devices = api.get("/api/v1/devices", Some(&token)).await.unwrap();
    assert_eq!(devices.status, 200, "{}", devices.text);

    drop(held);
    let mut agent = Agent::enroll(&ctl, "pi-after", 1).unwrap();
    agent.start().unwrap();
    wait_for(
        Duration::from_secs(30),
        "first sample of pi-after",
        || async { (!ctl.seqs("pi-after").await.ok()?.is_empty()).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ctl.log(), agent.log()));
}
