//! Backups through the admin API, end to end through the real binary: refused without an age
//! recipient (and plain backups never listed nor served), then created, listed, downloaded
//! (streamed, its SHA-256 in a header, decryptable with the identity and sound by `backup
//! verify`) and deleted; names that the list did not produce are refused; only admins get
//! in; every call is audited, reads too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use pifleet_tests::api::Api;
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::harness::{Controller, bin, merge_config};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_lists_downloads_and_deletes_encrypted_backups_only() {
    let mut ctl = Controller::start_with("[backup]\nenabled = false\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let operator = api.user(&admin, "op", "operator").await.unwrap();

    // No recipient: nothing is made, and a plain backup made on the host stays invisible.
    let r = api
        .post("/api/v1/backups", Some(&admin), &json!({}))
        .await
        .unwrap();
    let doc = problem(&r, 409, "create without a recipient");
    assert!(
        doc["detail"].as_str().unwrap().contains("recipient"),
        "{doc}"
    );
    assert_eq!(doc["code"], "backup_recipient_missing");
    let plain = ctl.cli(&["backup", "create"]).unwrap();
    assert!(plain.status.success(), "{plain:?}");
    let plain_path = String::from_utf8_lossy(&plain.stdout).trim().to_owned();
    let plain_name = plain_path.rsplit('/').next().unwrap().to_owned();
    assert!(plain_name.ends_with(".tar"), "{plain_name}");
    let r = api.get("/api/v1/backups", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(names(&r.json()), Vec::<String>::new());
    let r = api
        .get(&format!("/api/v1/backups/{plain_name}"), Some(&admin))
        .await
        .unwrap();
    problem(&r, 404, "a plain backup is not served");

    // With a recipient.
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    ctl.stop();
    merge_config(
        &ctl.data.join("config.toml"),
        &format!("[backup]\nrecipient = \"{recipient}\"\n"),
    )
    .unwrap();
    // Sessions outlive a restart.
    ctl.serve().await.unwrap();

    let r = api
        .post("/api/v1/backups", Some(&operator), &json!({}))
        .await
        .unwrap();
    problem(&r, 403, "operators may not make backups");
    let r = api.get("/api/v1/backups", Some(&operator)).await.unwrap();
    problem(&r, 403, "operators may not list backups");

    let r = api
        .post("/api/v1/backups", Some(&admin), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}\n{}", r.text, ctl.log());
    let made = r.json();
    let name = made["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("pifleet-backup-") && name.ends_with(".tar.age"),
        "{made}"
    );
    let sha = made["sha256"].as_str().unwrap().to_owned();
    let r = api.get("/api/v1/backups", Some(&admin)).await.unwrap();
    assert_eq!(names(&r.json()), vec![name.clone()], "{}", r.text);

    // Download: the bytes, their length and their checksum agree with the listing.
    let resp = api
        .client
        .get(format!("{}/api/v1/backups/{name}", api.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("x-backup-sha256"), sha);
    let length: u64 = header("content-length").parse().unwrap();
    assert_eq!(length, made["size"].as_u64().unwrap());
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, length);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    // It is a sound backup, for whoever holds the identity.
    let copy = ctl.tmp.path().join(&name);
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::write(
        format!("{}.sha256", copy.display()),
        format!("{sha}  {name}\n"),
    )
    .unwrap();
    let id_file = ctl.tmp.path().join("identity.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_file, identity.to_string().expose_secret()).unwrap();
    }
    let verify = Command::new(bin("pifleet-controller").unwrap())
        .args(["backup", "verify"])
        .arg(&copy)
        .arg("--identity")
        .arg(&id_file)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");

    // Names the list did not produce.
    for bad in [
        plain_name.as_str(),
        "..%2Fconfig.toml",
        "%2E%2E",
        "pifleet-backup-19990101T000000Z.tar.age",
        &format!("{name}.sha256"),
    ] {
        let r = api
            .get(&format!("/api/v1/backups/{bad}"), Some(&admin))
            .await
            .unwrap();
        assert!(
            r.status == 404 || r.status == 400,
            "{bad}: {} {}",
            r.status,
            r.text
        );
        let r = api
            .call(
                Method::DELETE,
                &format!("/api/v1/backups/{bad}"),
                Some(&admin),
                None,
            )
            .await
            .unwrap();
        assert!(
            r.status == 404 || r.status == 400,
            "{bad}: {} {}",
            r.status,
            r.text
        );
    }
    assert!(std::path::Path::new(&plain_path).exists());

    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{name}"),
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let r = api.get("/api/v1/backups", Some(&admin)).await.unwrap();
    assert_eq!(names(&r.json()), Vec::<String>::new());
    let dir = ctl.data.join("backups");
    assert!(!dir.join(&name).exists());
    assert!(!dir.join(format!("{name}.sha256")).exists());

    // Every call is in the audit log, the reads and the refusals too.
    for (action, outcome) in [
        ("backup.create", "ok"),
        ("backup.create", "refused: 409"),
        ("backup.create", "denied"),
        ("backup.list", "ok"),
        ("backup.download", "ok"),
        ("backup.download", "refused: 404"),
        ("backup.delete", "ok"),
        ("backup.delete", "refused: 404"),
    ] {
        let entries = audit(&api, &admin, Some(action), &[]).await;
        assert!(
            entries.iter().any(|e| e["outcome"] == outcome),
            "{action} {outcome}: {entries:?}"
        );
    }
    let downloads = audit(&api, &admin, Some("backup.download"), &[]).await;
    assert!(
        downloads
            .iter()
            .any(|e| e["detail"].as_str().unwrap_or("").contains(&sha)),
        "{downloads:?}"
    );
    ctl.stop();
}
