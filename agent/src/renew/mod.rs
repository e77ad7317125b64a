//! Automatic renewal of the device certificate over the authenticated MQTT connection.
//!
//! When no more than a third of the certificate's lifetime remains, the agent makes a new
//! key and CSR (as enrollment does) and publishes it on `up/csr`; the controller answers
//! on `down/cert`. An issued certificate is checked (chains to the pinned CA, names this
//! device, certifies the new key) and installed with atomic file replacement, the previous
//! pair kept as `<name>.old` until a connection with the new pair succeeds; if the new pair
//! keeps failing to connect, the old one comes back. Refusals and unanswered requests are
//! retried after the controller's delay or a jittered backoff.
//!
//! The decisions are here; [`crate::run`] owns the link and reloads the TLS configs and
//! the receipt signer when [`Renewal`] says the files changed.

pub mod validity;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pifleet_io::{FileError, write_private};
use pifleet_shared::proto::v1::{RenewAnswer, RenewRequest};
use pifleet_shared::topic::Kind;
use pifleet_shared::{DeviceId, codec};
use rcgen::KeyPair;

use crate::backoff::{Backoff, jitter};
use crate::config::{AgentConfig, MqttSection};
use crate::tls;

/// Failed connections with a new pair after which the previous one is restored.
const CONFIRM_ATTEMPTS: u32 = 5;

/// The identity files renewal replaces.
#[derive(Debug, Clone)]
pub struct Paths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Paths {
    fn old(p: &Path) -> PathBuf {
        let mut name = p.as_os_str().to_owned();
        name.push(".old");
        PathBuf::from(name)
    }
}

enum State {
    Idle,
    /// A CSR is out, for this key.
    Asked {
        key: Box<KeyPair>,
        since: Instant,
    },
    /// A new pair is installed; the previous one waits as `.old` for the first
    /// connection with the new one.
    Confirming {
        failures: u32,
    },
}

/// What the run loop must do after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// The key and certificate files changed: reload the TLS configs and the receipt
    /// signer, and reconnect.
    Reload,
}

