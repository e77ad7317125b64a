//! Debian's Mosquitto, an MQTT implementation other than our own: its command-line clients
//! (`mosquitto_pub`, `mosquitto_sub`) acting as an enrolled device, and its broker standing
//! between an agent and a compromised network, with an attacker that reads what the agent
//! sends and publishes forged, altered, expired, replayed and hostile commands to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pifleet_shared::codec;
use pifleet_shared::command::{Action, CommandId, Envelope, Receipt, ServiceOp, SignedCommand};
use pifleet_shared::signing::{CommandSigner, DeviceKeyAlg, verify_receipt};
use pifleet_shared::topic::Kind;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use sqlx::Row;
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::harness::{Agent, Controller, free_addr, now_ms, wait_for};
use crate::mqtt::CLOSE_TIMEOUT;

/// How long the attacker waits for its subscription, for the agent's hello and for a final
/// receipt.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(20);

// ---- The clients acting as a device --------------------------------------------------------

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

// ---- A compromised broker ------------------------------------------------------------------

/// Debian's mosquitto with a TLS listener (the controller's certificates, client certificates
/// required) for the agent and a plain anonymous one for the attacker.
#[derive(Debug)]
pub struct Broker {
    child: std::process::Child,
    /// The agent's listener.
    pub tls_port: u16,
    /// The attacker's listener.
    pub plain_port: u16,
    log: PathBuf,
    _tmp: TempDir,
}

impl Broker {
    /// Starts `/usr/sbin/mosquitto` with the certificates of `ctl`'s data dir.
    pub fn start(ctl: &Controller) -> Result<Self> {
        let exe = Path::new("/usr/sbin/mosquitto");
        if !exe.is_file() {
            bail!("/usr/sbin/mosquitto not found: install the Debian package mosquitto");
        }
        let tmp = tempfile::tempdir()?;
        let (tls_port, plain_port) = (free_addr()?.port(), free_addr()?.port());
        let log = tmp.path().join("mosquitto.log");
        let d = |n: &str| ctl.data.join(n).display().to_string();
        let is_root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        };
        let conf = format!(
            "{user}per_listener_settings true\n\
             log_dest file {log}\nlog_type all\n\
             listener {tls_port} 127.0.0.1\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous true\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
            user = if is_root { "user root\n" } else { "" },
            log = log.display(),
            ca = d("ca.crt"),
            cert = d("server.crt"),
            key = d("server.key"),
        );
        let conf_path = tmp.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(exe)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            tls_port,
            plain_port,
            log,
            _tmp: tmp,
        })
    }

    /// What mosquitto logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the attacker sees on `fleet/<id>/up/#`.
#[derive(Debug)]
enum Seen {
    Hello,
    Receipt(pifleet_shared::command::SignedReceipt),
    /// A result that does not decode as a receipt.
    Undecodable(String),
    Other,
}

/// An anonymous client of the broker's plain listener, subscribed to everything one device
/// sends, publishing on its command topic.
#[derive(Debug)]
pub struct Attacker {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    cmd_topic: String,
    /// The device's public key (from the controller's database): every receipt read must
    /// verify against it.
    device_key: (DeviceKeyAlg, Vec<u8>),
}

impl Attacker {
    /// Connects to the plain listener at `port` and subscribes to `device`'s topics (until
    /// acknowledged: mosquitto may still be starting).
    pub async fn connect(port: u16, ctl: &Controller, device: &str) -> Result<Self> {
        let db = ctl.db().await?;
        let row = sqlx::query(
            "SELECT public_key_alg, public_key FROM certificates WHERE device_id = ? \
             AND revoked_at IS NULL ORDER BY issued_at DESC LIMIT 1",
        )
        .bind(device)
        .fetch_one(&db)
        .await?;
        let alg = row.get::<&str, _>("public_key_alg");
        let device_key = (
            DeviceKeyAlg::parse(alg).with_context(|| format!("device key algorithm {alg:?}"))?,
            row.get::<Vec<u8>, _>("public_key"),
        );
        db.close().await;
        let mut opts = MqttOptions::new("attacker", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut ev) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subbed_tx, mut subbed_rx) = mpsc::unbounded_channel();
        let hello = format!("fleet/{device}/up/hello");
        let result = format!("fleet/{device}/up/result");
        tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = subbed_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let seen = if p.topic == hello {
                            Seen::Hello
                        } else if p.topic == result {
                            match codec::decode(Kind::Result, &p.payload) {
                                Ok(receipt) => Seen::Receipt(receipt),
                                Err(e) => Seen::Undecodable(e.to_string()),
                            }
                        } else {
                            Seen::Other
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let filter = format!("fleet/{device}/up/#");
        wait_for(ATTACK_TIMEOUT, "attacker subscribed", || {
            let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
            let got = subbed_rx.try_recv().is_ok();
            async move {
                if !got {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                got.then_some(())
            }
        })
        .await?;
        Ok(Self {
            client,
            rx,
            cmd_topic: format!("fleet/{device}/down/cmd"),
            device_key,
        })
    }

    /// Waits for the agent's hello (sent right after its subscription, so from then on
    /// commands reach it).
    pub async fn wait_hello(&mut self) -> Result<()> {
        tokio::time::timeout(ATTACK_TIMEOUT, async {
            while let Some(s) = self.rx.recv().await {
                if matches!(s, Seen::Hello) {
                    return;
                }
            }
        })
        .await
        .context("no hello from the agent through mosquitto")
    }

    /// Publishes `payload` on the device's command topic.
    pub async fn publish(&self, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(&self.cmd_topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    /// The next receipt with a final outcome (each one checked against the device key).
    pub async fn next_final(&mut self) -> Result<Receipt> {
        let (alg, key) = self.device_key.clone();
        tokio::time::timeout(ATTACK_TIMEOUT, async {
            while let Some(s) = self.rx.recv().await {
                match s {
                    Seen::Receipt(signed) => {
                        let r = verify_receipt(&signed, alg, &key)
                            .context("receipt signed by the device")?;
                        if r.outcome.is_final() {
                            return Ok(r);
                        }
                    }
                    Seen::Undecodable(e) => bail!("a result that is no receipt: {e}"),
                    Seen::Hello | Seen::Other => {}
                }
            }
            bail!("attacker connection ended")
        })
        .await
        .context("no final receipt in time")?
    }
}

// ---- What the attacker publishes -----------------------------------------------------------

/// A command for `device` under `key`'s id, issued now, expiring in 10 minutes, with a
/// random id.
pub fn envelope(device: &str, key: &CommandSigner, action: Action) -> Envelope {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
    let now = now_ms();
    Envelope {
        id: CommandId(id),
        device: device.to_owned(),
        issued_at_ms: now,
        expires_at_ms: now + 600_000,
        key_id: key.id(),
        action,
    }
}

/// `op` on the systemd unit `unit`.
pub fn service(unit: &str, op: ServiceOp) -> Action {
    Action::Service {
        unit: unit.to_owned(),
        op,
    }
}

/// A signed command as it travels on the command topic.
pub fn wire(cmd: &SignedCommand) -> Result<Vec<u8>> {
    Ok(codec::encode(Kind::Cmd, cmd)?)
}

/// Another Ed25519 command key, unknown to the device.
pub fn other_signer() -> Result<CommandSigner> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    Ok(CommandSigner::from_pkcs8_pem(&kp.serialize_pem())?)
}
