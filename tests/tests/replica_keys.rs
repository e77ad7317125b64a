//! Controllers sharing a PostgreSQL database must hold the same key files: one whose files
//! differ from those the database records reports itself not ready, naming them, until it
//! holds the same; a rotation on one controller records its new files, so the others are
//! not ready until the operator copies them; `rotate adopt-keys` makes a controller's files
//! the record. Meanwhile such a controller sends no command: the others do.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::pgkit::{PgFleet, counts};
use pifleet_tests::scalekit::{Cluster, stdout};

/// `/readyz`'s status and body.
async fn readyz(api: &Api) -> (u16, String) {
    api.get("/readyz", None)
        .await
        .map_or((0, String::new()), |r| (r.status, r.text))
}

/// Waits until `/readyz` answers `status` with a body containing `naming`.
async fn wait_ready(api: &Api, status: u16, naming: &str, why: &str, logs: impl Fn() -> String) {
    let waited = wait_for(Duration::from_secs(20), why, || async {
        let (s, text) = readyz(api).await;
        (s == status && text.contains(naming)).then_some(())
    })
    .await;
    if let Err(e) = waited {
        panic!("{e}: {:?}\n{}", readyz(api).await, logs());
    }
}

fn run(ctl: &Controller, args: &[&str]) {
    let out = ctl.cli(args).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_whose_keys_differ_is_not_ready_until_they_agree() {
    let db = PgFleet::start().await;
    let fast = "[auth]\nkey_reload_s = 1";
    let a = Controller::start_init(&db.init_args(), fast).await.unwrap();
    let b = a.replica("").await.unwrap();
    let (api_a, api_b) = (Api::new(&a).unwrap(), Api::new(&b).unwrap());
    let logs = || format!("A:\n{}\nB:\n{}", a.log(), b.log());
    wait_ready(&api_a, 200, "ready", "A ready", logs).await;
    wait_ready(
        &api_b,
        200,
        "ready",
        "B (a copy of A's data dir) ready",
        logs,
    )
    .await;

    // C looks at its key files only hourly, but is told of a rotation at once.
    let mut c = a.replica("[auth]\nkey_reload_s = 3600").await.unwrap();
    let api_c = Api::new(&c).unwrap();
    wait_ready(&api_c, 200, "ready", "C ready", || c.log()).await;

    // A rotation on A records A's new access-token keys: B, still holding the old ones
    // (it would refuse A's tokens), is not ready and says which file; A stays ready.
    run(&a, &["rotate", "jwt-key"]);
    // C, from the announcement, well before its next look.
    wait_ready(&api_c, 503, "jwt.key", "C told of A's rotation", || c.log()).await;
    c.stop();
    wait_ready(
        &api_b,
        503,
        "jwt.key",
        "B not ready after A's rotation",
        logs,
    )
    .await;
    assert_eq!(readyz(&api_a).await.0, 200, "{}", logs());
    // Tokens A signs now are refused by B meanwhile: that is what not ready protects from.
    // The operator copies the file: B is ready again, without a restart.
    std::fs::copy(a.data.join("jwt.key"), b.data.join("jwt.key")).unwrap();
    wait_ready(&api_b, 200, "ready", "B ready once it holds A's keys", logs).await;

    // A controller whose release key was replaced by hand is not the fleet's until an
    // operator says so with adopt-keys; then the other one is the odd one out.
    let other = a.cli(&["rotate", "release-key"]).unwrap();
    assert!(other.status.success());
    wait_ready(
        &api_b,
        503,
        "release",
        "B not ready after A's release-key rotation",
        logs,
    )
    .await;
    // B's files become the record instead (e.g. A's rotation was the mistake).
    run(&b, &["rotate", "adopt-keys"]);
    wait_ready(
        &api_b,
        200,
        "ready",
        "B ready after adopting its keys",
        logs,
    )
    .await;
    wait_ready(
        &api_a,
        503,
        "release",
        "A not ready: its files are no longer the record",
        logs,
    )
    .await;
    let (_, text) = readyz(&api_a).await;
    assert!(
        text.contains("keys:") && text.contains("adopt-keys"),
        "{text}"
    );

    // Every adoption is audited.
    let audit = a.cli(&["audit", "list"]).unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("rotate.adopt_keys"), "{audit}");
}

/// Through an external broker any controller can send any device's commands: one whose keys
/// differ leaves them to the others, and sends again once its keys agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_whose_keys_differ_sends_no_command() {
    let cluster = Cluster::start(2, "[auth]\nkey_reload_s = 1", 5)
        .await
        .unwrap();
    let pool = cluster.pool();
    let Cluster {
        mut ctls,
        broker,
        db: _db,
    } = cluster;
    let b = ctls.pop().unwrap();
    let mut a = ctls.pop().unwrap();
    let api_b = Api::new(&b).unwrap();
    let logs = || {
        format!(
            "A:\n{}\nB:\n{}\nbroker:\n{}",
            a.log(),
            b.log(),
            broker.log()
        )
    };
    let mut agent = Agent::enroll(&a, "pi-a", 1).unwrap();
    agent.start().unwrap();
    wait_for(Duration::from_secs(30), "a sample from the agent", || {
        let pool = pool.clone();
        async move { (!counts(&pool).await.is_empty()).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // A's keys change; A stops: B alone, with other keys, must not send.
    run(&a, &["rotate", "jwt-key"]);
    wait_ready(&api_b, 503, "jwt.key", "B not ready", logs).await;
    a.stop();
    let logs = || format!("B:\n{}\nbroker:\n{}", b.log(), broker.log());
    let data = b.data.display().to_string();
    let sent = stdout(
        &b,
        &[
            "cmd",
            "send",
            "--data-dir",
            &data,
            "--device",
            "pi-a",
            "ping",
        ],
    );
    let id = sent.split('\t').next().unwrap().trim().to_owned();
    let status = || {
        let (pool, id) = (pool.clone(), id.clone());
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM commands WHERE id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Several of B's dispatch polls and key checks pass: the command stays queued.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status().await, "queued", "{}", logs());

    // The copy arrives: B is ready and sends it; the agent carries it out.
    std::fs::copy(a.data.join("jwt.key"), b.data.join("jwt.key")).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the ping succeeded through B",
        || async { (status().await == "succeeded").then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    agent.stop();
}
