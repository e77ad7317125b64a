//! `pifleet-controller serve`: builds the controller — configuration, the CRL, the store,
//! the listeners, the embedded broker and every component wired together, with every
//! error reported before anything runs — then runs its tasks under a [`Supervisor`]
//! until the shutdown signal or the first task that fails for good.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::https;
use crate::api::{self, ApiState};
use crate::auth::jwt::JwtKeys;
use crate::commands::dispatch::{self, Dispatcher};
use crate::commands::release_keys;
use crate::config::Config;
use crate::config::MqttMode;
use crate::datadir::{DataDir, write_private};
use crate::enroll::{EnrollState, Pinned};
use crate::housekeeping;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::mqtt::downlink::Downlink;
use crate::mqtt::external;
use crate::mqtt::gateway::limits;
use crate::mqtt::gateway::{self, Gateway};
use crate::mqtt::ingest::{self, WriterContext};
use crate::mqtt::route::{Handlers, Router};
use crate::pki::{self, tls};
use crate::pki::{Ca, crl};
use crate::rotation::reload;
use crate::setup::{self, SetupError};
use crate::store::Store;
use crate::supervise::{Health, Supervisor, TaskFailed, TaskResult};

/// Start-up errors (each maps to an exit code in `main`), and the task failure that
/// stopped a running controller.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    OpenStore(#[from] crate::database::OpenError),
    #[error("the external broker: {0}")]
    Broker(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("publishing the CRL at start-up: {0}")]
    Crl(#[from] crl::CrlError),
    #[error("command key: {0}")]
    CommandKey(String),
    #[error("access-token key: {0}")]
    AccessTokenKey(String),
    #[error(transparent)]
    Api(#[from] api::StateError),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// Listen-address overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub mqtt_listen: Option<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
}

/// Addresses actually bound, written to `serve.json` for scripts and tests.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Bound {
    pub mqtt: SocketAddr,
    pub https: SocketAddr,
    pub pid: u32,
}

/// A device's signed command receipt, on its way from ingest to the dispatcher.
type Receipt = (
    pifleet_shared::DeviceId,
    pifleet_shared::command::SignedReceipt,
);

/// How long running tasks get to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(15);

/// Builds the controller, then runs it until `shutdown` (or a task fails for good).
pub async fn run(
    dd: DataDir,
    ov: Overrides,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    Controller::build(dd, ov).await?.run(shutdown).await
}

/// Where devices connect: the built-in gateway, or an external broker this controller
/// subscribes to (`mqtt.mode`). Made once per run, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Devices {
    Gateway {
        gateway: Arc<Gateway>,
        listener: TcpListener,
    },
    Broker {
        broker: Arc<external::Broker>,
        events: rumqttc::EventLoop,
        router: Router,
    },
}

/// Everything `serve` runs, built and wired but not started.
struct Controller {
    dd: DataDir,
    cfg: Config,
    ca: Ca,
    store: Store,
    metrics: Metrics,
    health: Arc<Health>,
    bound: Bound,
    devices: Devices,
    https_listener: TcpListener,
    https_tls: rustls::ServerConfig,
    server_cert: Arc<pki::ServerCert>,
    downlink: Downlink,
    dispatcher: Arc<Dispatcher>,
    /// The release keys devices are told to trust.
    release_keys: Vec<pifleet_shared::signing::TrustedKey>,
    live: Hub,
    api: api::AppState,
    /// The writer's end of the queue; the router holds the other.
    queue: mpsc::Receiver<crate::store::IngestOp>,
    receipts: mpsc::Receiver<Receipt>,
    renewals: mpsc::Receiver<(
        pifleet_shared::DeviceId,
        pifleet_shared::proto::v1::RenewRequest,
    )>,
    online: Arc<tokio::sync::Notify>,
}

