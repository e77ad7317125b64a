//! A device's MQTT session once its CONNECT is accepted: the gateway is the device's broker.
//!
//! Devices only ever talk to the controller (a star, never device to device), so the
//! session needs no general router: what a device publishes is checked against its ACL and
//! budget, decoded and routed in this task; what the controller sends it arrives on the
//! session's bounded queue and goes out if a subscription of the device matches. One task,
//! one socket, one small buffer each way per device.

use std::time::Duration;

use bytes::BytesMut;
use governor::DefaultDirectRateLimiter;
use pifleet_shared::DeviceId;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{LastWill, Packet, PubComp, PubRec};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::packet::{self, PacketError, codec_reason, filter_matches, read_packet};
use super::{End, Gateway};
use crate::mqtt::ingest::Outgoing;
use crate::mqtt::route::RouteError;

/// What a device said at CONNECT that the session keeps.
pub(super) struct Hello {
    pub keep_alive: u16,
    pub will: Option<LastWill>,
}

/// Bytes gathered before they are written in one go.
const WRITE_BATCH: usize = 16 * 1024;

impl Gateway {
    /// Runs the session until the device leaves, breaks a rule or is closed from outside
    /// (the caller races this against the connection's cancellation).
    pub(super) async fn session<S>(
        &self,
        id: &DeviceId,
        mut stream: S,
        mut buf: BytesMut,
        hello: Hello,
        mut down: mpsc::Receiver<Outgoing>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let max = crate::mqtt::max_packet_size();
        let idle = self.idle_limit(hello.keep_alive);
        let deadline = tokio::time::sleep(idle);
        tokio::pin!(deadline);
        let budget: DefaultDirectRateLimiter = self.message_budget();
        let mut throttled = false;
        let mut subscriptions: Vec<String> = Vec::new();
        let mut out = BytesMut::new();
        let end = loop {
            tokio::select! {
                read = read_packet(&mut stream, &mut buf, max) => {
                    deadline.as_mut().reset(Instant::now() + idle);
                    let packet = match read {
                        Ok(Some(p)) => p,
                        Ok(None) => break End::Closed("device_closed"),
                        Err(PacketError::Io(_)) => break End::Closed("device_read_error"),
                        Err(PacketError::Mqtt(e)) => break End::Violation(codec_reason(&e), e.to_string()),
                    };
                    if let Err(v) = self.inspect(id, &packet) {
                        break v;
                    }
                    if counts_against_budget(&packet) {
                        throttled = self.spend(&budget, id, throttled).await;
                    }
                    match self.handle(packet, &mut subscriptions, &mut out).await {
                        Ok(()) => {}
                        Err(end) => break end,
                    }
                }
                msg = down.recv() => match msg {
                    Some(msg) => self.send_down(&msg, &subscriptions, &mut out),
                    None => break End::Closed("shutdown"),
                },
                () = &mut deadline => break End::Closed("keepalive_timeout"),
            }
            // Whatever else is already waiting goes out in the same write.
            while out.len() < WRITE_BATCH {
                match down.try_recv() {
                    Ok(msg) => self.send_down(&msg, &subscriptions, &mut out),
                    Err(_) => break,
                }
            }
            if !out.is_empty() {
                if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                    break End::Closed("device_write_error");
                }
                out.clear();
                if out.capacity() > WRITE_BATCH {
                    out = BytesMut::new();
                }
            }
            if buf.is_empty() && buf.capacity() > 4096 {
                // A large message came and went: an idle device keeps a small buffer.
                buf = BytesMut::new();
            }
        };
        // A device that vanished without DISCONNECT gets its will published (its topic was
        // checked at CONNECT; it is the device's own status).
        if !matches!(end, End::Closed("client_disconnect"))
            && let Some(will) = hello.will
        {
            let _ = self.router.route(&will.topic, &will.message).await;
        }
        end
    }

    /// One packet from the device, already checked by [`Gateway::inspect`].
    async fn handle(
        &self,
        packet: Packet,
        subscriptions: &mut Vec<String>,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => {
                match self.router.route(&p.topic, &p.payload).await {
                    Ok(()) => {}
                    Err(RouteError::Refused(_)) => return Err(End::Closed("bad_payload")),
                    Err(RouteError::Closed) => return Err(End::Closed("shutdown")),
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => out.extend_from_slice(&packet::puback(p.pkid)),
                    // Ingest is idempotent (device, seq), so a repeat is harmless; answered
                    // at once, no state kept.
                    QoS::ExactlyOnce => {
                        let _ = PubRec::new(p.pkid).write(out);
                    }
                }
            }
            Packet::PubRel(r) => {
                let _ = PubComp::new(r.pkid).write(out);
            }
            Packet::Subscribe(s) => {
                for f in &s.filters {
                    if !subscriptions.contains(&f.path) {
                        subscriptions.push(f.path.clone());
                    }
                }
                out.extend_from_slice(&packet::suback(s.pkid, s.filters.iter().map(|f| f.qos)));
            }
            Packet::Unsubscribe(u) => {
                subscriptions.retain(|f| !u.topics.contains(f));
                out.extend_from_slice(&packet::unsuback(u.pkid));
            }
            Packet::PingReq => out.extend_from_slice(&packet::pingresp()),
            Packet::Disconnect => return Err(End::Closed("client_disconnect")),
            // Acknowledgements of what we sent: ours go out at QoS 0, nothing to track.
            _ => {}
        }
        Ok(())
    }

    /// Encodes a message for the device if one of its subscriptions matches, as a broker
    /// would; otherwise it is dropped and counted.
    fn send_down(&self, msg: &Outgoing, subscriptions: &[String], out: &mut BytesMut) {
        let topic = msg.topic.to_string();
        if !subscriptions.iter().any(|f| filter_matches(f, &topic)) {
            self.metrics
                .mqtt_out_dropped
                .with_label_values(&["not_subscribed"])
                .inc();
            return;
        }
        self.metrics
            .mqtt_messages_out
            .with_label_values(&[msg.topic.kind.as_str()])
            .inc();
        self.metrics.mqtt_bytes_out.inc_by(msg.payload.len() as u64);
        packet::publish_into(&topic, &msg.payload, out);
    }

    /// How long a device may stay silent: one and a half keep-alive periods (MQTT 3.1.1
    /// §3.1.2.10); a device asking for none gets `mqtt.idle_max_s`.
    fn idle_limit(&self, keep_alive: u16) -> Duration {
        let max = Duration::from_secs(self.cfg.idle_max_s);
        match keep_alive {
            0 => max,
            k => (Duration::from_secs(u64::from(k)) * 3 / 2).min(max),
        }
    }
}

/// Packets that make work for ingest; acknowledgements and keep-alives do not, and
/// delaying them would only stall the device's own flow control.
fn counts_against_budget(p: &Packet) -> bool {
    matches!(
        p,
        Packet::Publish(..) | Packet::Subscribe(..) | Packet::Unsubscribe(..)
    )
}
