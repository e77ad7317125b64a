//! The `[commands]` section of `agent.toml` and the allowlist decision made on every verified
//! command. Defaults are safe: nothing is allowed except `ping`.
//!
//! ```toml
//! [commands]
//! ping = true                 # answer pings
//! reboot = false              # allow Reboot
//! services = ["kiosk.service"]      # units for status/start/stop/restart (exact names)
//! journal_units = ["kiosk.service"] # units whose journal may be tailed
//! set_interval = false        # allow SetInterval, within the bounds below
//! min_interval_s = 5
//! max_interval_s = 3600
//! timeout_s = 60              # per executed program; killed beyond it
//! max_output_bytes = 65536    # captured per stream (length and hash cover everything)
//! journal_max_lines = 200     # a longer journal tail is cut to this many lines
//! workers = 2                 # programs running at once
//! path = "/usr/sbin:/usr/bin:/sbin:/bin"  # the only PATH searched and given to programs
//! state_dir = "commands"      # journal folder, relative to agent.toml
//!
//! [commands.scripts.backup]
//! argv = ["/usr/local/bin/backup", "--quiet"]  # absolute program + fixed arguments
//! allowed_args = ["--dry-run"]                 # extra arguments a command may add
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pifleet_shared::Kind;
use pifleet_shared::command::{Action, MAX_JOURNAL_LINES, validate_arg, validate_name};
use serde::{Deserialize, Serialize};

/// Longest telemetry interval a command may set (same bound as `telemetry.interval_s`).
const MAX_INTERVAL_S: u32 = 86_400;
/// Most programs that may run at once.
const MAX_WORKERS: usize = 32;

/// What remote commands this device accepts, and how they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Answer `Ping`.
    pub ping: bool,
    /// Allow `Reboot`.
    pub reboot: bool,
    /// systemd units allowed for status / start / stop / restart (exact names).
    pub services: Vec<String>,
    /// systemd units whose journal may be tailed (exact names).
    pub journal_units: Vec<String>,
    /// Allow `SetInterval` within `min_interval_s..=max_interval_s`.
    pub set_interval: bool,
    pub min_interval_s: u32,
    pub max_interval_s: u32,
    /// Seconds an executed program may run before it (and its process group) is killed.
    pub timeout_s: u64,
    /// Bytes of stdout and of stderr kept (each); the receipt still reports the full length
    /// and SHA-256 of what was produced.
    pub max_output_bytes: usize,
    /// Cap on the lines of a journal tail.
    pub journal_max_lines: u32,
    /// Programs running at once; further commands wait for a free worker.
    pub workers: usize,
    /// The only directories searched for `systemctl`/`journalctl`/`reboot`, and the `PATH`
    /// given to every executed program.
    pub path: String,
    /// Where the command journal lives (relative paths: relative to `agent.toml`).
    pub state_dir: PathBuf,
    /// Scripts by name (declared last so TOML writes them as trailing tables).
    pub scripts: BTreeMap<String, ScriptConfig>,
}

/// A script a command may run by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    /// Absolute program path followed by fixed arguments.
    pub argv: Vec<String>,
    /// Arguments a command may append (each must match one of these exactly).
    #[serde(default)]
    pub allowed_args: Vec<String>,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            ping: true,
            reboot: false,
            services: Vec::new(),
            journal_units: Vec::new(),
            set_interval: false,
            min_interval_s: 5,
            max_interval_s: 3_600,
            timeout_s: 60,
            max_output_bytes: 64 * 1024,
            journal_max_lines: 200,
            workers: 2,
            path: "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            state_dir: PathBuf::from("commands"),
            scripts: BTreeMap::new(),
        }
    }
}

