//! Signed remote commands on the device: verification, the journal, execution and receipts.
//!
//! The run loop only forwards `fleet/<id>/down/cmd` payloads here. One handler task checks
//! them one at a time with [`verify_command`] (signature, target, expiry against
//! `max(clock, floor)`, replay against the journal, the local allowlist); an accepted command
//! is recorded in the journal (synced) before anything runs, then runs in its own task:
//! programs share a bounded worker pool, and operations on one unit are serialized. Every step
//! is reported with a receipt signed by the device key.

pub mod allowlist;
pub mod exec;
pub mod journal;
pub mod outbox;
mod releases;
mod trust;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pifleet_shared::codec::{self, DecodeError};
use pifleet_shared::command::{Action, CommandId, Envelope, Outcome, Receipt, SignedCommand};
use pifleet_shared::signing::{
    DeviceSigner, KeyError, Rejection, TrustedKey, VerifyContext, verify_command,
};
use pifleet_shared::topic::Kind;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use allowlist::{CommandsConfig, Refusal, ScriptConfig, allowed};
use exec::{Finished, Invocation, Limits};
use journal::{Journal, JournalError};
use outbox::Outbox;

use crate::deploy::{Deploys, Prepared};
pub use outbox::{Delivery, MqttSink, Sink};

/// Commands waiting for the handler; more are dropped (the controller sends them again).
const INBOX: usize = 64;
/// How long a reboot waits for its receipt to be handed to MQTT before going ahead anyway.
const REBOOT_PUBLISH_WAIT: Duration = Duration::from_secs(60);
/// Delay between the reboot receipt leaving and the reboot, so it reaches the controller.
const REBOOT_DELAY: Duration = Duration::from_secs(2);
/// The id reported for a command too malformed to have one.
const UNKNOWN_ID: CommandId = CommandId([0; 16]);

/// Errors starting the command handler.
#[derive(Debug, thiserror::Error)]
pub enum CommandsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("command journal: {0}")]
    Journal(#[from] JournalError),
}

/// What the handler needs, loaded once at start.
#[derive(Debug)]
pub struct Settings {
    pub cfg: CommandsConfig,
    pub device: String,
    /// The controller's command keys: pinned at enrollment, then as announced.
    pub keys: Vec<TrustedKey>,
    /// Where they are kept (`tls.command_key`); an announcement replaces the file.
    pub key_file: PathBuf,
    /// The device key, for receipts.
    pub signer: DeviceSigner,
    /// Deploys, rollbacks and release key announcements; without it they are refused.
    pub deploys: Option<Arc<Deploys>>,
}

impl Settings {
    /// Reads the controller's command keys (`tls.command_key`, every "PUBLIC KEY" block) and
    /// the device key (`tls.key`) the agent configuration names.
    pub fn load(
        cfg: CommandsConfig,
        device: &str,
        command_key: &Path,
        device_key: &Path,
    ) -> Result<Self, CommandsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CommandsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let key_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CommandsError::Key { path, source }
        };
        let keys = TrustedKey::all_from_pem(&read(command_key)?)
            .and_then(|k| {
                if k.is_empty() {
                    Err(KeyError::Pem("PUBLIC KEY"))
                } else {
                    Ok(k)
                }
            })
            .map_err(key_err(command_key))?;
        let signer =
            DeviceSigner::from_pkcs8_pem(&read(device_key)?).map_err(key_err(device_key))?;
        Ok(Self {
            cfg,
            device: device.to_owned(),
            keys,
            key_file: command_key.to_owned(),
            signer,
            deploys: None,
        })
    }
}

struct Ctx {
    cfg: CommandsConfig,
    limits: Limits,
    device: String,
    keys: RwLock<Vec<TrustedKey>>,
    key_file: PathBuf,
    journal: Arc<tokio::sync::Mutex<Journal>>,
    outbox: Outbox,
    workers: Arc<Semaphore>,
    units: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    interval: watch::Sender<u32>,
    /// Notified after every service command, so unit states are read again at once.
    services_changed: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    /// The deployable apps (`[apps.NAME]`), for the allowlist.
    apps: BTreeSet<String>,
    deploys: Option<Arc<Deploys>>,
}

/// The running command handler.
pub struct Commands {
    inbox: mpsc::Sender<Vec<u8>>,
    ctx: Arc<Ctx>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("device", &self.ctx.device)
            .field("outbox", &self.ctx.outbox)
            .finish_non_exhaustive()
    }
}

