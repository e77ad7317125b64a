//! The guard window after an install commits: the release passed its health gate, but if its
//! unit crash-loops within the window (the watchdog counts its restarts, see
//! [`crate::watchdog`]) it is rolled back the way a failed gate is — `current` back to the
//! previous release, the unit restarted and checked, the release recorded as failed (never
//! installed again unless a request retries it), `failed_unrecoverable` when the previous
//! release fails too. The commit time is journaled ([`super::journal::Guard`]), so a
//! restarted agent resumes the window.

use super::apply::Undo;
use super::journal::{Guard, Phase};
use super::layout::Layout;
use super::{ApplyError, Deployer, Outcome, Systemd};

impl<S: Systemd> Deployer<S> {
    /// The app's release under guard, if any (expired windows included: the caller knows
    /// how long they last). A state that cannot be read has none.
    pub fn guard(&self, app: &str) -> Option<Guard> {
        match self.store.load(app) {
            Ok(s) => s.guard.filter(
                |g| matches!(&s.phase, Phase::Committed { current: Some(c) } if *c == g.dir),
            ),
            Err(e) => {
                tracing::warn!(app, error = %e, "cannot read the app's state");
                None
            }
        }
    }

    /// Rolls back release `dir` of `app`, which crash-looped (`reason`) in its guard window.
    /// `Ok(None)` when it is no longer the release under guard (another apply came first).
    pub async fn guard_roll_back(
        &self,
        app: &str,
        dir: &str,
        reason: String,
    ) -> Result<Option<Outcome>, ApplyError> {
        let (cfg, lock) = self.app(app)?;
        let _one_at_a_time = lock.lock().await;
        let state = self.store.load(app)?;
        let layout = Layout::new(&cfg.dir(app));
        let Some(g) = state.guard.clone().filter(|g| g.dir == dir) else {
            return Ok(None);
        };
        if layout.current()?.as_deref() != Some(dir)
            || !matches!(state.phase, Phase::Committed { .. })
        {
            return Ok(None);
        }
        let undo = Undo {
            release: g.release,
            dir: g.dir,
            previous: g.previous,
            check: g.check,
            reason,
        };
        self.roll_back(app, cfg, &layout, state, undo)
            .await
            .map(Some)
    }
}
