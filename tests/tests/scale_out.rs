//! The scale-out mode end to end: two controllers on one PostgreSQL, devices on Debian's
//! Mosquitto, real agents. Every sample lands exactly once, also when one controller is
//! killed mid-stream (the other takes its share of the shared subscription); both
//! controllers show the same fleet; a command sent through one is carried out and its
//! receipt recorded; a revoked device is kicked off the broker, cannot reconnect, and
//! whatever it sends meanwhile is dropped.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::harness::{Agent, wait_for};
use pifleet_tests::pgkit::{all_stored_once, counts};
use pifleet_tests::scalekit::{Cluster, stdout, wait_rows};
use sqlx::postgres::PgPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_share_the_fleet_through_mosquitto_and_postgres() {
    let mut cluster = Cluster::start(2, "[pki]\ncrl_check_s = 1", 5)
        .await
        .unwrap();
    let pool = cluster.pool();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b", "pi-c"]
        .iter()
        .map(|id| Agent::enroll(&cluster.ctls[0], id, 1).unwrap())
        .collect();
    for ag in &mut agents {
        ag.start().unwrap();
    }
    wait_rows(&pool, 3, &[], 4, "4 samples from each agent", || {
        cluster.logs()
    })
    .await;

    // Both controllers show the same fleet (from the one database).
    let list_a = stdout(&cluster.ctls[0], &["device", "list"]);
    assert_eq!(list_a, stdout(&cluster.ctls[1], &["device", "list"]));
    for id in ["pi-a", "pi-b", "pi-c"] {
        assert!(list_a.contains(id), "{list_a}");
    }
    // A command through the second controller is carried out and its receipt recorded.
    let data = cluster.ctls[1].data.display().to_string();
    let sent = stdout(
        &cluster.ctls[1],
        &[
            "cmd",
            "send",
            "--data-dir",
            &data,
            "--device",
            "pi-b",
            "ping",
        ],
    );
    let id = sent.split('\t').next().unwrap().trim().to_owned();
    wait_for(Duration::from_secs(30), "the ping succeeded", || {
        let (pool, id) = (pool.clone(), id.clone());
        async move {
            let s: Option<String> = sqlx::query_scalar("SELECT status FROM commands WHERE id = $1")
                .bind(&id)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
            (s.as_deref() == Some("succeeded")).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // kill -9 one controller mid-stream: the other takes every message; none is lost (the
    // agents re-send what was not acknowledged after a commit) or stored twice.
    cluster.ctls[0].kill9();
    let before = counts(&pool).await;
    wait_rows(
        &pool,
        3,
        &before,
        6,
        "samples through the remaining controller",
        || cluster.logs(),
    )
    .await;
    cluster.ctls[0].serve().await.unwrap();
    let before = counts(&pool).await;
    wait_rows(
        &pool,
        3,
        &before,
        3,
        "samples with both controllers again",
        || cluster.logs(),
    )
    .await;
    all_stored_once(&pool, || cluster.logs()).await;

    // Revocation through either controller reaches the broker: the device is kicked and
    // refused at the handshake; nothing it sends afterwards is stored.
    cluster.ctls[1].revoke("pi-c").unwrap();
    let revoked_at = pifleet_tests::harness::now_ms();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let late: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM telemetry WHERE device_id = 'pi-c' AND received_at > $1",
    )
    .bind(revoked_at + 4_000)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        late,
        0,
        "samples of a revoked device stored\n{}",
        cluster.logs()
    );
    // The broker's log: the session was taken over (the kick), and the device never got
    // back in (its handshake meets the reloaded CRL).
    let log = cluster.broker.log();
    let kicked = log
        .find("Client pi-c already connected, closing old connection")
        .unwrap_or_else(|| panic!("pi-c was not kicked\n{}", cluster.logs()));
    assert!(
        !log[kicked..].contains("u'pi-c'"),
        "the revoked device connected again:\n{log}"
    );
    // The others carry on.
    let before = counts(&pool).await;
    wait_for(
        Duration::from_secs(30),
        "the other devices still stream",
        || {
            let (pool, before) = (pool.clone(), before.clone());
            async move {
                let now = counts(&pool).await;
                ["pi-a", "pi-b"]
                    .iter()
                    .all(|d| {
                        let max = |c: &[(String, i64, i64, i64)]| {
                            c.iter().find(|r| r.0 == *d).map_or(0, |r| r.3)
                        };
                        max(&now) >= max(&before) + 2
                    })
                    .then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    for ag in &mut agents {
        ag.stop();
    }
    cluster.ctls[0].stop();
    cluster.ctls[1].stop();
}

async fn readyz(api: &pifleet_tests::api::Api) -> u16 {
    api.get("/readyz", None).await.map_or(0, |r| r.status)
}

/// The broker killed and restarted, then PostgreSQL stopped and started: the controller says
/// it is not ready while either is away, recovers by itself, and the agents' spools bring
/// every sample in exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_and_the_database_come_back_and_nothing_is_lost() {
    let mut c = Cluster::start(1, "[store]\nretry_max_ms = 1000", 30)
        .await
        .unwrap();
    let pool = c.pool();
    let Cluster {
        ctls, broker, db, ..
    } = &mut c;
    let a = &mut ctls[0];
    let api = pifleet_tests::api::Api::new(a).unwrap();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b"]
        .iter()
        .map(|id| Agent::enroll(a, id, 1).unwrap())
        .collect();
    for ag in &mut agents {
        ag.start().unwrap();
    }
    wait_rows(&pool, 2, &[], 3, "3 samples from each agent", || {
        format!("{}\nbroker:\n{}", a.log(), broker.log())
    })
    .await;
    assert_eq!(readyz(&api).await, 200);

    // The broker goes away: not ready; it comes back: ready, and the spools drain.
    broker.kill9();
    wait_for(
        Duration::from_secs(20),
        "not ready without the broker",
        || async { (readyz(&api).await == 503).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart().await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "ready with the broker back",
        || async { (readyz(&api).await == 200).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let before = counts(&pool).await;
    wait_rows(
        &pool,
        2,
        &before,
        3,
        "samples after the broker's restart",
        || format!("{}\nbroker:\n{}", a.log(), broker.log()),
    )
    .await;

    // PostgreSQL stops: not ready; it starts again: ready, and nothing is lost.
    db.cluster.stop().await.unwrap();
    wait_for(
        Duration::from_secs(20),
        "not ready without the database",
        || async { (readyz(&api).await == 503).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.cluster.start_again().await.unwrap();
    wait_for(
        Duration::from_secs(40),
        "ready with the database back",
        || async { (readyz(&api).await == 200).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let pool = PgPool::connect(&db.with_password).await.unwrap();
    let before = counts(&pool).await;
    wait_rows(
        &pool,
        2,
        &before,
        4,
        "samples after the database's restart",
        || format!("{}\nbroker:\n{}", a.log(), broker.log()),
    )
    .await;
    // Samples sent while the database was away were not acknowledged: the agents send them
    // again from their spools, after the newer ones.
    all_stored_once(&pool, || format!("{}\nbroker:\n{}", a.log(), broker.log())).await;
    for ag in &mut agents {
        ag.stop();
    }
    a.stop();
}