impl Commands {
    /// Opens the journal (compacting it), queues a final receipt for every command a previous
    /// run accepted but never finished, and starts the handler task. `interval` receives
    /// telemetry intervals set by command. Stops on `shutdown`.
    pub fn start(
        settings: Settings,
        sink: Arc<dyn Sink>,
        interval: watch::Sender<u32>,
        shutdown: CancellationToken,
    ) -> Result<Self, CommandsError> {
        let journal = Journal::open(&settings.cfg.state_dir)?;
        let recovered = journal.unfinished(journal.now_ms(clock_ms()));
        let journal = Arc::new(tokio::sync::Mutex::new(journal));
        let ctx = Arc::new(Ctx {
            limits: Limits::from_config(&settings.cfg),
            workers: Arc::new(Semaphore::new(settings.cfg.workers.max(1))),
            cfg: settings.cfg,
            device: settings.device,
            keys: RwLock::new(settings.keys),
            key_file: settings.key_file,
            outbox: Outbox::new(sink, settings.signer, journal.clone()),
            journal,
            units: Mutex::new(HashMap::new()),
            interval,
            services_changed: Arc::new(tokio::sync::Notify::new()),
            shutdown,
            apps: settings
                .deploys
                .as_ref()
                .map(|d| d.apps().map(str::to_owned).collect())
                .unwrap_or_default(),
            deploys: settings.deploys,
        });
        for (id, entry) in recovered {
            // A reboot that was under way when the agent stopped did happen; anything else
            // was cut short and is never run again.
            let outcome = if entry.reboot {
                Outcome::Succeeded
            } else {
                Outcome::Failed("interrupted by agent restart".into())
            };
            tracing::warn!(command = %id, outcome = outcome.as_str(), "reporting command left unfinished by the previous run");
            ctx.outbox
                .send(&ctx.receipt(id, outcome, None), Delivery::Journaled);
        }
        let (inbox, rx) = mpsc::channel(INBOX);
        let task = tokio::spawn(handler(ctx.clone(), rx));
        Ok(Self { inbox, ctx, task })
    }

    /// Queues a `down/cmd` payload for the handler (never blocks the run loop).
    pub fn submit(&self, payload: &[u8]) {
        if let Err(e) = self.inbox.try_send(payload.to_vec()) {
            tracing::warn!(error = %e, "command inbox full: command dropped");
        }
    }

    /// Tells the outbox whether the MQTT link is up (receipts held back go out on connect).
    pub fn set_connected(&self, connected: bool) {
        self.ctx.outbox.set_connected(connected);
    }

    /// Signs receipts with this key from now on (the device certificate was renewed).
    pub fn set_signer(&self, signer: DeviceSigner) {
        self.ctx.outbox.set_signer(signer);
    }

    /// Notified after every service command (start, stop, restart, status) finishes.
    pub fn services_changed(&self) -> Arc<tokio::sync::Notify> {
        self.ctx.services_changed.clone()
    }

    /// Final receipts waiting for the link.
    pub fn pending_receipts(&self) -> usize {
        self.ctx.outbox.pending()
    }

    /// Waits (bounded) for the handler task after shutdown was signalled.
    pub async fn join(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// The handler task: commands one at a time, plus retries of queued receipts.
async fn handler(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(payload) => handle(&ctx, &payload).await,
                None => break,
            },
            _ = retry.tick() => ctx.outbox.flush(),
        }
    }
}

