//! Running a program for a command, or for an app's hook or probe: an argv array (never a
//! shell), programs found only in the configured `path`, a cleared environment (`PATH` and
//! `LANG=C` only), stdin closed, its own process group killed at the timeout, and
//! stdout/stderr read concurrently, capped, while their full length and SHA-256 are still
//! counted.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pifleet_shared::command::{Action, Outcome, Output};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::allowlist::CommandsConfig;

/// After the program exits (or is killed), how long its pipes may stay open (held by a
/// child it left behind) before reading stops.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Spawn retries when the program file is still open for writing elsewhere (ETXTBSY).
const BUSY_RETRIES: u32 = 3;

/// How programs run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Searched for bare program names and given to the program as its `PATH`.
    pub path: String,
    pub timeout: Duration,
    /// Bytes kept per stream.
    pub max_output: usize,
}

impl Limits {
    pub fn from_config(cfg: &CommandsConfig) -> Self {
        Self {
            path: cfg.path.clone(),
            timeout: Duration::from_secs(cfg.timeout_s),
            max_output: cfg.max_output_bytes,
        }
    }
}

/// What running a program gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `Succeeded` or `Failed(reason)`.
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub stdout: Output,
    pub stderr: Output,
    pub duration: Duration,
}

/// A program and its arguments: `program` is a bare name looked up in the configured path, or
/// an absolute path used as is (declared scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
}

/// The invocation for an action that runs a program (`None` for ping, reboot, interval
/// and the release actions, which the handler carries out itself). The action must have passed the allowlist.
pub fn invocation(action: &Action, cfg: &CommandsConfig) -> Option<Invocation> {
    match action {
        Action::Service { unit, op } => Some(Invocation {
            program: "systemctl".into(),
            args: vec![op.as_str().into(), "--".into(), unit.clone()],
        }),
        Action::JournalTail { unit, lines } => Some(Invocation {
            program: "journalctl".into(),
            args: vec![
                "-u".into(),
                unit.clone(),
                "-n".into(),
                (*lines).min(cfg.journal_max_lines).to_string(),
                "--no-pager".into(),
                "-o".into(),
                "short-iso".into(),
            ],
        }),
        Action::RunScript { name, args } => {
            let script = cfg.scripts.get(name)?;
            let (program, fixed) = script.argv.split_first()?;
            Some(Invocation {
                program: program.clone(),
                args: fixed.iter().chain(args).cloned().collect(),
            })
        }
        Action::Ping
        | Action::Reboot
        | Action::SetInterval { .. }
        | Action::Deploy { .. }
        | Action::Rollback { .. }
        | Action::TrustReleaseKeys { .. }
        | Action::TrustCommandKeys { .. } => None,
    }
}

/// Finds `program` in the `:`-separated `search` directories: an executable regular file
/// (symlinks followed). Absolute paths are checked as they are; relative ones never match.
pub async fn resolve(program: &str, search: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return (p.is_absolute() && is_executable(p).await).then(|| p.to_owned());
    }
    for dir in search.split(':').filter(|d| Path::new(d).is_absolute()) {
        let candidate = Path::new(dir).join(program);
        if is_executable(&candidate).await {
            return Some(candidate);
        }
    }
    None
}

async fn is_executable(p: &Path) -> bool {
    tokio::fs::metadata(p)
        .await
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The output record of bytes produced in full (for answers made by the agent itself).
pub fn output_of(bytes: &[u8]) -> Output {
    Output {
        data: bytes.to_vec(),
        len: bytes.len() as u64,
        sha256: Sha256::digest(bytes).to_vec(),
    }
}

/// Where and as whom a program runs. The default is `/`, as the agent's own user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Working directory (default `/`).
    pub dir: Option<PathBuf>,
    /// User and group ids to switch to before `exec` (only root may switch). Supplementary
    /// groups are dropped when the agent runs as root.
    pub ids: Option<(u32, u32)>,
}

/// Runs `inv` to completion or timeout. Never fails: every problem becomes `Failed(reason)`.
pub async fn run(inv: &Invocation, limits: &Limits) -> Finished {
    run_in(inv, limits, &Context::default()).await
}

