//! The task that puts rotated keys in use: every `auth.key_reload_s` it checks the
//! access-token keys, the server certificate, the command keys and the release keys, and
//! installs whatever changed. A file that does not load is logged and what is in use stays.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::api;
use crate::auth::jwt::JwtKeys;
use crate::datadir::DataDir;
use crate::metrics::Metrics;
use crate::pki::ServerCert;
use crate::supervise::TaskResult;

/// What the reload task watches and where it installs what it finds.
#[derive(Debug)]
pub struct Reload {
    pub dd: DataDir,
    pub api: api::AppState,
    pub server_cert: Arc<ServerCert>,
    pub metrics: Metrics,
}

/// Runs until `shutdown`.
pub async fn run(r: Reload, shutdown: CancellationToken) -> TaskResult {
    let jwt_path = r.dd.jwt_keys();
    let mut jwt_seen = modified(&jwt_path);
    let mut tick = tokio::time::interval(Duration::from_secs(r.api.cfg.auth.key_reload_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = modified(&jwt_path);
        if now != jwt_seen {
            match JwtKeys::load(&jwt_path) {
                Ok(keys) => {
                    tracing::info!(kid = keys.current_kid(), "access-token keys reloaded");
                    r.api.set_jwt(keys);
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
