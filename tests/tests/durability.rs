//! Durability end to end: nothing a device produces is lost or stored twice
//! across controller crashes, agent crashes, outages and clean agent restarts, and re-sent
//! samples are idempotent but still acknowledged.
//!
//! "Everything arrived" is decided from the agent's own record, not from timing: a clean
//! SIGTERM makes the spool write `clean_next` (the next seq it would hand out) to its state
//! file, so `clean_next - 1` is the highest seq that agent ever produced. After the stop the
//! controller must hold exactly `1..=clean_next - 1` for that device. While agents run, the
//! highest seq produced so far is the last record of the spool's newest segment (records are
//! written with write(2) before publishing, and the newest segment is never deleted), which
//! is also the positive signal that an agent produced samples while the controller was down.

// Test helpers fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use pifleet_shared::{Topic, codec};
use pifleet_tests::harness::{Agent, Controller, now_ms, wait_for};
use pifleet_tests::mqtt;
use rumqttc::{Event, Packet, QoS};
use sqlx::SqlitePool;

/// Generous bound for conditions that normally hold within a few seconds.
const LONG: Duration = Duration::from_secs(40);

/// Logs of the controller and the agents, for failure messages.
fn logs(ctl: &Controller, agents: &[&Agent]) -> String {
    let mut s = format!("--- controller log:\n{}", ctl.log());
    for a in agents {
        s += &format!("--- agent {} log:\n{}", a.id, a.log());
    }
    s
}

/// Stored seqs of `device`, ascending (an error reads as "not yet").
async fn stored(db: &SqlitePool, device: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM telemetry WHERE device_id = ? ORDER BY seq")
        .bind(device)
        .fetch_all(db)
        .await
        .unwrap_or_default()
}

/// `seqs` is exactly 1..=seqs.len() (the primary key already rules out duplicates).
fn contiguous(seqs: &[i64]) -> bool {
    seqs.iter()
        .enumerate()
        .all(|(i, &s)| i64::try_from(i).is_ok_and(|i| s == i + 1))
}

/// Waits until the device's stored seqs are exactly 1..=M with M >= `at_least`; returns M.
async fn wait_contiguous(ctl: &Controller, db: &SqlitePool, agent: &Agent, at_least: u64) -> u64 {
    let what = format!(
        "{}: stored seqs contiguous 1..=M with M >= {at_least}",
        agent.id
    );
    let r = wait_for(LONG, &what, || async {
        let seqs = stored(db, &agent.id).await;
        let max = u64::try_from(seqs.last().copied().unwrap_or(0)).ok()?;
        (contiguous(&seqs) && max >= at_least).then_some(max)
    })
    .await;
    match r {
        Ok(max) => max,
        Err(e) => {
            let seqs = ranges(&stored(db, &agent.id).await);
            panic!("{e}\nstored: {seqs}\n{}", logs(ctl, &[agent]))
        }
    }
}

/// Waits until the agent's spool holds a sample with seq >= `seq` (it produced it).
async fn wait_produced(ctl: &Controller, agent: &Agent, seq: u64) -> u64 {
    let what = format!("{}: spool reaches seq {seq}", agent.id);
    wait_for(LONG, &what, || async {
        let max = agent.spool_max_seq();
        (max >= seq).then_some(max)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(ctl, &[agent])))
}

/// SIGTERM the agent (must exit 0), then require the controller to hold exactly
/// 1..=N, N being the highest seq the agent ever produced (from its clean-shutdown state).
/// Returns N.
async fn stop_and_check_all_stored(ctl: &Controller, db: &SqlitePool, agent: &mut Agent) -> u64 {
    let status = agent.stop().expect("agent was running");
    assert!(
        status.success(),
        "{}: SIGTERM exit {status}\n{}",
        agent.id,
        agent.log()
    );
    let state = agent
        .spool_state()
        .unwrap_or_else(|| panic!("{}: no spool state after a clean stop", agent.id));
    let next = state
        .clean_next
        .unwrap_or_else(|| panic!("{}: clean stop not recorded: {state:?}", agent.id));
    let produced = next - 1;
    let on_disk = agent.spool_max_seq();
    assert!(
        on_disk == 0 || on_disk == produced,
        "{}: spool's newest record {on_disk} vs clean_next {next}",
        agent.id
    );
    let want: Vec<i64> = (1..=i64::try_from(produced).unwrap()).collect();
    let what = format!("{}: controller holds exactly 1..={produced}", agent.id);
    let r = wait_for(Duration::from_secs(15), &what, || async {
        (stored(db, &agent.id).await == want).then_some(())
    })
    .await;
    if let Err(e) = r {
        let seqs = ranges(&stored(db, &agent.id).await);
        panic!(
            "{e}\nstored: {seqs}\nstate: {state:?}\n{}",
            logs(ctl, &[agent])
        );
    }
    produced
}

