//! The `[apps.NAME]` sections of `agent.toml`: the apps this device may deploy. A release
//! for an app that is not listed here is refused, and so is a release asking for a hook or
//! a command probe the app's section does not declare.
//!
//! ```toml
//! [apps.web]
//! unit = "web.service"          # the systemd unit that runs the app (exact name)
//! user = "web"                  # the unit's User=; hooks and probes run as it too
//! dir = "/var/lib/pifleet/apps/web"  # default; relative paths: relative to agent.toml
//! pre_start = ["bin/migrate", "--up"]    # optional hook, before the switch
//! post_switch = ["/usr/local/bin/warm"]  # optional hook, after the switch
//! probe = ["bin/check"]         # optional, for releases whose health probe is a command
//! hook_timeout_s = 300          # per hook or probe run; killed beyond it
//! reserve_bytes = 67108864      # free space left over after unpacking (64 MiB)
//! guard_window_s = 1800         # watch a committed deploy this long (0: no guard window);
//!                               # [watchdog] guard_restarts within guard_span_s roll it back
//! ```
//!
//! Hooks and probes are argv arrays, never a shell. Their program is an absolute path, or a
//! path relative to the release directory (the release is signed, so its own programs are
//! as trusted as its manifest).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pifleet_shared::command::validate_name;
use pifleet_shared::release::{check_entry_path, valid_app_name};
use serde::{Deserialize, Serialize};

/// Where an app lives when its section names no `dir`.
pub const DEFAULT_APPS_DIR: &str = "/var/lib/pifleet/apps";
/// Free space kept after unpacking unless the section says otherwise.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 * 1024 * 1024;
/// Most arguments in a hook or probe argv.
const MAX_ARGV: usize = 32;

/// One deployable app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The systemd unit running the app; restarted after every switch.
    pub unit: String,
    /// The user the unit runs the app as (its `User=`); hooks and command probes run as it.
    pub user: String,
    /// The app's directory (default `/var/lib/pifleet/apps/NAME`); see [`AppConfig::dir`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Runs in the new release's directory after unpacking, before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_start: Option<Vec<String>>,
    /// Runs in the new release's directory right after the switch, before the restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_switch: Option<Vec<String>>,
    /// The command a release's `Probe::Command` health probe runs; it must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Vec<String>>,
    /// Seconds a hook or probe may run before it (and its process group) is killed.
    #[serde(default = "default_hook_timeout_s")]
    pub hook_timeout_s: u64,
    /// Bytes that must stay free on the app's file system on top of the release's archive
    /// and unpacked sizes.
    #[serde(default = "default_reserve_bytes")]
    pub reserve_bytes: u64,
    /// Seconds a committed deploy stays under guard: if its unit crash-loops meanwhile
    /// (`[watchdog] guard_restarts` within `guard_span_s`) it is rolled back. 0: no guard.
    #[serde(default = "default_guard_window_s")]
    pub guard_window_s: u64,
}

/// The guard window unless the app's section says otherwise (30 minutes).
pub const DEFAULT_GUARD_WINDOW_S: u64 = 1800;

fn default_guard_window_s() -> u64 {
    DEFAULT_GUARD_WINDOW_S
}

fn default_hook_timeout_s() -> u64 {
    300
}

fn default_reserve_bytes() -> u64 {
    DEFAULT_RESERVE_BYTES
}

impl AppConfig {
    /// The app's directory: `dir`, or `/var/lib/pifleet/apps/NAME`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_APPS_DIR).join(name))
    }

    /// The declared hook called `name` (`pre_start` or `post_switch`).
    pub fn hook(&self, name: &str) -> Option<&[String]> {
        match name {
            "pre_start" => self.pre_start.as_deref(),
            "post_switch" => self.post_switch.as_deref(),
            _ => None,
        }
    }
}

/// Every problem with the `[apps]` sections, as `apps.<name>.<key>: …` lines.
pub fn problems(apps: &BTreeMap<String, AppConfig>) -> Vec<String> {
    let mut p = Vec::new();
    let mut units: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dirs: BTreeMap<PathBuf, &str> = BTreeMap::new();
    for (name, app) in apps {
        if !valid_app_name(name) {
            p.push(format!(
                "apps: name {name:?} must be 1-64 of a-z 0-9 _ - starting with a letter or digit"
            ));
        }
        if let Err(e) = validate_name(&app.unit) {
            p.push(format!("apps.{name}.unit: {:?}: {e}", app.unit));
        } else if let Some(other) = units.insert(&app.unit, name) {
            p.push(format!(
                "apps.{name}.unit: {} is also apps.{other}'s",
                app.unit
            ));
        }
        if !valid_user_name(&app.user) {
            p.push(format!(
                "apps.{name}.user: {:?} is not a user name (1-32 of a-z 0-9 _ - starting with a letter or _)",
                app.user
            ));
        }
        let dir = app.dir(name);
        if !dir.is_absolute() {
            p.push(format!("apps.{name}.dir must be an absolute path"));
        } else if let Some(other) = dirs.insert(dir, name) {
            p.push(format!("apps.{name}.dir is also apps.{other}'s"));
        }
        for (key, argv) in [
            ("pre_start", &app.pre_start),
            ("post_switch", &app.post_switch),
            ("probe", &app.probe),
        ] {
            if let Some(e) = argv.as_deref().and_then(argv_problem) {
                p.push(format!("apps.{name}.{key}: {e}"));
            }
        }
        if !(1..=86_400).contains(&app.hook_timeout_s) {
            p.push(format!("apps.{name}.hook_timeout_s must be 1..=86400"));
        }
        if app.guard_window_s > 604_800 {
            p.push(format!("apps.{name}.guard_window_s must be 0..=604800"));
        }
    }
    p
}

