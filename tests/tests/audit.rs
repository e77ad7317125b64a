//! The audit log is hash-chained: edits, insertions and deletions made behind the
//! controller's back with the real `sqlite3` tool are found, at the right entry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use pifleet_tests::harness::{Agent, Controller};

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