/// Seqs as compact ranges, for failure messages.
fn ranges(seqs: &[i64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}..={}", seqs[i], seqs[j])
        });
        i = j + 1;
    }
    format!("[{}] ({} rows)", out.join(", "), seqs.len())
}

/// Enrolls an agent at 1 sample/s with a 1 s reconnect backoff cap (so a restarted
/// controller is found again quickly); not started yet.
fn agent(ctl: &Controller, id: &str) -> Agent {
    let a = Agent::enroll(ctl, id, 1).unwrap();
    a.set_backoff_max(1).unwrap();
    a
}

/// (seq, ts, received_at) of every stored sample of `device`, by seq.
async fn rows(db: &SqlitePool, device: &str) -> Vec<(i64, i64, i64)> {
    sqlx::query_as("SELECT seq, ts, received_at FROM telemetry WHERE device_id = ? ORDER BY seq")
        .bind(device)
        .fetch_all(db)
        .await
        .unwrap()
}

/// 1. kill -9 of the controller during a stream from three agents: after the restart every
///    device ends with exactly 1..=N stored, N = everything it produced, outage included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill9_loses_nothing() {
    let mut ctl = Controller::start().await.unwrap();
    let db = ctl.db().await.unwrap();
    let mut agents: Vec<Agent> = ["dur-k9-a", "dur-k9-b", "dur-k9-c"]
        .iter()
        .map(|id| agent(&ctl, id))
        .collect();
    for a in &mut agents {
        a.start().unwrap();
    }
    for a in &agents {
        wait_contiguous(&ctl, &db, a, 3).await;
    }

    ctl.kill9();
    let before: Vec<u64> = agents.iter().map(Agent::spool_max_seq).collect();
    // Down for a few samples' worth of time: each agent spools at least 4 more.
    let mut at_restart = Vec::new();
    for (a, b) in agents.iter().zip(&before) {
        at_restart.push(wait_produced(&ctl, a, b + 4).await);
    }
    ctl.serve().await.unwrap();

    // Backlog and live samples flow again; wait until each device caught up past the outage.
    for (a, r) in agents.iter().zip(&at_restart) {
        wait_contiguous(&ctl, &db, a, r + 2).await;
    }
    for (a, r) in agents.iter_mut().zip(&at_restart) {
        let n = stop_and_check_all_stored(&ctl, &db, a).await;
        assert!(n >= r + 2, "{}: produced {n}, outage ended at {r}", a.id);
        // The outage samples really went through the spool and the drain.
        let connected = a.log_events("connected");
        let backlog = connected.last().and_then(|e| e["backlog"].as_u64());
        assert!(
            connected.len() >= 2 && backlog >= Some(4),
            "{}: backlog at reconnect {backlog:?}\n{}",
            a.id,
            a.log()
        );
    }
}

