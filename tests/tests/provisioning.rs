//! Enrolling a fleet from one image: a provisioning token enrolls up to its count of
//! devices that all have the same hostname (this machine's), each with its own board
//! serial and no `--device-id`; the controller gives each a distinct id (the hostname, then
//! the hostname with a suffix from the serial), the labels of the token, and an audit entry
//! naming the token. The device past the count is refused, a revoked token enrolls nothing
//! more, and the devices it enrolled stay. Devices of a token that requires approval wait,
//! with nothing signed, until an admin accepts (they enroll) or rejects them (they stop).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use pifleet_tests::harness::{Controller, bin};

/// `pifleet-agent enroll` with `token`, no device id, the board serial `serial`, into `dir`.
fn enroll_command(ctl: &Controller, token: &str, dir: &Path, serial: &str) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let serial_file = dir.join("serial-number");
    // As the device tree holds it: NUL-terminated.
    std::fs::write(&serial_file, format!("{serial}\0")).unwrap();
    let mut cmd = Command::new(bin("pifleet-agent").unwrap());
    cmd.args(["enroll", "--controller", &ctl.url(), "--token", token])
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .arg("--serial-file")
        .arg(&serial_file);
    cmd
}

/// [`enroll_command`], run to its end.
fn enroll(ctl: &Controller, token: &str, dir: &Path, serial: &str) -> Output {
    enroll_command(ctl, token, dir, serial).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn provisioning_token(ctl: &Controller, max: &str) -> String {
    let out = ctl
        .cli(&[
            "token",
            "create",
            "--max-uses",
            max,
            "--ttl",
            "1h",
            "--label",
            "site=lab",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("provisioning token for up to {max} devices")),
        "{}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provisioning_token_enrolls_a_fleet_of_identical_images() {
    let ctl = Controller::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let token = provisioning_token(&ctl, "20");

    let mut ids = BTreeSet::new();
    for i in 0..20 {
        let out = enroll(
            &ctl,
            &token,
            &tmp.path().join(format!("pi{i}")),
            &format!("10000000{i:08x}"),
        );
        assert!(out.status.success(), "device {i}: {}", text(&out.stderr));
        let config = std::fs::read_to_string(tmp.path().join(format!("pi{i}/agent.toml"))).unwrap();
        let id = config
            .lines()
            .find_map(|l| l.strip_prefix("device_id = "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        assert!(ids.insert(id.clone()), "device {i} got a taken id {id}");
    }
    assert_eq!(ids.len(), 20);
    // The same serial always gives the same suffix; the ids are the hostname's.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = pifleet_shared::DeviceId::sanitize(hostname.trim());
    if let Some(host) = &host {
        assert!(
            ids.contains(host.as_str()),
            "the first takes the hostname: {ids:?}"
        );
        assert!(
            ids.iter()
                .all(|id| id == host.as_str() || id.starts_with(&format!("{host}-"))),
            "{ids:?}"
        );
    }

    // The 21st is refused: the token enrolled its 20.
    let out = enroll(&ctl, &token, &tmp.path().join("pi20"), "1000000000000014");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("provisioning token has enrolled its 20 devices"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tmp.path().join("pi20/agent.toml").exists());

    // Every device carries the token's labels; every use is audited with the token.
    let db = ctl.db().await.unwrap();
    let labelled: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE labels = '{\"site\":\"lab\"}'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(labelled, 20);
    let token_id: String = sqlx::query_scalar("SELECT id FROM enrollment_tokens")
        .fetch_one(&db)
        .await
        .unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'device.enroll' AND detail = ?",
    )
    .bind(format!("token={token_id}"))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(audited, 20);
    let listed = ctl.cli(&["token", "list"]).unwrap();
    assert!(
        text(&listed.stdout).contains("provisioning, 20 of 20 used"),
        "{}",
        text(&listed.stdout)
    );

    // A second token, revoked after one device: it enrolls nothing more; the device stays.
    let second = provisioning_token(&ctl, "5");
    let out = enroll(&ctl, &second, &tmp.path().join("late0"), "2000000000000001");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id: String = sqlx::query_scalar("SELECT id FROM enrollment_tokens WHERE max_uses = 5")
        .fetch_one(&db)
        .await
        .unwrap();
    let out = ctl.cli(&["token", "revoke", &id]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = enroll(&ctl, &second, &tmp.path().join("late1"), "2000000000000002");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("enrollment token revoked"),
        "{}",
        text(&out.stderr)
    );
    let devices: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE revoked_at IS NULL")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(devices, 21, "the devices the revoked token enrolled stay");
    db.close().await;

    // A token cannot be both provisioning and for one named device.
    let out = ctl
        .cli(&["token", "create", "--max-uses", "3", "--name", "pi-x"])
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_enrolls_itself_at_first_boot_and_keeps_its_allowlists() {
    let ctl = Controller::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let token = provisioning_token(&ctl, "10");
    let dir = tmp.path().join("etc-pifleet");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("serial-number"), "10000000c0ffee01\0").unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[enroll]\ncontroller = \"{}\"\ntoken = \"{token}\"\ninterval_s = 1\n\
             serial_file = \"{}\"\n\n[commands]\nservices = [\"kiosk.service\"]\n\n\
             [watchdog]\npoll_s = 7\n",
            ctl.url(),
            dir.join("serial-number").display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(bin("pifleet-agent").unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let db = ctl.db().await.unwrap();
    let online = pifleet_tests::harness::wait_for(
        std::time::Duration::from_secs(60),
        "the first-boot device online",
        || {
            let db = db.clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT id FROM devices WHERE online = 1 AND labels = '{\"site\":\"lab\"}'",
                )
                .fetch_optional(&db)
                .await
                .ok()
                .flatten()
            }
        },
    )
    .await;
    let _ = agent.kill();
    let out = agent.wait_with_output().unwrap();
    let id = online.unwrap_or_else(|e| panic!("{e}\n{}", text(&out.stderr)));
    db.close().await;
    // Rewritten as a normal configuration: the id, no token, the image's allowlists kept.
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains(&format!("device_id = \"{id}\"")),
        "{written}"
    );
    assert!(
        !written.contains("[enroll]") && !written.contains(&token),
        "{written}"
    );
    assert!(written.contains("kiosk.service"), "{written}");
    assert!(written.contains("poll_s = 7"), "{written}");
    // Started again, it is a normal agent (no second enrollment).
    let out = ctl.cli(&["token", "list"]).unwrap();
    assert!(
        text(&out.stdout).contains("provisioning, 1 of 10 used"),
        "{}",
        text(&out.stdout)
    );
}

/// [`enroll_command`] started in the background (it waits while the device is pending).
fn enroll_in_background(
    ctl: &Controller,
    token: &str,
    dir: &Path,
    serial: &str,
) -> std::process::Child {
    enroll_command(ctl, token, dir, serial)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a background enrollment to end; its exit status and stderr.
async fn finished(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let status = pifleet_tests::harness::wait_for(
        std::time::Duration::from_secs(30),
        "the enrollment to end",
        || {
            let done = child.try_wait().unwrap();
            async move { done }
        },
    )
    .await;
    let status = status.unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}");
    });
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_a_token_that_requires_approval_wait_for_an_admin() {
    let ctl = Controller::start_with("[enrollment]\npending_retry_s = 1\n")
        .await
        .unwrap();
    let api = pifleet_tests::api::Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = ctl
        .cli(&["token", "create", "--max-uses", "5", "--require-approval"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();

    // Two devices ask; both wait, listed with the key each made.
    let first = enroll_in_background(&ctl, &token, &tmp.path().join("a"), "30000000000000a1");
    let second = enroll_in_background(&ctl, &token, &tmp.path().join("b"), "30000000000000b2");
    let requests = pifleet_tests::harness::wait_for(
        std::time::Duration::from_secs(30),
        "two enrollment requests",
        || {
            let api = api.clone();
            let admin = admin.clone();
            async move {
                let r = api
                    .get("/api/v1/enrollment-requests", Some(&admin))
                    .await
                    .ok()?;
                let v: serde_json::Value = serde_json::from_str(&r.text).ok()?;
                let list = v.as_array()?.clone();
                (list.len() == 2).then_some(list)
            }
        },
    )
    .await
    .unwrap();
    assert!(requests.iter().all(|r| r["status"] == "pending"));
    assert!(
        requests
            .iter()
            .all(|r| r["key_fingerprint"].as_str().unwrap().len() == 64)
    );
    // Nothing is signed and no device exists while they wait.
    let db = ctl.db().await.unwrap();
    let devices: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(devices, 0);
    assert!(!tmp.path().join("a/device.crt").exists());
    // The key a waiting device made is the one listed (the agent keeps it across asks).
    let key_a = std::fs::read_to_string(tmp.path().join("a/device.key")).unwrap();
    assert!(key_a.contains("PRIVATE KEY"));

    // An admin accepts the first through the API.
    let accept_id = requests[0]["id"].as_str().unwrap().to_owned();
    let reject_device = requests[1]["device_id"].as_str().unwrap().to_owned();
    let r = api
        .post(
            &format!("/api/v1/enrollment-requests/{accept_id}/accept"),
            Some(&admin),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let again = api
        .post(
            &format!("/api/v1/enrollment-requests/{accept_id}/accept"),
            Some(&admin),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 409, "{}", again.text);
    // The other is rejected from the command line, by device id.
    let out = ctl.cli(&["device", "reject", &reject_device]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (a_status, a_err) = finished(first).await;
    let (b_status, b_err) = finished(second).await;
    let accepted = requests[0]["device_id"].as_str().unwrap();
    let (ok_dir, ok_status, ok_err, no_status, no_err, no_dir) =
        if tmp.path().join("a/agent.toml").exists() {
            ("a", a_status, a_err, b_status, b_err, "b")
        } else {
            ("b", b_status, b_err, a_status, a_err, "a")
        };
    assert!(ok_status.success(), "{ok_err}");
    assert!(ok_err.contains("waiting for approval"), "{ok_err}");
    let config = std::fs::read_to_string(tmp.path().join(ok_dir).join("agent.toml")).unwrap();
    assert!(
        config.contains(&format!("device_id = \"{accepted}\"")),
        "{config}"
    );
    assert!(!no_status.success());
    assert!(no_err.contains("rejected"), "{no_err}");
    assert!(!tmp.path().join(no_dir).join("agent.toml").exists());

    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM devices")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(ids, [accepted.to_owned()]);
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE action LIKE 'enrollment_request.%' \
         OR action = 'device.enroll_request' ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        audited
            .iter()
            .filter(|a| *a == "device.enroll_request")
            .count(),
        2,
        "{audited:?}"
    );
    assert!(
        audited.contains(&"enrollment_request.accept".to_owned()),
        "{audited:?}"
    );
    assert!(
        audited.contains(&"enrollment_request.reject".to_owned()),
        "{audited:?}"
    );
    db.close().await;
}
