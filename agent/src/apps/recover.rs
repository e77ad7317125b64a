//! Crash recovery at agent start: each app's journal says which step an apply had reached
//! when the agent stopped, and recovery finishes or undoes it.
//!
//! | journaled phase | what recovery does                                               |
//! |-----------------|------------------------------------------------------------------|
//! | `committed`     | removes leftovers (staging directories, `current.new`)           |
//! | `unpacking`     | removes the partial or unswitched release; `current` is untouched |
//! | `switched`      | the gate never passed: rolls back as if it had failed            |
//! | `rolling_back`  | finishes the rollback (every step of it is idempotent)           |
//!
//! A release interrupted after its switch is treated as failed and not retried on its own:
//! it may be what brought the device down (a kernel panic, a watchdog reset).

use super::apply::Undo;
use super::journal::Phase;
use super::layout::Layout;
use super::{AppConfig, ApplyError, Deployer, Outcome, Systemd};

/// The reason recorded for a release whose apply was interrupted after the switch.
pub const INTERRUPTED: &str =
    "interrupted before its health gate passed (agent restart or power loss)";

/// What recovery did for one app.
#[derive(Debug)]
pub struct Recovered {
    pub app: String,
    pub result: Result<Recovery, ApplyError>,
}

/// What an app's recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No apply was interrupted (leftovers, if any, were removed).
    Clean,
    /// An unpack was interrupted: its files are gone and `current` is as it was.
    DiscardedUnpack { release: u64, dir: String },
    /// A switched release was rolled back (or its rollback finished).
    RolledBack(Outcome),
}

impl<S: Systemd> Deployer<S> {
    /// Recovers every configured app; run once when the agent starts, before any apply.
    pub async fn recover(&self) -> Vec<Recovered> {
        let mut done = Vec::with_capacity(self.settings.apps.len());
        for (app, cfg) in &self.settings.apps {
            let result = self.recover_app(app, cfg).await;
            match &result {
                Ok(Recovery::Clean) => {}
                Ok(r) => tracing::warn!(app, recovery = ?r, "interrupted apply recovered"),
                Err(e) => tracing::error!(app, error = %e, "cannot recover an interrupted apply"),
            }
            done.push(Recovered {
                app: app.clone(),
                result,
            });
        }
        done
    }

    async fn recover_app(&self, app: &str, cfg: &AppConfig) -> Result<Recovery, ApplyError> {
        let (_, lock) = self.app(app)?;
        let _one_at_a_time = lock.lock().await;
        let mut state = self.store.load(app)?;
        let layout = Layout::new(&cfg.dir(app));
        layout.clean_leftovers()?;
        match state.phase.clone() {
            Phase::Committed { .. } => Ok(Recovery::Clean),
            Phase::Unpacking {
                release,
                dir,
                previous,
            } => {
                if layout.current()?.as_deref() != Some(dir.as_str()) {
                    layout.remove_release(&dir)?;
                }
                state.phase = Phase::Committed { current: previous };
                self.store.save(app, &state)?;
                Ok(Recovery::DiscardedUnpack { release, dir })
            }
            Phase::Switched {
                release,
                dir,
                previous,
                check,
            } => {
                let undo = Undo {
                    release,
                    dir,
                    previous,
                    check,
                    reason: INTERRUPTED.to_owned(),
                };
                let outcome = self.roll_back(app, cfg, &layout, state, undo).await?;
                Ok(Recovery::RolledBack(outcome))
            }
            Phase::RollingBack {
                release,
                dir,
                previous,
                check,
                reason,
            } => {
                let undo = Undo {
                    release,
                    dir,
                    previous,
                    check,
                    reason,
                };
                let outcome = self.roll_back(app, cfg, &layout, state, undo).await?;
                Ok(Recovery::RolledBack(outcome))
            }
        }
    }
}
