//! Protocol version 1.

use serde::{Deserialize, Serialize};

/// The version byte that prefixes every v1 payload.
pub const VERSION: u8 = 1;

/// Sent by the agent on every (re)connect: what this device is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub agent_version: String,
    pub hostname: String,
    /// Pretty OS name, e.g. from `/etc/os-release`.
    pub os: String,
    pub kernel: String,
    pub arch: String,
    /// Raspberry Pi model from `/proc/device-tree/model`, when present.
    pub model: Option<String>,
    pub uptime_s: u64,
    /// Telemetry interval the agent is using, in seconds.
    pub interval_s: u32,
}

/// Usage of one mounted filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub mount: String,
    pub fs: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// Byte counters of one network interface (since boot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Net {
    pub iface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One telemetry sample. `seq` is per device, strictly increasing, never reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub seq: u64,
    /// Device clock at sampling time, Unix milliseconds.
    pub ts_ms: i64,
    /// CPU busy share across all cores, 0.0–100.0.
    pub cpu_pct: f32,
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub disks: Vec<Disk>,
    pub nets: Vec<Net>,
    /// SoC temperature, degrees Celsius, from the thermal zones.
    pub temp_c: Option<f32>,
    /// Raspberry Pi `get_throttled` bits (under-voltage, frequency capped, throttled, …).
    pub throttled: Option<u32>,
    pub uptime_s: u64,
    /// Samples the spool dropped (oldest first, when full) since the previous sample.
    pub spool_dropped: u64,
    /// Unacknowledged samples waiting in the spool when this one was taken.
    pub spool_backlog: u64,
}

/// A batch of samples: one for live data, many when a backlog drains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub samples: Vec<Sample>,
}

/// Inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

/// The controller's acknowledgement: these sequence numbers are committed to disk and may
/// leave the agent's spool. Ranges rather than one high-water mark, because live samples
/// overtake a draining backlog and a single number could acknowledge a sample not yet stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ranges: Vec<SeqRange>,
}

/// Retained device status; the offline value is also the MQTT last will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Online,
    Offline,
}

/// What the device's local allowlist lets commands do, so the controller (and its
/// dashboard) offers only those. Informational: the agent still checks every command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub ping: bool,
    pub reboot: bool,
    /// Units allowed for status / start / stop / restart.
    pub services: Vec<String>,
    /// Units whose journal may be tailed.
    pub journal_units: Vec<String>,
    pub scripts: Vec<ScriptCapability>,
    /// Bounds of `SetInterval`, when allowed.
    pub set_interval: Option<IntervalBounds>,
}

/// A script a command may run, with the arguments it may be given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptCapability {
    pub name: String,
    pub allowed_args: Vec<String>,
}

/// Inclusive bounds of the telemetry interval, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalBounds {
    pub min_s: u32,
    pub max_s: u32,
}

/// The state of one allowlisted systemd unit, as systemd names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub unit: String,
    /// `ActiveState`: active, inactive, failed, activating, …
    pub active: String,
    /// `SubState`: running, dead, exited, …
    pub sub: String,
}

/// Something the device reports outside the telemetry stream (kind `event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Sent after every hello.
    Capabilities(Capabilities),
    /// The allowlisted units' states: after every hello and whenever one changes.
    Services(Vec<ServiceState>),
    // Variants are only ever appended: postcard encodes the variant's index.
    /// How far a deploy or rollback command has got (its receipts carry the outcome).
    Deploy(DeployProgress),
    /// The allowlisted apps and the release each runs: after every hello and whenever a
    /// release changes.
    Apps(Vec<AppState>),
    /// The service watchdog noticed something about an allowlisted unit.
    Watchdog(UnitEvent),
    /// A release that had passed its health gate crash-looped within its guard window and
    /// was rolled back (the deploy's receipt had already said it was live).
    GuardRollback(GuardRollback),
}

/// One app `[apps.NAME]` allowlists on the device, and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    pub app: String,
    /// The systemd unit that runs it.
    pub unit: String,
    /// The live release's number and directory (`<release>-<digest8>`), if any.
    pub current: Option<u64>,
    pub current_dir: Option<String>,
    /// The release numbers kept on the device (a rollback can return to these).
    pub kept: Vec<u64>,
}

/// What the watchdog noticed about a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitEvent {
    pub unit: String,
    pub kind: UnitEventKind,
}

/// The watchdog's observations, one per episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitEventKind {
    /// systemd restarted the unit `restarts` times within the watch window.
    CrashLoop { restarts: u32 },
    /// The unit went up and down `transitions` times within the window without systemd
    /// restarting it.
    Flapping { transitions: u32 },
    /// systemd gave up on the unit (start-limit-hit); the watchdog starts it in
    /// `retry_in_s` seconds.
    GaveUp { retry_in_s: u64 },
    /// The watchdog starts the unit (its `attempt`th start since systemd gave up).
    Starting { attempt: u32 },
    /// The watchdog's daily budget of starts is spent; the next is in `retry_in_s`.
    BudgetSpent { retry_in_s: u64 },
    /// The unit stayed up after the watchdog's starts.
    Recovered,
}

impl UnitEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrashLoop { .. } => "crash_loop",
            Self::Flapping { .. } => "flapping",
            Self::GaveUp { .. } => "gave_up",
            Self::Starting { .. } => "starting",
            Self::BudgetSpent { .. } => "budget_spent",
            Self::Recovered => "recovered",
        }
    }
}

/// A committed release rolled back by its guard window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRollback {
    pub app: String,
    /// The release that crash-looped.
    pub release: u64,
    pub reason: String,
    /// The unit's last journal lines.
    pub journal: String,
    /// The release live again, or `None` when the previous one failed too
    /// (`failed_unrecoverable`).
    pub restored: Option<u64>,
}

/// Progress of a deploy or rollback command on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployProgress {
    pub command: crate::command::CommandId,
    pub app: String,
    pub release: u64,
    pub phase: DeployPhase,
    /// Archive bytes on the device so far, out of `total` (both 0 for a rollback).
    pub bytes: u64,
    pub total: u64,
}

/// The step a deploy is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployPhase {
    /// Fetching the archive (resumed where an earlier attempt stopped).
    Downloading,
    /// Unpacking, switching and applying the health gate.
    Installing,
}

impl DeployPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "downloading",
            Self::Installing => "installing",
        }
    }
}

/// A request to renew the device certificate (kind `csr`), sent over the device's
/// authenticated connection: a PKCS#10 CSR (PEM) for a new key, naming the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The controller's answer to a [`RenewRequest`] (kind `cert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenewAnswer {
    /// The new certificate (PEM), for the key of the CSR.
    Issued { cert_pem: String },
    /// Refused: why, and how long to wait before asking again.
    Refused { reason: String, retry_after_s: u32 },
}
