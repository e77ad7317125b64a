//! Property-based conformance of the admin API to its own OpenAPI document, with
//! schemathesis (`scripts/check` installs it and exports `PIFLEET_SCHEMATHESIS`): generated
//! requests to every operation, signed in as the admin, against a controller with a real
//! agent reporting; no response may be a 5xx, and every response must match the documented
//! status, media type and schema. The controller must stay up and the audit chain intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, wait_for};
use serde_json::Value;

/// Generated cases per operation: enough to reach the edges of every parameter and to
/// follow links between operations, small enough for a run of about a minute.
const MAX_EXAMPLES: &str = "100";

/// Operations left out, by operation id. Each ends or locks out the session the run signs
/// in with, which would turn every later request into a 401/403 and test nothing:
/// `logout` ends it; `revoke_session` ends it too once schemathesis learns the session id
/// (it does, from `GET /me/sessions`); `set_settings` can require MFA for admins, which
/// confines the admin to their own account. `events` is a stream that stays open until the
/// access token expires: schemathesis would wait on it (it is tested in `api_live`). The
/// device routes open only to a device certificate, which schemathesis cannot present: every
/// answer would be a 401 (they are tested in `deploy`).
const EXCLUDED: [&str; 6] = [
    "logout",
    "revoke_session",
    "set_settings",
    "events",
    "device_release_manifest",
    "device_release_archive",
];

fn schemathesis() -> PathBuf {
    let Some(path) = std::env::var_os("PIFLEET_SCHEMATHESIS") else {
        panic!(
            "PIFLEET_SCHEMATHESIS is not set: run this test through scripts/check, which \
             installs schemathesis and exports the path of its executable"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "PIFLEET_SCHEMATHESIS={} is not an executable file",
        path.display()
    );
    path
}

/// How many operations the OpenAPI document declares.
fn operations(doc: &Value) -> usize {
    doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| {
            ["get", "post", "put", "patch", "delete"]
                .iter()
                .filter(|m| item.get(**m).is_some())
                .count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_conforms_to_its_openapi_document() {
    let st = schemathesis();
    let ctl = Controller::start_with("[auth]\nrate_per_minute = 100000\nrate_burst = 100000")
        .await
        .unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-1", 1).unwrap();
    agent.start().unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    wait_for(Duration::from_secs(30), "telemetry from pi-1", || async {
        let r = api
            .get("/api/v1/devices/pi-1/telemetry", Some(&admin))
            .await
            .ok()?;
        (r.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    let doc = api.get("/api/v1/openapi.json", None).await.unwrap().json();
    let total = operations(&doc);

    let mut cmd = Command::new(st);
    cmd.arg("--no-color")
        .arg("run")
        .arg(format!(
            "https://127.0.0.1:{}/api/v1/openapi.json",
            ctl.https.port()
        ))
        .arg("--tls-verify")
        .arg(ctl.ca_path())
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            // One worker: with two, hypothesis parses lambda sources from two threads at
            // once, which CPython 3.11 can fail with "AST constructor recursion depth
            // mismatch" (a SystemError inside schemathesis, not a finding).
            "--workers",
            "1",
            // No example database left behind in the working directory.
            "--generation-database",
            "none",
        ]);
    for id in EXCLUDED {
        cmd.args(["--exclude-operation-id", id]);
    }
    // schemathesis keeps its run state (`.schemathesis/`, the crash cache) in its working
    // directory: the controller's temporary one, removed with it.
    cmd.current_dir(ctl.tmp.path()).env("NO_COLOR", "1");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{text}\ncontroller log:\n{}",
        out.status,
        ctl.log()
    );
    // Every operation but the excluded ones was tested (an exclusion that matches nothing,
    // after a rename, shows here).
    let tested = total - EXCLUDED.len();
    assert!(
        text.contains(&format!("Selected: {tested}/{total}"))
            && text.contains(&format!("Tested: {tested}")),
        "expected {tested} of {total} operations tested:\n{text}"
    );
    // The run kept its session: it was not 401s all the way.
    assert!(!text.contains("Authentication failed"), "{text}");

    assert!(ctl.alive(), "the controller died:\n{}", ctl.log());
    let r = api.get("/api/v1/audit/verify", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["intact"], true, "{}", r.text);
    let r = api.get("/healthz", None).await.unwrap();
    assert_eq!(r.status, 200);
}
