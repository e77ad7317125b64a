//! `pifleet-agent run`: the MQTT link, telemetry loop and spool drain.
//!
//! Every sample is appended to the spool before it is published and leaves it only when the
//! controller acknowledges its sequence number as committed. Live samples go out at once;
//! after a reconnect the backlog drains oldest first in bounded batches alongside them.
//! Signed commands on `down/cmd` are forwarded to [`crate::commands`], which runs them in
//! tasks of its own and may change the telemetry interval; deploys run there too, after
//! the app deployer recovered whatever a crash interrupted, before the link comes up. With `[metrics]` configured, each
//! new sample is also handed to the local Prometheus listener ([`crate::metrics`]).
//! Certificate renewal ([`crate::renew`]) runs off the housekeeping tick and `down/cert`; a
//! renewed (or restored) pair is loaded into the HTTPS client and the receipt signer, and
//! handed to the link task, which swaps the event loop's TLS transport and reconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pifleet_shared::proto::v1;
use pifleet_shared::signing::DeviceSigner;
use pifleet_shared::topic::Kind;
use pifleet_shared::{Topic, codec};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::ClientConfig;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::apps::{self, Deployer, Systemctl};
use crate::backoff::Backoff;
use crate::collect::{CollectError, Collector};
use crate::commands::exec::Limits;
use crate::commands::{Commands, CommandsError, MqttSink, Settings};
use crate::config::AgentConfig;
use crate::deploy::{self, Deploys};
use crate::https::{Endpoint, HttpsError};
use crate::metrics::{self, Exporter};
use crate::notify::Notifier;
use crate::release_keys::{KeysError, ReleaseKeys};
use crate::renew::{Renewal, Step};
use crate::services;
use crate::spool::{Spool, SpoolConfig, SpoolError};
use crate::tls;
use crate::watchdog;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("collector: {0}")]
    Collect(#[from] CollectError),
    #[error("encoding: {0}")]
    Encode(#[from] codec::EncodeError),
    #[error("commands: {0}")]
    Commands(#[from] CommandsError),
    #[error("release keys: {0}")]
    ReleaseKeys(#[from] KeysError),
    #[error("controller.url: {0}")]
    Url(#[from] HttpsError),
}

/// Samples per backlog message and bytes of samples per message (under the 64 KiB limit).
const DRAIN_BATCH: usize = 200;
const DRAIN_BATCH_BYTES: usize = 48 * 1024;
/// Most backlog samples sent but not yet acknowledged.
const DRAIN_WINDOW: u64 = 2_000;
/// Without acknowledgement progress for this long, unacknowledged samples are sent again.
const RESEND_AFTER: Duration = Duration::from_secs(30);

enum LinkEvent {
    Connected,
    Disconnected(String),
    Message(String, bytes::Bytes),
}

/// State of the backlog drain after a (re)connect.
struct Drain {
    /// Highest seq already sent by the drain.
    cursor: u64,
    /// First seq published live on this connection; the drain stops before it.
    live_from: Option<u64>,
}

/// Runs until `shutdown`, then publishes offline, syncs the spool and returns.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let id = cfg.device_id.clone();
    // Before the identity files are read: settle what an interrupted renewal left.
    let mut renewal = Renewal::start(&cfg);
    let tls = tls::mqtt_client(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key)?;
    let mut spool_cfg = SpoolConfig::new(&cfg.spool.dir);
    spool_cfg.max_bytes = cfg.spool.max_bytes;
    spool_cfg.sync_interval = Duration::from_secs(cfg.spool.sync_interval_s);
    let mut spool = Spool::open(spool_cfg)?;
    let mut collector = Collector::new("/")?;
    if let Some(path) = &cfg.telemetry.temperature_file {
        collector.set_temperature_file(path);
    }

    let status_topic = Topic::new(id.clone(), Kind::Status).to_string();
    let telemetry_topic = Topic::new(id.clone(), Kind::Telemetry).to_string();
    let hello_topic = Topic::new(id.clone(), Kind::Hello).to_string();
    let ack_topic = Topic::new(id.clone(), Kind::Ack).to_string();
    let cmd_topic = Topic::new(id.clone(), Kind::Cmd).to_string();
    let result_topic = Topic::new(id.clone(), Kind::Result).to_string();
    let csr_topic = Topic::new(id.clone(), Kind::Csr).to_string();
    let cert_topic = Topic::new(id.clone(), Kind::Cert).to_string();
    let mut command_settings = Settings::load(
        cfg.commands.clone(),
        cfg.device_id.as_str(),
        &cfg.tls.command_key,
        &cfg.tls.key,
    )?;
    let release_keys = ReleaseKeys::load(&cfg.tls.release_keys)?;
    let https_tls = tls::Shared::new(tls::https_client(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key)?);
    let controller = deploy::Controller {
        endpoint: Endpoint::parse(&cfg.controller.url)?,
        tls: https_tls.clone(),
    };
    // Before any command can apply anything: finish or undo what a crash interrupted.
    let deployer = Deployer::new(
        apps::Settings::from_config(&cfg),
        Systemctl::new(Limits::from_config(&cfg.commands)),
    );
    deployer.recover().await;

    let mut opts = MqttOptions::new(
        id.as_str(),
        &cfg.controller.mqtt_host,
        cfg.controller.mqtt_port,
    );
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s));
    opts.set_clean_session(true);
    let max = Kind::Telemetry.max_payload() + 1024;
    opts.set_max_packet_size(max, max);
    opts.set_last_will(LastWill::new(
        &status_topic,
        codec::encode(Kind::Status, &v1::Status::Offline)?,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    // Receipts follow PUBACKs back to back: do not let Nagle hold them for a delayed ACK.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (interval_tx, mut interval_rx) = watch::channel(cfg.telemetry.interval_s);
    let event_topic = Topic::new(id.clone(), Kind::Event).to_string();
    let events: Arc<MqttSink> = Arc::new(MqttSink {
        client: client.clone(),
        topic: event_topic.clone(),
    });
    let deploys = Arc::new(Deploys::new(
        deployer,
        release_keys,
        controller,
        events.clone(),
    ));
    let mut apps_changed = deploys.changes();
    command_settings.deploys = Some(deploys.clone());
    let commands = Commands::start(
        command_settings,
        Arc::new(MqttSink {
            client: client.clone(),
            topic: result_topic,
        }),
        interval_tx,
        shutdown.clone(),
    )?;

    let capabilities = codec::encode(
        Kind::Event,
        &v1::Event::Capabilities(services::capabilities(&cfg.commands)),
    )?;
    let (services_tx, mut services_rx) = watch::channel(None);
    tokio::spawn(services::watch_states(
        cfg.commands.clone(),
        commands.services_changed(),
        services_tx,
        shutdown.clone(),
    ));

    let watchdog = watchdog::Settings::from_config(&cfg).map(|settings| {
        let systemd = Systemctl::new(Limits::from_config(&cfg.commands));
        let task = watchdog::run(
            settings,
            systemd,
            Some(deploys.clone()),
            events,
            shutdown.clone(),
        );
        // Boxed: the task's state machine stays out of this one's.
        tokio::spawn(Box::pin(task))
    });

    let (ev_tx, mut ev_rx) = mpsc::channel::<LinkEvent>(256);
    let backoff_max = Duration::from_secs(cfg.mqtt.backoff_max_s);
    let link_stop = CancellationToken::new();
    let link_stop2 = link_stop.clone();
    // A renewed certificate: the link reconnects with this config.
    let (tls_tx, mut tls_rx) = watch::channel::<Option<Arc<ClientConfig>>>(None);
    let link = tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(500), backoff_max);
        loop {
            let polled = tokio::select! {
                _ = link_stop2.cancelled() => return,
                Ok(()) = tls_rx.changed() => {
                    switch_tls(&mut eventloop, tls_rx.borrow_and_update().clone());
                    continue;
                }
                p = eventloop.poll() => p,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    let _ = ev_tx.send(LinkEvent::Connected).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = ev_tx.send(LinkEvent::Message(p.topic, p.payload)).await;
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    // Let the DISCONNECT reach the wire, then stop.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = ev_tx.send(LinkEvent::Disconnected(e.to_string())).await;
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = link_stop2.cancelled() => return,
                        Ok(()) = tls_rx.changed() => {
                            switch_tls(&mut eventloop, tls_rx.borrow_and_update().clone());
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    });

    let exporter = match &cfg.metrics {
        Some(m) => start_exporter(m.listen, &cfg, &shutdown).await,
        None => None,
    };

    let mut connected = false;
    let mut drain: Option<Drain> = None;
    let mut last_floor = spool.acked_floor();
    let mut last_progress = Instant::now();
    let mut last_seq = 0u64;
    let mut sample_tick = tokio::time::interval(cfg.interval());
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    tracing::info!(device = %id, host = %cfg.controller.mqtt_host, port = cfg.controller.mqtt_port, backlog = spool.backlog(), "agent started");
    // systemd (Type=notify) learns the agent is up, and gets a ping from this loop at half
    // its WatchdogSec: a loop that hangs is restarted.
    let notifier = Notifier::from_env();
    let ping_every = notifier.as_ref().and_then(Notifier::ping_every);
    if let Some(n) = &notifier {
        n.send("READY=1");
    }
    let mut last_ping = Instant::now();

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = ev_rx.recv() => match ev {
                Some(LinkEvent::Connected) => {
                    connected = true;
                    tracing::info!(device = %id, backlog = spool.backlog(), "connected");
                    let _ = client.try_subscribe(Topic::down_filter(&id), QoS::AtLeastOnce);
                    let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, codec::encode(Kind::Status, &v1::Status::Online)?);
                    let hello = collector.hello(env!("CARGO_PKG_VERSION"), *interval_rx.borrow());
                    let _ = client.try_publish(&hello_topic, QoS::AtLeastOnce, false, codec::encode(Kind::Hello, &hello)?);
                    let _ = client.try_publish(&event_topic, QoS::AtLeastOnce, false, capabilities.clone());
                    if let Some(states) = services_rx.borrow_and_update().clone() {
                        let _ = client.try_publish(&event_topic, QoS::AtLeastOnce, false, codec::encode(Kind::Event, &v1::Event::Services(states))?);
                    }
                    apps_changed.mark_unchanged();
                    report_apps(&deploys, &client, &event_topic);
                    drain = Some(Drain { cursor: spool.acked_floor(), live_from: None });
                    last_progress = Instant::now();
                    commands.set_connected(true);
                    renewal.on_connected();
                }
                Some(LinkEvent::Disconnected(reason)) => {
                    if connected {
                        tracing::warn!(device = %id, reason = %reason, "disconnected; will reconnect");
                    } else {
                        tracing::debug!(device = %id, reason = %reason, "connect failed; will retry");
                    }
                    connected = false;
                    drain = None;
                    commands.set_connected(false);
                    if renewal.on_connect_failed() == Step::Reload {
                        reload_identity(&cfg, &tls_tx, &https_tls, &commands);
                    }
                }
                Some(LinkEvent::Message(topic, payload)) => {
                    if topic == ack_topic {
                        match codec::decode::<v1::Ack>(Kind::Ack, &payload) {
                            Ok(ack) => spool.ack(&ack.ranges),
                            Err(e) => tracing::warn!(error = %e, "undecodable ack dropped"),
                        }
                        // Acks open the drain window: keep the backlog moving at once
                        // rather than on the next housekeeping tick.
                        if let Some(d) = drain.as_mut()
                            && drain_step(d, &spool, &client, &telemetry_topic)?
                        {
                            drain = None;
                        }
                    } else if topic == cmd_topic {
                        commands.submit(&payload);
                    } else if topic == cert_topic {
                        if renewal.on_answer(&payload) == Step::Reload {
                            reload_identity(&cfg, &tls_tx, &https_tls, &commands);
                            connected = false;
                            drain = None;
                            commands.set_connected(false);
                        }
                    } else {
                        tracing::debug!(topic = %topic, "message for a later capability ignored");
                    }
                }
                None => break,
            },
            Ok(()) = services_rx.changed() => {
                let states = services_rx.borrow_and_update().clone();
                if let (true, Some(states)) = (connected, states) {
                    let _ = client.try_publish(&event_topic, QoS::AtLeastOnce, false, codec::encode(Kind::Event, &v1::Event::Services(states))?);
                }
            }
            Ok(()) = apps_changed.changed() => {
                if connected {
                    report_apps(&deploys, &client, &event_topic);
                }
            }
            Ok(()) = interval_rx.changed() => {
                let seconds = *interval_rx.borrow_and_update();
                let period = Duration::from_secs(u64::from(seconds.max(1)));
                sample_tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tracing::info!(seconds, "telemetry interval changed");
            }
            _ = sample_tick.tick() => {
                let seq = spool.next_seq()?;
                last_seq = seq;
                let dropped = spool.take_dropped();
                if dropped > 0 {
                    tracing::warn!(dropped, "spool full: oldest samples dropped");
                }
                let sample = collector.sample(seq, crate::commands::clock_ms(), dropped, spool.backlog());
                spool.append(&sample)?;
                if let Some(e) = &exporter {
                    e.publish(&sample);
                }
                if connected {
                    let msg = v1::Telemetry { samples: vec![sample] };
                    match client.try_publish(&telemetry_topic, QoS::AtLeastOnce, false, codec::encode(Kind::Telemetry, &msg)?) {
                        Ok(()) => {
                            if let Some(d) = drain.as_mut() {
                                d.live_from.get_or_insert(seq);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, seq, "publish queue full; sample stays spooled"),
                    }
                }
            }
            _ = housekeeping.tick() => {
                if let (Some(n), Some(every)) = (&notifier, ping_every)
                    && last_ping.elapsed() >= every
                {
                    n.send("WATCHDOG=1");
                    last_ping = Instant::now();
                }
                spool.maybe_sync()?;
                let floor = spool.acked_floor();
                if floor != last_floor {
                    last_floor = floor;
                    last_progress = Instant::now();
                }
                if let Some(csr) = renewal.tick(connected, crate::commands::clock_ms() / 1000) {
                    let _ = client.try_publish(&csr_topic, QoS::AtLeastOnce, false, csr);
                }
                if !connected {
                    continue;
                }
                // Something unacknowledged and no progress for a while: send it again.
                if spool.backlog() > 0 && last_progress.elapsed() > RESEND_AFTER {
                    tracing::info!(floor, backlog = spool.backlog(), "no acknowledgement progress; re-sending");
                    drain = Some(Drain { cursor: floor, live_from: Some(last_seq + 1) });
                    last_progress = Instant::now();
                }
                if let Some(d) = drain.as_mut()
                    && drain_step(d, &spool, &client, &telemetry_topic)?
                {
                    drain = None;
                }
            }
        }
    }

    tracing::info!(device = %id, "stopping");
    if connected {
        let _ = client.try_publish(
            &status_topic,
            QoS::AtLeastOnce,
            true,
            codec::encode(Kind::Status, &v1::Status::Offline)?,
        );
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(3), link).await;
    } else {
        link_stop.cancel();
        let _ = link.await;
    }
    link_stop.cancel();
    if let Some(e) = exporter {
        e.stop().await;
    }
    commands.join().await;
    if let Some(task) = watchdog {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    spool.close()?;
    Ok(())
}

/// Points the link at a renewed certificate: the next connection uses it.
fn switch_tls(eventloop: &mut EventLoop, cfg: Option<Arc<ClientConfig>>) {
    if let Some(cfg) = cfg {
        eventloop
            .mqtt_options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(cfg)));
        eventloop.clean();
    }
}

