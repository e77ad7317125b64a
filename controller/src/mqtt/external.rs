//! The controller as one subscriber of an external MQTT broker (scale-out mode,
//! `[mqtt] mode = "external"`), in place of the built-in gateway.
//!
//! - **Ingest**: one shared subscription, `$share/pifleet/fleet/+/up/#` at QoS 1, so each
//!   message reaches one of the controllers. A message is routed exactly as the gateway
//!   routes it ([`Router`]) and only then acknowledged to the broker (manual acks), but the
//!   broker has already answered the device: what keeps a sample safe is the application
//!   ack the ingest writer sends after the commit (`fleet/<id>/down/ack`); the agent keeps
//!   every sample in its spool until then and re-sends what stays unacknowledged.
//!   Duplicates are harmless: inserts are idempotent on (device, seq).
//! - **Identity**: the broker binds each device to its certificate's CN and its own topics
//!   (`broker-config mosquitto`); the topic's device id is trusted as such. Messages of a
//!   revoked device are dropped here as a backstop, should the broker let one through.
//! - **Presence**: the agent publishes a retained `online` status on its status topic when
//!   it connects and `offline` when it leaves, and leaves `offline` as its last will, which
//!   the broker publishes when the connection drops without a goodbye (after 1.5 times the
//!   agent's keep-alive at most). Every controller subscribes to the status topics directly
//!   (`fleet/+/up/status`, not shared), so each hears every change, and at connect the
//!   retained `offline` of devices that left while no controller listened. A retained
//!   `online` is not believed on its own (a broker that crashed never published the wills of
//!   its sessions): a device is online once a live message of it arrives. Reconciled with
//!   last-seen times: a device that sent nothing for `mqtt.external.presence_timeout_s` is
//!   offline whatever its status said.
//! - **Downlink**: commands, acks and certificates are published to the device's topics.
//! - **Revocation**: when a certificate is revoked (in this controller or another, through
//!   the database), the device's live session is kicked, after the broker's CRL was rewritten
//!   and reloaded when the broker runs on this host (`mqtt.external.broker_dir`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use pifleet_shared::DeviceId;
use pifleet_shared::codec;
use pifleet_shared::proto::v1;
use pifleet_shared::topic::{Kind, Topic};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::broker::mosquitto::BrokerDir;
use crate::broker::revoke::BrokerProcess;
use crate::broker::{BrokerError, ControllerClientConfig, ControllerName, controller_cn};
use crate::config::ExternalBroker;
use crate::datadir::DataDir;
use crate::metrics::Metrics;
use crate::mqtt::ingest::Outgoing;
use crate::mqtt::route::{RouteError, Router};
use crate::store::Store;
use crate::supervise::{Fatal, Health, TaskResult};

/// The shared subscription every controller takes.
pub const INGEST_FILTER: &str = "$share/pifleet/fleet/+/up/#";

/// Every device's status, to every controller (with the retained ones at subscribe).
pub const STATUS_FILTER: &str = "fleet/+/up/status";

const COMPONENT: &str = "broker";

/// Requests (publishes, acks) queued for the broker connection; a full queue drops a
/// downlink (counted), which the device's re-send or the controller's outbox repairs.
const REQUEST_QUEUE: usize = 16_384;
/// QoS 1 publishes to the broker awaiting its PUBACK.
const OUT_INFLIGHT: u16 = 1_000;
/// Messages taken from the broker and waiting to be routed: the broker sends at most its
/// `max_inflight_messages` unacknowledged ones per client, far fewer.
const ROUTE_QUEUE: usize = 1_024;

/// This controller's link to the external broker.
#[derive(Debug)]
pub struct Broker {
    client: AsyncClient,
    /// For kicks: the same identity, on connections of their own.
    kick: ControllerClientConfig,
    /// The broker's files and process when it runs on this host.
    local: Option<(BrokerDir, BrokerProcess)>,
    dd: DataDir,
    presence_timeout: Duration,
    /// Revoked devices, whose messages are dropped.
    revoked: RwLock<HashSet<String>>,
    /// Revoked certificate serials already acted on (none before the first check).
    known_serials: Mutex<Option<HashSet<String>>>,
    /// When this controller last told ingest each device was online.
    seen: Mutex<HashMap<DeviceId, Instant>>,
    metrics: Metrics,
}

