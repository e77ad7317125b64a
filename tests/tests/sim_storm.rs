//! The fleet simulator's storm mode: with devices spread over two worker processes and
//! three source addresses, every device reconnects and gets its first sample acknowledged
//! after the controller is killed (-9) and restarted, and after every device drops its
//! connection at once. Functional only: no timing is asserted.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use pifleet_tests::harness::bin;

const DEVICES: u64 = 40;

#[test]
fn every_device_reconnects_and_is_acknowledged_after_kill_and_drop() {
    let ctl = bin("pifleet-controller").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(&ctl)
        .args(["init", "--data-dir"])
        .arg(&data)
        .args(["--hostname", "localhost"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pifleet-sim"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--spawn-controller")
        .arg(&ctl)
        .args(["--devices", &DEVICES.to_string()])
        .args(["--processes", "2", "--sources", "3"])
        .args(["--rate", "1", "--duration", "2"])
        .args(["--storm", "kill,drop", "--storm-pause-s", "1"])
        .args(["--backoff-max-s", "2", "--phase-timeout-s", "40", "--json"])
        .output()
        .unwrap();
    let log = std::fs::read_to_string(data.join("sim-controller.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "simulator failed: {}\ncontroller log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["connect"]["connected"], DEVICES, "{report:#}");
    assert_eq!(
        report["steady"]["published"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert_eq!(
        report["steady"]["acked"].as_u64().map(|n| n > 0),
        Some(true)
    );
    let storms = report["storms"].as_array().unwrap();
    let kinds: Vec<&str> = storms.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["kill", "drop"], "{report:#}");
    for s in storms {
        assert_eq!(s["devices"], DEVICES, "{s:#}");
        assert_eq!(s["reconnected"], DEVICES, "{s:#}");
        assert_eq!(s["acknowledged"], DEVICES, "{s:#}");
        // Every device lost its session in the storm (none skipped it).
        let lost: u64 = s["failures"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("lost: "))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum();
        assert!(lost >= DEVICES, "{s:#}");
    }
    // The simulator stopped the controller it started.
    assert!(!data.join("serve.json").exists());
}
