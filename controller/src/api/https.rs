//! The HTTPS listener: rustls in a task per connection with a handshake timeout, hyper
//! HTTP/1.1, and the axum application built in [`crate::api`].
//!
//! Before a connection has sent its first request head nobody knows who is on the other
//! end, yet it holds a socket, memory and (during the handshake) CPU. Such connections
//! live within a [`PreAuthBudget`]: a global slot is taken before `accept()` (when all are
//! taken, new connections wait in the kernel's listen backlog), and each source gets a
//! share; over its share a connection is closed at once. All connections together are
//! bounded by `https.max_connections`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::HttpsConfig;
use crate::metrics::{Gauged, Metrics};
use crate::source::{PreAuth, PreAuthBudget};

/// The listener's limits (from `[https]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must finish the TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// ... and send each request head within this time (also closes idle keep-alive
    /// connections).
    pub header_timeout: Duration,
    /// Connections that have not sent their first request head yet, in total ...
    pub preauth_max: usize,
    /// ... and per source (an IPv4 address, an IPv6 /64).
    pub preauth_per_source: u32,
    /// All open connections; more are closed at accept.
    pub max_connections: usize,
}

impl From<&HttpsConfig> for Limits {
    fn from(c: &HttpsConfig) -> Self {
        Self {
            handshake_timeout: Duration::from_millis(c.handshake_timeout_ms),
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            preauth_max: c.preauth_max,
            preauth_per_source: c.preauth_per_source,
            max_connections: c.max_connections,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: ServerConfig,
    app: Router,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let budget = PreAuthBudget::new(limits.preauth_max, limits.preauth_per_source);
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = budget.slot() => match s {
                Some(s) => s,
                None => return, // the budget is never closed
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "https accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(open_permit) = open.clone().try_acquire_owned() else {
            refuse(&metrics, tcp, peer, "max_connections");
            continue;
        };
        let Some(preauth) = budget.admit(slot, peer.ip()) else {
            refuse(&metrics, tcp, peer, "per_source");
            continue;
        };
        let conn = Connection {
            peer,
            open: Gauged::new(open_permit, metrics.https_connections.clone()),
            preauth: Gauged::new(preauth, metrics.https_preauth_connections.clone()),
        };
        tokio::spawn(conn.run(
            tcp,
            acceptor.clone(),
            app.clone(),
            limits.clone(),
            shutdown.clone(),
        ));
    }
}

/// Closes a connection at accept: counted, and logged with its source (one line each, so
/// tools like fail2ban can act on it).
fn refuse(metrics: &Metrics, tcp: TcpStream, peer: SocketAddr, reason: &'static str) {
    drop(tcp);
    metrics.https_refused.with_label_values(&[reason]).inc();
    tracing::warn!(source = %peer.ip(), port = peer.port(), reason, "https connection refused");
}

/// An accepted connection with its place in both budgets.
#[derive(Debug)]
struct Connection {
    peer: SocketAddr,
    open: Gauged<OwnedSemaphorePermit>,
    preauth: Gauged<PreAuth>,
}

impl Connection {
    async fn run(
        self,
        tcp: TcpStream,
        acceptor: TlsAcceptor,
        app: Router,
        limits: Limits,
        shutdown: CancellationToken,
    ) {
        let Self {
            peer,
            open: _open,
            preauth,
        } = self;
        let stream =
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "https handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "https handshake timed out");
                    return;
                }
            };
        let client = client_cert(&stream, peer);
        let app = TowerToHyperService::new(
            app.layer(axum::Extension(PeerAddr(peer)))
                .layer(axum::Extension(client)),
        );
        // Until hyper has read the first request head the connection stays within the
        // pre-authentication budget; from then on it is an ordinary request.
        let preauth = Mutex::new(Some(preauth));
        let service = hyper::service::service_fn(move |req| {
            drop(preauth.lock().unwrap_or_else(|p| p.into_inner()).take());
            app.call(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "https connection error");
                }
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }
}

/// The client's address, available to handlers as an extension.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The device a connection's client certificate names, available to handlers as an
/// extension: `None` when the client sent no certificate. rustls verified it against the
/// CA and the CRL during the handshake; the guard checks the database for revocations
/// since (see `Permission::Device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub Option<DeviceCert>);

/// A verified device certificate's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    pub device: pifleet_shared::DeviceId,
    /// Lowercase hex without leading zeros, as the database stores serials.
    pub serial: String,
}

/// The identity of the certificate the client presented, if any. A verified certificate
/// that does not name a device (no single CN equal to its DNS SAN) counts as none.
fn client_cert(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
) -> ClientCert {
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    ClientCert(leaf.and_then(|der| match crate::pki::device_identity(der) {
        Ok((device, serial)) => Some(DeviceCert {
            device,
            serial: crate::pki::tls::normalize_serial(&serial),
        }),
        Err(e) => {
            tracing::info!(%peer, error = %e, "https client certificate names no device");
            None
        }
    }))
}