/// 2. kill -9 of an agent mid-stream: after the restart numbering continues right after the
///    last produced seq — no gap, no duplicate, no reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill9_continues_numbering() {
    let ctl = Controller::start().await.unwrap();
    let db = ctl.db().await.unwrap();
    let mut a = agent(&ctl, "dur-agent-k9");
    a.start().unwrap();
    wait_contiguous(&ctl, &db, &a, 3).await;

    a.kill9();
    let killed_ms = now_ms();
    let last = a.spool_max_seq();
    assert!(
        last >= 3,
        "spool lost its newest record: {:?}",
        a.spool_seqs()
    );
    // A crash is not a clean stop: the state file must not claim one.
    assert_eq!(a.spool_state().and_then(|s| s.clean_next), None);

    let restart_ms = now_ms();
    a.start().unwrap();
    wait_contiguous(&ctl, &db, &a, last + 3).await;
    let n = stop_and_check_all_stored(&ctl, &db, &mut a).await;
    assert!(n >= last + 3);

    // Reuse would show as a seq <= last carrying a sample of the second run (its insert
    // would then be dropped silently, so check which run each stored sample comes from).
    for (seq, ts, _) in rows(&db, &a.id).await {
        let seq = u64::try_from(seq).unwrap();
        if seq <= last {
            assert!(
                ts <= killed_ms,
                "seq {seq} (<= {last}) has ts {ts} after the kill"
            );
        } else {
            assert!(
                ts >= restart_ms,
                "seq {seq} (> {last}) has ts {ts} before the restart"
            );
        }
    }
    let started = a.log_events("agent started");
    assert_eq!(started.len(), 2, "{}", a.log());
}

/// 3. Controller down (SIGTERM) for ~15 samples, then back: the backlog arrives oldest first
///    and live samples are not starved while it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_backlog_drains_oldest_first_beside_live() {
    let mut ctl = Controller::start().await.unwrap();
    let db = ctl.db().await.unwrap();
    let mut a = agent(&ctl, "dur-backlog");
    a.start().unwrap();
    wait_contiguous(&ctl, &db, &a, 2).await;

    let status = ctl.stop().unwrap();
    assert!(
        status.success(),
        "controller SIGTERM exit {status}\n{}",
        ctl.log()
    );
    let down_from = a.spool_max_seq();
    let at_restart = wait_produced(&ctl, &a, down_from + 15).await;
    let restart_ms = now_ms();
    ctl.serve().await.unwrap();

    wait_contiguous(&ctl, &db, &a, at_restart + 3).await;
    let n = stop_and_check_all_stored(&ctl, &db, &mut a).await;

    let connected = a.log_events("connected");
    let backlog = connected
        .last()
        .and_then(|e| e["backlog"].as_u64())
        .unwrap_or_default();
    assert!(backlog >= 15, "backlog at reconnect {backlog}\n{}", a.log());

    let rows = rows(&db, &a.id).await;
    assert_eq!(rows.len() as u64, n);
    // Backlog: produced before the restart, stored after it. Oldest first: commit times never
    // go down as seq goes up.
    let backlog: Vec<&(i64, i64, i64)> = rows
        .iter()
        .filter(|(_, ts, rx)| *ts < restart_ms && *rx >= restart_ms)
        .collect();
    assert!(
        backlog.len() >= 15,
        "{} backlog samples: {backlog:?}",
        backlog.len()
    );
    for w in backlog.windows(2) {
        assert!(
            w[0].2 <= w[1].2,
            "backlog out of order: seq {} stored at {}, seq {} at {}",
            w[0].0,
            w[0].2,
            w[1].0,
            w[1].2
        );
    }
    // Live: produced after the restart; each stored within 5 s of being taken.
    let live: Vec<&(i64, i64, i64)> = rows.iter().filter(|(_, ts, _)| *ts >= restart_ms).collect();
    assert!(live.len() >= 3, "live samples: {live:?}");
    for (seq, ts, rx) in &live {
        assert!(
            rx - ts <= 5_000,
            "live seq {seq} taken at {ts} stored only at {rx} ({} ms)",
            rx - ts
        );
    }
}

