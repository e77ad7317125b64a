//! The gateway's decision on what a connected device sends after CONNECT, as pure functions
//! over the raw packet fields: the topic ACL of [`crate::topic`] plus the size limit of the
//! message kind. The gateway maps a refusal to a violation that closes the connection.

use crate::id::DeviceId;
use crate::topic::{AclDenied, Kind, may_publish, may_subscribe};

/// Why a device's PUBLISH or SUBSCRIBE was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("topic not UTF-8")]
    TopicNotUtf8,
    #[error("publish to {topic:?}: {denied}")]
    Publish { topic: String, denied: AclDenied },
    #[error("subscribe to {filter:?}: {denied}")]
    Subscribe { filter: String, denied: AclDenied },
    #[error("{} payload of {len} bytes > {}", kind.as_str(), kind.max_payload())]
    Oversize { kind: Kind, len: usize },
}

impl Refused {
    /// A short stable label for metrics and logs (the ACL's own labels, or `oversize`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TopicNotUtf8 => AclDenied::NotFleetTopic.reason(),
            Self::Publish { denied, .. } | Self::Subscribe { denied, .. } => denied.reason(),
            Self::Oversize { .. } => "oversize",
        }
    }
}

/// May `device` publish `payload_len` bytes on `topic` (raw bytes off the wire)? Only on its
/// own `up/<kind>` topics, within that kind's size limit. Returns the kind.
pub fn check_publish(device: &DeviceId, topic: &[u8], payload_len: usize) -> Result<Kind, Refused> {
    let topic = std::str::from_utf8(topic).map_err(|_| Refused::TopicNotUtf8)?;
    let kind = may_publish(device, topic).map_err(|denied| Refused::Publish {
        topic: topic.to_owned(),
        denied,
    })?;
    if payload_len > kind.max_payload() {
        return Err(Refused::Oversize {
            kind,
            len: payload_len,
        });
    }
    Ok(kind)
}

/// May `device` subscribe to every filter of one SUBSCRIBE? Refused as a whole at the first
/// filter the ACL denies.
pub fn check_subscribe<'a>(
    device: &DeviceId,
    filters: impl IntoIterator<Item = &'a str>,
) -> Result<(), Refused> {
    for filter in filters {
        may_subscribe(device, filter).map_err(|denied| Refused::Subscribe {
            filter: filter.to_owned(),
            denied,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi() -> DeviceId {
        DeviceId::parse("pi-01").unwrap()
    }

    #[test]
    fn publish_decisions() {
        let limit = Kind::Telemetry.max_payload();
        let cases: [(&[u8], usize, Result<Kind, &str>); 6] = [
            (b"fleet/pi-01/up/telemetry", limit, Ok(Kind::Telemetry)),
            (b"fleet/pi-01/up/telemetry", limit + 1, Err("oversize")),
            (b"fleet/pi-02/up/telemetry", 1, Err("other_device")),
            (b"fleet/pi-01/down/cmd", 1, Err("wrong_direction")),
            (b"fleet/pi-01/up/\xff", 1, Err("not_fleet_topic")),
            (b"fleet/+/up/hello", 1, Err("wildcard")),
        ];
        for (topic, len, want) in cases {
            let got = check_publish(&pi(), topic, len).map_err(|e| e.reason());
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(topic));
        }
    }

    #[test]
    fn subscribe_refused_at_the_first_denied_filter() {
        assert_eq!(
            check_subscribe(&pi(), ["fleet/pi-01/down/#", "fleet/pi-01/down/cmd"]),
            Ok(())
        );
        let err = check_subscribe(&pi(), ["fleet/pi-01/down/#", "fleet/pi-02/down/#"]);
        assert_eq!(err.as_ref().map_err(Refused::reason), Err("other_device"));
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("subscribe to \"fleet/pi-02/down/#\": topic belongs to another device".into())
        );
    }
}
