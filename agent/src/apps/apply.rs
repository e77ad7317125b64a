//! The steps of one apply: the checks, unpack, hooks, switch, health gate, and then commit
//! or roll back. Each step is journaled before it is taken (see the module above).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use pifleet_shared::release::{Manifest, Probe};

use super::health::{self, Gate, Prober};
use super::hooks;
use super::journal::{AppState, Check, Guard, Phase};
use super::layout::{KEEP, Layout};
use super::unpack::unpack;
use super::verify::verify_release;
use super::{AppConfig, ApplyError, Deployer, Options, Outcome, Step, Systemd};
use crate::commands::exec::Context;

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// A release on its way to being live: what the switch and the gate need.
struct Candidate<'a> {
    app: &'a str,
    cfg: &'a AppConfig,
    layout: Layout,
    manifest: Arc<Manifest>,
    dir: String,
    previous: Option<String>,
    ids: Option<(u32, u32)>,
    /// An install (guarded once committed) rather than a rollback.
    install: bool,
}

/// A release to undo: it failed (`reason`) after `current` was switched to it.
#[derive(Debug, Clone)]
pub(super) struct Undo {
    pub release: u64,
    pub dir: String,
    pub previous: Option<String>,
    pub check: Check,
    pub reason: String,
}

/// Whether an admissible request has anything to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ready {
    Go,
    AlreadyCurrent,
}

/// Refuses a release asking for a hook or a command probe the app's section does not
/// declare.
pub(super) fn declared(manifest: &Manifest, cfg: &AppConfig) -> Result<(), ApplyError> {
    if let Some(hook) = manifest.hooks.iter().find(|h| cfg.hook(h).is_none()) {
        return Err(ApplyError::HookNotDeclared {
            app: manifest.app.clone(),
            hook: hook.clone(),
        });
    }
    if manifest.health.probe == Some(Probe::Command) && cfg.probe.is_none() {
        return Err(ApplyError::ProbeNotDeclared(manifest.app.clone()));
    }
    Ok(())
}

/// What an install (`install`) or a rollback refuses before it changes anything, given the
/// app's state, the release `current` points at and whether the release is `kept` in
/// `releases/`: an interrupted apply pending, a lower release than the committed one (an
/// install), a release that failed here before (unless retried), a release no longer kept
/// (a rollback). Pure.
pub(super) fn admissible(
    manifest: &Manifest,
    state: &AppState,
    current: Option<&str>,
    kept: bool,
    install: bool,
    opts: Options,
) -> Result<Ready, ApplyError> {
    if !matches!(state.phase, Phase::Committed { .. }) {
        return Err(ApplyError::Pending {
            app: manifest.app.clone(),
            phase: state.phase.describe(),
        });
    }
    let dir = manifest.dir_name();
    if current == Some(dir.as_str()) {
        return Ok(Ready::AlreadyCurrent);
    }
    if install && manifest.release < state.committed {
        return Err(ApplyError::Lower {
            release: manifest.release,
            committed: state.committed,
        });
    }
    if state.has_failed(&dir) && !opts.retry_failed {
        return Err(ApplyError::PreviouslyFailed(dir));
    }
    if !install && !kept {
        return Err(ApplyError::NotKept(dir));
    }
    Ok(Ready::Go)
}

impl<S: Systemd> Deployer<S> {
    /// What [`Deployer::install`] (`install`) or [`Deployer::rollback`] would refuse before
    /// changing anything, checked without changing anything; `Ok(true)` when the release is
    /// live already. Lets a command be refused before the device accepts it.
    pub fn precheck(
        &self,
        manifest: &Manifest,
        install: bool,
        opts: Options,
    ) -> Result<bool, ApplyError> {
        let (cfg, _) = self.app(&manifest.app)?;
        declared(manifest, cfg)?;
        hooks::run_as(&cfg.user).map_err(ApplyError::User)?;
        let state = self.store.load(&manifest.app)?;
        let layout = Layout::new(&cfg.dir(&manifest.app));
        let kept = layout.has_release(&manifest.dir_name());
        let ready = admissible(
            manifest,
            &state,
            layout.current()?.as_deref(),
            kept,
            install,
            opts,
        )?;
        Ok(ready == Ready::AlreadyCurrent)
    }

