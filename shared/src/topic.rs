//! MQTT topics and the per-device topic ACL.
//!
//! Layout: `fleet/<device>/up/<kind>` (device → controller) and `fleet/<device>/down/<kind>`
//! (controller → device). A device may publish only under its own `up/` and subscribe only
//! under its own `down/`. The decisions are pure functions so the gateway, tests and docs
//! agree on one table.

use std::fmt;

use crate::id::DeviceId;

/// First topic level of every pifleet topic.
pub const ROOT: &str = "fleet";

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Device → controller.
    Up,
    /// Controller → device.
    Down,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// Message kinds, each with its own direction and size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Inventory sent on every connect.
    Hello,
    /// One or more telemetry samples.
    Telemetry,
    /// A command result (receipt).
    Result,
    /// Something that happened on the device (watchdog restart, spool drop, …).
    Event,
    /// Retained online/offline status (also the last will).
    Status,
    /// A signed command.
    Cmd,
    /// Acknowledgement of committed telemetry.
    Ack,
    /// A certificate signing request renewing the device certificate.
    Csr,
    /// The controller's answer to a `csr`: the new certificate, or why not.
    Cert,
}

impl Kind {
    /// Every kind, for tables and metrics.
    pub const ALL: [Kind; 9] = [
        Kind::Hello,
        Kind::Telemetry,
        Kind::Result,
        Kind::Event,
        Kind::Status,
        Kind::Cmd,
        Kind::Ack,
        Kind::Csr,
        Kind::Cert,
    ];

    /// The topic level naming this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Telemetry => "telemetry",
            Self::Result => "result",
            Self::Event => "event",
            Self::Status => "status",
            Self::Cmd => "cmd",
            Self::Ack => "ack",
            Self::Csr => "csr",
            Self::Cert => "cert",
        }
    }

    /// The direction messages of this kind travel.
    pub fn direction(self) -> Direction {
        match self {
            Self::Hello
            | Self::Telemetry
            | Self::Result
            | Self::Event
            | Self::Status
            | Self::Csr => Direction::Up,
            Self::Cmd | Self::Ack | Self::Cert => Direction::Down,
        }
    }

    /// Hard limit on an encoded payload of this kind, checked before decoding.
    pub fn max_payload(self) -> usize {
        match self {
            Self::Hello => 8 * 1024,
            Self::Telemetry => 64 * 1024,
            Self::Result => 64 * 1024,
            Self::Event => 16 * 1024,
            Self::Status => 64,
            Self::Cmd => 16 * 1024,
            Self::Ack => 4 * 1024,
            // A P-256 CSR is well under 1 KiB of PEM; a certificate about as much.
            Self::Csr => 4 * 1024,
            Self::Cert => 8 * 1024,
        }
    }

    /// Parses a topic level in the given direction.
    pub fn parse(level: &str, dir: Direction) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == level && k.direction() == dir)
    }
}

/// The largest payload of any kind: an upper bound for MQTT packet sizes.
pub fn max_payload_any() -> usize {
    Kind::ALL.iter().map(|k| k.max_payload()).max().unwrap_or(0)
}

/// A parsed, valid pifleet topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub device: DeviceId,
    pub kind: Kind,
}

impl Topic {
    pub fn new(device: DeviceId, kind: Kind) -> Self {
        Self { device, kind }
    }

    /// Parses `fleet/<device>/<up|down>/<kind>`.
    pub fn parse(s: &str) -> Result<Self, AclDenied> {
        let mut parts = s.split('/');
        let (Some(root), Some(dev), Some(dir), Some(kind), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AclDenied::NotFleetTopic);
        };
        if root != ROOT {
            return Err(AclDenied::NotFleetTopic);
        }
        if s.contains(['+', '#']) {
            return Err(AclDenied::Wildcard);
        }
        let device = DeviceId::parse(dev).map_err(|_| AclDenied::NotFleetTopic)?;
        let dir = match dir {
            "up" => Direction::Up,
            "down" => Direction::Down,
            _ => return Err(AclDenied::NotFleetTopic),
        };
        let kind = Kind::parse(kind, dir).ok_or(AclDenied::UnknownKind)?;
        Ok(Self { device, kind })
    }

    /// Filter matching every up message of every device (controller side).
    pub fn all_up_filter() -> String {
        format!("{ROOT}/+/up/#")
    }

    /// Filter a device subscribes to for everything addressed to it.
    pub fn down_filter(device: &DeviceId) -> String {
        format!("{ROOT}/{device}/down/#")
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ROOT}/{}/{}/{}",
            self.device,
            self.kind.direction().as_str(),
            self.kind.as_str()
        )
    }
}

