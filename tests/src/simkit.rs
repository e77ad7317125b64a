//! Simulated devices for benchmarks: enrollment of many identities through the real API,
//! and a responder that verifies signed commands exactly as the agent does and signs
//! receipts with the device's key.

use std::time::Duration;

use anyhow::Result;
use pifleet_agent::config::AgentConfig;
use pifleet_agent::enroll::{EnrollOptions, enroll};
use pifleet_controller::datadir::DataDir;
use pifleet_controller::enroll::tokens;
use pifleet_shared::command::{Action, CommandId, Outcome, Output, Receipt, SignedCommand};
use pifleet_shared::signing::{DeviceSigner, TrustedKey, VerifyContext, verify_command};
use pifleet_shared::topic::Kind;
use pifleet_shared::{Topic, codec};

/// How many enrollments run at once (each is a key generation, a CSR and an HTTPS round trip).
const ENROLL_CONCURRENCY: usize = 32;

/// Enrolls devices `sim-00000`… (`n` of them) through the enrollment API of the controller
/// on `https_port`, keeping their identities under `dir` (reused across runs).
pub async fn enroll_all(
    dd: &DataDir,
    dir: &std::path::Path,
    n: usize,
    https_port: u16,
) -> Result<Vec<AgentConfig>> {
    ensure_enrolled(dd, dir, n, https_port).await?;
    (0..n)
        .map(|i| {
            AgentConfig::load(&dir.join(format!("sim-{i:05}")).join("agent.toml"))
                .map_err(anyhow::Error::from)
        })
        .collect()
}

/// Enrolls those of devices `sim-00000`… (`n` of them) that have no identity under `dir`
/// yet, with one provisioning token, `ENROLL_CONCURRENCY` at a time; returns how many it
/// enrolled.
pub async fn ensure_enrolled(
    dd: &DataDir,
    dir: &std::path::Path,
    n: usize,
    https_port: u16,
) -> Result<usize> {
    use futures_util::stream::{StreamExt, TryStreamExt};
    std::fs::create_dir_all(dir)?;
    let missing: Vec<(String, std::path::PathBuf)> = (0..n)
        .map(|i| format!("sim-{i:05}"))
        .map(|id| {
            let config = dir.join(&id).join("agent.toml");
            (id, config)
        })
        .filter(|(_, config)| !config.exists())
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    // The store the controller's configuration names (SQLite, or the shared PostgreSQL).
    let cfg = pifleet_controller::config::Config::load(&dd.config())?;
    let store = pifleet_controller::database::open(dd, &cfg.store, false).await?;
    let spec = tokens::TokenSpec {
        ttl: Duration::from_secs(3_600),
        max_uses: Some(u32::try_from(missing.len())?),
        ..Default::default()
    };
    let token = tokens::create_token(dd, &store, 3_600, &spec).await;
    store.close().await;
    let token = token?.token.to_string();
    let opts: Vec<EnrollOptions> = missing
        .into_iter()
        .map(|(id, config)| EnrollOptions {
            controller: format!("https://localhost:{https_port}"),
            token: token.clone(),
            config,
            device_id: Some(id),
            interval_s: Some(10),
            force: false,
            serial_file: None,
            keep: None,
        })
        .collect();
    let count = opts.len();
    futures_util::stream::iter(opts.iter().map(|o| async move {
        enroll(o)
            .await
            .map_err(|e| anyhow::anyhow!("enrolling {}: {e}", o.config.display()))
    }))
    .buffer_unordered(ENROLL_CONCURRENCY)
    .try_collect::<Vec<_>>()
    .await?;
    Ok(count)
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
