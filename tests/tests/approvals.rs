//! Two-person approval of fleet-wide commands, end to end with real agents: a command to
//! more devices than `approvals.device_threshold` (or to the whole fleet) is held until a
//! second admin approves it; the one who asked cannot; an approval binds the device set and
//! only then creates the commands; a rejected or expired request sends nothing; with one
//! admin such a request is refused naming the setting; the command line is held to the same
//! rule; every step is in the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use pifleet_tests::api::Api;
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::fleetkit::{WAIT, fleet, get, ok};
use pifleet_tests::harness::{Controller, bin, wait_for};
use serde_json::{Value, json};

fn ping_to(selector: Value) -> Value {
    json!({ "selector": selector, "action": { "kind": "ping" } })
}

async fn command_total(api: &Api, token: &str) -> i64 {
    get(api, token, "/api/v1/commands?limit=1").await["total"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_command_waits_for_a_second_admin() {
    let ctl = Controller::start_with("[approvals]\ndevice_threshold = 1\nexpiry_s = 600\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let _pis = fleet(&ctl, &api, &admin).await;
    let op = api.user(&admin, "olga", "operator").await.unwrap();

    // One enabled admin: nobody could approve, so the request is refused and names the rule.
    let doc = problem(
        &api.post(
            "/api/v1/commands",
            Some(&op),
            &ping_to(json!({ "site": "lobby" })),
        )
        .await
        .unwrap(),
        409,
        "one admin",
    );
    let detail = doc["detail"].as_str().unwrap();
    assert!(detail.contains("approvals.device_threshold"), "{detail}");
    assert_eq!(command_total(&api, &admin).await, 0);

    // Under the threshold, a command goes out at once.
    let j = ok(
        api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "devices": ["pi-3"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        202,
        "one device",
    );
    assert_eq!(j["commands"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j["approval"], Value::Null);

    let second = api.user(&admin, "alma", "admin").await.unwrap();

    // Two devices: held. No command exists until it is approved.
    let before = command_total(&api, &admin).await;
    let j = ok(
        api.post(
            "/api/v1/commands",
            Some(&op),
            &ping_to(json!({ "site": "lobby" })),
        )
        .await
        .unwrap(),
        202,
        "held",
    );
    assert_eq!(j["commands"], json!([]), "{j}");
    let approval = &j["approval"];
    assert_eq!(approval["status"], "pending", "{j}");
    assert_eq!(approval["device_count"], 2);
    assert_eq!(approval["requested_by"], "user:olga");
    let id = approval["id"].as_str().unwrap().to_owned();
    assert_eq!(command_total(&api, &admin).await, before);
    let pending = get(&api, &op, "/api/v1/approvals?pending=true").await;
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");

    // An operator cannot decide; an admin cannot approve their own request.
    problem(
        &api.post(
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&op),
            &json!({}),
        )
        .await
        .unwrap(),
        403,
        "operator approves",
    );
    let own = ok(
        api.post(
            "/api/v1/commands",
            Some(&admin),
            &ping_to(json!({ "site": "lobby" })),
        )
        .await
        .unwrap(),
        202,
        "admin asks",
    );
    let own_id = own["approval"]["id"].as_str().unwrap().to_owned();
    let doc = problem(
        &api.post(
            &format!("/api/v1/approvals/{own_id}/approve"),
            Some(&admin),
            &json!({}),
        )
        .await
        .unwrap(),
        403,
        "self-approval",
    );
    assert!(
        doc["detail"].as_str().unwrap().contains("own request"),
        "{doc}"
    );
    assert_eq!(command_total(&api, &admin).await, before);

    // The second admin approves: the device set is bound, and commands go to exactly it.
    let done = ok(
        api.post(
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&second),
            &json!({}),
        )
        .await
        .unwrap(),
        200,
        "approve",
    );
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["decided_by"], "user:alma");
    assert_eq!(done["targets"], json!(["pi-1", "pi-2"]));
    assert_eq!(command_total(&api, &admin).await, before + 2);
    wait_for(WAIT, "both approved pings succeed", || async {
        let page = get(&api, &op, "/api/v1/commands?status=succeeded&limit=500").await;
        let mut devices: Vec<String> = page["items"]
            .as_array()?
            .iter()
            .map(|c| c["device"].as_str().unwrap_or_default().to_owned())
            .collect();
        devices.sort();
        (devices == ["pi-1", "pi-2", "pi-3"]).then_some(())
    })
    .await
    .unwrap();
    // Deciding twice is refused.
    problem(
        &api.post(
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&second),
            &json!({}),
        )
        .await
        .unwrap(),
        409,
        "approve twice",
    );

    // A rejected request sends nothing, and cannot be approved afterwards.
    let rejected = ok(
        api.post(
            &format!("/api/v1/approvals/{own_id}/reject"),
            Some(&second),
            &json!({}),
        )
        .await
        .unwrap(),
        200,
        "reject",
    );
    assert_eq!(rejected["status"], "rejected");
    problem(
        &api.post(
            &format!("/api/v1/approvals/{own_id}/approve"),
            Some(&second),
            &json!({}),
        )
        .await
        .unwrap(),
        409,
        "approve a rejected request",
    );
    assert_eq!(command_total(&api, &admin).await, before + 2);

    // The command line is held to the same rule: it asks, and sends nothing.
    let out = Command::new(bin("pifleet-controller").unwrap())
        .args(["cmd", "send", "--data-dir"])
        .arg(&ctl.data)
        .args(["--selector", "site=lobby", "ping"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("approval "), "{stdout}");
    assert!(stdout.contains("pending"), "{stdout}");
    assert_eq!(command_total(&api, &admin).await, before + 2);
    let listed = ctl.cli(&["approval", "list", "--pending"]).unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("\tpending\tcli:"), "{listed}");

    // Every step is in the audit log.
    let approvals = audit(&api, &second, Some("approval.approve"), &[]).await;
    let outcomes: Vec<&str> = approvals
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert!(outcomes.contains(&"ok"), "{approvals:?}");
    assert!(
        outcomes.iter().any(|o| *o != "ok"),
        "refused approvals are audited too: {approvals:?}"
    );
    assert_eq!(
        audit(&api, &second, Some("approval.reject"), &[])
            .await
            .len(),
        1
    );
    let requested = audit(&api, &second, Some("command.request"), &[]).await;
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert!(requested[0]["actor"].as_str().unwrap().starts_with("cli:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_cannot_be_approved() {
    let ctl = Controller::start_with("[approvals]\ndevice_threshold = 0\nexpiry_s = 1\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let _pis = fleet(&ctl, &api, &admin).await;
    let second = api.user(&admin, "alma", "admin").await.unwrap();
    let j = ok(
        api.post(
            "/api/v1/commands",
            Some(&admin),
            &json!({ "devices": ["pi-1"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        202,
        "held",
    );
    let id = j["approval"]["id"].as_str().unwrap().to_owned();
    wait_for(WAIT, "the request expires", || async {
        let a = api
            .get(&format!("/api/v1/approvals/{id}"), Some(&second))
            .await
            .ok()?
            .json();
        (a["status"] == "expired").then_some(())
    })
    .await
    .unwrap();
    let doc = problem(
        &api.post(
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&second),
            &json!({}),
        )
        .await
        .unwrap(),
        409,
        "approve expired",
    );
    assert!(doc["detail"].as_str().unwrap().contains("expired"), "{doc}");
    assert_eq!(command_total(&api, &admin).await, 0);
}
