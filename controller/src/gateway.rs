//! The device-facing MQTT gateway (DESIGN §4 "Gateway").
//!
//! Each accepted socket gets its own task: TLS handshake with a timeout (an idle socket
//! blocks nobody), client certificate verified against the CA and the CRL by rustls, device
//! id taken from the certificate, MQTT client id required to equal it, then a packet-level
//! relay to the embedded broker in which every device packet is checked against the topic
//! ACL. Any violation closes the connection, is logged with the device and the reason, and
//! is counted. A revoked device's live connection is dropped when the CRL changes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use pifleet_shared::DeviceId;
use pifleet_shared::topic::{AclDenied, may_publish, may_subscribe};
use rumqttd::protocol::v4::{V4, check};
use rumqttd::protocol::{Login, Packet, Protocol};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerLogin, max_packet_size};
use crate::config::MqttConfig;
use crate::datadir::DataDir;
use crate::metrics::Metrics;
use crate::store::IngestOp;
use crate::tls;

/// A live device connection in the registry.
#[derive(Debug)]
struct Live {
    conn: u64,
    serial: String,
    cancel: CancellationToken,
    reason: Arc<OnceLock<&'static str>>,
}

/// The gateway: shared state of all connection tasks.
#[derive(Debug)]
pub struct Gateway {
    cfg: MqttConfig,
    tls: ArcSwap<ServerConfig>,
    revoked: ArcSwap<HashSet<String>>,
    live: Mutex<HashMap<DeviceId, Live>>,
    next_conn: AtomicU64,
    broker_addr: SocketAddr,
    login: BrokerLogin,
    events: mpsc::Sender<IngestOp>,
    metrics: Metrics,
    permits: Arc<Semaphore>,
}

