//! The simulator's processes: the open-file limit each one raises, and the worker
//! processes a parent starts, commands and reads.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::proto::{Command, Reply};

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    Ok(pifleet_controller::mqtt::gateway::limits::raise_nofile()?)
}

#[derive(Debug)]
struct Kid {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl Kid {
    async fn read(&mut self) -> Result<Reply> {
        let line = self
            .lines
            .next_line()
            .await?
            .with_context(|| format!("simulator worker {} ended", self.pid))?;
        serde_json::from_str(&line).with_context(|| format!("worker {} said {line:?}", self.pid))
    }
}

/// Worker processes, each holding a range of devices.
#[derive(Debug)]
pub struct Workers {
    kids: Vec<Kid>,
}

impl Workers {
    /// Starts `exe` once per `(first, devices)` range with `args` plus the range, and waits
    /// until each has loaded its identities.
    pub async fn spawn(exe: &Path, args: &[String], ranges: &[(usize, usize)]) -> Result<Self> {
        let mut kids = Vec::new();
        for (first, devices) in ranges {
            let mut child = tokio::process::Command::new(exe)
                .args(args)
                .args(["--worker", "--first", &first.to_string()])
                .args(["--devices", &devices.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            let pid = child.id().context("worker exited at once")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            kids.push(Kid {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
                pid,
            });
        }
        for k in &mut kids {
            match k.read().await? {
                Reply::Ready { .. } => {}
                other => bail!("worker {} said {other:?} first", k.pid),
            }
        }
        Ok(Self { kids })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.kids.iter().map(|k| k.pid).collect()
    }

    /// Sends `cmd` to every worker, then reads one reply from each (in order).
    pub async fn all(&mut self, cmd: Command) -> Result<Vec<Reply>> {
        for k in &mut self.kids {
            k.stdin
                .write_all(format!("{}\n", cmd.line()).as_bytes())
                .await
                .with_context(|| format!("worker {} gone", k.pid))?;
            k.stdin.flush().await?;
        }
        let mut out = Vec::with_capacity(self.kids.len());
        for k in &mut self.kids {
            out.push(k.read().await?);
        }
        Ok(out)
    }

    /// Asks every worker to quit and waits for them.
    pub async fn quit(mut self) -> Result<()> {
        for k in &mut self.kids {
            let _ = k.stdin.write_all(b"quit\n").await;
            let _ = k.stdin.flush().await;
        }
        for k in &mut self.kids {
            let status = k.child.wait().await?;
            if !status.success() {
                bail!("worker {} ended with {status}", k.pid);
            }
        }
        Ok(())
    }
}

/// Splits `devices` starting at 0 into `processes` contiguous ranges.
pub fn ranges(devices: usize, processes: usize) -> Vec<(usize, usize)> {
    let p = processes.clamp(1, devices.max(1));
    let (base, extra) = (devices / p, devices % p);
    let mut first = 0;
    (0..p)
        .map(|i| {
            let n = base + usize::from(i < extra);
            let r = (first, n);
            first += n;
            r
        })
        .filter(|r| r.1 > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_device_once() {
        assert_eq!(ranges(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(ranges(2, 5), vec![(0, 1), (1, 1)]);
        assert_eq!(ranges(0, 2), Vec::<(usize, usize)>::new());
    }
}
