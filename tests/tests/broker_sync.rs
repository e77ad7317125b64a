//! `pifleet-controller broker-sync` end to end: Debian's Mosquitto, PostgreSQL, one
//! controller in external mode that does not touch the broker's files (no `broker_dir`),
//! real agents, and broker-sync run as its own process against the broker's directory with
//! a read-only database role (the GRANT lines of docs/SCALING.md). A revocation through the
//! controller reaches the broker through the database: the broker's crl.pem becomes the
//! database's CRL, the broker is told to reload it, the device's session is ended and its
//! reconnects are refused at the handshake. PostgreSQL going away and coming back does not
//! stop broker-sync; SIGTERM does, cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use pifleet_tests::broker::{Broker, assert_refused_as_revoked};
use pifleet_tests::harness::{Agent, Controller, bin, merge_config, signal, wait_for};
use pifleet_tests::mqtt::{client, client_tls, connack};
use pifleet_tests::pgkit::PgFleet;
use sqlx::postgres::PgPool;

/// broker-sync as a process, its JSON log in a file.
struct Sync {
    child: Child,
    log: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl Sync {
    fn start(broker: &Broker, url: &str, password_file: &std::path::Path) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("broker-sync.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin("pifleet-controller").unwrap())
            .args(["broker-sync", "--store-url", url, "--store-password-file"])
            .arg(password_file)
            .arg("--broker-dir")
            .arg(broker.dir.root())
            .arg("--identity-dir")
            .arg(broker.identity_dir("ctl-2"))
            .args(["--broker", &format!("localhost:{}", broker.controller_port)])
            .args(["--check-s", "1"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            _tmp: tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its JSON log lines whose message is `message`.
    fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A role that may only read what broker-sync reads (docs/SCALING.md gives these lines).
async fn read_only_role(pool: &PgPool, db: &PgFleet) -> (String, std::path::PathBuf) {
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    for sql in [
        "CREATE ROLE pifleet_broker_sync LOGIN PASSWORD 'sync-secret'".to_owned(),
        format!("GRANT CONNECT ON DATABASE \"{name}\" TO pifleet_broker_sync"),
        "GRANT USAGE ON SCHEMA public TO pifleet_broker_sync".to_owned(),
        "GRANT SELECT ON published_crl, certificates TO pifleet_broker_sync".to_owned(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    let url = format!(
        "postgres://pifleet_broker_sync@127.0.0.1:{}/{name}",
        db.cluster.port()
    );
    let file = db.password_file.with_file_name("broker-sync-password");
    std::fs::write(&file, "sync-secret\n").unwrap();
    (url, file)
}

async fn stored_crl(pool: &PgPool) -> (i64, String) {
    sqlx::query_as("SELECT number, pem FROM published_crl WHERE id = 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn logs(ctl: &Controller, sync: &Sync, broker: &Broker) -> String {
    format!(
        "controller:\n{}\nbroker-sync:\n{}\nbroker:\n{}",
        ctl.log(),
        sync.log(),
        broker.log()
    )
}

/// Waits until the broker's crl.pem is the database's CRL; returns its number.
async fn converged(pool: &PgPool, broker: &Broker, above: i64, why: &str) -> Option<i64> {
    wait_for(Duration::from_secs(20), why, || {
        let pool = pool.clone();
        async move {
            let (number, pem) = stored_crl(&pool).await;
            let installed = std::fs::read_to_string(broker.dir.crl()).ok()?;
            (number > above && installed == pem).then_some(number)
        }
    })
    .await
    .ok()
}

/// Revokes `id` through the controller and checks broker-sync's part of it: the database's
/// newer CRL installed, a reload of the broker after it, the device's session ended and its
/// reconnects refused. Returns the installed CRL number.
async fn revoke_and_check(
    ctl: &Controller,
    sync: &Sync,
    broker: &Broker,
    pool: &PgPool,
    agent: &Agent,
    before: i64,
) -> i64 {
    let reloads = broker.log().matches("Reloading config").count();
    ctl.revoke(&agent.id).unwrap();
    let number = converged(pool, broker, before, "the revocation's CRL on the broker")
        .await
        .unwrap_or_else(|| panic!("crl.pem not replaced\n{}", logs(ctl, sync, broker)));
    // The installed CRL lists the device's certificate.
    let serial: String = sqlx::query_scalar(
        "SELECT serial FROM certificates WHERE device_id = $1 AND revoked_at IS NOT NULL",
    )
    .bind(&agent.id)
    .fetch_one(pool)
    .await
    .unwrap();
    // (The controller may publish again meanwhile: a later CRL, listing it as well.)
    let installed = pifleet_controller::broker::sync::installed(&broker.dir).unwrap();
    assert!(installed.number >= u64::try_from(number).unwrap());
    assert!(installed.serials.contains(&serial), "{installed:?}");
    // Nobody but broker-sync signals the broker here: the reload after the revocation is its.
    wait_for(Duration::from_secs(10), "the broker reloading", || async {
        (broker.log().matches("Reloading config").count() > reloads).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(ctl, sync, broker)));
    // broker-sync ended the device's session (the controller may have kicked it too, before
    // the broker knew the new CRL; the agent then got back in until broker-sync's kick).
    wait_for(Duration::from_secs(20), "broker-sync's kick", || async {
        sync.events("revoked device's broker session ended")
            .iter()
            .any(|e| e["device"] == agent.id.as_str())
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(ctl, sync, broker)));
    // The CLI publishes, then the controller may publish again: the install that found the
    // device newly listed is one of those after `before`.
    let installs = sync.events("CRL installed for the broker");
    assert!(
        installs.iter().any(|e| e["number"]
            .as_i64()
            .is_some_and(|n| n > before && n <= number)
            && e["devices"] == 1),
        "{installs:?}"
    );
    // After the last takeover the device never got back in: its handshakes meet the CRL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = broker.log();
    let closing = format!(
        "Client {} already connected, closing old connection",
        agent.id
    );
    let kicked = log
        .rfind(&closing)
        .unwrap_or_else(|| panic!("{} was not kicked\n{}", agent.id, logs(ctl, sync, broker)));
    assert!(
        !log[kicked + closing.len()..].contains(&format!("u'{}'", agent.id)),
        "the revoked device connected again:\n{log}"
    );
    assert_refused_as_revoked(broker, agent).await;
    number
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sync_carries_revocations_to_a_broker_without_a_controller() {
    let db = PgFleet::start().await;
    let (pool, init) = (db.pool.clone(), db.init_args());
    let mut ctl = Controller::start_init(
        &init,
        "[pki]\ncrl_check_s = 1\n\n[store]\nretry_max_ms = 1000",
    )
    .await
    .unwrap();
    let broker = Broker::start(&ctl).await.unwrap();
    ctl.stop();
    // External mode, but not on the broker's host: no broker_dir, no pid_file.
    let remote: String = broker
        .controller_config("ctl-1", 5)
        .lines()
        .filter(|l| !l.starts_with("broker_dir") && !l.starts_with("pid_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!remote.contains(broker.dir.root().to_str().unwrap()));
    merge_config(&ctl.data.join("config.toml"), &remote).unwrap();
    ctl.serve().await.unwrap();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b", "pi-c"]
        .iter()
        .map(|id| Agent::enroll(&ctl, id, 1).unwrap())
        .collect();
    for ag in &mut agents {
        ag.set_backoff_max(1).unwrap();
        ag.start().unwrap();
    }
    let (url, password_file) = read_only_role(&pool, &db).await;
    let mut sync = Sync::start(&broker, &url, &password_file);

    // At start it installs what the database holds (the controller published at start-up).
    let first = converged(&pool, &broker, 0, "the database's CRL on the broker")
        .await
        .unwrap_or_else(|| panic!("never converged\n{}", logs(&ctl, &sync, &broker)));
    for id in ["pi-a", "pi-b", "pi-c"] {
        wait_for(
            Duration::from_secs(30),
            "every device connected",
            || async { broker.log().contains(&format!("u'{id}'")).then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&ctl, &sync, &broker)));
    }

    let second = revoke_and_check(&ctl, &sync, &broker, &pool, &agents[2], first).await;

    // The database goes away and comes back: broker-sync carries on by itself.
    db.cluster.stop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        sync.child.try_wait().unwrap().is_none(),
        "broker-sync ended without its database\n{}",
        sync.log()
    );
    db.cluster.start_again().await.unwrap();
    let pool = PgPool::connect(&db.with_password).await.unwrap();
    revoke_and_check(&ctl, &sync, &broker, &pool, &agents[1], second).await;
    assert!(
        sync.log().contains("broker sync pass failed"),
        "the database's absence went unnoticed\n{}",
        sync.log()
    );

    // The device not revoked carries on.
    let mut c = client_tls(&agents[0].ca(), Some((&agents[0].cert(), &agents[0].key())))
        .map(|tls| client(broker.device_port, "pi-a-probe", tls))
        .unwrap();
    connack(&mut c.1)
        .await
        .unwrap_or_else(|e| panic!("pi-a refused: {e:#}\n{}", broker.log()));

    // SIGTERM ends it cleanly.
    signal(&sync.child, Signal::SIGTERM);
    let status = wait_for(Duration::from_secs(10), "broker-sync to exit", || {
        let status = sync.child.try_wait().unwrap();
        async move { status }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}\n{}", sync.log());
    assert_eq!(
        sync.events("broker sync stopped").len(),
        1,
        "{}",
        sync.log()
    );
    for ag in &mut agents {
        ag.stop();
    }
    ctl.stop();
}

/// Bad arguments are refused before anything starts, each with a clear message: exit 64 for
/// a mistake in the call (2 for what the argument parser refuses), no panic.
#[test]
fn bad_arguments_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let broker_dir = tmp.path().join("broker");
    std::fs::create_dir(&broker_dir).unwrap();
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    std::fs::write(broker_dir.join("ca.crt"), "").unwrap();
    let identity = tmp.path().join("no-identity");
    let run = |dir: &std::path::Path, url: &str, broker: &str, check: &str| {
        Command::new(bin("pifleet-controller").unwrap())
            .args(["broker-sync", "--store-url", url, "--broker-dir"])
            .arg(dir)
            .arg("--identity-dir")
            .arg(&identity)
            .args(["--broker", broker, "--check-s", check])
            .env_remove("PIFLEET_STORE_PASSWORD")
            .output()
            .unwrap()
    };
    let pg = "postgres://sync@127.0.0.1:1/pifleet";
    for (dir, url, broker, check, code, says) in [
        (&broker_dir, pg, "localhost:8884", "0", 2, "--check-s"),
        (&broker_dir, pg, "localhost:8884", "3601", 2, "--check-s"),
        (&broker_dir, pg, "localhost", "5", 64, "expected host:port"),
        (
            &broker_dir,
            pg,
            "localhost:http",
            "5",
            64,
            "expected host:port",
        ),
        (&empty_dir, pg, "localhost:8884", "5", 64, "no ca.crt"),
        (
            &broker_dir,
            "mysql://x/y",
            "localhost:8884",
            "5",
            64,
            "expected postgres://",
        ),
        (&broker_dir, pg, "localhost:8884", "5", 1, "no-identity"),
    ] {
        let out = run(dir, url, broker, check);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{url} {broker} {check}: {stderr}"
        );
        assert!(stderr.contains(says), "{url} {broker} {check}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
