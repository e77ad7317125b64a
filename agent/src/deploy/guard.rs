//! Guard rollbacks as the watchdog asks for them: the app is claimed like a release command
//! (none runs meanwhile), the release is rolled back ([`crate::apps::Deployer`]), and the
//! controller hears of it as a [`GuardRollback`] event and a fresh report of the apps.

use pifleet_shared::proto::v1::{Event, GuardRollback};

use super::Deploys;
use crate::apps::Outcome;
use crate::apps::journal::Guard;
use crate::apps::layout::release_of;

/// Most journal bytes in the event (its size limit is 16 KiB); the newest lines are kept.
const JOURNAL_MAX: usize = 8 * 1024;

/// The last `max` bytes of `s` at most, cut at a character boundary.
fn last_bytes(mut s: String, max: usize) -> String {
    let mut cut = s.len().saturating_sub(max);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s.drain(..cut);
    s
}

impl Deploys {
    /// The app's release under guard, if any.
    pub fn guard(&self, app: &str) -> Option<Guard> {
        self.deployer.guard(app)
    }

    /// Rolls back release `dir` of `app`, which crash-looped in its guard window. False
    /// when nothing was done: a release command holds the app (it replaces the release
    /// anyway), or the release is no longer the one under guard.
    pub async fn guard_roll_back(&self, app: &str, dir: &str, reason: String) -> bool {
        let Ok(_claim) = self.claim(app) else {
            return false;
        };
        let outcome = match self.deployer.guard_roll_back(app, dir, reason).await {
            Ok(Some(o)) => o,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(app, dir, error = %e, "guard rollback failed");
                return false;
            }
        };
        let mut ev = match outcome {
            Outcome::RolledBack {
                release,
                reason,
                journal_tail,
                restored,
            } => GuardRollback {
                app: app.to_owned(),
                release,
                reason,
                journal: journal_tail,
                restored: restored.as_deref().and_then(release_of),
            },
            Outcome::FailedUnrecoverable {
                release,
                reason,
                journal_tail,
            } => GuardRollback {
                app: app.to_owned(),
                release,
                reason,
                journal: journal_tail,
                restored: None,
            },
            // Not produced by a rollback.
            Outcome::Committed { .. } | Outcome::AlreadyCurrent { .. } => return false,
        };
        ev.journal = last_bytes(ev.journal, JOURNAL_MAX);
        ev.reason = last_bytes(ev.reason, JOURNAL_MAX / 4);
        tracing::warn!(app, release = ev.release, restored = ?ev.restored, reason = %ev.reason, "release rolled back in its guard window");
        self.send(&Event::GuardRollback(ev));
        self.changed.send_replace(());
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_bytes_keeps_the_end_at_a_character_boundary() {
        assert_eq!(super::last_bytes("abcdef".into(), 3), "def");
        assert_eq!(super::last_bytes("ab".into(), 3), "ab");
        assert_eq!(super::last_bytes("aé".into(), 1), "");
        assert_eq!(super::last_bytes("éa".into(), 2), "a");
    }
}