/// Verifies one command; if accepted, journals it and starts it.
async fn handle(ctx: &Arc<Ctx>, payload: &[u8]) {
    let cmd = match codec::decode::<SignedCommand>(Kind::Cmd, payload) {
        Ok(cmd) => cmd,
        Err(e) => {
            let rejection = match e {
                DecodeError::TooLarge { limit, .. } => Rejection::TooLarge(limit),
                other => Rejection::Malformed(other.to_string()),
            };
            ctx.reject(UNKNOWN_ID, &rejection);
            return;
        }
    };
    let keys = trust::keys_for(ctx, &cmd);
    let journal = ctx.journal.clone().lock_owned().await;
    let verdict = verify_command(
        &cmd,
        VerifyContext {
            keys: &keys,
            device: &ctx.device,
            now_ms: journal.now_ms(clock_ms()),
        },
        |id| journal.contains(id),
        |action| allowed(action, &ctx.cfg, &ctx.apps).map_err(|r| r.to_string()),
    );
    let env = match verdict {
        Ok(env) => env,
        Err(rejection) => {
            drop(journal);
            ctx.reject(claimed_id(&cmd, &rejection), &rejection);
            return;
        }
    };
    // A deploy or rollback is checked in full before it is accepted, without holding the
    // journal (the check downloads its manifest).
    let (mut journal, prepared) = if env.action.app().is_some() {
        drop(journal);
        let Some(prepared) = releases::prepare(ctx, &env).await else {
            return;
        };
        let journal = ctx.journal.clone().lock_owned().await;
        if journal.contains(&env.id) {
            drop(journal);
            ctx.reject(env.id, &Rejection::Replayed);
            return;
        }
        (journal, Some(prepared))
    } else {
        (journal, None)
    };
    let record = env.clone();
    let keys = trust::to_store(ctx, &env);
    let recorded = tokio::task::spawn_blocking(move || {
        journal.accept(&record)?;
        // A command key announcement's one step, done here (once accepted, before the
        // next command is checked) rather than on a blocking task of its own.
        Ok(keys.map(|(path, pem)| pifleet_io::write_private(&path, pem.as_bytes())))
    })
    .await;
    let (failure, stored) = match recorded {
        Ok(Ok(stored)) => (None, stored),
        Ok(Err(e)) => (Some(JournalError::to_string(&e)), None),
        Err(e) => (Some(e.to_string()), None),
    };
    if let Some(e) = failure {
        // Not recorded, so it could be replayed: it must not run.
        tracing::error!(command = %env.id, error = %e, "cannot journal command; not running it");
        let outcome = Outcome::Failed(format!("cannot record command in the journal: {e}"));
        ctx.outbox
            .send(&ctx.receipt(env.id, outcome, None), Delivery::Final);
        return;
    }
    tracing::info!(command = %env.id, action = env.action.kind(), "command accepted");
    ctx.outbox.send(
        &ctx.receipt(env.id, Outcome::Accepted, None),
        Delivery::Progress,
    );
    if let Some(stored) = stored {
        trust::finish(ctx, &env, stored);
        return;
    }
    let task_ctx = ctx.clone();
    tokio::spawn(async move {
        let id = env.id;
        tokio::select! {
            _ = task_ctx.shutdown.cancelled() => {
                // Children are killed on drop; the journal reports it after the restart.
                tracing::warn!(command = %id, "agent stopping: command interrupted");
            }
            _ = execute(&task_ctx, env, prepared) => {}
        }
    });
}

/// The id a refused command carries, reported only when its signature verified: an id from
/// an unverified body could be a real command's id copied by whoever forged it, and the
/// controller would then record that real command as rejected.
fn claimed_id(cmd: &SignedCommand, rejection: &Rejection) -> CommandId {
    if matches!(
        rejection,
        Rejection::TooLarge(_) | Rejection::UnknownKey | Rejection::BadSignature
    ) {
        return UNKNOWN_ID;
    }
    postcard::from_bytes::<Envelope>(&cmd.body)
        .map(|e| e.id)
        .unwrap_or(UNKNOWN_ID)
}

/// Carries out an accepted command and sends its running and final receipts.
async fn execute(ctx: &Arc<Ctx>, env: Envelope, prepared: Option<Prepared>) {
    let id = env.id;
    let running = |ctx: &Ctx| {
        ctx.outbox
            .send(&ctx.receipt(id, Outcome::Running, None), Delivery::Progress);
    };
    match &env.action {
        Action::Ping => {
            running(ctx);
            ctx.finish(id, Outcome::Succeeded, Some(&answer(b"pong")));
        }
        Action::SetInterval { seconds } => {
            running(ctx);
            ctx.interval.send_replace(*seconds);
            tracing::info!(command = %id, seconds, "telemetry interval set by command");
            let text = format!("telemetry interval set to {seconds} s");
            ctx.finish(id, Outcome::Succeeded, Some(&answer(text.as_bytes())));
        }
        Action::Reboot => {
            running(ctx);
            let sent = ctx.finish(
                id,
                Outcome::Succeeded,
                Some(&answer(b"rebooting in a few seconds")),
            );
            reboot(ctx, id, sent).await;
        }
        Action::Deploy { .. } | Action::Rollback { .. } | Action::TrustReleaseKeys { .. } => {
            running(ctx);
            releases::run(ctx, env, prepared).await;
        }
        action => {
            let Some(inv) = exec::invocation(action, &ctx.cfg) else {
                // Unreachable after the allowlist; reported rather than assumed.
                ctx.finish(id, Outcome::Failed("nothing to run".into()), None);
                return;
            };
            let _unit = match action.unit() {
                Some(unit) => Some(ctx.unit_lock(unit).lock_owned().await),
                None => None,
            };
            let Ok(_permit) = ctx.workers.clone().acquire_owned().await else {
                ctx.finish(id, Outcome::Failed("worker pool closed".into()), None);
                return;
            };
            running(ctx);
            let done = exec::run(&inv, &ctx.limits).await;
            if matches!(action, Action::Service { .. }) {
                ctx.services_changed.notify_one();
            }
            tracing::info!(command = %id, action = action.kind(), outcome = done.outcome.as_str(), exit_code = ?done.exit_code, "command finished");
            ctx.finish(id, done.outcome.clone(), Some(&done));
        }
    }
}

