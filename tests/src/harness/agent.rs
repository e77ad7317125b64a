//! An enrolled agent process, its spool on disk (read and written in the agent's own
//! format) and edits to its `agent.toml`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};
use tempfile::TempDir;

use super::bin;
use super::controller::Controller;
use super::process::Runs;

/// Which agent program runs: the one built for this machine, or another build (the ARM
/// agents) run through an emulator such as `qemu-arm-static -cpu arm1176`.
#[derive(Debug, Clone)]
pub struct AgentExe {
    runner: Vec<OsString>,
    program: PathBuf,
}

impl AgentExe {
    /// The `pifleet-agent` built with the workspace.
    pub fn built() -> Result<Self> {
        Ok(Self {
            runner: Vec::new(),
            program: bin("pifleet-agent")?,
        })
    }

    /// `program` started as `runner… program`.
    pub fn emulated(runner: &[&str], program: PathBuf) -> Self {
        Self {
            runner: runner.iter().map(OsString::from).collect(),
            program,
        }
    }

    /// A command that runs the agent (its arguments still to add).
    pub fn command(&self) -> Command {
        match self.runner.split_first() {
            None => Command::new(&self.program),
            Some((emulator, args)) => {
                let mut cmd = Command::new(emulator);
                cmd.args(args).arg(&self.program);
                cmd
            }
        }
    }
}

/// An enrolled agent with its own config dir.
#[derive(Debug)]
pub struct Agent {
    pub id: String,
    pub dir: PathBuf,
    _tmp: TempDir,
    runs: Runs,
    exe: AgentExe,
}

impl Agent {
    /// Enrolls a new agent as `id` with a fresh token; telemetry every `interval_s` seconds.
    pub fn enroll(ctl: &Controller, id: &str, interval_s: u32) -> Result<Self> {
        Self::enroll_with(ctl, id, interval_s, AgentExe::built()?)
    }

