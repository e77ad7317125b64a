//! Making a release from a git commit, so devices need no git credentials. The system `git`
//! runs with an argv (never a shell) in a fresh temp dir (never in an existing checkout):
//! `git init --bare`, `git fetch --depth 1 <url> <sha>` (again without `--depth` if the
//! server refuses shallow fetches), a check that the fetched commit is exactly `<sha>`, then
//! `git archive --format=tar <sha>` streamed into the same repacking as uploads.
//!
//! Hardening: no system or global git config, no terminal prompts, hooks off
//! (`core.hooksPath=/dev/null`), only the https, ssh and — when allowed — file transports
//! (`protocol.allow=never` turns off git://, plain http and `ext::` helpers), a cleared
//! environment (PATH, HOME, SSH_AUTH_SOCK and proxy settings kept so https and ssh work as
//! for the service user), each git in its own process group, killed as a group at the
//! deadline. `file://` is for local mirrors and tests: it lets whoever makes releases read
//! any repository the controller's user can read, so it is off unless
//! [`GitOptions::allow_file_urls`] says otherwise.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use super::intake::{self, IntakeError, Limits, Packed};

/// How git is run.
#[derive(Debug, Clone)]
pub struct GitOptions {
    /// The whole fetch and archive must finish within this.
    pub timeout: Duration,
    /// Accept `file://` URLs (local repositories on the controller host).
    pub allow_file_urls: bool,
    /// The git program; found on PATH by default.
    pub program: PathBuf,
}

impl Default for GitOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
            allow_file_urls: false,
            program: PathBuf::from("git"),
        }
    }
}

