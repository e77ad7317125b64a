//! The health gate a release must pass after the switch, and the systemd access it needs.
//!
//! The gate restarts the app's unit, then:
//! 1. the unit must be `active` within the manifest's `start_timeout_s` (for `Type=notify`
//!    units systemd reports `active` only after `READY=1`);
//! 2. it must stay `active` for `soak_s`, its `NRestarts` unchanged (a crash loop under
//!    `Restart=` shows as a rising count even when every poll happens to see it active);
//! 3. with a probe, the probe must pass `probe_passes` times in a row, one run every
//!    `probe_interval_s`; no run starts after the soak ends (or after
//!    `probe_passes × probe_interval_s` when the soak is shorter, so the runs always fit).
//!
//! systemd is reached through the [`Systemd`] trait: [`Systemctl`] runs `systemctl` and
//! `journalctl` by argv through the command runner; tests use a fake.

use std::future::Future;
use std::time::Duration;

use pifleet_shared::command::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::commands::exec::{self, Context, Invocation, Limits};

/// What `systemctl show` says about a unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitStatus {
    pub active_state: String,
    pub sub_state: String,
    /// Automatic restarts by the unit's `Restart=` policy since it was last started by hand.
    pub n_restarts: u64,
    /// `success`, or why the unit last failed (`exit-code`, `timeout`, …).
    pub result: String,
}

impl UnitStatus {
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }
}

impl std::fmt::Display for UnitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ActiveState={} SubState={} Result={} NRestarts={}",
            self.active_state, self.sub_state, self.result, self.n_restarts
        )
    }
}

/// Parses `systemctl show -p ActiveState,SubState,NRestarts,Result` output; `None` unless
/// it has an `ActiveState`.
pub fn parse_status(text: &str) -> Option<UnitStatus> {
    let mut s = UnitStatus::default();
    let mut seen = false;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("ActiveState", v)) => {
                s.active_state = v.trim().to_owned();
                seen = true;
            }
            Some(("SubState", v)) => s.sub_state = v.trim().to_owned(),
            Some(("NRestarts", v)) => s.n_restarts = v.trim().parse().unwrap_or(0),
            Some(("Result", v)) => s.result = v.trim().to_owned(),
            _ => {}
        }
    }
    seen.then_some(s)
}

/// A systemd operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemdError {
    #[error("{command}: {reason}")]
    Failed { command: String, reason: String },
    #[error("unexpected `systemctl show` output for {0}")]
    Parse(String),
}

/// How the agent drives systemd for an app's unit.
pub trait Systemd: Send + Sync {
    /// Restarts `unit` and waits (at most `timeout`) for the job to finish.
    fn restart(
        &self,
        unit: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Asks systemd to start `unit` without waiting for the job (at most `timeout` to ask).
    fn start(
        &self,
        unit: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Stops `unit` (at most `timeout`).
    fn stop(
        &self,
        unit: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// The unit's state, restart count and result.
    fn show(&self, unit: &str) -> impl Future<Output = Result<UnitStatus, SystemdError>> + Send;
    /// The last `lines` lines of the unit's journal, message text only.
    fn journal_tail(
        &self,
        unit: &str,
        lines: u32,
    ) -> impl Future<Output = Result<String, SystemdError>> + Send;
}

/// The real [`Systemd`]: `systemctl` and `journalctl` by argv, found in the configured
/// path, like every program the agent runs.
#[derive(Debug, Clone)]
pub struct Systemctl {
    limits: Limits,
}

impl Systemctl {
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    async fn run(
        &self,
        program: &str,
        args: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, SystemdError> {
        let inv = Invocation {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        let mut limits = self.limits.clone();
        if let Some(t) = timeout {
            limits.timeout = t;
        }
        let done = exec::run(&inv, &limits).await;
        match done.outcome {
            Outcome::Succeeded => Ok(done.stdout.data),
            other => {
                let stderr = String::from_utf8_lossy(&done.stderr.data);
                let reason = match other {
                    Outcome::Failed(r) => r,
                    o => o.as_str().to_owned(),
                };
                let stderr = stderr.trim();
                Err(SystemdError::Failed {
                    command: format!("{program} {}", args.join(" ")),
                    reason: if stderr.is_empty() {
                        reason
                    } else {
                        format!("{reason}: {stderr}")
                    },
                })
            }
        }
    }
}

impl Systemctl {
    /// `systemctl <verb> -- <unit>`, waiting at most `timeout`.
    async fn unit_job(
        &self,
        verb: &str,
        unit: &str,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        self.run("systemctl", &[verb, "--", unit], Some(timeout))
            .await
            .map(drop)
    }
}

impl Systemd for Systemctl {
    async fn restart(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        self.unit_job("restart", unit, timeout).await
    }

    async fn start(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        self.run(
            "systemctl",
            &["start", "--no-block", "--", unit],
            Some(timeout),
        )
        .await
        .map(drop)
    }

    async fn stop(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        self.unit_job("stop", unit, timeout).await
    }

    async fn show(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let props = "--property=ActiveState,SubState,NRestarts,Result";
        let out = self
            .run("systemctl", &["show", props, "--", unit], None)
            .await?;
        parse_status(&String::from_utf8_lossy(&out))
            .ok_or_else(|| SystemdError::Parse(unit.to_owned()))
    }

    async fn journal_tail(&self, unit: &str, lines: u32) -> Result<String, SystemdError> {
        let n = lines.to_string();
        let args = ["-u", unit, "-n", &n, "--no-pager", "-o", "cat"];
        let out = self.run("journalctl", &args, None).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The gate's timers that the manifest does not set. Every one is injectable, so tests run
/// on sub-second ones.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Between two reads of the unit's state (default 1 s).
    pub poll: Duration,
    /// After a rollback, the previous release soaks for the failed release's `soak_s` but at
    /// most this long (default 10 s): it was healthy before, so a shorter check suffices and
    /// the app is back sooner.
    pub rollback_soak: Duration,
    /// One probe run may take this long (default 5 s, at most the probe interval).
    pub probe_timeout: Duration,
    /// Journal lines reported with a rollback (default 50).
    pub journal_lines: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            rollback_soak: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            journal_lines: 50,
        }
    }
}

/// One probe of a running release.
#[derive(Debug, Clone)]
pub enum Prober {
    /// `GET http://127.0.0.1:<port><path>` must answer 2xx within `timeout`.
    Http {
        port: u16,
        path: String,
        timeout: Duration,
    },
    /// The app's declared probe command must exit 0.
    Command {
        invocation: Invocation,
        context: Context,
        limits: Limits,
    },
}

/// Why one probe run failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not an HTTP response")]
    BadResponse,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("probe command failed: {0}")]
    Command(String),
}

impl Prober {
    pub async fn probe(&self) -> Result<(), ProbeError> {
        match self {
            Self::Http {
                port,
                path,
                timeout,
            } => match tokio::time::timeout(*timeout, http_status(*port, path)).await {
                Err(_) => Err(ProbeError::Timeout(*timeout)),
                Ok(Err(e)) => Err(e),
                Ok(Ok(code)) if (200..300).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(ProbeError::Status(code)),
            },
            Self::Command {
                invocation,
                context,
                limits,
            } => match exec::run_in(invocation, limits, context).await.outcome {
                Outcome::Succeeded => Ok(()),
                Outcome::Failed(r) => Err(ProbeError::Command(r)),
                other => Err(ProbeError::Command(other.as_str().to_owned())),
            },
        }
    }
}

/// Sends one HTTP/1.1 GET to the loopback port and returns the response's status code.
async fn http_status(port: u16, path: &str) -> Result<u16, ProbeError> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = tokio::net::TcpStream::connect(loopback).await?;
    let path = path.replace(' ', "%20");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: pifleet-agent\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all that matters; it comes first and is short.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| ProbeError::BadResponse)?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => {
            code.parse().map_err(|_| ProbeError::BadResponse)
        }
        _ => Err(ProbeError::BadResponse),
    }
}

