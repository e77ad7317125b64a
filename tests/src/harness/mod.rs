//! Process handles for the controller and agents, and condition waits (never fixed sleeps).
//!
//! What each handle starts lives in its own module: `controller`, `agent` and the fake
//! system programs of `fakebin`. This module finds the built binaries and holds what they
//! all use; the handles are re-exported here, so tests import everything from `harness`.

mod agent;
mod controller;
mod fakebin;
mod process;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use agent::{Agent, AgentExe, SpoolState};
pub use controller::{Controller, WriteLock};
pub use fakebin::{FAKE_JOURNAL, FakeBin, fake_bin};

/// Directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PIFLEET_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a built binary; fails with a clear message if it has not been built.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} not found: build the binaries first with `cargo build --workspace`",
            p.display()
        );
    }
    Ok(p)
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, sig: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Milliseconds since the Unix epoch (the clock of the controller's timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A loopback address with a port nothing listens on (bound, then released), for a
/// listener whose port must be known before it starts.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Merges TOML `overrides` into the config file at `path` (tables merged key by key).
pub fn merge_config(path: &Path, overrides: &str) -> Result<()> {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut cfg: toml::Table = std::fs::read_to_string(path)?.parse()?;
    merge(&mut cfg, overrides.parse()?);
    std::fs::write(path, toml::to_string(&cfg)?)?;
    Ok(())
}
