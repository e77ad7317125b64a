//! The fleet simulator's storm mode: with devices spread over two worker processes and
//! three source addresses, every device reconnects and gets its first sample acknowledged
//! after the controller is killed (-9) and restarted, and after every device drops its
//! connection at once; and the same devices against Debian's Mosquitto (the side-by-side
//! mode) come back after a kill -9 of the broker. Functional only: no timing is asserted.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use pifleet_tests::harness::bin;

const DEVICES: u64 = 40;

/// A new controller data dir under `dir`.
fn init(ctl: &Path, dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let out = Command::new(ctl)
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
    data
}

/// Runs the simulator on `data` with `args` and returns its JSON report.
fn sim(ctl: &Path, data: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pifleet-sim"))
        .arg("--data-dir")
        .arg(data)
        .arg("--spawn-controller")
        .arg(ctl)
        .args(["--devices", &DEVICES.to_string()])
        .args(["--processes", "2", "--sources", "3"])
        .args(["--rate", "1", "--duration", "2", "--storm-pause-s", "1"])
        .args(["--backoff-max-s", "2", "--phase-timeout-s", "40", "--json"])
        .args(args)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(data.join("sim-controller.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "simulator failed: {}\ncontroller log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every device reconnected in every storm, each after losing its session.
fn assert_storms(report: &serde_json::Value, kinds: &[&str]) {
    let storms = report["storms"].as_array().unwrap();
    let got: Vec<&str> = storms.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(got, kinds, "{report:#}");
    for s in storms {
        assert_eq!(s["devices"], DEVICES, "{s:#}");
        assert_eq!(s["reconnected"], DEVICES, "{s:#}");
        assert_eq!(s["acknowledged"], DEVICES, "{s:#}");
        let lost: u64 = s["failures"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("lost: "))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum();
        assert!(lost >= DEVICES, "{s:#}");
    }
}

#[test]
fn every_device_reconnects_and_is_acknowledged_after_kill_and_drop() {
    let ctl = bin("pifleet-controller").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = init(&ctl, dir.path());
    let report = sim(&ctl, &data, &["--storm", "kill,drop"]);
    assert_eq!(report["broker"], "pifleet");
    assert_eq!(report["connect"]["connected"], DEVICES, "{report:#}");
    assert_eq!(
        report["steady"]["published"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert_eq!(
        report["steady"]["acked"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert_storms(&report, &["kill", "drop"]);
    // The simulator stopped the controller it started.
    assert!(!data.join("serve.json").exists());
}

#[test]
fn the_same_devices_connect_to_mosquitto_and_come_back_after_a_kill() {
    let ctl = bin("pifleet-controller").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = init(&ctl, dir.path());
    let report = sim(&ctl, &data, &["--broker", "mosquitto", "--storm", "kill"]);
    assert_eq!(report["broker"], "mosquitto");
    assert_eq!(report["connect"]["connected"], DEVICES, "{report:#}");
    assert_eq!(
        report["steady"]["acked"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert_storms(&report, &["kill"]);
}
