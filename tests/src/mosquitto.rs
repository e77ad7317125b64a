//! The Debian Mosquitto command-line clients (`mosquitto_pub`, `mosquitto_sub`) acting as an
//! enrolled device, for checks with an MQTT implementation other than our own.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};

use crate::harness::{Agent, Controller};
use crate::mqtt::CLOSE_TIMEOUT;

/// A Mosquitto client binary; fails with a clear message when it is not installed.
pub fn mosquitto_bin(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .with_context(|| {
            format!("{name} not found on PATH: install the Debian package mosquitto-clients")
        })
}

/// The TLS and identity arguments of a Mosquitto client acting as `dev`.
pub fn mosquitto_args(ctl: &Controller, dev: &Agent) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    vec![
        "--cafile".into(),
        p(&dev.ca()),
        "--cert".into(),
        p(&dev.cert()),
        "--key".into(),
        p(&dev.key()),
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        ctl.mqtt.port().to_string(),
        "-i".into(),
        dev.id.clone(),
        "-V".into(),
        "mqttv311".into(),
    ]
}

/// How a Mosquitto client run ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code, or `None` when it was still running at the deadline (then killed).
    pub code: Option<i32>,
    /// Standard output, then standard error.
    pub output: String,
}

/// Runs the Mosquitto client `name` with `args`, feeding it `stdin` when given; kills it if
/// it is still running after [`CLOSE_TIMEOUT`].
pub async fn run_mosquitto(name: &str, args: &[String], stdin: Option<&[u8]>) -> Result<Run> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(mosquitto_bin(name)?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(data).await?;
    }
    // On timeout the child is dropped, which kills it.
    Ok(
        match tokio::time::timeout(CLOSE_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => {
                let out = out?;
                Run {
                    code: out.status.code(),
                    output: format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                }
            }
            Err(_) => Run {
                code: None,
                output: format!("still running after {CLOSE_TIMEOUT:?}; killed"),
            },
        },
    )
}
