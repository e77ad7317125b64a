//! Revocation is final, end to end through the real binaries: a session that finished its
//! TLS handshake before `device revoke` cannot register afterwards (with or without part of
//! its CONNECT sent); revocations made at once from the command line and the API all reach
//! the CRL; a revocation the CRL missed is still enforced and published; a retried
//! revocation publishes the CRL again; the CRL is renewed before its nextUpdate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, now_ms, wait_for};
use pifleet_tests::logs::{DISCONNECTED, REFUSED, count_entries, log_entries, wait_entry};
use pifleet_tests::mqtt::{RawAnswer, connack, connect_packet, raw_tls, session, write_and_read};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use x509_parser::prelude::FromDer;

/// CONNACK, session not present, accepted.
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// How many times the controller has reloaded its CRL.
fn reloads(ctl: &Controller) -> usize {
    log_entries(ctl)
        .iter()
        .filter(|e| e["message"] == "CRL reloaded")
        .count()
}

/// The serials of `device`'s certificates, from the database.
async fn serials(ctl: &Controller, device: &str) -> Vec<String> {
    let db = ctl.db().await.unwrap();
    let v = sqlx::query_scalar("SELECT serial FROM certificates WHERE device_id = ?")
        .bind(device)
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    v
}

/// The CRL file as the controller wrote it: its number, nextUpdate and revoked serials.
fn crl(ctl: &Controller) -> (u64, i64, HashSet<String>) {
    let path = ctl.data.join("crl.pem");
    let crls = pifleet_controller::pki::tls::load_crls(&path).unwrap();
    let serials = pifleet_controller::pki::tls::revoked_serials(&crls).unwrap();
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crls[0]).unwrap();
    let number = parsed
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap();
    let next = parsed.next_update().unwrap().timestamp();
    (number, next, serials)
}

/// `POST /api/v1/devices/{id}/revoke` as `admin`.
async fn api_revoke(api: &Api, admin: &str, id: &str) -> pifleet_tests::api::Resp {
    api.post(
        &format!("/api/v1/devices/{id}/revoke"),
        Some(admin),
        &json!({}),
    )
    .await
    .unwrap()
}

