//! The task that puts rotated keys in use: every `auth.key_reload_s` it checks the
//! access-token keys, the server certificate, the command keys and the release keys, and
//! installs whatever changed. A file that does not load is logged and what is in use stays.
//! It then compares the key files with those the other controllers hold
//! ([`super::keyset`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use pifleet_shared::signing::TrustedKey;

use crate::auth::jwt::{CurrentKeys, JwtKeys};
use crate::commands::dispatch::Dispatcher;
use crate::commands::{command_keys, release_keys};
use crate::datadir::DataDir;
use crate::enroll::EnrollState;
use crate::metrics::Metrics;
use crate::pki::ServerCert;
use crate::setup;
use crate::supervise::TaskResult;

/// What the reload task watches and where it installs what it finds.
#[derive(Debug)]
pub struct Reload {
    pub dd: DataDir,
    /// The access-token keys the API verifies with, and how often to look at `jwt.key`.
    pub jwt: Arc<CurrentKeys>,
    pub key_reload_s: u64,
    /// What new devices are given at enrollment.
    pub enroll: Arc<EnrollState>,
    pub server_cert: Arc<ServerCert>,
    pub metrics: Metrics,
    pub dispatcher: Arc<Dispatcher>,
    /// The release keys devices were told to trust at start-up.
    pub release_keys: Vec<TrustedKey>,
    /// The last command key problem logged, so a lasting one is logged once.
    pub command_key_error: Option<String>,
    /// Told whether this controller's key files agree with the others' ([`super::keyset`]).
    pub health: Arc<crate::supervise::Health>,
    /// Woken when another controller announces new key files: look at once.
    pub wake: Arc<tokio::sync::Notify>,
}

/// Runs until `shutdown`.
pub async fn run(mut r: Reload, shutdown: CancellationToken) -> TaskResult {
    let jwt_path = r.dd.jwt_keys();
    let mut jwt_seen = modified(&jwt_path);
    let mut tick = tokio::time::interval(Duration::from_secs(r.key_reload_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            _ = r.wake.notified() => {}
        }
        let now = modified(&jwt_path);
        if now != jwt_seen {
            match JwtKeys::load(&jwt_path) {
                Ok(keys) => {
                    tracing::info!(kid = keys.current_kid(), "access-token keys reloaded");
                    r.jwt.set(keys);
                    jwt_seen = now;
                }
                Err(e) => {
                    tracing::error!(error = %e, "jwt.key changed but cannot be loaded; keeping the keys in use")
                }
            }
        }
        match r.server_cert.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                let expiry = server_cert_expiry(&r.dd);
                if let Some(t) = expiry {
                    r.metrics.server_cert_expiry.set(t);
                }
                tracing::info!(expires = ?expiry, "server certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "the server certificate changed but cannot be loaded; serving the one in use")
            }
        }
        reload_release_keys(&mut r).await;
        reload_command_keys(&mut r).await;
        super::keyset::report(&r.dd, r.dispatcher.store(), &r.health).await;
    }
}

/// Signs with a changed set of command keys (a rotation, a finished or ended overlap),
/// hands the newest to new devices, and announces the chain to every device that has not
/// confirmed the newest key.
async fn reload_command_keys(r: &mut Reload) {
    let store = r.dispatcher.store().clone();
    let signers = match super::command_keys::load_signers(&r.dd, &store).await {
        Ok(s) => s,
        Err(e) => {
            let text = e.to_string();
            if r.command_key_error.as_ref() != Some(&text) {
                tracing::error!(error = %text, "the command keys cannot be loaded; signing with those in use");
                r.command_key_error = Some(text);
            }
            return;
        }
    };
    r.command_key_error = None;
    if signers.ids() != r.dispatcher.signers().ids() {
        match setup::command_public_key(&r.dd) {
            Ok(pem) => {
                let enroll = &r.enroll;
                let mut pinned = (*enroll.pinned.load_full()).clone();
                pinned.command_public_key = pem;
                pinned.command_key_id = signers.newest.id().to_string();
                enroll.pinned.store(Arc::new(pinned));
            }
            Err(e) => {
                tracing::error!(error = %e, "command.pub cannot be read; signing with the keys in use");
                return;
            }
        }
        let ids: Vec<String> = signers.ids().iter().map(ToString::to_string).collect();
        tracing::info!(keys = ?ids, "command keys reloaded");
        r.dispatcher.set_signers(signers);
    }
    let announced = match store.command_keys().await {
        Ok(history) => command_keys::announce(&r.dispatcher, &history).await,
        Err(e) => Err(e.into()),
    };
    match announced {
        Ok(0) => {}
        Ok(devices) => tracing::info!(devices, "command keys announced"),
        Err(e) => tracing::warn!(error = %e, "cannot announce the command keys yet"),
    }
}

/// Puts a changed set of release keys in use: new devices get it at enrollment, and every
/// device that has not confirmed all of it is told (tried again at the next tick if the
/// announcement cannot be made).
async fn reload_release_keys(r: &mut Reload) {
    let keys = match setup::release_public_keys(&r.dd) {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!(error = %e, "the release keys cannot be read; keeping those in use");
            return;
        }
    };
    if keys == r.release_keys {
        return;
    }
    let enroll = &r.enroll;
    let mut pinned = (*enroll.pinned.load_full()).clone();
    pinned.release_public_keys = keys.iter().map(TrustedKey::to_pem).collect();
    enroll.pinned.store(Arc::new(pinned));
    let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
    match release_keys::announce(&r.dispatcher, &keys).await {
        Ok(devices) => {
            tracing::info!(keys = ?ids, devices, "release keys reloaded and announced");
            r.release_keys = keys;
        }
        Err(e) => {
            tracing::warn!(keys = ?ids, error = %e, "cannot announce the new release keys yet")
        }
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Expiry (Unix seconds) of the listeners' certificate, for the expiry alert.
pub fn server_cert_expiry(dd: &DataDir) -> Option<i64> {
    let pem = std::fs::read(dd.server_cert()).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}
