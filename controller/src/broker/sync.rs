//! `pifleet-controller broker-sync`: beside an external broker on a host with no controller,
//! it follows revocations through the database. Every publication of the CRL is stored in
//! the database (`published_crl`); each pass here reads it and, when its number is above the
//! one of the broker's installed `crl.pem`, checks it was signed by the broker's CA, installs
//! it atomically (keeping the file's mode and owner), sends the broker SIGHUP, and ends the
//! live sessions of the devices whose certificates it lists and the replaced one did not.
//!
//! It needs no data dir and no CA key: the database (read only), the broker's directory and
//! a controller identity for the kicks. Whatever fails is tried again at the next pass: a
//! CRL refused stays refused until a newer one is stored, a reload or kick that failed is
//! repeated, a database or broker away is waited for.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pifleet_shared::DeviceId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::kick::{ControllerClientConfig, kick};
use super::mosquitto::BrokerDir;
use super::revoke::{BrokerProcess, reload};
use super::write::replace_keeping_owner;
use super::{BrokerError, io};
use crate::pki::tls::normalize_serial;
use crate::store::{Store, StoreError};

/// How often the database is read by default.
pub const DEFAULT_CHECK: Duration = Duration::from_secs(5);

/// What `broker-sync` works on.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker's directory (`broker-config mosquitto --out`): `crl.pem`, `ca.crt`.
    pub broker: BrokerDir,
    /// The running broker, for SIGHUP.
    pub process: BrokerProcess,
    /// The controller identity that ends sessions on the controller listener.
    pub kick: ControllerClientConfig,
    /// Time between passes.
    pub check: Duration,
    /// Time the broker is given to reload before the kicks, so a kicked device that
    /// reconnects at once meets the new CRL.
    pub settle: Duration,
}

/// A set of CRLs: its number and the serials it lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlInfo {
    pub number: u64,
    pub serials: HashSet<String>,
}

/// Why a CRL is not installed.
#[derive(Debug, thiserror::Error)]
pub enum CrlRefusal {
    #[error("not PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("no CRL in it")]
    Empty,
    #[error("CRL {index} does not parse: {why}")]
    Parse { index: usize, why: String },
    #[error("CRL {index} has no CRL number")]
    NoNumber { index: usize },
    #[error("CRL {index} has a CRL number above 2^64")]
    NumberTooLarge { index: usize },
    #[error("the broker's CA file {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    #[error("CRL {index} (issuer {issuer}) is not signed by the broker's CA ({path})")]
    NotSigned {
        index: usize,
        issuer: String,
        path: PathBuf,
    },
}

/// Why a pass did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Nothing new in the database (or nothing stored yet).
    Unchanged,
    /// A newer CRL was installed and the broker reloaded; devices newly revoked.
    Installed { number: u64, devices: Vec<String> },
    /// The database's CRL is not one the broker could use: the installed one is kept.
    Refused { number: u64 },
}

/// Reads the number and serials of PEM CRLs, failing on anything the broker could not
/// load. The number is the highest any of them carries (during a CA rotation there is one
/// CRL per CA, with the same number).
pub fn inspect(
    pem: &[u8],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, CrlInfo), CrlRefusal> {
    let ders = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CrlRefusal::Pem)?;
    if ders.is_empty() {
        return Err(CrlRefusal::Empty);
    }
    let mut info = CrlInfo::default();
    for (i, der) in ders.iter().enumerate() {
        let index = i + 1;
        let crl = parse(der, index)?;
        let number = match crl.crl_number().map(|n| n.to_u64_digits()).as_deref() {
            None => return Err(CrlRefusal::NoNumber { index }),
            Some([]) => 0,
            Some([n]) => *n,
            Some(_) => return Err(CrlRefusal::NumberTooLarge { index }),
        };
        info.number = info.number.max(number);
        for rc in crl.iter_revoked_certificates() {
            info.serials
                .insert(normalize_serial(&rc.raw_serial_as_string()));
        }
    }
    Ok((ders, info))
}

fn parse<'a>(
    der: &'a CertificateRevocationListDer<'_>,
    index: usize,
) -> Result<CertificateRevocationList<'a>, CrlRefusal> {
    CertificateRevocationList::from_der(der)
        .map(|(_, crl)| crl)
        .map_err(|e| CrlRefusal::Parse {
            index,
            why: e.to_string(),
        })
}

/// The CRL installed in the broker's directory; `None` when it is missing or unreadable
/// (any stored CRL then replaces it).
pub fn installed(broker: &BrokerDir) -> Option<CrlInfo> {
    let pem = std::fs::read(broker.crl()).ok()?;
    inspect(&pem).ok().map(|(_, info)| info)
}

/// Checks that `pem` holds CRLs signed by the CA certificates in `ca_file` (the broker's
/// `cafile`): the first one (the current CA's) must be signed by one of them; any other
/// (the previous CA's, during a CA rotation) too, unless its issuer is none of them — a CRL
/// of a CA the broker does not trust changes nothing there. A CRL the broker could not use
/// would fail every device's handshake after the reload.
pub fn verify(pem: &[u8], ca_file: &Path) -> Result<CrlInfo, CrlRefusal> {
    let (ders, info) = inspect(pem)?;
    let ca_err = |why: String| CrlRefusal::CaFile {
        path: ca_file.to_owned(),
        why,
    };
    let cas = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ca_err(e.to_string()))?;
    let mut parsed_cas = Vec::with_capacity(cas.len());
    for der in &cas {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| ca_err(e.to_string()))?;
        parsed_cas.push(cert);
    }
    if parsed_cas.is_empty() {
        return Err(ca_err("no CA certificate in it".to_owned()));
    }
    for (i, der) in ders.iter().enumerate() {
        let crl = parse(der, i + 1)?;
        let signed = parsed_cas
            .iter()
            .any(|ca| crl.verify_signature(ca.public_key()).is_ok());
        let known_issuer = parsed_cas
            .iter()
            .any(|ca| ca.subject().as_raw() == crl.issuer().as_raw());
        if !signed && (i == 0 || known_issuer) {
            return Err(CrlRefusal::NotSigned {
                index: i + 1,
                issuer: crl.issuer().to_string(),
                path: ca_file.to_owned(),
            });
        }
    }
    Ok(info)
}

