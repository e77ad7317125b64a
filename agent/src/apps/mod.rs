//! Application deployments on the device: installing a signed release, switching to it,
//! gating it on its health, rolling it back, and recovering from a crash in the middle.
//!
//! An install ([`Deployer::install`]) takes a verified [`Manifest`] and the archive as any
//! [`std::io::Read`] (the download client streams it in), and goes through these steps,
//! each recorded in the app's journal ([`journal`]) and fsynced *before* it is taken:
//!
//! 1. refuse what is not allowed: an app without `[apps.NAME]`, a hook or command probe the
//!    section does not declare, a release number below the committed one, a release that
//!    failed here before, too little free space;
//! 2. `unpacking`: unpack into a staging directory, checked entry by entry against the
//!    manifest, and rename it to `releases/<release>-<digest8>` ([`unpack`]);
//! 3. the `pre_start` hook, in the new release ([`hooks`]);
//! 4. `switched`: rename a new `current` link over the old one ([`layout`]), run the
//!    `post_switch` hook, restart the unit and apply the health gate ([`health`]);
//! 5. `committed`: the release is live; the anti-rollback floor rises to its number and
//!    the oldest releases beyond the last three are removed.
//!
//! A failure after the switch goes `rolling_back`: `current` goes back to the previous
//! release, the unit restarts and must pass the start and (shorter) soak check again, and
//! the failed release is recorded, removed, and never installed again unless a request
//! explicitly retries it. [`Deployer::recover`], run when the agent starts, finishes or
//! undoes whatever a power loss or `kill -9` interrupted, so `current` never points at a
//! half-unpacked release. [`Deployer::rollback`] goes back to a release the device keeps,
//! through the same switch and gate.
//!
//! Release files belong to the agent's user with the manifest's modes; the unit's `User=`
//! runs the app, which reads its release through the world-readable bits the release gives
//! and writes to `shared/`, which is handed to the app's user.

pub mod config;
pub mod health;
pub mod hooks;
pub mod journal;
pub mod layout;
pub mod unpack;
pub mod verify;

mod apply;
mod guard;
mod recover;
mod report;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use pifleet_shared::release::Manifest;

use crate::commands::exec::Limits;
use crate::config::AgentConfig;
pub use config::AppConfig;
pub use health::{Systemctl, Systemd, Timing};
use hooks::HookError;
use journal::{StateError, StateStore};
use layout::LayoutError;
pub use recover::{Recovered, Recovery};
use unpack::UnpackError;

/// What the deployer needs from the agent's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The deployable apps (`[apps.NAME]`).
    pub apps: BTreeMap<String, AppConfig>,
    /// Where the apps' journals and anti-rollback floors live.
    pub state_dir: PathBuf,
    /// The program path and output cap for systemctl, journalctl, hooks and probes.
    pub limits: Limits,
    pub timing: Timing,
}

impl Settings {
    /// From `agent.toml`: apps' state lives in `<commands.state_dir>/apps`, next to the
    /// command journal, in the agent's private state directory.
    pub fn from_config(cfg: &AgentConfig) -> Self {
        Self {
            apps: cfg.apps.clone(),
            state_dir: cfg.commands.state_dir.join("apps"),
            limits: Limits::from_config(&cfg.commands),
            timing: Timing::default(),
        }
    }
}

/// How a request may bend the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Install a release that failed on this device before.
    pub retry_failed: bool,
}

/// How an apply ended once it had switched (or found nothing to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The release passed its health gate and is live; `removed` are the releases pruned.
    Committed {
        release: u64,
        dir: String,
        removed: Vec<String>,
    },
    /// The release was live already; nothing was done.
    AlreadyCurrent { release: u64, dir: String },
    /// The release failed (`reason`); the previous release is live again and passed its
    /// check (`restored`; `None`: there was none, so the unit was stopped).
    RolledBack {
        release: u64,
        reason: String,
        journal_tail: String,
        restored: Option<String>,
    },
    /// The release failed and the previous one, switched back to, failed its check too.
    FailedUnrecoverable {
        release: u64,
        reason: String,
        journal_tail: String,
    },
}