impl Broker {
    /// Prepares the client (it connects when the returned event loop is first polled).
    pub fn new(
        dd: &DataDir,
        cfg: &ExternalBroker,
        metrics: Metrics,
    ) -> Result<(Arc<Self>, EventLoop), BrokerError> {
        let missing = |what: &str| BrokerError::Tls(format!("mqtt.external.{what} is not set"));
        let (host, port) = cfg.host_port().ok_or_else(|| missing("address"))?;
        let dir = cfg
            .identity_dir
            .as_deref()
            .ok_or_else(|| missing("identity_dir"))?;
        let name = ControllerName::parse(cfg.name.as_deref().ok_or_else(|| missing("name"))?)?;
        let kick = ControllerClientConfig::from_identity_dir(dir, host, port);
        let mut opts = kick.mqtt_options(&controller_cn(&name))?;
        opts.set_manual_acks(true);
        // Every committed message is answered with an ack to its device: room for a burst
        // of them on their way out.
        opts.set_inflight(OUT_INFLIGHT);
        let (client, events) = AsyncClient::new(opts, REQUEST_QUEUE);
        let local = match (&cfg.broker_dir, &cfg.pid_file) {
            (Some(d), Some(p)) => Some((BrokerDir::new(d), BrokerProcess::PidFile(p.clone()))),
            _ => None,
        };
        let broker = Arc::new(Self {
            client,
            kick,
            local,
            dd: dd.clone(),
            presence_timeout: cfg.presence_timeout(),
            revoked: RwLock::new(HashSet::new()),
            known_serials: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
            metrics,
        });
        Ok((broker, events))
    }