/// What the gate checks.
#[derive(Debug)]
pub struct Gate<'a> {
    pub unit: &'a str,
    pub start_timeout: Duration,
    pub soak: Duration,
    /// The probe, the passes in a row it needs and the interval between runs.
    pub probe: Option<(&'a Prober, u32, Duration)>,
    pub poll: Duration,
}

/// Why a release failed its gate (the reason reported with the rollback).
#[derive(Debug, thiserror::Error)]
pub enum GateFailure {
    #[error("restart failed: {0}")]
    Restart(#[source] SystemdError),
    #[error("cannot read the unit's state: {0}")]
    Show(#[source] SystemdError),
    #[error("not active within {timeout:?} ({status})")]
    NotActive {
        timeout: Duration,
        status: UnitStatus,
    },
    #[error("left the active state during the soak ({0})")]
    Left(UnitStatus),
    #[error("restarted {0} time(s) during the soak (crash loop)")]
    Restarted(u64),
    #[error("probe passed {passes} of {needed} times in a row; last failure: {last}")]
    Probe {
        passes: u32,
        needed: u32,
        last: String,
    },
}

/// Restarts the unit and applies the gate; `Ok` once the release is healthy.
pub async fn gate<S: Systemd>(systemd: &S, g: &Gate<'_>) -> Result<(), GateFailure> {
    let started = Instant::now();
    systemd
        .restart(g.unit, g.start_timeout)
        .await
        .map_err(GateFailure::Restart)?;
    let status = loop {
        let status = systemd.show(g.unit).await.map_err(GateFailure::Show)?;
        if status.is_active() {
            break status;
        }
        if started.elapsed() >= g.start_timeout {
            return Err(GateFailure::NotActive {
                timeout: g.start_timeout,
                status,
            });
        }
        tokio::time::sleep(g.poll).await;
    };
    let active_at = Instant::now();
    let soak_end = active_at + g.soak;
    let probe_end = g
        .probe
        .map(|(_, passes, every)| soak_end.max(active_at + every.saturating_mul(passes)));
    let (mut passes, mut next_probe, mut last) = (0u32, active_at, String::new());
    loop {
        let seen = systemd.show(g.unit).await.map_err(GateFailure::Show)?;
        if !seen.is_active() {
            return Err(GateFailure::Left(seen));
        }
        if seen.n_restarts != status.n_restarts {
            return Err(GateFailure::Restarted(
                seen.n_restarts.saturating_sub(status.n_restarts),
            ));
        }
        let mut pending = false;
        if let Some((prober, needed, every)) = g.probe
            && passes < needed
        {
            if Instant::now() >= next_probe {
                // No new run starts past the deadline; one started before it still counts.
                if probe_end.is_some_and(|end| Instant::now() >= end) {
                    return Err(GateFailure::Probe {
                        passes,
                        needed,
                        last,
                    });
                }
                next_probe = Instant::now() + every;
                match prober.probe().await {
                    Ok(()) => passes += 1,
                    Err(e) => {
                        passes = 0;
                        last = e.to_string();
                    }
                }
            }
            pending = passes < needed;
        }
        let now = Instant::now();
        if !pending && now >= soak_end {
            return Ok(());
        }
        // Next poll, or sooner when the soak ends or the next probe is due.
        let mut wake = now + g.poll;
        if soak_end > now {
            wake = wake.min(soak_end);
        }
        if pending {
            wake = wake.min(next_probe);
        }
        tokio::time::sleep_until(wake).await;
    }
}
