//! The per-app state file: the apply journal and the anti-rollback floor.
//!
//! One small JSON file per app, `<state dir>/<app>.json`, replaced atomically and durably
//! ([`pifleet_io::write_private`]: temp file, fsync, rename, directory fsync) *before* each
//! step of an apply, so that after a power loss the agent knows which step was under way and
//! [`super::Deployer::recover`] can finish or undo it. It lives in the agent's private state
//! directory rather than the app's, so removing an app directory does not reset the floor.

use std::path::{Path, PathBuf};

use pifleet_io::{FileError, create_private_dir, write_private};
use serde::{Deserialize, Serialize};

/// Failed releases remembered per app (the oldest are forgotten first).
const MAX_FAILED: usize = 32;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Damaged state is never replaced by a default: that would drop the anti-rollback floor.
    #[error("{path}: damaged app state, refusing to guess ({source}); inspect or remove it")]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode app state: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Write(#[from] FileError),
}

/// The durable state of one app.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    /// Highest release number that passed its health gate here: lower ones are refused
    /// unless a rollback names one the device keeps.
    pub committed: u64,
    /// Release directories (`<release>-<digest8>`) that failed here, oldest first; never
    /// installed again unless a request explicitly retries them.
    pub failed: Vec<String>,
    /// Where the last apply stands.
    pub phase: Phase,
    /// The last install that committed, while its guard window may be open: the watchdog
    /// rolls it back if it crash-loops within the window. Kept here so that a restarted
    /// agent resumes the window; cleared by the next apply and by a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

/// A committed install under guard: what a guard rollback needs to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    pub release: u64,
    pub dir: String,
    /// The release to go back to (`None`: the first install, whose rollback stops the unit).
    pub previous: Option<String>,
    pub check: Check,
    /// When it committed (Unix ms, the device's clock).
    pub committed_at_ms: i64,
}

/// The step an apply reached. Written before the step is taken, as
/// `"phase": {"switched": {…}}` (serde's default form: an internally tagged enum would cost
/// the agent a buffering deserializer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    /// Nothing under way: `current` is final (the named release directory, or none).
    Committed { current: Option<String> },
    /// `releases/<dir>` is being unpacked (or was, and is not switched to yet).
    Unpacking {
        release: u64,
        dir: String,
        previous: Option<String>,
    },
    /// `current` is being switched, or was switched, to `dir`; its health gate has not passed.
    Switched {
        release: u64,
        dir: String,
        previous: Option<String>,
        check: Check,
    },
    /// `dir` failed; `current` is going back to `previous`.
    RollingBack {
        release: u64,
        dir: String,
        previous: Option<String>,
        check: Check,
        reason: String,
    },
}

impl Phase {
    /// A short description for messages: `switched to 7-0a1b2c3d`.
    pub fn describe(&self) -> String {
        match self {
            Self::Committed { current: Some(d) } => format!("committed {d}"),
            Self::Committed { current: None } => "committed, no release".to_owned(),
            Self::Unpacking { dir, .. } => format!("unpacking {dir}"),
            Self::Switched { dir, .. } => format!("switched to {dir}"),
            Self::RollingBack { dir, .. } => format!("rolling back {dir}"),
        }
    }
}

impl Default for Phase {
    fn default() -> Self {
        Self::Committed { current: None }
    }
}

/// The start and soak check the previous release must pass after a rollback, kept in the
/// journal so recovery applies the same one without the manifest at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub start_timeout_s: u32,
    pub soak_s: u32,
}

impl AppState {
    /// Remembers that the release in `dir` failed on this device.
    pub fn record_failure(&mut self, dir: &str) {
        if !self.failed.iter().any(|d| d == dir) {
            self.failed.push(dir.to_owned());
        }
        let over = self.failed.len().saturating_sub(MAX_FAILED);
        self.failed.drain(..over);
    }

    pub fn has_failed(&self, dir: &str) -> bool {
        self.failed.iter().any(|d| d == dir)
    }
}

/// Reads and writes the state files in one directory (made 0700).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.json"))
    }

    /// The app's state; the default (nothing committed) when it has none yet.
    pub fn load(&self, app: &str) -> Result<AppState, StateError> {
        let path = self.path(app);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Damaged { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AppState::default()),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Replaces the app's state durably; returns once it would survive a power loss.
    pub fn save(&self, app: &str, state: &AppState) -> Result<(), StateError> {
        create_private_dir(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(state).map_err(StateError::Encode)?;
        write_private(&self.path(app), &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults_when_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(&tmp.path().join("apps"));
        assert_eq!(store.load("web").unwrap(), AppState::default());
        let mut state = AppState {
            committed: 7,
            failed: vec![],
            guard: Some(Guard {
                release: 7,
                dir: "7-01234567".into(),
                previous: None,
                check: Check {
                    start_timeout_s: 5,
                    soak_s: 10,
                },
                committed_at_ms: 1_700_000_000_000,
            }),
            phase: Phase::Switched {
                release: 8,
                dir: "8-abcdef01".into(),
                previous: Some("7-01234567".into()),
                check: Check {
                    start_timeout_s: 5,
                    soak_s: 10,
                },
            },
        };
        state.record_failure("6-aaaaaaaa");
        state.record_failure("6-aaaaaaaa");
        store.save("web", &state).unwrap();
        assert_eq!(store.load("web").unwrap(), state);
        assert_eq!(state.failed, ["6-aaaaaaaa"]);
        let text = std::fs::read_to_string(tmp.path().join("apps/web.json")).unwrap();
        assert!(text.contains("\"switched\": {"), "{text}");
        // State written before guard windows existed still reads.
        let old = r#"{"committed": 3, "failed": [], "phase": {"committed": {"current": null}}}"#;
        std::fs::write(tmp.path().join("apps/web.json"), old).unwrap();
        assert_eq!(store.load("web").unwrap().guard, None);
    }

    #[test]
    fn damaged_state_is_an_error_not_a_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        std::fs::write(tmp.path().join("web.json"), b"{\"committed\": 9").unwrap();
        let e = store.load("web").unwrap_err();
        assert!(matches!(e, StateError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("web.json"), "{e}");
    }

    #[test]
    fn failures_are_bounded() {
        let mut state = AppState::default();
        for i in 0..(MAX_FAILED + 5) {
            state.record_failure(&format!("{i}-00000000"));
        }
        assert_eq!(state.failed.len(), MAX_FAILED);
        assert!(!state.has_failed("0-00000000"));
        assert!(state.has_failed(&format!("{}-00000000", MAX_FAILED + 4)));
    }
}