/// Why a connection ended or was refused; the label is used in logs and metrics.
#[derive(Debug)]
enum End {
    Refused(&'static str, String),
    Violation(&'static str, String),
    Closed(&'static str),
}

impl Gateway {
    pub fn new(
        cfg: MqttConfig,
        tls: ServerConfig,
        revoked: HashSet<String>,
        broker_addr: SocketAddr,
        login: BrokerLogin,
        events: mpsc::Sender<IngestOp>,
        metrics: Metrics,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(cfg.max_connections));
        Self {
            cfg,
            tls: ArcSwap::from_pointee(tls),
            revoked: ArcSwap::from_pointee(revoked),
            live: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            broker_addr,
            login,
            events,
            metrics,
            permits,
        }
    }

    /// Accepts connections until `shutdown`; each one is handled in its own task.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "mqtt accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.metrics
                    .mqtt_refused
                    .with_label_values(&["max_connections"])
                    .inc();
                tracing::warn!(%peer, "mqtt connection refused: max_connections reached");
                continue;
            };
            let gw = self.clone();
            let cancel = shutdown.child_token();
            tokio::spawn(async move {
                gw.connection(tcp, peer, cancel).await;
                drop(permit);
            });
        }
        self.drop_all("shutdown");
    }

    /// Drops every live connection (shutdown).
    fn drop_all(&self, reason: &'static str) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for l in live.values() {
            let _ = l.reason.set(reason);
            l.cancel.cancel();
        }
    }

    /// Closes the live connection of `device`, if any, giving `reason`.
    pub fn disconnect(&self, device: &DeviceId, reason: &'static str) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(device) {
            Some(l) => {
                let _ = l.reason.set(reason);
                l.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether `device` has a live connection now.
    pub fn is_connected(&self, device: &DeviceId) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(device)
    }

    /// Installs a new TLS config and revocation set and drops live revoked connections.
    pub fn reload(&self, tls: ServerConfig, revoked: HashSet<String>) {
        self.tls.store(Arc::new(tls));
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (device, l) in live.iter() {
            if revoked.contains(&l.serial) {
                tracing::warn!(device = %device, serial = %l.serial, "dropping revoked device");
                let _ = l.reason.set("revoked");
                l.cancel.cancel();
            }
        }
        drop(live);
        self.revoked.store(Arc::new(revoked));
    }

    /// Polls the CRL file and reloads on change, so `device revoke` takes effect at once.
    pub async fn watch_crl(self: Arc<Self>, dd: DataDir, shutdown: CancellationToken) {
        let path = dd.crl();
        let stamp = |p: &std::path::Path| -> Option<(SystemTime, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.crl_poll_ms));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&path);
            if now == last {
                continue;
            }
            match load_tls(&dd) {
                Ok((cfg, revoked)) => {
                    tracing::info!(revoked = revoked.len(), "CRL reloaded");
                    self.reload(cfg, revoked);
                    last = now;
                }
                // Keep the previous config; a half-written file is retried on the next tick.
                Err(e) => {
                    tracing::error!(error = %e, "CRL reload failed; keeping the previous one")
                }
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
    ) {
        let _ = tcp.set_nodelay(true);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let reason = Arc::new(OnceLock::new());
        // The id from the certificate once verified, and whether the connection got as far
        // as registration (so there is state to clean up).
        let mut identity: Option<DeviceId> = None;
        let mut registered = false;
        let end = tokio::select! {
            e = self.serve(tcp, conn, &mut identity, &mut registered, &cancel, &reason) => e,
            _ = cancel.cancelled() => End::Closed(reason.get().copied().unwrap_or("shutdown")),
        };
        let dev = match identity {
            Some(dev) if registered => dev,
            identity => {
                let device = identity.as_ref().map(DeviceId::as_str);
                match end {
                    End::Refused(r, detail) | End::Violation(r, detail) => {
                        self.metrics.mqtt_refused.with_label_values(&[r]).inc();
                        tracing::warn!(%peer, device, reason = r, detail = %detail, "mqtt connection refused");
                    }
                    End::Closed(r) => {
                        tracing::debug!(%peer, device, reason = r, "mqtt connection closed")
                    }
                }
                return;
            }
        };
        let label = match &end {
            End::Refused(r, detail) => {
                self.metrics.mqtt_refused.with_label_values(&[r]).inc();
                tracing::warn!(%peer, device = %dev, reason = r, detail = %detail, "mqtt connection refused");
                None
            }
            End::Violation(r, detail) => {
                self.metrics
                    .mqtt_acl_violations
                    .with_label_values(&[r])
                    .inc();
                tracing::warn!(%peer, device = %dev, reason = r, detail = %detail, "mqtt violation; connection closed");
                Some(*r)
            }
            End::Closed(r) => {
                tracing::info!(%peer, device = %dev, reason = r, "device disconnected");
                Some(*r)
            }
        };
        let Some(label) = label else { return };
        self.metrics
            .mqtt_disconnects
            .with_label_values(&[label])
            .inc();
        self.metrics.mqtt_connections.dec();
        let was_current = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if live.get(&dev).is_some_and(|l| l.conn == conn) {
                live.remove(&dev);
                true
            } else {
                false
            }
        };
        if was_current {
            let _ = self
                .events
                .send(IngestOp::Online {
                    device: dev,
                    online: false,
                })
                .await;
        }
    }

    /// Handshake, CONNECT, registration and relay. Sets `identity` once the certificate is
    /// verified (for logs) and `registered` once the connection is live (so the caller
    /// knows to clean up).
    async fn serve(
        &self,
        tcp: TcpStream,
        conn: u64,
        identity: &mut Option<DeviceId>,
        registered: &mut bool,
        cancel: &CancellationToken,
        reason: &Arc<OnceLock<&'static str>>,
    ) -> End {
        let acceptor = TlsAcceptor::from(self.tls.load_full());
        let mut stream =
            match tokio::time::timeout(self.cfg.handshake_timeout(), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return End::Refused("tls", e.to_string()),
                Err(_) => return End::Refused("handshake_timeout", String::new()),
            };
        let Some(leaf) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        else {
            return End::Refused("no_client_cert", String::new());
        };
        let (id, serial) = match crate::pki::device_identity(leaf) {
            Ok((id, serial)) => (id, tls::normalize_serial(&serial)),
            Err(e) => return End::Refused("bad_identity", e.to_string()),
        };
        *identity = Some(id.clone());
        if self.revoked.load().contains(&serial) {
            return End::Refused("revoked", id.to_string());
        }

        let max = max_packet_size();
        let mut buf = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout(
            self.cfg.connect_timeout(),
            read_packet(&mut stream, &mut buf, max),
        )
        .await;
        let (connect, will, login) = match first {
            Err(_) => return End::Refused("connect_timeout", id.to_string()),
            Ok(Err(e)) => return End::Refused("protocol", format!("{id}: {e}")),
            Ok(Ok(None)) => return End::Refused("eof_before_connect", id.to_string()),
            Ok(Ok(Some((Packet::Connect(c, _, will, _, login), _)))) => (c, will, login),
            Ok(Ok(Some((other, _)))) => {
                return End::Refused(
                    "protocol",
                    format!("{id}: first packet {:?}", packet_name(&other)),
                );
            }
        };
        drop(login); // device-supplied credentials are ignored: identity is the certificate
        if connect.client_id != id.as_str() {
            // CONNACK "identifier rejected", then close.
            let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x02]).await;
            let _ = stream.shutdown().await;
            return End::Refused(
                "client_id_mismatch",
                format!("certificate {id}, client id {:?}", connect.client_id),
            );
        }
        if let Some(w) = &will
            && let Err(e) = topic_str(&w.topic).and_then(|t| may_publish(&id, t).map(|_| ()))
        {
            let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x05]).await;
            return End::Refused("will_topic", format!("{id}: {e}"));
        }

        let mut upstream = match TcpStream::connect(self.broker_addr).await {
            Ok(s) => s,
            Err(e) => return End::Refused("broker_unavailable", e.to_string()),
        };
        let _ = upstream.set_nodelay(true);
        let mut out = BytesMut::new();
        let login = Login {
            username: self.login.username.clone(),
            password: self.login.password.clone(),
        };
        if let Err(e) = V4.write(
            Packet::Connect(connect, None, will, None, Some(login)),
            &mut out,
        ) {
            return End::Refused("protocol", format!("{id}: re-encoding CONNECT: {e}"));
        }
        if upstream.write_all(&out).await.is_err() {
            return End::Refused("broker_unavailable", String::new());
        }

        // Register, replacing any older connection of the same device.
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = live.insert(
                id.clone(),
                Live {
                    conn,
                    serial: serial.clone(),
                    cancel: cancel.clone(),
                    reason: reason.clone(),
                },
            ) {
                let _ = old.reason.set("replaced");
                old.cancel.cancel();
            }
        }
        *registered = true;
        self.metrics.mqtt_connects.inc();
        self.metrics.mqtt_connections.inc();
        tracing::info!(device = %id, serial = %serial, "device connected");
        let _ = self
            .events
            .send(IngestOp::Online {
                device: id.clone(),
                online: true,
            })
            .await;

        let (mut up_r, mut up_w) = upstream.into_split();
        let (mut dev_r, mut dev_w) = tokio::io::split(stream);
        let down = async {
            match tokio::io::copy(&mut up_r, &mut dev_w).await {
                Ok(_) => End::Closed("broker_closed"),
                Err(_) => End::Closed("device_write_error"),
            }
        };
        let up = async {
            loop {
                let (packet, raw) = match read_packet(&mut dev_r, &mut buf, max).await {
                    Ok(Some(p)) => p,
                    Ok(None) => return End::Closed("device_closed"),
                    Err(PacketError::Io(_)) => return End::Closed("device_read_error"),
                    Err(PacketError::Mqtt(e)) => {
                        let r = match e {
                            rumqttd::protocol::Error::PayloadSizeLimitExceeded(_) => "oversize",
                            _ => "malformed_packet",
                        };
                        return End::Violation(r, e.to_string());
                    }
                };
                if let Err(v) = self.inspect(&id, &packet) {
                    return v;
                }
                let disconnect = matches!(packet, Packet::Disconnect(..));
                if up_w.write_all(&raw).await.is_err() {
                    return End::Closed("broker_closed");
                }
                if disconnect {
                    return End::Closed("client_disconnect");
                }
            }
        };
        tokio::select! {
            e = up => e,
            e = down => e,
        }
    }

    /// The per-packet ACL: what a device may send after CONNECT.
    fn inspect(&self, id: &DeviceId, packet: &Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p, _) => {
                let topic = topic_str(&p.topic)
                    .map_err(|e| End::Violation(e.reason(), format!("{id}: topic not UTF-8")))?;
                let kind = may_publish(id, topic)
                    .map_err(|e| End::Violation(e.reason(), format!("publish to {topic:?}")))?;
                if p.payload.len() > kind.max_payload() {
                    return Err(End::Violation(
                        "oversize",
                        format!(
                            "{} payload of {} bytes > {}",
                            kind.as_str(),
                            p.payload.len(),
                            kind.max_payload()
                        ),
                    ));
                }
                self.metrics
                    .mqtt_messages_in
                    .with_label_values(&[kind.as_str()])
                    .inc();
                self.metrics.mqtt_bytes_in.inc_by(p.payload.len() as u64);
                Ok(())
            }
            Packet::Subscribe(s, _) => {
                for f in &s.filters {
                    may_subscribe(id, &f.path).map_err(|e| {
                        End::Violation(e.reason(), format!("subscribe to {:?}", f.path))
                    })?;
                }
                Ok(())
            }
            Packet::Unsubscribe(..)
            | Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubRel(..)
            | Packet::PubComp(..)
            | Packet::PingReq(..)
            | Packet::Disconnect(..) => Ok(()),
            Packet::Connect(..) => Err(End::Violation("second_connect", String::new())),
            other => Err(End::Violation(
                "protocol",
                format!("unexpected {}", packet_name(other)),
            )),
        }
    }
}

/// Loads the MQTT TLS config and the revoked serials from the data dir.
pub fn load_tls(dd: &DataDir) -> Result<(ServerConfig, HashSet<String>), tls::TlsError> {
    let crls = tls::load_crls(&dd.crl())?;
    let revoked = tls::revoked_serials(&crls)?;
    Ok((tls::mqtt_config(dd, crls)?, revoked))
}

fn topic_str(b: &Bytes) -> Result<&str, AclDenied> {
    std::str::from_utf8(b).map_err(|_| AclDenied::NotFleetTopic)
}

fn packet_name(p: &Packet) -> &'static str {
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
enum PacketError {
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
async fn read_packet<R: AsyncRead + Unpin>(
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