/// Why a device was refused a topic. Every variant closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclDenied {
    #[error("not a pifleet topic")]
    NotFleetTopic,
    #[error("topic belongs to another device")]
    OtherDevice,
    #[error("wrong direction for this operation")]
    WrongDirection,
    #[error("unknown message kind")]
    UnknownKind,
    #[error("wildcards are not allowed here")]
    Wildcard,
}

impl AclDenied {
    /// A short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFleetTopic => "not_fleet_topic",
            Self::OtherDevice => "other_device",
            Self::WrongDirection => "wrong_direction",
            Self::UnknownKind => "unknown_kind",
            Self::Wildcard => "wildcard",
        }
    }
}

/// May `device` publish on `topic`? Only its own `up/<known kind>`.
pub fn may_publish(device: &DeviceId, topic: &str) -> Result<Kind, AclDenied> {
    let parsed = match Topic::parse(topic) {
        Ok(t) => t,
        // A known-looking topic of the wrong direction is reported as such.
        Err(AclDenied::UnknownKind) if is_own_down(device, topic) => {
            return Err(AclDenied::WrongDirection);
        }
        Err(e) => return Err(e),
    };
    if &parsed.device != device {
        return Err(AclDenied::OtherDevice);
    }
    if parsed.kind.direction() != Direction::Up {
        return Err(AclDenied::WrongDirection);
    }
    Ok(parsed.kind)
}

fn is_own_down(device: &DeviceId, topic: &str) -> bool {
    topic
        .strip_prefix(ROOT)
        .and_then(|t| t.strip_prefix('/'))
        .and_then(|t| t.strip_prefix(device.as_str()))
        .is_some_and(|t| t.starts_with("/down/"))
}

