//! The account lockout: every guess of a password or code is recorded as a failure before
//! it is checked (and settled afterwards), so at most `auth.lockout_failures` guesses per
//! window are ever checked, whatever the concurrency and across processes.

use std::net::IpAddr;

use crate::audit::Event;
use crate::config::AuthConfig;
use crate::metrics::Metrics;
use crate::store::attempts::{Attempt, Lockout, Reservation};
use crate::store::{Store, StoreError, now_ms};

/// The lockout key of a user name: case-insensitive, bounded.
pub fn name_key(name: &str) -> String {
    name.trim().to_lowercase().chars().take(128).collect()
}

/// The account is locked: no guess is checked for `retry_after_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed sign-ins: this account is locked for now")]
pub struct Locked {
    pub retry_after_s: u64,
}

fn rule(cfg: &AuthConfig) -> Lockout {
    Lockout {
        limit: cfg.lockout_failures,
        window_ms: cfg.lockout_window_s.saturating_mul(1000),
    }
}

/// Records a guess for `key` before it is checked, or says the account is locked.
pub async fn reserve(
    store: &Store,
    cfg: &AuthConfig,
    key: &str,
) -> Result<Result<Attempt, Locked>, StoreError> {
    Ok(match store.reserve_attempt(key, rule(cfg)).await? {
        Reservation::Reserved(a) => Ok(a),
        Reservation::Locked { until_ms } => Err(Locked {
            retry_after_s: u64::try_from((until_ms - now_ms() + 999) / 1000)
                .unwrap_or(1)
                .max(1),
        }),
    })
}

/// Settles a wrong guess as a failure; when it completes the lockout, counts and audits it
/// (actor `actor`, from `source`).
pub async fn failed(
    store: &Store,
    cfg: &AuthConfig,
    metrics: &Metrics,
    attempt: &Attempt,
    actor: &str,
    source: IpAddr,
) -> Result<(), StoreError> {
    if store.attempt_failed(attempt, rule(cfg)).await? {
        metrics.auth_events.with_label_values(&["lockout"]).inc();
        store
            .append_audit(&Event {
                actor: actor.to_owned(),
                source: source.to_string(),
                action: "auth.lockout".to_owned(),
                target: attempt.name.clone(),
                outcome: "locked".to_owned(),
                detail: String::new(),
            })
            .await?;
    }
    Ok(())
}
