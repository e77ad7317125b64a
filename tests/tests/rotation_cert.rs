//! `rotate server-cert` with a running controller and agent: new TLS connections to the
//! MQTT gateway and to HTTPS get the new certificate without a restart, the connected agent
//! stays connected and keeps running commands, an agent restarted afterwards connects, and
//! the rotation is audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::logs::{DISCONNECTED, has_entry, log_entries};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(20);

/// The serial (hex) of the certificate a fresh TLS connection to `addr` is served; the
/// client presents `client` (a device's certificate and key) when given.
async fn served_serial(addr: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serial.trim_start_matches('0').to_owned()
}

fn connects(ctl: &Controller, device: &str) -> usize {
    log_entries(ctl)
        .iter()
        .filter(|e| e["message"] == "device connected" && e["device"] == device)
        .count()
}

async fn ping_succeeds(ctl: &Controller, device: &str) {
    ctl.ping(device, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_certificate_is_served_without_a_restart_or_a_reconnect() {
    let ctl = Controller::start_with("[auth]\nkey_reload_s = 1\n")
        .await
        .unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-cert", 5).unwrap();
    agent.start().unwrap();
    wait_for(WAIT, "agent online", || async {
        (ctl.online("pi-cert").await == Some(1)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let ca = ctl.ca_path();
    let client = (agent.cert(), agent.key());
    let before = served_serial(ctl.https, &ca, None).await;
    assert_eq!(
        served_serial(ctl.mqtt, &ca, Some((&client.0, &client.1))).await,
        before
    );
    let connected = connects(&ctl, "pi-cert");
    assert_eq!(connected, 1);

    let out = ctl.cli(&["rotate", "server-cert"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let serial = stdout
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_start_matches('0')
        .to_owned();
    assert_ne!(serial, before, "{stdout}");
    assert!(stdout.contains("localhost"), "{stdout}");

    // Fresh connections to both listeners get the new certificate.
    wait_for(WAIT, "HTTPS serves the new certificate", || {
        let (ca, serial) = (ca.clone(), serial.clone());
        async move { (served_serial(ctl.https, &ca, None).await == serial).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    assert_eq!(
        served_serial(ctl.mqtt, &ca, Some((&client.0, &client.1))).await,
        serial
    );
    assert!(ctl.log().contains("server certificate reloaded"));

    // The agent never noticed: same connection, and commands still run over it.
    ping_succeeds(&ctl, "pi-cert").await;
    assert_eq!(connects(&ctl, "pi-cert"), connected, "{}", ctl.log());
    assert!(
        !has_entry(&ctl, DISCONNECTED, Some("pi-cert")),
        "{}",
        ctl.log()
    );

    // An agent started after the rotation connects (it pins the CA, not the leaf).
    agent.stop();
    agent.start().unwrap();
    wait_for(WAIT, "agent reconnected", || async {
        (connects(&ctl, "pi-cert") > connected).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.log(), ctl.log()));
    ping_succeeds(&ctl, "pi-cert").await;

    let db = ctl.db().await.unwrap();
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE action = 'rotate.server_cert' AND outcome = 'ok'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(detail.contains(&serial), "{detail}");
    db.close().await;
}