/// Waits until a fresh session with `dev`'s certificate is refused.
async fn until_refused(ctl: &Controller, dev: &Agent) {
    wait_for(Duration::from_secs(10), "connections refused", || async {
        let (_c, mut ev) = session(ctl, dev, &dev.id).ok()?;
        connack(&mut ev).await.is_err().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_sessions_that_have_not_sent_connect() {
    let ctl = Controller::start().await.unwrap();
    let dev = Agent::enroll(&ctl, "pi-held", 60).unwrap();
    let connect = connect_packet("pi-held");

    // Positive control: the same raw CONNECT is accepted before the revocation.
    let mut control = raw_tls(&ctl, &dev).await.unwrap();
    assert_eq!(
        write_and_read(&mut control, &connect).await.unwrap(),
        RawAnswer::Bytes(CONNACK_OK.to_vec()),
        "{}",
        ctl.log()
    );
    drop(control);

    // One session holds its finished handshake without a byte of MQTT; another has sent
    // part of its CONNECT.
    let mut held = raw_tls(&ctl, &dev).await.unwrap();
    let mut partial = raw_tls(&ctl, &dev).await.unwrap();
    partial.write_all(&connect[..5]).await.unwrap();
    partial.flush().await.unwrap();

    let before = reloads(&ctl);
    ctl.revoke("pi-held").unwrap();
    wait_for(Duration::from_secs(10), "CRL reload", || async {
        (reloads(&ctl) > before).then_some(())
    })
    .await
    .unwrap();

    // Both are refused and closed, with no CONNACK.
    assert_eq!(
        write_and_read(&mut held, &connect).await.unwrap(),
        RawAnswer::Closed,
        "a handshaken session registered after its revocation\n{}",
        ctl.log()
    );
    assert_eq!(
        write_and_read(&mut partial, &connect[5..]).await.unwrap(),
        RawAnswer::Closed,
        "a session mid-CONNECT registered after its revocation\n{}",
        ctl.log()
    );
    wait_for(Duration::from_secs(10), "refusals logged", || async {
        (count_entries(&ctl, REFUSED, "revoked", Some("pi-held")) >= 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    assert_eq!(ctl.online("pi-held").await, Some(0));
    // And a fresh handshake is refused too.
    let mut fresh = match raw_tls(&ctl, &dev).await {
        Ok(s) => s,
        Err(_) => return, // refused during the handshake itself: fine
    };
    assert_eq!(
        write_and_read(&mut fresh, &connect).await.unwrap(),
        RawAnswer::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_from_cli_and_api_all_reach_the_crl() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let devs: Vec<Agent> = (0..10)
        .map(|i| Agent::enroll(&ctl, &format!("pi-rev-{i:02}"), 60).unwrap())
        .collect();
    for d in &devs {
        let (_c, mut ev) = session(&ctl, d, &d.id).unwrap();
        connack(&mut ev)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", d.id));
    }

    // Ten revocations at once: even devices from the command line, odd ones via the API.
    let mut jobs = tokio::task::JoinSet::new();
    for (i, d) in devs.iter().enumerate() {
        let id = d.id.clone();
        if i % 2 == 0 {
            let bin = pifleet_tests::harness::bin("pifleet-controller").unwrap();
            let data = ctl.data.clone();
            jobs.spawn(async move {
                let out = tokio::process::Command::new(bin)
                    .args(["device", "revoke", &id, "--data-dir"])
                    .arg(&data)
                    .output()
                    .await
                    .unwrap();
                (
                    id,
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            });
        } else {
            let api = api.clone();
            let admin = admin.clone();
            jobs.spawn(async move {
                let r = api_revoke(&api, &admin, &id).await;
                (id, r.status == 204, r.text)
            });
        }
    }
    while let Some(j) = jobs.join_next().await {
        let (id, ok, detail) = j.unwrap();
        assert!(ok, "revoking {id} failed: {detail}\n{}", ctl.log());
    }

    // Every certificate is on the CRL as it stands now, and none of them can connect.
    let (_, _, listed) = crl(&ctl);
    for d in &devs {
        for s in serials(&ctl, &d.id).await {
            assert!(listed.contains(&s), "{} ({s}) is not on the CRL", d.id);
        }
    }
    for d in &devs {
        until_refused(&ctl, d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_the_crl_missed_is_enforced_and_published() {
    let ctl = Controller::start_with("[pki]\ncrl_check_s = 1")
        .await
        .unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-missed", 1).unwrap();
    agent.start().unwrap();
    wait_for(Duration::from_secs(20), "pi-missed online", || async {
        (ctl.online("pi-missed").await == Some(1)).then_some(())
    })
    .await
    .unwrap();
    let (number, _, listed) = crl(&ctl);
    let serial = serials(&ctl, "pi-missed").await.remove(0);
    assert!(!listed.contains(&serial));

    // What a `device revoke` leaves behind when it committed but could not write the CRL
    // (a full disk, a crash in between): revoked in the database only.
    let db = ctl.db_rw().await.unwrap();
    let now = now_ms();
    sqlx::query("UPDATE devices SET revoked_at = ? WHERE id = 'pi-missed'")
        .bind(now)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE certificates SET revoked_at = ? WHERE device_id = 'pi-missed'")
        .bind(now)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    wait_entry(&ctl, 0, DISCONNECTED, "revoked", Some("pi-missed"))
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "the CRL to list it", || async {
        let (n, _, listed) = crl(&ctl);
        (n > number && listed.contains(&serial)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    agent.kill9();
    until_refused(&ctl, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_revocation_publishes_the_crl_again() {
    // Only revocations publish here (the periodic check is an hour away).
    let ctl = Controller::start_with("[pki]\ncrl_check_s = 3600")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let _a = Agent::enroll(&ctl, "pi-retry-a", 60).unwrap();
    let _b = Agent::enroll(&ctl, "pi-retry-b", 60).unwrap();
    let crl_path = ctl.data.join("crl.pem");
    let saved = std::fs::read(&crl_path).unwrap();

    // The CRL cannot be written (a directory stands in its way): the revocation reaches
    // the database, and both the command line and the API say it failed.
    std::fs::remove_file(&crl_path).unwrap();
    std::fs::create_dir(&crl_path).unwrap();
    std::fs::write(crl_path.join("blocker"), b"x").unwrap();
    let out = ctl.cli(&["device", "revoke", "pi-retry-a"]).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run the revocation again"), "{stderr}");
    let r = api_revoke(&api, &admin, "pi-retry-b").await;
    assert_eq!(r.status, 500, "{}", r.text);

    // The way clears; retrying each revocation publishes the CRL with both.
    std::fs::remove_dir_all(&crl_path).unwrap();
    std::fs::write(&crl_path, &saved).unwrap();
    let r = api_revoke(&api, &admin, "pi-retry-b").await;
    assert_eq!(r.status, 409, "{}", r.text);
    let (_, _, listed) = crl(&ctl);
    for s in serials(&ctl, "pi-retry-b").await {
        assert!(listed.contains(&s), "the API retry did not publish the CRL");
    }
    let out = ctl.cli(&["device", "revoke", "pi-retry-a"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already revoked"));
    let (_, _, listed) = crl(&ctl);
    for s in serials(&ctl, "pi-retry-a").await {
        assert!(listed.contains(&s), "the CLI retry did not publish the CRL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_is_renewed_before_its_next_update() {
    let ctl = Controller::start_with(
        "[pki]\ncrl_check_s = 1\ncrl_refresh_s = 1\ncrl_next_update_days = 1",
    )
    .await
    .unwrap();
    let (first, _, _) = crl(&ctl);
    let (later, next_update, _) = wait_for(Duration::from_secs(15), "a renewed CRL", || async {
        let c = crl(&ctl);
        (c.0 > first + 1).then_some(c)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    let now = now_ms() / 1000;
    assert!(later > first);
    assert!(
        (now + 86_400 - 120..=now + 86_400 + 5).contains(&next_update),
        "nextUpdate {next_update}, now {now}"
    );
}
