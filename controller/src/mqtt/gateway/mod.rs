//! The device-facing MQTT gateway.
//!
//! Each accepted socket gets its own task: TLS handshake with a timeout (an idle socket
//! blocks nobody; the handshake's computation runs a few at a time, [`gate`]), client
//! certificate verified against the CA and the CRL by rustls, device id taken from the
//! certificate, MQTT client id required to equal it, then the device's MQTT
//! [`session`] in the same task, in which every device packet is checked against the topic
//! ACL and a per-device message budget. Any violation closes the connection, is logged with
//! the device and the reason, and is counted. A device costs one socket and one task.
//!
//! Connections that have not finished authenticating (handshake and CONNECT) count against
//! a budget, globally and per source address. Every connection is known to the
//! [`registry`] from the end of its handshake, so a revocation closes it whether or not it
//! has sent CONNECT yet.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pifleet_shared::DeviceId;
use pifleet_shared::acl::{check_publish, check_subscribe};
use pifleet_shared::topic::may_publish;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::datadir::DataDir;
use crate::metrics::{Gauged, Metrics};
use crate::mqtt::ingest::Outgoing;
use crate::mqtt::max_packet_size;
use crate::mqtt::route::Router;
use crate::pki::{ServerCert, tls};
use crate::source::{PreAuth, PreAuthBudget};
use crate::store::Store;
use crate::supervise::TaskResult;

mod admit;
mod gate;
pub mod limits;
mod packet;
mod registry;
mod session;

use gate::Gated;
use packet::{packet_name, read_packet};
use registry::{CloseReason, Delivery, NotRegistered, Registry};

/// The gateway: shared state of all connection tasks.
#[derive(Debug)]
pub struct Gateway {
    cfg: MqttConfig,
    tls: ArcSwap<ServerConfig>,
    registry: Registry,
    next_conn: AtomicU64,
    router: Router,
    metrics: Metrics,
    /// One per connection the process may hold ([`limits::connection_limit`]).
    permits: Arc<Semaphore>,
    /// One per handshake computing at once ([`gate`]).
    crypto: Arc<Semaphore>,
    preauth: PreAuthBudget,
    /// Asked at every connect whether the database lets the certificate in
    /// ([`review::decide`]).
    store: Store,
}

/// Why a connection ended or was refused; the label is used in logs and metrics.
#[derive(Debug)]
enum End {
    Refused(&'static str, String),
    Violation(&'static str, String),
    Closed(&'static str),
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: MqttConfig,
        tls: ServerConfig,
        revoked: HashSet<String>,
        router: Router,
        metrics: Metrics,
        store: Store,
        limit: usize,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limit));
        metrics.mqtt_connection_limit.set(limit as i64);
        let crypto = Arc::new(Semaphore::new(cfg.handshake_concurrency()));
        let preauth = PreAuthBudget::new(cfg.preauth_max, cfg.preauth_per_source);
        Self {
            cfg,
            tls: ArcSwap::from_pointee(tls),
            registry: Registry::new(revoked),
            next_conn: AtomicU64::new(1),
            router,
            metrics,
            permits,
            crypto,
            preauth,
            store,
        }
    }

