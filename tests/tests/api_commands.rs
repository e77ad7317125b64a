//! Remote commands through the admin API, with real agents: sent by device id and by label
//! selector, run to a final state, queued for an offline device and cancelled there, listed
//! with filters and paging, and invalid or unauthorised requests refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::{Api, Resp};
use pifleet_tests::apikit::problem;
use pifleet_tests::fleetkit::{WAIT, fleet, get, ok};
use pifleet_tests::harness::{Controller, now_ms, wait_for};
use serde_json::{Value, json};

/// Polls a command until it is in a final state; returns it.
async fn final_command(api: &Api, token: &str, id: &str) -> Value {
    wait_for(WAIT, &format!("command {id} final"), || async {
        let j = api
            .get(&format!("/api/v1/commands/{id}"), Some(token))
            .await
            .ok()?
            .json();
        let s = j["status"].as_str()?.to_owned();
        ["succeeded", "failed", "rejected", "expired", "cancelled"]
            .contains(&s.as_str())
            .then_some(j)
    })
    .await
    .unwrap()
}

/// Sends a ping to `device`: the created (command id, device).
async fn send_ping(api: &Api, token: &str, device: &str) -> Vec<(String, String)> {
    created(
        api.post(
            "/api/v1/commands",
            Some(token),
            &json!({ "devices": [device], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
    )
}

/// Waits until the controller sees `device` online (or offline).
async fn until_online(ctl: &Controller, device: &str, online: bool) {
    wait_for(WAIT, &format!("{device} online = {online}"), || async {
        (ctl.online(device).await == Some(i64::from(online))).then_some(())
    })
    .await
    .unwrap();
}

/// Command ids and devices of a 202 answer.
fn created(r: Resp) -> Vec<(String, String)> {
    let j = ok(r, 202, "send command");
    j["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["device"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_sent_listed_and_cancelled_through_the_api() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let mut pis = fleet(&ctl, &api, &admin).await;
    let op = api.user(&admin, "olga", "operator").await.unwrap();
    let viewer = api.user(&admin, "vera", "viewer").await.unwrap();

    // One device by id.
    let before = now_ms();
    let sent = send_ping(&api, &op, "pi-1").await;
    let after = now_ms();
    assert_eq!(sent.len(), 1);
    let (ping, device) = &sent[0];
    assert_eq!(device, "pi-1");
    assert!(
        ping.len() == 32
            && ping
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{ping}"
    );
    let c = final_command(&api, &viewer, ping).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    assert_eq!(c["id"], ping.as_str());
    assert_eq!(c["device"], "pi-1");
    assert_eq!(c["action"], json!({ "kind": "ping" }));
    assert_eq!(c["reason"], Value::Null);
    let created_at = c["created_at"].as_i64().unwrap();
    assert!((before..=after).contains(&created_at), "{c}");
    for t in ["sent_at", "finished_at"] {
        assert!(c[t].as_i64().unwrap() >= created_at, "{t}: {c}");
    }
    // The default TTL (`commands.default_ttl_s`, one hour) counts from the request.
    let expires = c["expires_at"].as_i64().unwrap();
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&expires),
        "{c}"
    );

    // By selector: every matching device, each gets its own command.
    let before = now_ms();
    let sent = created(
        api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "selector": { "site": "lobby" }, "action": { "kind": "ping" }, "ttl_s": 120 }),
        )
        .await
        .unwrap(),
    );
    let after = now_ms();
    let mut devices: Vec<&str> = sent.iter().map(|(_, d)| d.as_str()).collect();
    devices.sort_unstable();
    assert_eq!(devices, ["pi-1", "pi-2"]);
    assert_ne!(sent[0].0, sent[1].0);
    for (id, device) in &sent {
        let c = final_command(&api, &op, id).await;
        assert_eq!(
            (c["status"].as_str(), c["device"].as_str()),
            (Some("succeeded"), Some(device.as_str())),
            "{c}"
        );
        let expires = c["expires_at"].as_i64().unwrap();
        assert!(
            (before + 120_000..=after + 120_000).contains(&expires),
            "{c}"
        );
    }
    problem(
        &api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "selector": { "site": "moon" }, "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        404,
        "selector matching nothing",
    );

    // Offline device: the command waits, and can be cancelled while it does.
    pis[2].stop();
    until_online(&ctl, "pi-3", false).await;
    let sent = send_ping(&api, &op, "pi-3").await;
    let waiting = sent[0].0.clone();
    let c = get(&api, &op, &format!("/api/v1/commands/{waiting}")).await;
    assert_eq!(c["status"], "queued", "{c}");
    assert_eq!(c["sent_at"], Value::Null);
    let cancel = format!("/api/v1/commands/{waiting}/cancel");
    problem(
        &api.post(&cancel, Some(&viewer), &json!({})).await.unwrap(),
        403,
        "viewer cancels",
    );
    let j = ok(
        api.post(&cancel, Some(&op), &json!({})).await.unwrap(),
        200,
        "cancel",
    );
    assert_eq!(j, json!({ "id": waiting, "status": "cancelled" }));
    let c = get(&api, &op, &format!("/api/v1/commands/{waiting}")).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    problem(
        &api.post(&cancel, Some(&op), &json!({})).await.unwrap(),
        409,
        "cancel twice",
    );
    problem(
        &api.post(
            &format!("/api/v1/commands/{ping}/cancel"),
            Some(&op),
            &json!({}),
        )
        .await
        .unwrap(),
        409,
        "cancel a finished command",
    );
    let unknown = "0".repeat(32);
    problem(
        &api.post(
            &format!("/api/v1/commands/{unknown}/cancel"),
            Some(&op),
            &json!({}),
        )
        .await
        .unwrap(),
        404,
        "cancel unknown",
    );
    problem(
        &api.get(&format!("/api/v1/commands/{unknown}"), Some(&op))
            .await
            .unwrap(),
        404,
        "show unknown",
    );
    for bad in ["xyz", "ABABABABABABABABABABABABABABABAB"] {
        problem(
            &api.get(&format!("/api/v1/commands/{bad}"), Some(&op))
                .await
                .unwrap(),
            400,
            bad,
        );
        problem(
            &api.post(
                &format!("/api/v1/commands/{bad}/cancel"),
                Some(&op),
                &json!({}),
            )
            .await
            .unwrap(),
            400,
            bad,
        );
    }
    // The agent, back online, never runs the cancelled command.
    pis[2].start();
    until_online(&ctl, "pi-3", true).await;
    let after = send_ping(&api, &op, "pi-3").await;
    let c = final_command(&api, &op, &after[0].0).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    let c = get(&api, &op, &format!("/api/v1/commands/{waiting}")).await;
    assert_eq!(
        (c["status"].as_str(), &c["sent_at"]),
        (Some("cancelled"), &Value::Null)
    );

    // The list: newest first, filtered and paged.
    let all = get(&api, &viewer, "/api/v1/commands").await;
    assert_eq!(all["total"], 5, "{all}");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["id"], after[0].0.as_str());
    assert_eq!(items[1]["id"], waiting.as_str());
    assert_eq!(items[4]["id"], ping.as_str());
    let created_ats: Vec<i64> = items
        .iter()
        .map(|c| c["created_at"].as_i64().unwrap())
        .collect();
    assert!(
        created_ats.windows(2).all(|w| w[0] >= w[1]),
        "{created_ats:?}"
    );
    assert!(
        items.iter().all(|c| c.get("stdout").is_none()),
        "list carries no output"
    );
    let count = |j: &Value| -> (i64, usize) {
        (
            j["total"].as_i64().unwrap(),
            j["items"].as_array().unwrap().len(),
        )
    };
    let j = get(&api, &viewer, "/api/v1/commands?device=pi-1").await;
    assert_eq!(count(&j), (2, 2));
    assert!(
        j["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["device"] == "pi-1")
    );
    let j = get(&api, &viewer, "/api/v1/commands?status=succeeded").await;
    assert_eq!(count(&j), (4, 4));
    let j = get(&api, &viewer, "/api/v1/commands?status=cancelled").await;
    assert_eq!(count(&j), (1, 1));
    assert_eq!(j["items"][0]["id"], waiting.as_str());
    let j = get(
        &api,
        &viewer,
        "/api/v1/commands?device=pi-3&status=succeeded",
    )
    .await;
    assert_eq!(count(&j), (1, 1));
    let j = get(&api, &viewer, "/api/v1/commands?limit=2&offset=1").await;
    assert_eq!(count(&j), (5, 2));
    assert_eq!(j["items"][0]["id"], waiting.as_str());
    let j = get(&api, &viewer, "/api/v1/commands?device=pi-9").await;
    assert_eq!(count(&j), (0, 0));
    let j = get(&api, &viewer, "/api/v1/commands?action=ping").await;
    let kinds: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"]["kind"] == "ping")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let got: Vec<&str> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(!kinds.is_empty());
    assert_eq!(got, kinds, "{j}");
    for query in [
        "action=shell",
        "status=done",
        "device=Not%20An%20Id",
        "limit=0",
        "limit=501",
        "offset=-1",
    ] {
        problem(
            &api.get(&format!("/api/v1/commands?{query}"), Some(&viewer))
                .await
                .unwrap(),
            400,
            query,
        );
    }

    // Invalid requests: nothing is created.
    let bad = [
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "service", "op": "restart", "unit": "kiosk;reboot" } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "service", "op": "restart", "unit": "$(id)" } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "script", "name": "report", "args": ["a|b"] } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "journal", "unit": "kiosk", "lines": 0 } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "shell", "cmd": "id" } }),
            422,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "ping" }, "ttl_s": 0 }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "ping" }, "ttl_s": 604_801 }),
            400,
        ),
        (json!({ "devices": [], "action": { "kind": "ping" } }), 400),
        (
            json!({ "devices": ["Pi 1"], "action": { "kind": "ping" } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "selector": { "site": "lobby" }, "action": { "kind": "ping" } }),
            400,
        ),
        (json!({ "action": { "kind": "ping" } }), 400),
        (
            json!({ "devices": ["pi-9"], "action": { "kind": "ping" } }),
            404,
        ),
        (
            json!({ "devices": ["pi-1", "pi-9"], "action": { "kind": "ping" } }),
            404,
        ),
    ];
    for (body, status) in bad {
        let r = api
            .post("/api/v1/commands", Some(&op), &body)
            .await
            .unwrap();
        problem(&r, status, &body.to_string());
    }
    problem(
        &api.post(
            "/api/v1/commands",
            Some(&viewer),
            &json!({ "devices": ["pi-1"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        403,
        "viewer sends",
    );
    assert_eq!(get(&api, &viewer, "/api/v1/commands").await["total"], 5);
    for p in &mut pis {
        p.stop();
    }
}
