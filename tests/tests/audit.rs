//! The audit log is hash-chained: edits, insertions and deletions made behind the
//! controller's back with the real `sqlite3` tool are found, at the right entry; and a long
//! log is verified (API and CLI) in constant memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use pifleet_controller::audit::{Event, entry_hash};
use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller};
use sqlx::Row;

fn sqlite3(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 is required: apt-get install sqlite3");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `audit verify` on a copy of the database with `tamper` applied.
fn verify_after(ctl: &Controller, name: &str, tamper: &str) -> (bool, String) {
    let dir = ctl.tmp.path().join(name);
    let out = Command::new("cp")
        .arg("-a")
        .arg(&ctl.data)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(out.success());
    let _ = std::fs::remove_file(dir.join("pifleet.db-shm"));
    if !tamper.is_empty() {
        sqlite3(&dir.join("pifleet.db"), tamper);
    }
    let out = Command::new(pifleet_tests::harness::bin("pifleet-controller").unwrap())
        .args(["audit", "verify", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_at_the_right_entry() {
    let mut ctl = Controller::start().await.unwrap();
    // `init` created the first admin (entry 1); operator actions and an enrollment produce
    // entries 2..=6.
    ctl.token(None, "10m").unwrap(); // 2 token.create
    let _a = Agent::enroll(&ctl, "pi-audit", 5).unwrap(); // 3 token.create, 4 device.enroll
    ctl.revoke("pi-audit").unwrap(); // 5 device.revoke
    let out = ctl.cli(&["token", "revoke", "nosuchtoken"]).unwrap(); // 6 token.revoke refused
    assert!(!out.status.success());
    assert_eq!(ctl.stop().map(|s| s.success()), Some(true));

    let list = ctl.cli(&["audit", "list"]).unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    let actions: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').nth(4).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "user.create",
            "token.create",
            "token.create",
            "device.enroll",
            "device.revoke",
            "token.revoke"
        ],
        "{text}"
    );
    assert!(
        text.lines()
            .nth(3)
            .unwrap()
            .contains("device:pi-audit\t127.0.0.1"),
        "{text}"
    );

    let (ok, text) = verify_after(&ctl, "intact", "");
    assert!(ok, "{text}");
    assert!(text.contains("6 entries verified"), "{text}");

    let cases = [
        (
            "edited",
            "UPDATE audit_log SET target = 'someone-else' WHERE seq = 4",
            "entry 4 was modified",
        ),
        (
            "deleted",
            "DELETE FROM audit_log WHERE seq = 2",
            "entry 2 is missing",
        ),
        (
            "inserted",
            "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3; \
             UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000; \
             INSERT INTO audit_log VALUES (3, 0, 'intruder', 'local', 'device.revoke', 'x', 'ok', '', \
             (SELECT hash FROM audit_log WHERE seq = 2), 'ab')",
            "entry 3 was modified",
        ),
        (
            "relinked",
            "UPDATE audit_log SET prev_hash = (SELECT hash FROM audit_log WHERE seq = 1) WHERE seq = 3",
            "entry 3 does not follow",
        ),
        (
            "truncated",
            "DELETE FROM audit_log WHERE seq = 6",
            "the log ends at entry 5 but entry 6 was recorded",
        ),
    ];
    for (name, sql, want) in cases {
        let (ok, text) = verify_after(&ctl, name, sql);
        assert!(!ok, "{name}: tampering not detected: {text}");
        assert!(text.contains(want), "{name}: expected {want:?} in {text:?}");
    }
}

/// The controller's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(ctl: &Controller) -> u64 {
    let pid = ctl.child().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_is_verified_in_constant_memory() {
    const ENTRIES: i64 = 4_000;
    const DETAIL: usize = 16 * 1024;
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();

    // Append a valid chain of 64 MiB of entries behind the controller's back.
    let db = ctl.db_rw().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let (first, mut prev): (i64, String) = (last.get::<i64, _>("seq") + 1, last.get("hash"));
    for seq in first..first + ENTRIES {
        let ev = Event {
            actor: "anonymous".into(),
            source: "192.0.2.1".into(),
            action: "device.enroll".into(),
            target: String::new(),
            outcome: "refused".into(),
            detail: format!("{seq:>0width$}", width = DETAIL),
        };
        let hash = entry_hash(&prev, seq, seq, &ev);
        sqlx::query("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(seq)
            .bind(seq)
            .bind(&ev.actor)
            .bind(&ev.source)
            .bind(&ev.action)
            .bind(&ev.target)
            .bind(&ev.outcome)
            .bind(&ev.detail)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .unwrap();
        prev = hash;
    }
    let head = first + ENTRIES - 1;
    sqlx::query("UPDATE meta SET value = ? WHERE key = 'audit_head'")
        .bind(head.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db.close().await;
    let size = ENTRIES as u64 * DETAIL as u64;

    let before = peak_rss(&ctl);
    let r = api.get("/api/v1/audit/verify", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["intact"], true, "{j}");
    assert!(j["entries"].as_i64().unwrap() >= head, "{j}");
    let grown = peak_rss(&ctl).saturating_sub(before);
    eprintln!("verifying {size} bytes of entries raised the peak memory by {grown} bytes");
    // Holding the log would take at least its size; streaming takes a few batches.
    assert!(
        grown < size / 4,
        "verifying {size} bytes of entries raised the peak memory by {grown} bytes"
    );

    let out = ctl.cli(&["audit", "verify"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(" entries verified"), "{text}");
    // The listing streams too, and shows every entry once, in order.
    let out = ctl.cli(&["audit", "list", "--json"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let seqs: Vec<i64> = listed.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(seqs.len() as i64 >= head);
}
