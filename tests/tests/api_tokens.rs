//! Enrollment tokens through the admin API, with the real agent: the enroll command shown
//! works as is, tokens are single use, a token naming the device forces its id, revoked
//! tokens are refused, and invalid requests create nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::Api;
use pifleet_tests::apikit::problem;
use pifleet_tests::fleetkit::{agent_enroll, api_token, get};
use pifleet_tests::harness::{Controller, now_ms};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_work_with_the_real_agent() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let list = || async { get(&api, &admin, "/api/v1/tokens").await };
    let find = |tokens: &Value, id: &str| -> Value {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("no token {id} in {tokens}"))
            .clone()
    };

    let before = now_ms();
    let t = api_token(
        &api,
        &admin,
        json!({ "ttl_s": 600, "labels": { "site": "lab", "rack": "3" } }),
    )
    .await;
    let after = now_ms();
    let (id, secret) = (t["id"].as_str().unwrap(), t["token"].as_str().unwrap());
    assert!(
        id.len() == 12
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{t}"
    );
    let expires = t["expires_at"].as_i64().unwrap();
    assert!(
        (before + 600_000..=after + 600_000).contains(&expires),
        "{t}"
    );
    let cmd = t["enroll_command"].as_str().unwrap();
    assert_eq!(
        cmd,
        format!(
            "pifleet-agent enroll --controller {} --token {secret}",
            ctl.url()
        )
    );
    let tokens = list().await;
    let info = find(&tokens, id);
    assert_eq!(info["state"], "unused");
    assert_eq!(info["labels"], json!({ "site": "lab", "rack": "3" }));
    assert_eq!(info["expires_at"].as_i64(), Some(expires));
    assert_eq!(
        (&info["used_by"], &info["used_at"]),
        (&Value::Null, &Value::Null)
    );
    assert!(
        !tokens.to_string().contains(secret),
        "the list shows a secret"
    );

    // The enroll command as shown, run by the real agent.
    let args: Vec<&str> = cmd.split(' ').collect();
    assert_eq!(&args[..2], ["pifleet-agent", "enroll"]);
    let out = agent_enroll(&args[2..], &tmp.path().join("a"), Some("pi-lab"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = find(&list().await, id);
    assert_eq!(info["state"], "used");
    assert_eq!(info["used_by"], "pi-lab");
    let used_at = info["used_at"].as_i64().unwrap();
    assert!(used_at >= after && used_at <= now_ms(), "{info}");
    let d = get(&api, &admin, "/api/v1/devices/pi-lab").await;
    assert_eq!(d["labels"], json!({ "site": "lab", "rack": "3" }));
    assert_eq!(d["status"], "offline");
    // Single use.
    let out = agent_enroll(&args[2..], &tmp.path().join("b"), Some("pi-again"));
    assert!(!out.status.success());
    problem(
        &api.get("/api/v1/devices/pi-again", Some(&admin))
            .await
            .unwrap(),
        404,
        "second enrollment with a used token",
    );

    // A token naming the device: the device must propose that id, and the command shown
    // makes it do so.
    let named = api_token(&api, &admin, json!({ "name": "pi-named" })).await;
    let (nid, nsecret) = (
        named["id"].as_str().unwrap(),
        named["token"].as_str().unwrap(),
    );
    assert_eq!(find(&list().await, nid)["name"], "pi-named");
    let cmd = named["enroll_command"].as_str().unwrap();
    assert_eq!(
        cmd,
        format!(
            "pifleet-agent enroll --controller {} --token {nsecret} --device-id pi-named",
            ctl.url()
        )
    );
    let out = agent_enroll(
        &["--controller", &ctl.url(), "--token", nsecret],
        &tmp.path().join("c"),
        Some("pi-proposed"),
    );
    assert!(
        !out.status.success(),
        "enrolled as another id than the token's"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pi-named"), "{stderr}");
    assert_eq!(find(&list().await, nid)["state"], "unused");
    let args: Vec<&str> = cmd.split(' ').collect();
    let out = agent_enroll(&args[2..], &tmp.path().join("c"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&api, &admin, "/api/v1/devices/pi-named").await["id"],
        "pi-named"
    );
    assert_eq!(find(&list().await, nid)["used_by"], "pi-named");
    problem(
        &api.get("/api/v1/devices/pi-proposed", Some(&admin))
            .await
            .unwrap(),
        404,
        "no device for the refused proposal",
    );

    // Revoking an unused token: the agent is refused with it afterwards.
    let unused = api_token(&api, &admin, json!({})).await;
    let uid = unused["id"].as_str().unwrap().to_owned();
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{uid}"),
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    assert_eq!(find(&list().await, &uid)["state"], "revoked");
    let out = agent_enroll(
        &[
            "--controller",
            &ctl.url(),
            "--token",
            unused["token"].as_str().unwrap(),
        ],
        &tmp.path().join("d"),
        Some("pi-late"),
    );
    assert!(!out.status.success(), "enrolled with a revoked token");
    assert!(!tmp.path().join("d").join("device.crt").exists());
    problem(
        &api.get("/api/v1/devices/pi-late", Some(&admin))
            .await
            .unwrap(),
        404,
        "device of a revoked token",
    );
    for (path, status) in [
        (format!("/api/v1/tokens/{uid}"), 404),
        (format!("/api/v1/tokens/{id}"), 404),
        ("/api/v1/tokens/000000000000".to_owned(), 404),
        ("/api/v1/tokens/ABCDEF012345".to_owned(), 400),
        ("/api/v1/tokens/abc".to_owned(), 400),
    ] {
        let r = api
            .call(Method::DELETE, &path, Some(&admin), None)
            .await
            .unwrap();
        problem(&r, status, &path);
    }
    assert_eq!(find(&list().await, id)["state"], "used");

    // Invalid requests create nothing.
    let n = list().await.as_array().unwrap().len();
    for (body, status) in [
        (json!({ "ttl_s": 0 }), 400),
        (json!({ "ttl_s": 10_000_000_000_u64 }), 400),
        (json!({ "ttl_s": -1 }), 422),
        (json!({ "name": "Not An Id" }), 400),
        (json!({ "labels": { "Site": "x" } }), 400),
        (json!({ "labels": { "site": "x" }, "uses": 5 }), 422),
    ] {
        let r = api
            .post("/api/v1/tokens", Some(&admin), &body)
            .await
            .unwrap();
        problem(&r, status, &body.to_string());
    }
    assert_eq!(list().await.as_array().unwrap().len(), n);
}
