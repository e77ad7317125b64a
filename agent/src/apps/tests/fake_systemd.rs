//! A systemd for tests: the unit's behaviour follows the release `current` points at when
//! it is restarted, and every call is recorded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::apps::Systemd;
use crate::apps::health::{SystemdError, UnitStatus};
use crate::apps::layout::{self, Layout};

/// How the fake unit behaves when a given release is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Starts,
    FailsToStart,
    /// Active on every look, but systemd restarts it each time (`NRestarts` rises).
    CrashLoops,
}

#[derive(Debug, Default)]
struct FakeState {
    behavior: Option<Behavior>,
    shows: u64,
    calls: Vec<String>,
}

/// A systemd that looks at the app's `current` link when the unit is restarted.
#[derive(Debug, Clone)]
pub struct FakeSystemd {
    layout: Layout,
    by_release: Arc<Mutex<HashMap<u64, Behavior>>>,
    state: Arc<Mutex<FakeState>>,
}

impl FakeSystemd {
    pub fn new(app_dir: &Path) -> Self {
        Self {
            layout: Layout::new(app_dir),
            by_release: Arc::default(),
            state: Arc::default(),
        }
    }

    pub fn set(&self, release: u64, b: Behavior) {
        self.by_release.lock().unwrap().insert(release, b);
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
}

impl Systemd for FakeSystemd {
    async fn restart(&self, unit: &str, _timeout: Duration) -> Result<(), SystemdError> {
        let current = self.layout.current().unwrap();
        let behavior = match current.as_deref().and_then(layout::release_of) {
            Some(r) => *self
                .by_release
                .lock()
                .unwrap()
                .get(&r)
                .unwrap_or(&Behavior::Starts),
            None => Behavior::FailsToStart,
        };
        let mut s = self.state.lock().unwrap();
        s.calls.push(format!("restart {unit}"));
        s.behavior = Some(behavior);
        s.shows = 0;
        Ok(())
    }

    async fn start(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        self.restart(unit, timeout).await
    }

    async fn stop(&self, unit: &str, _timeout: Duration) -> Result<(), SystemdError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(format!("stop {unit}"));
        s.behavior = None;
        Ok(())
    }

    async fn show(&self, _unit: &str) -> Result<UnitStatus, SystemdError> {
        let mut s = self.state.lock().unwrap();
        s.shows += 1;
        let st = |a: &str, sub: &str, n, r: &str| UnitStatus {
            active_state: a.into(),
            sub_state: sub.into(),
            n_restarts: n,
            result: r.into(),
        };
        Ok(match s.behavior {
            None => st("inactive", "dead", 0, "success"),
            Some(Behavior::Starts) => st("active", "running", 0, "success"),
            Some(Behavior::FailsToStart) => st("failed", "failed", 0, "exit-code"),
            Some(Behavior::CrashLoops) => st("active", "running", s.shows - 1, "exit-code"),
        })
    }

    async fn journal_tail(&self, unit: &str, lines: u32) -> Result<String, SystemdError> {
        let s = self.state.lock().unwrap();
        Ok(format!("{unit} ({lines} lines): {:?}\n", s.behavior))
    }
}