/// Why an apply was refused or could not go on. A refusal changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("app {0:?} is not deployable here: agent.toml has no [apps.{0}]")]
    NotAllowlisted(String),
    #[error("the release asks for the {hook} hook, which [apps.{app}] does not declare")]
    HookNotDeclared { app: String, hook: String },
    #[error("the release's health probe is a command, and [apps.{0}] declares no probe")]
    ProbeNotDeclared(String),
    #[error(
        "release {release} is lower than the committed release {committed}; only a rollback to a release this device keeps may go back"
    )]
    Lower { release: u64, committed: u64 },
    #[error("release {0} is not kept on this device, so it cannot be rolled back to")]
    NotKept(String),
    #[error("release {0} failed on this device before; it is retried only when asked to")]
    PreviouslyFailed(String),
    #[error(
        "an interrupted apply of {app} is pending ({phase}); the agent recovers it when it starts"
    )]
    Pending { app: String, phase: String },
    #[error("app state: {0}")]
    State(#[from] StateError),
    #[error("app directory: {0}")]
    Layout(#[from] LayoutError),
    #[error("unpacking: {0}")]
    Unpack(#[from] UnpackError),
    #[error("kept release {dir} does not match its manifest: {source}")]
    Kept {
        dir: String,
        #[source]
        source: UnpackError,
    },
    #[error("{0}")]
    User(#[source] HookError),
    #[error("pre_start hook: {0}; the release was removed")]
    PreStart(#[source] HookError),
    #[error("the unpacking task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A test stopped the apply here, as a crash would.
    #[cfg(test)]
    #[error("simulated crash at {0:?}")]
    Crashed(Step),
}

/// The points between an apply's steps, where tests stop it as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `unpacking` is journaled, nothing unpacked yet.
    Unpacking,
    /// The release is unpacked into `releases/`, not switched to.
    Unpacked,
    /// `switched` is journaled, `current` not switched yet.
    Switching,
    /// `current` points at the new release; its gate has not run.
    Switched,
    /// `rolling_back` is journaled, `current` not switched back yet.
    RollingBack,
}

/// Installs, gates, rolls back and recovers the device's apps. One apply per app at a time.
#[derive(Debug)]
pub struct Deployer<S> {
    settings: Settings,
    store: StateStore,
    systemd: S,
    locks: BTreeMap<String, tokio::sync::Mutex<()>>,
    #[cfg(test)]
    crash_at: Option<Step>,
}

impl<S: Systemd> Deployer<S> {
    pub fn new(settings: Settings, systemd: S) -> Self {
        let locks = settings
            .apps
            .keys()
            .map(|k| (k.clone(), tokio::sync::Mutex::new(())))
            .collect();
        Self {
            store: StateStore::new(&settings.state_dir),
            settings,
            systemd,
            locks,
            #[cfg(test)]
            crash_at: None,
        }
    }

    /// Installs the release `manifest` describes from `archive` (its gzip-compressed tar,
    /// read once as a stream), switches to it and gates it. The manifest must have been
    /// verified against the pinned release keys.
    pub async fn install<R>(
        &self,
        manifest: Manifest,
        archive: R,
        opts: Options,
    ) -> Result<Outcome, ApplyError>
    where
        R: std::io::Read + Send + 'static,
    {
        // One copy of the apply path whatever the reader: it is large, readers are many.
        self.apply(manifest, Some(Box::new(archive)), opts).await
    }

    /// Goes back to a release this device keeps, whatever its number; its files are checked
    /// against its (verified) manifest first.
    pub async fn rollback(&self, manifest: Manifest, opts: Options) -> Result<Outcome, ApplyError> {
        self.apply(manifest, None, opts).await
    }

    /// The directory layout of a deployable app.
    pub fn layout(&self, app: &str) -> Result<layout::Layout, ApplyError> {
        let (cfg, _) = self.app(app)?;
        Ok(layout::Layout::new(&cfg.dir(app)))
    }

    /// The names of the deployable apps (`[apps.NAME]`).
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.settings.apps.keys().map(String::as_str)
    }

    /// The app's configuration and its apply lock.
    fn app(&self, name: &str) -> Result<(&AppConfig, &tokio::sync::Mutex<()>), ApplyError> {
        match (self.settings.apps.get(name), self.locks.get(name)) {
            (Some(cfg), Some(lock)) => Ok((cfg, lock)),
            _ => Err(ApplyError::NotAllowlisted(name.to_owned())),
        }
    }

    /// Stops the apply here if a test asked for a crash at `step`.
    fn step(&self, step: Step) -> Result<(), ApplyError> {
        #[cfg(test)]
        if self.crash_at == Some(step) {
            return Err(ApplyError::Crashed(step));
        }
        let _ = step;
        Ok(())
    }

    /// Limits for a hook or probe of `cfg`'s app.
    fn hook_limits(&self, cfg: &AppConfig) -> Limits {
        Limits {
            timeout: std::time::Duration::from_secs(cfg.hook_timeout_s),
            ..self.settings.limits.clone()
        }
    }
}