/// May `device` subscribe to `filter`? Only `fleet/<own>/down/#`, `fleet/<own>/down/+`
/// or `fleet/<own>/down/<known kind>`.
pub fn may_subscribe(device: &DeviceId, filter: &str) -> Result<(), AclDenied> {
    let levels: Vec<&str> = filter.split('/').collect();
    let [root, dev, dir, last] = levels.as_slice() else {
        return Err(if filter.contains(['+', '#']) {
            AclDenied::Wildcard
        } else {
            AclDenied::NotFleetTopic
        });
    };
    if *root != ROOT {
        return Err(AclDenied::NotFleetTopic);
    }
    if dev.contains(['+', '#']) || dir.contains(['+', '#']) {
        return Err(AclDenied::Wildcard);
    }
    if *dev != device.as_str() {
        return Err(AclDenied::OtherDevice);
    }
    match *dir {
        "down" => {}
        "up" => return Err(AclDenied::WrongDirection),
        _ => return Err(AclDenied::NotFleetTopic),
    }
    match *last {
        "#" | "+" => Ok(()),
        k if Kind::parse(k, Direction::Down).is_some() => Ok(()),
        k if k.contains(['+', '#']) => Err(AclDenied::Wildcard),
        k if Kind::parse(k, Direction::Up).is_some() => Err(AclDenied::WrongDirection),
        _ => Err(AclDenied::UnknownKind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn publish_table() {
        let me = id("pi-a");
        use AclDenied::*;
        let cases: &[(&str, Result<Kind, AclDenied>)] = &[
            ("fleet/pi-a/up/hello", Ok(Kind::Hello)),
            ("fleet/pi-a/up/telemetry", Ok(Kind::Telemetry)),
            ("fleet/pi-a/up/result", Ok(Kind::Result)),
            ("fleet/pi-a/up/event", Ok(Kind::Event)),
            ("fleet/pi-a/up/status", Ok(Kind::Status)),
            ("fleet/pi-a/up/csr", Ok(Kind::Csr)),
            ("fleet/pi-b/up/csr", Err(OtherDevice)),
            ("fleet/pi-a/down/cert", Err(WrongDirection)),
            ("fleet/pi-a/up/cert", Err(UnknownKind)),
            ("fleet/pi-b/up/telemetry", Err(OtherDevice)),
            ("fleet/pi-a/down/cmd", Err(WrongDirection)),
            ("fleet/pi-a/down/ack", Err(WrongDirection)),
            ("fleet/pi-b/down/cmd", Err(OtherDevice)),
            ("fleet/pi-a/up/cmd", Err(UnknownKind)),
            ("fleet/pi-a/up/shell", Err(UnknownKind)),
            ("fleet/pi-a/up/telemetry/extra", Err(NotFleetTopic)),
            ("fleet/pi-a/up", Err(NotFleetTopic)),
            ("fleet/PI-A/up/telemetry", Err(NotFleetTopic)),
            ("other/pi-a/up/telemetry", Err(NotFleetTopic)),
            ("$SYS/broker", Err(NotFleetTopic)),
            ("", Err(NotFleetTopic)),
            ("fleet/+/up/telemetry", Err(Wildcard)),
            ("fleet/pi-a/up/#", Err(Wildcard)),
            ("/fleet/pi-a/up/telemetry", Err(NotFleetTopic)),
        ];
        for (topic, want) in cases {
            assert_eq!(may_publish(&me, topic), *want, "topic {topic:?}");
        }
    }

    #[test]
    fn subscribe_table() {
        let me = id("pi-a");
        use AclDenied::*;
        let cases: &[(&str, Result<(), AclDenied>)] = &[
            ("fleet/pi-a/down/#", Ok(())),
            ("fleet/pi-a/down/+", Ok(())),
            ("fleet/pi-a/down/cmd", Ok(())),
            ("fleet/pi-a/down/ack", Ok(())),
            ("fleet/pi-a/down/cert", Ok(())),
            ("fleet/pi-b/down/cert", Err(OtherDevice)),
            ("fleet/pi-a/down/csr", Err(WrongDirection)),
            ("fleet/pi-b/down/#", Err(OtherDevice)),
            ("fleet/pi-b/down/cmd", Err(OtherDevice)),
            ("fleet/+/down/#", Err(Wildcard)),
            ("fleet/#", Err(Wildcard)),
            ("#", Err(Wildcard)),
            ("+/pi-a/down/cmd", Err(NotFleetTopic)),
            ("fleet/pi-a/#", Err(Wildcard)),
            ("fleet/pi-a/+/cmd", Err(Wildcard)),
            ("fleet/pi-a/up/#", Err(WrongDirection)),
            ("fleet/pi-a/up/telemetry", Err(WrongDirection)),
            ("fleet/pi-a/down/hello", Err(WrongDirection)),
            ("fleet/pi-a/down/shell", Err(UnknownKind)),
            ("fleet/pi-a/down/cmd/#", Err(Wildcard)),
            ("fleet/pi-a/down/c#", Err(Wildcard)),
            ("$SYS/#", Err(Wildcard)),
            ("$share/g/fleet/pi-a/down/#", Err(Wildcard)),
            ("fleet/pi-a/down", Err(NotFleetTopic)),
        ];
        for (filter, want) in cases {
            assert_eq!(may_subscribe(&me, filter), *want, "filter {filter:?}");
        }
    }

    #[test]
    fn topic_roundtrip() {
        for kind in Kind::ALL {
            let t = Topic::new(id("dev-1"), kind);
            assert_eq!(Topic::parse(&t.to_string()), Ok(t));
        }
        assert_eq!(Topic::down_filter(&id("dev-1")), "fleet/dev-1/down/#");
        assert!(may_subscribe(&id("dev-1"), &Topic::down_filter(&id("dev-1"))).is_ok());
    }
}