/// Why a release could not be made from git.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("revision {0:?} must be a full commit SHA: 40 (or 64) hexadecimal digits")]
    BadRevision(String),
    #[error("repository URL {url:?} refused: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("the `git` program was not found (Debian: apt-get install git)")]
    GitMissing,
    #[error("{rev} is not a commit that {url} offers: {stderr}")]
    UnknownRevision {
        url: String,
        rev: String,
        stderr: String,
    },
    #[error("fetching from {url} failed: {stderr}")]
    FetchFailed { url: String, stderr: String },
    #[error("fetched {rev} but it names {found}")]
    Mismatch { rev: String, found: String },
    #[error("git {step} failed: {stderr}")]
    Failed { step: &'static str, stderr: String },
    #[error("git {step} did not finish within {}", humantime::format_duration(*.after))]
    TimedOut { step: &'static str, after: Duration },
    #[error("running git {step}: {source}")]
    Spawn {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

/// Checks a revision: a full SHA-1 or SHA-256 commit id; returns it in lowercase.
pub fn check_revision(rev: &str) -> Result<String, GitError> {
    if (rev.len() == 40 || rev.len() == 64) && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(rev.to_ascii_lowercase())
    } else {
        Err(GitError::BadRevision(rev.chars().take(80).collect()))
    }
}

/// Checks a repository URL: https://, ssh://, `user@host:path` (ssh), or file:// when
/// allowed; never one git could read as an option.
pub fn check_url(url: &str, allow_file: bool) -> Result<(), GitError> {
    let bad = |why| {
        Err(GitError::BadUrl {
            url: redact_url(url).chars().take(200).collect(),
            why,
        })
    };
    if url.is_empty() || url.len() > 2048 {
        return bad("it must be 1-2048 characters");
    }
    if url.starts_with('-') {
        return bad("it starts with '-', which git would read as an option");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("it contains spaces or control characters");
    }
    // A host or user starting with '-' would reach ssh as an option.
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', ':']).next().unwrap_or("");
    if authority.split('@').any(|part| part.starts_with('-')) {
        return bad("its host or user starts with '-', which ssh would read as an option");
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("ssh://") {
        return Ok(());
    }
    if lower.starts_with("file://") {
        return if allow_file {
            Ok(())
        } else {
            bad("file:// URLs are not allowed on this controller")
        };
    }
    // scp-like ssh: `[user@]host:path`, the host part without '/'.
    if !url.contains("://")
        && !url.contains("::")
        && url
            .split_once(':')
            .is_some_and(|(host, path)| !host.is_empty() && !host.contains('/') && !path.is_empty())
    {
        return Ok(());
    }
    bad("use an https://, ssh:// or user@host:path URL")
}

/// The URL with any user name and password replaced by `***`, for messages and records.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// Fetches commit `rev` from `url` and repacks its tree as a release archive in
/// `work_dir` (which must be on the same file system as the release store). Blocking.
pub fn fetch_revision(
    url: &str,
    rev: &str,
    limits: &Limits,
    opts: &GitOptions,
    work_dir: &Path,
) -> Result<Packed, GitError> {
    let rev = check_revision(rev)?;
    check_url(url, opts.allow_file_urls)?;
    let tmp = tempfile::Builder::new()
        .prefix(".git-")
        .tempdir_in(work_dir)
        .map_err(IntakeError::io(work_dir))?;
    let git = Git {
        opts,
        repo: tmp.path().join("repo.git"),
        tmp: tmp.path(),
        deadline: Instant::now() + opts.timeout,
    };
    let shown = redact_url(url);
    git.init(&rev)?;
    let fetch = |depth: bool| {
        let mut args = vec!["fetch", "--quiet", "--no-tags", "--no-recurse-submodules"];
        if depth {
            args.extend(["--depth", "1"]);
        }
        args.extend(["--", url, rev.as_str()]);
        git.run("fetch", &args)
    };
    let failed = |e: GitError| match e {
        GitError::Failed { stderr, .. } if unknown_revision(&stderr) => GitError::UnknownRevision {
            url: shown.clone(),
            rev: rev.clone(),
            stderr: redact_in(&stderr, url),
        },
        GitError::Failed { stderr, .. } => GitError::FetchFailed {
            url: shown.clone(),
            stderr: redact_in(&stderr, url),
        },
        other => other,
    };
    if let Err(first) = fetch(true) {
        match failed(first) {
            // Some servers refuse shallow fetches; try once more with the whole history.
            GitError::FetchFailed { .. } => fetch(false).map_err(failed)?,
            other => return Err(other),
        }
    }
    let spec = format!("{rev}^{{commit}}");
    let found = git.output(
        "rev-parse",
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
    )?;
    if found != rev {
        return Err(GitError::Mismatch { rev, found });
    }
    git.archive(&rev, limits, work_dir)
}

/// Whether git's complaint means the server does not have (or offer) the commit.
fn unknown_revision(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "not our ref",
        "couldn't find remote ref",
        "no such remote ref",
        "could not find remote ref",
        "not a valid object",
    ]
    .iter()
    .any(|m| s.contains(m))
}

fn redact_in(text: &str, url: &str) -> String {
    let safe = redact_url(url);
    if safe == url {
        text.to_owned()
    } else {
        text.replace(url, &safe)
    }
}

/// One git work dir and the deadline its commands share.
struct Git<'a> {
    opts: &'a GitOptions,
    repo: PathBuf,
    tmp: &'a Path,
    deadline: Instant,
}

impl Git<'_> {
    /// `git <hardening> [--git-dir REPO] <args…>`, environment cleared.
    fn command(&self, with_repo: bool, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.opts.program);
        cmd.env_clear();
        for var in [
            "PATH",
            "HOME",
            "SSH_AUTH_SOCK",
            "https_proxy",
            "HTTPS_PROXY",
            "no_proxy",
            "NO_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false");
        let file = if self.opts.allow_file_urls {
            "always"
        } else {
            "never"
        };
        for c in [
            "core.hooksPath=/dev/null".to_owned(),
            "core.symlinks=true".to_owned(),
            "core.fsmonitor=false".to_owned(),
            "protocol.allow=never".to_owned(),
            "protocol.https.allow=always".to_owned(),
            "protocol.ssh.allow=always".to_owned(),
            format!("protocol.file.allow={file}"),
            "tar.umask=0022".to_owned(),
        ] {
            cmd.arg("-c").arg(c);
        }
        if with_repo {
            cmd.arg("--git-dir").arg(&self.repo);
        }
        cmd.args(args);
        cmd.current_dir(self.tmp)
            .stdin(Stdio::null())
            .process_group(0);
        cmd
    }

    /// Starts git with stderr going to a file in the work dir and a watchdog that kills
    /// its process group at the deadline.
    fn spawn(
        &self,
        step: &'static str,
        mut cmd: Command,
        stdout: Stdio,
    ) -> Result<Running, GitError> {
        let err_path = self.tmp.join(format!("{step}.stderr"));
        let err_file = File::create(&err_path).map_err(|e| GitError::Spawn { step, source: e })?;
        cmd.stdout(stdout).stderr(err_file);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GitError::GitMissing,
            _ => GitError::Spawn { step, source: e },
        })?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        let (stop, stopped) = mpsc::channel::<()>();
        let left = self.deadline.saturating_duration_since(Instant::now());
        let watchdog = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(left) {
                // The child is not reaped before this thread is joined, so its process
                // group id cannot have been reused.
                let _ = killpg(pid, Signal::SIGKILL);
                return true;
            }
            false
        });
        Ok(Running {
            step,
            child,
            pid,
            stop,
            watchdog,
            err_path,
            timeout: self.opts.timeout,
        })
    }

    /// `git init --bare` of the work dir's repository, without templates; SHA-256 object
    /// names when the revision is one.
    fn init(&self, rev: &str) -> Result<(), GitError> {
        let format = if rev.len() == 64 {
            "--object-format=sha256"
        } else {
            "--object-format=sha1"
        };
        let mut cmd = self.command(false, &["init", "--bare", "--quiet", "--template=", format]);
        cmd.arg(&self.repo);
        self.spawn("init", cmd, Stdio::null())?.finish().map(|_| ())
    }

    /// Runs a git command on the repository to its end; a non-zero exit is
    /// [`GitError::Failed`].
    fn run(&self, step: &'static str, args: &[&str]) -> Result<(), GitError> {
        let cmd = self.command(true, args);
        self.spawn(step, cmd, Stdio::null())?.finish().map(|_| ())
    }

    /// Runs a git command and returns its output (first 4 KiB, trimmed).
    fn output(&self, step: &'static str, args: &[&str]) -> Result<String, GitError> {
        let cmd = self.command(true, args);
        let mut running = self.spawn(step, cmd, Stdio::piped())?;
        let mut out = String::new();
        if let Some(stdout) = running.child.stdout.take() {
            let _ = stdout.take(4096).read_to_string(&mut out);
        }
        running.finish()?;
        Ok(out.trim().to_owned())
    }

    /// `git archive --format=tar <rev>`, streamed into the repacking.
    fn archive(&self, rev: &str, limits: &Limits, out_dir: &Path) -> Result<Packed, GitError> {
        let cmd = self.command(true, &["archive", "--format=tar", rev]);
        let mut running = self.spawn("archive", cmd, Stdio::piped())?;
        let packed = match running.child.stdout.take() {
            Some(stdout) => intake::repack_tar(stdout, limits, out_dir),
            None => Err(IntakeError::Corrupt("git archive gave no output".into())),
        };
        // A refusal stops reading early: the closed pipe ends git, then it is reaped.
        let finished = running.finish();
        match (packed, finished) {
            (_, Err(e @ GitError::TimedOut { .. })) => Err(e),
            (Ok(p), Ok(_)) => Ok(p),
            (Err(e), _) => Err(e.into()),
            (Ok(_), Err(e)) => Err(e),
        }
    }
}