/// Loads the (renewed or restored) key and certificate into the MQTT and HTTPS configs and
/// the receipt signer. A failure is logged: the link keeps its config and a renewal that
/// cannot connect is rolled back by [`Renewal::on_connect_failed`].
fn reload_identity(
    cfg: &AgentConfig,
    mqtt: &watch::Sender<Option<Arc<ClientConfig>>>,
    https: &tls::Shared,
    commands: &Commands,
) {
    let t = &cfg.tls;
    let loaded = (|| -> Result<_, String> {
        let m = tls::mqtt_client(&t.ca, &t.cert, &t.key).map_err(|e| e.to_string())?;
        let h = tls::https_client(&t.ca, &t.cert, &t.key).map_err(|e| e.to_string())?;
        let pem = std::fs::read_to_string(&t.key).map_err(|e| e.to_string())?;
        let signer = DeviceSigner::from_pkcs8_pem(&pem).map_err(|e| e.to_string())?;
        Ok((m, h, signer))
    })();
    match loaded {
        Ok((m, h, signer)) => {
            commands.set_signer(signer);
            https.set(h);
            mqtt.send_replace(Some(Arc::new(m)));
        }
        Err(e) => tracing::error!(error = %e, "cannot load the device identity"),
    }
}

/// Publishes the apps and their releases (`Event::Apps`); dropped if the link cannot take it.
fn report_apps(deploys: &Deploys, client: &AsyncClient, topic: &str) {
    match codec::encode(Kind::Event, &v1::Event::Apps(deploys.app_states())) {
        Ok(payload) => {
            let _ = client.try_publish(topic, QoS::AtLeastOnce, false, payload);
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the apps report"),
    }
}

/// Starts the local `/metrics` listener. A port that cannot be bound must not stop the agent's
/// main job: the error is logged and the agent runs without the listener.
async fn start_exporter(
    listen: std::net::SocketAddr,
    cfg: &AgentConfig,
    shutdown: &CancellationToken,
) -> Option<Exporter> {
    let info = metrics::Info {
        device: cfg.device_id.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    match Exporter::start(listen, info, metrics::Limits::default(), shutdown.clone()).await {
        Ok(e) => {
            tracing::info!(listen = %e.local_addr(), "serving metrics at /metrics");
            Some(e)
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics listener not started; running without it");
            None
        }
    }
}

/// Sends the next backlog batches that fit the window. Returns true when the drain is done.
fn drain_step(
    d: &mut Drain,
    spool: &Spool,
    client: &AsyncClient,
    topic: &str,
) -> Result<bool, RunError> {
    for _ in 0..4 {
        if d.cursor.saturating_sub(spool.acked_floor()) >= DRAIN_WINDOW {
            return Ok(false);
        }
        let mut batch = spool.unacked_after(d.cursor, DRAIN_BATCH, DRAIN_BATCH_BYTES)?;
        if let Some(live) = d.live_from {
            batch.retain(|s| s.seq < live);
        }
        let Some(last) = batch.last().map(|s| s.seq) else {
            return Ok(true);
        };
        let msg = v1::Telemetry { samples: batch };
        let payload = codec::encode(Kind::Telemetry, &msg)?;
        if client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .is_err()
        {
            return Ok(false); // queue full: try again on the next tick
        }
        d.cursor = last;
    }
    Ok(false)
}
