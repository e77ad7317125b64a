//! `pifleet-controller serve`: wires the gateway, the embedded broker, ingest, retention and
//! the HTTPS listener together as named tasks under one shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminError};
use crate::api::{self, ApiState};
use crate::auth::jwt::JwtKeys;
use crate::config::Config;
use crate::datadir::{DataDir, write_private};
use crate::dispatch::{self, Dispatcher};
use crate::enroll::EnrollState;
use crate::gateway::{self, Gateway};
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::store::{Store, now_ms};
use crate::{broker, https, ingest, pki, tls};

/// Start-up errors (each maps to an exit code in `main`).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("command key: {0}")]
    CommandKey(String),
    #[error("admin sign-in: {0}")]
    Auth(String),
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

/// Loads and checks everything, binds, runs until `shutdown`, then drains.
pub async fn run(
    dd: DataDir,
    ov: Overrides,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    ensure_secrets(&dd)?;
    dd.check()?;
    let mut cfg = Config::load(&dd.config())?;
    if let Some(a) = ov.mqtt_listen {
        cfg.mqtt.listen = a;
    }
    if let Some(a) = ov.https_listen {
        cfg.https.listen = a;
    }
    let ca = admin::load_ca(&dd)?;
    let (mqtt_tls, revoked) = gateway::load_tls(&dd)?;
    let https_tls = tls::https_config(&dd)?;
    let store = Store::open(&dd.database(), false).await?;
    store.set_all_offline().await?;
    let metrics = Metrics::new()?;
    if let Some(t) = server_cert_expiry(&dd) {
        metrics.server_cert_expiry.set(t);
    }

    let mqtt_listener =
        TcpListener::bind(cfg.mqtt.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.mqtt.listen,
                source,
            })?;
    let https_listener = TcpListener::bind(cfg.https.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.https.listen,
            source,
        })?;
    let bound = Bound {
        mqtt: mqtt_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: cfg.mqtt.listen,
                source,
            })?,
        https: https_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: cfg.https.listen,
                source,
            })?,
        pid: std::process::id(),
    };

    let broker = broker::start(cfg.mqtt.max_connections).await?;
    let (link_tx, link_rx) = broker.link;
    let mut link_tx = link_tx;
    link_tx
        .subscribe(pifleet_shared::Topic::all_up_filter())
        .map_err(|e| broker::BrokerError::Link(Box::new(e)))?;

    let (queue_tx, queue_rx) = mpsc::channel(cfg.ingest.queue_capacity);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (receipt_tx, receipt_rx) = mpsc::channel(10_000);
    let online = Arc::new(tokio::sync::Notify::new());
    let key_path = dd.command_key();
    let key_pem = std::fs::read_to_string(&key_path)
        .map_err(|e| ServeError::CommandKey(format!("{}: {e}", key_path.display())))?;
    let signer = pifleet_shared::signing::CommandSigner::from_pkcs8_pem(&key_pem)
        .map_err(|e| ServeError::CommandKey(format!("{}: {e}", key_path.display())))?;
    let live = Hub::new();
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        signer,
        out_tx.clone(),
        cfg.commands.clone(),
        metrics.clone(),
        online.clone(),
        live.clone(),
    ));
    let gw = Arc::new(Gateway::new(
        cfg.mqtt.clone(),
        mqtt_tls,
        revoked,
        broker.addr,
        broker.login.clone(),
        queue_tx.clone(),
        metrics.clone(),
    ));

    let enroll_state = Arc::new(EnrollState {
        store: store.clone(),
        ca_fingerprint: pki::fingerprint_pem(&ca.cert_pem)?,
        ca,
        command_public_key: admin::command_public_key(&dd)?,
        mqtt_port: cfg.mqtt.public_port.unwrap_or(bound.mqtt.port()),
        cert_days: cfg.enrollment.device_cert_days,
        metrics: metrics.clone(),
    });
    let jwt = JwtKeys::load(&dd.jwt_keys()).map_err(|e| ServeError::Auth(e.to_string()))?;
    let api_state = ApiState::new(
        dd.clone(),
        store.clone(),
        cfg.clone(),
        jwt,
        admin::scrape_token(&dd)?,
        dispatcher.clone(),
        enroll_state,
        metrics.clone(),
    )
    .await?;
    let app = api::app(api_state.clone());

    let mut tasks = JoinSet::new();
    tasks.spawn(named(
        "gateway",
        gw.clone().run(mqtt_listener, shutdown.clone()),
    ));
    tasks.spawn(named(
        "crl-watch",
        gw.clone().watch_crl(dd.clone(), shutdown.clone()),
    ));
    tasks.spawn(named(
        "https",
        https::serve(
            https_listener,
            https_tls,
            app,
            https::Limits::from(&cfg.https),
            metrics.clone(),
            shutdown.clone(),
        ),
    ));
    tasks.spawn(named(
        "ingest-route",
        ingest::route(
            link_rx,
            queue_tx,
            receipt_tx,
            gw.clone(),
            metrics.clone(),
            shutdown.clone(),
        ),
    ));
    tasks.spawn(named(
        "dispatcher",
        dispatcher.clone().run(shutdown.clone()),
    ));
    tokio::spawn(named(
        "receipts",
        dispatch::receipts(dispatcher.clone(), receipt_rx),
    ));
    tasks.spawn(named(
        "enroll-refusal-audit",
        api_state.clone().audit_enroll_refusals(shutdown.clone()),
    ));
    tasks.spawn(named(
        "auth-limiter-gc",
        limiter_gc(api_state, shutdown.clone()),
    ));
    tasks.spawn(named(
        "fleet-summary",
        live.clone().run(store.clone(), shutdown.clone()),
    ));
    tasks.spawn(named(
        "retention",
        retention(store.clone(), cfg.clone(), shutdown.clone()),
    ));
    let writer = tokio::spawn(named(
        "ingest-writer",
        ingest::write(
            store.clone(),
            queue_rx,
            out_tx,
            online,
            cfg.ingest.clone(),
            metrics.clone(),
            live,
        ),
    ));
    let publisher_metrics = metrics.clone();
    let acker = std::thread::Builder::new()
        .name("broker-publisher".into())
        .spawn(move || ingest::publish(link_tx, out_rx, publisher_metrics))
        .map_err(ServeError::Thread)?;
    drop(gw);

    let state = serde_json::to_vec_pretty(&bound).unwrap_or_default();
    write_private(&dd.serve_state(), &state).map_err(AdminError::from)?;
    tracing::info!(mqtt = %bound.mqtt, https = %bound.https, data_dir = %dd.root().display(), "controller ready");

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining");
    // Every task stops on the signal; the writer ends when the last queue sender is gone,
    // after committing what was queued.
    while tasks.join_next().await.is_some() {}
    if tokio::time::timeout(Duration::from_secs(15), writer)
        .await
        .is_err()
    {
        tracing::warn!("ingest writer did not drain within 15 s");
    }
    drop(acker); // detached: it ends with the process
    let _ = std::fs::remove_file(dd.serve_state());
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn named<F: std::future::Future<Output = ()>>(name: &'static str, f: F) {
    tracing::debug!(task = name, "task started");
    f.await;
    tracing::debug!(task = name, "task stopped");
}

