//! Publishing `crl.pem` from the database.
//!
//! The database is the truth about revocation; the CRL is derived from its full set of
//! revoked certificates every time, never patched. The command line and the running
//! controller both publish it, so publication is serialized across processes by an
//! exclusive lock on `crl.lock`: under it, one write transaction takes the next CRL number
//! and reads the revoked set, and the signed CRL is written to a temp file of its own,
//! fsynced and renamed over `crl.pem`. A CRL with a higher number therefore never lists
//! fewer certificates, and an older CRL never replaces a newer one. The controller
//! publishes at start-up, on every revocation (also of an already revoked device, which
//! repairs a failed earlier attempt), when its check finds the database ahead of the CRL,
//! and at least every `pki.crl_refresh_s`, so the CRL converges to the database and never
//! passes its nextUpdate.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use tokio_util::sync::CancellationToken;

use super::{Ca, PkiError, Revoked};
use crate::config::PkiConfig;
use crate::datadir::{DataDir, DataDirError, write_private};
use crate::store::{Store, StoreError, now_ms};
use crate::supervise::{Fatal, Health, TaskResult};

/// Why the CRL could not be published.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing the CRL: {0}")]
    Pki(#[from] PkiError),
    #[error("writing the CRL: {0}")]
    Write(#[from] DataDirError),
}

/// A published CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its CRL number.
    pub number: u64,
    /// How many certificates it lists.
    pub revoked: usize,
}

/// Publishes `crl.pem` from the database's revoked certificates, valid for
/// `next_update_days`, and stores it in the database (`published_crl`).
pub async fn publish(
    dd: &DataDir,
    store: &Store,
    ca: &Ca,
    next_update_days: u32,
) -> Result<Published, CrlError> {
    let path = dd.crl_lock();
    let lock = tokio::task::spawn_blocking(move || lock_exclusive(&path))
        .await
        .map_err(|e| CrlError::Lock {
            path: dd.crl_lock().display().to_string(),
            source: std::io::Error::other(e),
        })??;
    let (number, certs) = store.crl_snapshot().await?;
    let revoked: Vec<Revoked> = certs
        .into_iter()
        .map(|c| Revoked {
            serial_hex: c.serial,
            revoked_at_unix: c.revoked_at.unwrap_or_else(now_ms) / 1000,
        })
        .collect();
    let mut pem = ca.crl(&revoked, number, next_update_days)?;
    // During a CA rotation, the certificates the previous CA issued are checked against
    // its own CRL: sign one with it too (the same list; serials are random, so the other
    // CA's serials in it match nothing).
    if let Some(previous) = Ca::load_previous(dd)? {
        pem.push_str(&previous.crl(&revoked, number, next_update_days)?);
    }
    write_private(&dd.crl(), pem.as_bytes())?;
    // The database keeps it too, for `broker-sync` on a broker's host with no data dir
    // (a lower number, from a publication that finished late, is not stored).
    store.store_crl(number, &pem, now_ms()).await?;
    drop(lock);
    Ok(Published {
        number,
        revoked: revoked.len(),
    })
}

/// Waits for the exclusive lock on `path`; released on drop.
fn lock_exclusive(path: &Path) -> Result<Flock<File>, CrlError> {
    crate::datadir::lock_exclusive(path).map_err(|source| CrlError::Lock {
        path: path.display().to_string(),
        source,
    })
}

/// Keeps the CRL converged with the database while the controller runs: every
/// `pki.crl_check_s` it reads the database's revoked serials and hands them to `enforce`
/// (the gateway, which closes their connections and refuses their handshakes at once,
/// whatever the CRL file says), which returns how many it did not know yet; any such
/// serial means the CRL is behind (its last publication failed, or is in flight), so the
/// CRL is published. It is also published at least every `pki.crl_refresh_s`. A failed
/// publication is retried at the next check, the controller reporting itself not ready
/// meanwhile.
pub async fn keep(
    dd: DataDir,
    store: Store,
    ca: Ca,
    cfg: PkiConfig,
    enforce: impl Fn(HashSet<String>) -> usize + Send,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> TaskResult {
    const NAME: &str = "crl";
    let broken = |e| Fatal::new("the database is broken", e);
    let refresh = Duration::from_secs(cfg.crl_refresh_s);
    let mut published = Instant::now();
    let mut behind = false;
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.crl_check_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let serials = match store.revoked_serials().await {
            Ok(s) => s,
            Err(e) if e.is_fatal() => return Err(broken(e)),
            Err(e) => {
                health.degraded(NAME, &e);
                continue;
            }
        };
        let unknown = enforce(serials);
        if unknown > 0 {
            tracing::warn!(
                certificates = unknown,
                "revoked in the database but not on the CRL the gateway loaded: enforced now; publishing the CRL"
            );
            behind = true;
        }
        if !behind && published.elapsed() < refresh {
            health.recovered(NAME);
            continue;
        }
        match publish(&dd, &store, &ca, cfg.crl_next_update_days).await {
            Ok(p) => {
                tracing::info!(number = p.number, revoked = p.revoked, "CRL published");
                behind = false;
                published = Instant::now();
                health.recovered(NAME);
            }
            Err(CrlError::Store(e)) if e.is_fatal() => return Err(broken(e)),
            Err(e) => {
                behind = true;
                health.degraded(NAME, &e);
            }
        }
    }
}
