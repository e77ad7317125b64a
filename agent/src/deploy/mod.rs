//! Release commands on the device: deploy, rollback, and the release key announcement.
//!
//! A deploy or rollback is checked in full *before* the device accepts it
//! ([`Deploys::prepare`]), so that a refusal is reported as one (the controller counts a
//! rejection only before acceptance): the app must be deployable here and not busy, the
//! signed manifest is downloaded from the controller the agent enrolled with and must have
//! the SHA-256 the command names, verify against a trusted release key, and name the
//! command's app, release and archive (digest and size); the release must be built for
//! this machine (`uname -m`) and pass the deployer's own checks (hooks and probe declared,
//! no lower release, not failed here before, kept for a rollback). A manifest the
//! controller does not have for this device (4xx) is a refusal too; one that cannot be
//! fetched (network, 5xx) fails the command instead.
//!
//! Once accepted ([`Deploys::run`]), a deploy downloads the archive to `downloads/` in the
//! app's directory, resuming what an earlier attempt left, checks its size and SHA-256, and
//! hands the file to [`Deployer::install`], which checks everything again while unpacking.
//! Progress goes out as `event` messages; the outcome is the command's receipt.

pub mod fetch;
mod guard;

use std::sync::{Arc, Mutex};

use pifleet_shared::codec;
use pifleet_shared::command::{Action, CommandId};
use pifleet_shared::proto::v1::{DeployPhase, DeployProgress, Event};
use pifleet_shared::release::{Manifest, SignedManifest, verify_manifest};
use pifleet_shared::topic::Kind;
use sha2::{Digest as _, Sha256};

use crate::apps::{ApplyError, Deployer, Options, Outcome, Systemctl};
use crate::commands::Sink;
use crate::release_keys::ReleaseKeys;
pub use fetch::Controller;

/// Why a release command was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAccepted {
    /// Refused: reported as a rejection.
    Refused(String),
    /// The checks could not be made (the controller unreachable, a disk error): reported
    /// as a failure.
    Failed(String),
}

/// How a release command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Live (or live already); what was done.
    Succeeded(String),
    /// Not live: why, and the unit's latest journal lines when the release ran.
    Failed { reason: String, journal: String },
}

/// A release command that passed its checks, ready to run.
#[derive(Debug)]
pub struct Prepared {
    manifest: Manifest,
    /// The signed manifest's SHA-256: how the controller names the release.
    manifest_sha256: [u8; 32],
    /// `Some(retry_failed)` for a deploy, `None` for a rollback.
    install: Option<bool>,
    already_current: bool,
    _claim: Claim,
}

/// An app with a release command in progress; released when dropped.
#[derive(Debug)]
struct Claim {
    busy: Arc<Mutex<Vec<String>>>,
    app: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.busy).retain(|a| a != &self.app);
    }
}

/// The apps with a release command in progress (a handful at most).
fn lock(busy: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    // Plain pushes and removals: a poisoned list is still whole.
    busy.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything release commands need.
pub struct Deploys {
    deployer: Deployer<Systemctl>,
    keys: Arc<ReleaseKeys>,
    controller: Controller,
    /// Progress events (`fleet/<id>/up/event`); dropped when the link cannot take them.
    events: Arc<dyn Sink>,
    machine: String,
    busy: Arc<Mutex<Vec<String>>>,
    /// Bumped whenever an app's releases may have changed (a release command ran, a guard
    /// rollback): the agent reports its apps again.
    changed: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for Deploys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deploys")
            .field("controller", &self.controller.endpoint)
            .field("machine", &self.machine)
            .finish_non_exhaustive()
    }
}

