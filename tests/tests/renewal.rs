//! Automatic device certificate renewal end to end, with certificates that live seconds:
//! a real agent renews over MQTT (`up/csr` → `down/cert`) again and again while it streams
//! telemetry, comes back online each time with the new pair, loses no sample, and a
//! command sent after renewal succeeds with a receipt that verifies. A device asking for
//! another id's certificate, or flooding CSRs, is refused (a session with a device's own
//! certificate, crafted CSRs). Revoked devices are covered by the controller's unit tests:
//! they cannot connect at all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_shared::codec;
use pifleet_shared::proto::v1::{RenewAnswer, RenewRequest};
use pifleet_shared::topic::Kind;
use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, merge_config, wait_for};
use pifleet_tests::mqtt::{connected, until_incoming};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rumqttc::{EventLoop, Packet, QoS};
use sqlx::SqlitePool;

const WAIT: Duration = Duration::from_secs(90);

async fn serials(db: &SqlitePool, device: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT serial FROM certificates WHERE device_id = ? ORDER BY issued_at")
        .bind(device)
        .fetch_all(db)
        .await
        .unwrap()
}

/// The serial of the agent's certificate file, as the database writes it.
fn file_serial(agent: &Agent) -> String {
    let pem = std::fs::read(agent.cert()).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let raw = cert.raw_serial();
    let trimmed: Vec<u8> = raw.iter().copied().skip_while(|b| *b == 0).collect();
    hex::encode(trimmed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_repeatedly_while_streaming_and_commands_still_verify() {
    let ctl =
        Controller::start_with("[pki]\ndevice_cert_lifetime_s = 20\nrenew_min_interval_s = 3\n")
            .await
            .unwrap();
    let mut agent = Agent::enroll(&ctl, "renew-pi", 1).unwrap();
    merge_config(
        &agent.config(),
        "[mqtt]\nrenew_check_s = 1\nrenew_answer_timeout_s = 5\nrenew_backoff_max_s = 2\n",
    )
    .unwrap();
    agent.start().unwrap();
    let db = ctl.db().await.unwrap();
    let enrolled = serials(&db, "renew-pi").await;
    assert_eq!(enrolled.len(), 1);

    // Two renewals at least (the first after ~13 s, then every ~13 s), each one a new
    // serial the agent installed and connected with.
    let mut seen = enrolled.clone();
    for round in 1..=2 {
        let now = wait_for(WAIT, "a renewed certificate in use", || {
            let (db, seen, agent, ctl) = (&db, &seen, &agent, &ctl);
            async move {
                let all = serials(db, "renew-pi").await;
                let current = file_serial(agent);
                let renewed = all.len() > seen.len() && !seen.contains(&current);
                let confirmed = !agent.dir.join("device.crt.old").exists();
                (renewed
                    && confirmed
                    && all.contains(&current)
                    && ctl.online("renew-pi").await == Some(1))
                .then_some(all)
            }
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "round {round}: {e}\nagent log:\n{}\ncontroller log:\n{}",
                agent.log(),
                ctl.log()
            )
        });
        seen = now;
    }
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(
        seen.iter().collect::<std::collections::HashSet<_>>().len(),
        seen.len()
    );

    // A command after renewal: its receipt is signed with the renewed key and verifies.
    ctl.ping("renew-pi", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.log(), ctl.log()));

    // Every sample arrived exactly once: sequence numbers 1..=max without a gap, across
    // every reconnect.
    wait_for(
        Duration::from_secs(30),
        "a gapless telemetry history",
        || {
            let db = &db;
            async move {
                let (n, lo, hi): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(seq), MAX(seq) FROM telemetry WHERE device_id = 'renew-pi'",
            )
            .fetch_one(db)
            .await
            .ok()?;
                (lo == Some(1) && hi == Some(n) && n >= 20).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // Audited with the device as the actor; the renewed certificates are on the API view.
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'device.renew_certificate' \
         AND actor = 'device:renew-pi' AND outcome = 'ok'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(audited >= 2, "{audited}");
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let r = api
        .get("/api/v1/devices/renew-pi", Some(&admin))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
    let certs = v["certificates"].as_array().unwrap();
    assert!(certs.len() >= 3, "{v}");
    assert!(
        certs.iter().all(|c| c["not_after"].as_i64().is_some()),
        "{v}"
    );
    assert!(agent.log().contains("renewed certificate installed"));
    db.close().await;
}

fn csr(cn: &str) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    codec::encode(Kind::Csr, &RenewRequest { csr_pem }).unwrap()
}

/// The next `down/cert` answer on the session.
async fn answer(ev: &mut EventLoop) -> RenewAnswer {
    let p = until_incoming(
        ev,
        |p| matches!(p, Packet::Publish(p) if p.topic.ends_with("/down/cert")),
    )
    .await
    .unwrap();
    let Packet::Publish(p) = p else {
        panic!("not a publish: {p:?}")
    };
    codec::decode::<RenewAnswer>(Kind::Cert, &p.payload).unwrap()
}

async fn cert_count(db: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM certificates")
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrs_for_another_id_and_floods_are_refused() {
    let ctl =
        Controller::start_with("[pki]\ndevice_cert_lifetime_s = 60\nrenew_min_interval_s = 2\n")
            .await
            .unwrap();
    let dev = Agent::enroll(&ctl, "csr-pi", 5).unwrap();
    let _other = Agent::enroll(&ctl, "csr-other", 5).unwrap();
    let (client, mut ev) = connected(&ctl, &dev).await.unwrap();
    client
        .subscribe("fleet/csr-pi/down/cert", QoS::AtLeastOnce)
        .await
        .unwrap();
    let up = "fleet/csr-pi/up/csr";
    let db = ctl.db().await.unwrap();
    assert_eq!(cert_count(&db).await, 2);

    // Another device's id, over this device's connection: refused, nothing issued.
    client
        .publish(up, QoS::AtLeastOnce, false, csr("csr-other"))
        .await
        .unwrap();
    match answer(&mut ev).await {
        RenewAnswer::Refused { reason, .. } => {
            assert!(reason.contains("does not match"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(cert_count(&db).await, 2);

    // Once the interval since enrollment has passed, one renewal goes through …
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let issued = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate issued"
        );
        client
            .publish(up, QoS::AtLeastOnce, false, csr("csr-pi"))
            .await
            .unwrap();
        match answer(&mut ev).await {
            RenewAnswer::Issued { cert_pem } => break cert_pem,
            RenewAnswer::Refused {
                reason,
                retry_after_s,
            } => {
                assert!(
                    (1..=2).contains(&retry_after_s),
                    "{reason}: {retry_after_s}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert!(issued.contains("BEGIN CERTIFICATE"));
    assert_eq!(cert_count(&db).await, 3);

    // … and a flood right after it is refused, every one.
    for _ in 0..5 {
        client
            .publish(up, QoS::AtLeastOnce, false, csr("csr-pi"))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        match answer(&mut ev).await {
            RenewAnswer::Refused {
                reason,
                retry_after_s,
            } => {
                assert!(reason.contains("renewal interval"), "{reason}");
                assert!((1..=2).contains(&retry_after_s), "{retry_after_s}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(cert_count(&db).await, 3);

    // Counted by outcome on /metrics.
    let api = Api::new(&ctl).unwrap();
    let token = std::fs::read_to_string(ctl.data.join("scrape.token")).unwrap();
    let r = api.get("/metrics", Some(token.trim())).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let value = |outcome: &str| {
        let line = format!("pifleet_certificate_renewals_total{{outcome=\"{outcome}\"}}");
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(value("issued"), Some(1));
    assert_eq!(value("refused_other_id"), Some(1));
    assert!(
        value("refused_rate") >= Some(5),
        "{:?}",
        value("refused_rate")
    );
    assert!(
        r.text
            .contains("pifleet_device_certificates_renewal_overdue 0"),
        "{}",
        r.text
    );
    db.close().await;
}
