//! Devices enrolled after a backup, through a restore, with the real binaries: after the
//! restore the device the database does not know reconnects with its certificate (our CA,
//! not revoked), is re-registered from it and flagged for review (device API, list filter,
//! `device list`, audit), its telemetry is stored, commands to it are refused until an
//! admin reviews it and then run (its receipts verify against the recorded key). A device
//! enrolled and revoked after the backup stays out although the CRL cannot name it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use pifleet_tests::api::Api;
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::harness::{Agent, Controller, bin, wait_for};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(40);

fn logs(ctl: &Controller, agents: &[&Agent]) -> String {
    let mut s = format!("--- controller log:\n{}", ctl.log());
    for a in agents {
        s += &format!("--- agent {} log:\n{}", a.id, a.log());
    }
    s
}

fn started(ctl: &Controller, id: &str) -> Agent {
    let mut a = Agent::enroll(ctl, id, 1).unwrap();
    a.set_backoff_max(1).unwrap();
    a.start().unwrap();
    a
}

async fn streams(ctl: &Controller, a: &Agent, n: usize) {
    let r = wait_for(LONG, &format!("{} streams", a.id), || async {
        (ctl.seqs(&a.id).await.ok()?.len() >= n).then_some(())
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", logs(ctl, &[a])));
}

async fn ping(api: &Api, token: &str, device: &str) -> pifleet_tests::api::Resp {
    api.post(
        "/api/v1/commands",
        Some(token),
        &json!({ "devices": [device], "action": { "kind": "ping" } }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolled_after_the_backup_comes_back_flagged_for_review() {
    let mut ctl = Controller::start_with("[backup]\nenabled = false\n")
        .await
        .unwrap();
    let old = started(&ctl, "rr-old");
    streams(&ctl, &old, 2).await;
    let out_dir = ctl.tmp.path().join("backups");
    let made = ctl
        .cli(&["backup", "create", "--out", out_dir.to_str().unwrap()])
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let file = String::from_utf8_lossy(&made.stdout).trim().to_owned();

    // After the backup: one device enrolls and stays, another enrolls and is revoked.
    let new = started(&ctl, "rr-new");
    let gone = started(&ctl, "rr-gone");
    streams(&ctl, &new, 2).await;
    streams(&ctl, &gone, 1).await;
    let revoked = ctl.cli(&["device", "revoke", "rr-gone"]).unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    ctl.stop();

    let old_dir = ctl.data.to_str().unwrap().to_owned();
    let restored = ctl.tmp.path().join("restored");
    let r = Command::new(bin("pifleet-controller").unwrap())
        .args(["backup", "restore", &file, "--data-dir"])
        .arg(&restored)
        .args(["--revocations", &old_dir])
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    ctl.data = restored;
    ctl.serve().await.unwrap();
    let all = [&old, &new, &gone];

    // The unknown device reconnects by itself and its telemetry is stored.
    let r = wait_for(
        LONG,
        "rr-new streams to the restored controller",
        || async { (!ctl.seqs("rr-new").await.ok()?.is_empty()).then_some(()) },
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&ctl, &all)));
    streams(&ctl, &old, 3).await;

    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let r = api
        .get("/api/v1/devices/rr-new", Some(&admin))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let dev = r.json();
    assert_eq!(dev["needs_review"], true, "{dev}");
    assert_eq!(
        dev["review_reason"],
        "re-registered after restore: not in the database"
    );
    assert_eq!(dev["certificates"].as_array().unwrap().len(), 1, "{dev}");
    let r = api
        .get("/api/v1/devices/rr-old", Some(&admin))
        .await
        .unwrap();
    assert_eq!(r.json()["needs_review"], false, "{}", r.text);
    let r = api
        .get("/api/v1/devices?needs_review=true", Some(&admin))
        .await
        .unwrap();
    let ids: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["rr-new"], "{}", r.text);
    let listed = ctl.cli(&["device", "list", "--needs-review"]).unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("rr-new") && listed.contains("re-registered after restore"),
        "{listed}"
    );
    assert!(!listed.contains("rr-old"), "{listed}");
    let reregistered = audit(&api, &admin, Some("device.reregister"), &[]).await;
    assert!(
        reregistered
            .iter()
            .any(|e| e["target"] == "rr-new" && e["outcome"] == "needs_review"),
        "{reregistered:?}"
    );

    // The device revoked after the backup tried, and stays out.
    let r = wait_for(LONG, "rr-gone refused", || async {
        ctl.log().contains("device_revoked").then_some(())
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&ctl, &all)));
    assert_ne!(ctl.online("rr-gone").await, Some(1));
    let r = api
        .get("/api/v1/devices/rr-gone", Some(&admin))
        .await
        .unwrap();
    assert_eq!(r.json()["status"], "revoked", "{}", r.text);
    assert_eq!(ctl.seqs("rr-gone").await.unwrap(), Vec::<i64>::new());

    // No command before review; after it, one runs and its signed receipt verifies.
    let doc = problem(&ping(&api, &admin, "rr-new").await, 409, "unreviewed");
    assert!(doc["detail"].as_str().unwrap().contains("review"), "{doc}");
    let r = api
        .post("/api/v1/devices/rr-new/review", Some(&admin), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let r = api
        .post("/api/v1/devices/rr-new/review", Some(&admin), &json!({}))
        .await
        .unwrap();
    problem(&r, 409, "already reviewed");
    let r = ping(&api, &admin, "rr-new").await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["commands"][0]["id"].as_str().unwrap().to_owned();
    let done: Value = wait_for(LONG, "the ping succeeds", || async {
        let j = api
            .get(&format!("/api/v1/commands/{id}"), Some(&admin))
            .await
            .ok()?
            .json();
        (j["status"] == "succeeded").then_some(j)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&ctl, &all)));
    assert_eq!(done["device"], "rr-new", "{done}");
    let reviewed = audit(&api, &admin, Some("device.review"), &[]).await;
    assert!(
        reviewed.iter().any(|e| e["outcome"] == "ok"),
        "{reviewed:?}"
    );
    ctl.stop();
}
