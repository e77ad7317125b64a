//! A controller is either working or gone, never half alive, end to end through the real
//! binary: a broken database stops it with a non-zero exit and the failing task's name in
//! the log (so systemd restarts it), while a database that is only unavailable for a while
//! turns `/readyz` not-ready until it works again, losing nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::logs::log_entries;
use pifleet_tests::promkit::value;

async fn readyz(api: &Api) -> (u16, String) {
    match api.get("/readyz", None).await {
        Ok(r) => (r.status, r.text),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_database_stops_the_controller_naming_the_task() {
    let mut ctl = Controller::start().await.unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-a", 1).unwrap();
    agent.start().unwrap();
    wait_for(Duration::from_secs(20), "pi-a's first sample", || async {
        (!ctl.seqs("pi-a").await.ok()?.is_empty()).then_some(())
    })
    .await
    .unwrap();

    // The disk returns garbage for the database, its WAL and its shared index.
    for name in ["pifleet.db", "pifleet.db-wal", "pifleet.db-shm"] {
        let path = ctl.data.join(name);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&path, junk).unwrap();
    }

    let status = ctl
        .exited(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the controller kept running\n{}", ctl.log()));
    assert!(!status.success(), "exit status {status}\n{}", ctl.log());
    let failed: Vec<_> = log_entries(&ctl)
        .into_iter()
        .filter(|e| e["message"] == "task failed; the controller stops")
        .collect();
    let first = failed
        .first()
        .unwrap_or_else(|| panic!("no task failure logged\n{}", ctl.log()));
    let task = first["task"].as_str().unwrap_or_default();
    assert!(
        [
            "ingest-writer",
            "dispatcher",
            "fleet-summary",
            "crl",
            "retention"
        ]
        .contains(&task),
        "{first}"
    );
    assert_eq!(first["error"], "the database is broken", "{first}");
    assert!(
        ctl.log().contains(&format!("task {task} failed")),
        "the exit message names the task\n{}",
        ctl.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_makes_the_controller_not_ready_until_it_is_free() {
    let ctl = Controller::start_with("[store]\nbusy_timeout_ms = 200\nretry_max_ms = 500")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-a", 1).unwrap();
    agent.start().unwrap();
    wait_for(Duration::from_secs(20), "pi-a streaming", || async {
        (ctl.seqs("pi-a").await.ok()?.len() >= 2).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(readyz(&api).await.0, 200);

    // Another process takes the database's write lock and keeps it.
    let lock = ctl.hold_write_lock().await.unwrap();
    // The dispatcher may notice first; the ingest writer's commits fail as soon as the
    // agent's next sample arrives.
    let (status, body) = wait_for(Duration::from_secs(20), "not ready", || async {
        let r = readyz(&api).await;
        (r.0 == 503 && r.1.contains("ingest-writer")).then_some(r)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    assert_eq!(status, 503);
    assert!(body.contains("ingest-writer"), "{body}");
    let scrape = std::fs::read_to_string(ctl.data.join("scrape.token")).unwrap();
    let metrics = api.get("/metrics", Some(scrape.trim())).await.unwrap().text;
    assert_eq!(
        value(&metrics, "pifleet_ready{component=\"ingest-writer\"}"),
        Some(0.0),
        "{metrics}"
    );
    // What arrives meanwhile waits in the writer's bounded queue, and its depth shows.
    wait_for(
        Duration::from_secs(20),
        "a message waiting for the writer",
        || async {
            let m = api.get("/metrics", Some(scrape.trim())).await.ok()?.text;
            (value(&m, "pifleet_ingest_queue_depth")? >= 1.0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    let stored_while_locked = ctl.seqs("pi-a").await.unwrap().len();

    // The lock goes: ready again, still running, and every sample arrives, none twice.
    lock.release().await.unwrap();
    wait_for(Duration::from_secs(20), "ready again", || async {
        (readyz(&api).await.0 == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    assert!(ctl.alive());
    let seqs = wait_for(
        Duration::from_secs(30),
        "samples after the lock",
        || async {
            let s = ctl.seqs("pi-a").await.ok()?;
            (s.len() > stored_while_locked + 2).then_some(s)
        },
    )
    .await
    .unwrap();
    let want: Vec<i64> = (1..=*seqs.last().unwrap()).collect();
    assert_eq!(seqs, want, "samples lost or doubled");
    assert!(
        log_entries(&ctl)
            .iter()
            .any(|e| e["message"] == "ready again" && e["component"] == "ingest-writer"),
        "{}",
        ctl.log()
    );
}