/// The renewal state machine.
pub struct Renewal {
    paths: Paths,
    device: DeviceId,
    check_every: Duration,
    answer_timeout: Duration,
    backoff: Backoff,
    next_check: Instant,
    state: State,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Renewal {
    /// Settles what an interrupted renewal left: a new pair that does not match (a crash
    /// between its two files) gives way to the `.old` one; a matching new pair is kept and
    /// confirmed by the next connection. Runs before the TLS configs are loaded.
    pub fn start(cfg: &AgentConfig) -> Self {
        let paths = Paths {
            ca: cfg.tls.ca.clone(),
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
        };
        Self::with(paths, cfg.device_id.clone(), &cfg.mqtt)
    }

    /// [`Renewal::start`] from its parts.
    pub fn with(paths: Paths, device: DeviceId, r: &MqttSection) -> Self {
        let pending = [&paths.cert, &paths.key]
            .iter()
            .any(|p| Paths::old(p).exists());
        let state = if !pending {
            State::Idle
        } else if tls::mqtt_client(&paths.ca, &paths.cert, &paths.key).is_ok() {
            // Loading the pair checks that the key is the certificate's.
            info("a renewed certificate waits for its first connection");
            State::Confirming { failures: 0 }
        } else {
            warn(
                "an interrupted renewal left a mismatched pair: restoring the previous certificate",
                &"",
            );
            restore(&paths);
            State::Idle
        };
        Self {
            paths,
            device,
            check_every: Duration::from_secs(r.renew_check_s),
            answer_timeout: Duration::from_secs(r.renew_answer_timeout_s),
            backoff: Backoff::new(
                Duration::from_secs(r.renew_check_s.min(r.renew_backoff_max_s)),
                Duration::from_secs(r.renew_backoff_max_s),
            ),
            next_check: Instant::now(),
            state,
        }
    }

    /// Called every second or so: returns a `csr` payload to publish when renewal is due
    /// (and the link is up), and gives up on a request that went unanswered.
    pub fn tick(&mut self, connected: bool, now_unix: i64) -> Option<Vec<u8>> {
        let now = Instant::now();
        match &self.state {
            State::Asked { since, .. } if since.elapsed() > self.answer_timeout => {
                warn("no answer to the renewal request; asking again later", &"");
                self.state = State::Idle;
                self.next_check = now + self.backoff.next_delay();
                None
            }
            State::Idle if connected && now >= self.next_check => {
                self.next_check = now + jittered(self.check_every);
                let due = std::fs::read(&self.paths.cert)
                    .ok()
                    .and_then(|pem| first_cert_validity(&pem))
                    .map(|(nb, na)| validity::renew_at(nb, na));
                match due {
                    Some(due) if now_unix >= due => self.ask(),
                    Some(_) => None,
                    None => {
                        warn(
                            "cannot read the certificate's validity; renewing",
                            &self.paths.cert.display(),
                        );
                        self.ask()
                    }
                }
            }
            _ => None,
        }
    }

    fn ask(&mut self) -> Option<Vec<u8>> {
        let made = crate::enroll::key_and_csr(&self.device).map_err(|e| e.to_string());
        let payload = made.and_then(|(key, csr_pem)| {
            let p = codec::encode(Kind::Csr, &RenewRequest { csr_pem }).map_err(|e| e.to_string());
            p.map(|p| (key, p))
        });
        match payload {
            Ok((key, payload)) => {
                info("renewing the device certificate");
                self.state = State::Asked {
                    key: Box::new(key),
                    since: Instant::now(),
                };
                Some(payload)
            }
            Err(e) => {
                warn("cannot make a renewal request", &e);
                self.next_check = Instant::now() + self.backoff.next_delay();
                None
            }
        }
    }

    /// A `down/cert` message: installs an issued certificate that checks out, or waits as
    /// a refusal says.
    pub fn on_answer(&mut self, payload: &[u8]) -> Step {
        let answer = match codec::decode::<RenewAnswer>(Kind::Cert, payload) {
            Ok(a) => a,
            Err(e) => {
                warn("undecodable renewal answer dropped", &e);
                return Step::Nothing;
            }
        };
        let State::Asked { key, .. } = &self.state else {
            warn("renewal answer without a request ignored", &"");
            return Step::Nothing;
        };
        match answer {
            RenewAnswer::Refused {
                reason,
                retry_after_s,
            } => {
                warn(
                    "the controller refused the renewal",
                    &format_args!("{reason}; again in {retry_after_s} s"),
                );
                self.state = State::Idle;
                let wait = Duration::from_secs(u64::from(retry_after_s.max(1)));
                self.next_check = Instant::now() + wait + jittered(wait) / 10;
                Step::Nothing
            }
            RenewAnswer::Issued { cert_pem } => {
                let key_pem = key.serialize_pem();
                let raw = key.public_key_raw();
                let p = &self.paths;
                // A late answer to an earlier request does not match this key: keep
                // waiting for ours.
                if let Err(e) = tls::check_issued(&p.ca, &cert_pem, raw, self.device.as_str()) {
                    warn("renewed certificate refused", &e);
                    return Step::Nothing;
                }
                match install(p, &cert_pem, &key_pem) {
                    Ok(()) => {
                        info("renewed certificate installed; reconnecting with it");
                        self.state = State::Confirming { failures: 0 };
                        self.backoff.reset();
                        Step::Reload
                    }
                    Err(e) => {
                        warn("cannot install the renewed certificate", &e);
                        restore(p);
                        self.state = State::Idle;
                        self.next_check = Instant::now() + self.backoff.next_delay();
                        Step::Reload
                    }
                }
            }
        }
    }

    /// The link connected: a new pair is confirmed and the old one goes.
    pub fn on_connected(&mut self) {
        if let State::Confirming { .. } = self.state {
            for p in [&self.paths.cert, &self.paths.key] {
                let _ = std::fs::remove_file(Paths::old(p));
            }
            info("connected with the renewed certificate");
            self.state = State::Idle;
            self.next_check = Instant::now();
        }
    }

    /// A connection attempt failed: a new pair that keeps failing gives way to the old one.
    pub fn on_connect_failed(&mut self) -> Step {
        let State::Confirming { failures } = &mut self.state else {
            return Step::Nothing;
        };
        *failures += 1;
        if *failures < CONFIRM_ATTEMPTS {
            return Step::Nothing;
        }
        warn(
            "cannot connect with the renewed certificate: going back to the previous one",
            &"",
        );
        restore(&self.paths);
        self.state = State::Idle;
        self.next_check = Instant::now() + self.backoff.next_delay();
        Step::Reload
    }
}

/// The validity of the first certificate of a PEM file.
fn first_cert_validity(pem: &[u8]) -> Option<(i64, i64)> {
    let certs = tls::pem_certs(pem).ok()?;
    validity::validity(certs.first()?)
}

/// `d` plus up to a tenth more.
fn jittered(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(jitter(ms, ms.saturating_add(ms / 10)))
}

/// Keeps the current pair as `.old`, then replaces key and certificate (each written to a
/// temp file, fsynced and renamed).
fn install(p: &Paths, cert_pem: &str, key_pem: &str) -> Result<(), FileError> {
    for path in [&p.cert, &p.key] {
        let current = std::fs::read(path).map_err(|source| FileError::Io {
            path: path.clone(),
            source,
        })?;
        write_private(&Paths::old(path), &current)?;
    }
    write_private(&p.key, key_pem.as_bytes())?;
    write_private(&p.cert, cert_pem.as_bytes())
}

/// Puts the `.old` pair back (each file renamed over the current one).
fn restore(p: &Paths) {
    for path in [&p.key, &p.cert] {
        let old = Paths::old(path);
        if old.exists()
            && let Err(e) = std::fs::rename(&old, path)
        {
            warn(
                "cannot restore the previous file",
                &format_args!("{}: {e}", path.display()),
            );
        }
    }
}

// One call site per level: each `tracing` call site costs binary size, and the agent's
// budget is tight.
fn info(what: &str) {
    tracing::info!("{what}");
}

fn warn(what: &str, detail: &dyn std::fmt::Display) {
    tracing::warn!(detail = %detail, "{what}");
}

#[cfg(test)]
mod tests;
