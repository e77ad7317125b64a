//! A worker process of the simulator: holds a range of devices and runs the phases its
//! parent asks for on stdin, answering each with one JSON line on stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pifleet_agent::config::AgentConfig;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use super::client::{self, Device};
use super::hist::Hist;
use super::proto::{Command, Reply, StormDevice};
use super::state::{Settings, Shared, Slot};

/// What a worker holds.
#[derive(Debug, Clone)]
pub struct Worker {
    pub identities: PathBuf,
    /// Global index of its first device, and how many it holds.
    pub first: usize,
    pub devices: usize,
    pub settings: Settings,
    /// How long a phase may take before the worker reports what it has.
    pub phase_timeout: Duration,
}

/// The identity directory of device `i` (`sim-00000`, …).
pub fn device_id(i: usize) -> String {
    format!("sim-{i:05}")
}

fn reply(r: &Reply) -> Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(r)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Worker {
    fn load_devices(&self) -> Result<Vec<Device>> {
        (0..self.devices)
            .map(|k| {
                let global = self.first + k;
                let path = self.identities.join(device_id(global)).join("agent.toml");
                let cfg = AgentConfig::load(&path)
                    .with_context(|| format!("identity {} (enrolled?)", path.display()))?;
                Device::new(k, self.settings.source(global), &cfg)
            })
            .collect()
    }

    /// Runs the worker until `quit` or the end of stdin.
    pub async fn run(self) -> Result<()> {
        let mut devices = Some(self.load_devices()?);
        reply(&Reply::Ready {
            devices: self.devices,
        })?;
        let (load_tx, load_rx) = watch::channel(false);
        let (drop_tx, drop_rx) = watch::channel(0u64);
        let mut shared: Option<Arc<Shared>> = None;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            let cmd = Command::parse(&line).with_context(|| format!("unknown command {line:?}"))?;
            let deadline = Instant::now() + self.phase_timeout;
            match (cmd, &shared) {
                (Command::Connect, None) => {
                    let sh = Arc::new(Shared {
                        settings: self.settings.clone(),
                        start: Instant::now(),
                        slots: (0..self.devices).map(|_| Slot::default()).collect(),
                        load: load_rx.clone(),
                        drop: drop_rx.clone(),
                        storm_armed: AtomicBool::new(false),
                        failures: Mutex::new(BTreeMap::new()),
                        published: AtomicU64::new(0),
                        acked: AtomicU64::new(0),
                        unacked: AtomicU64::new(0),
                        latency: Mutex::new(Hist::default()),
                    });
                    for dev in devices.take().unwrap_or_default() {
                        tokio::spawn(client::run(dev, sh.clone()));
                    }
                    let slots = &sh.slots;
                    wait_until(deadline, || {
                        slots
                            .iter()
                            .all(|s| s.connected_us.load(Ordering::Relaxed) != 0)
                    })
                    .await;
                    let connect_us = slots
                        .iter()
                        .map(|s| match s.connected_us.load(Ordering::Relaxed) {
                            0 => None,
                            us => Some(us),
                        })
                        .collect();
                    reply(&Reply::Connected {
                        connect_us,
                        failures: sh.take_failures(),
                    })?;
                    shared = Some(sh);
                }
                (Command::Load, Some(sh)) => {
                    sh.published.store(0, Ordering::Relaxed);
                    sh.acked.store(0, Ordering::Relaxed);
                    if let Ok(mut h) = sh.latency.lock() {
                        *h = Hist::default();
                    }
                    sh.take_failures();
                    load_tx.send_replace(true);
                    reply(&Reply::Ok)?;
                }
                (Command::Stats, Some(sh)) => {
                    let latency = sh.latency.lock().map(|h| h.clone()).unwrap_or_default();
                    reply(&Reply::Stats {
                        published: sh.published.load(Ordering::Relaxed),
                        acked: sh.acked.load(Ordering::Relaxed),
                        latency,
                        failures: sh.take_failures(),
                    })?;
                }
                (Command::Storm { drop }, Some(sh)) => {
                    sh.take_failures();
                    sh.arm_storm();
                    if drop {
                        drop_tx.send_modify(|g| *g += 1);
                    }
                    reply(&Reply::Ok)?;
                }
                (Command::Wait, Some(sh)) => {
                    let slots = &sh.slots;
                    wait_until(deadline, || {
                        slots.iter().all(|s| {
                            s.storm_connack.load(Ordering::Relaxed) != 0
                                && s.storm_ack.load(Ordering::Relaxed) != 0
                        })
                    })
                    .await;
                    sh.storm_armed.store(false, Ordering::SeqCst);
                    let devices = slots
                        .iter()
                        .map(|s| StormDevice {
                            tcp: s.storm_tcp.load(Ordering::Relaxed),
                            connack: s.storm_connack.load(Ordering::Relaxed),
                            ack: s.storm_ack.load(Ordering::Relaxed),
                        })
                        .collect();
                    reply(&Reply::Storm {
                        devices,
                        failures: sh.take_failures(),
                    })?;
                }
                (Command::Settle, Some(sh)) => {
                    load_tx.send_replace(false);
                    let unacked = &sh.unacked;
                    wait_until(deadline, || unacked.load(Ordering::Relaxed) == 0).await;
                    reply(&Reply::Settled {
                        unacked: unacked.load(Ordering::Relaxed),
                    })?;
                }
                (Command::Quit, _) => return Ok(()),
                (cmd, _) => anyhow::bail!("command {cmd:?} out of order"),
            }
        }
        Ok(())
    }
}