/// [`run`] in the working directory and as the user `ctx` names.
pub async fn run_in(inv: &Invocation, limits: &Limits, ctx: &Context) -> Finished {
    let started = Instant::now();
    let failed = |reason: String| Finished {
        outcome: Outcome::Failed(reason),
        exit_code: None,
        stdout: output_of(b""),
        stderr: output_of(b""),
        duration: started.elapsed(),
    };
    let Some(program) = resolve(&inv.program, &limits.path).await else {
        return failed(format!(
            "program not found: {} (searched commands.path)",
            inv.program
        ));
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&inv.args)
        .env_clear()
        .env("PATH", &limits.path)
        .env("LANG", "C")
        .current_dir(ctx.dir.as_deref().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = ctx.ids {
        // std drops the supplementary groups too when it switches away from root.
        cmd.uid(uid).gid(gid);
    }
    let mut child = match spawn(&mut cmd).await {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start {}: {e}", program.display())),
    };
    // Until the program has exited, dropping this future (agent shutdown) kills its group.
    let mut group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let stop = CancellationToken::new();
    let readers_done = Arc::new(Notify::new());
    let readers = {
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let (stop, done, cap) = (stop.clone(), readers_done.clone(), limits.max_output);
        async move {
            let r = tokio::join!(capture(out, cap, &stop), capture(err, cap, &stop));
            done.notify_one();
            r
        }
    };
    let waiter = async {
        let exit = match tokio::time::timeout(limits.timeout, child.wait()).await {
            Ok(Ok(status)) => {
                group.disarm();
                Exit::Status(status)
            }
            Ok(Err(e)) => Exit::WaitFailed(e),
            Err(_) => {
                group.kill();
                let _ = child.kill().await;
                Exit::Timeout
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_GRACE) => {}
            _ = readers_done.notified() => {}
        }
        stop.cancel();
        exit
    };
    let (exit, (stdout, stderr)) = tokio::join!(waiter, readers);
    let (outcome, exit_code) = match exit {
        Exit::Status(s) => describe(s),
        Exit::WaitFailed(e) => (Outcome::Failed(format!("wait failed: {e}")), None),
        Exit::Timeout => (Outcome::Failed("timeout".into()), None),
    };
    Finished {
        outcome,
        exit_code,
        stdout,
        stderr,
        duration: started.elapsed(),
    }
}

enum Exit {
    Status(ExitStatus),
    WaitFailed(std::io::Error),
    Timeout,
}

fn describe(s: ExitStatus) -> (Outcome, Option<i32>) {
    match (s.code(), s.signal()) {
        (Some(0), _) => (Outcome::Succeeded, Some(0)),
        (Some(c), _) => (Outcome::Failed(format!("exit code {c}")), Some(c)),
        (None, Some(sig)) => (Outcome::Failed(format!("killed by signal {sig}")), None),
        (None, None) => (Outcome::Failed("terminated".into()), None),
    }
}

async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < BUSY_RETRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// The process group of a running program, killed when dropped unless disarmed.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take().filter(|p| *p > 1) {
            use nix::sys::signal::{Signal, killpg};
            use nix::unistd::Pid;
            if let Err(e) = killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                tracing::debug!(pgid, error = %e, "killpg failed");
            }
        }
    }

    /// The program exited by itself: what it left running is not ours to kill.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a stream to its end (or until `stop`), keeping the first `cap` bytes and counting