    /// Publishes `msg` to its device's topic; never waits (a full request queue drops it,
    /// counted: what matters is sent again).
    pub fn deliver(&self, msg: Outgoing) {
        let topic = msg.topic.to_string();
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, msg.payload)
            .is_err()
        {
            self.metrics
                .mqtt_out_dropped
                .with_label_values(&["broker_queue"])
                .inc();
        }
    }

    /// Polls the broker connection: subscribes at each connect, routes and acknowledges
    /// what arrives, reconnects (every second) while the broker is away, reporting the
    /// controller not ready meanwhile.
    pub async fn run(
        self: Arc<Self>,
        mut events: EventLoop,
        router: Router,
        store: Store,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> TaskResult {
        self.load_revoked(&store).await;
        health.degraded(COMPONENT, &"connecting to the broker");
        // The connection is polled without pause: it also carries every ack and command out,
        // so routing (which waits when the ingest queue is full) happens in a task of its own.
        let (to_route, mut routing) = tokio::sync::mpsc::channel::<rumqttc::Publish>(ROUTE_QUEUE);
        let mut router_task = {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(p) = routing.recv().await {
                    if let Err(RouteError::Closed) =
                        me.receive(&router, &p.topic, &p.payload, p.retain).await
                    {
                        return;
                    }
                    // Acknowledged to the broker once routed (waiting for room in the
                    // request queue: a lost PUBACK would shrink the broker's window for
                    // this controller for good); the device's own guarantee is the
                    // application ack after the commit.
                    if let Err(e) = me.client.ack(&p).await {
                        tracing::warn!(error = %e, "could not acknowledge to the broker");
                    }
                }
            })
        };
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.client.try_disconnect();
                    router_task.abort();
                    return Ok(());
                }
                // The ingest writer is gone (shutdown).
                _ = &mut router_task => return Ok(()),
                e = events.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for filter in [INGEST_FILTER, STATUS_FILTER] {
                        if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, filter, "could not subscribe at the broker");
                        }
                    }
                    health.recovered(COMPONENT);
                    tracing::info!("connected to the broker");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if to_route.send(p).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    health.degraded(COMPONENT, &e);
                    tracing::warn!(error = %e, "broker connection lost; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// One message from the shared subscription, or a status; `retained` when the broker
    /// kept it (a status sent before this controller subscribed).
    async fn receive(
        &self,
        router: &Router,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Result<(), RouteError> {
        let Ok(parsed) = Topic::parse(topic) else {
            self.drop_message("topic");
            return Err(RouteError::Refused("topic"));
        };
        let device = parsed.device;
        let revoked = self
            .revoked
            .read()
            .is_ok_and(|r| r.contains(device.as_str()));
        if revoked {
            self.drop_message("revoked");
            return Err(RouteError::Refused("revoked"));
        }
        if parsed.kind == Kind::Status {
            return self.status(router, device, payload, retained).await;
        }
        let tell = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let stale = seen
                .get(&device)
                .is_none_or(|t| t.elapsed() >= self.presence_timeout / 2);
            if stale {
                seen.insert(device.clone(), Instant::now());
            }
            stale
        };
        if tell {
            router.online(&device, true).await;
        }
        router.route(topic, payload).await
    }

    /// A device's status: `offline` (its goodbye or its last will) makes it offline at once;
    /// a live `online` makes it online. Both come to every controller (and twice to the one
    /// the shared subscription also picks): telling ingest again changes nothing.
    async fn status(
        &self,
        router: &Router,
        device: DeviceId,
        payload: &[u8],
        retained: bool,
    ) -> Result<(), RouteError> {
        let status: v1::Status = match codec::decode(Kind::Status, payload) {
            Ok(s) => s,
            Err(e) => {
                self.drop_message(e.reason());
                return Err(RouteError::Refused("status"));
            }
        };
        let online = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            match status {
                v1::Status::Offline => {
                    seen.remove(&device);
                    false
                }
                // Kept by the broker from before: the device may have gone since (a crashed
                // broker publishes no will); its next live message says.
                v1::Status::Online if retained => return Ok(()),
                v1::Status::Online => {
                    seen.insert(device.clone(), Instant::now());
                    true
                }
            }
        };
        router.online(&device, online).await;
        Ok(())
    }

    fn drop_message(&self, reason: &'static str) {
        self.metrics
            .ingest_dropped
            .with_label_values(&[reason])
            .inc();
    }

    async fn load_revoked(&self, store: &Store) {
        match store.revoked_devices().await {
            Ok(ids) => *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = ids,
            Err(e) => tracing::error!(error = %e, "could not read the revoked devices"),
        }
    }

    /// What the CRL task calls with every revoked serial (every `pki.crl_check_s`): new ones
    /// make this controller reread the revoked devices and end their sessions at the broker.
    /// Returns how many serials were new.
    pub fn revoke(self: &Arc<Self>, serials: HashSet<String>, store: &Store) -> usize {
        let new: Vec<String> = {
            let mut known = self.known_serials.lock().unwrap_or_else(|e| e.into_inner());
            // The first call learns what was revoked before this controller started.
            let new: Vec<String> = match known.as_ref() {
                Some(k) => serials.difference(k).cloned().collect(),
                None => Vec::new(),
            };
            *known = Some(serials);
            new
        };
        if new.is_empty() {
            return 0;
        }
        let (me, store) = (self.clone(), store.clone());
        tokio::spawn(async move { me.enforce_revocations(store).await });
        new.len()
    }

    async fn enforce_revocations(&self, store: Store) {
        let before: HashSet<String> = self.revoked.read().map(|r| r.clone()).unwrap_or_default();
        self.load_revoked(&store).await;
        let now: HashSet<String> = self.revoked.read().map(|r| r.clone()).unwrap_or_default();
        let devices: Vec<DeviceId> = now
            .difference(&before)
            .filter_map(|d| DeviceId::parse(d).ok())
            .collect();
        if devices.is_empty() {
            return;
        }
        if let Some((dir, process)) = &self.local {
            // The CRL task publishes the new CRL right after this was called: wait for it
            // (a few seconds at most), so the kicked device meets it when it reconnects.
            wait_for_new_crl(&self.dd, Duration::from_secs(5)).await;
            let (dd, dir, process) = (self.dd.clone(), dir.clone(), process.clone());
            let reloaded = tokio::task::spawn_blocking(move || {
                crate::broker::revoke::sync_crl(&dd, &dir)?;
                crate::broker::revoke::reload(&process)
            })
            .await;
            match reloaded {
                Ok(Ok(pid)) => tracing::info!(pid, "broker CRL rewritten and reloaded"),
                Ok(Err(e)) => tracing::error!(error = %e, "could not reload the broker's CRL"),
                Err(e) => tracing::error!(error = %e, "could not reload the broker's CRL"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for device in devices {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&device);
            match crate::broker::kick(&self.kick, &device).await {
                Ok(()) => tracing::info!(device = %device, "revoked device's broker session ended"),
                Err(e) => {
                    tracing::error!(device = %device, error = %e, "could not end a revoked device's session")
                }
            }
        }
    }

    /// Marks offline the devices that sent nothing for the presence timeout.
    pub async fn presence(
        self: Arc<Self>,
        store: Store,
        shutdown: CancellationToken,
    ) -> TaskResult {
        let period = (self.presence_timeout / 4).max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let cutoff = crate::store::now_ms()
                - i64::try_from(self.presence_timeout.as_millis()).unwrap_or(i64::MAX);
            match store.mark_unheard_offline(cutoff).await {
                Ok(ids) => {
                    let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                    for id in ids {
                        if let Ok(d) = DeviceId::parse(&id) {
                            seen.remove(&d);
                        }
                    }
                }
                Err(e) if e.is_fatal() => return Err(Fatal::new("the database is broken", e)),
                Err(e) => tracing::warn!(error = %e, "presence sweep failed"),
            }
        }
    }
}

/// Waits until the data dir's CRL file changes (or `max` passes).
async fn wait_for_new_crl(dd: &DataDir, max: Duration) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let start = modified(&dd.crl()).unwrap_or(SystemTime::UNIX_EPOCH);
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if modified(&dd.crl()).is_some_and(|m| m > start) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