/// Why the allowlist refused an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is disabled on this device")]
    Disabled(&'static str),
    #[error("unit {unit:?} is not listed in commands.{list}")]
    UnitNotListed { unit: String, list: &'static str },
    #[error("script {0:?} is not declared in commands.scripts")]
    UnknownScript(String),
    #[error("argument {arg:?} is not in commands.scripts.{script}.allowed_args")]
    UndeclaredArg { script: String, arg: String },
    #[error("interval {seconds}s is outside {min}..={max}s")]
    IntervalOutOfBounds { seconds: u32, min: u32, max: u32 },
    #[error("app {0:?} is not deployable here: agent.toml has no [apps.{0}]")]
    AppNotListed(String),
}

/// Does the local allowlist permit `action`? `apps` are the names of the `[apps.NAME]`
/// sections: deploys and rollbacks of other apps are refused. Release and command key
/// announcements are always allowed: they are signed by a trusted command key, and by
/// themselves they run nothing. Pure: the decision depends only on
/// its inputs.
pub fn allowed(
    action: &Action,
    cfg: &CommandsConfig,
    apps: &BTreeSet<String>,
) -> Result<(), Refusal> {
    match action {
        Action::Deploy { app, .. } | Action::Rollback { app, .. } => {
            if apps.contains(app) {
                Ok(())
            } else {
                Err(Refusal::AppNotListed(app.clone()))
            }
        }
        Action::TrustReleaseKeys { .. } | Action::TrustCommandKeys { .. } => Ok(()),
        Action::Ping if cfg.ping => Ok(()),
        Action::Ping => Err(Refusal::Disabled("ping")),
        Action::Reboot if cfg.reboot => Ok(()),
        Action::Reboot => Err(Refusal::Disabled("reboot")),
        Action::Service { unit, .. } => listed(unit, &cfg.services, "services"),
        Action::JournalTail { unit, .. } => listed(unit, &cfg.journal_units, "journal_units"),
        Action::RunScript { name, args } => {
            let script = cfg
                .scripts
                .get(name)
                .ok_or_else(|| Refusal::UnknownScript(name.clone()))?;
            match args.iter().find(|a| !script.allowed_args.contains(a)) {
                Some(arg) => Err(Refusal::UndeclaredArg {
                    script: name.clone(),
                    arg: arg.clone(),
                }),
                None => Ok(()),
            }
        }
        Action::SetInterval { .. } if !cfg.set_interval => Err(Refusal::Disabled("set_interval")),
        Action::SetInterval { seconds } => {
            if (cfg.min_interval_s..=cfg.max_interval_s).contains(seconds) {
                Ok(())
            } else {
                Err(Refusal::IntervalOutOfBounds {
                    seconds: *seconds,
                    min: cfg.min_interval_s,
                    max: cfg.max_interval_s,
                })
            }
        }
    }
}

fn listed(unit: &str, list: &[String], name: &'static str) -> Result<(), Refusal> {
    if list.iter().any(|u| u == unit) {
        Ok(())
    } else {
        Err(Refusal::UnitNotListed {
            unit: unit.to_owned(),
            list: name,
        })
    }
}

impl CommandsConfig {
    /// Every problem with the section, as `commands.<key>: …` lines.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (list, units) in [
            ("services", &self.services),
            ("journal_units", &self.journal_units),
        ] {
            for u in units {
                if let Err(e) = validate_name(u) {
                    p.push(format!("commands.{list}: {u:?}: {e}"));
                }
            }
        }
        for (name, s) in &self.scripts {
            if let Err(e) = validate_name(name) {
                p.push(format!("commands.scripts: name {name:?}: {e}"));
            }
            match s.argv.first() {
                None => p.push(format!("commands.scripts.{name}.argv must not be empty")),
                Some(prog) if !Path::new(prog).is_absolute() => p.push(format!(
                    "commands.scripts.{name}.argv[0] must be an absolute path"
                )),
                Some(_) => {}
            }
            if s.argv.iter().any(|a| a.contains('\0')) {
                p.push(format!("commands.scripts.{name}.argv contains a NUL byte"));
            }
            for a in &s.allowed_args {
                if let Err(e) = validate_arg(a) {
                    p.push(format!("commands.scripts.{name}.allowed_args: {a:?}: {e}"));
                }
            }
        }
        if self.min_interval_s == 0
            || self.min_interval_s > self.max_interval_s
            || self.max_interval_s > MAX_INTERVAL_S
        {
            p.push(format!(
                "commands.min_interval_s..=max_interval_s must be a non-empty range within 1..={MAX_INTERVAL_S}"
            ));
        }
        if !(1..=86_400).contains(&self.timeout_s) {
            p.push("commands.timeout_s must be 1..=86400".to_owned());
        }
        let max_out = Kind::Result.max_payload();
        if !(1..=max_out).contains(&self.max_output_bytes) {
            p.push(format!("commands.max_output_bytes must be 1..={max_out}"));
        }
        if !(1..=MAX_JOURNAL_LINES).contains(&self.journal_max_lines) {
            p.push(format!(
                "commands.journal_max_lines must be 1..={MAX_JOURNAL_LINES}"
            ));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            p.push(format!("commands.workers must be 1..={MAX_WORKERS}"));
        }
        if self.path.is_empty()
            || self
                .path
                .split(':')
                .any(|d| !Path::new(d).is_absolute() || d.contains('\0'))
        {
            p.push("commands.path must be a ':'-separated list of absolute directories".to_owned());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pifleet_shared::command::ServiceOp;

    fn permissive() -> CommandsConfig {
        let mut scripts = BTreeMap::new();
        scripts.insert(
            "backup".to_owned(),
            ScriptConfig {
                argv: vec!["/usr/local/bin/backup".into(), "--quiet".into()],
                allowed_args: vec!["--dry-run".into(), "--full".into()],
            },
        );
        CommandsConfig {
            reboot: true,
            services: vec!["kiosk.service".into()],
            journal_units: vec!["kiosk.service".into(), "ssh.service".into()],
            set_interval: true,
            scripts,
            ..CommandsConfig::default()
        }
    }

    fn svc(unit: &str, op: ServiceOp) -> Action {
        Action::Service {
            unit: unit.into(),
            op,
        }
    }

    fn script(name: &str, args: &[&str]) -> Action {
        Action::RunScript {
            name: name.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn decision_table() {
        let safe = CommandsConfig::default();
        let open = permissive();
        let no_ping = CommandsConfig {
            ping: false,
            ..permissive()
        };
        let unit_refusal = |unit: &str, list| {
            Err(Refusal::UnitNotListed {
                unit: unit.into(),
                list,
            })
        };
        let table: Vec<(&str, Action, &CommandsConfig, Result<(), Refusal>)> = vec![
            ("ping allowed by default", Action::Ping, &safe, Ok(())),
            (
                "ping can be disabled",
                Action::Ping,
                &no_ping,
                Err(Refusal::Disabled("ping")),
            ),
            (
                "reboot off by default",
                Action::Reboot,
                &safe,
                Err(Refusal::Disabled("reboot")),
            ),
            ("reboot when enabled", Action::Reboot, &open, Ok(())),
            (
                "service refused by default",
                svc("kiosk.service", ServiceOp::Restart),
                &safe,
                unit_refusal("kiosk.service", "services"),
            ),
            (
                "listed service, every op",
                svc("kiosk.service", ServiceOp::Stop),
                &open,
                Ok(()),
            ),
            (
                "listed service status",
                svc("kiosk.service", ServiceOp::Status),
                &open,
                Ok(()),
            ),
            (
                "unit not listed",
                svc("ssh.service", ServiceOp::Start),
                &open,
                unit_refusal("ssh.service", "services"),
            ),
            (
                "names match exactly",
                svc("kiosk", ServiceOp::Start),
                &open,
                unit_refusal("kiosk", "services"),
            ),
            (
                "journal of listed unit",
                Action::JournalTail {
                    unit: "ssh.service".into(),
                    lines: 50,
                },
                &open,
                Ok(()),
            ),
            (
                "journal of unlisted unit",
                Action::JournalTail {
                    unit: "nginx.service".into(),
                    lines: 50,
                },
                &open,
                unit_refusal("nginx.service", "journal_units"),
            ),
            (
                "journal refused by default",
                Action::JournalTail {
                    unit: "ssh.service".into(),
                    lines: 5,
                },
                &safe,
                unit_refusal("ssh.service", "journal_units"),
            ),
            ("declared script", script("backup", &[]), &open, Ok(())),
            (
                "declared script and args",
                script("backup", &["--full", "--dry-run"]),
                &open,
                Ok(()),
            ),
            (
                "undeclared script",
                script("wipe", &[]),
                &open,
                Err(Refusal::UnknownScript("wipe".into())),
            ),
            (
                "undeclared argument",
                script("backup", &["--dry-run", "--delete"]),
                &open,
                Err(Refusal::UndeclaredArg {
                    script: "backup".into(),
                    arg: "--delete".into(),
                }),
            ),
            (
                "args match exactly",
                script("backup", &["--dry-run=1"]),
                &open,
                Err(Refusal::UndeclaredArg {
                    script: "backup".into(),
                    arg: "--dry-run=1".into(),
                }),
            ),
            (
                "scripts refused by default",
                script("backup", &[]),
                &safe,
                Err(Refusal::UnknownScript("backup".into())),
            ),
            (
                "set_interval off by default",
                Action::SetInterval { seconds: 30 },
                &safe,
                Err(Refusal::Disabled("set_interval")),
            ),
            (
                "interval in bounds",
                Action::SetInterval { seconds: 30 },
                &open,
                Ok(()),
            ),
            (
                "interval at lower bound",
                Action::SetInterval { seconds: 5 },
                &open,
                Ok(()),
            ),
            (
                "interval at upper bound",
                Action::SetInterval { seconds: 3600 },
                &open,
                Ok(()),
            ),
            (
                "interval too short",
                Action::SetInterval { seconds: 4 },
                &open,
                Err(Refusal::IntervalOutOfBounds {
                    seconds: 4,
                    min: 5,
                    max: 3600,
                }),
            ),
            (
                "interval too long",
                Action::SetInterval { seconds: 3601 },
                &open,
                Err(Refusal::IntervalOutOfBounds {
                    seconds: 3601,
                    min: 5,
                    max: 3600,
                }),
            ),
        ];
        for (name, action, cfg, want) in table {
            assert_eq!(allowed(&action, cfg, &BTreeSet::new()), want, "{name}");
        }
    }

    #[test]
    fn deploys_need_the_app_listed() {
        let apps = BTreeSet::from(["web".to_owned()]);
        let deploy = |app: &str| Action::Deploy {
            app: app.into(),
            release: 1,
            manifest_sha256: [0; 32],
            archive_sha256: [0; 32],
            archive_size: 1,
            retry_failed: false,
        };
        let rollback = |app: &str| Action::Rollback {
            app: app.into(),
            release: 1,
            manifest_sha256: [0; 32],
        };
        let safe = CommandsConfig::default();
        let table = [
            (deploy("web"), &apps, Ok(())),
            (rollback("web"), &apps, Ok(())),
            (deploy("db"), &apps, Err(Refusal::AppNotListed("db".into()))),
            (
                rollback("db"),
                &apps,
                Err(Refusal::AppNotListed("db".into())),
            ),
            (
                deploy("web"),
                &BTreeSet::new(),
                Err(Refusal::AppNotListed("web".into())),
            ),
            (
                Action::TrustReleaseKeys {
                    keys: vec![[1; 32]],
                },
                &BTreeSet::new(),
                Ok(()),
            ),
        ];
        for (action, apps, want) in table {
            assert_eq!(allowed(&action, &safe, apps), want, "{action:?}");
        }
    }

    #[test]
    fn defaults_are_valid_and_safe() {
        let d = CommandsConfig::default();
        assert!(d.problems().is_empty(), "{:?}", d.problems());
        assert!(permissive().problems().is_empty());
        assert!(!d.reboot && !d.set_interval && d.services.is_empty() && d.scripts.is_empty());
    }

    #[test]
    fn problems_are_all_reported() {
        let mut cfg = permissive();
        cfg.services.push("bad unit".into());
        cfg.journal_units.push("-x".into());
        cfg.scripts.insert(
            "rel".into(),
            ScriptConfig {
                argv: vec!["backup.sh".into()],
                allowed_args: vec!["a;b".into()],
            },
        );
        cfg.scripts.insert(
            "empty".into(),
            ScriptConfig {
                argv: vec![],
                allowed_args: vec![],
            },
        );
        cfg.min_interval_s = 10;
        cfg.max_interval_s = 5;
        cfg.timeout_s = 0;
        cfg.max_output_bytes = 10 << 20;
        cfg.journal_max_lines = 0;
        cfg.workers = 0;
        cfg.path = "/usr/bin:bin".into();
        let p = cfg.problems();
        assert_eq!(p.len(), 11, "{p:#?}");
    }

    #[test]
    fn toml_keys() {
        let text = r#"
ping = false
reboot = true
services = ["kiosk.service"]
journal_units = ["kiosk.service"]
set_interval = true
min_interval_s = 2
max_interval_s = 60
timeout_s = 5
max_output_bytes = 1024
journal_max_lines = 20
workers = 1
path = "/opt/fake"
state_dir = "/var/lib/pifleet/commands"
[scripts.backup]
argv = ["/usr/local/bin/backup"]
allowed_args = ["--dry-run"]
"#;
        let cfg: CommandsConfig = toml::from_str(text).unwrap();
        assert!(!cfg.ping && cfg.reboot && cfg.set_interval);
        assert_eq!(cfg.scripts["backup"].allowed_args, vec!["--dry-run"]);
        assert!(cfg.problems().is_empty());
        assert!(toml::from_str::<CommandsConfig>("shell = true").is_err());
        assert!(toml::from_str::<CommandsConfig>("[scripts.x]\nargv=[\"/x\"]\nenv=[]").is_err());
        // What `enroll` writes must read back the same.
        let written = toml::to_string_pretty(&cfg).unwrap();
        assert_eq!(toml::from_str::<CommandsConfig>(&written).unwrap(), cfg);
    }
}