    /// [`Agent::enroll`] with another agent program, which also runs it afterwards.
    pub fn enroll_with(ctl: &Controller, id: &str, interval_s: u32, exe: AgentExe) -> Result<Self> {
        let token = ctl.token(None, "10m")?;
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join(id);
        let out = exe
            .command()
            .args(["enroll", "--controller", &ctl.url(), "--token", &token])
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .args(["--device-id", id, "--interval", &interval_s.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("enroll {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self {
            id: id.to_owned(),
            runs: Runs::new(dir.clone(), "agent"),
            dir,
            _tmp: tmp,
            exe,
        })
    }

    /// Starts `pifleet-agent run`.
    pub fn start(&mut self) -> Result<()> {
        self.start_with_env(&[])
    }

    /// Starts `pifleet-agent run` with `env` added to its environment (e.g. the
    /// `NOTIFY_SOCKET` systemd would set).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.exe.command();
        cmd.arg("run")
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.runs.spawn(&mut cmd)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("device.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("device.key")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Every log line of every run of this agent.
    pub fn log(&self) -> String {
        self.runs.log()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.runs.kill9();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.runs.stop()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.runs
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What the agent's spool `state` file records (mirrors `State` in `agent/src/spool/state.rs`:
/// `PFST` magic, CRC32 of the body, then this struct in postcard). Read it only while the
/// agent is stopped: `close()` (a clean SIGTERM) writes `clean_next`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SpoolState {
    /// Every seq at or below it is acknowledged or dropped.
    pub floor: u64,
    /// No seq at or above it was ever handed out.
    pub reserved_until: u64,
    /// The first seq of the current boot.
    pub min_next: u64,
    pub boot_id: String,
    /// Set only by a clean shutdown: the next seq the agent will hand out.
    pub clean_next: Option<u64>,
}

impl Agent {
    /// The agent's spool directory (`spool` next to `agent.toml`, the enrollment default).
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// Every sample record in the spool's segment files, acknowledged or not, oldest first
    /// (the on-disk format of `agent/src/spool/segment.rs`: an 8-byte header, then records
    /// `[u32 len LE][u32 crc32 LE][postcard Sample]`). Safe while the agent runs: records are
    /// appended with one write(2) each, and a torn tail or a segment deleted meanwhile just
    /// ends the scan of that file. A running agent always keeps its newest segment, so the
    /// last sample is the newest one it produced (also after it stopped).
    pub fn spool_samples(&self) -> Vec<pifleet_shared::proto::v1::Sample> {
        let mut out = Vec::new();
        for seg in self.spool_segments() {
            let Ok(bytes) = std::fs::read(&seg) else {
                continue;
            };
            let mut rest = bytes.get(8..).unwrap_or_default();
            while rest.len() >= 8 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(body) = rest.get(8..8 + len) else {
                    break;
                };
                match postcard::from_bytes(body) {
                    Ok(s) => out.push(s),
                    Err(_) => break,
                }
                rest = &rest[8 + len..];
            }
        }
        out
    }

    /// Segment files of the spool, oldest first.
    fn spool_segments(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.spool_dir()) else {
            return Vec::new();
        };
        let mut segs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
            })
            .collect();
        segs.sort();
        segs
    }

    /// Sequence numbers of [`Agent::spool_samples`].
    pub fn spool_seqs(&self) -> Vec<u64> {
        self.spool_samples().iter().map(|s| s.seq).collect()
    }

    /// Writes `samples` (ascending seqs, above everything in the spool) as a new segment in
    /// the spool of a *stopped* agent, in the agent's own format: to the agent they look like
    /// samples it took during a long outage. Lets a test build a backlog of thousands of
    /// samples without waiting for them at 1 sample/s.
    pub fn spool_inject(&self, samples: &[pifleet_shared::proto::v1::Sample]) -> Result<()> {
        let Some(first) = samples.first() else {
            return Ok(());
        };
        let mut bytes = b"PFSG".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        for s in samples {
            let body = postcard::to_allocvec(s)?;
            bytes.extend_from_slice(&u32::try_from(body.len())?.to_le_bytes());
            bytes.extend_from_slice(&crc32(&body).to_le_bytes());
            bytes.extend_from_slice(&body);
        }
        let path = self.spool_dir().join(format!("seg-{:020}.log", first.seq));
        std::fs::write(&path, bytes)?;
        Ok(())
    }

    /// The highest seq in the spool (see [`Agent::spool_seqs`]); 0 if none.
    pub fn spool_max_seq(&self) -> u64 {
        self.spool_seqs().last().copied().unwrap_or(0)
    }

    /// The spool's `state` file, if present and intact.
    pub fn spool_state(&self) -> Option<SpoolState> {
        let bytes = std::fs::read(self.spool_dir().join("state")).ok()?;
        let body = bytes.strip_prefix(b"PFST".as_slice())?.get(4..)?;
        postcard::from_bytes(body).ok()
    }

    /// Sets `[mqtt] backoff_max_s` in `agent.toml` (the reconnect backoff cap), so tests
    /// that restart the controller do not wait out a long backoff.
    pub fn set_backoff_max(&self, secs: u64) -> Result<()> {
        self.set_setting("backoff_max_s", &secs.to_string())
    }

    /// The JSON log events of every run whose `message` is `message`.
    pub fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

/// CRC-32 (IEEE, reflected, as crc32fast computes it), bitwise: only for small test files.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

impl Agent {
    /// Replaces the `[commands]` section of `agent.toml` (with every `[commands.…]` sub-table,
    /// such as `[commands.scripts.<name>]`) by `section`, TOML text that starts with
    /// `[commands]`. Call it while the agent is stopped.
    pub fn set_commands_toml(&self, section: &str) -> Result<()> {
        let path = self.config();
        let text = std::fs::read_to_string(&path)?;
        let mut kept = Vec::new();
        let mut in_commands = false;
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with('[') {
                let name = t.trim_start_matches('[').trim_start();
                in_commands = name.starts_with("commands]")
                    || name.starts_with("commands.")
                    || name.starts_with("commands ]");
            }
            if !in_commands {
                kept.push(line);
            }
        }
        let mut new = kept.join("\n");
        new.push_str("\n\n");
        new.push_str(section.trim());
        new.push('\n');
        std::fs::write(&path, new)?;
        Ok(())
    }

    /// Sets `[controller] mqtt_port` in `agent.toml` (to point the agent at another broker).
    pub fn set_mqtt_port(&self, port: u16) -> Result<()> {
        self.set_setting("mqtt_port", &port.to_string())
    }

    /// Replaces the line that sets `key` in `agent.toml` by `key = value` (`value` as TOML
    /// text); fails if no line sets it.
    fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let path = self.config();
        let text = std::fs::read_to_string(&path)?;
        let mut found = false;
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with(key) {
                    found = true;
                    format!("{key} = {value}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        if !found {
            bail!("no {key} in {}:\n{text}", path.display());
        }
        std::fs::write(&path, new.join("\n") + "\n")?;
        Ok(())
    }
}
