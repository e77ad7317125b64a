//! Running an app's hooks (`pre_start`, `post_switch`) and its command probe.
//!
//! A hook runs only when the release's manifest names it *and* the app's `[apps.NAME]`
//! section declares its argv; it runs in the release's directory with a cleared environment
//! and the app's `hook_timeout_s`, through the same runner as remote commands
//! ([`crate::commands::exec`]): an argv, never a shell, its process group killed on timeout.
//!
//! Hooks run as the app's user, which needs the agent to run as root. An agent running as
//! an ordinary user cannot switch users, so it runs hooks as itself ([`run_as`]).

use std::path::Path;

use pifleet_shared::command::Outcome;

use crate::commands::exec::{self, Context, Invocation, Limits};

/// Bytes of a failed hook's stderr kept for the report.
const STDERR_KEPT: usize = 1024;

/// Why a hook could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("user {0:?} does not exist on this device")]
    UnknownUser(String),
    #[error("cannot look up user {user:?}: {source}")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("{name} failed: {reason}{}", stderr_suffix(.stderr))]
    Failed {
        name: String,
        reason: String,
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// The user and group ids hooks and probes run as: the app's `user` when the agent is root,
/// `None` (the agent's own user) otherwise.
pub fn run_as(user: &str) -> Result<Option<(u32, u32)>, HookError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        Ok(None) => Err(HookError::UnknownUser(user.to_owned())),
        Err(source) => Err(HookError::Lookup {
            user: user.to_owned(),
            source,
        }),
    }
}

/// The invocation of a declared argv for a release in `release_dir`: a relative program is
/// a path inside the release. `argv` is never empty once the configuration was checked.
pub fn invocation(argv: &[String], release_dir: &Path) -> Invocation {
    let (program, args) = argv.split_first().map_or(("", &[][..]), |(p, a)| (p, a));
    let program = if Path::new(program).is_absolute() {
        program.to_owned()
    } else {
        release_dir.join(program).display().to_string()
    };
    Invocation {
        program,
        args: args.to_vec(),
    }
}

/// Runs the declared `argv` called `name` in `release_dir` as `ids`; succeeds on exit 0.
pub async fn run(
    name: &str,
    argv: &[String],
    release_dir: &Path,
    ids: Option<(u32, u32)>,
    limits: &Limits,
) -> Result<(), HookError> {
    let ctx = Context {
        dir: Some(release_dir.to_owned()),
        ids,
    };
    let done = exec::run_in(&invocation(argv, release_dir), limits, &ctx).await;
    match done.outcome {
        Outcome::Succeeded => Ok(()),
        Outcome::Failed(reason) => {
            let err = String::from_utf8_lossy(&done.stderr.data);
            let err = err.trim();
            let start = err.len().saturating_sub(STDERR_KEPT);
            let start = (start..err.len())
                .find(|i| err.is_char_boundary(*i))
                .unwrap_or(err.len());
            Err(HookError::Failed {
                name: name.to_owned(),
                reason,
                stderr: err[start..].to_owned(),
            })
        }
        other => Err(HookError::Failed {
            name: name.to_owned(),
            reason: other.as_str().to_owned(),
            stderr: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            path: "/usr/bin:/bin".into(),
            timeout: Duration::from_secs(5),
            max_output: 4096,
        }
    }

    fn script(dir: &Path, rel: &str, body: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn relative_programs_are_inside_the_release() {
        let inv = invocation(&argv(&["bin/migrate", "--up"]), Path::new("/r/5-abc"));
        assert_eq!(inv.program, "/r/5-abc/bin/migrate");
        assert_eq!(inv.args, ["--up"]);
        let inv = invocation(&argv(&["/usr/bin/true"]), Path::new("/r"));
        assert_eq!(inv.program, "/usr/bin/true");
    }

    #[tokio::test]
    async fn hooks_run_in_the_release_with_a_cleared_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        script(
            tmp.path(),
            "bin/hook",
            &format!(
                "pwd > '{}'\nenv | sort >> '{}'",
                out.display(),
                out.display()
            ),
        );
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap();
        let ids = run_as(&me.name).unwrap();
        run(
            "pre_start",
            &argv(&["bin/hook"]),
            tmp.path(),
            ids,
            &limits(),
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            Path::new(lines.next().unwrap()),
            tmp.path().canonicalize().unwrap()
        );
        let vars: Vec<&str> = lines
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with('_'))
            .collect();
        assert_eq!(vars, ["LANG=C", "PATH=/usr/bin:/bin"]);
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_exit_and_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        script(tmp.path(), "fail", "echo 'migration 7 failed' >&2\nexit 3");
        let e = run("pre_start", &argv(&["fail"]), tmp.path(), None, &limits())
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pre_start failed: exit code 3; stderr: migration 7 failed"
        );
        let e = run(
            "post_switch",
            &argv(&["missing"]),
            tmp.path(),
            None,
            &limits(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("program not found"), "{e}");
    }

    #[test]
    fn unknown_users_are_refused_when_root() {
        let r = run_as("no-such-user-pifleet");
        if nix::unistd::geteuid().is_root() {
            assert!(matches!(r, Err(HookError::UnknownUser(_))), "{r:?}");
        } else {
            assert_eq!(r.unwrap(), None);
        }
    }
}