/// A running git with its watchdog.
struct Running {
    step: &'static str,
    child: Child,
    pid: Pid,
    stop: mpsc::Sender<()>,
    watchdog: std::thread::JoinHandle<bool>,
    err_path: PathBuf,
    timeout: Duration,
}

impl Running {
    /// Waits for git to exit, stops the watchdog, then reaps git.
    fn finish(mut self) -> Result<ExitStatus, GitError> {
        let step = self.step;
        drop(self.child.stdout.take());
        // Wait without reaping, so the watchdog never signals a reused process group.
        while let Err(nix::errno::Errno::EINTR) = waitid(
            Id::Pid(self.pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {}
        let _ = self.stop.send(());
        let timed_out = self.watchdog.join().unwrap_or(false);
        let status = self
            .child
            .wait()
            .map_err(|e| GitError::Spawn { step, source: e })?;
        if timed_out {
            return Err(GitError::TimedOut {
                step,
                after: self.timeout,
            });
        }
        if !status.success() {
            return Err(GitError::Failed {
                step,
                stderr: stderr_tail(&self.err_path),
            });
        }
        Ok(status)
    }
}

/// The end of what git wrote to stderr: at most 1000 characters, lines joined, control
/// characters dropped.
fn stderr_tail(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    let clean: String = joined.chars().filter(|c| !c.is_control()).collect();
    let n = clean.chars().count();
    if n > 1000 {
        clean.chars().skip(n - 1000).collect()
    } else if clean.is_empty() {
        "(no message)".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests;
