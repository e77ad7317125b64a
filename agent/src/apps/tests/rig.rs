//! A device with one app, `web`, on temporary directories and a fake systemd.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{APP, FakeSystemd, Release, UNIT};
use crate::apps::journal::{AppState, StateStore};
use crate::apps::layout::Layout;
use crate::apps::{AppConfig, ApplyError, Deployer, Options, Outcome, Settings, Timing};
use crate::commands::exec::Limits;

/// A device with one app, `web`, its unit faked.
pub struct Rig {
    pub tmp: tempfile::TempDir,
    pub deployer: Deployer<FakeSystemd>,
    pub systemd: FakeSystemd,
    pub layout: Layout,
}

/// The agent's own user: hooks run as it in tests.
pub fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name
}

impl Rig {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(edit: impl FnOnce(&mut AppConfig)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("apps").join(APP);
        let mut cfg = AppConfig {
            unit: UNIT.into(),
            user: me(),
            dir: Some(dir.clone()),
            pre_start: None,
            post_switch: None,
            probe: None,
            hook_timeout_s: 5,
            reserve_bytes: 0,
            guard_window_s: 60,
        };
        edit(&mut cfg);
        let systemd = FakeSystemd::new(&dir);
        let settings = Settings {
            apps: BTreeMap::from([(APP.to_owned(), cfg)]),
            state_dir: tmp.path().join("state"),
            limits: Limits {
                path: "/usr/bin:/bin".into(),
                timeout: Duration::from_secs(5),
                max_output: 4096,
            },
            timing: Timing {
                poll: Duration::from_millis(20),
                rollback_soak: Duration::from_millis(100),
                probe_timeout: Duration::from_millis(500),
                journal_lines: 10,
            },
        };
        Self {
            deployer: Deployer::new(settings, systemd.clone()),
            systemd,
            layout: Layout::new(&dir),
            tmp,
        }
    }

    /// A new deployer on the same directories, as after an agent restart.
    pub fn restart_agent(&mut self) {
        let settings = self.deployer.settings.clone();
        self.deployer = Deployer::new(settings, self.systemd.clone());
    }

    pub async fn install(&self, r: &Release) -> Result<Outcome, ApplyError> {
        self.install_with(r, Options::default()).await
    }

    pub async fn install_with(&self, r: &Release, opts: Options) -> Result<Outcome, ApplyError> {
        let archive = std::io::Cursor::new(r.archive.clone());
        self.deployer
            .install(r.manifest.clone(), archive, opts)
            .await
    }

    pub fn state(&self) -> AppState {
        StateStore::new(&self.tmp.path().join("state"))
            .load(APP)
            .unwrap()
    }

    pub fn current(&self) -> Option<String> {
        self.layout.current().unwrap()
    }

    /// Everything in `releases/`, sorted.
    pub fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.layout.releases())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}
