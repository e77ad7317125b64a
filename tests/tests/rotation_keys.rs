//! `rotate command-key` with a running controller and agents: the running controller
//! announces the new key (signed by the old one) without a restart; a running agent
//! confirms it and runs commands signed by it; during the overlap a device that has not
//! confirmed still gets commands signed by the old key; an agent stopped through two
//! rotations and the end of the overlap comes back, follows the chain and runs a
//! new-key command; `--finish` leaves devices trusting the newest key only; `rotate
//! status` lists who has not confirmed; every step is audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_shared::signing::TrustedKey;
use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::logs::log_entries;

const WAIT: Duration = Duration::from_secs(30);

/// The id of the key in the data dir's `command.pub`.
fn controller_key(ctl: &Controller) -> String {
    let pem = std::fs::read_to_string(ctl.data.join("command.pub")).unwrap();
    TrustedKey::from_pem(&pem).unwrap().id.to_string()
}

/// The ids of the command keys the agent trusts (its `command.pub`).
fn agent_keys(agent: &Agent) -> Vec<String> {
    let pem = std::fs::read_to_string(agent.dir.join("command.pub")).unwrap();
    TrustedKey::all_from_pem(&pem)
        .unwrap()
        .iter()
        .map(|k| k.id.to_string())
        .collect()
}

