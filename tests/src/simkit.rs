//! Simulated devices for benchmarks: enrollment of many identities through the real API,
//! and a responder that verifies signed commands exactly as the agent does and signs
//! receipts with the device's key.

use std::time::Duration;

use anyhow::Result;
use pifleet_agent::config::AgentConfig;
use pifleet_agent::enroll::{EnrollOptions, enroll};
use pifleet_controller::datadir::DataDir;
use pifleet_controller::enroll::tokens;
use pifleet_controller::store::Store;
use pifleet_shared::command::{Action, CommandId, Outcome, Output, Receipt, SignedCommand};
use pifleet_shared::signing::{DeviceSigner, TrustedKey, VerifyContext, verify_command};
use pifleet_shared::topic::Kind;
use pifleet_shared::{Topic, codec};

/// Enrolls devices `sim-00000`… (`n` of them) through the enrollment API of the controller
/// on `https_port`, keeping their identities under `dir` (reused across runs).
pub async fn enroll_all(
    dd: &DataDir,
    dir: &std::path::Path,
    n: usize,
    https_port: u16,
) -> Result<Vec<AgentConfig>> {
    std::fs::create_dir_all(dir)?;
    let store = Store::open(&dd.database(), false).await?;
    let mut out = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n {
        let id = format!("sim-{i:05}");
        let config = dir.join(&id).join("agent.toml");
        if config.exists() {
            out.push(config);
            continue;
        }
        let spec = tokens::TokenSpec {
            ttl: Duration::from_secs(600),
            ..Default::default()
        };
        let token = tokens::create_token(dd, &store, 600, &spec).await?;
        pending.push(EnrollOptions {
            controller: format!("https://localhost:{https_port}"),
            token: token.token.to_string(),
            config: config.clone(),
            device_id: Some(id),
            interval_s: Some(10),
            force: false,
            serial_file: None,
            keep: None,
        });
        out.push(config);
    }
    store.close().await;
    for chunk in pending.chunks(32) {
        let futs = chunk.iter().map(enroll);
        for r in futures_join(futs).await {
            r?;
        }
    }
    out.iter()
        .map(|p| AgentConfig::load(p).map_err(anyhow::Error::from))
        .collect()
}

pub async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

/// Answers commands like an agent with everything allowed: verifies the signature, target,
/// expiry and replay exactly as the agent does, then signs receipts with the device's key.
#[allow(missing_debug_implementations)] // holds a private key: not printed
pub struct Responder {
    device: String,
    keys: Vec<TrustedKey>,
    signer: DeviceSigner,
    seen: std::sync::Mutex<std::collections::HashSet<CommandId>>,
    result_topic: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Responder {
    pub fn new(cfg: &AgentConfig) -> Result<Self> {
        Ok(Self {
            device: cfg.device_id.to_string(),
            keys: vec![TrustedKey::from_pem(&std::fs::read_to_string(
                &cfg.tls.command_key,
            )?)?],
            signer: DeviceSigner::from_pkcs8_pem(&std::fs::read_to_string(&cfg.tls.key)?)?,
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
            result_topic: Topic::new(cfg.device_id.clone(), Kind::Result).to_string(),
        })
    }

    /// A new command's id and action, if `payload` is one that verifies (once).
    pub fn verify(&self, payload: &[u8]) -> Option<(CommandId, Action)> {
        let cmd: SignedCommand = codec::decode(Kind::Cmd, payload).ok()?;
        let mut seen = self.seen.lock().ok()?;
        let ctx = VerifyContext {
            keys: &self.keys,
            device: &self.device,
            now_ms: now_ms(),
        };
        let env = verify_command(&cmd, ctx, |id| seen.contains(id), |_| Ok(())).ok()?;
        seen.insert(env.id);
        Some((env.id, env.action))
    }

    /// A signed receipt for `command` with `outcome` and `stdout`, and its topic.
    pub fn receipt(
        &self,
        command: CommandId,
        outcome: Outcome,
        stdout: &[u8],
    ) -> Option<(String, Vec<u8>)> {
        let receipt = Receipt {
            command,
            device: self.device.clone(),
            outcome,
            exit_code: Some(0),
            duration_ms: 0,
            stdout: Output {
                data: stdout.to_vec(),
                len: stdout.len() as u64,
                sha256: vec![],
            },
            stderr: Output::default(),
            at_ms: now_ms(),
        };
        let signed = self.signer.sign(&receipt).ok()?;
        Some((
            self.result_topic.clone(),
            codec::encode(Kind::Result, &signed).ok()?,
        ))
    }

    /// Answers a verified command with `Succeeded` and `pong`.
    pub fn answer(&self, payload: &[u8]) -> Option<(String, Vec<u8>)> {
        let (id, _) = self.verify(payload)?;
        self.receipt(id, Outcome::Succeeded, b"pong")
    }
}
