//! A child process that a handle starts again and again, each run's standard error in a log
//! file of its own: what the controller and agent handles share.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Result;
use nix::sys::signal::Signal;

use super::signal;

/// The runs of one program: the current child, if any, and the logs of every run
/// (`<dir>/<name>-<n>.log`, `n` from 1).
#[derive(Debug)]
pub(super) struct Runs {
    /// The running process, if any.
    pub(super) child: Option<Child>,
    starts: u32,
    dir: PathBuf,
    name: &'static str,
}

impl Runs {
    /// No run yet; logs go to `dir`, named after `name`.
    pub(super) fn new(dir: PathBuf, name: &'static str) -> Self {
        Self {
            child: None,
            starts: 0,
            dir,
            name,
        }
    }

    /// Starts `cmd` as the next run, without standard input or output, its standard error
    /// in a new log file.
    pub(super) fn spawn(&mut self, cmd: &mut Command) -> Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}-{n}.log", self.name))
    }

    /// Every log line of every run.
    pub(super) fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// SIGKILL.
    pub(super) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub(super) fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        signal(&c, Signal::SIGTERM);
        c.wait().ok()
    }
}