    /// Installs (`archive` given) or rolls back to a kept release (`None`).
    pub(super) async fn apply(
        &self,
        manifest: Manifest,
        archive: Option<Box<dyn Read + Send>>,
        opts: Options,
    ) -> Result<Outcome, ApplyError> {
        let app = manifest.app.clone();
        let (cfg, lock) = self.app(&app)?;
        let _one_at_a_time = lock.lock().await;
        declared(&manifest, cfg)?;
        let ids = hooks::run_as(&cfg.user).map_err(ApplyError::User)?;
        let mut state = self.store.load(&app)?;
        let layout = Layout::new(&cfg.dir(&app));
        let dir = manifest.dir_name();
        let previous = layout.current()?;
        let ready = admissible(
            &manifest,
            &state,
            previous.as_deref(),
            layout.has_release(&dir),
            archive.is_some(),
            opts,
        )?;
        if ready == Ready::AlreadyCurrent {
            return Ok(Outcome::AlreadyCurrent {
                release: manifest.release,
                dir,
            });
        }
        layout.ensure(ids)?;
        let install = archive.is_some();
        let manifest = Arc::new(manifest);
        match archive {
            None => {
                let (m, path) = (manifest.clone(), layout.release(&dir));
                tokio::task::spawn_blocking(move || verify_release(&m, &path))
                    .await?
                    .map_err(|source| ApplyError::Kept {
                        dir: dir.clone(),
                        source,
                    })?;
            }
            Some(archive) => {
                if layout.has_release(&dir) {
                    // A copy that is not live (kept from before a rollback): unpack afresh.
                    layout.remove_release(&dir)?;
                }
                let need = manifest
                    .archive_size
                    .saturating_add(manifest.unpacked_size)
                    .saturating_add(cfg.reserve_bytes);
                layout.check_space(need)?;
                state.phase = Phase::Unpacking {
                    release: manifest.release,
                    dir: dir.clone(),
                    previous: previous.clone(),
                };
                self.store.save(&app, &state)?;
                self.step(Step::Unpacking)?;
                let (m, l) = (manifest.clone(), layout.clone());
                let unpacked = tokio::task::spawn_blocking(move || unpack(&m, archive, &l)).await;
                let failed = match unpacked {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(ApplyError::from(e)),
                    Err(e) => Some(ApplyError::from(e)),
                };
                if let Some(e) = failed {
                    state.phase = Phase::Committed { current: previous };
                    self.store.save(&app, &state)?;
                    return Err(e);
                }
                self.step(Step::Unpacked)?;
            }
        }
        let candidate = Candidate {
            app: &app,
            cfg,
            layout,
            manifest,
            dir,
            previous,
            ids,
            install,
        };
        self.pre_start(&candidate, &mut state).await?;
        self.go_live(&candidate, state).await
    }

    /// Runs the `pre_start` hook if the release asks for it. A failure removes the release
    /// (nothing was switched) and records it as failed.
    async fn pre_start(&self, c: &Candidate<'_>, state: &mut AppState) -> Result<(), ApplyError> {
        let Some(argv) = c.cfg.pre_start.as_deref() else {
            return Ok(());
        };
        if !c.manifest.hooks.iter().any(|h| h == "pre_start") {
            return Ok(());
        }
        let release_dir = c.layout.release(&c.dir);
        let limits = self.hook_limits(c.cfg);
        if let Err(e) = hooks::run("pre_start", argv, &release_dir, c.ids, &limits).await {
            c.layout.remove_release(&c.dir)?;
            state.record_failure(&c.dir);
            state.phase = Phase::Committed {
                current: c.previous.clone(),
            };
            self.store.save(c.app, state)?;
            return Err(ApplyError::PreStart(e));
        }
        Ok(())
    }

