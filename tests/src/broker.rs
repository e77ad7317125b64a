//! Debian's Mosquitto run with the configuration `pifleet-controller broker-config
//! mosquitto` generates (ephemeral loopback ports, a temp dir, stopped on drop), the
//! controller identities it admits, and rumqttc clients of either listener.
//!
//! `PIFLEET_BROKER_DROP` (line beginnings separated by `;`) removes the lines starting so
//! from the generated configuration and ACL files before the broker starts: how one checks that each line is what a test
//! depends on (the test must then fail).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pifleet_controller::broker::ControllerClientConfig;
use pifleet_controller::broker::mosquitto::BrokerDir;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::harness::{Agent, Controller, bin, free_addr, wait_for};
use crate::mqtt::{client, client_tls, connack};

/// The controller identities every broker here admits.
pub const CONTROLLERS: [&str; 3] = ["ctl-1", "ctl-2", "ctl-3"];

/// A running Mosquitto with a generated configuration.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    pub dir: BrokerDir,
    pub device_port: u16,
    pub controller_port: u16,
    log: PathBuf,
    tmp: TempDir,
}

impl Broker {
    /// Generates the configuration from `ctl`'s data dir with the CLI, issues the identities
    /// of [`CONTROLLERS`], and starts `/usr/sbin/mosquitto` with it.
    pub async fn start(ctl: &Controller) -> Result<Self> {
        let exe = Path::new("/usr/sbin/mosquitto");
        if !exe.is_file() {
            bail!("/usr/sbin/mosquitto not found: install the Debian package mosquitto");
        }
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("broker");
        let (device, controller) = (free_addr()?, free_addr()?);
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())?
            .context("no name for this user")?
            .name;
        let mut args: Vec<String> = vec![
            "broker-config".into(),
            "mosquitto".into(),
            "--out".into(),
            dir.display().to_string(),
            "--device-listen".into(),
            device.to_string(),
            "--controller-listen".into(),
            controller.to_string(),
            "--user".into(),
            user,
        ];
        for name in CONTROLLERS {
            args.extend(["--controller".into(), name.into()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_ok(ctl, &refs)?;
        for name in CONTROLLERS {
            let out = tmp.path().join(name).display().to_string();
            cli_ok(
                ctl,
                &[
                    "broker-config",
                    "controller-identity",
                    "--name",
                    name,
                    "--out",
                    &out,
                ],
            )?;
        }
        let dir = BrokerDir::new(std::fs::canonicalize(&dir)?);
        for file in [dir.conf(), dir.acl_devices(), dir.acl_controllers()] {
            drop_lines(&file)?;
        }
        let log = tmp.path().join("mosquitto.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .arg("-c")
            .arg(dir.conf())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let broker = Self {
            child,
            dir,
            device_port: device.port(),
            controller_port: controller.port(),
            log,
            tmp,
        };
        for port in [broker.device_port, broker.controller_port] {
            wait_for(
                Duration::from_secs(10),
                "mosquitto listening",
                || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .ok()
                },
            )
            .await
            .with_context(|| broker.log())?;
        }
        Ok(broker)
    }

    /// Kills the broker (SIGKILL) and waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again with the same configuration and ports (after [`Broker::kill9`]).
    pub async fn restart(&mut self) -> Result<()> {
        let out = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        self.child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(self.dir.conf())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        for port in [self.device_port, self.controller_port] {
            wait_for(
                Duration::from_secs(10),
                "mosquitto listening again",
                || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .ok()
                },
            )
            .await?;
        }
        Ok(())
    }

    /// What the broker logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where controller `name`'s identity was written (`mqtt.external.identity_dir`).
    pub fn identity_dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The `[mqtt]` configuration that makes a controller controller `name` of this broker
    /// (devices told to connect to its device port; presence after `presence_s`).
    pub fn controller_config(&self, name: &str, presence_s: u64) -> String {
        format!(
            "[mqtt]\nmode = \"external\"\npublic_port = {}\n\n[mqtt.external]\n\
             address = \"localhost:{}\"\nname = \"{name}\"\nidentity_dir = \"{}\"\n\
             presence_timeout_s = {presence_s}\nbroker_dir = \"{}\"\npid_file = \"{}\"\n",
            self.device_port,
            self.controller_port,
            self.identity_dir(name).display(),
            self.dir.root().display(),
            self.dir.pid_file().display(),
        )
    }

    /// Controller `name`'s client of the controller listener.
    pub fn controller(&self, name: &str) -> ControllerClientConfig {
        let mut c = ControllerClientConfig::from_identity_dir(
            &self.tmp.path().join(name),
            "localhost",
            self.controller_port,
        );
        c.timeout = Duration::from_secs(5);
        c
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_ok(ctl: &Controller, args: &[&str]) -> Result<()> {
    let out = Command::new(bin("pifleet-controller")?)
        .args(args)
        .arg("--data-dir")
        .arg(&ctl.data)
        .output()?;
    if !out.status.success() {
        bail!(
            "pifleet-controller {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Removes the lines starting with those `PIFLEET_BROKER_DROP` names from `conf`.
fn drop_lines(conf: &Path) -> Result<()> {
    let Ok(drop) = std::env::var("PIFLEET_BROKER_DROP") else {
        return Ok(());
    };
    let drop: Vec<&str> = drop.split(';').map(str::trim).collect();
    let text = std::fs::read_to_string(conf)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !drop.iter().any(|d| l.starts_with(d)))
        .collect();
    std::fs::write(conf, kept.join("\n") + "\n")?;
    Ok(())
}

/// What a [`Client`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Connected,
    Subscribed,
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The connection ended or could not be made (the error's text).
    Down(String),
}

/// An rumqttc client whose event loop runs in a task (reconnecting after a pause when the
/// connection ends), reporting what it sees.
#[derive(Debug)]
pub struct Client {
    pub mqtt: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Polls `ev` in a task, after its first CONNACK.
    fn run(mqtt: AsyncClient, mut ev: EventLoop) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Seen::Connected);
        let task = tokio::spawn(async move {
            loop {
                let seen = match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::Connected,
                    Ok(Event::Incoming(Packet::SubAck(_))) => Seen::Subscribed,
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    },
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Seen::Down(format!("{e:?}")));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Self { mqtt, rx, task }
    }

    /// Connects `dev` with its enrolled certificate to the broker's `port`, client id
    /// `client_id`; fails without a CONNACK.
    pub async fn device(dev: &Agent, port: u16, client_id: &str) -> Result<Self> {
        let tls = client_tls(&dev.ca(), Some((&dev.cert(), &dev.key())))?;
        let (mqtt, mut ev) = client(port, client_id, tls);
        connack(&mut ev)
            .await
            .with_context(|| format!("{} connecting to port {port}", dev.id))?;
        Ok(Self::run(mqtt, ev))
    }

    /// Connects a controller identity to `port` (either listener) with `client_id`.
    pub async fn controller(
        cfg: &ControllerClientConfig,
        port: u16,
        client_id: &str,
    ) -> Result<Self> {
        let tls = client_tls(&cfg.ca, Some((&cfg.cert, &cfg.key)))?;
        let (mqtt, mut ev) = client(port, client_id, tls);
        connack(&mut ev)
            .await
            .with_context(|| format!("controller connecting to port {port}"))?;
        Ok(Self::run(mqtt, ev))
    }

    /// Subscribes to `filter` (QoS 1) and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.mqtt.subscribe(filter, QoS::AtLeastOnce).await?;
        self.until(Duration::from_secs(5), |s| matches!(s, Seen::Subscribed))
            .await
            .with_context(|| format!("no SUBACK for {filter}"))?;
        Ok(())
    }

    /// Publishes (QoS 1).
    pub async fn publish(&self, topic: &str, payload: &[u8]) -> Result<()> {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await?;
        Ok(())
    }

    /// Waits up to `timeout` for something `want` accepts; what it skips is returned with it.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Seen) -> bool,
    ) -> Result<(Seen, Vec<Seen>)> {
        let mut skipped = Vec::new();
        tokio::time::timeout(timeout, async {
            while let Some(s) = self.rx.recv().await {
                if want(&s) {
                    return Ok((s, skipped));
                }
                skipped.push(s);
            }
            bail!("client task ended")
        })
        .await
        .context("timed out")?
    }

    /// Everything seen within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Seen> {
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(window, async {
            while let Some(s) = self.rx.recv().await {
                seen.push(s);
            }
        })
        .await;
        seen
    }
}

/// The messages among `seen`, as (topic, payload text).
pub fn messages(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Message { topic, payload } => {
                Some((topic.clone(), String::from_utf8_lossy(payload).into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// Panics unless a fresh connection with `agent`'s certificate is refused at the broker's
/// device listener because that certificate is revoked (the reloaded CRL).
// Test support: a failure here is a failed test.
#[allow(clippy::expect_used)]
pub async fn assert_refused_as_revoked(broker: &Broker, agent: &Agent) {
    let tls = client_tls(&agent.ca(), Some((&agent.cert(), &agent.key()))).expect("TLS set-up");
    let (_c, mut ev) = client(broker.device_port, &agent.id, tls);
    let err = format!(
        "{:#}",
        connack(&mut ev)
            .await
            .expect_err("revoked device connected")
    );
    assert!(
        err.contains("received fatal alert: CertificateRevoked"),
        "{err}"
    );
}
