//! Reading MQTT packets from a device: framing with the size limit checked from the fixed
//! header before the body is buffered, and names for logs.

use bytes::{Bytes, BytesMut};
use pifleet_shared::topic::AclDenied;
use rumqttd::protocol::v4::{V4, check};
use rumqttd::protocol::{Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(super) fn topic_str(b: &Bytes) -> Result<&str, AclDenied> {
    std::str::from_utf8(b).map_err(|_| AclDenied::NotFleetTopic)
}

pub(super) fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::Publish(..) => "PUBLISH",
        Packet::PubAck(..) => "PUBACK",
        Packet::PingReq(..) => "PINGREQ",
        Packet::PingResp(..) => "PINGRESP",
        Packet::Subscribe(..) => "SUBSCRIBE",
        Packet::SubAck(..) => "SUBACK",
        Packet::PubRec(..) => "PUBREC",
        Packet::PubRel(..) => "PUBREL",
        Packet::PubComp(..) => "PUBCOMP",
        Packet::Unsubscribe(..) => "UNSUBSCRIBE",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::Disconnect(..) => "DISCONNECT",
    }
}

#[derive(Debug)]
pub(super) enum PacketError {
    Io(std::io::Error),
    Mqtt(rumqttd::protocol::Error),
}

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Mqtt(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one MQTT packet; returns it parsed and as the raw frame to forward unchanged.
/// `Ok(None)` on a clean EOF. The size limit is enforced from the fixed header, before the
/// body is buffered.
pub(super) async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(Packet, Bytes)>, PacketError> {
    loop {
        match check(buf.iter(), max) {
            Ok(header) => {
                let raw = buf.split_to(header.frame_length()).freeze();
                let mut copy = BytesMut::from(&raw[..]);
                let packet = V4.read_mut(&mut copy, max).map_err(PacketError::Mqtt)?;
                return Ok(Some((packet, raw)));
            }
            Err(rumqttd::protocol::Error::InsufficientBytes(n)) => {
                buf.reserve(n.max(1024));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_packet_frames_and_limits() {
        // PINGREQ, then a PUBLISH whose header claims more than the limit.
        let mut data: &[u8] = &[0xC0, 0x00, 0x30, 0xff, 0xff, 0x03];
        let mut buf = BytesMut::new();
        let (p, raw) = read_packet(&mut data, &mut buf, 1024)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::PingReq(_)));
        assert_eq!(&raw[..], &[0xC0, 0x00]);
        let e = read_packet(&mut data, &mut buf, 1024).await.unwrap_err();
        assert!(matches!(
            e,
            PacketError::Mqtt(rumqttd::protocol::Error::PayloadSizeLimitExceeded(_))
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
}