/// Verifies `pem` against the broker's CA and installs it over the broker's `crl.pem`,
/// atomically, keeping the file's mode and owner (a new file is 0644). Nothing is written
/// when it is refused.
pub fn install(broker: &BrokerDir, pem: &[u8]) -> Result<CrlInfo, BrokerError> {
    let info = verify(pem, &broker.ca())?;
    replace_keeping_owner(&broker.crl(), pem, 0o644)?;
    Ok(info)
}

/// The follower's state between passes.
#[derive(Debug)]
pub struct BrokerSync {
    opts: Options,
    store: Store,
    /// The broker has not acknowledged a SIGHUP for the installed CRL yet.
    reload_due: bool,
    /// Serials newly listed by an installed CRL whose devices are not known yet (the
    /// database failed in between), looked up again at the next pass.
    serials_due: BTreeSet<String>,
    /// Devices whose kick failed, tried again at the next pass.
    kicks_due: BTreeSet<String>,
    /// The stored CRL number last refused (logged once).
    refused: Option<u64>,
}

impl BrokerSync {
    pub fn new(store: Store, opts: Options) -> Self {
        Self {
            opts,
            store,
            reload_due: false,
            serials_due: BTreeSet::new(),
            kicks_due: BTreeSet::new(),
            refused: None,
        }
    }

    /// One pass: install a newer stored CRL, reload the broker, kick the newly revoked;
    /// then whatever an earlier pass left to do.
    pub async fn pass(&mut self) -> Result<Pass, SyncError> {
        let outcome = self.follow().await;
        let mapped = self.map_due().await;
        if self.reload_due {
            let process = self.opts.process.clone();
            let pid = blocking(move || reload(&process)).await?;
            self.reload_due = false;
            tracing::info!(pid, "broker reloading its CRL");
            tokio::time::sleep(self.opts.settle).await;
        }
        let mut failed = None;
        for id in std::mem::take(&mut self.kicks_due) {
            let Ok(device) = DeviceId::parse(&id) else {
                continue;
            };
            match kick(&self.opts.kick, &device).await {
                Ok(()) => tracing::info!(device = %device, "revoked device's broker session ended"),
                Err(e) => {
                    self.kicks_due.insert(id);
                    failed = Some(e);
                }
            }
        }
        let outcome = outcome?;
        mapped?;
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(outcome),
        }
    }

    /// Reads the database and installs what is newer than the broker's CRL.
    async fn follow(&mut self) -> Result<Pass, SyncError> {
        let Some(stored) = self.store.latest_crl().await? else {
            return Ok(Pass::Unchanged);
        };
        let broker = self.opts.broker.clone();
        let current = blocking(move || Ok(installed(&broker))).await?;
        if current.as_ref().is_some_and(|c| c.number >= stored.number) {
            if let Some(c) = &current
                && c.number > stored.number
                && self.refused != Some(stored.number)
            {
                // Only a database restored from a backup goes back; log it once.
                self.refused = Some(stored.number);
                tracing::warn!(
                    installed = c.number,
                    stored = stored.number,
                    "the broker's CRL is newer than the database's: kept (after a database \
                     restore, install the database's CRL with broker-config sync-crl)"
                );
            }
            return Ok(Pass::Unchanged);
        }
        let broker = self.opts.broker.clone();
        let pem = stored.pem.clone().into_bytes();
        let info = match blocking(move || install(&broker, &pem)).await {
            Ok(info) => info,
            Err(BrokerError::Refused(why)) => {
                if self.refused != Some(stored.number) {
                    self.refused = Some(stored.number);
                    tracing::error!(
                        number = stored.number,
                        why = %why,
                        "the database's CRL was refused; the broker keeps its installed one"
                    );
                }
                return Ok(Pass::Refused {
                    number: stored.number,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.refused = None;
        self.reload_due = true;
        let before = current.map(|c| c.serials).unwrap_or_default();
        self.serials_due
            .extend(info.serials.difference(&before).cloned());
        let devices = self.map_due().await?;
        tracing::info!(
            number = info.number,
            revoked = info.serials.len(),
            devices = devices.len(),
            "CRL installed for the broker"
        );
        Ok(Pass::Installed {
            number: info.number,
            devices,
        })
    }

    /// The devices of the serials due, which become kicks due; the serials stay due when
    /// the database fails.
    async fn map_due(&mut self) -> Result<Vec<String>, StoreError> {
        if self.serials_due.is_empty() {
            return Ok(Vec::new());
        }
        let serials: Vec<String> = self.serials_due.iter().cloned().collect();
        let devices = self.store.devices_of_serials(&serials).await?;
        self.serials_due.clear();
        self.kicks_due.extend(devices.iter().cloned());
        Ok(devices)
    }

    /// Passes every `check` until `shutdown`; errors are logged and retried.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            broker_dir = %self.opts.broker.root().display(),
            check_s = self.opts.check.as_secs(),
            "broker sync started"
        );
        self.follow_until(shutdown).await;
        tracing::info!("broker sync stopped");
    }

    async fn follow_until(&mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.opts.check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.pass() => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "broker sync pass failed; retrying at the next one");
            }
        }
    }
}

/// File I/O and signals, off the executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io(Path::new("crl.pem"))(std::io::Error::other(e)))?
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
