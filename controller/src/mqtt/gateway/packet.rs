//! MQTT 3.1.1 packets on a device connection: framing with the size limit checked from the
//! fixed header before the body is buffered, the few packets the gateway writes, and names
//! for logs. The codec is rumqttc's (`mqttbytes::v4`), which parses both directions.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{self, QoS, check};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(super) use rumqttc::mqttbytes::Error as CodecError;

pub(super) fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::Publish(..) => "PUBLISH",
        Packet::PubAck(..) => "PUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Subscribe(..) => "SUBSCRIBE",
        Packet::SubAck(..) => "SUBACK",
        Packet::PubRec(..) => "PUBREC",
        Packet::PubRel(..) => "PUBREL",
        Packet::PubComp(..) => "PUBCOMP",
        Packet::Unsubscribe(..) => "UNSUBSCRIBE",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[derive(Debug)]
pub(super) enum PacketError {
    Io(std::io::Error),
    Mqtt(CodecError),
}

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Mqtt(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one MQTT packet; `Ok(None)` on a clean EOF. The size limit is enforced from the
/// fixed header, before the body is buffered. Cancel-safe: bytes read so far stay in `buf`.
pub(super) async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, PacketError> {
    loop {
        match check(buf.iter(), max) {
            Ok(_) => return Packet::read(buf, max).map(Some).map_err(PacketError::Mqtt),
            Err(CodecError::InsufficientBytes(n)) => {
                // Small steps: an idle device's buffer stays small.
                buf.reserve(n.clamp(64, 4096));
                let read = r.read_buf(buf).await.map_err(PacketError::Io)?;
                if read == 0 {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(PacketError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                    };
                }
            }
            Err(e) => return Err(PacketError::Mqtt(e)),
        }
    }
}

/// CONNACK with `code`, never with a session present (sessions are clean).
pub(super) fn connack(code: ConnectReturnCode) -> Bytes {
    encode(&Packet::ConnAck(ConnAck::new(code, false)))
}

pub(super) fn puback(pkid: u16) -> Bytes {
    encode(&Packet::PubAck(PubAck::new(pkid)))
}

/// SUBACK granting at most QoS 1 for each filter.
pub(super) fn suback(pkid: u16, requested: impl Iterator<Item = QoS>) -> Bytes {
    let codes = requested
        .map(|q| {
            SubscribeReasonCode::Success(match q {
                QoS::AtMostOnce => QoS::AtMostOnce,
                QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
            })
        })
        .collect();
    encode(&Packet::SubAck(SubAck::new(pkid, codes)))
}

pub(super) fn unsuback(pkid: u16) -> Bytes {
    encode(&Packet::UnsubAck(UnsubAck::new(pkid)))
}

pub(super) fn pingresp() -> Bytes {
    Bytes::from_static(&[0xD0, 0x00])
}

/// A QoS 0 PUBLISH for a device (commands and acks are idempotent, and re-sent by the
/// controller when they matter: a command on reconnect, an ack when samples come again).
pub(super) fn publish_into(topic: &str, payload: &[u8], out: &mut BytesMut) {
    let p = Publish::new(topic, QoS::AtMostOnce, payload);
    // Writing a QoS 0 PUBLISH fails only on a topic longer than 65,535 bytes; ours are
    // at most ~90.
    if let Err(e) = p.write(out) {
        tracing::error!(error = %e, topic, "cannot encode a PUBLISH for a device");
    }
}

fn encode(p: &Packet) -> Bytes {
    let mut out = BytesMut::with_capacity(8);
    // The gateway's own small packets always fit.
    if let Err(e) = p.write(&mut out, usize::MAX) {
        tracing::error!(error = %e, packet = packet_name(p), "cannot encode a packet");
    }
    out.freeze()
}

/// Whether an MQTT topic filter matches a topic (`+` one level, `#` the rest).
pub(super) fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A codec error's label for metrics.
pub(super) fn codec_reason(e: &CodecError) -> &'static str {
    match e {
        mqttbytes::Error::PayloadSizeLimitExceeded(_) => "oversize",
        _ => "malformed_packet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_packet_frames_and_limits() {
        // PINGREQ, then a PUBLISH whose header claims more than the limit.
        let mut data: &[u8] = &[0xC0, 0x00, 0x30, 0xff, 0xff, 0x03];
        let mut buf = BytesMut::new();
        let p = read_packet(&mut data, &mut buf, 1024)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::PingReq));
        let e = read_packet(&mut data, &mut buf, 1024).await.unwrap_err();
        assert!(matches!(
            e,
            PacketError::Mqtt(CodecError::PayloadSizeLimitExceeded(_))
        ));
    }

    #[tokio::test]
    async fn read_packet_eof() {
        let mut data: &[u8] = &[];
        let mut buf = BytesMut::new();
        assert!(
            read_packet(&mut data, &mut buf, 1024)
                .await
                .unwrap()
                .is_none()
        );
        let mut torn: &[u8] = &[0x30, 0x05, 0x00];
        let mut buf = BytesMut::new();
        assert!(read_packet(&mut torn, &mut buf, 1024).await.is_err());
    }

    #[test]
    fn the_packets_the_gateway_writes_parse_back() {
        let back = |b: Bytes| Packet::read(&mut BytesMut::from(&b[..]), 1 << 20).unwrap();
        assert!(matches!(
            back(connack(ConnectReturnCode::NotAuthorized)),
            Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::NotAuthorized,
                session_present: false
            })
        ));
        assert!(matches!(
            back(puback(7)),
            Packet::PubAck(PubAck { pkid: 7 })
        ));
        match back(suback(3, [QoS::ExactlyOnce, QoS::AtMostOnce].into_iter())) {
            Packet::SubAck(s) => assert_eq!(
                s.return_codes,
                vec![
                    SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::Success(QoS::AtMostOnce)
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            back(unsuback(4)),
            Packet::UnsubAck(UnsubAck { pkid: 4 })
        ));
        assert!(matches!(back(pingresp()), Packet::PingResp));
        let mut out = BytesMut::new();
        publish_into("fleet/pi-a/down/ack", b"xyz", &mut out);
        match back(out.freeze()) {
            Packet::Publish(p) => {
                assert_eq!(
                    (p.topic.as_str(), &p.payload[..]),
                    ("fleet/pi-a/down/ack", &b"xyz"[..])
                );
                assert_eq!(p.qos, QoS::AtMostOnce);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches("fleet/pi-a/down/#", "fleet/pi-a/down/cmd"));
        assert!(filter_matches("fleet/pi-a/down/+", "fleet/pi-a/down/ack"));
        assert!(filter_matches("fleet/pi-a/down/cmd", "fleet/pi-a/down/cmd"));
        assert!(!filter_matches(
            "fleet/pi-a/down/cmd",
            "fleet/pi-a/down/ack"
        ));
        assert!(!filter_matches("fleet/pi-a/down/+", "fleet/pi-a/down/a/b"));
        assert!(!filter_matches("fleet/pi-b/down/#", "fleet/pi-a/down/cmd"));
        assert!(filter_matches("fleet/pi-a/#", "fleet/pi-a"));
    }
}
