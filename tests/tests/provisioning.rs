//! Enrolling a fleet from one image: a provisioning token enrolls up to its count of
//! devices that all have the same hostname (this machine's), each with its own board
//! serial and no `--device-id`; the controller gives each a distinct id (the hostname, then
//! the hostname with a suffix from the serial), the labels of the token, and an audit entry
//! naming the token. The device past the count is refused, a revoked token enrolls nothing
//! more, and the devices it enrolled stay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use pifleet_tests::harness::{Controller, bin};

/// `pifleet-agent enroll` with `token`, no device id, the board serial `serial`, into `dir`.
fn enroll(ctl: &Controller, token: &str, dir: &Path, serial: &str) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    let serial_file = dir.join("serial-number");
    // As the device tree holds it: NUL-terminated.
    std::fs::write(&serial_file, format!("{serial}\0")).unwrap();
    Command::new(bin("pifleet-agent").unwrap())
        .args(["enroll", "--controller", &ctl.url(), "--token", token])
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .arg("--serial-file")
        .arg(&serial_file)
        .output()
        .unwrap()
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
