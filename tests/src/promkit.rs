//! Prometheus text expositions in tests: validity by `promtool`, and sample values.
//! Test support: a failed check panics, with what promtool said.
#![allow(clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on an exposition; fails (never skips) without promtool.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool is required (apt-get install prometheus): {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the first sample line for `series` (name plus labels, exactly).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_by_exact_series() {
        let text = "# HELP a x\na 1\na{k=\"v\"} 2.5\nab 3\nc 4 1700000000000\n";
        assert_eq!(value(text, "a"), Some(1.0));
        assert_eq!(value(text, "a{k=\"v\"}"), Some(2.5));
        assert_eq!(value(text, "ab"), Some(3.0));
        assert_eq!(value(text, "c"), Some(4.0), "a timestamp after the value");
        assert_eq!(value(text, "d"), None);
    }
}