/// What is wrong with a hook or probe argv, if anything. A good one is a program that is an
/// absolute path or a path inside the release, then arguments without NUL bytes (they are
/// written by the device's administrator, like `commands.scripts` argv).
fn argv_problem(argv: &[String]) -> Option<String> {
    let Some(program) = argv.first() else {
        return Some("must not be empty".into());
    };
    if argv.len() > MAX_ARGV {
        return Some(format!("at most {MAX_ARGV} arguments"));
    }
    if Path::new(program).is_absolute() {
        if program.contains('\0') || program.split('/').any(|c| c == "..") {
            return Some(format!("program {program:?} is not a clean absolute path"));
        }
    } else if let Err(e) = check_entry_path(program) {
        return Some(format!(
            "program {program:?} is neither absolute nor a path inside the release: {e}"
        ));
    }
    argv[1..]
        .iter()
        .find(|a| a.contains('\0'))
        .map(|a| format!("argument {a:?} contains a NUL byte"))
}

/// POSIX-portable user names, as `useradd` accepts them by default.
fn valid_user_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppConfig {
        AppConfig {
            unit: "web.service".into(),
            user: "web".into(),
            dir: None,
            pre_start: Some(vec!["bin/migrate".into(), "--up".into()]),
            post_switch: None,
            probe: Some(vec!["/usr/local/bin/check".into()]),
            hook_timeout_s: 300,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            guard_window_s: DEFAULT_GUARD_WINDOW_S,
        }
    }

    #[test]
    fn defaults_and_accessors() {
        let a: AppConfig = toml::from_str("unit = \"web.service\"\nuser = \"web\"\n").unwrap();
        assert_eq!(a.dir("web"), PathBuf::from("/var/lib/pifleet/apps/web"));
        assert_eq!(a.hook_timeout_s, 300);
        assert_eq!(a.reserve_bytes, DEFAULT_RESERVE_BYTES);
        assert_eq!(a.guard_window_s, 1800);
        assert_eq!(a.hook("pre_start"), None);
        let b = app();
        assert_eq!(b.hook("pre_start").unwrap()[0], "bin/migrate");
        assert_eq!(b.hook("post_switch"), None);
        assert_eq!(b.hook("other"), None);
        assert!(problems(&BTreeMap::from([("web".to_owned(), b)])).is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let bad_argv = |argv: &[&str]| Some(argv.iter().map(|a| (*a).to_owned()).collect());
        let table: Vec<(&str, AppConfig, &str)> = vec![
            ("Web", app(), "apps: name \"Web\""),
            (
                "web",
                AppConfig {
                    unit: "a b".into(),
                    ..app()
                },
                "apps.web.unit",
            ),
            (
                "web",
                AppConfig {
                    user: "Root".into(),
                    ..app()
                },
                "apps.web.user",
            ),
            (
                "web",
                AppConfig {
                    dir: Some("apps/web".into()),
                    ..app()
                },
                "apps.web.dir must be an absolute path",
            ),
            (
                "web",
                AppConfig {
                    pre_start: Some(vec![]),
                    ..app()
                },
                "apps.web.pre_start: must not be empty",
            ),
            (
                "web",
                AppConfig {
                    post_switch: bad_argv(&["../bin/x"]),
                    ..app()
                },
                "apps.web.post_switch: program",
            ),
            (
                "web",
                AppConfig {
                    probe: bad_argv(&["/bin/../bin/sh"]),
                    ..app()
                },
                "apps.web.probe: program",
            ),
            (
                "web",
                AppConfig {
                    probe: bad_argv(&["bin/check", "a\0b"]),
                    ..app()
                },
                "apps.web.probe: argument",
            ),
            (
                "web",
                AppConfig {
                    hook_timeout_s: 0,
                    ..app()
                },
                "apps.web.hook_timeout_s must be 1..=86400",
            ),
            (
                "web",
                AppConfig {
                    guard_window_s: 604_801,
                    ..app()
                },
                "apps.web.guard_window_s must be 0..=604800",
            ),
        ];
        for (name, cfg, want) in table {
            let p = problems(&BTreeMap::from([(name.to_owned(), cfg)]));
            assert_eq!(p.len(), 1, "{name}: {p:?}");
            assert!(p[0].starts_with(want), "{p:?} does not start with {want:?}");
        }
    }

    #[test]
    fn two_apps_may_not_share_a_unit_or_a_directory() {
        let apps = BTreeMap::from([
            ("a".to_owned(), app()),
            (
                "b".to_owned(),
                AppConfig {
                    dir: Some("/var/lib/pifleet/apps/a".into()),
                    ..app()
                },
            ),
        ]);
        let p = problems(&apps);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("web.service is also apps.a's"), "{p:?}");
        assert!(p[1].contains("apps.b.dir is also apps.a's"), "{p:?}");
    }
}