/// and hashing all of them.
async fn capture<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
    stop: &CancellationToken,
) -> Output {
    let mut hasher = Sha256::new();
    let mut data = Vec::new();
    let mut len = 0u64;
    if let Some(mut pipe) = pipe {
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => break,
                r = pipe.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
            };
            let chunk = &buf[..n];
            hasher.update(chunk);
            len += n as u64;
            let room = cap.saturating_sub(data.len());
            data.extend_from_slice(&chunk[..n.min(room)]);
        }
    }
    Output {
        data,
        len,
        sha256: hasher.finalize().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pifleet_shared::command::ServiceOp;

    fn limits(dir: &Path) -> Limits {
        Limits {
            path: dir.display().to_string(),
            timeout: Duration::from_secs(10),
            max_output: 1024,
        }
    }

    /// A fake executable: a `#!/bin/sh` file (tests only).
    fn fake(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn inv(program: &str, args: &[&str]) -> Invocation {
        Invocation {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[tokio::test]
    async fn runs_a_real_program_through_the_configured_path() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/bin/echo", dir.path().join("echo")).unwrap();
        let r = run(
            &inv("echo", &["hello", "$(id)", ";", "world"]),
            &limits(dir.path()),
        )
        .await;
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(r.exit_code, Some(0));
        // Arguments reach the program verbatim: no shell expands them.
        assert_eq!(r.stdout, output_of(b"hello $(id) ; world\n"));
        assert_eq!(r.stderr, output_of(b""));
    }

    #[tokio::test]
    async fn output_is_capped_but_counted_and_hashed_in_full() {
        let dir = tempfile::tempdir().unwrap();
        fake(
            dir.path(),
            "noisy",
            "/usr/bin/head -c 100000 /dev/zero\n/usr/bin/head -c 3000 /dev/zero >&2\nexit 3",
        );
        let mut l = limits(dir.path());
        l.max_output = 100;
        let r = run(&inv("noisy", &[]), &l).await;
        assert_eq!(r.outcome, Outcome::Failed("exit code 3".into()));
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stdout.data, vec![0u8; 100]);
        assert_eq!(r.stdout.len, 100_000);
        assert_eq!(r.stdout.sha256, Sha256::digest(vec![0u8; 100_000]).to_vec());
        assert_eq!(r.stderr.data.len(), 100);
        assert_eq!(r.stderr.len, 3_000);
        assert_eq!(r.stderr.sha256, Sha256::digest(vec![0u8; 3_000]).to_vec());
    }

    #[tokio::test]
    async fn timeout_kills_the_program_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        // `sleep` is a child of the shell holding the pipes: only a group kill ends it.
        fake(
            dir.path(),
            "slow",
            "echo started\n/bin/sleep 30\necho never",
        );
        let mut l = limits(dir.path());
        l.timeout = Duration::from_millis(300);
        let t = Instant::now();
        let r = run(&inv("slow", &[]), &l).await;
        assert!(t.elapsed() < DRAIN_GRACE, "took {:?}", t.elapsed());
        assert_eq!(r.outcome, Outcome::Failed("timeout".into()));
        assert_eq!(r.exit_code, None);
        assert_eq!(r.stdout.data, b"started\n");
    }

    #[tokio::test]
    async fn environment_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "printenv", "exec /usr/bin/env");
        let l = limits(dir.path());
        let r = run(&inv("printenv", &[]), &l).await;
        assert_eq!(r.outcome, Outcome::Succeeded);
        let text = String::from_utf8(r.stdout.data).unwrap();
        // The shell itself exports PWD; everything else must be ours.
        let mut vars: Vec<_> = text.lines().filter(|l| !l.starts_with("PWD=")).collect();
        vars.sort_unstable();
        assert_eq!(vars, vec!["LANG=C".to_owned(), format!("PATH={}", l.path)]);
    }

    #[tokio::test]
    async fn programs_outside_the_configured_path_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        fake(dir.path(), "systemctl", "echo ran");
        // Not executable: skipped.
        std::fs::write(empty.path().join("systemctl"), "#!/bin/sh\necho ran\n").unwrap();
        let r = run(&inv("systemctl", &["status"]), &limits(empty.path())).await;
        assert!(
            matches!(&r.outcome, Outcome::Failed(m) if m.starts_with("program not found: systemctl")),
            "{:?}",
            r.outcome
        );
        // `echo` exists on the agent's own PATH but not in the configured one.
        let r = run(&inv("echo", &["x"]), &limits(dir.path())).await;
        assert!(matches!(&r.outcome, Outcome::Failed(m) if m.contains("not found")));
        // Relative paths never resolve.
        assert_eq!(
            resolve("./systemctl", &dir.path().display().to_string()).await,
            None
        );
        assert_eq!(
            resolve("systemctl", &dir.path().display().to_string()).await,
            Some(dir.path().join("systemctl"))
        );
    }

    #[tokio::test]
    async fn scripts_run_by_absolute_path_with_fixed_and_declared_args() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "backup", "echo \"$@\"");
        let mut cfg = CommandsConfig::default();
        cfg.scripts.insert(
            "backup".into(),
            super::super::allowlist::ScriptConfig {
                argv: vec![
                    dir.path().join("backup").display().to_string(),
                    "--quiet".into(),
                ],
                allowed_args: vec!["--dry-run".into()],
            },
        );
        let action = Action::RunScript {
            name: "backup".into(),
            args: vec!["--dry-run".into()],
        };
        let i = invocation(&action, &cfg).unwrap();
        // The configured path does not matter for an absolute program.
        let r = run(&i, &limits(Path::new("/nonexistent"))).await;
        assert_eq!(r.stdout.data, b"--quiet --dry-run\n");
    }

    #[test]
    fn invocations_table() {
        let cfg = CommandsConfig::default();
        let table = [
            (
                Action::Service {
                    unit: "kiosk.service".into(),
                    op: ServiceOp::Restart,
                },
                Some(inv("systemctl", &["restart", "--", "kiosk.service"])),
            ),
            (
                Action::Service {
                    unit: "a".into(),
                    op: ServiceOp::Status,
                },
                Some(inv("systemctl", &["status", "--", "a"])),
            ),
            (
                Action::JournalTail {
                    unit: "a".into(),
                    lines: 50,
                },
                Some(inv(
                    "journalctl",
                    &["-u", "a", "-n", "50", "--no-pager", "-o", "short-iso"],
                )),
            ),
            (
                Action::JournalTail {
                    unit: "a".into(),
                    lines: 1000,
                },
                Some(inv(
                    "journalctl",
                    &["-u", "a", "-n", "200", "--no-pager", "-o", "short-iso"],
                )),
            ),
            (
                Action::RunScript {
                    name: "undeclared".into(),
                    args: vec![],
                },
                None,
            ),
            (Action::Ping, None),
            (Action::Reboot, None),
            (Action::SetInterval { seconds: 5 }, None),
        ];
        for (action, want) in table {
            assert_eq!(invocation(&action, &cfg), want, "{action:?}");
        }
    }
}