impl Deploys {
    /// `deployer` must have recovered already ([`Deployer::recover`]).
    pub fn new(
        deployer: Deployer<Systemctl>,
        keys: ReleaseKeys,
        controller: Controller,
        events: Arc<dyn Sink>,
    ) -> Self {
        Self {
            deployer,
            keys: Arc::new(keys),
            controller,
            events,
            machine: machine(),
            busy: Arc::default(),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Changes when an app's releases may have changed.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The allowlisted apps and their releases, as on disk now.
    pub fn app_states(&self) -> Vec<pifleet_shared::proto::v1::AppState> {
        self.deployer.app_states()
    }

    /// The deployable apps.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.deployer.apps()
    }

    /// Checks a verified, allowlisted deploy or rollback before it is accepted.
    pub async fn prepare(&self, action: &Action) -> Result<Prepared, NotAccepted> {
        use NotAccepted::{Failed, Refused};
        let (app, manifest_sha256, install) = match action {
            Action::Deploy {
                app,
                manifest_sha256,
                retry_failed,
                ..
            } => (app, manifest_sha256, Some(*retry_failed)),
            Action::Rollback {
                app,
                manifest_sha256,
                ..
            } => (app, manifest_sha256, None),
            _ => return Err(Refused("not a release command".into())),
        };
        let claim = self.claim(app)?;
        let keys = self.keys.current();
        if keys.is_empty() {
            return Err(Refused(
                "this device trusts no release key yet (tls.release_keys)".into(),
            ));
        }
        let bytes = match self.controller.manifest(manifest_sha256).await {
            Ok(b) => b,
            // The controller has no such release for this device (a digest it never made,
            // a release deleted meanwhile): asking again cannot help.
            Err(
                e @ fetch::FetchError::Status {
                    status: 400..=499, ..
                },
            ) => {
                return Err(Refused(format!("no manifest to install: {e}")));
            }
            Err(e) => return Err(Failed(format!("cannot fetch the manifest: {e}"))),
        };
        let got: [u8; 32] = Sha256::digest(&bytes).into();
        if &got != manifest_sha256 {
            return Err(Refused(
                "the manifest's SHA-256 is not the one the command names".into(),
            ));
        }
        let signed: SignedManifest = postcard::from_bytes(&bytes)
            .map_err(|e| Refused(format!("the signed manifest is malformed: {e}")))?;
        let manifest = verify_manifest(&signed, &keys).map_err(|e| Refused(e.to_string()))?;
        if let Some(why) = mismatch(action, &manifest, &self.machine) {
            return Err(Refused(why));
        }
        let opts = Options {
            retry_failed: install.unwrap_or(false),
        };
        let already_current = self
            .deployer
            .precheck(&manifest, install.is_some(), opts)
            .map_err(|e| match e {
                ApplyError::State(_) | ApplyError::Layout(_) => Failed(e.to_string()),
                e => Refused(e.to_string()),
            })?;
        Ok(Prepared {
            manifest,
            manifest_sha256: *manifest_sha256,
            install,
            already_current,
            _claim: claim,
        })
    }

    /// Whether a release command (or a guard rollback) holds `app` now.
    pub fn busy(&self, app: &str) -> bool {
        lock(&self.busy).iter().any(|a| a == app)
    }

    fn claim(&self, app: &str) -> Result<Claim, NotAccepted> {
        let mut busy = lock(&self.busy);
        if busy.iter().any(|a| a == app) {
            return Err(NotAccepted::Refused(format!(
                "a deploy or rollback of {app} is in progress"
            )));
        }
        busy.push(app.to_owned());
        Ok(Claim {
            busy: self.busy.clone(),
            app: app.to_owned(),
        })
    }

    /// Carries out an accepted, prepared release command.
    pub async fn run(&self, id: CommandId, p: Prepared) -> Done {
        let done = self.run_prepared(id, p).await;
        self.changed.send_replace(());
        done
    }

    async fn run_prepared(&self, id: CommandId, p: Prepared) -> Done {
        let m = &p.manifest;
        if p.already_current {
            return Done::Succeeded(format!(
                "release {} ({}) of {} is live already",
                m.release,
                m.dir_name(),
                m.app
            ));
        }
        let result = match p.install {
            Some(retry_failed) => {
                self.install(id, m.clone(), &p.manifest_sha256, retry_failed)
                    .await
            }
            None => {
                self.progress(id, m, DeployPhase::Installing, 0, 0);
                self.deployer
                    .rollback(m.clone(), Options::default())
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(outcome) => done(&m.app, outcome),
            Err(reason) => Done::Failed {
                reason,
                journal: String::new(),
            },
        }
    }

    /// Downloads the archive, then installs it.
    async fn install(
        &self,
        id: CommandId,
        manifest: Manifest,
        manifest_sha256: &[u8; 32],
        retry_failed: bool,
    ) -> Result<Outcome, String> {
        let layout = self
            .deployer
            .layout(&manifest.app)
            .map_err(|e| e.to_string())?;
        layout.ensure_downloads().map_err(|e| e.to_string())?;
        let dest = layout.download(&manifest.dir_name());
        let mut report = |bytes| {
            self.progress(
                id,
                &manifest,
                DeployPhase::Downloading,
                bytes,
                manifest.archive_size,
            );
        };
        self.controller
            .archive(
                manifest_sha256,
                &dest,
                manifest.archive_size,
                &manifest.archive_sha256,
                &mut report,
            )
            .await
            .map_err(|e| format!("downloading the archive: {e}"))?;
        self.progress(id, &manifest, DeployPhase::Installing, 0, 0);
        let file = std::fs::File::open(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        let result = self
            .deployer
            .install(manifest, file, Options { retry_failed })
            .await;
        // Unpacked, or refused for good: a retry downloads again.
        if let Err(e) = std::fs::remove_file(&dest) {
            tracing::warn!(path = %dest.display(), error = %e, "cannot remove the downloaded archive");
        }
        result.map_err(|e| e.to_string())
    }

    /// Replaces the controller's release keys (a `TrustReleaseKeys` command).
    pub async fn trust(&self, keys: Vec<[u8; 32]>) -> Result<String, String> {
        let store = self.keys.clone();
        let now = tokio::task::spawn_blocking(move || store.replace(&keys))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let ids: Vec<String> = now.iter().map(|k| k.id.to_string()).collect();
        tracing::info!(keys = ?ids, "release keys replaced by command");
        Ok(format!("trusting release keys {}", ids.join(", ")))
    }

    fn progress(
        &self,
        command: CommandId,
        m: &Manifest,
        phase: DeployPhase,
        bytes: u64,
        total: u64,
    ) {
        let ev = Event::Deploy(DeployProgress {
            command,
            app: m.app.clone(),
            release: m.release,
            phase,
            bytes,
            total,
        });
        self.send(&ev);
    }

    /// Sends an event on `up/event`; dropped when the link cannot take it.
    fn send(&self, ev: &Event) {
        match codec::encode(Kind::Event, ev) {
            Ok(payload) => {
                let _ = self.events.try_send(payload);
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode an event"),
        }
    }
}

/// Why a verified manifest does not fit the command or this machine, if it does not.
fn mismatch(action: &Action, m: &Manifest, machine: &str) -> Option<String> {
    let (app, release) = match action {
        Action::Deploy { app, release, .. } | Action::Rollback { app, release, .. } => {
            (app, *release)
        }
        _ => return Some("not a release command".into()),
    };
    if &m.app != app || m.release != release {
        return Some(format!(
            "the manifest is release {} of {}, the command names release {release} of {app}",
            m.release, m.app
        ));
    }
    if let Action::Deploy {
        archive_sha256,
        archive_size,
        ..
    } = action
        && (&m.archive_sha256 != archive_sha256 || m.archive_size != *archive_size)
    {
        return Some("the manifest's archive is not the one the command names".into());
    }
    if !m.arches.is_empty() && !m.arches.iter().any(|a| a == machine) {
        return Some(format!(
            "the release is built for {}, this device is {machine}",
            m.arches.join(", ")
        ));
    }
    None
}

/// What an apply's outcome reports.
fn done(app: &str, outcome: Outcome) -> Done {
    match outcome {
        Outcome::Committed {
            release,
            dir,
            removed,
        } => {
            let removed = if removed.is_empty() {
                String::new()
            } else {
                format!("; removed {}", removed.join(", "))
            };
            Done::Succeeded(format!(
                "release {release} ({dir}) of {app} is live{removed}"
            ))
        }
        Outcome::AlreadyCurrent { release, dir } => Done::Succeeded(format!(
            "release {release} ({dir}) of {app} is live already"
        )),
        Outcome::RolledBack {
            release,
            reason,
            journal_tail,
            restored,
        } => {
            let back = match restored {
                Some(dir) => format!("{dir} is live again"),
                None => "no earlier release: the unit was stopped".to_owned(),
            };
            Done::Failed {
                reason: format!("rolled_back: release {release} of {app} failed: {reason}; {back}"),
                journal: journal_tail,
            }
        }
        Outcome::FailedUnrecoverable {
            release,
            reason,
            journal_tail,
        } => Done::Failed {
            reason: format!("failed_unrecoverable: release {release} of {app}: {reason}"),
            journal: journal_tail,
        },
    }
}

/// This machine's architecture as `uname -m` names it (what release manifests list).
fn machine() -> String {
    match nix::sys::utsname::uname() {
        Ok(u) => u.machine().to_string_lossy().into_owned(),
        Err(_) => std::env::consts::ARCH.to_owned(),
    }
}

#[cfg(test)]
mod tests;
