//! The dispatcher: creates commands (one per target device), signs them with the command
//! key when their device is online, publishes them, verifies the devices' signed receipts
//! against their certificates, and moves each command through its lifecycle.

use std::sync::Arc;
use std::time::Duration;

use pifleet_shared::command::{Action, CommandId, Envelope, SignedReceipt};
use pifleet_shared::topic::Kind;
use pifleet_shared::{DeviceId, Topic, codec};
use rand::RngCore;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::receipt_keys::{ReceiptKeys, Verified};
use super::signers::Signers;
use crate::config::CommandsConfig;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::model::commands::Status;
use crate::mqtt::ingest::Outgoing;
use crate::store::{CommandRow, Labels, NewCommand, ReceiptUpdate, Store, StoreError, now_ms};
use crate::supervise::{Fatal, Health, TaskResult};

/// Dispatch errors.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid action: {0}")]
    Action(String),
    #[error("no target: {0}")]
    NoTarget(String),
    #[error(
        "device {0} is flagged for review ({1}): review it first (`device review` or POST \
         /api/v1/devices/{{id}}/review), or revoke it"
    )]
    NeedsReview(String, String),
    #[error("--ttl must be between 1 s and 7 days")]
    Ttl,
}

/// Which devices a command goes to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    Devices(Vec<String>),
    /// Every enrolled, unrevoked device whose labels include all of these.
    Selector(Labels),
}

/// The devices a request targets, resolved against the fleet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub devices: Vec<String>,
    /// A selector that matches every unrevoked device of a fleet of more than one.
    pub whole_fleet: bool,
}

/// Resolves targets: listed devices must exist, not be revoked and not wait for review; a
/// selector takes every such device whose labels include all of its labels, and must match
/// one at least.
pub async fn resolve_targets(store: &Store, targets: &Targets) -> Result<Resolved, DispatchError> {
    let devices = store.list_devices().await?;
    // A device flagged for review (re-registered after a restore) gets nothing until an
    // admin has looked at it.
    let live = devices
        .iter()
        .filter(|d| d.revoked_at.is_none() && !d.needs_review)
        .count();
    let (chosen, by_selector): (Vec<String>, bool) = match targets {
        Targets::Devices(ids) => {
            for id in ids {
                match devices.iter().find(|d| &d.id == id) {
                    None => return Err(DispatchError::NoTarget(format!("no device {id}"))),
                    Some(d) if d.revoked_at.is_some() => {
                        return Err(DispatchError::NoTarget(format!("device {id} is revoked")));
                    }
                    Some(d) if d.needs_review => {
                        return Err(DispatchError::NeedsReview(
                            id.clone(),
                            d.review_reason.clone().unwrap_or_default(),
                        ));
                    }
                    Some(_) => {}
                }
            }
            (ids.clone(), false)
        }
        Targets::Selector(want) => (
            devices
                .iter()
                .filter(|d| d.revoked_at.is_none() && !d.needs_review)
                .filter(|d| want.iter().all(|(k, v)| d.labels.get(k) == Some(v)))
                .map(|d| d.id.clone())
                .collect(),
            true,
        ),
    };
    if chosen.is_empty() {
        return Err(DispatchError::NoTarget(
            "the selector matches no device".into(),
        ));
    }
    Ok(Resolved {
        whole_fleet: by_selector && live > 1 && chosen.len() == live,
        devices: chosen,
    })
}

