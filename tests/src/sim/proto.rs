//! The lines a parent simulator and its worker processes exchange: commands on the worker's
//! stdin, one JSON reply per command on its stdout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hist::Hist;

/// A command to a worker (one line on its stdin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start every device at once; reply when all are connected (or the phase times out).
    Connect,
    /// Start telemetry and reset the counters.
    Load,
    /// Counters since `Load`.
    Stats,
    /// Arm a storm's measurements, dropping every connection when `drop` is true.
    Storm {
        drop: bool,
    },
    /// Reply when every device is reconnected and acknowledged (or the phase times out).
    Wait,
    /// Stop telemetry; reply when every sample is acknowledged (or the phase times out).
    Settle,
    Quit,
}

impl Command {
    pub fn line(&self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Load => "load",
            Command::Stats => "stats",
            Command::Storm { drop: true } => "storm drop",
            Command::Storm { drop: false } => "storm",
            Command::Wait => "wait",
            Command::Settle => "settle",
            Command::Quit => "quit",
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        Some(match line.trim() {
            "connect" => Command::Connect,
            "load" => Command::Load,
            "stats" => Command::Stats,
            "storm drop" => Command::Storm { drop: true },
            "storm" => Command::Storm { drop: false },
            "wait" => Command::Wait,
            "settle" => Command::Settle,
            "quit" => Command::Quit,
            _ => return None,
        })
    }
}

/// One device's storm: wall-clock microseconds (0: never) of its first TCP connect, its
/// CONNACK and its first acknowledged sample after the storm began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormDevice {
    pub tcp: u64,
    pub connack: u64,
    pub ack: u64,
}

/// A worker's answer (one JSON line on its stdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Identities loaded, waiting for `connect`.
    Ready {
        devices: usize,
    },
    /// Per device: microseconds from the start to its first CONNACK (`None`: not connected).
    Connected {
        connect_us: Vec<Option<u64>>,
        failures: BTreeMap<String, u64>,
    },
    Ok,
    Stats {
        published: u64,
        acked: u64,
        latency: Hist,
        failures: BTreeMap<String, u64>,
    },
    Storm {
        devices: Vec<StormDevice>,
        failures: BTreeMap<String, u64>,
    },
    /// Samples still not acknowledged when telemetry had stopped (0 unless timed out).
    Settled {
        unacked: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for c in [
            Command::Connect,
            Command::Load,
            Command::Stats,
            Command::Storm { drop: true },
            Command::Storm { drop: false },
            Command::Wait,
            Command::Settle,
            Command::Quit,
        ] {
            assert_eq!(Command::parse(c.line()), Some(c));
        }
        assert_eq!(Command::parse("bogus"), None);
    }
}