/// Reboots once the reboot's receipt is out (or after a bounded wait), a little later.
async fn reboot(ctx: &Ctx, id: CommandId, sent: oneshot::Receiver<()>) {
    if !matches!(
        tokio::time::timeout(REBOOT_PUBLISH_WAIT, sent).await,
        Ok(Ok(()))
    ) {
        tracing::warn!(command = %id, "reboot receipt not sent yet; rebooting anyway");
    }
    tokio::time::sleep(REBOOT_DELAY).await;
    // So that after the reboot the command is reported as done, not as interrupted.
    let mut journal = ctx.journal.clone().lock_owned().await;
    match tokio::task::spawn_blocking(move || journal.mark_reboot(id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(command = %id, error = %e, "cannot journal reboot"),
        Err(e) => tracing::error!(command = %id, error = %e, "journal task failed"),
    }
    let inv = if exec::resolve("systemctl", &ctx.limits.path).await.is_some() {
        Invocation {
            program: "systemctl".into(),
            args: vec!["reboot".into()],
        }
    } else {
        Invocation {
            program: "reboot".into(),
            args: Vec::new(),
        }
    };
    tracing::warn!(command = %id, program = %inv.program, "rebooting by command");
    let done = exec::run(&inv, &ctx.limits).await;
    if done.outcome != Outcome::Succeeded {
        tracing::error!(command = %id, outcome = ?done.outcome, stderr = %String::from_utf8_lossy(&done.stderr.data), "reboot failed");
    }
}

/// A result produced by the agent itself.
fn answer(stdout: &[u8]) -> Finished {
    Finished {
        outcome: Outcome::Succeeded,
        exit_code: None,
        stdout: exec::output_of(stdout),
        stderr: exec::output_of(b""),
        duration: Duration::ZERO,
    }
}

impl Ctx {
    fn receipt(&self, id: CommandId, outcome: Outcome, done: Option<&Finished>) -> Receipt {
        let (exit_code, duration, stdout, stderr) = match done {
            Some(d) => (d.exit_code, d.duration, d.stdout.clone(), d.stderr.clone()),
            None => (
                None,
                Duration::ZERO,
                exec::output_of(b""),
                exec::output_of(b""),
            ),
        };
        Receipt {
            command: id,
            device: self.device.clone(),
            outcome,
            exit_code,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            stdout,
            stderr,
            at_ms: clock_ms(),
        }
    }

    /// Sends the final receipt of an accepted command.
    fn finish(
        &self,
        id: CommandId,
        outcome: Outcome,
        done: Option<&Finished>,
    ) -> oneshot::Receiver<()> {
        self.outbox
            .send(&self.receipt(id, outcome, done), Delivery::Journaled)
    }

    /// Logs and reports a refused command. Nothing runs.
    fn reject(&self, id: CommandId, rejection: &Rejection) {
        tracing::warn!(command = %id, reason = rejection.reason(), error = %rejection, "command rejected");
        let outcome = Outcome::Rejected(format!("{}: {rejection}", rejection.reason()));
        self.outbox
            .send(&self.receipt(id, outcome, None), Delivery::Final);
    }

    fn unit_lock(&self, unit: &str) -> Arc<tokio::sync::Mutex<()>> {
        // Only allowlisted units get here, so the map stays as small as the allowlist.
        let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        units.entry(unit.to_owned()).or_default().clone()
    }
}

/// The device clock, Unix ms.
pub fn clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