    /// Accepts connections until `shutdown`; each one is handled in its own task. While the
    /// pre-authentication budget is used up, new connections wait in the listen backlog.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> TaskResult {
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = self.preauth.slot() => s,
            };
            let Some(slot) = slot else { break };
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
            let Some(preauth) = self.preauth.admit(slot, peer.ip()) else {
                self.refuse_at_accept(peer, "preauth_per_source");
                continue;
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.refuse_at_accept(peer, "max_connections");
                continue;
            };
            let preauth = Gauged::new(preauth, self.metrics.mqtt_preauth_connections.clone());
            let gw = self.clone();
            let cancel = shutdown.child_token();
            tokio::spawn(async move {
                gw.connection(tcp, peer, cancel, preauth, permit).await;
            });
        }
        self.registry.close_all("shutdown");
        Ok(())
    }

    fn refuse_at_accept(&self, peer: SocketAddr, reason: &'static str) {
        self.metrics.mqtt_refused.with_label_values(&[reason]).inc();
        tracing::warn!(%peer, source = %peer.ip(), reason, "mqtt connection refused");
    }

    /// Sends `msg` to its device's live session, if any (dropped and counted otherwise).
    pub fn deliver(&self, msg: Outgoing) {
        let reason = match self.registry.deliver(msg) {
            Delivery::Queued => return,
            Delivery::Offline => "offline",
            Delivery::Full => "queue_full",
        };
        self.metrics
            .mqtt_out_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Revokes `serials` (lowercase hex): new handshakes presenting one are refused, and
    /// every connection that presented one is closed, before or after its CONNECT.
    /// Returns how many of `serials` were not known as revoked before.
    pub fn revoke(&self, serials: HashSet<String>) -> usize {
        let (added, closed) = self.registry.revoke(serials);
        for (device, serial) in closed {
            tracing::warn!(device = %device, serial = %serial, "dropping revoked device");
        }
        added
    }

    /// Installs a new TLS config (its CRL) and its revocation set.
    pub fn reload(&self, tls: ServerConfig, revoked: HashSet<String>) {
        self.tls.store(Arc::new(tls));
        self.revoke(revoked);
    }

    /// Polls the CRL file and reloads on change, so `device revoke` from the command line
    /// takes effect at once. The file is replaced by rename, so a change of inode, size or
    /// modification time means a new, complete CRL.
    pub async fn watch_crl(
        self: Arc<Self>,
        dd: DataDir,
        cert: Arc<ServerCert>,
        shutdown: CancellationToken,
    ) -> TaskResult {
        use std::os::unix::fs::MetadataExt;
        let path = dd.crl();
        let stamp = |p: &std::path::Path| -> Option<(SystemTime, u64, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        };
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.crl_poll_ms));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let now = stamp(&path);
            if now == last {
                continue;
            }
            match load_tls(&dd, &cert) {
                Ok((cfg, revoked)) => {
                    tracing::info!(revoked = revoked.len(), "CRL reloaded");
                    self.reload(cfg, revoked);
                    last = now;
                }
                // Keep the previous config; the database check keeps revocations enforced.
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
        preauth: Gauged<PreAuth>,
        _permit: OwnedSemaphorePermit,
    ) {
        let _ = tcp.set_nodelay(true);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let reason: CloseReason = Arc::new(OnceLock::new());
        // The id from the certificate once verified, and whether the connection got as far
        // as registration.
        let mut identity: Option<DeviceId> = None;
        let mut registered = false;
        let end = tokio::select! {
            e = self.serve(tcp, peer, conn, preauth, &mut identity, &mut registered, &cancel, &reason) => e,
            _ = cancel.cancelled() => End::Closed(reason.get().copied().unwrap_or("shutdown")),
        };
        if self.registry.remove(conn)
            && let Some(dev) = &identity
        {
            self.router.online(dev, false).await;
        }
        let device = identity.as_ref().map(DeviceId::as_str);
        if !registered {
            match end {
                End::Refused(r, detail) | End::Violation(r, detail) => {
                    self.metrics.mqtt_refused.with_label_values(&[r]).inc();
                    tracing::warn!(%peer, source = %peer.ip(), device, reason = r, detail = %detail, "mqtt connection refused");
                }
                // Revoked between its handshake and its CONNECT.
                End::Closed(r @ "revoked") => {
                    self.metrics.mqtt_refused.with_label_values(&[r]).inc();
                    tracing::warn!(%peer, source = %peer.ip(), device, reason = r, detail = "revoked before CONNECT", "mqtt connection refused");
                }
                End::Closed(r) => {
                    tracing::debug!(%peer, device, reason = r, "mqtt connection closed")
                }
            }
            return;
        }
        let label = match &end {
            End::Refused(r, detail) => {
                self.metrics.mqtt_refused.with_label_values(&[r]).inc();
                tracing::warn!(%peer, device, reason = r, detail = %detail, "mqtt connection refused");
                *r
            }
            End::Violation(r, detail) => {
                self.metrics
                    .mqtt_acl_violations
                    .with_label_values(&[r])
                    .inc();
                tracing::warn!(%peer, device, reason = r, detail = %detail, "mqtt violation; connection closed");
                *r
            }
            End::Closed(r) => {
                tracing::info!(%peer, device, reason = r, "device disconnected");
                *r
            }
        };
        self.metrics
            .mqtt_disconnects
            .with_label_values(&[label])
            .inc();
        self.metrics.mqtt_connections.dec();
    }

    /// Handshake, CONNECT, registration and relay. Sets `identity` once the certificate is
    /// verified (for logs) and `registered` once the connection is live. `preauth` is held
    /// until the device is registered.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        conn: u64,
        preauth: Gauged<PreAuth>,
        identity: &mut Option<DeviceId>,
        registered: &mut bool,
        cancel: &CancellationToken,
        reason: &CloseReason,
    ) -> End {
        let acceptor = TlsAcceptor::from(self.tls.load_full());
        let gated = Gated::new(tcp, self.crypto.clone());
        let mut stream = match tokio::time::timeout(
            self.cfg.handshake_timeout(),
            acceptor.accept(gated),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return End::Refused("tls", e.to_string()),
            Err(_) => return End::Refused("handshake_timeout", String::new()),
        };
        stream.get_mut().0.open();
        let Some(leaf) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        else {
            return End::Refused("no_client_cert", String::new());
        };
        // Kept for the database, should it not know this certificate.
        let leaf_der = leaf.as_ref().to_vec();
        let (id, serial) = match crate::pki::device_identity(leaf) {
            Ok((id, serial)) => (id, tls::normalize_serial(&serial)),
            Err(e) => return End::Refused("bad_identity", e.to_string()),
        };
        *identity = Some(id.clone());
        // From here on a revocation closes this connection, CONNECT or not. The handshake
        // may have used a TLS config from before the newest revocation: check again.
        if self
            .registry
            .handshaken(conn, &id, &serial, cancel, reason)
            .is_err()
        {
            return End::Refused("revoked", id.to_string());
        }

        let max = max_packet_size();
        let mut buf = BytesMut::new();
        let first = tokio::time::timeout(
            self.cfg.connect_timeout(),
            read_packet(&mut stream, &mut buf, max),
        )
        .await;
        let connect = match first {
            Err(_) => return End::Refused("connect_timeout", id.to_string()),
            Ok(Err(e)) => return End::Refused("protocol", format!("{id}: {e}")),
            Ok(Ok(None)) => return End::Refused("eof_before_connect", id.to_string()),
            Ok(Ok(Some(Packet::Connect(c)))) => c,
            Ok(Ok(Some(other))) => {
                return End::Refused(
                    "protocol",
                    format!("{id}: first packet {:?}", packet_name(&other)),
                );
            }
        };
        // Device-supplied credentials are ignored: identity is the certificate.
        if connect.client_id != id.as_str() {
            let _ = stream
                .write_all(&packet::connack(ConnectReturnCode::BadClientId))
                .await;
            let _ = stream.shutdown().await;
            return End::Refused(
                "client_id_mismatch",
                format!("certificate {id}, client id {:?}", connect.client_id),
            );
        }
        if let Some(w) = &connect.last_will
            && let Err(e) = may_publish(&id, &w.topic)
        {
            let _ = stream
                .write_all(&packet::connack(ConnectReturnCode::NotAuthorized))
                .await;
            return End::Refused("will_topic", format!("{id}: {e}"));
        }
        if let Err(end) = self.admit(&id, &serial, &leaf_der, peer).await {
            let code = match end {
                End::Refused("store_unavailable", _) => ConnectReturnCode::ServiceUnavailable,
                _ => ConnectReturnCode::NotAuthorized,
            };
            let _ = stream.write_all(&packet::connack(code)).await;
            let _ = stream.shutdown().await;
            return end;
        }
        // Revoked while its CONNECT was on the way: refused before any session exists.
        let (down_tx, down_rx) = mpsc::channel(self.cfg.device_queue);
        match self.registry.register(conn, down_tx) {
            Ok(()) => {}
            Err(NotRegistered::Revoked) => return End::Closed("revoked"),
            Err(NotRegistered::Superseded) => {
                let _ = stream
                    .write_all(&packet::connack(ConnectReturnCode::ServiceUnavailable))
                    .await;
                return End::Refused("superseded", id.to_string());
            }
        }
        if stream
            .write_all(&packet::connack(ConnectReturnCode::Success))
            .await
            .is_err()
        {
            return End::Closed("device_write_error");
        }
        drop(preauth);
        *registered = true;
        self.metrics.mqtt_connects.inc();
        self.metrics.mqtt_connections.inc();
        tracing::info!(device = %id, serial = %serial, "device connected");
        self.router.online(&id, true).await;
        let hello = session::Hello {
            keep_alive: connect.keep_alive,
            will: connect.last_will,
        };
        self.session(&id, stream, buf, hello, down_rx).await
    }

    /// A device's message budget: `device_rate_per_s` sustained, `device_burst` at once.
    fn message_budget(&self) -> DefaultDirectRateLimiter {
        let rate = std::num::NonZeroU32::new(self.cfg.device_rate_per_s)
            .unwrap_or(std::num::NonZeroU32::MIN);
        let burst =
            std::num::NonZeroU32::new(self.cfg.device_burst).unwrap_or(std::num::NonZeroU32::MIN);
        RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
    }

    /// Takes one message from the device's budget. Over budget, the gateway reads the
    /// device more slowly (it waits here before forwarding, so TCP pushes back and the
    /// device's own in-flight window stalls): nothing is dropped and every QoS 1 PUBLISH
    /// is still answered by the broker once forwarded. Counted per delayed message, logged
    /// once per episode. Returns whether the device is being throttled now.
    async fn spend(
        &self,
        budget: &DefaultDirectRateLimiter,
        id: &DeviceId,
        throttled: bool,
    ) -> bool {
        if budget.check().is_ok() {
            return false;
        }
        self.metrics.mqtt_throttled.inc();
        if !throttled {
            tracing::warn!(
                device = %id,
                rate_per_s = self.cfg.device_rate_per_s,
                burst = self.cfg.device_burst,
                "device over its message budget; reading it more slowly"
            );
        }
        budget.until_ready().await;
        true
    }

    /// The per-packet ACL: what a device may send after CONNECT.
    fn inspect(&self, id: &DeviceId, packet: &Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => {
                let kind = check_publish(id, p.topic.as_bytes(), p.payload.len())
                    .map_err(|e| End::Violation(e.reason(), format!("{id}: {e}")))?;
                self.metrics
                    .mqtt_messages_in
                    .with_label_values(&[kind.as_str()])
                    .inc();
                self.metrics.mqtt_bytes_in.inc_by(p.payload.len() as u64);
                Ok(())
            }
            Packet::Subscribe(s) => check_subscribe(id, s.filters.iter().map(|f| f.path.as_str()))
                .map_err(|e| End::Violation(e.reason(), format!("{id}: {e}"))),
            Packet::Unsubscribe(..)
            | Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubRel(..)
            | Packet::PubComp(..)
            | Packet::PingReq
            | Packet::Disconnect => Ok(()),
            Packet::Connect(..) => Err(End::Violation("second_connect", String::new())),
            other => Err(End::Violation(
                "protocol",
                format!("unexpected {}", packet_name(other)),
            )),
        }
    }
}

/// Loads the MQTT TLS config and the revoked serials from the data dir.
pub fn load_tls(
    dd: &DataDir,
    cert: &Arc<ServerCert>,
) -> Result<(ServerConfig, HashSet<String>), tls::TlsError> {
    let crls = tls::load_crls(&dd.crl())?;
    let revoked = tls::revoked_serials(&crls)?;
    Ok((tls::mqtt_config(dd, crls, cert.clone())?, revoked))
}