/// 4. The spool survives a clean agent restart while the controller is unreachable: both
///    runs' samples arrive, numbered without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_survives_clean_restart_while_disconnected() {
    let mut ctl = Controller::start().await.unwrap();
    let db = ctl.db().await.unwrap();
    let mut a = agent(&ctl, "dur-clean");
    a.start().unwrap();
    wait_contiguous(&ctl, &db, &a, 2).await;

    let status = ctl.stop().unwrap();
    assert!(
        status.success(),
        "controller SIGTERM exit {status}\n{}",
        ctl.log()
    );
    let down_from = a.spool_max_seq();
    wait_produced(&ctl, &a, down_from + 3).await;
    let status = a.stop().unwrap();
    assert!(
        status.success(),
        "agent SIGTERM while disconnected: {status}\n{}",
        a.log()
    );
    let state = a.spool_state().expect("spool state");
    let first_run = state.clean_next.expect("clean stop recorded") - 1;
    assert_eq!(a.spool_max_seq(), first_run, "{state:?}");
    assert!(
        state.floor < first_run,
        "unacked samples expected: {state:?}"
    );
    let unacked = first_run - state.floor;

    ctl.serve().await.unwrap();
    let second_start_ms = now_ms();
    a.start().unwrap();
    wait_contiguous(&ctl, &db, &a, first_run + 2).await;
    let started = a.log_events("agent started");
    let backlog = started
        .last()
        .and_then(|e| e["backlog"].as_u64())
        .unwrap_or_default();
    assert_eq!(backlog, unacked, "backlog at the second start\n{}", a.log());

    stop_and_check_all_stored(&ctl, &db, &mut a).await;
    let rows = rows(&db, &a.id).await;
    let first_of_second_run = rows
        .iter()
        .find(|(seq, _, _)| u64::try_from(*seq).unwrap() == first_run + 1)
        .expect("first sample of the second run");
    assert!(
        first_of_second_run.1 >= second_start_ms,
        "seq {} is not from the second run",
        first_run + 1
    );
}