/// Creates one queued command per target device. Used by the CLI (a separate process: the
/// running dispatcher picks the commands up within `commands.poll_ms`) and by
/// [`Dispatcher::submit`].
pub async fn create_commands(
    store: &Store,
    targets: &Targets,
    action: Action,
    ttl: Duration,
    answer_timeout: Duration,
) -> Result<Vec<(CommandId, String)>, DispatchError> {
    action
        .validate()
        .map_err(|e| DispatchError::Action(e.to_string()))?;
    if ttl < Duration::from_secs(1)
        || ttl.as_millis() > u128::try_from(pifleet_shared::command::MAX_TTL_MS).unwrap_or(0)
    {
        return Err(DispatchError::Ttl);
    }
    let chosen = resolve_targets(store, targets).await?.devices;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let timeout_ms = i64::try_from(answer_timeout.as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let cmds: Vec<NewCommand> = chosen
        .into_iter()
        .map(|device| {
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            NewCommand {
                id: CommandId(id),
                device,
                action: action.clone(),
                expires_at: now.saturating_add(ttl_ms),
                answer_timeout_ms: timeout_ms,
            }
        })
        .collect();
    store.insert_commands(&cmds).await?;
    Ok(cmds.into_iter().map(|c| (c.id, c.device)).collect())
}

/// The running dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    signers: arc_swap::ArcSwap<Signers>,
    out: crate::mqtt::downlink::Downlink,
    cfg: CommandsConfig,
    metrics: Metrics,
    wake: Arc<Notify>,
    keys: ReceiptKeys,
    live: Hub,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        signers: Signers,
        out: crate::mqtt::downlink::Downlink,
        cfg: CommandsConfig,
        metrics: Metrics,
        wake: Arc<Notify>,
        live: Hub,
    ) -> Self {
        Self {
            keys: ReceiptKeys::new(store.clone()),
            store,
            signers: arc_swap::ArcSwap::from_pointee(signers),
            out,
            cfg,
            metrics,
            wake,
            live,
        }
    }

    /// Where command status changes are reported for the dashboard.
    pub fn live(&self) -> &Hub {
        &self.live
    }

    /// Signs with `signers` from now on (a command key rotation was put in use).
    pub fn set_signers(&self, signers: Signers) {
        self.signers.store(Arc::new(signers));
    }

    /// The command keys signing now.
    pub fn signers(&self) -> Arc<Signers> {
        self.signers.load_full()
    }

    /// The store commands are kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sends what is queued now rather than at the next poll (commands another part of
    /// the controller created, such as a rollout's).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Creates commands and dispatches them at once (in-process callers: the API).
    pub async fn submit(
        &self,
        targets: &Targets,
        action: Action,
        ttl: Duration,
    ) -> Result<Vec<(CommandId, String)>, DispatchError> {
        let r =
            create_commands(&self.store, targets, action, ttl, self.cfg.answer_timeout()).await?;
        for (id, device) in &r {
            self.live.command_changed(device, &id.to_string());
        }
        self.wake.notify_one();
        Ok(r)
    }

    /// Sends dispatchable commands whenever woken, and at least every `poll_ms` (which also
    /// picks up commands created by the CLI); expires and times out commands. A database
    /// that fails for a while is retried at the next tick (not ready meanwhile); a broken
    /// one ends the task.
    pub async fn run(
        self: Arc<Self>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> TaskResult {
        const NAME: &str = "dispatcher";
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let expiry = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => true,
                _ = self.wake.notified() => false,
            };
            // Keys that differ from the fleet's would sign what devices refuse: the other
            // controllers sharing the database send meanwhile.
            if health.is_degraded(Health::KEYS) {
                continue;
            }
            let r = async {
                if expiry {
                    match self.store.expire_commands().await? {
                        (0, 0) => {}
                        (expired, timed_out) => {
                            tracing::info!(expired, timed_out, "commands expired or timed out")
                        }
                    }
                }
                self.pump().await
            }
            .await;
            match r {
                Ok(()) => health.recovered(NAME),
                Err(DispatchError::Store(e)) if e.is_fatal() => {
                    return Err(Fatal::new("the database is broken", e));
                }
                Err(e @ DispatchError::Store(_)) => health.degraded(NAME, &e),
                Err(e) => tracing::error!(error = %e, "command dispatch failed"),
            }
        }
    }

    async fn pump(&self) -> Result<(), DispatchError> {
        loop {
            let resend_before = now_ms() - i64::try_from(self.cfg.resend_ms).unwrap_or(i64::MAX);
            // Claimed (marked sent) before it is sent: a receipt can come back before this
            // would otherwise get to it, and no other controller sends what this one claimed.
            let batch = self.store.claim_dispatchable(resend_before, 500).await?;
            if batch.is_empty() {
                return Ok(());
            }
            for c in batch {
                let span = tracing::info_span!(
                    "command_dispatch",
                    command = %c.id,
                    device = %c.device_id,
                    action = %c.action_kind
                );
                self.send(&c).instrument(span).await?;
            }
        }
    }

    /// Signs one claimed command (as of its claim) and publishes it to its device.
    async fn send(&self, c: &CommandRow) -> Result<(), DispatchError> {
        let action = c.parsed_action()?;
        let mut id = [0u8; 16];
        if let Some(parsed) = CommandId::parse(&c.id) {
            id = parsed.0;
        }
        let issued = c.issued_at.unwrap_or_else(now_ms);
        let signers = self.signers.load_full();
        let signer = match &action {
            // Signed by the newest key of its chain, which the chain proves to the device.
            Action::TrustCommandKeys { keys, .. } => keys
                .last()
                .and_then(|k| signers.by_id(key_id(k)?, issued))
                .unwrap_or(&signers.newest),
            _ if signers.overlapping(issued) => {
                let acked = self.store.acked_command_keys(&c.device_id).await?;
                signers.for_device(&acked, issued)
            }
            _ => &signers.newest,
        };
        let env = Envelope {
            id: CommandId(id),
            device: c.device_id.clone(),
            issued_at_ms: issued,
            expires_at_ms: c.expires_at,
            key_id: signer.id(),
            action,
        };
        let signed = match signer.sign(&env) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(command = %c.id, error = %e, "signing failed");
                return Ok(());
            }
        };
        let payload = match codec::encode(Kind::Cmd, &signed) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(command = %c.id, error = %e, "command too large");
                return Ok(());
            }
        };
        let Ok(device) = DeviceId::parse(&c.device_id) else {
            return Ok(());
        };
        let topic = Topic::new(device, Kind::Cmd);
        self.out.send(Outgoing { topic, payload });
        self.live.command_changed(&c.device_id, &c.id);
        self.metrics
            .commands
            .with_label_values(&[c.action_kind.as_str(), "sent"])
            .inc();
        tracing::info!(command = %c.id, device = %c.device_id, action = %c.action_kind, key = %signer.id(), "command sent");
        Ok(())
    }

    /// Verifies a receipt against the device's certificate keys and applies it.
    pub async fn on_receipt(&self, device: &DeviceId, signed: &SignedReceipt) {
        let receipt = match self.keys.verify(device, signed).await {
            Ok(Verified::Ok(r)) => r,
            Ok(Verified::NoKey) => {
                tracing::warn!(device = %device, "receipt from a device without a known key dropped");
                return;
            }
            Ok(Verified::Bad(e)) => {
                self.metrics
                    .ingest_dropped
                    .with_label_values(&["bad_receipt"])
                    .inc();
                tracing::warn!(device = %device, reason = "bad_receipt", error = %e, "receipt refused");
                return;
            }
            Err(e) => {
                tracing::error!(device = %device, error = %e, "device key lookup failed");
                return;
            }
        };
        if receipt.device != device.as_str() {
            tracing::warn!(device = %device, claimed = %receipt.device, "receipt for another device refused");
            return;
        }
        let id = receipt.command.to_string();
        let update = ReceiptUpdate {
            outcome: receipt.outcome.clone(),
            exit_code: receipt.exit_code,
            duration_ms: receipt.duration_ms,
            stdout: receipt.stdout,
            stderr: receipt.stderr,
            body: signed.body.clone(),
            signature: signed.signature.clone(),
        };
        match self
            .store
            .apply_receipt(&id, device.as_str(), &update)
            .await
        {
            Ok(Some(status)) => {
                self.live.command_changed(device.as_str(), &id);
                tracing::info!(command = %id, device = %device, status = status.as_str(), "command {}", status.as_str());
                if status.is_final() {
                    self.metrics
                        .commands
                        .with_label_values(&["any", status.as_str()])
                        .inc();
                    if let Ok(Some(c)) = self.store.command(&id).await {
                        if let (Some(sent), Some(done)) = (c.sent_at, c.finished_at) {
                            self.metrics
                                .command_roundtrip_seconds
                                .observe((done - sent).max(0) as f64 / 1000.0);
                        }
                        if status == Status::Succeeded {
                            if let Err(e) = super::release_keys::confirmed(&self.store, &c).await {
                                tracing::error!(command = %id, error = %e, "cannot record confirmed release keys");
                            }
                            if let Err(e) = super::command_keys::confirmed(&self.store, &c).await {
                                tracing::error!(command = %id, error = %e, "cannot record confirmed command keys");
                            }
                        }
                    }
                }
            }
            Ok(None) => {
                tracing::debug!(command = %id, device = %device, outcome = receipt.outcome.as_str(), "receipt ignored")
            }
            Err(e) => tracing::error!(command = %id, error = %e, "storing receipt failed"),
        }
    }
}