impl Controller {
    /// Loads and checks everything and binds the listeners; nothing runs yet.
    async fn build(dd: DataDir, ov: Overrides) -> Result<Self, ServeError> {
        dd.check_dir()?;
        setup::ensure_secrets(&dd)?;
        dd.check()?;
        let mut cfg = Config::load(&dd.config())?;
        if let Some(a) = ov.mqtt_listen {
            cfg.mqtt.listen = a;
        }
        if let Some(a) = ov.https_listen {
            cfg.https.listen = a;
        }
        let ca = Ca::load(&dd)?;
        let store = crate::database::open(&dd, &cfg.store, false).await?;
        store
            .prepare_telemetry_partitions(housekeeping::PARTITION_DAYS_AHEAD)
            .await?;
        // The CRL converges to the database before the gateway reads it.
        let published = crl::publish(&dd, &store, &ca, cfg.pki.crl_next_update_days).await?;
        tracing::info!(
            number = published.number,
            revoked = published.revoked,
            "CRL published"
        );
        let server_cert = pki::ServerCert::load(&dd)?;
        let (mqtt_tls, revoked) = gateway::load_tls(&dd, &server_cert)?;
        let crls = tls::load_crls(&dd.crl()).map_err(tls::TlsError::from)?;
        let https_tls = tls::https_config(&dd, crls, server_cert.clone())?;
        if cfg.mqtt.mode == MqttMode::Embedded {
            // Every session ended with the previous run. (With an external broker, devices
            // stay connected to it; presence follows what they send.)
            store.set_all_offline().await?;
        }
        // What a crash left in releases/ (temp files, files no release refers to) goes.
        match crate::releases::sweep(&dd, &store, Duration::from_secs(3_600)).await {
            Ok(swept) => tracing::debug!(?swept, "releases swept"),
            Err(e) => tracing::warn!(error = %e, "could not tidy the releases folder"),
        }
        let metrics = Metrics::new()?;
        if let Some(t) = reload::server_cert_expiry(&dd) {
            metrics.server_cert_expiry.set(t);
        }
        let health = Arc::new(Health::new(metrics.clone()));
        crate::rotation::keyset::report(&dd, &store, &health).await;

        let mqtt_listener = match cfg.mqtt.mode {
            MqttMode::External => None,
            MqttMode::Embedded => {
                let (listener, backlog_warning) =
                    limits::bind(cfg.mqtt.listen, cfg.mqtt.listen_backlog).map_err(|source| {
                        ServeError::Bind {
                            addr: cfg.mqtt.listen,
                            source,
                        }
                    })?;
                if let Some(w) = backlog_warning {
                    tracing::warn!("{w}");
                }
                Some(listener)
            }
        };
        let (connection_limit, limit_warning) =
            limits::connection_limit(cfg.mqtt.max_connections, cfg.https.max_connections);
        if let Some(w) = limit_warning {
            tracing::warn!("{w}");
        }
        let https_listener = bind(cfg.https.listen).await?;
        let bound = Bound {
            // With an external broker nothing listens for devices here (0.0.0.0:0).
            mqtt: match &mqtt_listener {
                Some(l) => local_addr(l, cfg.mqtt.listen)?,
                None => SocketAddr::from(([0, 0, 0, 0], 0)),
            },
            https: local_addr(&https_listener, cfg.https.listen)?,
            pid: std::process::id(),
        };

        let (queue_tx, queue) = mpsc::channel(cfg.ingest.queue_capacity);
        let receipts = mpsc::channel(10_000);
        let renewals = mpsc::channel(1_000);
        let router = Router::new(
            queue_tx,
            Handlers {
                receipts: receipts.0,
                renewals: renewals.0,
            },
            metrics.clone(),
        );
        let (devices, downlink) = match mqtt_listener {
            Some(listener) => {
                let gateway = Arc::new(Gateway::new(
                    cfg.mqtt.clone(),
                    mqtt_tls,
                    revoked,
                    router,
                    metrics.clone(),
                    store.clone(),
                    connection_limit,
                ));
                let downlink = Downlink::new(&gateway);
                (Devices::Gateway { gateway, listener }, downlink)
            }
            None => {
                let (broker, events) =
                    external::Broker::new(&dd, &cfg.mqtt.external, metrics.clone())
                        .map_err(|e| ServeError::Broker(e.to_string()))?;
                let downlink = Downlink::broker(&broker);
                (
                    Devices::Broker {
                        broker,
                        events,
                        router,
                    },
                    downlink,
                )
            }
        };
        let online = Arc::new(tokio::sync::Notify::new());
        let signers = crate::rotation::command_keys::load_signers(&dd, &store)
            .await
            .map_err(|e| ServeError::CommandKey(e.to_string()))?;
        let command_key_id = signers.newest.id().to_string();
        let live = Hub::new();
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            signers,
            downlink.clone(),
            cfg.commands.clone(),
            metrics.clone(),
            online.clone(),
            live.clone(),
        ));
        let release_keys = setup::release_public_keys(&dd)?;
        let enroll_state = Arc::new(EnrollState {
            store: store.clone(),
            ca_fingerprint: ca.fingerprint()?,
            ca: ca.clone(),
            pinned: arc_swap::ArcSwap::from_pointee(Pinned {
                command_public_key: setup::command_public_key(&dd)?,
                command_key_id,
                release_public_keys: release_keys.iter().map(|k| k.to_pem()).collect(),
            }),
            mqtt_port: cfg.mqtt.public_port.unwrap_or(bound.mqtt.port()),
            mqtt_host: cfg.mqtt.public_host.clone(),
            cert_lifetime: cfg.pki.device_cert_lifetime(&cfg.enrollment),
            metrics: metrics.clone(),
        });
        let jwt =
            JwtKeys::load(&dd.jwt_keys()).map_err(|e| ServeError::AccessTokenKey(e.to_string()))?;
        let api = ApiState::new(
            dd.clone(),
            store.clone(),
            cfg.clone(),
            jwt,
            setup::scrape_token(&dd)?,
            dispatcher.clone(),
            enroll_state,
            metrics.clone(),
            health.clone(),
        )
        .await?;
        Ok(Self {
            dd,
            cfg,
            ca,
            store,
            metrics,
            health,
            bound,
            devices,
            https_listener,
            https_tls,
            server_cert,
            downlink,
            dispatcher,
            release_keys,
            live,
            api,
            queue,
            receipts: receipts.1,
            renewals: renewals.1,
            online,
        })
    }

    /// Runs every task until `shutdown` or the first task that fails for good, then drains.
    async fn run(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        // The writer stops once every sender is gone: the router's, in the gateway and its
        // connections, which shutdown ends.
        let queue_rx = self.queue;
        let receipt_rx = self.receipts;
        let renew_rx = self.renewals;
        let app = api::app(self.api.clone());
        let mut tasks = Supervisor::new(shutdown.clone());
        let enforce: Box<dyn Fn(std::collections::HashSet<String>) -> usize + Send> =
            match self.devices {
                Devices::Gateway { gateway, listener } => {
                    tasks.spawn("gateway", gateway.clone().run(listener, shutdown.clone()));
                    tasks.spawn(
                        "crl-watch",
                        gateway.clone().watch_crl(
                            self.dd.clone(),
                            self.server_cert.clone(),
                            shutdown.clone(),
                        ),
                    );
                    Box::new(move |serials| gateway.revoke(serials))
                }
                Devices::Broker {
                    broker,
                    events,
                    router,
                } => {
                    tasks.spawn(
                        "broker",
                        broker.clone().run(
                            events,
                            router,
                            self.store.clone(),
                            self.health.clone(),
                            shutdown.clone(),
                        ),
                    );
                    tasks.spawn(
                        "presence",
                        broker
                            .clone()
                            .presence(self.store.clone(), shutdown.clone()),
                    );
                    let store = self.store.clone();
                    Box::new(move |serials| broker.revoke(serials, &store))
                }
            };
        tasks.spawn(
            "crl",
            crl::keep(
                self.dd.clone(),
                self.store.clone(),
                self.ca.clone(),
                self.cfg.pki.clone(),
                enforce,
                self.health.clone(),
                shutdown.clone(),
            ),
        );
        let stop = shutdown.clone();
        let limits = https::Limits::from(&self.cfg.https);
        let https_metrics = self.metrics.clone();
        tasks.spawn("https", async move {
            https::serve(
                self.https_listener,
                self.https_tls,
                app,
                limits,
                https_metrics,
                stop,
            )
            .await;
            Ok(())
        });
        let renewer = crate::pki::renew::Renewer {
            store: self.store.clone(),
            ca: self.ca.clone(),
            lifetime: self.cfg.pki.device_cert_lifetime(&self.cfg.enrollment),
            min_interval: Duration::from_secs(self.cfg.pki.renew_min_interval_s),
            metrics: self.metrics.clone(),
        };
        tasks.spawn(
            "renewals",
            crate::pki::renew::serve(renewer, renew_rx, self.downlink.clone()),
        );
        tasks.spawn(
            "dispatcher",
            self.dispatcher
                .clone()
                .run(self.health.clone(), shutdown.clone()),
        );
        tasks.spawn(
            "release-keys",
            release_keys::announce_once(
                self.dispatcher.clone(),
                self.release_keys.clone(),
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "rollouts",
            crate::rollouts::runner::run(
                self.store.clone(),
                self.dispatcher.clone(),
                self.live.clone(),
                self.health.clone(),
                self.metrics.clone(),
                self.cfg.rollouts.clone(),
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "receipts",
            dispatch::receipts(self.dispatcher.clone(), receipt_rx),
        );
        tasks.spawn(
            "enroll-refusal-audit",
            self.api.clone().audit_enroll_refusals(shutdown.clone()),
        );
        // Another controller's rotation, announced: the key reload looks at once.
        let keys_changed = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(
            "key-reload",
            reload::run(
                reload::Reload {
                    dd: self.dd.clone(),
                    jwt: self.api.jwt.clone(),
                    key_reload_s: self.cfg.auth.key_reload_s,
                    enroll: self.api.enroll.clone(),
                    server_cert: self.server_cert,
                    metrics: self.metrics.clone(),
                    // Moved, not cloned: a clone left here would keep the publisher thread
                    // (it ends when every sender is gone) running until the drain time.
                    dispatcher: self.dispatcher,
                    release_keys: self.release_keys,
                    command_key_error: None,
                    health: self.health.clone(),
                    wake: keys_changed.clone(),
                },
                shutdown.clone(),
            ),
        );
        if let Some(changes) = self.store.changes().await? {
            tasks.spawn(
                "changes",
                housekeeping::follow_changes(
                    changes,
                    {
                        let api = self.api.clone();
                        move || {
                            let api = api.clone();
                            async move { api.reload_settings().await }
                        }
                    },
                    keys_changed,
                    shutdown.clone(),
                ),
            );
        }
        tasks.spawn("limiter-gc", limiter_gc(self.api, shutdown.clone()));
        tasks.spawn(
            "fleet-summary",
            self.live.clone().run(self.store.clone(), shutdown.clone()),
        );
        tasks.spawn(
            "retention",
            housekeeping::retention(self.store.clone(), self.cfg.clone(), shutdown.clone()),
        );
        if self.cfg.backup.enabled && self.store.backend() == crate::store::Backend::Postgres {
            // The fleet is PostgreSQL's to back up (pg_dump or the operator's own backups,
            // with the key directory: docs/SCALING.md).
            tracing::info!("scheduled backups are off: the store is PostgreSQL");
        } else if self.cfg.backup.enabled {
            tasks.spawn(
                "backup",
                crate::backup::schedule::run(
                    self.dd.clone(),
                    self.store.clone(),
                    self.cfg.backup.clone(),
                    self.metrics.clone(),
                    shutdown.clone(),
                ),
            );
        }
        tasks.spawn(
            "ingest-writer",
            ingest::write(
                self.store.clone(),
                queue_rx,
                self.downlink,
                self.online,
                self.cfg.ingest.clone(),
                WriterContext {
                    metrics: self.metrics.clone(),
                    live: self.live,
                    health: self.health,
                    retry_max: self.cfg.store.retry_max(),
                },
            ),
        );

        let state = serde_json::to_vec_pretty(&self.bound).unwrap_or_default();
        write_private(&self.dd.serve_state(), &state)?;
        tracing::info!(mqtt = %self.bound.mqtt, https = %self.bound.https, data_dir = %self.dd.root().display(), "controller ready");

        let result = tasks.run(DRAIN).await;
        let _ = std::fs::remove_file(self.dd.serve_state());
        self.store.close().await;
        match result {
            Ok(()) => {
                tracing::info!("stopped");
                Ok(())
            }
            Err(failed) => Err(failed.into()),
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn local_addr(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    l.local_addr()
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Forgets per-source rate-limit state of sources that have been quiet.
async fn limiter_gc(state: api::AppState, shutdown: CancellationToken) -> TaskResult {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => state.forget_quiet_limits(),
        }
    }
}