fn rotate(ctl: &Controller, args: &[&str]) -> String {
    let mut all = vec!["rotate"];
    all.extend_from_slice(args);
    let out = ctl.cli(&all).unwrap();
    assert!(
        out.status.success(),
        "rotate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn start(ctl: &Controller, agent: &mut Agent) {
    agent.start().unwrap();
    let id = agent.id.clone();
    wait_for(WAIT, "agent online", || {
        let id = id.clone();
        async move { (ctl.online(&id).await == Some(1)).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

async fn stop(ctl: &Controller, agent: &mut Agent) {
    agent.stop();
    let id = agent.id.clone();
    wait_for(WAIT, "agent offline", || {
        let id = id.clone();
        async move { (ctl.online(&id).await == Some(0)).then_some(()) }
    })
    .await
    .unwrap();
}

/// Waits until the controller records that `device` confirmed `key` by an announcement.
async fn confirmed(ctl: &Controller, agent: &Agent, key: &str) {
    wait_for(WAIT, &format!("{} to confirm {key}", agent.id), || async {
        let db = ctl.db().await.ok()?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM command_key_acks WHERE device_id = ? AND key_id = ? \
             AND command_id IS NOT NULL",
        )
        .bind(&agent.id)
        .bind(key)
        .fetch_one(&db)
        .await
        .ok()?;
        db.close().await;
        (n == 1).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.log(), ctl.log()));
}

/// Sends a ping; once it succeeded, returns the id of the key that signed it.
async fn ping(ctl: &Controller, agent: &Agent) -> String {
    let id = ctl
        .ping(&agent.id, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.log(), ctl.log()));
    log_entries(ctl)
        .iter()
        .rev()
        .find(|e| e["message"] == "command sent" && e["command"] == id.as_str())
        .and_then(|e| e["key"].as_str().map(str::to_owned))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_command_key_reaches_running_and_returning_agents() {
    let ctl = Controller::start_with("[auth]\nkey_reload_s = 1\n")
        .await
        .unwrap();
    let mut a = Agent::enroll(&ctl, "pi-on", 5).unwrap();
    let mut b = Agent::enroll(&ctl, "pi-late", 5).unwrap();
    let mut c = Agent::enroll(&ctl, "pi-away", 5).unwrap();
    for agent in [&mut a, &mut b, &mut c] {
        start(&ctl, agent).await;
    }
    let k0 = controller_key(&ctl);
    assert_eq!(ping(&ctl, &a).await, k0);
    stop(&ctl, &mut b).await;
    stop(&ctl, &mut c).await;

    // Rotation 1: the running agent confirms and trusts both keys during the overlap;
    // its commands are signed with the new key.
    rotate(&ctl, &["command-key", "--overlap-s", "600"]);
    let k1 = controller_key(&ctl);
    assert_ne!(k1, k0);
    confirmed(&ctl, &a, &k1).await;
    assert_eq!(agent_keys(&a), [k0.clone(), k1.clone()]);
    assert_eq!(ping(&ctl, &a).await, k1);
    // A device enrolled now pins the new key, and its commands are signed with it.
    let mut fresh = Agent::enroll(&ctl, "pi-new", 5).unwrap();
    assert_eq!(agent_keys(&fresh), std::slice::from_ref(&k1));
    start(&ctl, &mut fresh).await;
    assert_eq!(ping(&ctl, &fresh).await, k1);

    // A device that has not confirmed (its announcement refused, as an older agent
    // would) still gets commands signed by the key it trusts during the overlap.
    let db = ctl.db_rw().await.unwrap();
    wait_for(WAIT, "pi-late's announcement", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM commands WHERE device_id = 'pi-late' \
             AND action_kind = 'trust_command_keys'",
        )
        .fetch_one(&db)
        .await
        .ok()?;
        (n == 1).then_some(())
    })
    .await
    .unwrap();
    sqlx::query(
        "UPDATE commands SET status = 'rejected', reason = 'test: an older agent' \
         WHERE device_id = 'pi-late' AND action_kind = 'trust_command_keys'",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    start(&ctl, &mut b).await;
    assert_eq!(ping(&ctl, &b).await, k0, "{}", ctl.log());
    assert_eq!(agent_keys(&b), std::slice::from_ref(&k0));

    // Rotation 2, then the overlap ends: only the newest key signs, and devices are told
    // to trust it alone.
    rotate(&ctl, &["command-key", "--overlap-s", "600"]);
    let k2 = controller_key(&ctl);
    let status = rotate(&ctl, &["status"]);
    assert!(status.contains(&k2), "{status}");
    let pending = status
        .lines()
        .find(|l| l.starts_with("devices that have not confirmed command key"))
        .unwrap();
    assert!(pending.contains("pi-away"), "{status}");
    // The same, for an administrator over the API.
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let r = api.get("/api/v1/rotation", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
    assert_eq!(v["command_keys"][0]["key_id"], k2.as_str(), "{v}");
    assert_eq!(v["command_keys"][0]["state"], "signing", "{v}");
    assert_eq!(v["command_keys"][1]["state"], "overlap", "{v}");
    let pending: Vec<&str> = v["command_key_pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(pending.contains(&"pi-away"), "{v}");
    confirmed(&ctl, &a, &k2).await;
    rotate(&ctl, &["command-key", "--finish"]);
    wait_for(WAIT, "pi-on to trust the newest key only", || async {
        (agent_keys(&a) == [k2.clone()]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.log(), ctl.log()));
    assert_eq!(ping(&ctl, &a).await, k2);
    // The device whose announcement was refused is told again after the finish.
    wait_for(WAIT, "pi-late to trust the newest key", || async {
        (agent_keys(&b) == [k2.clone()]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", b.log(), ctl.log()));

    // The agent that was away through both rotations trusts only k0, which no longer
    // signs: it follows the chain k0 → k1 → k2 and runs a command signed by k2.
    assert_eq!(agent_keys(&c), std::slice::from_ref(&k0));
    start(&ctl, &mut c).await;
    wait_for(WAIT, "pi-away to follow the chain", || async {
        (agent_keys(&c) == [k2.clone()]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.log(), ctl.log()));
    assert_eq!(ping(&ctl, &c).await, k2);
    // A restart keeps what it learned.
    stop(&ctl, &mut c).await;
    start(&ctl, &mut c).await;
    assert_eq!(ping(&ctl, &c).await, k2);

    let status = rotate(&ctl, &["status"]);
    assert!(
        status.contains(&format!(
            "devices that have not confirmed command key {k2}: none"
        )),
        "{status}"
    );
    // The release keys came with enrollment: nobody is waiting for them.
    assert!(
        status.contains("devices that have not confirmed them and are not being told: none"),
        "{status}"
    );
    let db = ctl.db().await.unwrap();
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE action LIKE 'rotate.command_key%' \
         AND outcome = 'ok' ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        audited,
        [
            "rotate.command_key",
            "rotate.command_key",
            "rotate.command_key_finish"
        ]
    );
    db.close().await;
}