/// Receives verified-topic receipts from ingest and applies them, off the routing loop;
/// ends when ingest stops sending.
pub async fn receipts(
    d: Arc<Dispatcher>,
    mut rx: mpsc::Receiver<(DeviceId, SignedReceipt)>,
) -> TaskResult {
    while let Some((device, signed)) = rx.recv().await {
        d.on_receipt(&device, &signed).await;
    }
    Ok(())
}

/// The id of a raw Ed25519 public key, if it is one.
fn key_id(raw: &[u8; 32]) -> Option<pifleet_shared::command::KeyId> {
    pifleet_shared::signing::TrustedKey::from_raw(raw)
        .ok()
        .map(|k| k.id)
}

/// Parses an action from command-line words:
/// `ping` | `reboot` | `service <status|start|stop|restart> UNIT` | `journal UNIT [LINES]` |
/// `script NAME [ARGS…]` | `interval SECONDS`.
pub fn parse_action(words: &[String]) -> Result<Action, String> {
    use pifleet_shared::command::ServiceOp;
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let action = match w.as_slice() {
        ["ping"] => Action::Ping,
        ["reboot"] => Action::Reboot,
        ["service", op, unit] => {
            let op = match *op {
                "status" => ServiceOp::Status,
                "start" => ServiceOp::Start,
                "stop" => ServiceOp::Stop,
                "restart" => ServiceOp::Restart,
                other => return Err(format!("unknown service operation {other:?}")),
            };
            Action::Service {
                unit: (*unit).to_owned(),
                op,
            }
        }
        ["journal", unit] => Action::JournalTail {
            unit: (*unit).to_owned(),
            lines: 50,
        },
        ["journal", unit, lines] => Action::JournalTail {
            unit: (*unit).to_owned(),
            lines: lines
                .parse()
                .map_err(|_| format!("journal lines {lines:?} is not a number"))?,
        },
        ["script", name, args @ ..] => Action::RunScript {
            name: (*name).to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        },
        ["interval", secs] => Action::SetInterval {
            seconds: secs
                .parse()
                .map_err(|_| format!("interval {secs:?} is not a number of seconds"))?,
        },
        _ => {
            return Err(
                "expected: ping | reboot | service <status|start|stop|restart> UNIT | \
                        journal UNIT [LINES] | script NAME [ARGS...] | interval SECONDS"
                    .to_owned(),
            );
        }
    };
    action.validate().map_err(|e| e.to_string())?;
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn action_words() {
        assert_eq!(parse_action(&words("ping")), Ok(Action::Ping));
        assert!(matches!(
            parse_action(&words("service restart kiosk.service")),
            Ok(Action::Service { .. })
        ));
        assert!(matches!(
            parse_action(&words("journal kiosk.service 20")),
            Ok(Action::JournalTail { lines: 20, .. })
        ));
        assert!(matches!(
            parse_action(&words("script backup --dry-run")),
            Ok(Action::RunScript { .. })
        ));
        assert_eq!(
            parse_action(&words("interval 30")),
            Ok(Action::SetInterval { seconds: 30 })
        );
        for bad in [
            "",
            "shell rm -rf /",
            "service kill x",
            "service start a;b",
            "service start --now",
            "journal ../x",
            "interval x",
            "script a b;c",
        ] {
            assert!(parse_action(&words(bad)).is_err(), "{bad:?}");
        }
    }
}