/// A data dir made by an older version may lack the access-token keys or the scrape
/// token: make them.
fn ensure_secrets(dd: &DataDir) -> Result<(), ServeError> {
    if !dd.config().exists() {
        return Ok(()); // `check` explains
    }
    let path = dd.jwt_keys();
    if !path.exists() {
        JwtKeys::generate()
            .save(&path)
            .map_err(|e| ServeError::Auth(e.to_string()))?;
        tracing::info!(path = %path.display(), "created the access-token signing key");
    }
    let path = dd.scrape_token();
    if !path.exists() {
        write_private(&path, admin::new_scrape_token().as_bytes()).map_err(AdminError::from)?;
        tracing::info!(path = %path.display(), "created the Prometheus scrape token");
    }
    Ok(())
}

/// Expiry (Unix seconds) of the listeners' certificate, for the expiry alert.
fn server_cert_expiry(dd: &DataDir) -> Option<i64> {
    let pem = std::fs::read(dd.server_cert()).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Forgets per-source rate-limit state of sources that have been quiet.
async fn limiter_gc(state: api::AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => state.forget_quiet_limits(),
        }
    }
}

async fn retention(store: Store, cfg: Config, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.telemetry.retention_interval_s));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let keep_ms = i64::from(cfg.telemetry.retention_days) * 86_400_000;
        match store.apply_retention(now_ms() - keep_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "telemetry retention applied"),
            Err(e) => tracing::error!(error = %e, "telemetry retention failed"),
        }
    }
}