    /// Switches to the candidate and gates it; commits it or rolls it back.
    async fn go_live(&self, c: &Candidate<'_>, mut state: AppState) -> Result<Outcome, ApplyError> {
        let m = &c.manifest;
        let check = Check {
            start_timeout_s: m.health.start_timeout_s,
            soak_s: m.health.soak_s,
        };
        state.phase = Phase::Switched {
            release: m.release,
            dir: c.dir.clone(),
            previous: c.previous.clone(),
            check,
        };
        // Whatever was under guard is live no more.
        state.guard = None;
        self.store.save(c.app, &state)?;
        self.step(Step::Switching)?;
        if let Some(reason) = self.switch_and_gate(c).await? {
            let undo = Undo {
                release: m.release,
                dir: c.dir.clone(),
                previous: c.previous.clone(),
                check,
                reason,
            };
            return self.roll_back(c.app, c.cfg, &c.layout, state, undo).await;
        }
        state.committed = state.committed.max(m.release);
        state.phase = Phase::Committed {
            current: Some(c.dir.clone()),
        };
        state.guard = c.install.then(|| Guard {
            release: m.release,
            dir: c.dir.clone(),
            previous: c.previous.clone(),
            check,
            committed_at_ms: crate::commands::clock_ms(),
        });
        self.store.save(c.app, &state)?;
        let protect: Vec<&str> = [Some(c.dir.as_str()), c.previous.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        // The release is committed whatever happens here: a failed clean-up is only logged.
        let removed = c.layout.prune(KEEP, &protect).unwrap_or_else(|e| {
            tracing::warn!(app = c.app, error = %e, "cannot remove old releases");
            Vec::new()
        });
        Ok(Outcome::Committed {
            release: m.release,
            dir: c.dir.clone(),
            removed,
        })
    }

    /// Points `current` at the candidate, runs `post_switch`, restarts the unit and applies
    /// the health gate. `Some(reason)` when the release failed.
    async fn switch_and_gate(&self, c: &Candidate<'_>) -> Result<Option<String>, ApplyError> {
        if let Err(e) = c.layout.switch(&c.dir) {
            return Ok(Some(format!("switch failed: {e}")));
        }
        self.step(Step::Switched)?;
        let release_dir = c.layout.release(&c.dir);
        let limits = self.hook_limits(c.cfg);
        if let Some(argv) = c.cfg.post_switch.as_deref()
            && c.manifest.hooks.iter().any(|h| h == "post_switch")
            && let Err(e) = hooks::run("post_switch", argv, &release_dir, c.ids, &limits).await
        {
            return Ok(Some(format!("post_switch hook: {e}")));
        }
        let h = &c.manifest.health;
        let prober = match &h.probe {
            None => None,
            Some(Probe::Http { port, path }) => Some(Prober::Http {
                port: *port,
                path: path.clone(),
                timeout: self
                    .settings
                    .timing
                    .probe_timeout
                    .min(secs(h.probe_interval_s)),
            }),
            Some(Probe::Command) => c.cfg.probe.as_deref().map(|argv| Prober::Command {
                invocation: hooks::invocation(argv, &release_dir),
                context: Context {
                    dir: Some(release_dir.clone()),
                    ids: c.ids,
                },
                limits: limits.clone(),
            }),
        };
        let gate = Gate {
            unit: &c.cfg.unit,
            start_timeout: secs(h.start_timeout_s),
            soak: secs(h.soak_s),
            probe: prober
                .as_ref()
                .map(|p| (p, h.probe_passes, secs(h.probe_interval_s))),
            poll: self.settings.timing.poll,
        };
        Ok(health::gate(&self.systemd, &gate)
            .await
            .err()
            .map(|f| f.to_string()))
    }

    /// Undoes a switched release: `current` back to the previous release (or none), the
    /// unit restarted and checked (start timeout, soak capped at `Timing::rollback_soak`,
    /// no probe), the failed release recorded and removed. Idempotent, so recovery can run
    /// it again after a crash in the middle.
    pub(super) async fn roll_back(
        &self,
        app: &str,
        cfg: &AppConfig,
        layout: &Layout,
        mut state: AppState,
        undo: Undo,
    ) -> Result<Outcome, ApplyError> {
        tracing::warn!(app, release = undo.release, reason = %undo.reason, "rolling back");
        let journal_tail = self.journal_tail(&cfg.unit).await;
        state.phase = Phase::RollingBack {
            release: undo.release,
            dir: undo.dir.clone(),
            previous: undo.previous.clone(),
            check: undo.check,
            reason: undo.reason.clone(),
        };
        state.guard = None;
        self.store.save(app, &state)?;
        self.step(Step::RollingBack)?;
        let start_timeout = secs(undo.check.start_timeout_s);
        let kept = undo.previous.as_deref().filter(|p| layout.has_release(p));
        let previous_failure = match kept {
            Some(prev) => {
                layout.switch(prev)?;
                let gate = Gate {
                    unit: &cfg.unit,
                    start_timeout,
                    soak: secs(undo.check.soak_s).min(self.settings.timing.rollback_soak),
                    probe: None,
                    poll: self.settings.timing.poll,
                };
                health::gate(&self.systemd, &gate)
                    .await
                    .err()
                    .map(|f| f.to_string())
            }
            None => {
                layout.clear_current()?;
                if let Err(e) = self.systemd.stop(&cfg.unit, start_timeout).await {
                    tracing::warn!(app, error = %e, "cannot stop the unit");
                }
                undo.previous
                    .as_ref()
                    .map(|p| format!("release {p} is no longer on this device"))
            }
        };
        layout.remove_release(&undo.dir)?;
        state.record_failure(&undo.dir);
        state.phase = Phase::Committed {
            current: kept.map(str::to_owned),
        };
        self.store.save(app, &state)?;
        Ok(match previous_failure {
            None => Outcome::RolledBack {
                release: undo.release,
                reason: undo.reason,
                journal_tail,
                restored: kept.map(str::to_owned),
            },
            Some(also) => Outcome::FailedUnrecoverable {
                release: undo.release,
                reason: format!(
                    "{}; then the previous release failed too: {also}",
                    undo.reason
                ),
                journal_tail: self.journal_tail(&cfg.unit).await,
            },
        })
    }

    /// The unit's latest journal lines, or why they could not be read.
    async fn journal_tail(&self, unit: &str) -> String {
        let lines = self.settings.timing.journal_lines;
        match self.systemd.journal_tail(unit, lines).await {
            Ok(t) => t,
            Err(e) => format!("(journal unavailable: {e})"),
        }
    }
}