/// 5. A sample re-sent with a seq already stored is neither stored twice nor allowed to
///    overwrite the first copy, and it is still acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_sample_is_idempotent_and_acked() {
    let ctl = Controller::start().await.unwrap();
    let db = ctl.db().await.unwrap();
    let mut a = agent(&ctl, "dur-dup");
    a.start().unwrap();
    wait_contiguous(&ctl, &db, &a, 3).await;
    let n = stop_and_check_all_stored(&ctl, &db, &mut a).await;

    type Row = (i64, i64, f64, f64, i64, i64, i64, String, String);
    let row_sql = "SELECT ts, received_at, cpu_pct, load1, mem_total, mem_used, uptime_s, \
                   disks, nets FROM telemetry WHERE device_id = ? AND seq = 2";
    let original: Row = sqlx::query_as(row_sql)
        .bind(&a.id)
        .fetch_one(&db)
        .await
        .unwrap();

    // The device's own identity, as the agent would connect (the agent is stopped).
    let tls = mqtt::client_tls(&a.ca(), Some((&a.cert(), &a.key()))).unwrap();
    let (client, mut ev) = mqtt::client(ctl.mqtt.port(), &a.id, tls);
    let ack_topic = Topic::new(a.id.parse().unwrap(), Kind::Ack).to_string();
    let telemetry_topic = Topic::new(a.id.parse().unwrap(), Kind::Telemetry).to_string();
    client
        .subscribe(ack_topic.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let dup = v1::Sample {
        seq: 2,
        ts_ms: original.0 + 123_456,
        cpu_pct: if original.2 < 50.0 { 99.5 } else { 0.5 },
        load1: 42.0,
        load5: 42.0,
        load15: 42.0,
        mem_total_bytes: 7,
        mem_used_bytes: 3,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disks: vec![],
        nets: vec![],
        temp_c: Some(99.0),
        throttled: Some(1),
        uptime_s: 1,
        spool_dropped: 0,
        spool_backlog: 0,
    };
    let payload = codec::encode(
        Kind::Telemetry,
        &v1::Telemetry {
            samples: vec![dup.clone()],
        },
    )
    .unwrap();

    let acked = tokio::time::timeout(Duration::from_secs(15), async {
        let mut published = false;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) if !published => {
                    client
                        .publish(
                            telemetry_topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                        )
                        .await
                        .unwrap();
                    published = true;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                    let ack: v1::Ack = codec::decode(Kind::Ack, &p.payload).unwrap();
                    if ack.ranges.iter().any(|r| r.first <= 2 && 2 <= r.last) {
                        return ack;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("mqtt: {e}\n{}", ctl.log()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no ack covering seq 2\n{}", ctl.log()));
    assert!(!acked.ranges.is_empty());
    let _ = client.disconnect().await;

    // Acked after the commit, so the database already shows the outcome.
    let seqs = stored(&db, &a.id).await;
    assert_eq!(seqs, (1..=i64::try_from(n).unwrap()).collect::<Vec<_>>());
    let after: Row = sqlx::query_as(row_sql)
        .bind(&a.id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(after, original, "the duplicate overwrote the stored sample");
}

/// 3b. The same with a backlog big enough to need many drain batches and more than the
///     agent's in-flight drain window: an outage of a few hours at 1 sample/s. The samples
///     are written into the stopped agent's spool in its own format (see
///     `Agent::spool_inject`) instead of being waited for. The backlog is stored in seq order,
///     and samples taken after the agent connected are stored within 5 s while it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_backlog_drains_in_order_without_starving_live() {
    const BACKLOG: u64 = 20_000;
    let ctl = Controller::start().await.unwrap();
    let db = ctl.db().await.unwrap();
    let mut a = agent(&ctl, "dur-big-backlog");
    a.start().unwrap();
    wait_contiguous(&ctl, &db, &a, 2).await;
    let first_run = stop_and_check_all_stored(&ctl, &db, &mut a).await;

    let mut template = a
        .spool_samples()
        .pop()
        .expect("the newest sample stays in the spool");
    // Keep samples small whatever this machine mounts, so the backlog stays far below the
    // spool's 16 MiB cap (over it the oldest samples would be dropped).
    template.disks.truncate(2);
    template.nets.truncate(2);
    let t0 = now_ms() - i64::try_from(BACKLOG).unwrap() * 1000;
    let samples: Vec<v1::Sample> = (1..=BACKLOG)
        .map(|i| v1::Sample {
            seq: first_run + i,
            ts_ms: t0 + i64::try_from(i).unwrap() * 1000,
            ..template.clone()
        })
        .collect();
    a.spool_inject(&samples).unwrap();
    // The last live samples of the first run may be stored but not yet acknowledged.
    let floor = a.spool_state().expect("spool state").floor;
    let unacked = BACKLOG + first_run - floor;

    let connects = a.log_events("connected").len();
    a.start().unwrap();
    let connected_ms = wait_for(LONG, "agent connected again", || async {
        (a.log_events("connected").len() > connects).then(now_ms)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let started = a.log_events("agent started");
    assert_eq!(
        started.last().and_then(|e| e["backlog"].as_u64()),
        Some(unacked),
        "{}",
        a.log()
    );
    let last_backlog = first_run + BACKLOG;
    wait_contiguous(&ctl, &db, &a, last_backlog + 3).await;
    stop_and_check_all_stored(&ctl, &db, &mut a).await;

    let rows = rows(&db, &a.id).await;
    let in_backlog =
        |seq: i64| (first_run + 1..=last_backlog).contains(&u64::try_from(seq).unwrap());
    let backlog: Vec<&(i64, i64, i64)> = rows.iter().filter(|r| in_backlog(r.0)).collect();
    assert_eq!(backlog.len() as u64, BACKLOG);
    for w in backlog.windows(2) {
        assert!(
            w[0].2 <= w[1].2,
            "backlog out of order: seq {} stored at {}, seq {} at {}",
            w[0].0,
            w[0].2,
            w[1].0,
            w[1].2
        );
    }
    let drained_at = backlog.iter().map(|r| r.2).max().unwrap_or_default();
    // Taken after the connection was up, so published live rather than via the drain.
    let live: Vec<&(i64, i64, i64)> = rows.iter().filter(|r| r.1 > connected_ms).collect();
    for (seq, ts, rx) in &live {
        assert!(
            rx - ts <= 5_000,
            "live seq {seq} taken at {ts} stored only at {rx} ({} ms)",
            rx - ts
        );
    }
    assert!(
        live.iter().any(|r| r.2 < drained_at),
        "no live sample was stored while the backlog drained (drain ended at {drained_at}): \
         {live:?}"
    );
}
